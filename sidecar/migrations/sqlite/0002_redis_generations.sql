-- The generation marker the sidecar set in each Redis shard. Redis keeping the same marker
-- means it kept its data; a missing or different one means the shard lost it and is rebuilt
-- from the ledger. A shard with no row here was never initialised (first start), not lost.
-- Mutable by design: it records the state of Redis, not credits.
CREATE TABLE redis_generations (
    shard BIGINT PRIMARY KEY,
    generation TEXT NOT NULL,
    set_at_ms BIGINT NOT NULL
);
