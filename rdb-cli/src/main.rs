//! `rdb-cli`: the FlareDB command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rdb_client::{
    CasExpect, Client, ClientConfig, Error, KvPair, RegionRoute, ScanOptions, StoreState,
};
use serde_json::{json, Value as Json};

const EXIT_OTHER: u8 = 1;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_CAS_FAILED: u8 = 4;
const EXIT_UNREACHABLE: u8 = 5;

#[derive(Parser, Debug)]
#[command(
    name = "rdb-cli",
    version,
    about = "FlareDB command line: read and write keys, compare-and-swap, timestamps, cluster layout",
    after_help = "EXIT CODES:\n  0  success\n  1  other error (bad response, server-side failure)\n  2  usage error (bad flags or arguments, invalid key or value)\n  3  key not found (get, delete)\n  4  compare-and-swap condition did not hold\n  5  PD or a store could not be reached\n\nKeys and values are given as UTF-8 text, or as hex with --hex. With --json every command prints one JSON document on stdout."
)]
struct Cli {
    /// PD address (HOST:PORT); several may be given separated by commas.
    #[arg(
        long,
        env = "FLAREDB_PD",
        default_value = "127.0.0.1:2379",
        global = true
    )]
    pd: String,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Keys and values on the command line are hex, and are printed as hex.
    #[arg(long, global = true)]
    hex: bool,
    /// Time budget in seconds for retrying an unreachable PD or store or a
    /// stale route (retries also stop after 10 attempts, often sooner).
    #[arg(long, default_value_t = 10, global = true)]
    timeout: u64,
    /// PEM CA certificate that signs the cluster's certificates: connect
    /// over TLS (to PD and stores) and verify them with it.
    #[arg(long, env = "FLAREDB_CA", global = true, value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for clusters that require one (mutual TLS); needs --key and --ca.
    #[arg(
        long = "cert",
        id = "tls_cert",
        env = "FLAREDB_CERT",
        global = true,
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        env = "FLAREDB_KEY",
        global = true,
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a key's value (exit 3 if it does not exist).
    Get {
        /// The key.
        key: String,
    },
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
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
    /// List the regions in key order with the store that serves each.
    Regions,
    /// Split the region holding KEY at KEY (PD moves the right half to another live store).
    Split {
        /// The split key: the first key of the new right region.
        key: String,
        /// Keep both halves on the current store.
        #[arg(long)]
        same_store: bool,
    },
}

#[derive(Args, Debug)]
struct CasArgs {
    /// The key.
    key: String,
    /// The new value (ignored with --delete).
    new: String,
    #[command(flatten)]
    expect: ExpectArgs,
    /// Delete the key instead of writing NEW.
    #[arg(long)]
    delete: bool,
}

/// Exactly one condition.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct ExpectArgs {
    /// Succeed only if the key does not exist.
    #[arg(long)]
    expect_absent: bool,
    /// Succeed only if the key's version is N.
    #[arg(long, value_name = "N")]
    expect_version: Option<u64>,
    /// Succeed only if the key's value is V.
    #[arg(long, value_name = "V")]
    expect_value: Option<String>,
}

struct Out {
    json: bool,
    hex: bool,
}

impl Out {
    fn bytes(&self, b: &[u8]) -> String {
        if self.hex {
            hex::encode(b)
        } else {
            String::from_utf8_lossy(b).into_owned()
        }
    }

    fn pair(&self, p: &KvPair) -> Json {
        json!({"key": self.bytes(&p.key), "value": self.bytes(&p.value), "version": p.version})
    }

    fn route(&self, r: &RegionRoute) -> Json {
        let region = r.region.clone().unwrap_or_default();
        let epoch = region.epoch.unwrap_or_default();
        json!({
            "id": region.id,
            "start_key": self.bytes(&region.start_key),
            "end_key": self.bytes(&region.end_key),
            "epoch": {"version": epoch.version, "conf_ver": epoch.conf_ver},
            "store_id": region.store_id,
            "store_address": r.leader.as_ref().map(|s| s.address.clone()),
        })
    }

    fn print(&self, j: Json, text: impl FnOnce() -> String) {
        if self.json {
            println!("{j}");
        } else {
            let t = text();
            if !t.is_empty() {
                println!("{t}");
            }
        }
    }
}

/// A failure with its exit code.
struct Failure(u8, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            e if e.is_unavailable() => EXIT_UNREACHABLE,
            Error::InvalidArgument(_) => 2,
            Error::NotFound(_) => EXIT_NOT_FOUND,
            _ => EXIT_OTHER,
        };
        Failure(code, e.to_string())
    }
}

