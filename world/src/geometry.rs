//! Where things are: the world's rectangle, its square cells, and which zone owns a cell.
//!
//! Every "which cell is this position in" in the cluster goes through [`axis_cell`], so a
//! position outside the world (or NaN, from a corrupt row) lands in an edge cell the same way
//! everywhere, and the coordinator, the zones and the tests never disagree about a border.

use worldmesh_protocol::grpc::coordinator as pb;
use worldmesh_protocol::ids::ZoneId;

/// Metres around a spawn point a new character may appear (and what a `WorldGeometry` without
/// the field means).
pub const DEFAULT_SPAWN_SPREAD: f32 = 20.0;

/// The world's shape, fixed for the life of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub min_x: f32,
    pub min_y: f32,
    pub max_x: f32,
    pub max_y: f32,
    /// Side of a square cell, metres.
    pub cell_size: f32,
    pub tick_rate_hz: u32,
    /// Where new characters appear; a character's spawn point is picked by its name.
    pub spawn_points: Vec<(f32, f32)>,
    /// A new character appears within this many metres of its spawn point, in x and in y:
    /// players who pick the same point do not stand on each other.
    pub spawn_spread: f32,
}

impl Default for Geometry {
    fn default() -> Self {
        // 2 km square in 250 m cells: 8 × 8 cells, enough for a 4-zone cluster to have
        // two columns each. Two spawn points in different columns put players in two zones.
        Self {
            min_x: 0.0,
            min_y: 0.0,
            max_x: 2000.0,
            max_y: 2000.0,
            cell_size: 250.0,
            tick_rate_hz: 20,
            spawn_points: vec![(625.0, 1000.0), (1375.0, 1000.0)],
            spawn_spread: DEFAULT_SPAWN_SPREAD,
        }
    }
}

impl Geometry {
    pub fn cells_x(&self) -> u32 {
        cells(self.min_x, self.max_x, self.cell_size)
    }

    pub fn cells_y(&self) -> u32 {
        cells(self.min_y, self.max_y, self.cell_size)
    }

    /// The cell containing a position; positions outside the world are clamped to its edge.
    pub fn cell_of(&self, x: f32, y: f32) -> (u32, u32) {
        (
            axis_cell(x, self.min_x, self.cell_size, self.cells_x()),
            axis_cell(y, self.min_y, self.cell_size, self.cells_y()),
        )
    }

    /// Where the world's `index`th NPC is spawned, and comes back when defeated: spread
    /// evenly over the world by a low-discrepancy sequence (deterministic, no clumps), so the
    /// coordinator and every zone agree on it without being told.
    pub fn npc_home(&self, index: u64) -> (f32, f32) {
        npc_home(self.min_x, self.min_y, self.max_x, self.max_y, index)
    }

