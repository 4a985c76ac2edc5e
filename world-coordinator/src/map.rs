//! Zones, leases and the cell → zone assignment. No I/O: every call takes `now`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use worldmesh_world::Geometry;
use worldmesh_world::handoff::ZoneId;

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
        }
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
                },
            );
        }
        self.version += 1;
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
        };
        self.zones.insert(id, zone.clone());
        (zone, replaced)
    }

    /// Renews a lease. False when the zone or that generation of its lease is unknown.
    pub fn heartbeat(
        &mut self,
        zone_id: ZoneId,
        generation: u64,
        entities: u32,
        players: u32,
        now: Instant,
    ) -> bool {
        match self.zones.get_mut(&zone_id) {
            Some(z) if z.lease_generation == generation => {
                z.lease_expires = now + self.lease_ttl;
                z.entities = entities;
                z.players = players;
                true
            }
            _ => false,
        }
    }

    /// Removes a zone at once (its registration could not be stored).
    pub fn expire_now(&mut self, zone_id: ZoneId) -> Option<Zone> {
        self.version += 1;
        self.zones.remove(&zone_id)
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
        dead.into_iter()
            .filter_map(|id| self.zones.remove(&id))
            .collect()
    }

    pub fn zones(&self) -> impl Iterator<Item = &Zone> {
        self.zones.values()
    }

    /// The zone owning a cell: columns are split into contiguous stripes, one per live zone in
    /// id order, so neighbouring cells mostly share a zone.
    /// Draining zones own nothing, unless every zone is draining.
    pub fn owner_of_cell(&self, cx: u32, _cy: u32) -> Option<&Zone> {
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
        assert!(m.heartbeat(a.id, a.lease_generation, 1, 1, t + Duration::from_secs(1)));
        assert!(m.expire(t + Duration::from_millis(2500)).is_empty());
        assert_eq!(m.expire(t + Duration::from_secs(4)).len(), 1);
        assert!(!m.heartbeat(a.id, a.lease_generation, 0, 0, t + Duration::from_secs(4)));
        // Re-registration under the same name replaces the entry with a new generation.
        let a2 = m.register("a", "http://a", 100, t);
        let a3 = m.register("a", "http://a", 100, t);
        assert_eq!(m.zones().count(), 1);
        assert!(!m.heartbeat(a2.id, a2.lease_generation, 0, 0, t));
        assert!(m.heartbeat(a3.id, a3.lease_generation, 0, 0, t));
    }
}
