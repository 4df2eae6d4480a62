-- Plan history: every plan a customer was put on, from when and by whom, so scheduled
-- allotments are granted only for months the customer was on the schedule's plan.
-- Append-only: a change of plan is a new row; the row with the latest since_ms at a time
-- is the plan then (a null plan: none).
--
-- Customers that exist when this runs get one row: their current plan since they were
-- created (their earlier plans, if any, were never recorded).

CREATE TABLE customer_plan_history (
    customer TEXT    NOT NULL REFERENCES customers (customer),
    plan     TEXT,
    since_ms INTEGER NOT NULL,
    actor    TEXT    NOT NULL
);

CREATE INDEX customer_plan_history_customer ON customer_plan_history (customer, since_ms);

CREATE TRIGGER customer_plan_history_no_update BEFORE UPDATE ON customer_plan_history
BEGIN
    SELECT RAISE(ABORT, 'customer_plan_history is append-only: UPDATE refused');
END;

CREATE TRIGGER customer_plan_history_no_delete BEFORE DELETE ON customer_plan_history
BEGIN
    SELECT RAISE(ABORT, 'customer_plan_history is append-only: DELETE refused');
END;

INSERT INTO customer_plan_history (customer, plan, since_ms, actor)
    SELECT customer, plan, created_at_ms, 'migration:plan_history'
    FROM customers WHERE plan IS NOT NULL;
