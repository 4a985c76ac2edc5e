-- Zones read the items lying on the ground in their cells every few seconds
-- (zone-server/src/ground.rs): a partial index keeps that read off the carried items.
CREATE INDEX items_ground ON items (x, y) WHERE holder IS NULL;
