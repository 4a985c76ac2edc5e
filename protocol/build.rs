//! Compiles the internal gRPC services with protox (pure Rust, no system `protoc`).

const PROTOS: &[&str] = &[
    "proto/coordinator.proto",
    "proto/zone.proto",
    "proto/persistence.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        // Client frames cross the gateway↔zone link opaquely; `Bytes` avoids a copy per frame.
        .bytes(".worldmesh.zone.v1.PlayerFrame.frame")
        .bytes(".worldmesh.coordinator.v1.Begin.state")
        .bytes(".worldmesh.coordinator.v1.Prepare.state")
        .compile_fds(fds)?;
    Ok(())
}
