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
