-- The coordinator's durable state, replacing the placeholder tables of migration 2 (never
-- used): zones with ids and lease generations, and one authority row per entity with the
-- last decided handoff (see world-coordinator/src/handoff.rs). Booleans are integers so one
-- query text serves PostgreSQL and SQLite.
DROP TABLE IF EXISTS coordinator_cells;
DROP TABLE IF EXISTS coordinator_zones;
DROP TABLE IF EXISTS entity_authority;

CREATE TABLE coordinator_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

CREATE TABLE coordinator_zones (
    zone_id          BIGINT PRIMARY KEY,
    name             TEXT NOT NULL,
    address          TEXT NOT NULL,
    capacity         BIGINT NOT NULL,
    lease_generation BIGINT NOT NULL,
    draining         BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE coordinator_authority (
    entity_id    BIGINT PRIMARY KEY,
    zone_id      BIGINT NOT NULL,
    epoch        BIGINT NOT NULL,
    last_epoch   BIGINT,
    last_attempt BIGINT,
    -- 1 committed, 2 aborted
    last_outcome BIGINT
);
