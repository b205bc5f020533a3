//! Compiles proto/ with protox (a pure-Rust protobuf compiler: no system `protoc`) and
//! generates, with tonic-prost-build, the client code the product uses (`OUT_DIR/client/`)
//! and the server code only the tests use (`OUT_DIR/server/`, included by tests/it). Client
//! codegen has no transport (`build_transport(false)`): the channel is ours (src/grpc/).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/atom/v1/atom.proto", "proto/auth/v1/auth.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for (dir, client, server) in [("client", true, false), ("server", false, true)] {
        let dir = out.join(dir);
        std::fs::create_dir_all(&dir)?;
        tonic_prost_build::configure()
            .build_client(client)
            .build_server(server)
            .build_transport(false)
            .out_dir(&dir)
            .compile_fds(fds.clone())?;
    }
    Ok(())
}
