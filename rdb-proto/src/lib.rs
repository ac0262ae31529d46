//! FlareDB's gRPC contracts (protobuf package `flaredb.v1`): the public API,
//! and only what a client needs with it. Server-side pieces (health,
//! reflection, server TLS, configurable caps) are in rdb-daemon, so that a
//! client build pulls no server code beyond tonic's generated servers.
//!
//! # Layout
//! - `proto/flaredb/v1/*.proto`: the contracts themselves, every message and
//!   field commented. `meta.proto` (stores, regions, epochs, routing errors),
//!   `kv.proto` (the `Kv` service of rdb-server), `pd.proto` (the `Pd`
//!   service of rdb-pd), `admin.proto` (the `StoreAdmin` service that PD and
//!   stores use to split and move regions), `raft.proto` (the internal `Raft`
//!   transport of rdb-raft).
//! - [`v1`]: the generated Rust types, clients (`*_client`) and servers (`*_server`).
//! - [`limits`]: the API size limits, the checks against them (or a lower
//!   cap), and the timestamp layout.
//! - [`tls`]: the client side of TLS and mutual TLS ([`tls::ClientTls`], and
//!   [`tls::endpoint`], the endpoint every client dials).
//! - [`region`]: helpers on regions and epochs shared by the server, PD and client.
//! - [`failover`]: a channel over the members of a PD group that moves on
//!   to the next member when one fails (rdb-server's PD connection).
//! - [`version`]: the `major.minor.patch` versions of stores and of the
//!   cluster (the gate of new Raft entry formats).
//! - [`io`]: connections whose writes are gathered into fewer system calls
//!   (the daemons' accepted connections, the client's store channels).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of every file;
//!   [`PD_FILE_DESCRIPTOR_SET`] and [`STORE_FILE_DESCRIPTOR_SET`]: those of
//!   each daemon's services, for its gRPC reflection (plain bytes, no
//!   dependency: they stay here because the build script that compiles the
//!   protos makes them).

pub mod failover;
pub mod io;
pub mod limits;
pub mod region;
pub mod tls;
pub mod version;

/// Generated code for package `flaredb.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("flaredb.v1");
}

/// The encoded `FileDescriptorSet` of every FlareDB proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flaredb_descriptor.bin"));

/// The encoded `FileDescriptorSet` of what rdb-pd serves: `pd.proto` and
/// the files it imports (service `flaredb.v1.Pd`), for rdb-daemon's
/// `net::reflection`.
pub const PD_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pd_descriptor.bin"));

/// The encoded `FileDescriptorSet` of what rdb-server serves: `admin.proto`
/// and the files it imports, `kv.proto` among them (services
/// `flaredb.v1.Kv` and `flaredb.v1.StoreAdmin`).
pub const STORE_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/store_descriptor.bin"));
