//! Movement system: integrates intents into positions, inside the world bounds.

use bevy_ecs::prelude::*;

use super::components::{Dirty, Intent, Motion, Position, SimSettings};

pub fn integrate(settings: Res<SimSettings>, mut q: Query<(&Intent, &mut Position, &mut Motion, &mut Dirty)>) {
    let b = settings.bounds;
    for (intent, mut pos, mut motion, mut dirty) in &mut q {
        let new_motion = Motion { heading: intent.heading, speed: intent.speed };
        if *motion != new_motion {
            *motion = new_motion;
            dirty.0 = true;
        }
        if intent.speed <= 0.0 {
            continue;
        }
        let step = intent.speed * settings.dt;
        let x = (pos.x + intent.heading.cos() * step).clamp(b.min_x, b.max_x);
        let y = (pos.y + intent.heading.sin() * step).clamp(b.min_y, b.max_y);
        if x != pos.x || y != pos.y {
            *pos = Position { x, y };
            dirty.0 = true;
        }
    }
}
