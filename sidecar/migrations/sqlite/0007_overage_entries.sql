-- A new entry kind, `overage`: the shortfall of a settle above what the balance and
-- overdraft allowed, recorded as its own entry with the request id (amount 0: it does not
-- change the balance; `details.shortfall` is the unbilled amount).
--
-- SQLite cannot alter a CHECK constraint, so the table is rebuilt with the same columns,
-- rows, seq values, indexes and append-only triggers. DROP TABLE fires no DELETE trigger.

CREATE TABLE ledger_entries_v6 (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    kind            TEXT    NOT NULL CHECK (kind IN ('grant_added', 'hold_placed',
                        'hold_posted', 'hold_voided', 'hold_expired', 'grant_expired',
                        'adjustment', 'overage')),
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

INSERT INTO ledger_entries_v6 SELECT * FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_v6 RENAME TO ledger_entries;

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
