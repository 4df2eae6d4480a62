-- Dead letters: stream entries the ledger writer could not apply (an event id the ledger
-- holds with other fields, an entry it cannot read, an event it cannot place). Each is
-- recorded here with its raw fields and acknowledged, so one bad entry never stops the
-- stream behind it. Append-only: what an operator does about one (replay, discard) is a
-- row of dead_letter_actions, naming who did it.
CREATE TABLE dead_letters (
    id             INTEGER PRIMARY KEY,
    dedup_key      TEXT    NOT NULL UNIQUE,  -- shard/stream id/SHA-256 of the fields: a
                                             -- redelivered entry is recorded once
    shard          INTEGER NOT NULL,
    stream_id      TEXT    NOT NULL,         -- the Redis stream entry id (ms-seq)
    event_id       TEXT    NOT NULL,         -- '' when the entry had none
    reason         TEXT    NOT NULL CHECK (reason IN ('conflict', 'malformed', 'unplaceable')),
    detail         TEXT    NOT NULL,         -- what was wrong, for the operator
    fields         TEXT    NOT NULL CHECK (json_valid(fields)),  -- [[field, value], ...]
    recorded_at_ms INTEGER NOT NULL
);

CREATE INDEX dead_letters_event ON dead_letters (event_id);

CREATE TABLE dead_letter_actions (
    id             INTEGER PRIMARY KEY,
    dead_letter_id INTEGER NOT NULL REFERENCES dead_letters (id),
    action         TEXT    NOT NULL CHECK (action IN ('replayed', 'replay_failed', 'discarded')),
    actor          TEXT    NOT NULL,
    note           TEXT    NOT NULL,         -- the operator's reason, or why a replay failed
    at_ms          INTEGER NOT NULL
);

CREATE INDEX dead_letter_actions_letter ON dead_letter_actions (dead_letter_id);

CREATE TRIGGER dead_letters_no_update BEFORE UPDATE ON dead_letters
BEGIN
    SELECT RAISE(ABORT, 'dead_letters is append-only: UPDATE refused');
END;

CREATE TRIGGER dead_letters_no_delete BEFORE DELETE ON dead_letters
BEGIN
    SELECT RAISE(ABORT, 'dead_letters is append-only: DELETE refused');
END;

CREATE TRIGGER dead_letter_actions_no_update BEFORE UPDATE ON dead_letter_actions
BEGIN
    SELECT RAISE(ABORT, 'dead_letter_actions is append-only: UPDATE refused');
END;

CREATE TRIGGER dead_letter_actions_no_delete BEFORE DELETE ON dead_letter_actions
BEGIN
    SELECT RAISE(ABORT, 'dead_letter_actions is append-only: DELETE refused');
END;
