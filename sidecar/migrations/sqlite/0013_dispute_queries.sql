-- Dispute queries at scale: the revenue rollup. Each grant's credits granted, recognized
-- (burned, or repaying debt) and broken (expired) per UTC calendar month, so revenue for a
-- month reads a few rows per grant instead of folding every entry since the ledger began.
-- Derived from the entries, never the record: filled here from the entries already stored,
-- then by each append in the same transaction as its entries. A request's trail, a
-- customer's usage and a balance at an instant use the request and (customer, time)
-- indexes of migration 1.

CREATE TABLE revenue_grant_months (
    customer   TEXT    NOT NULL,
    grant_id   TEXT    NOT NULL,
    month_ms   INTEGER NOT NULL,
    granted    INTEGER NOT NULL DEFAULT 0,
    cost_basis INTEGER NOT NULL DEFAULT 0,
    recognized INTEGER NOT NULL DEFAULT 0,
    breakage   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (customer, grant_id, month_ms)
);

CREATE INDEX revenue_grant_months_month ON revenue_grant_months (month_ms);

INSERT INTO revenue_grant_months
    (customer, grant_id, month_ms, granted, cost_basis, recognized, breakage)
SELECT customer, grant_id, month_ms, SUM(granted), SUM(cost_basis), SUM(recognized),
       SUM(breakage)
FROM (
    SELECT e.customer, e.grant_id, CAST(strftime('%s', e.event_at_ms / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000 AS month_ms, e.amount AS granted,
           COALESCE(CAST(json_extract(e.details, '$.cost_basis') AS INTEGER), 0) AS cost_basis, COALESCE(CAST(json_extract(e.details, '$.debt_repaid') AS INTEGER), 0) AS recognized,
           0 AS breakage
    FROM ledger_entries e WHERE e.kind = 'grant_added' AND e.grant_id IS NOT NULL
    UNION ALL
    SELECT e.customer, json_extract(d.value, '$.grant_id'), CAST(strftime('%s', e.event_at_ms / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000, 0, 0, json_extract(d.value, '$.amount'), 0
    FROM ledger_entries e, json_each(e.grants, '$.burns') d
    WHERE e.kind IN ('hold_posted', 'hold_voided', 'hold_expired')
    UNION ALL
    SELECT e.customer, json_extract(d.value, '$.grant_id'), CAST(strftime('%s', e.event_at_ms / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000, 0, 0, 0, json_extract(d.value, '$.amount')
    FROM ledger_entries e, json_each(e.grants, '$.breakage') d
    WHERE e.kind IN ('hold_posted', 'hold_voided', 'hold_expired')
    UNION ALL
    SELECT e.customer, json_extract(d.value, '$.grant_id'), CAST(strftime('%s', e.event_at_ms / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000, 0, 0, 0, json_extract(d.value, '$.amount')
    FROM ledger_entries e, json_each(e.grants, '$.expired') d
    WHERE e.kind = 'grant_expired'
) moves
GROUP BY customer, grant_id, month_ms;
