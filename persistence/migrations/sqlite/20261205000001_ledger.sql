-- Kept in step with migrations/postgres (same tables and columns, SQLite types).
DROP TABLE character_items;

CREATE TABLE wallets (
    character_id BIGINT PRIMARY KEY REFERENCES characters(id) ON DELETE CASCADE,
    gold         BIGINT NOT NULL DEFAULT 0 CHECK (gold >= 0),
    epoch        BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE items (
    id      BIGINT PRIMARY KEY,
    kind    BIGINT NOT NULL,
    count   BIGINT NOT NULL CHECK (count > 0),
    version BIGINT NOT NULL,
    holder  BIGINT REFERENCES characters(id),
    x       DOUBLE PRECISION,
    y       DOUBLE PRECISION,
    CHECK ((holder IS NULL) = (x IS NOT NULL AND y IS NOT NULL))
);
CREATE INDEX items_holder ON items (holder);

CREATE TABLE ledger (
    id      BIGINT PRIMARY KEY,
    outcome BIGINT NOT NULL,
    at      TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE id_blocks (
    name TEXT PRIMARY KEY,
    next BIGINT NOT NULL
);
INSERT INTO id_blocks (name, next) VALUES ('ledger', 1);