fn arg(out: &Out, s: &str, what: &str) -> Result<Vec<u8>, Failure> {
    if out.hex {
        hex::decode(s).map_err(|e| Failure(2, format!("{what} {s:?} is not valid hex: {e}")))
    } else {
        Ok(s.as_bytes().to_vec())
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let out = Out {
        json: cli.json,
        hex: cli.hex,
    };
    let endpoints: Vec<String> = cli
        .pd
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let tls = match (&cli.ca, &cli.tls_cert) {
        (Some(ca), _) => Some(
            rdb_client::ClientTls::from_pem_files(
                ca,
                cli.tls_cert.as_deref(),
                cli.tls_key.as_deref(),
            )
            .map_err(|e| Failure(2, format!("TLS: {e}")))?,
        ),
        (None, Some(_)) => {
            return Err(Failure(
                2,
                "--cert needs --ca (the CA that signs the servers' certificates)".into(),
            ))
        }
        (None, None) => None,
    };
    let config = ClientConfig {
        retry_deadline: Duration::from_secs(cli.timeout),
        connect_timeout: Duration::from_secs(cli.timeout.clamp(1, 3)),
        tls,
        ..Default::default()
    };
    let client = Client::connect_with(endpoints, config)
        .await
        .map_err(|e| match e {
            e if e.is_unavailable() => Failure(
                EXIT_UNREACHABLE,
                format!("cannot reach PD at {}: {e}", cli.pd),
            ),
            e => Failure::from(e),
        })?;
    match cli.command {
        Command::Get { key } => {
            let k = arg(&out, &key, "key")?;
            match client.get(k.clone()).await? {
                Some(v) => out.print(
                    json!({"key": out.bytes(&k), "found": true, "value": out.bytes(&v.value), "version": v.version}),
                    || out.bytes(&v.value),
                ),
                None => {
                    if out.json {
                        println!("{}", json!({"key": out.bytes(&k), "found": false}));
                    }
                    return Err(Failure(EXIT_NOT_FOUND, format!("key not found: {key}")));
                }
            }
        }
        Command::Put { key, value } => {
            let k = arg(&out, &key, "key")?;
            let version = client.put(k.clone(), arg(&out, &value, "value")?).await?;
            out.print(json!({"key": out.bytes(&k), "version": version}), || {
                format!("OK version={version}")
            });
        }
        Command::Delete { key } => {
            let k = arg(&out, &key, "key")?;
            let existed = client.delete(k.clone()).await?;
            out.print(json!({"key": out.bytes(&k), "deleted": existed}), || {
                if existed {
                    "deleted".into()
                } else {
                    String::new()
                }
            });
            if !existed {
                return Err(Failure(EXIT_NOT_FOUND, format!("key not found: {key}")));
            }
        }
        Command::BatchGet { keys } => {
            let keys = keys
                .iter()
                .map(|k| arg(&out, k, "key"))
                .collect::<Result<Vec<_>, _>>()?;
            let pairs = client.batch_get(keys).await?;
            out.print(
                Json::Array(pairs.iter().map(|p| out.pair(p)).collect()),
                || {
                    pairs
                        .iter()
                        .map(|p| format!("{}\t{}", out.bytes(&p.key), out.bytes(&p.value)))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        Command::BatchPut { pairs } => {
            if pairs.len() % 2 != 0 {
                return Err(Failure(
                    2,
                    "batch-put needs KEY VALUE pairs: the last key has no value".into(),
                ));
            }
            let mut kvs = Vec::with_capacity(pairs.len() / 2);
            for kv in pairs.chunks(2) {
                kvs.push((arg(&out, &kv[0], "key")?, arg(&out, &kv[1], "value")?));
            }
            let keys: Vec<String> = kvs.iter().map(|(k, _)| out.bytes(k)).collect();
            let versions = client.batch_put(kvs).await?;
            let j = keys
                .iter()
                .zip(&versions)
                .map(|(k, v)| json!({"key": k, "version": v}))
                .collect();
            out.print(Json::Array(j), || format!("OK {} keys", versions.len()));
        }
        Command::BatchDelete { keys } => {
            let keys = keys
                .iter()
                .map(|k| arg(&out, k, "key"))
                .collect::<Result<Vec<_>, _>>()?;
            let deleted = client.batch_delete(keys).await?;
            out.print(json!({"deleted": deleted}), || format!("deleted {deleted}"));
        }
        Command::DeleteRange { start, end } => {
            let s = arg(&out, &start, "start key")?;
            let e = match end {
                Some(e) => arg(&out, &e, "end key")?,
                None => Vec::new(),
            };
            let deleted = client.delete_range(s, e).await?;
            out.print(json!({"deleted": deleted}), || format!("deleted {deleted}"));
        }
        Command::Scan {
            start,
            end,
            limit,
            reverse,
            keys_only,
        } => {
            let s = arg(&out, &start, "start key")?;
            let e = match end {
                Some(e) => arg(&out, &e, "end key")?,
                None => Vec::new(),
            };
            let pairs = client
                .scan_with(
                    s,
                    e,
                    ScanOptions {
                        limit,
                        reverse,
                        keys_only,
                    },
                )
                .await?;
            out.print(
                Json::Array(pairs.iter().map(|p| out.pair(p)).collect()),
                || {
                    pairs
                        .iter()
                        .map(|p| {
                            if keys_only {
                                out.bytes(&p.key)
                            } else {
                                format!("{}\t{}", out.bytes(&p.key), out.bytes(&p.value))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        Command::Cas(a) => {
            let k = arg(&out, &a.key, "key")?;
            let expected = if a.expect.expect_absent {
                CasExpect::Absent
            } else if let Some(v) = a.expect.expect_version {
                CasExpect::Version(v)
            } else if let Some(v) = &a.expect.expect_value {
                CasExpect::Value(arg(&out, v, "expected value")?)
            } else {
                return Err(Failure(
                    2,
                    "give one of --expect-absent, --expect-version, --expect-value".into(),
                ));
            };
            let new = if a.delete {
                None
            } else {
                Some(arg(&out, &a.new, "new value")?)
            };
            let r = client.compare_and_swap(k.clone(), expected, new).await?;
            let current = r
                .current
                .as_ref()
                .map(|c| json!({"value": out.bytes(&c.value), "version": c.version}));
            let j = json!({"key": out.bytes(&k), "succeeded": r.succeeded, "current": current, "new_version": r.new_version});
            if r.succeeded {
                out.print(j, || match r.new_version {
                    Some(v) => format!("OK version={v}"),
                    None => "OK deleted".into(),
                });
            } else {
                if out.json {
                    println!("{j}");
                }
                let now = match &r.current {
                    Some(c) => format!(
                        "current version={} value={}",
                        c.version,
                        out.bytes(&c.value)
                    ),
                    None => "key does not exist".into(),
                };
                return Err(Failure(EXIT_CAS_FAILED, format!("CAS failed: {now}")));
            }
        }
        Command::Tso { count } => {
            let range = client.tso_batch(count).await?;
            let (physical, logical) = rdb_proto::limits::split_timestamp(range.start);
            out.print(
                json!({"first": range.start, "count": count, "physical_ms": physical, "logical": logical}),
                || if count == 1 { range.start.to_string() } else { format!("{} count={count}", range.start) },
            );
        }
        Command::Stores => {
            let stores = client.stores().await?;
            let state = |s: i32| match StoreState::try_from(s) {
                Ok(StoreState::Up) => "up",
                Ok(StoreState::Down) => "down",
                _ => "unknown",
            };
            let j = stores
                .iter()
                .map(|s| json!({"id": s.id, "address": s.address, "state": state(s.state), "last_heartbeat_ms": s.last_heartbeat_ms, "version": s.version}))
                .collect();
            out.print(Json::Array(j), || {
                let mut t = format!("{:<6} {:<24} {:<6} VERSION", "ID", "ADDRESS", "STATE");
                for s in &stores {
                    t.push_str(&format!(
                        "\n{:<6} {:<24} {:<6} {}",
                        s.id,
                        s.address,
                        state(s.state),
                        s.version
                    ));
                }
                t
            });
        }
        Command::Regions => {
            let routes = client.regions().await?;
            out.print(
                Json::Array(routes.iter().map(|r| out.route(r)).collect()),
                || {
                    let mut t = format!(
                        "{:<6} {:<20} {:<20} {:<10} STORE",
                        "ID", "START", "END", "EPOCH"
                    );
                    for r in &routes {
                        let j = out.route(r);
                        let region = r.region.clone().unwrap_or_default();
                        let e = region.epoch.unwrap_or_default();
                        t.push_str(&format!(
                            "\n{:<6} {:<20} {:<20} {:<10} {} ({})",
                            region.id,
                            if region.start_key.is_empty() {
                                "-inf".into()
                            } else {
                                out.bytes(&region.start_key)
                            },
                            if region.end_key.is_empty() {
                                "+inf".into()
                            } else {
                                out.bytes(&region.end_key)
                            },
                            format!("{}/{}", e.version, e.conf_ver),
                            region.store_id,
                            j["store_address"].as_str().unwrap_or("?"),
                        ));
                    }
                    t
                },
            );
        }
        Command::Split { key, same_store } => {
            let (left, right) = client
                .split(arg(&out, &key, "split key")?, same_store)
                .await?;
            let (l, r) = (out.route(&left), out.route(&right));
            out.print(json!({"left": l, "right": r}), || {
                format!(
                    "left:  region {} on store {}\nright: region {} on store {}",
                    l["id"], l["store_id"], r["id"], r["store_id"]
                )
            });
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rdb-cli: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_OTHER);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("rdb-cli: {msg}");
            ExitCode::from(code)
        }
    }
}