    /// The form zones and gateways receive (`GetWorld`, every published map).
    pub fn to_pb(&self, tick_origin_unix_ms: u64) -> pb::WorldGeometry {
        pb::WorldGeometry {
            min_x: self.min_x,
            min_y: self.min_y,
            max_x: self.max_x,
            max_y: self.max_y,
            cell_size: self.cell_size,
            tick_rate_hz: self.tick_rate_hz,
            spawn_points: self
                .spawn_points
                .iter()
                .map(|&(x, y)| pb::SpawnPoint { x, y })
                .collect(),
            tick_origin_unix_ms,
            spawn_spread: self.spawn_spread,
        }
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn cells(min: f32, max: f32, size: f32) -> u32 {
    ((max - min) / size).ceil().max(1.0) as u32
}

/// The index of the cell containing `v` along one axis of `n` cells of `size` starting at
/// `min`: clamped to `0..n`, and 0 for NaN (a cast alone would also give 0, but only by
/// accident of Rust's saturating float casts; say it).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn axis_cell(v: f32, min: f32, size: f32, n: u32) -> u32 {
    let c = ((v - min) / size).floor();
    if c.is_nan() {
        0
    } else {
        c.clamp(0.0, n.saturating_sub(1) as f32) as u32
    }
}

/// Where the world's `index`th NPC lives in a world spanning `(min_x, min_y)..(max_x, max_y)`
/// (see [`Geometry::npc_home`]): the additive recurrence of the plastic number's powers, whose
/// points fill a rectangle evenly for any count.
pub fn npc_home(min_x: f32, min_y: f32, max_x: f32, max_y: f32, index: u64) -> (f32, f32) {
    // In f64: an f32 product loses the fraction once index × 0.75 passes 2^24.
    let i = index as f64;
    let (fx, fy) = (
        (0.5 + i * 0.754_877_666_246_692_7).fract(),
        (0.5 + i * 0.569_840_290_998_053_3).fract(),
    );
    (
        min_x + (fx as f32) * (max_x - min_x),
        min_y + (fy as f32) * (max_y - min_y),
    )
}

/// The cell containing a position in a published map; `None` before the map has a world.
pub fn cell_in(map: &pb::WorldMap, x: f32, y: f32) -> Option<(u32, u32)> {
    let g = map.world.as_ref()?;
    Some((
        axis_cell(x, g.min_x, g.cell_size, map.cells_x),
        axis_cell(y, g.min_y, g.cell_size, map.cells_y),
    ))
}

/// The id of the zone owning the cell at a position in a published map, with that cell.
/// Allocation-free: zones call it for every character every tick.
pub fn owner_in(map: &pb::WorldMap, x: f32, y: f32) -> Option<(ZoneId, (u32, u32))> {
    let (cx, cy) = cell_in(map, x, y)?;
    let owner = *map
        .cell_owners
        .get((cy * map.cells_x + cx) as usize)
        .filter(|&&o| o != 0)?;
    Some((ZoneId(owner), (cx, cy)))
}

/// The owner of the cell at a position in a published map, with its address.
pub fn locate_in(map: &pb::WorldMap, x: f32, y: f32) -> Option<(pb::ZoneInfo, (u32, u32))> {
    let (owner, cell) = owner_in(map, x, y)?;
    map.zones
        .iter()
        .find(|z| z.zone_id == owner.0)
        .map(|z| (z.clone(), cell))
}

/// The smallest rectangle `[x0, y0, x1, y1)` holding every cell `me` owns in a published
/// map (edge cells stretch to infinity, as [`axis_cell`] clamps beyond the world); `None`
/// when it owns none.
pub fn owned_rect(map: &pb::WorldMap, me: ZoneId) -> Option<[f32; 4]> {
    let g = map.world.as_ref()?;
    let (mut lo, mut hi) = ((u32::MAX, u32::MAX), (0u32, 0u32));
    for (i, &owner) in map.cell_owners.iter().enumerate() {
        if owner != me.0 || map.cells_x == 0 {
            continue;
        }
        let (cx, cy) = (i as u32 % map.cells_x, i as u32 / map.cells_x);
        lo = (lo.0.min(cx), lo.1.min(cy));
        hi = (hi.0.max(cx), hi.1.max(cy));
    }
    if lo.0 == u32::MAX {
        return None;
    }
    let edge = |c: u32, n: u32, min: f32, low: bool| -> f32 {
        match (low, c) {
            (true, 0) => f32::MIN,
            (false, c) if c + 1 >= n => f32::MAX,
            (true, c) => min + c as f32 * g.cell_size,
            (false, c) => min + (c + 1) as f32 * g.cell_size,
        }
    };
    Some([
        edge(lo.0, map.cells_x, g.min_x, true),
        edge(lo.1, map.cells_y, g.min_y, true),
        edge(hi.0, map.cells_x, g.min_x, false),
        edge(hi.1, map.cells_y, g.min_y, false),
    ])
}

/// For every cell (row-major, as in `cell_owners`), the zones other than `me` owning a cell
/// within `margin` metres of it, with their addresses: where a character standing in that cell
/// must be shown (border visibility). Empty when the map is not whole.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn near_zones(map: &pb::WorldMap, me: ZoneId, margin: f32) -> Vec<Vec<(ZoneId, String)>> {
    let Some(g) = map.world.as_ref() else {
        return Vec::new();
    };
    let (w, h) = (i64::from(map.cells_x), i64::from(map.cells_y));
    if map.cell_owners.len() as i64 != w * h || !(margin.is_finite() && g.cell_size > 0.0) {
        return Vec::new();
    }
    // A cell k cells away is within the margin when (k - 1) cells ≤ margin: the last one is
    // floor(margin / cell) + 1 away (ceil would miss it when the margin is an exact multiple).
    let reach = (margin / g.cell_size).floor() as i64 + 1;
    let address = |z: ZoneId| {
        map.zones
            .iter()
            .find(|i| i.zone_id == z.0)
            .map(|i| i.address.clone())
    };
    let mut out = vec![Vec::new(); (w * h) as usize];
    for cy in 0..h {
        for cx in 0..w {
            let mut zones: Vec<(ZoneId, String)> = Vec::new();
            for dy in -reach..=reach {
                for dx in -reach..=reach {
                    let (nx, ny) = (cx + dx, cy + dy);
                    if nx < 0 || ny < 0 || nx >= w || ny >= h {
                        continue;
                    }
                    // Distance between the two cells' rectangles.
                    let gap = |d: i64| (d.abs() - 1).max(0) as f32 * g.cell_size;
                    if gap(dx).hypot(gap(dy)) > margin {
                        continue;
                    }
                    let owner = ZoneId(map.cell_owners[(ny * w + nx) as usize]);
                    if owner != ZoneId::NONE
                        && owner != me
                        && !zones.iter().any(|(z, _)| *z == owner)
                        && let Some(a) = address(owner)
                    {
                        zones.push((owner, a));
                    }
                }
            }
            out[(cy * w + cx) as usize] = zones;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(owners: Vec<u64>) -> pb::WorldMap {
        let g = Geometry {
            max_x: 300.0,
            max_y: 100.0,
            cell_size: 100.0,
            ..Geometry::default()
        };
        pb::WorldMap {
            world: Some(g.to_pb(0)),
            cells_x: g.cells_x(),
            cells_y: g.cells_y(),
            cell_owners: owners,
            zones: [1, 2, 3]
                .into_iter()
                .map(|id| pb::ZoneInfo {
                    zone_id: id,
                    address: format!("z{id}"),
                    ..Default::default()
                })
                .collect(),
            version: 1,
        }
    }

    #[test]
    fn positions_outside_the_world_or_nan_land_in_an_edge_cell() {
        let g = Geometry::default();
        assert_eq!(g.cell_of(-5.0, 1e9), (0, 7));
        assert_eq!(g.cell_of(f32::NAN, f32::INFINITY), (0, 7));
        assert_eq!(g.cell_of(f32::NEG_INFINITY, 1999.9), (0, 7));
        assert_eq!(g.cell_of(250.0, 249.9), (1, 0));
        let m = map(vec![1, 2, 3]);
        assert_eq!(owner_in(&m, f32::NAN, 50.0), Some((ZoneId(1), (0, 0))));
        assert_eq!(owner_in(&m, 1e9, -1e9), Some((ZoneId(3), (2, 0))));
    }

    #[test]
    fn unowned_cells_and_maps_without_a_world_have_no_owner() {
        let m = map(vec![1, 0, 3]);
        assert_eq!(owner_in(&m, 150.0, 50.0), None);
        assert_eq!(
            locate_in(&m, 250.0, 50.0).map(|(z, c)| (z.address, c)),
            Some(("z3".into(), (2, 0)))
        );
        let no_world = pb::WorldMap { world: None, ..m };
        assert_eq!(owner_in(&no_world, 50.0, 50.0), None);
    }

    #[test]
    fn near_zones_lists_other_owners_within_the_margin() {
        let m = map(vec![1, 2, 3]);
        let near = near_zones(&m, ZoneId(2), 10.0);
        assert_eq!(near[0], vec![(ZoneId(1), "z1".to_owned())]);
        assert_eq!(
            near[1],
            vec![(ZoneId(1), "z1".to_owned()), (ZoneId(3), "z3".to_owned())]
        );
        assert_eq!(
            near_zones(&m, ZoneId(1), 10.0)[0],
            vec![(ZoneId(2), "z2".to_owned())]
        );
        // A margin over a whole cell reaches two cells away.
        assert_eq!(
            near_zones(&m, ZoneId(1), 150.0)[0],
            vec![(ZoneId(2), "z2".to_owned()), (ZoneId(3), "z3".to_owned())]
        );
        // Exactly one cell of margin reaches the cell beyond the next (its edge is 100 m away).
        assert_eq!(
            near_zones(&m, ZoneId(1), 100.0)[0],
            vec![(ZoneId(2), "z2".to_owned()), (ZoneId(3), "z3".to_owned())]
        );
        assert_eq!(
            near_zones(&m, ZoneId(3), 10.0)[2],
            vec![(ZoneId(2), "z2".to_owned())]
        );
        let torn = pb::WorldMap {
            cell_owners: vec![1],
            ..m.clone()
        };
        assert!(near_zones(&torn, ZoneId(1), 10.0).is_empty());
        assert!(near_zones(&m, ZoneId(1), f32::NAN).is_empty());
    }
}
