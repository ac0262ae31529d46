//! Cluster metadata: the cluster id, stores, regions and the id allocator,
//! persisted in PD's RocksDB (meta column family) and cached in memory.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::tso::now_ms;

use prost::Message;
use rdb_proto::v1::{Region, RegionRoute, Store, StoreState};
use rdb_storage::{Engine, WriteOp};
use tokio::sync::Mutex;

use crate::error::{PdError, Result};

const CLUSTER_ID_KEY: &[u8] = b"cluster_id";
const BOOTSTRAPPED_KEY: &[u8] = b"bootstrapped";
const ID_END_KEY: &[u8] = b"id_alloc_end";
const STORE_PREFIX: &[u8] = b"store/";
const REGION_PREFIX: &[u8] = b"region/";
/// Ids are reserved in steps of this many, persisted before being handed out.
const ID_STEP: u64 = 1000;

fn meta_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

struct IdAlloc {
    next: u64,
    end: u64,
}

#[derive(Default)]
struct State {
    bootstrapped: bool,
    stores: BTreeMap<u64, Store>,
    /// When each store last sent a heartbeat (monotonic clock).
    heartbeats: HashMap<u64, Instant>,
    regions: BTreeMap<u64, Region>,
    /// Region id by start key.
    by_start: BTreeMap<Vec<u8>, u64>,
}

impl State {
    fn insert_region(&mut self, r: Region) {
        if let Some(old) = self.regions.get(&r.id) {
            if self.by_start.get(&old.start_key) == Some(&r.id) {
                self.by_start.remove(&old.start_key.clone());
            }
        }
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

    fn region_for_key(&self, key: &[u8]) -> Option<&Region> {
        let (_, id) = self.by_start.range(..=key.to_vec()).next_back()?;
        self.regions.get(id).filter(|r| r.contains(key))
    }
}

/// The cluster metadata of one PD.
pub struct Cluster {
    engine: Engine,
    cluster_id: u64,
    state: Mutex<State>,
    ids: Mutex<IdAlloc>,
    store_down_after: Duration,
    started: Instant,
}

impl Cluster {
    /// Loads the metadata; creates a new cluster id on first start.
    pub async fn open(engine: Engine, store_down_after: Duration) -> Result<Cluster> {
        let cluster_id = match engine.get_meta(CLUSTER_ID_KEY)? {
            Some(raw) => rdb_storage::codec::decode_u64(&raw, "cluster_id")?,
            None => {
                // Wall-clock seconds in the high bits, randomness in the low bits,
                // so two clusters created by mistake do not share an id.
                let id = (now_ms() / 1000) << 32 | u64::from(rand::random::<u32>());
                engine
                    .write(vec![WriteOp::PutMeta {
                        key: CLUSTER_ID_KEY.to_vec(),
                        value: id.to_be_bytes().to_vec(),
                    }])
                    .await?;
                id
            }
        };
        let mut state = State {
            bootstrapped: engine.get_meta(BOOTSTRAPPED_KEY)?.is_some(),
            ..Default::default()
        };
        for (k, v) in engine.scan_meta(STORE_PREFIX)? {
            let store = Store::decode(v.as_slice()).map_err(|e| {
                PdError::Corrupted(format!("store record {}: {e}", String::from_utf8_lossy(&k)))
            })?;
            state.stores.insert(store.id, store);
        }
        for (k, v) in engine.scan_meta(REGION_PREFIX)? {
            let region = Region::decode(v.as_slice()).map_err(|e| {
                PdError::Corrupted(format!(
                    "region record {}: {e}",
                    String::from_utf8_lossy(&k)
                ))
            })?;
            state.insert_region(region);
        }
        let id_end = match engine.get_meta(ID_END_KEY)? {
            Some(raw) => rdb_storage::codec::decode_counter(
                &raw,
                "id_alloc_end",
                rdb_storage::codec::MAX_COUNTER,
            )?,
            None => 0,
        };
        tracing::info!(
            cluster_id,
            bootstrapped = state.bootstrapped,
            stores = state.stores.len(),
            regions = state.regions.len(),
            "cluster metadata loaded"
        );
        Ok(Cluster {
            engine,
            cluster_id,
            state: Mutex::new(state),
            // Ids below the persisted end may have been handed out before a restart: skip them.
            ids: Mutex::new(IdAlloc {
                next: id_end + 1,
                end: id_end,
            }),
            store_down_after,
            started: Instant::now(),
        })
    }

