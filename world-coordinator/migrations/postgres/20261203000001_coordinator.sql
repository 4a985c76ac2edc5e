-- The coordinator's durable state: the world's tick origin, zones with ids and lease
-- generations, and one authority row per entity with the last decided handoff (see
-- world/src/handoff.rs). Booleans are integers so one query text serves PostgreSQL and SQLite.
--
-- Databases made before the coordinator owned its tables already have these (persistence's
-- migrations 2 and 3 created them, and applied migrations never change): IF NOT EXISTS adopts
-- them as they are. The coordinator records its migrations in `_coordinator_migrations`, apart
-- from persistence's, so either may share a database with the other or have one of its own.
CREATE TABLE IF NOT EXISTS coordinator_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS coordinator_zones (
    zone_id          BIGINT PRIMARY KEY,
    name             TEXT NOT NULL,
    address          TEXT NOT NULL,
    capacity         BIGINT NOT NULL,
    lease_generation BIGINT NOT NULL,
    draining         BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS coordinator_authority (
    entity_id    BIGINT PRIMARY KEY,
    zone_id      BIGINT NOT NULL,
    epoch        BIGINT NOT NULL,
    last_epoch   BIGINT,
    last_attempt BIGINT,
    -- 1 committed, 2 aborted
    last_outcome BIGINT
);
