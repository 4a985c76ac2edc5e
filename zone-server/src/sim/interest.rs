//! Interest management: a uniform grid of buckets one view radius wide, rebuilt every tick, so
//! finding what an observer sees looks at 3 × 3 buckets instead of every entity.

use std::collections::HashMap;

use bevy_ecs::prelude::*;

use super::components::{Position, SimSettings};

#[derive(Resource, Default)]
pub struct Grid {
    cell: f32,
    buckets: HashMap<(i32, i32), Vec<(Entity, Position)>>,
}

impl Grid {
    fn key(&self, p: Position) -> (i32, i32) {
        ((p.x / self.cell).floor() as i32, (p.y / self.cell).floor() as i32)
    }

    /// Calls `f` with every entity within `radius` (≤ the bucket size) of `at`.
    pub fn for_each_near(&self, at: Position, radius: f32, mut f: impl FnMut(Entity, Position, f32)) {
        let (kx, ky) = self.key(at);
        let r2 = radius * radius;
        for dx in -1..=1 {
            for dy in -1..=1 {
                let Some(bucket) = self.buckets.get(&(kx + dx, ky + dy)) else { continue };
                for &(e, p) in bucket {
                    let d2 = (p.x - at.x).powi(2) + (p.y - at.y).powi(2);
                    if d2 <= r2 {
                        f(e, p, d2);
                    }
                }
            }
        }
    }
}

pub fn rebuild_grid(settings: Res<SimSettings>, mut grid: ResMut<Grid>, q: Query<(Entity, &Position)>) {
    grid.cell = settings.view_radius.max(1.0);
    // Keep the buckets' allocations from tick to tick; drop only the empty ones.
    grid.buckets.retain(|_, v| {
        let keep = !v.is_empty();
        v.clear();
        keep
    });
    for (e, &p) in &q {
        let key = grid.key(p);
        grid.buckets.entry(key).or_default().push((e, p));
    }
}
