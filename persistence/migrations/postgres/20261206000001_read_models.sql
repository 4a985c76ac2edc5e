-- Checkpoints of the read models projected from the event stream (docs/read-models.md): each
-- model's state as JSON and the stream position it includes, so a restarted projector starts
-- from here and replays only what came after.
CREATE TABLE read_models (
    name     TEXT PRIMARY KEY,
    position TEXT NOT NULL,
    body     TEXT NOT NULL
);
