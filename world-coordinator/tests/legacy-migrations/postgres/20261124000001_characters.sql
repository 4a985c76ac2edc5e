-- Characters: one row per character, keyed by a stable id; the name is unique.
-- (epoch, version) stamp every write: a write is applied only if its stamp is not older.
CREATE TABLE characters (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    x          DOUBLE PRECISION NOT NULL,
    y          DOUBLE PRECISION NOT NULL,
    heading    DOUBLE PRECISION NOT NULL DEFAULT 0,
    epoch      BIGINT NOT NULL DEFAULT 0,
    version    BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);
