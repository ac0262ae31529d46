//! The command line: flags and subcommands (clap).

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "rdb-cli",
    version,
    about = "FlareDB command line: read and write keys, compare-and-swap, timestamps, cluster layout",
    after_help = "EXIT CODES:\n  0  success\n  1  other error (bad response, server-side failure)\n  2  usage error (bad flags or arguments, invalid key or value)\n  3  key not found (get, delete)\n  4  compare-and-swap condition did not hold\n  5  PD or a store could not be reached\n\nKeys and values are given as UTF-8 text, or as hex with --hex. With --json every command prints one JSON document on stdout."
)]
pub struct Cli {
    /// PD address (HOST:PORT); several may be given separated by commas.
    #[arg(
        long,
        env = "FLAREDB_PD",
        default_value = "127.0.0.1:2379",
        global = true
    )]
    pub pd: String,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Keys and values on the command line are hex, and are printed as hex.
    #[arg(long, global = true)]
    pub hex: bool,
    /// Time budget in seconds for retrying an unreachable PD or store or a
    /// stale route (retries also stop after 10 attempts, often sooner).
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
    /// PEM CA certificate that signs the cluster's certificates: connect
    /// over TLS (to PD and stores) and verify them with it.
    #[arg(long, env = "FLAREDB_CA", global = true, value_name = "PEM")]
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for clusters that require one (mutual TLS); needs --key and --ca.
    #[arg(
        long = "cert",
        id = "tls_cert",
        env = "FLAREDB_CERT",
        global = true,
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        env = "FLAREDB_KEY",
        global = true,
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a key's value (exit 3 if it does not exist).
    Get {
        /// The key.
        key: String,
        /// Read from any replica without confirming it has the latest value
        /// (may miss recent writes; answers even while the region elects a
        /// leader).
        #[arg(long)]
        stale: bool,
    },
    /// Write a key. Without VALUE (or with `-`) the value is read from
    /// standard input, all of it, as bytes (with --hex, as hex text): for
    /// values over the shell's argument limit, or binary data
    /// (`rdb-cli put photo < photo.jpg`).
    Put {
        /// The key.
        key: String,
        /// The value; omitted or `-`: read standard input.
        value: Option<String>,
    },
    /// Delete a key (exit 3 if it did not exist).
    Delete {
        /// The key.
        key: String,
    },
    /// Read several keys at once; prints the ones that exist (KEY<TAB>VALUE).
    BatchGet {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Write several keys at once (atomic per region): KEY VALUE [KEY VALUE ...].
    BatchPut {
        /// Alternating keys and values.
        #[arg(required = true, num_args = 2.., value_name = "KEY VALUE")]
        pairs: Vec<String>,
    },
    /// Delete several keys at once (atomic per region); prints how many existed.
    BatchDelete {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Delete every key in [START, END) (END omitted: to the end of the key space).
    DeleteRange {
        /// First key (inclusive).
        start: String,
        /// End key (exclusive).
        end: Option<String>,
    },
    /// List keys in [START, END) in order, across regions.
    Scan {
        /// First key (inclusive); "" for the start of the key space.
        start: String,
        /// End key (exclusive); omitted for the end of the key space.
        end: Option<String>,
        /// Most pairs to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// From the end of the range backwards.
        #[arg(long)]
        reverse: bool,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
    },
    /// Compare-and-swap: write NEW only if the key is as expected (exit 4 if not).
    Cas(CasArgs),
    /// Print timestamps from PD's oracle.
    Tso {
        /// How many consecutive timestamps to reserve.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// List the stores with their state.
    Stores,
    /// List the regions in key order with their size and keys as their
    /// leaders last counted them ("-": not yet; M = MiB, K = KiB), their
    /// replicas (peer id @ store; "(l)": a learner, "(down)": its leader
    /// has not heard from it for two election timeouts) and the store that
    /// leads each.
    Regions,
    /// PD's operators, running and recent (at most 64, newest first): kind,
    /// region, store, who asked (by hand, checker), current or last
    /// step, and outcome.
    Operators,
    /// Replica operators, run by PD one at a time: add or remove a region's
    /// replica on a store, hand a region's leadership to a store, drain a
    /// store.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// The PD members: list them, add one, remove one.
    #[command(subcommand)]
    Pd(PdCommand),
    /// Split the region holding KEY at KEY, through the region's Raft log
    /// (both halves keep the region's replicas and leader).
    Split {
        /// The split key: the first key of the new right region.
        key: String,
    },
    /// Check that every region's replicas hold the same state: each
    /// region's leader writes a digest entry to its log, every replica
    /// hashes its keys, versions, values and exactly-once records at that
    /// entry, and the digests are compared. Exits 6 if any region's
    /// replicas disagree (or a replica gave no digest in time). Needs every
    /// store at 0.2 or later.
    Check {
        /// Only this region (see `rdb-cli regions`).
        #[arg(long)]
        region: Option<u64>,
        /// How long to wait for a replica to apply the digest entry.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
    },
}

/// Replica operators.
#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Add a replica of REGION on STORE: it joins as a learner, catches up
    /// from a snapshot and the log, then votes.
    AddReplica {
        /// The region id (see `rdb-cli regions`).
        region: u64,
        /// The store id (see `rdb-cli stores`).
        store: u64,
    },
    /// Remove REGION's replica on STORE (if it leads, its leadership is
    /// handed to another voter first); the replica's data is deleted on
    /// STORE when that store is up.
    RemoveReplica {
        /// The region id.
        region: u64,
        /// The store id.
        store: u64,
    },
    /// Hand REGION's leadership to its replica on STORE.
    TransferLeader {
        /// The region id.
        region: u64,
        /// The store id.
        store: u64,
    },
    /// Drain STORE: PD hands its leaderships to other replicas and moves its
    /// replicas to other stores, one operator at a time, and places nothing
    /// new on it (the mark survives restarts). Returns at once; `rdb-cli
    /// stores` shows the replicas and leaderships it still holds, and once
    /// both are 0 the store can be stopped. A replica moves only if another
    /// store can take it (with three stores and three replicas, none can).
    DrainStore {
        /// The store id.
        store: u64,
        /// Cancel the drain: the store takes replicas and leaderships again.
        #[arg(long)]
        cancel: bool,
    },
}

/// PD member commands. They talk to the members given with --pd directly,
/// so `pd members` works even while the members have no leader.
#[derive(Subcommand, Debug)]
pub enum PdCommand {
    /// List the members (id, name, address, voter or learner, leader, log
    /// replicated) as the leader sees them, or without a leader as the first
    /// member that answers sees them.
    Members,
    /// Add a member to a running PD. It joins as a learner and becomes a
    /// voter once it has caught up; prints the command to start it with.
    AddMember {
        /// Its name, unique among the members.
        name: String,
        /// The HOST:PORT it will serve on.
        address: String,
    },
    /// Remove a member from the PD (its Raft id is never used again).
    RemoveMember {
        /// Its name.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct CasArgs {
    /// The key.
    pub key: String,
    /// The new value (ignored with --delete).
    pub new: String,
    #[command(flatten)]
    pub expect: ExpectArgs,
    /// Delete the key instead of writing NEW.
    #[arg(long)]
    pub delete: bool,
}

/// Exactly one condition.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ExpectArgs {
    /// Succeed only if the key does not exist.
    #[arg(long)]
    pub expect_absent: bool,
    /// Succeed only if the key's version is N.
    #[arg(long, value_name = "N")]
    pub expect_version: Option<u64>,
    /// Succeed only if the key's value is V.
    #[arg(long, value_name = "V")]
    pub expect_value: Option<String>,
}
