//! Interest management: a uniform grid of buckets as wide as the largest query radius, rebuilt
//! every tick, so finding what an observer sees looks at 3 × 3 buckets instead of every entity.
//! Each bucket entry carries the entity's quantised state, computed once per tick here rather
//! than once per observer that sees it.

use bevy_ecs::prelude::*;
use worldmesh_protocol::EntityKind;
use worldmesh_protocol::snapshot::{QEntity, Quantizer};

use super::components::{Id, Motion, Position, SimSettings};
use super::snapshot::HYSTERESIS;
use worldmesh_game::Synced;

/// One entity as the grid holds it.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub entity: Entity,
    pub pos: Position,
    pub q: QEntity,
}

/// Dense buckets over the world's bounds (positions are always inside them).
#[derive(Resource, Default)]
pub struct Grid {
    cell: f32,
    min_x: f32,
    min_y: f32,
    cols: i32,
    rows: i32,
    buckets: Vec<Vec<Seen>>,
}

impl Grid {
    fn key(&self, p: Position) -> (i32, i32) {
        let kx = ((p.x - self.min_x) / self.cell).floor() as i32;
        let ky = ((p.y - self.min_y) / self.cell).floor() as i32;
        (kx.clamp(0, self.cols - 1), ky.clamp(0, self.rows - 1))
    }

    /// False before the first tick has built the grid.
    pub fn is_built(&self) -> bool {
        !self.buckets.is_empty()
    }

    fn bucket(&self, kx: i32, ky: i32) -> Option<&Vec<Seen>> {
        if kx < 0 || ky < 0 || kx >= self.cols || ky >= self.rows {
            return None;
        }
        self.buckets.get((ky * self.cols + kx) as usize)
    }

    /// The largest radius [`Grid::for_each_near`] answers: a bucket's side.
    pub fn max_radius(&self) -> f32 {
        self.cell
    }

    /// Calls `f` with every entity within `radius` (at most the bucket size) of `at`, with its
    /// squared distance.
    pub fn for_each_near<'g>(
        &'g self,
        at: Position,
        radius: f32,
        mut f: impl FnMut(&'g Seen, f32),
    ) {
        debug_assert!(
            radius <= self.cell + 1e-3,
            "query radius {radius} exceeds the grid cell {}",
            self.cell
        );
        let (kx, ky) = self.key(at);
        let r2 = radius * radius;
        for dx in -1..=1 {
            for dy in -1..=1 {
                let Some(bucket) = self.bucket(kx + dx, ky + dy) else {
                    continue;
                };
                for s in bucket {
                    let d2 = (s.pos.x - at.x).powi(2) + (s.pos.y - at.y).powi(2);
                    if d2 <= r2 {
                        f(s, d2);
                    }
                }
            }
        }
    }
}

pub fn rebuild_grid(
    settings: Res<SimSettings>,
    mut grid: ResMut<Grid>,
    q: Query<(Entity, &Id, &Position, &Motion, &Synced)>,
) {
    // Buckets must cover the largest radius anyone queries: the view radius plus hysteresis.
    let cell = (settings.view_radius * (1.0 + HYSTERESIS)).max(1.0);
    let b = settings.bounds;
    let cols = (((b.max_x - b.min_x) / cell).floor() as i32 + 1).max(1);
    let rows = (((b.max_y - b.min_y) / cell).floor() as i32 + 1).max(1);
    let grid = &mut *grid;
    (grid.cell, grid.min_x, grid.min_y, grid.cols, grid.rows) =
        (cell, b.min_x, b.min_y, cols, rows);
    // Keep the buckets' allocations from tick to tick.
    grid.buckets.resize_with((cols * rows) as usize, Vec::new);
    grid.buckets.iter_mut().for_each(Vec::clear);
    let quantizer = Quantizer::new(b);
    for (entity, rec, &pos, motion, synced) in &q {
        // Characters (players, also detached ones) have ids below the NPC range.
        let kind = EntityKind::of(rec.0);
        let mut q = quantizer.quantize(rec.0.0, kind, pos.x, pos.y, motion.heading, motion.speed);
        q.rev = synced.rev;
        let (kx, ky) = grid.key(pos);
        grid.buckets[(ky * cols + kx) as usize].push(Seen { entity, pos, q });
    }
}
