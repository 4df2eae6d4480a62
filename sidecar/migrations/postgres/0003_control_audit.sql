-- The audit log of fleet control changes (mode overrides, rollout), copied by the sidecar
-- from the audit stream in Redis, so the record of who changed what outlives a Redis that
-- loses its data. Append-only like the ledger: corrections are new changes.
CREATE TABLE control_audit (
    audit_id       TEXT   PRIMARY KEY,  -- the Redis stream entry id (ms-seq)
    at_ms          BIGINT NOT NULL,     -- Redis time of the change
    actor          TEXT   NOT NULL,
    reason         TEXT   NOT NULL,
    change         TEXT   NOT NULL,     -- e.g. global=off, route:search=(cleared)
    version        BIGINT NOT NULL,     -- control state version the change produced
    recorded_at_ms BIGINT NOT NULL      -- sidecar clock when copied
);

CREATE INDEX control_audit_at ON control_audit (at_ms);

CREATE TRIGGER control_audit_append_only BEFORE UPDATE OR DELETE ON control_audit
    FOR EACH ROW EXECUTE FUNCTION creditgate_refuse_change();
CREATE TRIGGER control_audit_no_truncate BEFORE TRUNCATE ON control_audit
    FOR EACH STATEMENT EXECUTE FUNCTION creditgate_refuse_change();
