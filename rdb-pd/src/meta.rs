//! PD's replicated state: what every PD member holds, changed only by
//! [`Command`]s applied from the Raft log (see `specs/005-ha-pd/spec.md`).
//!
//! It is kept in memory ([`MetaState`], read by the leader to answer calls)
//! and in the `meta` column family, under the keys a single-process PD used
//! before PD was replicated, so such a data directory opens with its state.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard};

use prost::Message;
use rdb_proto::limits::TSO_LOGICAL_BITS;
use rdb_proto::v1::{Region, Store};
use rdb_storage::{Engine, WriteOp};
use serde::{Deserialize, Serialize};

use crate::error::{PdError, Result};

const CLUSTER_ID_KEY: &[u8] = b"cluster_id";
const BOOTSTRAPPED_KEY: &[u8] = b"bootstrapped";
const ID_END_KEY: &[u8] = b"id_alloc_end";
const TSO_WINDOW_KEY: &[u8] = b"tso_window";
const MEMBER_ID_END_KEY: &[u8] = b"member_id_end";
const STORE_PREFIX: &[u8] = b"store/";
const REGION_PREFIX: &[u8] = b"region/";

fn meta_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// A change of PD's replicated state. Applying is deterministic; the
/// counters only grow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster id, if none is set.
    InitCluster {
        /// The id.
        cluster_id: u64,
    },
    /// Registers or updates a store (protobuf `Store`).
    PutStore {
        /// The encoded store.
        store: Vec<u8>,
    },
    /// Records the first region and the bootstrapped flag; answers 0 if the
    /// cluster was already bootstrapped (nothing changes then), 1 otherwise.
    Bootstrap {
        /// The encoded region.
        region: Vec<u8>,
    },
    /// Stores region records and removes others.
    PutRegions {
        /// Encoded regions to store.
        put: Vec<Vec<u8>>,
        /// Ids of regions to remove.
        delete: Vec<u64>,
    },
    /// Raises the id allocator's window end.
    SetIdEnd {
        /// The new end.
        end: u64,
    },
    /// Raises the TSO window end (physical milliseconds).
    SetTsoWindow {
        /// The new end.
        end: u64,
    },
    /// Allocates a member id above every one handed out (and above `floor`,
    /// the highest id in the membership); answers it.
    AllocMemberId {
        /// The highest member id the proposer knows of.
        floor: u64,
    },
}

/// PD's replicated state, in memory.
#[derive(Debug, Default, Clone)]
pub struct MetaState {
    /// The cluster id (0 until the first leader sets it).
    pub cluster_id: u64,
    /// Whether the first region exists.
    pub bootstrapped: bool,
    /// Registered stores by id (as persisted: no heartbeat time).
    pub stores: BTreeMap<u64, Store>,
    /// Regions by id.
    pub regions: BTreeMap<u64, Region>,
    /// Region id by start key.
    pub by_start: BTreeMap<Vec<u8>, u64>,
    /// Ids below or at this may have been handed out.
    pub id_end: u64,
    /// Timestamps with a physical part below this may have been handed out.
    pub tso_window: u64,
    /// Member ids below or at this have been handed out.
    pub member_id_end: u64,
}

impl MetaState {
    fn insert_region(&mut self, r: Region) {
        self.remove_region(r.id);
        self.by_start.insert(r.start_key.clone(), r.id);
        self.regions.insert(r.id, r);
    }

    fn remove_region(&mut self, id: u64) {
        if let Some(old) = self.regions.remove(&id) {
            if self.by_start.get(&old.start_key) == Some(&id) {
                self.by_start.remove(&old.start_key);
            }
        }
    }

    /// The region holding `key`.
    pub fn region_for_key(&self, key: &[u8]) -> Option<&Region> {
        let (_, id) = self.by_start.range(..=key.to_vec()).next_back()?;
        self.regions.get(id).filter(|r| r.contains(key))
    }

