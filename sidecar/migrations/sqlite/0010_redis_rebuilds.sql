-- Redis rebuilds owed after a change booked in the ledger alone (a grant void removes the
-- grant's credits with an adjustment entry, then Redis must be rebuilt from the ledger).
-- Recorded before the rebuild is tried, so a rebuild that cannot run now (holds pending,
-- Redis behind the ledger, Redis down, a crash) is retried by the sidecar until it is done.
-- Like the grant outbox: a row is updated only to count attempts and to mark it done.
CREATE TABLE redis_rebuilds (
    rebuild_id         TEXT    PRIMARY KEY,
    customer           TEXT    NOT NULL,
    reason             TEXT    NOT NULL,
    created_at_ms      INTEGER NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    next_attempt_at_ms INTEGER NOT NULL,
    done_at_ms         INTEGER
);

CREATE INDEX redis_rebuilds_due ON redis_rebuilds (next_attempt_at_ms, rebuild_id)
    WHERE done_at_ms IS NULL;
