//! The client's copy of the region map, ordered by start key.

use std::collections::BTreeMap;

use rdb_proto::v1::RegionRoute;

/// Cached routes by region start key. Entries never overlap: inserting a
/// route removes the ones it overlaps.
#[derive(Debug, Default)]
pub(crate) struct RegionCache {
    by_start: BTreeMap<Vec<u8>, RegionRoute>,
}

fn region(r: &RegionRoute) -> &rdb_proto::v1::Region {
    static EMPTY: std::sync::OnceLock<rdb_proto::v1::Region> = std::sync::OnceLock::new();
    r.region
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

impl RegionCache {
    pub fn insert(&mut self, route: RegionRoute) {
        let r = region(&route).clone();
        if route.leader.is_none() || r.id == 0 {
            return;
        }
        let stale: Vec<Vec<u8>> = self
            .by_start
            .iter()
            .filter(|(_, x)| region(x).id == r.id || region(x).overlaps(&r.start_key, &r.end_key))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.by_start.remove(&k);
        }
        self.by_start.insert(r.start_key.clone(), route);
    }

    /// The cached route of the region holding `key`.
    pub fn for_key(&self, key: &[u8]) -> Option<RegionRoute> {
        let (_, route) = self.by_start.range(..=key.to_vec()).next_back()?;
        region(route).contains(key).then(|| route.clone())
    }

    /// The cached route of the region holding the keys just below `upper`
    /// (empty `upper` = the end of the key space).
    pub fn before(&self, upper: &[u8]) -> Option<RegionRoute> {
        let route = if upper.is_empty() {
            self.by_start.values().next_back()?
        } else {
            self.by_start.range(..upper.to_vec()).next_back()?.1
        };
        let r = region(route);
        let covers = if upper.is_empty() {
            r.end_key.is_empty()
        } else {
            r.end_key.is_empty() || r.end_key.as_slice() >= upper
        };
        covers.then(|| route.clone())
    }

    /// Points the cached route of region `region_id` at `leader`; false if
    /// the region is not cached.
    pub fn set_leader(&mut self, region_id: u64, leader: rdb_proto::v1::Store) -> bool {
        for route in self.by_start.values_mut() {
            if region(route).id == region_id {
                if let Some(r) = route.region.as_mut() {
                    r.store_id = leader.id;
                }
                route.leader = Some(leader);
                return true;
            }
        }
        false
    }

    pub fn invalidate(&mut self, region_id: u64) {
        self.by_start.retain(|_, r| region(r).id != region_id);
    }

    pub fn invalidate_store(&mut self, address: &str) {
        self.by_start
            .retain(|_, r| r.leader.as_ref().map(|s| s.address.as_str()) != Some(address));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_proto::v1::{Region, Store};

    fn route(id: u64, s: &[u8], e: &[u8]) -> RegionRoute {
        RegionRoute {
            region: Some(Region {
                id,
                start_key: s.to_vec(),
                end_key: e.to_vec(),
                ..Default::default()
            }),
            leader: Some(Store {
                id: 1,
                address: format!("s{id}"),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn lookups_and_overlap_replacement() {
        let mut c = RegionCache::default();
        c.insert(route(1, b"", b""));
        assert_eq!(c.for_key(b"zzz").unwrap().region.unwrap().id, 1);
        c.insert(route(2, b"m", b""));
        assert!(
            c.for_key(b"a").is_none(),
            "region 1 overlapped and was dropped"
        );
        c.insert(route(1, b"", b"m"));
        assert_eq!(c.for_key(b"a").unwrap().region.unwrap().id, 1);
        assert_eq!(c.for_key(b"m").unwrap().region.unwrap().id, 2);
        assert_eq!(c.before(b"").unwrap().region.unwrap().id, 2);
        assert_eq!(c.before(b"m").unwrap().region.unwrap().id, 1);
        assert_eq!(c.before(b"n").unwrap().region.unwrap().id, 2);
        c.invalidate(2);
        assert!(c.for_key(b"m").is_none());
        c.invalidate_store("s1");
        assert!(c.for_key(b"a").is_none());
    }
}