    fn load(engine: &Engine) -> Result<MetaState> {
        let counter = |key: &[u8], what: &str, max: u64| -> Result<u64> {
            Ok(match engine.get_meta(key)? {
                Some(raw) => rdb_storage::codec::decode_counter(&raw, what, max)?,
                None => 0,
            })
        };
        let mut st = MetaState {
            cluster_id: match engine.get_meta(CLUSTER_ID_KEY)? {
                Some(raw) => rdb_storage::codec::decode_u64(&raw, "cluster_id")?,
                None => 0,
            },
            bootstrapped: engine.get_meta(BOOTSTRAPPED_KEY)?.is_some(),
            id_end: counter(ID_END_KEY, "id_alloc_end", rdb_storage::codec::MAX_COUNTER)?,
            // A physical part must fit its 64 - 18 bits.
            tso_window: counter(
                TSO_WINDOW_KEY,
                "tso_window",
                (1 << (64 - TSO_LOGICAL_BITS)) - 2,
            )?,
            member_id_end: counter(
                MEMBER_ID_END_KEY,
                "member_id_end",
                rdb_storage::codec::MAX_COUNTER,
            )?,
            ..Default::default()
        };
        for (k, v) in engine.scan_meta(STORE_PREFIX)? {
            let store = Store::decode(v.as_slice()).map_err(|e| {
                PdError::Corrupted(format!("store record {}: {e}", String::from_utf8_lossy(&k)))
            })?;
            st.stores.insert(store.id, store);
        }
        for (k, v) in engine.scan_meta(REGION_PREFIX)? {
            let region = Region::decode(v.as_slice()).map_err(|e| {
                PdError::Corrupted(format!(
                    "region record {}: {e}",
                    String::from_utf8_lossy(&k)
                ))
            })?;
            st.insert_region(region);
        }
        Ok(st)
    }

    /// Applies `cmd`; pushes the durable changes; returns the answer.
    fn apply(
        &mut self,
        cmd: Command,
        batch: &mut Vec<WriteOp>,
    ) -> std::result::Result<u64, String> {
        let put = |batch: &mut Vec<WriteOp>, key: Vec<u8>, value: Vec<u8>| {
            batch.push(WriteOp::PutMeta { key, value })
        };
        match cmd {
            Command::InitCluster { cluster_id } => {
                if self.cluster_id == 0 && cluster_id != 0 {
                    self.cluster_id = cluster_id;
                    put(
                        batch,
                        CLUSTER_ID_KEY.to_vec(),
                        cluster_id.to_be_bytes().to_vec(),
                    );
                }
                Ok(self.cluster_id)
            }
            Command::PutStore { store } => {
                let s = Store::decode(store.as_slice()).map_err(|e| e.to_string())?;
                put(batch, meta_key(STORE_PREFIX, s.id), store);
                self.stores.insert(s.id, s);
                Ok(0)
            }
            Command::Bootstrap { region } => {
                if self.bootstrapped {
                    return Ok(0);
                }
                let r = Region::decode(region.as_slice()).map_err(|e| e.to_string())?;
                put(batch, meta_key(REGION_PREFIX, r.id), region);
                put(batch, BOOTSTRAPPED_KEY.to_vec(), b"1".to_vec());
                self.bootstrapped = true;
                self.insert_region(r);
                Ok(1)
            }
            Command::PutRegions {
                put: regions,
                delete,
            } => {
                let decoded: Vec<Region> = regions
                    .iter()
                    .map(|r| Region::decode(r.as_slice()).map_err(|e| e.to_string()))
                    .collect::<std::result::Result<_, _>>()?;
                for id in delete {
                    batch.push(WriteOp::DeleteMeta {
                        key: meta_key(REGION_PREFIX, id),
                    });
                    self.remove_region(id);
                }
                for (raw, r) in regions.into_iter().zip(decoded) {
                    put(batch, meta_key(REGION_PREFIX, r.id), raw);
                    self.insert_region(r);
                }
                Ok(0)
            }
            Command::SetIdEnd { end } => {
                if end > self.id_end {
                    self.id_end = end;
                    put(batch, ID_END_KEY.to_vec(), end.to_be_bytes().to_vec());
                }
                Ok(self.id_end)
            }
            Command::SetTsoWindow { end } => {
                if end > self.tso_window {
                    self.tso_window = end;
                    put(batch, TSO_WINDOW_KEY.to_vec(), end.to_be_bytes().to_vec());
                }
                Ok(self.tso_window)
            }
            Command::AllocMemberId { floor } => {
                self.member_id_end = self.member_id_end.max(floor) + 1;
                put(
                    batch,
                    MEMBER_ID_END_KEY.to_vec(),
                    self.member_id_end.to_be_bytes().to_vec(),
                );
                Ok(self.member_id_end)
            }
        }
    }
}

