-- Every pricing config version the sidecar published to the fleet, with its TOML text, so
-- a usage event can be priced by the version in force at its event time (the latest
-- published_at_ms at or before it) and a past price can always be explained. Append-only
-- like the ledger: a version, once published, never changes.
CREATE TABLE config_versions (
    version          BIGINT PRIMARY KEY,  -- the fleet's monotonic version number
    version_label    TEXT   NOT NULL,     -- as on holds and burns: <number>-<12 hex of hash>
    content_hash     TEXT   NOT NULL,     -- SHA-1 of the text
    published_at_ms  BIGINT NOT NULL,     -- Redis time of the publication
    file             TEXT   NOT NULL,     -- the file it came from, for messages
    toml             TEXT   NOT NULL,     -- the validated text
    recorded_at_ms   BIGINT NOT NULL      -- sidecar clock when recorded
);

CREATE INDEX config_versions_published ON config_versions (published_at_ms);

CREATE TRIGGER config_versions_append_only BEFORE UPDATE OR DELETE ON config_versions
    FOR EACH ROW EXECUTE FUNCTION creditgate_refuse_change();
CREATE TRIGGER config_versions_no_truncate BEFORE TRUNCATE ON config_versions
    FOR EACH STATEMENT EXECUTE FUNCTION creditgate_refuse_change();
