-- A game's persisted components (worldmesh_game::ComponentValues, opaque here), saved and
-- fenced with the rest of the character.
ALTER TABLE characters ADD COLUMN game BLOB NOT NULL DEFAULT x'';
