-- Kept in step with migrations/postgres (same tables and columns, SQLite types).
CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    -- argon2id PHC string
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

ALTER TABLE characters ADD COLUMN owner BIGINT REFERENCES accounts(id);
-- Free-form stats (level, health, …) as JSON text: schema-less until a game needs columns.
ALTER TABLE characters ADD COLUMN stats TEXT NOT NULL DEFAULT '{}';

CREATE TABLE character_items (
    character_id BIGINT NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
    slot         INTEGER NOT NULL,
    item         TEXT NOT NULL,
    quantity     INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (character_id, slot)
);

-- The coordinator's durable state: zones with their lease generations, which zone owns each
-- cell, and the authority epoch of each entity.
CREATE TABLE coordinator_zones (
    name             TEXT PRIMARY KEY,
    address          TEXT NOT NULL,
    lease_generation BIGINT NOT NULL,
    updated_at       TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE coordinator_cells (
    cell_x     INTEGER NOT NULL,
    cell_y     INTEGER NOT NULL,
    zone_name  TEXT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (cell_x, cell_y)
);

CREATE TABLE entity_authority (
    entity_id BIGINT PRIMARY KEY,
    zone_name TEXT NOT NULL,
    epoch     BIGINT NOT NULL
);
