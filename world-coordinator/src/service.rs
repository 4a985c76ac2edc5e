//! The coordinator's gRPC service: a thin shell that forwards requests to the state task
//! ([`crate::state`]) and reads the published map.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use worldmesh_protocol::grpc::coordinator::{self as pb, coordinator_server::Coordinator};

use crate::Config;
use worldmesh_world::convert;
use worldmesh_world::geometry::locate_in;

use crate::map::{WorldMap, Zone};
use crate::state::{self, Published};
use worldmesh_protocol::ids::{EntityId, ZoneId};

pub struct CoordinatorService {
    requests: mpsc::Sender<state::Request>,
    published: watch::Receiver<Arc<Published>>,
    config: Config,
}

impl CoordinatorService {
    pub fn new(
        requests: mpsc::Sender<state::Request>,
        published: watch::Receiver<Arc<Published>>,
        config: Config,
    ) -> Self {
        Self {
            requests,
            published,
            config,
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> state::Request,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| Status::unavailable("coordinator stopping"))?;
        rx.await
            .map_err(|_| Status::unavailable("coordinator stopping"))
    }

    fn map(&self) -> pb::WorldMap {
        self.published.borrow().map.clone()
    }
}

pub fn zone_to_pb(z: &Zone) -> pb::ZoneInfo {
    pb::ZoneInfo {
        zone_id: z.id.into(),
        name: z.name.clone(),
        address: z.address.clone(),
        capacity: z.capacity,
        draining: z.draining,
    }
}

pub fn world_map_pb(map: &WorldMap, tick_origin_unix_ms: u64) -> pb::WorldMap {
    pb::WorldMap {
        world: Some(map.geometry().to_pb(tick_origin_unix_ms)),
        zones: map.zones().map(zone_to_pb).collect(),
        cell_owners: map.cell_owners(),
        cells_x: map.geometry().cells_x(),
        cells_y: map.geometry().cells_y(),
        version: map.version(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorEvent, Status>> + Send>>;
type MapStream = Pin<Box<dyn Stream<Item = Result<pb::WorldMap, Status>> + Send>>;

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
        let zone = self
            .ask(|reply| state::Request::Register {
                name: req.name,
                address: req.address,
                capacity: req.capacity,
                reply,
            })
            .await??;
        Ok(Response::new(pb::RegisterZoneResponse {
            zone_id: zone.id.into(),
            lease_generation: zone.lease_generation,
            lease_ttl_ms: self.config.lease_ttl.as_millis() as u32,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            world: self.map().world,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let lease_valid = self
            .ask(|reply| state::Request::Heartbeat {
                zone: ZoneId(req.zone_id),
                generation: req.lease_generation,
                load: crate::map::Load {
                    entities: req.entities,
                    players: req.players,
                    tick_p99_ms: req.tick_p99_ms,
                    cells: req
                        .cells
                        .iter()
                        .map(|c| (c.cell, c.players, c.entities))
                        .collect(),
                },
                time_dilation: req.time_dilation,
                reply,
            })
            .await?;
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
        match locate_in(&self.map(), req.x, req.y) {
            Some((zone, (cell_x, cell_y))) => Ok(Response::new(pb::LocateZoneResponse {
                zone: Some(zone),
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
        Ok(Response::new(self.map()))
    }

    type WatchMapStream = MapStream;

    async fn watch_map(
        &self,
        _req: Request<pb::GetWorldRequest>,
    ) -> Result<Response<MapStream>, Status> {
        let mut rx = self.published.clone();
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let map = rx.borrow_and_update().map.clone();
                if tx.send(Ok(map)).await.is_err() || rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn locate_entity(
        &self,
        req: Request<pb::LocateEntityRequest>,
    ) -> Result<Response<pb::LocateEntityResponse>, Status> {
        let entity = req.into_inner().entity_id;
        let found = self
            .ask(|reply| state::Request::LocateEntity {
                entity: EntityId(entity),
                reply,
            })
            .await?;
        Ok(Response::new(match found {
            Some((zone, epoch)) => pb::LocateEntityResponse {
                zone: Some(zone_to_pb(&zone)),
                epoch: epoch.into(),
            },
            None => pb::LocateEntityResponse {
                zone: None,
                epoch: 0,
            },
        }))
    }

    type ZoneSessionStream = EventStream;

    async fn zone_session(
        &self,
        req: Request<Streaming<pb::ZoneEvent>>,
    ) -> Result<Response<EventStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty zone session"))?;
        let (zone, generation) = (first.zone_id, first.lease_generation);
        let (tx, out) = mpsc::channel(state::SESSION_QUEUE);
        let accepted = self
            .ask(|reply| state::Request::OpenSession {
                zone: ZoneId(zone),
                generation,
                tx: tx.clone(),
                reply,
            })
            .await?;
        if !accepted {
            return Err(Status::failed_precondition(
                "unknown zone lease; register again",
            ));
        }
        tracing::info!(zone, "zone session opened");
        let requests = self.requests.clone();
        tokio::spawn(async move {
            let mut next = Some(first);
            loop {
                let msg = match next.take() {
                    Some(m) => m,
                    None => match inbound.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(zone, error = %e, "zone session failed");
                            break;
                        }
                    },
                };
                if msg.zone_id != zone || msg.lease_generation != generation {
                    tracing::warn!(zone, "zone session message for another lease; closing");
                    break;
                }
                let Some(core) = msg.msg.and_then(convert::to_coordinator_core) else {
                    metrics::counter!("worldmesh_coordinator_malformed_total").increment(1);
                    continue;
                };
                let r = state::Request::FromZone {
                    zone: ZoneId(zone),
                    generation,
                    msg: core,
                };
                if requests.send(r).await.is_err() {
                    break;
                }
            }
            let _ = requests
                .send(state::Request::SessionClosed {
                    zone: ZoneId(zone),
                    tx,
                })
                .await;
            tracing::info!(zone, "zone session closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn deregister(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let req = req.into_inner();
        self.ask(|reply| state::Request::Deregister {
            zone: ZoneId(req.zone_id),
            generation: req.lease_generation,
            reply,
        })
        .await?;
        Ok(Response::new(pb::DrainResponse {}))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let req = req.into_inner();
        let ok = self
            .ask(|reply| state::Request::Drain {
                zone: ZoneId(req.zone_id),
                generation: req.lease_generation,
                reply,
            })
            .await?;
        if !ok {
            return Err(Status::failed_precondition("unknown zone lease"));
        }
        Ok(Response::new(pb::DrainResponse {}))
    }

    async fn pin_cell(
        &self,
        req: Request<pb::PinCellRequest>,
    ) -> Result<Response<pb::PinCellResponse>, Status> {
        let req = req.into_inner();
        let zone = (!req.zone_name.is_empty()).then_some(req.zone_name);
        let pins = self
            .ask(|reply| state::Request::Pin {
                cell: (req.cell_x, req.cell_y),
                zone,
                reply,
            })
            .await?
            .ok_or_else(|| {
                Status::failed_precondition(
                    "cells are not balanced (fixed stripes), or the cell is off the grid",
                )
            })?;
        Ok(Response::new(pb::PinCellResponse {
            pins: pins
                .into_iter()
                .map(|((cell_x, cell_y), zone_name)| pb::CellPin {
                    cell_x,
                    cell_y,
                    zone_name,
                })
                .collect(),
        }))
    }
}
