-- A new entry kind, `overage`: the shortfall of a settle above what the balance and
-- overdraft allowed, recorded as its own entry with the request id (amount 0: it does not
-- change the balance; `details.shortfall` is the unbilled amount).

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('grant_added', 'hold_placed', 'hold_posted', 'hold_voided',
                    'hold_expired', 'grant_expired', 'adjustment', 'overage'));
