//! `worldmesh`: the whole cluster in one process, for laptops, demos and tests.
//!
//! [`cluster::Cluster::start`] runs a coordinator, a persistence service, N zone servers and a
//! gateway in-process, each on its own loopback port and each through the same
//! `run(listener, config, shutdown)` entry point its own binary uses — so what runs here is
//! what runs in production, minus the process boundaries. `worldmesh local` adds bots.
//!
//! [`games`] names the repository's games for `--game` (`worldmesh local`, `worldmesh zone`,
//! `zone-bench`): this crate knows the games so the zone crate never has to. The `zone-bench`
//! binary (`src/bin/zone-bench.rs`) times one zone's tick without network.

pub mod cluster;
pub mod games;
