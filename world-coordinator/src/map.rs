//! Zones, leases and the cell → zone assignment. No I/O: every call takes `now`.
//!
//! Two layouts: fixed column stripes (one per live zone, in id order), or cells assigned by
//! load ([`crate::balance`]: ranges of a Hilbert curve that the coordinator rebalances from
//! the loads zones report in their heartbeats).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use worldmesh_world::Geometry;
use worldmesh_world::handoff::ZoneId;

use crate::balance::{Assignment, BalanceConfig, Moved};

/// What a zone reports of its load with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    pub entities: u32,
    pub players: u32,
    pub tick_p99_ms: f32,
    /// Per cell it simulates something in: `(row-major cell, players, entities)`.
    pub cells: Vec<(u32, u32, u32)>,
}

/// What an NPC or other non-player entity weighs against a player in a cell's load: it is
/// simulated but observes nothing, and observers are what a tick pays for.
pub const ENTITY_WEIGHT: f32 = 0.1;

/// A registered zone server.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub id: ZoneId,
    pub name: String,
    pub address: String,
    pub capacity: u32,
    pub lease_generation: u64,
    pub lease_expires: Instant,
    pub entities: u32,
    pub players: u32,
    /// Owns no cells; its entities are leaving by handoff.
    pub draining: bool,
    /// Its last reported tick p99, milliseconds.
    pub tick_p99_ms: f32,
    /// Its last reported per-cell load (see [`Load::cells`]).
    pub cells: Vec<(u32, u32, u32)>,
}

/// The registry and the map.
#[derive(Debug)]
pub struct WorldMap {
    geometry: Geometry,
    lease_ttl: Duration,
    zones: BTreeMap<ZoneId, Zone>,
    next_zone_id: ZoneId,
    next_generation: u64,
    version: u64,
    /// Cells assigned by load (`None`: fixed column stripes).
    balance: Option<Assignment>,
    /// Every cell's owner under `balance`, row-major (kept in step with it).
    owners: Vec<Option<ZoneId>>,
    /// Pins from the configuration or the admin API, by zone name (names outlive ids):
    /// applied to the zone of that name while it is registered.
    pins: BTreeMap<u32, String>,
}

impl WorldMap {
    pub fn new(geometry: Geometry, lease_ttl: Duration) -> Self {
        Self {
            geometry,
            lease_ttl,
            zones: BTreeMap::new(),
            next_zone_id: ZoneId(1),
            next_generation: 1,
            version: 1,
            balance: None,
            owners: Vec::new(),
            pins: BTreeMap::new(),
        }
    }

    /// Assigns cells by load instead of in fixed stripes (see [`crate::balance`]).
    #[must_use]
    pub fn with_balancing(mut self) -> Self {
        let (w, h) = (self.geometry.cells_x(), self.geometry.cells_y());
        self.balance = Some(Assignment::new(w, h));
        self.sync();
        self
    }

    pub fn is_balancing(&self) -> bool {
        self.balance.is_some()
    }

    /// Restores stored ranges (a coordinator restart, after [`Self::resume`]). Ranges that do
    /// not fit the grid (its size changed) are ignored: the zones keep fresh ranges.
    pub fn restore_ranges(&mut self, zones: Vec<ZoneId>, cuts: Vec<usize>) -> bool {
        let restored = self
            .balance
            .as_mut()
            .is_some_and(|a| a.restore(zones, cuts));
        self.sync();
        restored
    }

    /// The ranges to store: active zones in curve order and the cuts between them.
    pub fn ranges(&self) -> Option<(Vec<ZoneId>, Vec<usize>)> {
        self.balance.as_ref().map(|a| {
            let (z, c) = a.ranges();
            (z.to_vec(), c.to_vec())
        })
    }

    /// Pins a cell to the zone named `zone` (`None`: unpins it). False when the cell is off
    /// the grid or the map does not balance (stripes have no pins).
    pub fn pin(&mut self, cell: (u32, u32), zone: Option<&str>) -> bool {
        let (w, h) = (self.geometry.cells_x(), self.geometry.cells_y());
        if cell.0 >= w || cell.1 >= h || self.balance.is_none() {
            return false;
        }
        let index = cell.1 * w + cell.0;
        match zone {
            Some(name) => self.pins.insert(index, name.to_owned()),
            None => self.pins.remove(&index),
        };
        self.sync();
        true
    }

    /// The pins, by row-major cell: the zone name each is pinned to.
    pub fn pins(&self) -> &BTreeMap<u32, String> {
        &self.pins
    }