    /// This cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Fails unless `got` is this cluster's id.
    pub fn check_cluster(&self, got: u64) -> Result<()> {
        if got != self.cluster_id {
            return Err(PdError::ClusterMismatch {
                got,
                want: self.cluster_id,
            });
        }
        Ok(())
    }

    /// Allocates a cluster-unique id (never 0, never repeated, also across restarts).
    pub async fn alloc_id(&self) -> Result<u64> {
        let mut ids = self.ids.lock().await;
        if ids.next > ids.end {
            let end = ids.end.max(ids.next - 1) + ID_STEP;
            self.engine
                .write(vec![WriteOp::PutMeta {
                    key: ID_END_KEY.to_vec(),
                    value: end.to_be_bytes().to_vec(),
                }])
                .await?;
            ids.end = end;
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    /// Whether the cluster has its first region.
    pub async fn is_bootstrapped(&self) -> bool {
        self.state.lock().await.bootstrapped
    }

    /// Records the first region, covering the whole key space, on `store_id`.
    pub async fn bootstrap(&self, store_id: u64, region: Region) -> Result<()> {
        if !region.start_key.is_empty() || !region.end_key.is_empty() {
            return Err(PdError::InvalidArgument(
                "the first region must cover the whole key space".into(),
            ));
        }
        if region.id == 0 || region.store_id != store_id {
            return Err(PdError::InvalidArgument(
                "the first region needs an id and must be on the bootstrapping store".into(),
            ));
        }
        let mut st = self.state.lock().await;
        if st.bootstrapped {
            return Err(PdError::AlreadyBootstrapped);
        }
        if !st.stores.contains_key(&store_id) {
            return Err(PdError::FailedPrecondition(format!(
                "store {store_id} must register (PutStore) before bootstrapping"
            )));
        }
        self.engine
            .write(vec![
                WriteOp::PutMeta {
                    key: meta_key(REGION_PREFIX, region.id),
                    value: region.encode_to_vec(),
                },
                WriteOp::PutMeta {
                    key: BOOTSTRAPPED_KEY.to_vec(),
                    value: b"1".to_vec(),
                },
            ])
            .await?;
        st.bootstrapped = true;
        st.insert_region(region.clone());
        tracing::info!(store_id, region_id = region.id, "cluster bootstrapped");
        Ok(())
    }

    /// Registers or updates a store.
    pub async fn put_store(&self, mut store: Store) -> Result<Store> {
        if store.id == 0 {
            return Err(PdError::InvalidArgument(
                "store id must not be 0 (get one from AllocId)".into(),
            ));
        }
        if store.address.is_empty() {
            return Err(PdError::InvalidArgument(
                "store address must not be empty".into(),
            ));
        }
        let mut st = self.state.lock().await;
        if let Some(other) = st
            .stores
            .values()
            .find(|s| s.address == store.address && s.id != store.id)
        {
            if self.is_up(&st, other.id) {
                return Err(PdError::FailedPrecondition(format!(
                    "address {} is already used by live store {}",
                    store.address, other.id
                )));
            }
        }
        store.state = StoreState::Up as i32;
        store.last_heartbeat_ms = now_ms();
        let mut persisted = store.clone();
        persisted.last_heartbeat_ms = 0;
        self.engine
            .write(vec![WriteOp::PutMeta {
                key: meta_key(STORE_PREFIX, store.id),
                value: persisted.encode_to_vec(),
            }])
            .await?;
        st.heartbeats.insert(store.id, Instant::now());
        st.stores.insert(store.id, store.clone());
        tracing::info!(store_id = store.id, address = %store.address, "store registered");
        Ok(store)
    }

    fn is_up(&self, st: &State, id: u64) -> bool {
        let last = st.heartbeats.get(&id).copied().unwrap_or(self.started);
        last.elapsed() < self.store_down_after
    }

    fn view_store(&self, st: &State, s: &Store) -> Store {
        let mut s = s.clone();
        s.state = if self.is_up(st, s.id) {
            StoreState::Up
        } else {
            StoreState::Down
        } as i32;
        s
    }

    /// One store, with its state computed from heartbeats.
    pub async fn get_store(&self, id: u64) -> Result<Store> {
        let st = self.state.lock().await;
        let s = st
            .stores
            .get(&id)
            .ok_or_else(|| PdError::NotFound(format!("store {id} is not registered")))?;
        Ok(self.view_store(&st, s))
    }

    /// How many regions PD knows.
    pub async fn region_count(&self) -> usize {
        self.state.lock().await.regions.len()
    }

    /// All stores, ordered by id.
    pub async fn all_stores(&self) -> Vec<Store> {
        let st = self.state.lock().await;
        st.stores
            .values()
            .map(|s| self.view_store(&st, s))
            .collect()
    }

    /// Records a heartbeat and adopts region updates the store reports
    /// (a region PD does not know yet, or a newer epoch of one it knows).
    pub async fn heartbeat(&self, store_id: u64, regions: Vec<Region>) -> Result<()> {
        let mut st = self.state.lock().await;
        let Some(store) = st.stores.get_mut(&store_id) else {
            return Err(PdError::NotFound(format!(
                "store {store_id} is not registered"
            )));
        };
        store.last_heartbeat_ms = now_ms();
        st.heartbeats.insert(store_id, Instant::now());
        let mut writes = Vec::new();
        let mut adopted = Vec::new();
        for r in regions {
            if r.store_id != store_id || r.id == 0 {
                continue;
            }
            let epoch = r.epoch_or_default();
            if let Some(known) = st.regions.get(&r.id) {
                if !epoch.is_newer_than(&known.epoch_or_default()) {
                    continue;
                }
            }
            let overlapping: Vec<u64> = st
                .regions
                .values()
                .filter(|o| o.id != r.id && o.overlaps(&r.start_key, &r.end_key))
                .map(|o| o.id)
                .collect();
            if overlapping
                .iter()
                .any(|id| st.regions[id].epoch_or_default().version > epoch.version)
            {
                continue; // A newer split already covers this range: the report is stale.
            }
            for id in overlapping {
                writes.push(WriteOp::DeleteMeta {
                    key: meta_key(REGION_PREFIX, id),
                });
                st.remove_region(id);
            }
            writes.push(WriteOp::PutMeta {
                key: meta_key(REGION_PREFIX, r.id),
                value: r.encode_to_vec(),
            });
            adopted.push(r.id);
            st.insert_region(r);
        }
        if !writes.is_empty() {
            self.engine.write(writes).await?;
            tracing::info!(store_id, regions = ?adopted, "adopted region updates from heartbeat");
        }
        Ok(())
    }

    /// Stores region records (after a split or a move) and drops overlapping stale ones.
    pub async fn update_regions(&self, regions: Vec<Region>) -> Result<()> {
        let mut st = self.state.lock().await;
        let mut writes = Vec::new();
        for r in regions {
            if let Some(known) = st.regions.get(&r.id) {
                if known
                    .epoch_or_default()
                    .is_newer_than(&r.epoch_or_default())
                {
                    continue;
                }
            }
            writes.push(WriteOp::PutMeta {
                key: meta_key(REGION_PREFIX, r.id),
                value: r.encode_to_vec(),
            });
            st.insert_region(r);
        }
        self.engine.write(writes).await?;
        Ok(())
    }

    fn route(&self, st: &State, r: &Region) -> RegionRoute {
        RegionRoute {
            region: Some(r.clone()),
            leader: st.stores.get(&r.store_id).map(|s| self.view_store(st, s)),
        }
    }

    /// The region that holds `key`.
    pub async fn region_by_key(&self, key: &[u8]) -> Result<RegionRoute> {
        let st = self.state.lock().await;
        if !st.bootstrapped {
            return Err(PdError::NotBootstrapped);
        }
        let r = st.region_for_key(key).ok_or_else(|| {
            PdError::NotFound(format!(
                "no region holds key {}",
                rdb_proto::region::display_key(key)
            ))
        })?;
        Ok(self.route(&st, r))
    }

    /// A region by id.
    pub async fn region_by_id(&self, id: u64) -> Result<RegionRoute> {
        let st = self.state.lock().await;
        let r = st
            .regions
            .get(&id)
            .ok_or_else(|| PdError::NotFound(format!("region {id} does not exist")))?;
        Ok(self.route(&st, r))
    }

    /// Regions overlapping `[start, end)` in key order (at most `limit`, 0 = all).
    pub async fn scan_regions(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<RegionRoute> {
        let st = self.state.lock().await;
        let first = st
            .region_for_key(start)
            .map(|r| r.start_key.clone())
            .unwrap_or_else(|| start.to_vec());
        let limit = if limit == 0 { usize::MAX } else { limit };
        st.by_start
            .range(first..)
            .filter_map(|(_, id)| st.regions.get(id))
            .take_while(|r| end.is_empty() || r.start_key.as_slice() < end)
            .take(limit)
            .map(|r| self.route(&st, r))
            .collect()
    }

    /// A live store other than `exclude`, preferring the one with the fewest regions.
    pub async fn pick_other_store(&self, exclude: u64) -> Option<Store> {
        let st = self.state.lock().await;
        st.stores
            .values()
            .filter(|s| s.id != exclude && self.is_up(&st, s.id))
            .min_by_key(|s| {
                (
                    st.regions.values().filter(|r| r.store_id == s.id).count(),
                    s.id,
                )
            })
            .map(|s| self.view_store(&st, s))
    }

    /// Whether a store is registered and up.
    pub async fn store_is_up(&self, id: u64) -> bool {
        let st = self.state.lock().await;
        st.stores.contains_key(&id) && self.is_up(&st, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_proto::v1::RegionEpoch;

    fn region(id: u64, s: &[u8], e: &[u8], version: u64, conf_ver: u64, store_id: u64) -> Region {
        Region {
            id,
            start_key: s.to_vec(),
            end_key: e.to_vec(),
            epoch: Some(RegionEpoch { version, conf_ver }),
            store_id,
        }
    }

    async fn cluster(dir: &std::path::Path) -> Cluster {
        let engine = Engine::open(dir, Default::default()).unwrap();
        Cluster::open(engine, Duration::from_secs(10))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn heartbeats_repair_the_region_map_and_everything_persists() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cluster(tmp.path()).await;
        let store = |id| Store {
            id,
            address: format!("127.0.0.1:{id}"),
            ..Default::default()
        };
        c.put_store(store(1)).await.unwrap();
        c.put_store(store(2)).await.unwrap();
        assert!(c
            .put_store(Store {
                id: 3,
                address: "127.0.0.1:1".into(),
                ..Default::default()
            })
            .await
            .is_err());
        c.bootstrap(1, region(10, b"", b"", 1, 1, 1)).await.unwrap();
        assert!(matches!(
            c.bootstrap(1, region(11, b"", b"", 1, 1, 1)).await,
            Err(PdError::AlreadyBootstrapped)
        ));

        // A split PD never heard of (it crashed mid-split) arrives by heartbeat.
        c.heartbeat(
            1,
            vec![
                region(12, b"m", b"", 2, 1, 1),
                region(10, b"", b"m", 2, 1, 1),
            ],
        )
        .await
        .unwrap();
        let routes = c.scan_regions(b"", b"", 0).await;
        let ids: Vec<u64> = routes
            .iter()
            .map(|r| r.region.as_ref().unwrap().id)
            .collect();
        assert_eq!(ids, vec![10, 12]);
        assert_eq!(c.region_by_key(b"z").await.unwrap().region.unwrap().id, 12);

        // A stale report (older epoch) is ignored; a newer one (moved to store 2) is adopted.
        c.heartbeat(1, vec![region(10, b"", b"", 1, 1, 1)])
            .await
            .unwrap();
        assert_eq!(c.region_by_key(b"z").await.unwrap().region.unwrap().id, 12);
        c.heartbeat(2, vec![region(12, b"m", b"", 2, 2, 2)])
            .await
            .unwrap();
        assert_eq!(c.region_by_key(b"z").await.unwrap().leader.unwrap().id, 2);
        // A store reporting a region on another store is ignored.
        c.heartbeat(1, vec![region(12, b"m", b"", 9, 9, 2)])
            .await
            .unwrap();
        assert_eq!(
            c.region_by_id(12)
                .await
                .unwrap()
                .region
                .unwrap()
                .epoch
                .unwrap()
                .version,
            2
        );

        let id = c.alloc_id().await.unwrap();
        drop(c);
        let c = cluster(tmp.path()).await;
        assert!(c.is_bootstrapped().await);
        assert_eq!(c.all_stores().await.len(), 2);
        assert_eq!(c.scan_regions(b"", b"", 0).await.len(), 2);
        assert_eq!(
            c.region_by_key(b"z")
                .await
                .unwrap()
                .region
                .unwrap()
                .store_id,
            2
        );
        assert!(
            c.alloc_id().await.unwrap() > id,
            "ids never repeat across restarts"
        );
        assert_eq!(c.scan_regions(b"a", b"b", 0).await.len(), 1);
        assert_eq!(c.scan_regions(b"", b"", 1).await.len(), 1);
    }
}
