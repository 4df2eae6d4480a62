-- The admin API's tables: bearer tokens (hashed) and their roles, customers and their API
-- keys (hashed), the details of grants issued through the API, grants waiting for a second
-- person's approval, and the idempotency records of mutating calls.

CREATE TABLE admin_tokens (
    name          TEXT    PRIMARY KEY,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'billing', 'support', 'sales', 'readonly')),
    token_hash    TEXT    NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE TABLE customers (
    customer      TEXT    PRIMARY KEY,
    plan          TEXT,
    created_by    TEXT    NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE customer_api_keys (
    key_id        TEXT    PRIMARY KEY,
    customer      TEXT    NOT NULL REFERENCES customers (customer),
    key_hash      TEXT    NOT NULL UNIQUE,
    created_by    TEXT    NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_by    TEXT,
    revoked_at_ms BIGINT
);

CREATE INDEX customer_api_keys_customer ON customer_api_keys (customer);

CREATE TABLE admin_grants (
    grant_id      TEXT    PRIMARY KEY,
    customer      TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    amount        BIGINT NOT NULL,
    reason_code   TEXT    NOT NULL,
    note          TEXT    NOT NULL,
    actor         TEXT    NOT NULL,
    approved_by   TEXT,
    counts_toward_limit BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE INDEX admin_grants_actor_time ON admin_grants (actor, created_at_ms);

CREATE TABLE grant_approvals (
    request_id    TEXT    PRIMARY KEY,
    customer      TEXT    NOT NULL,
    amount        BIGINT NOT NULL,
    grant_json    TEXT    NOT NULL,
    requested_by  TEXT    NOT NULL,
    requested_at_ms BIGINT NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'approved')),
    decided_by    TEXT,
    decided_at_ms BIGINT,
    grant_id      TEXT
);

CREATE TABLE grant_voids (
    grant_id      TEXT    PRIMARY KEY,
    customer      TEXT    NOT NULL,
    amount        BIGINT NOT NULL,
    reason        TEXT    NOT NULL,
    actor         TEXT    NOT NULL,
    voided_at_ms  BIGINT NOT NULL
);

CREATE TABLE idempotency_keys (
    actor         TEXT    NOT NULL,
    idem_key      TEXT    NOT NULL,
    fingerprint   TEXT    NOT NULL,
    status        BIGINT,
    body          TEXT,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (actor, idem_key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at_ms);

-- Per customer and credit type: the low-balance alert threshold and the auto-recharge
-- threshold and target (credit units).
CREATE TABLE customer_alerts (
    customer              TEXT    NOT NULL,
    credit_type           TEXT    NOT NULL,
    low_balance_threshold BIGINT,
    recharge_threshold    BIGINT,
    recharge_target       BIGINT,
    updated_by            TEXT    NOT NULL,
    updated_at_ms         BIGINT NOT NULL,
    PRIMARY KEY (customer, credit_type)
);

-- Whether a balance is below a threshold now, and how many times it crossed below: one
-- webhook per crossing, and one auto-recharge in flight until the balance is back above or
-- a purchase lands (`rearms` counts those, so a pass acting on a balance read before one
-- cannot fire a second recharge).
CREATE TABLE balance_crossings (
    customer    TEXT    NOT NULL,
    credit_type TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    below       BIGINT NOT NULL,
    crossings   BIGINT NOT NULL,
    rearms      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (customer, credit_type, kind)
);

-- The webhook delivery log: one row per event, retried with backoff until delivered.
CREATE TABLE webhook_deliveries (
    delivery_id        TEXT    PRIMARY KEY,
    kind               TEXT    NOT NULL,
    customer           TEXT    NOT NULL,
    url                TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts           BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    last_status        BIGINT,
    last_error         TEXT,
    created_at_ms      BIGINT NOT NULL,
    delivered_at_ms    BIGINT
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at_ms);
CREATE INDEX webhook_deliveries_customer ON webhook_deliveries (customer, created_at_ms);
