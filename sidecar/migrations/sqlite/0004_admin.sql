-- The admin API's tables: bearer tokens (hashed) and their roles, customers and their API
-- keys (hashed), the details of grants issued through the API, grants waiting for a second
-- person's approval, and the idempotency records of mutating calls.

CREATE TABLE admin_tokens (
    name          TEXT    PRIMARY KEY,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'billing', 'support', 'sales', 'readonly')),
    token_hash    TEXT    NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);

CREATE TABLE customers (
    customer      TEXT    PRIMARY KEY,
    plan          TEXT,
    created_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE customer_api_keys (
    key_id        TEXT    PRIMARY KEY,
    customer      TEXT    NOT NULL REFERENCES customers (customer),
    key_hash      TEXT    NOT NULL UNIQUE,
    created_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_by    TEXT,
    revoked_at_ms INTEGER
);

CREATE INDEX customer_api_keys_customer ON customer_api_keys (customer);

CREATE TABLE admin_grants (
    grant_id      TEXT    PRIMARY KEY,
    customer      TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    amount        INTEGER NOT NULL,
    reason_code   TEXT    NOT NULL,
    note          TEXT    NOT NULL,
    actor         TEXT    NOT NULL,
    approved_by   TEXT,
    counts_toward_limit INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE INDEX admin_grants_actor_time ON admin_grants (actor, created_at_ms);

CREATE TABLE grant_approvals (
    request_id    TEXT    PRIMARY KEY,
    customer      TEXT    NOT NULL,
    amount        INTEGER NOT NULL,
    grant_json    TEXT    NOT NULL,
    requested_by  TEXT    NOT NULL,
    requested_at_ms INTEGER NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'approved')),
    decided_by    TEXT,
    decided_at_ms INTEGER,
    grant_id      TEXT
);

CREATE TABLE grant_voids (
    grant_id      TEXT    PRIMARY KEY,
    customer      TEXT    NOT NULL,
    amount        INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    actor         TEXT    NOT NULL,
    voided_at_ms  INTEGER NOT NULL
);

CREATE TABLE idempotency_keys (
    actor         TEXT    NOT NULL,
    idem_key      TEXT    NOT NULL,
    fingerprint   TEXT    NOT NULL,
    status        INTEGER,
    body          TEXT,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (actor, idem_key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at_ms);
