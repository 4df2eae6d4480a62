-- Usage events the product reported (POST /v1/usage-events), recorded as received before
-- they are burned: the event, its price under the pricing version in force, and its
-- metadata. One row per (customer, idempotency key): a duplicate is not recorded twice.
-- Append-only like the ledger; the burn itself is the hold's ledger entries
-- (request_id `usage-event:<idempotency_key>`).
CREATE TABLE usage_events (
    customer         TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    feature          TEXT    NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity >= 0),
    occurred_at_ms   INTEGER NOT NULL,
    received_at_ms   INTEGER NOT NULL,
    credit_type      TEXT    NOT NULL,
    amount           INTEGER NOT NULL CHECK (amount >= 0),
    hold_id          TEXT    NOT NULL,
    pricing_version  TEXT    NOT NULL,
    metadata         TEXT    CHECK (metadata IS NULL OR json_valid(metadata)),
    PRIMARY KEY (customer, idempotency_key)
);

CREATE INDEX usage_events_occurred ON usage_events (customer, occurred_at_ms);

CREATE TRIGGER usage_events_no_update BEFORE UPDATE ON usage_events
BEGIN
    SELECT RAISE(ABORT, 'usage_events is append-only: UPDATE refused');
END;

CREATE TRIGGER usage_events_no_delete BEFORE DELETE ON usage_events
BEGIN
    SELECT RAISE(ABORT, 'usage_events is append-only: DELETE refused');
END;
