-- Kept in step with migrations/postgres: same tables, same columns, SQLite types.
CREATE TABLE characters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    x          REAL NOT NULL,
    y          REAL NOT NULL,
    heading    REAL NOT NULL DEFAULT 0,
    epoch      INTEGER NOT NULL DEFAULT 0,
    version    INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
