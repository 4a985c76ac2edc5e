//! The games in this repository, by the names `--game` takes. A zone runs one; every zone of
//! a cluster must run the same.

use worldmesh_game::GameRef;

/// Every name [`by_name`] knows.
pub const NAMES: [&str; 3] = ["arena", "paint", "none"];

/// The game called `name`: `arena` (the example game, `games/arena`), `paint` (the smallest
/// one, `games/paint`) or `none` (bare movement and chat).
#[must_use]
pub fn by_name(name: &str) -> Option<GameRef> {
    match name {
        "arena" => Some(GameRef::new(worldmesh_arena::Arena)),
        "paint" => Some(GameRef::new(worldmesh_paint::Paint)),
        "none" => Some(GameRef::default()),
        _ => None,
    }
}
