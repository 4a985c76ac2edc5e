-- Intentionally empty. This migration first created the coordinator's tables; the coordinator
-- now owns them and their migrations (world-coordinator/migrations/), which adopt the tables
-- this migration made in databases where it ran. See `sql.rs` on why its checksum is pinned.
SELECT 1;