    /// Brings the assignment in line with the zones (and pins); bumps the version when any
    /// cell changed hands.
    fn sync(&mut self) {
        let Some(a) = &mut self.balance else { return };
        let active: Vec<ZoneId> = self
            .zones
            .values()
            .filter(|z| !z.draining)
            .map(|z| z.id)
            .collect();
        let active = if active.is_empty() {
            self.zones.keys().copied().collect()
        } else {
            active
        };
        a.set_zones(&active);
        let by_name: BTreeMap<&str, ZoneId> = self
            .zones
            .values()
            .map(|z| (z.name.as_str(), z.id))
            .collect();
        for cell in a.pins().keys().copied().collect::<Vec<_>>() {
            a.pin(cell, None);
        }
        for (&cell, name) in &self.pins {
            if let Some(&z) = by_name.get(name.as_str()) {
                a.pin(cell, Some(z));
            }
        }
        let owners = a.owners();
        if owners != self.owners {
            self.owners = owners;
            self.version += 1;
        }
    }

    /// Each cell's load (row-major) from the zones' last reports: players, plus other
    /// entities at [`ENTITY_WEIGHT`]; a zone whose tick p99 is over half the tick period
    /// has its cells weigh more in proportion, so cells move away from a zone that is slow
    /// for reasons the counts do not show (a game's expensive rules, a slower node).
    pub fn cell_loads(&self) -> Vec<f32> {
        let n = (self.geometry.cells_x() * self.geometry.cells_y()) as usize;
        let half_period_ms = 500.0 / self.geometry.tick_rate_hz.max(1) as f32;
        let mut load = vec![0.0f32; n];
        for z in self.zones.values() {
            let slow = (z.tick_p99_ms / half_period_ms).max(1.0);
            for &(cell, players, entities) in &z.cells {
                if let Some(l) = load.get_mut(cell as usize) {
                    let others = entities.saturating_sub(players) as f32;
                    *l += (players as f32 + ENTITY_WEIGHT * others) * slow;
                }
            }
        }
        load
    }

    /// One rebalance step from the zones' last reports; returns the cells that changed
    /// hands (none when the map does not balance, or the load is even enough).
    pub fn rebalance(&mut self, config: &BalanceConfig) -> Vec<Moved> {
        let load = self.cell_loads();
        let Some(a) = &mut self.balance else {
            return Vec::new();
        };
        let moved = a.rebalance(&load, config);
        if !moved.is_empty() {
            self.owners = a.owners();
            self.version += 1;
        }
        moved
    }

    /// Max over mean of players per active zone (1: even or idle): what the balancer evens.
    pub fn load_imbalance(&self) -> f32 {
        let players: Vec<f32> = self
            .zones
            .values()
            .filter(|z| !z.draining)
            .map(|z| z.players as f32)
            .collect();
        let total: f32 = players.iter().sum();
        if players.is_empty() || total <= 0.0 {
            return 1.0;
        }
        players.iter().copied().fold(0.0, f32::max) / (total / players.len() as f32)
    }

    /// Resumes from stored zones (a coordinator restart): each gets a fresh lease, since the
    /// coordinator's absence is not theirs.
    pub fn resume(&mut self, zones: &[crate::store::ZoneRow], now: Instant) {
        for z in zones {
            self.next_zone_id = self.next_zone_id.max(ZoneId(z.id.0 + 1));
            self.next_generation = self.next_generation.max(z.lease_generation + 1);
            self.zones.insert(
                z.id,
                Zone {
                    id: z.id,
                    name: z.name.clone(),
                    address: z.address.clone(),
                    capacity: z.capacity,
                    lease_generation: z.lease_generation,
                    lease_expires: now + self.lease_ttl,
                    entities: 0,
                    players: 0,
                    draining: z.draining,
                    tick_p99_ms: 0.0,
                    cells: Vec::new(),
                },
            );
        }
        self.version += 1;
        self.sync();
    }

