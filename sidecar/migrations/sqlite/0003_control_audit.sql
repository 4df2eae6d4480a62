-- The audit log of fleet control changes (mode overrides, rollout), copied by the sidecar
-- from the audit stream in Redis, so the record of who changed what outlives a Redis that
-- loses its data. Append-only like the ledger: corrections are new changes.
CREATE TABLE control_audit (
    audit_id       TEXT    PRIMARY KEY,  -- the Redis stream entry id (ms-seq)
    at_ms          INTEGER NOT NULL,     -- Redis time of the change
    actor          TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    change         TEXT    NOT NULL,     -- e.g. global=off, route:search=(cleared)
    version        INTEGER NOT NULL,     -- control state version the change produced
    recorded_at_ms INTEGER NOT NULL      -- sidecar clock when copied
);

CREATE INDEX control_audit_at ON control_audit (at_ms);

CREATE TRIGGER control_audit_no_update BEFORE UPDATE ON control_audit
BEGIN
    SELECT RAISE(ABORT, 'control_audit is append-only: UPDATE refused');
END;

CREATE TRIGGER control_audit_no_delete BEFORE DELETE ON control_audit
BEGIN
    SELECT RAISE(ABORT, 'control_audit is append-only: DELETE refused');
END;
