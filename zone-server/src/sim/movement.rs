//! Movement system: integrates intents into positions, inside the world bounds and outside
//! blocked cells. Speed changes at most [`MAX_ACCEL`] per second (clients predicting their own
//! movement must apply the same ramp); heading changes at once.

use bevy_ecs::prelude::*;
use worldmesh_game::Immobile;

use super::components::{Dirty, Intent, Motion, Position, SimSettings};

/// Largest change of speed per second, m/s²: standing to full speed (10 m/s) in a third of a
/// second, quick enough to feel direct, slow enough to rule out instant dashes.
pub const MAX_ACCEL: f32 = 30.0;

/// The walls: the game crate's, so games check lines of sight against the same map.
pub use worldmesh_game::CollisionMap;

fn approach(from: f32, to: f32, step: f32) -> f32 {
    if (to - from).abs() <= step {
        to
    } else {
        from + step * (to - from).signum()
    }
}

/// What moves: everything with an intent, except the frozen (mid-handoff) and the immobile
/// (a game said so).
type Moving<'w, 's> = Query<
    'w,
    's,
    (
        &'static Intent,
        &'static mut Position,
        &'static mut Motion,
        Option<&'static mut Dirty>,
    ),
    (Without<super::components::Frozen>, Without<Immobile>),
>;

pub fn integrate(settings: Res<SimSettings>, map: Res<CollisionMap>, mut q: Moving) {
    let b = settings.bounds;
    for (intent, mut pos, mut motion, mut dirty) in &mut q {
        let new_motion = Motion {
            heading: intent.heading,
            speed: approach(motion.speed, intent.speed, MAX_ACCEL * settings.dt),
        };
        let mut changed = *motion != new_motion;
        *motion = new_motion;
        if motion.speed > 0.0 {
            let step = motion.speed * settings.dt;
            let x = (pos.x + motion.heading.cos() * step).clamp(b.min_x, b.max_x);
            let y = (pos.y + motion.heading.sin() * step).clamp(b.min_y, b.max_y);
            // Into a blocked cell: slide along whichever axis stays free, else stop.
            let inside = map.is_blocked(pos.x, pos.y);
            let free = |x: f32, y: f32| inside || !map.is_blocked(x, y);
            let (x, y) = if free(x, y) {
                (x, y)
            } else if free(x, pos.y) {
                (x, pos.y)
            } else if free(pos.x, y) {
                (pos.x, y)
            } else {
                (pos.x, pos.y)
            };
            if x != pos.x || y != pos.y {
                *pos = Position { x, y };
                changed = true;
            }
        }
        // NPCs have no `Dirty`: they are not persisted.
        if changed && let Some(d) = dirty.as_mut() {
            d.0 = true;
        }
    }
}
