//! Compiles the FlareDB protobuf contracts with protox (a pure-Rust protobuf
//! compiler), so building needs no system `protoc`.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "proto/flaredb/v1/meta.proto",
    "proto/flaredb/v1/kv.proto",
    "proto/flaredb/v1/pd.proto",
    "proto/flaredb/v1/admin.proto",
    "proto/flaredb/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    // Kept for gRPC server reflection: each daemon describes only the
    // services it serves (a file and the files it imports).
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("flaredb_descriptor.bin"), fds.encode_to_vec())?;
    for (files, out) in [
        (&["proto/flaredb/v1/pd.proto"][..], "pd_descriptor.bin"),
        (
            &["proto/flaredb/v1/kv.proto", "proto/flaredb/v1/admin.proto"][..],
            "store_descriptor.bin",
        ),
    ] {
        let set = protox::compile(files, ["proto"])?;
        std::fs::write(out_dir.join(out), set.encode_to_vec())?;
    }
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
