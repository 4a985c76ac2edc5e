-- Accounts own characters; inventories are rows. (This migration also made placeholder
-- coordinator tables when it was first written; the coordinator now migrates its own tables:
-- world-coordinator/migrations/. See `sql.rs` on why its checksum is pinned.)
CREATE TABLE accounts (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    -- argon2id PHC string
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
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
