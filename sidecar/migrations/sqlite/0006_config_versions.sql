-- Every pricing config version the sidecar published to the fleet, with its TOML text, so
-- a usage event can be priced by the version in force at its event time (the latest
-- published_at_ms at or before it) and a past price can always be explained. Append-only
-- like the ledger: a version, once published, never changes.
CREATE TABLE config_versions (
    version          INTEGER PRIMARY KEY,  -- the fleet's monotonic version number
    version_label    TEXT    NOT NULL,     -- as on holds and burns: <number>-<12 hex of hash>
    content_hash     TEXT    NOT NULL,     -- SHA-1 of the text
    published_at_ms  INTEGER NOT NULL,     -- Redis time of the publication
    file             TEXT    NOT NULL,     -- the file it came from, for messages
    toml             TEXT    NOT NULL,     -- the validated text
    recorded_at_ms   INTEGER NOT NULL      -- sidecar clock when recorded
);

CREATE INDEX config_versions_published ON config_versions (published_at_ms);

CREATE TRIGGER config_versions_no_update BEFORE UPDATE ON config_versions
BEGIN
    SELECT RAISE(ABORT, 'config_versions is append-only: UPDATE refused');
END;

CREATE TRIGGER config_versions_no_delete BEFORE DELETE ON config_versions
BEGIN
    SELECT RAISE(ABORT, 'config_versions is append-only: DELETE refused');
END;