/// The whole state, as a snapshot carries it.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    cluster_id: u64,
    bootstrapped: bool,
    stores: Vec<Vec<u8>>,
    regions: Vec<Vec<u8>>,
    id_end: u64,
    tso_window: u64,
    member_id_end: u64,
}

/// PD's state machine: [`MetaState`] behind a lock, applied by rdb-raft.
pub struct Meta {
    state: RwLock<MetaState>,
}

impl Meta {
    /// Loads the state from `engine`.
    pub fn load(engine: &Engine) -> Result<Meta> {
        Ok(Meta {
            state: RwLock::new(MetaState::load(engine)?),
        })
    }

    /// Reads the state (never held across an await).
    pub fn read(&self) -> RwLockReadGuard<'_, MetaState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes a command for [`rdb_raft::Group::write`].
    pub fn encode(cmd: &Command) -> Vec<u8> {
        // Encoding these plain types into a Vec cannot fail.
        postcard::to_stdvec(cmd).unwrap_or_default()
    }

    /// Decodes the answer of a proposed command.
    pub fn decode_answer(raw: &[u8]) -> Result<u64> {
        postcard::from_bytes::<std::result::Result<u64, String>>(raw)
            .map_err(|e| PdError::Corrupted(format!("command answer: {e}")))?
            .map_err(|e| PdError::InvalidArgument(format!("command refused: {e}")))
    }
}

impl rdb_raft::StateMachine for Meta {
    fn apply(&self, index: u64, command: &[u8], batch: &mut Vec<WriteOp>) -> Vec<u8> {
        let answer = match postcard::from_bytes::<Command>(command) {
            Ok(cmd) => self
                .state
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply(cmd, batch),
            Err(e) => {
                tracing::error!(index, error = %e, "undecodable PD command: skipped");
                Err(format!("undecodable command: {e}"))
            }
        };
        postcard::to_stdvec(&answer).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        let st = self.read();
        let snap = Snapshot {
            cluster_id: st.cluster_id,
            bootstrapped: st.bootstrapped,
            stores: st.stores.values().map(|s| s.encode_to_vec()).collect(),
            regions: st.regions.values().map(|r| r.encode_to_vec()).collect(),
            id_end: st.id_end,
            tso_window: st.tso_window,
            member_id_end: st.member_id_end,
        };
        postcard::to_stdvec(&snap).unwrap_or_default()
    }

