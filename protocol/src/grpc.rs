//! The internal gRPC services, generated from `protocol/proto/*.proto` by `build.rs`.
//!
//! - [`coordinator`]: zone registration, leases and the cell → zone map.
//! - [`zone`]: the gateway ↔ zone link, one bidirectional stream per gateway–zone pair.
//! - [`persistence`]: character load and save.

#![allow(clippy::all, missing_docs)]

pub mod coordinator {
    tonic::include_proto!("worldmesh.coordinator.v1");
}

pub mod zone {
    tonic::include_proto!("worldmesh.zone.v1");
}

pub mod persistence {
    tonic::include_proto!("worldmesh.persistence.v1");
}
