-- Plan history: every plan a customer was put on, from when and by whom, so scheduled
-- allotments are granted only for months the customer was on the schedule's plan.
-- Append-only: a change of plan is a new row; the row with the latest since_ms at a time
-- is the plan then (a null plan: none).
--
-- Customers that exist when this runs get one row: their current plan since they were
-- created (their earlier plans, if any, were never recorded).

CREATE TABLE customer_plan_history (
    customer TEXT   NOT NULL REFERENCES customers (customer),
    plan     TEXT,
    since_ms BIGINT NOT NULL,
    actor    TEXT   NOT NULL
);

CREATE INDEX customer_plan_history_customer ON customer_plan_history (customer, since_ms);

CREATE TRIGGER customer_plan_history_append_only BEFORE UPDATE OR DELETE ON customer_plan_history
    FOR EACH ROW EXECUTE FUNCTION creditgate_refuse_change();
CREATE TRIGGER customer_plan_history_no_truncate BEFORE TRUNCATE ON customer_plan_history
    FOR EACH STATEMENT EXECUTE FUNCTION creditgate_refuse_change();

INSERT INTO customer_plan_history (customer, plan, since_ms, actor)
    SELECT customer, plan, created_at_ms, 'migration:plan_history'
    FROM customers WHERE plan IS NOT NULL;
