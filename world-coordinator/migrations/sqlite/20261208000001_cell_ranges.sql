-- The balancer's assignment of cells to zones (world-coordinator/src/balance.rs): the active
-- zones in the order of their ranges along the Hilbert curve, each with where its range
-- starts, and the cells operators pinned to a zone (by name: names outlive zone ids).
-- Rewritten whole in one transaction whenever a cut moves or a zone joins or leaves.
CREATE TABLE coordinator_cell_ranges (
    range_index BIGINT PRIMARY KEY,
    zone_id  BIGINT NOT NULL,
    range_start BIGINT NOT NULL
);

CREATE TABLE coordinator_cell_pins (
    cell      BIGINT PRIMARY KEY,
    zone_name TEXT NOT NULL
);