    fn restore(&self, data: &[u8], batch: &mut Vec<WriteOp>) -> std::result::Result<(), String> {
        let snap: Snapshot = postcard::from_bytes(data).map_err(|e| e.to_string())?;
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        for id in st.stores.keys() {
            batch.push(WriteOp::DeleteMeta {
                key: meta_key(STORE_PREFIX, *id),
            });
        }
        for id in st.regions.keys() {
            batch.push(WriteOp::DeleteMeta {
                key: meta_key(REGION_PREFIX, *id),
            });
        }
        let mut new = MetaState::default();
        let mut ops = Vec::new();
        new.apply(
            Command::InitCluster {
                cluster_id: snap.cluster_id,
            },
            &mut ops,
        )?;
        new.apply(Command::SetIdEnd { end: snap.id_end }, &mut ops)?;
        new.apply(
            Command::SetTsoWindow {
                end: snap.tso_window,
            },
            &mut ops,
        )?;
        for s in snap.stores {
            new.apply(Command::PutStore { store: s }, &mut ops)?;
        }
        new.apply(
            Command::PutRegions {
                put: snap.regions,
                delete: Vec::new(),
            },
            &mut ops,
        )?;
        new.member_id_end = snap.member_id_end;
        ops.push(WriteOp::PutMeta {
            key: MEMBER_ID_END_KEY.to_vec(),
            value: snap.member_id_end.to_be_bytes().to_vec(),
        });
        new.bootstrapped = snap.bootstrapped;
        if snap.bootstrapped {
            ops.push(WriteOp::PutMeta {
                key: BOOTSTRAPPED_KEY.to_vec(),
                value: b"1".to_vec(),
            });
        } else {
            ops.push(WriteOp::DeleteMeta {
                key: BOOTSTRAPPED_KEY.to_vec(),
            });
        }
        // The counters of a snapshot are never below ours (they only grow
        // along the log), but the cluster id must be the snapshot's.
        if snap.cluster_id == 0 {
            ops.push(WriteOp::DeleteMeta {
                key: CLUSTER_ID_KEY.to_vec(),
            });
        }
        batch.extend(ops);
        *st = new;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_proto::v1::RegionEpoch;
    use rdb_raft::StateMachine;

    fn region(id: u64, s: &[u8], e: &[u8]) -> Region {
        Region {
            id,
            start_key: s.to_vec(),
            end_key: e.to_vec(),
            epoch: Some(RegionEpoch {
                version: id,
                conf_ver: 1,
            }),
            store_id: 1,
            peers: Vec::new(),
        }
    }

    fn apply(m: &Meta, engine: &Engine, cmd: Command) -> u64 {
        let mut batch = Vec::new();
        let raw = m.apply(1, &Meta::encode(&cmd), &mut batch);
        futures::executor::block_on(engine.write(batch)).unwrap();
        Meta::decode_answer(&raw).unwrap()
    }

    /// The state a snapshot carries is the state, in memory and on disk
    /// (after a reload), on a member that had other state before.
    #[test]
    fn a_snapshot_restores_the_whole_state_in_memory_and_on_disk() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a_engine = Engine::open(a_dir.path(), Default::default()).unwrap();
        let a = Meta::load(&a_engine).unwrap();
        assert_eq!(
            apply(&a, &a_engine, Command::InitCluster { cluster_id: 7 }),
            7
        );
        assert_eq!(
            apply(&a, &a_engine, Command::InitCluster { cluster_id: 8 }),
            7
        );
        let store = Store {
            id: 1,
            address: "127.0.0.1:1".into(),
            ..Default::default()
        };
        apply(
            &a,
            &a_engine,
            Command::PutStore {
                store: store.encode_to_vec(),
            },
        );
        assert_eq!(
            apply(
                &a,
                &a_engine,
                Command::Bootstrap {
                    region: region(2, b"", b"").encode_to_vec()
                }
            ),
            1
        );
        assert_eq!(
            apply(
                &a,
                &a_engine,
                Command::Bootstrap {
                    region: region(3, b"", b"").encode_to_vec()
                }
            ),
            0,
            "a second bootstrap changes nothing"
        );
        apply(
            &a,
            &a_engine,
            Command::PutRegions {
                put: vec![
                    region(2, b"", b"m").encode_to_vec(),
                    region(4, b"m", b"").encode_to_vec(),
                ],
                delete: vec![],
            },
        );
        assert_eq!(apply(&a, &a_engine, Command::SetIdEnd { end: 2000 }), 2000);
        assert_eq!(
            apply(&a, &a_engine, Command::SetIdEnd { end: 1000 }),
            2000,
            "windows only grow"
        );
        apply(&a, &a_engine, Command::SetTsoWindow { end: 99 });
        assert_eq!(apply(&a, &a_engine, Command::AllocMemberId { floor: 3 }), 4);
        assert_eq!(apply(&a, &a_engine, Command::AllocMemberId { floor: 3 }), 5);
        assert!(a.read().region_for_key(b"z").is_some_and(|r| r.id == 4));

        // Member B had a region A's history removed.
        let b_engine = Engine::open(b_dir.path(), Default::default()).unwrap();
        let b = Meta::load(&b_engine).unwrap();
        apply(
            &b,
            &b_engine,
            Command::PutRegions {
                put: vec![region(9, b"", b"").encode_to_vec()],
                delete: vec![],
            },
        );
        let mut batch = Vec::new();
        b.restore(&a.snapshot(), &mut batch).unwrap();
        futures::executor::block_on(b_engine.write(batch)).unwrap();
        let reloaded = Meta::load(&b_engine).unwrap();
        for m in [&b, &reloaded] {
            let (x, y) = (a.read(), m.read());
            assert_eq!(y.cluster_id, 7);
            assert!(y.bootstrapped);
            assert_eq!(y.stores, x.stores);
            assert_eq!(y.regions, x.regions);
            assert_eq!(y.by_start, x.by_start);
            assert_eq!((y.id_end, y.tso_window, y.member_id_end), (2000, 99, 5));
        }
        assert!(b.restore(b"junk", &mut Vec::new()).is_err());
    }
}
