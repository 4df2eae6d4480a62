-- creditgate ledger, Postgres: append-only entries with per-customer hash chains, the
-- ledger-first grant registry and its delivery outbox.

CREATE TABLE ledger_entries (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        TEXT   NOT NULL UNIQUE,
    kind            TEXT   NOT NULL CHECK (kind IN ('grant_added', 'hold_placed',
                        'hold_posted', 'hold_voided', 'hold_expired', 'grant_expired',
                        'adjustment')),
    customer        TEXT   NOT NULL,
    credit_type     TEXT   NOT NULL,
    amount          BIGINT NOT NULL,
    grant_id        TEXT,
    hold_id         TEXT,
    request_id      TEXT,
    route           TEXT,
    feature         TEXT,
    grants          JSONB  NOT NULL,
    event_at_ms     BIGINT NOT NULL,
    recorded_at_ms  BIGINT NOT NULL,
    actor           TEXT,
    reason          TEXT,
    pricing_version TEXT,
    details         JSONB  NOT NULL,
    shard           BIGINT NOT NULL,
    stream_id       TEXT,
    prev_hash       TEXT   NOT NULL,
    hash            TEXT   NOT NULL
);

CREATE INDEX ledger_entries_customer_seq ON ledger_entries (customer, seq);
CREATE INDEX ledger_entries_customer_time ON ledger_entries (customer, event_at_ms, seq);
CREATE INDEX ledger_entries_kind_time ON ledger_entries (kind, event_at_ms, seq);
CREATE INDEX ledger_entries_request ON ledger_entries (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX ledger_entries_hold ON ledger_entries (hold_id, customer) WHERE hold_id IS NOT NULL;

CREATE FUNCTION creditgate_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION creditgate_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION creditgate_refuse_change();

CREATE TABLE chain_heads (
    customer  TEXT   PRIMARY KEY,
    last_seq  BIGINT NOT NULL,
    last_hash TEXT   NOT NULL
);

CREATE TABLE grants (
    grant_id      TEXT   PRIMARY KEY,
    customer      TEXT   NOT NULL,
    credit_type   TEXT   NOT NULL,
    amount        BIGINT NOT NULL CHECK (amount > 0),
    priority      BIGINT NOT NULL CHECK (priority >= 0),
    expires_at_ms BIGINT,
    cost_basis    BIGINT NOT NULL CHECK (cost_basis >= 0),
    source        TEXT   NOT NULL,
    actor         TEXT   NOT NULL,
    reason        TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE INDEX grants_customer ON grants (customer, created_at_ms, grant_id);

CREATE TRIGGER grants_append_only BEFORE UPDATE OR DELETE ON grants
    FOR EACH ROW EXECUTE FUNCTION creditgate_refuse_change();
CREATE TRIGGER grants_no_truncate BEFORE TRUNCATE ON grants
    FOR EACH STATEMENT EXECUTE FUNCTION creditgate_refuse_change();

CREATE TABLE grant_outbox (
    grant_id      TEXT   PRIMARY KEY REFERENCES grants (grant_id),
    created_at_ms BIGINT NOT NULL,
    applied_at_ms BIGINT,
    attempts      BIGINT NOT NULL DEFAULT 0,
    last_error    TEXT
);

CREATE INDEX grant_outbox_pending ON grant_outbox (created_at_ms, grant_id)
    WHERE applied_at_ms IS NULL;
