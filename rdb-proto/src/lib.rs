//! FlareDB's gRPC contracts (protobuf package `flaredb.v1`): the public API.
//!
//! # Layout
//! - `proto/flaredb/v1/*.proto`: the contracts themselves, every message and
//!   field commented. `meta.proto` (stores, regions, epochs, routing errors),
//!   `kv.proto` (the `Kv` service of rdb-server), `pd.proto` (the `Pd`
//!   service of rdb-pd), `admin.proto` (the `StoreAdmin` service that PD and
//!   stores use to split and move regions).
//! - [`v1`]: the generated Rust types, clients (`*_client`) and servers (`*_server`).
//! - [`limits`]: the API size limits, and the caps a store can lower them to.
//! - [`net`]: transport settings and the standard services (health, reflection, shutdown).
//! - [`tls`]: TLS and mutual TLS settings for servers and clients.
//! - [`region`]: helpers on regions and epochs shared by the server, PD and client.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of every file;
//!   [`PD_FILE_DESCRIPTOR_SET`] and [`STORE_FILE_DESCRIPTOR_SET`]: those of
//!   each daemon's services, for its gRPC reflection.

pub mod limits;
pub mod net;
pub mod region;
pub mod tls;

/// Generated code for package `flaredb.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("flaredb.v1");
}

/// The encoded `FileDescriptorSet` of every FlareDB proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flaredb_descriptor.bin"));

/// The encoded `FileDescriptorSet` of what rdb-pd serves: `pd.proto` and
/// the files it imports (service `flaredb.v1.Pd`).
pub const PD_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pd_descriptor.bin"));

/// The encoded `FileDescriptorSet` of what rdb-server serves: `admin.proto`
/// and the files it imports, `kv.proto` among them (services
/// `flaredb.v1.Kv` and `flaredb.v1.StoreAdmin`).
pub const STORE_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/store_descriptor.bin"));
