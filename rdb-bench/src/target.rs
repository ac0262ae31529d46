//! The systems under test, behind one set of operations so that FlareDB and
//! etcd are measured by the same worker code.

#[cfg(feature = "etcd")]
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use rdb_client::{CasExpect, Client, ClientConfig};

/// What a benchmark run can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad option or option combination.
    #[error("{0}")]
    Usage(String),
    /// FlareDB answered with an error.
    #[error("flaredb: {0}")]
    Flare(#[from] rdb_client::Error),
    /// etcd answered with an error.
    #[cfg(feature = "etcd")]
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// Starting the local cluster failed.
    #[error("local cluster: {0}")]
    Local(String),
}

/// What `--etcd` says when the binary was built without the etcd adapter.
#[cfg(not(feature = "etcd"))]
pub const NO_ETCD: &str = "this rdb-bench was built without the etcd adapter: \
    rebuild with `cargo build --release -p rdb-bench --features etcd` (needs protoc and libprotobuf-dev; \
    bash scripts/setup-deps.sh --etcd installs them)";

/// Which system a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// FlareDB, through rdb-client (region routing, retries, TSO batching).
    Flaredb,
    /// etcd v3, through the etcd-client crate.
    Etcd,
}

impl System {
    /// The system's name in reports.
    pub fn label(self) -> &'static str {
        match self {
            System::Flaredb => "FlareDB",
            System::Etcd => "etcd",
        }
    }
}

/// Result of one read-then-CAS attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    Swapped,
    Conflict,
}

/// One connection (client) to the system under test. Cheap to clone; clones
/// share the connection.
#[derive(Clone)]
pub enum Target {
    Flare(Client),
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::KvClient>),
}

impl Target {
    /// Opens one connection (FlareDB: one client with its own channels,
    /// configured by `flare`).
    pub async fn connect(
        system: System,
        endpoints: &[String],
        flare: &ClientConfig,
    ) -> Result<Target, BenchError> {
        Ok(match system {
            System::Flaredb => {
                Target::Flare(Client::connect_with(endpoints.to_vec(), flare.clone()).await?)
            }
            #[cfg(feature = "etcd")]
            System::Etcd => Target::Etcd(Box::new(
                etcd_client::Client::connect(endpoints, None)
                    .await?
                    .kv_client(),
            )),
            #[cfg(not(feature = "etcd"))]
            System::Etcd => return Err(BenchError::Usage(NO_ETCD.into())),
        })
    }

    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), BenchError> {
        match self {
            Target::Flare(c) => {
                c.put(key, value).await?;
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => {
                c.put(key, value, None).await?;
            }
        }
        Ok(())
    }

    /// Writes many keys (preload): one batch on FlareDB, one transaction on etcd.
    pub async fn put_many(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), BenchError> {
        match self {
            Target::Flare(c) => {
                c.batch_put(pairs).await?;
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => {
                let ops: Vec<TxnOp> = pairs
                    .into_iter()
                    .map(|(k, v)| TxnOp::put(k, v, None))
                    .collect();
                c.txn(Txn::new().and_then(ops)).await?;
            }
        }
        Ok(())
    }

    /// Reads a key; whether it was found.
    pub async fn get(&mut self, key: Vec<u8>) -> Result<bool, BenchError> {
        Ok(match self {
            Target::Flare(c) => c.get(key).await?.is_some(),
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => !c.get(key, None).await?.kvs().is_empty(),
        })
    }

    /// Reads up to `limit` pairs from `start` (before `end`); how many came back.
    pub async fn scan(
        &mut self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    ) -> Result<usize, BenchError> {
        Ok(match self {
            Target::Flare(c) => c.scan(start, end, limit).await?.len(),
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => c
                .get(
                    start,
                    Some(GetOptions::new().with_range(end).with_limit(limit as i64)),
                )
                .await?
                .kvs()
                .len(),
        })
    }

    /// Reads `key`, then writes `value` only if the key's version is still the
    /// one read (FlareDB: CAS on the version; etcd: a Txn comparing the version).
    pub async fn read_then_cas(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<CasOutcome, BenchError> {
        let swapped = match self {
            Target::Flare(c) => {
                let expect = match c.get(key.clone()).await? {
                    Some(v) => CasExpect::Version(v.version),
                    None => CasExpect::Absent,
                };
                c.compare_and_swap(key, expect, Some(value))
                    .await?
                    .succeeded
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(c) => {
                // etcd's version is 0 for a key that does not exist.
                let version = c
                    .get(key.clone(), None)
                    .await?
                    .kvs()
                    .first()
                    .map_or(0, |kv| kv.version());
                let txn = Txn::new()
                    .when([Compare::version(key.clone(), CompareOp::Equal, version)])
                    .and_then([TxnOp::put(key, value, None)]);
                c.txn(txn).await?.succeeded()
            }
        };
        Ok(if swapped {
            CasOutcome::Swapped
        } else {
            CasOutcome::Conflict
        })
    }

    /// Takes one timestamp.
    pub async fn tso(&mut self) -> Result<u64, BenchError> {
        match self {
            Target::Flare(c) => Ok(c.tso().await?),
            #[cfg(feature = "etcd")]
            Target::Etcd(_) => Err(BenchError::Usage(
                "the tso workload is FlareDB only (etcd has no timestamp oracle)".into(),
            )),
        }
    }
}
