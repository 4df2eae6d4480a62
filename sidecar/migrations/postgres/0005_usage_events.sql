-- Usage events the product reported (POST /v1/usage-events), recorded as received before
-- they are burned: the event, its price under the pricing version in force, and its
-- metadata. One row per (customer, idempotency key): a duplicate is not recorded twice.
-- Append-only like the ledger; the burn itself is the hold's ledger entries
-- (request_id `usage-event:<idempotency_key>`).
CREATE TABLE usage_events (
    customer         TEXT   NOT NULL,
    idempotency_key  TEXT   NOT NULL,
    feature          TEXT   NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity >= 0),
    occurred_at_ms   BIGINT NOT NULL,
    received_at_ms   BIGINT NOT NULL,
    credit_type      TEXT   NOT NULL,
    amount           BIGINT NOT NULL CHECK (amount >= 0),
    hold_id          TEXT   NOT NULL,
    pricing_version  TEXT   NOT NULL,
    metadata         TEXT,
    PRIMARY KEY (customer, idempotency_key)
);

CREATE INDEX usage_events_occurred ON usage_events (customer, occurred_at_ms);

CREATE TRIGGER usage_events_append_only BEFORE UPDATE OR DELETE ON usage_events
    FOR EACH ROW EXECUTE FUNCTION creditgate_refuse_change();
CREATE TRIGGER usage_events_no_truncate BEFORE TRUNCATE ON usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION creditgate_refuse_change();