    /// Grows with every change of zones or cells.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn zone(&self, id: ZoneId) -> Option<&Zone> {
        self.zones.get(&id)
    }

    /// Marks a zone draining: its cells go to the others. False if the lease is unknown.
    pub fn drain(&mut self, zone_id: ZoneId, generation: u64) -> bool {
        match self.zones.get_mut(&zone_id) {
            Some(z) if z.lease_generation == generation => {
                if !z.draining {
                    z.draining = true;
                    self.version += 1;
                    self.sync();
                }
                true
            }
            _ => false,
        }
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Registers a zone and grants it a lease. A zone registering again under the same name
    /// (it restarted, or lost its lease) replaces its old entry and gets a new generation, so a
    /// heartbeat from the old incarnation is refused.
    pub fn register(&mut self, name: &str, address: &str, capacity: u32, now: Instant) -> Zone {
        self.register_replacing(name, address, capacity, now).0
    }

    /// [`Self::register`], also returning the entry it replaced (a previous incarnation).
    pub fn register_replacing(
        &mut self,
        name: &str,
        address: &str,
        capacity: u32,
        now: Instant,
    ) -> (Zone, Option<Zone>) {
        let old = self.zones.values().find(|z| z.name == name).map(|z| z.id);
        let replaced = old.and_then(|id| self.zones.remove(&id));
        self.version += 1;
        let id = self.next_zone_id;
        self.next_zone_id = ZoneId(id.0 + 1);
        let generation = self.next_generation;
        self.next_generation += 1;
        let zone = Zone {
            id,
            name: name.to_owned(),
            address: address.to_owned(),
            capacity,
            lease_generation: generation,
            lease_expires: now + self.lease_ttl,
            entities: 0,
            players: 0,
            draining: false,
            tick_p99_ms: 0.0,
            cells: Vec::new(),
        };
        self.zones.insert(id, zone.clone());
        // A zone back under its name keeps its cells: nothing moves.
        if let (Some(a), Some(old)) = (&mut self.balance, &replaced) {
            a.rename(old.id, id);
        }
        self.sync();
        (zone, replaced)
    }

    /// Renews a lease. False when the zone or that generation of its lease is unknown.
    pub fn heartbeat(
        &mut self,
        zone_id: ZoneId,
        generation: u64,
        load: Load,
        now: Instant,
    ) -> bool {
        match self.zones.get_mut(&zone_id) {
            Some(z) if z.lease_generation == generation => {
                z.lease_expires = now + self.lease_ttl;
                z.entities = load.entities;
                z.players = load.players;
                z.tick_p99_ms = load.tick_p99_ms;
                z.cells = load.cells;
                true
            }
            _ => false,
        }
    }

    /// Removes a zone at once (its registration could not be stored).
    pub fn expire_now(&mut self, zone_id: ZoneId) -> Option<Zone> {
        self.version += 1;
        let gone = self.zones.remove(&zone_id);
        self.sync();
        gone
    }

    /// Drops every zone whose lease has lapsed and returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<Zone> {
        let dead: Vec<ZoneId> = self
            .zones
            .values()
            .filter(|z| z.lease_expires <= now)
            .map(|z| z.id)
            .collect();
        if !dead.is_empty() {
            self.version += 1;
        }
        let gone: Vec<Zone> = dead
            .into_iter()
            .filter_map(|id| self.zones.remove(&id))
            .collect();
        if !gone.is_empty() {
            self.sync();
        }
        gone
    }

    pub fn zones(&self) -> impl Iterator<Item = &Zone> {
        self.zones.values()
    }

    /// The zone owning a cell: under balancing, the owner of its range (or its pin);
    /// otherwise columns are split into contiguous stripes, one per live zone in id order, so
    /// neighbouring cells mostly share a zone.
    /// Draining zones own nothing, unless every zone is draining.
    pub fn owner_of_cell(&self, cx: u32, cy: u32) -> Option<&Zone> {
        if self.balance.is_some() {
            let index = (cy * self.geometry.cells_x() + cx) as usize;
            let id = self.owners.get(index).copied().flatten()?;
            return self.zones.get(&id);
        }
        let active = self.zones.values().filter(|z| !z.draining).count();
        let n = if active == 0 {
            self.zones.len()
        } else {
            active
        };
        if n == 0 {
            return None;
        }
        let cells_x = self.geometry.cells_x() as usize;
        let stripe = (cx as usize * n / cells_x).min(n - 1);
        self.zones
            .values()
            .filter(|z| active == 0 || !z.draining)
            .nth(stripe)
    }

    /// The zone owning the cell at a position, with that cell.
    pub fn locate(&self, x: f32, y: f32) -> Option<(&Zone, (u32, u32))> {
        let cell = self.geometry.cell_of(x, y);
        self.owner_of_cell(cell.0, cell.1).map(|z| (z, cell))
    }

    /// Row-major owner ids of every cell (0 = unowned).
    pub fn cell_owners(&self) -> Vec<u64> {
        let (w, h) = (self.geometry.cells_x(), self.geometry.cells_y());
        (0..h)
            .flat_map(|cy| (0..w).map(move |cx| (cx, cy)))
            .map(|(cx, cy)| self.owner_of_cell(cx, cy).map_or(0, |z| z.id.0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> WorldMap {
        WorldMap::new(Geometry::default(), Duration::from_secs(2))
    }

    fn load(players: u32) -> Load {
        Load {
            players,
            entities: players,
            ..Load::default()
        }
    }

    /// Cells owned by each zone, by id.
    fn counts(m: &WorldMap) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for o in m.cell_owners() {
            *out.entry(o).or_default() += 1;
        }
        out
    }

    #[test]
    fn a_balancing_map_moves_cells_from_the_crowded_zone_and_keeps_them_over_restarts() {
        let t = Instant::now();
        let mut m = map().with_balancing();
        let a = m.register("a", "http://a", 100, t);
        let b = m.register("b", "http://b", 100, t);
        // Two zones: halves of the curve, which on a square grid are the left and right halves.
        assert_eq!(counts(&m), BTreeMap::from([(a.id.0, 32), (b.id.0, 32)]));
        assert_eq!(m.locate(10.0, 10.0).unwrap().0.id, a.id);
        assert_eq!(m.locate(1999.0, 10.0).unwrap().0.id, b.id);
        // Everyone in a's cells, spread over them: a's cells move to b, a few per step.
        let cells: Vec<u64> = m.cell_owners();
        let crowded: Vec<(u32, u32, u32)> = cells
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == a.id.0)
            .map(|(i, _)| (i as u32, 10, 10))
            .collect();
        let report = |m: &mut WorldMap, zone: &Zone, cells: Vec<(u32, u32, u32)>| {
            let players = cells.iter().map(|c| c.1).sum();
            let l = Load {
                players,
                entities: players,
                cells,
                ..Load::default()
            };
            assert!(m.heartbeat(zone.id, zone.lease_generation, l, t));
        };
        report(&mut m, &a, crowded);
        report(&mut m, &b, Vec::new());
        let v = m.version();
        let moved = m.rebalance(&BalanceConfig::default());
        assert!(!moved.is_empty() && moved.len() <= 4, "{moved:?}");
        assert!(moved.iter().all(|mv| mv.from == a.id && mv.to == b.id));
        assert!(m.version() > v);
        // A zone back under its name keeps its range: nothing moves.
        let before = m.cell_owners();
        let a2 = m.register("a", "http://a", 100, t);
        let renamed: Vec<u64> = before
            .iter()
            .map(|&o| if o == a.id.0 { a2.id.0 } else { o })
            .collect();
        assert_eq!(m.cell_owners(), renamed);
        // Stored ranges restore the same owners on a fresh map (a coordinator restart).
        let (zones, cuts) = m.ranges().unwrap();
        let rows: Vec<crate::store::ZoneRow> = m
            .zones()
            .map(|z| crate::store::ZoneRow {
                id: z.id,
                name: z.name.clone(),
                address: z.address.clone(),
                capacity: z.capacity,
                lease_generation: z.lease_generation,
                draining: z.draining,
            })
            .collect();
        let mut restarted = map().with_balancing();
        restarted.resume(&rows, t);
        assert!(restarted.restore_ranges(zones, cuts));
        assert_eq!(restarted.cell_owners(), renamed);
        // A pin by name holds whatever the ranges; a draining zone's cells and pins go.
        assert!(m.pin((0, 0), Some("b")));
        assert_eq!(m.locate(10.0, 10.0).unwrap().0.id, b.id);
        assert!(m.drain(b.id, b.lease_generation));
        assert_eq!(counts(&m), BTreeMap::from([(a2.id.0, 64)]));
    }

    #[test]
    fn cells_are_striped_over_zones_in_id_order() {
        let mut m = map();
        let t = Instant::now();
        assert!(m.locate(10.0, 10.0).is_none());
        let a = m.register("a", "http://a", 100, t);
        let b = m.register("b", "http://b", 100, t);
        assert_eq!(m.locate(10.0, 10.0).unwrap().0.id, a.id);
        assert_eq!(m.locate(1999.0, 10.0).unwrap().0.id, b.id);
        assert_eq!(m.locate(625.0, 1000.0).unwrap().0.id, a.id);
        assert_eq!(m.locate(1375.0, 1000.0).unwrap().0.id, b.id);
        // Outside the world clamps to the edge cell.
        assert_eq!(m.locate(-50.0, 9999.0).unwrap().1, (0, 7));
        assert_eq!(m.locate(f32::NAN, 0.0).unwrap().1, (0, 0));
        let owners = m.cell_owners();
        assert_eq!(owners.len(), 64);
        assert!(owners.iter().all(|&o| o == a.id.0 || o == b.id.0));
    }

    #[test]
    fn leases_expire_and_stale_generations_are_refused() {
        let mut m = map();
        let t = Instant::now();
        let a = m.register("a", "http://a", 100, t);
        assert!(m.heartbeat(
            a.id,
            a.lease_generation,
            load(1),
            t + Duration::from_secs(1)
        ));
        assert!(m.expire(t + Duration::from_millis(2500)).is_empty());
        assert_eq!(m.expire(t + Duration::from_secs(4)).len(), 1);
        assert!(!m.heartbeat(
            a.id,
            a.lease_generation,
            load(0),
            t + Duration::from_secs(4)
        ));
        // Re-registration under the same name replaces the entry with a new generation.
        let a2 = m.register("a", "http://a", 100, t);
        let a3 = m.register("a", "http://a", 100, t);
        assert_eq!(m.zones().count(), 1);
        assert!(!m.heartbeat(a2.id, a2.lease_generation, load(0), t));
        assert!(m.heartbeat(a3.id, a3.lease_generation, load(0), t));
    }
}
