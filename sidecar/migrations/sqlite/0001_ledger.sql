-- creditgate ledger, SQLite: append-only entries with per-customer hash chains, the
-- ledger-first grant registry and its delivery outbox.

CREATE TABLE ledger_entries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    kind            TEXT    NOT NULL CHECK (kind IN ('grant_added', 'hold_placed',
                        'hold_posted', 'hold_voided', 'hold_expired', 'grant_expired',
                        'adjustment')),
    customer        TEXT    NOT NULL,
    credit_type     TEXT    NOT NULL,
    amount          INTEGER NOT NULL,
    grant_id        TEXT,
    hold_id         TEXT,
    request_id      TEXT,
    route           TEXT,
    feature         TEXT,
    grants          TEXT    NOT NULL CHECK (json_valid(grants)),
    event_at_ms     INTEGER NOT NULL,
    recorded_at_ms  INTEGER NOT NULL,
    actor           TEXT,
    reason          TEXT,
    pricing_version TEXT,
    details         TEXT    NOT NULL CHECK (json_valid(details)),
    shard           INTEGER NOT NULL,
    stream_id       TEXT,
    prev_hash       TEXT    NOT NULL,
    hash            TEXT    NOT NULL
);

CREATE INDEX ledger_entries_customer_seq ON ledger_entries (customer, seq);
CREATE INDEX ledger_entries_customer_time ON ledger_entries (customer, event_at_ms, seq);
CREATE INDEX ledger_entries_kind_time ON ledger_entries (kind, event_at_ms, seq);
CREATE INDEX ledger_entries_request ON ledger_entries (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX ledger_entries_hold ON ledger_entries (hold_id, customer) WHERE hold_id IS NOT NULL;

CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger_entries is append-only: UPDATE refused');
END;

CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger_entries is append-only: DELETE refused');
END;

CREATE TABLE chain_heads (
    customer  TEXT    PRIMARY KEY,
    last_seq  INTEGER NOT NULL,
    last_hash TEXT    NOT NULL
);

CREATE TABLE grants (
    grant_id      TEXT    PRIMARY KEY,
    customer      TEXT    NOT NULL,
    credit_type   TEXT    NOT NULL,
    amount        INTEGER NOT NULL CHECK (amount > 0),
    priority      INTEGER NOT NULL CHECK (priority >= 0),
    expires_at_ms INTEGER,
    cost_basis    INTEGER NOT NULL CHECK (cost_basis >= 0),
    source        TEXT    NOT NULL,
    actor         TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE INDEX grants_customer ON grants (customer, created_at_ms, grant_id);

CREATE TRIGGER grants_no_update BEFORE UPDATE ON grants
BEGIN
    SELECT RAISE(ABORT, 'grants is append-only: UPDATE refused');
END;

CREATE TRIGGER grants_no_delete BEFORE DELETE ON grants
BEGIN
    SELECT RAISE(ABORT, 'grants is append-only: DELETE refused');
END;

CREATE TABLE grant_outbox (
    grant_id      TEXT    PRIMARY KEY REFERENCES grants (grant_id),
    created_at_ms INTEGER NOT NULL,
    applied_at_ms INTEGER,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);

CREATE INDEX grant_outbox_pending ON grant_outbox (created_at_ms, grant_id)
    WHERE applied_at_ms IS NULL;
