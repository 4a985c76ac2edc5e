-- The economy's ledger (issue 17), written through (never by the checkpoint flusher):
-- items, gold, the inventory claim that fences zombie zones, and every request's outcome.
-- `character_items` (slot rows nobody used) makes way for `items`.
DROP TABLE character_items;

-- One row per character that a zone has claimed. `epoch` is the authority epoch of the claim
-- in force: an inventory change must carry it. Apart from `characters` so that a trade never
-- waits on a checkpoint flush holding the character row.
CREATE TABLE wallets (
    character_id BIGINT PRIMARY KEY REFERENCES characters(id) ON DELETE CASCADE,
    gold         BIGINT NOT NULL DEFAULT 0 CHECK (gold >= 0),
    epoch        BIGINT NOT NULL DEFAULT 0
);

-- Item instances: carried (holder set) or on the ground (x, y set), never both.
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

-- The first outcome of every trade and inventory change, by its id: 0 committed, 1… the
-- abort reasons (worldmesh_economy::Outcome::code). First writer wins (the primary key).
CREATE TABLE ledger (
    id      BIGINT PRIMARY KEY,
    outcome BIGINT NOT NULL,
    at      TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Blocks of ids for trades, changes and items, reserved by zones.
CREATE TABLE id_blocks (
    name TEXT PRIMARY KEY,
    next BIGINT NOT NULL
);
INSERT INTO id_blocks (name, next) VALUES ('ledger', 1);
