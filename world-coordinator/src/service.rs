//! The coordinator's gRPC service: a thin shell around [`WorldMap`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use worldmesh_protocol::grpc::coordinator::{self as pb, coordinator_server::Coordinator};

use crate::Config;
use crate::map::{Geometry, WorldMap, Zone};

pub struct CoordinatorService {
    map: Arc<Mutex<WorldMap>>,
    config: Config,
}

impl CoordinatorService {
    pub fn new(map: Arc<Mutex<WorldMap>>, config: Config) -> Self {
        Self { map, config }
    }

    fn map(&self) -> MutexGuard<'_, WorldMap> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than stopping the world; keep serving.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn geometry_to_pb(g: &Geometry) -> pb::WorldGeometry {
    pb::WorldGeometry {
        min_x: g.min_x,
        min_y: g.min_y,
        max_x: g.max_x,
        max_y: g.max_y,
        cell_size: g.cell_size,
        tick_rate_hz: g.tick_rate_hz,
        spawn_points: g
            .spawn_points
            .iter()
            .map(|&(x, y)| pb::SpawnPoint { x, y })
            .collect(),
    }
}

fn zone_to_pb(z: &Zone) -> pb::ZoneInfo {
    pb::ZoneInfo {
        zone_id: z.id,
        name: z.name.clone(),
        address: z.address.clone(),
        capacity: z.capacity,
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register_zone(
        &self,
        req: Request<pb::RegisterZoneRequest>,
    ) -> Result<Response<pb::RegisterZoneResponse>, Status> {
        let req = req.into_inner();
        if req.name.is_empty() || req.address.is_empty() {
            return Err(Status::invalid_argument(
                "zone name and address are required",
            ));
        }
        let mut map = self.map();
        let zone = map.register(&req.name, &req.address, req.capacity, Instant::now());
        tracing::info!(zone = zone.id, name = %zone.name, address = %zone.address, "zone registered");
        metrics::counter!("worldmesh_coordinator_zone_registrations_total").increment(1);
        metrics::gauge!("worldmesh_coordinator_zones").set(map.zones().count() as f64);
        Ok(Response::new(pb::RegisterZoneResponse {
            zone_id: zone.id,
            lease_generation: zone.lease_generation,
            lease_ttl_ms: self.config.lease_ttl.as_millis() as u32,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            world: Some(geometry_to_pb(map.geometry())),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let lease_valid = self.map().heartbeat(
            req.zone_id,
            req.lease_generation,
            req.entities,
            req.players,
            Instant::now(),
        );
        if !lease_valid {
            tracing::warn!(
                zone = req.zone_id,
                generation = req.lease_generation,
                "heartbeat for an unknown lease"
            );
        }
        Ok(Response::new(pb::HeartbeatResponse { lease_valid }))
    }

    async fn locate_zone(
        &self,
        req: Request<pb::LocateZoneRequest>,
    ) -> Result<Response<pb::LocateZoneResponse>, Status> {
        let req = req.into_inner();
        let map = self.map();
        match map.locate(req.x, req.y) {
            Some((zone, (cell_x, cell_y))) => Ok(Response::new(pb::LocateZoneResponse {
                zone: Some(zone_to_pb(zone)),
                cell_x,
                cell_y,
            })),
            None => Err(Status::unavailable("no zone server is registered")),
        }
    }

    async fn get_world(
        &self,
        _req: Request<pb::GetWorldRequest>,
    ) -> Result<Response<pb::WorldMap>, Status> {
        let map = self.map();
        Ok(Response::new(pb::WorldMap {
            world: Some(geometry_to_pb(map.geometry())),
            zones: map.zones().map(zone_to_pb).collect(),
            cell_owners: map.cell_owners(),
            cells_x: map.geometry().cells_x(),
            cells_y: map.geometry().cells_y(),
        }))
    }
}

/// Drops zones whose lease lapsed, checking once per heartbeat interval.
pub async fn reap_expired(map: Arc<Mutex<WorldMap>>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        for zone in map.expire(Instant::now()) {
            tracing::warn!(zone = zone.id, name = %zone.name, "zone lease expired; removed from the map");
            metrics::counter!("worldmesh_coordinator_lease_expiries_total").increment(1);
        }
        metrics::gauge!("worldmesh_coordinator_zones").set(map.zones().count() as f64);
    }
}
