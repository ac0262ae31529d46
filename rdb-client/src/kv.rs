//! Single-key and batch reads and writes, and compare-and-swap.

use rdb_proto::limits::{check_batch_len, check_key, check_value};
use rdb_proto::v1::cas_condition::Condition;
use rdb_proto::v1::*;

use crate::error::{classify, Error, Failure, Result};
use crate::retry::*;
use crate::routing::*;
use crate::types::*;
use crate::{batch, Client};

/// Checks a batch of keys against the API limits (count, then each key).
fn check_batch_keys(keys: &[Vec<u8>]) -> Result<()> {
    invalid(check_batch_len(keys.len()))?;
    keys.iter().try_for_each(|k| invalid(check_key(k)))
}

impl Client {
    /// The address of store `id`, from PD the first time.
    async fn store_address(&self, id: u64) -> Result<Option<String>> {
        let known = self
            .inner
            .store_addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if known.is_some() {
            return Ok(known);
        }
        let stores = self.stores().await?;
        let mut map = self
            .inner
            .store_addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for s in stores {
            map.insert(s.id, s.address);
        }
        Ok(map.get(&id).cloned())
    }

    /// Reads a key from any replica of its region, without confirming that
    /// the replica has the latest value (`Context.stale_read`): the answer
    /// may miss writes acknowledged elsewhere (a follower lags by its
    /// replication delay; one cut off from its group answers what it last
    /// applied). It is served at once by whichever replica answers, even
    /// while the region has no leader (during an election, or with its
    /// leader paused), and spreads reads over the replicas (they are tried
    /// in a random order). When no replica can serve it, it is read as
    /// [`get`](Client::get) reads. `None` if the key does not exist there.
    ///
    /// ```no_run
    /// # async fn demo(client: rdb_client::Client) -> Result<(), rdb_client::Error> {
    /// // A dashboard that can live with a value a moment old.
    /// let v = client.get_stale(b"config/motd".to_vec()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_stale(&self, key: Vec<u8>) -> Result<Option<Value>> {
        invalid(check_key(&key))?;
        let route = self.locate(&key).await?;
        if let Some(region) = route.region.as_ref() {
            let mut peers = region.peers.clone();
            // A random order spreads the reads over the replicas.
            for i in (1..peers.len()).rev() {
                peers.swap(i, rand::random_range(0..=i));
            }
            for p in peers {
                let Some(address) = self.store_address(p.store_id).await? else {
                    continue;
                };
                let req = GetRequest {
                    context: Some(Context {
                        region_id: region.id,
                        region_epoch: region.epoch,
                        stale_read: true,
                    }),
                    key: key.clone(),
                };
                // A replica that does not answer (paused, hung) costs at
                // most the keep-alive timeout before the next is asked.
                let limit = self.inner.config.keepalive_timeout;
                let answer = match tokio::time::timeout(limit, self.kv(&address)?.get(req)).await {
                    Ok(a) => a,
                    Err(_) => {
                        self.forget_store(&address);
                        continue;
                    }
                };
                match answer {
                    Ok(r) => {
                        let r = r.into_inner();
                        if r.region_error.is_none() {
                            return Ok(r.found.then_some(Value {
                                value: r.value,
                                version: r.version,
                            }));
                        }
                        // Not this replica (it lags the region's epoch or
                        // has no data yet): the next one.
                    }
                    Err(s) => match classify(&s) {
                        Failure::Answered => return Err(Error::from_status(&s)),
                        _ => self.forget_store(&address),
                    },
                }
            }
        }
        self.get(key).await
    }

    /// Reads a key; `None` if it does not exist.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Value>> {
        invalid(check_key(&key))?;
        if self.inner.config.coalesce {
            match self
                .coalesced(&key, |b, context| {
                    let key = key.clone();
                    async move { b.get(context, key).await }
                })
                .await
            {
                // The shared batch was refused as a whole (another call's
                // key over the store's cap): ask alone for this call's own answer.
                Err(e) if e.refused_whole_request() => {}
                r => return r,
            }
        }
        self.read_key(&key, |mut c, context| {
            let req = GetRequest {
                context,
                key: key.clone(),
            };
            async move {
                let r = c.get(req).await?.into_inner();
                Ok(match r.region_error {
                    Some(e) => Attempt::Region(e),
                    None => Attempt::Done(r.found.then_some(Value {
                        value: r.value,
                        version: r.version,
                    })),
                })
            }
        })
        .await
    }

    /// Writes a key; returns the new version.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<u64> {
        invalid(check_key(&key))?;
        invalid(check_value(&value))?;
        if self.inner.config.coalesce {
            match self
                .coalesced(&key, |b, context| {
                    let (key, value) = (key.clone(), value.clone());
                    async move { b.put(context, key, value).await }
                })
                .await
            {
                // The shared batch was refused before anything was written
                // (a call in it over the store's caps): send this call alone
                // for its own answer.
                Err(e) if e.refused_whole_request() => {}
                r => return r,
            }
        }
        self.write_key(&key, |mut c, context, id| {
            let req = PutRequest {
                context,
                key: key.clone(),
                value: value.clone(),
                request_id: Some(id),
            };
            async move {
                let r = c.put(req).await?.into_inner();
                Ok(attempt(r.region_error, || r.version))
            }
        })
        .await
    }

    /// Deletes a key; returns whether it existed.
    pub async fn delete(&self, key: Vec<u8>) -> Result<bool> {
        invalid(check_key(&key))?;
        self.write_key(&key, |mut c, context, id| {
            let req = DeleteRequest {
                context,
                key: key.clone(),
                request_id: Some(id),
            };
            async move {
                let r = c.delete(req).await?.into_inner();
                Ok(attempt(r.region_error, || r.existed))
            }
        })
        .await
    }

    /// Compare-and-swap: writes `new` (or deletes the key if `new` is `None`)
    /// only if the key's current state matches `expected`. Atomic against
    /// every other write to the key. The result always carries the state the
    /// comparison saw.
    ///
    /// Like every write, a CAS carries a request id: when the connection
    /// breaks after sending, the same request is sent again and the store
    /// answers a copy it already applied with the recorded outcome, so the
    /// result is the first copy's. If no answer can be had,
    /// [`Error::Undetermined`] is returned.
    pub async fn compare_and_swap(
        &self,
        key: Vec<u8>,
        expected: CasExpect,
        new: Option<Vec<u8>>,
    ) -> Result<CasResult> {
        invalid(check_key(&key))?;
        if let Some(v) = &new {
            invalid(check_value(v))?;
        }
        let condition = match expected {
            CasExpect::Absent => Condition::Absent(Absent {}),
            CasExpect::Version(v) => Condition::Version(v),
            CasExpect::Value(v) => Condition::Value(v),
        };
        let delete = new.is_none();
        let new_value = new.unwrap_or_default();
        let expected = Some(CasCondition {
            condition: Some(condition),
        });
        let result = |o: CasOutcome| CasResult {
            succeeded: o.succeeded,
            current: o.found.then_some(Value {
                value: o.current_value,
                version: o.current_version,
            }),
            new_version: (o.succeeded && !delete).then_some(o.new_version),
        };
        if self.inner.config.coalesce {
            let op = CasOp {
                key: key.clone(),
                expected: expected.clone(),
                new_value: new_value.clone(),
                delete,
            };
            match self
                .coalesced(&key, |b, context| {
                    let op = op.clone();
                    async move { b.cas(context, op).await.map(|a| a.map(result)) }
                })
                .await
            {
                // The shared batch was refused before anything was written
                // (a call in it over the store's caps): send this call alone
                // for its own answer.
                Err(e) if e.refused_whole_request() => {}
                r => return r,
            }
        }
        self.write_key(&key, |mut c, context, id| {
            let req = CompareAndSwapRequest {
                context,
                key: key.clone(),
                expected: expected.clone(),
                new_value: new_value.clone(),
                delete,
                request_id: Some(id),
            };
            async move {
                let r = c.compare_and_swap(req).await?.into_inner();
                Ok(match r.region_error {
                    Some(e) => Attempt::Region(e),
                    None => Attempt::Done(result(CasOutcome {
                        succeeded: r.succeeded,
                        found: r.found,
                        current_value: r.current_value,
                        current_version: r.current_version,
                        new_version: r.new_version,
                    })),
                })
            }
        })
        .await
    }

    /// Reads many keys (from any regions); returns the pairs of the keys that
    /// exist, in the order of `keys`.
    pub async fn batch_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<KvPair>> {
        check_batch_keys(&keys)?;
        let results = self
            .per_region(
                keys,
                |k| k.as_slice(),
                false,
                |mut c, context, keys, _| async move {
                    // A store answers at most its byte budget per call, in
                    // request order: ask again for the keys it did not reach.
                    let mut out = Vec::with_capacity(keys.len());
                    let mut from = 0;
                    while from < keys.len() {
                        let r = c
                            .batch_get(BatchGetRequest {
                                context,
                                keys: keys[from..].to_vec(),
                            })
                            .await?
                            .into_inner();
                        if let Some(e) = r.region_error {
                            return Ok(Attempt::Region(e));
                        }
                        let covered = batch::answered_keys(&r, keys.len() - from)?;
                        let mut pairs = r.pairs.into_iter().peekable();
                        for k in &keys[from..from + covered] {
                            out.push(pairs.next_if(|p| &p.key == k));
                        }
                        from += covered;
                    }
                    Ok(Attempt::Done(out))
                },
            )
            .await?;
        Ok(results.into_iter().filter_map(|(_, p)| p).collect())
    }

    /// Writes many pairs; atomic per region. Returns the new versions in the
    /// order of `pairs`.
    ///
    /// ```no_run
    /// # async fn demo(client: rdb_client::Client) -> Result<(), rdb_client::Error> {
    /// let pairs = vec![(b"a".to_vec(), b"1".to_vec()), (b"z".to_vec(), b"26".to_vec())];
    /// let versions = client.batch_put(pairs).await?;   // "a" and "z" may be on different stores
    /// assert_eq!(versions.len(), 2);
    /// let found = client.batch_get(vec![b"a".to_vec(), b"missing".to_vec()]).await?;
    /// assert_eq!(found.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn batch_put(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<u64>> {
        invalid(check_batch_len(pairs.len()))?;
        for (k, v) in &pairs {
            invalid(check_key(k))?;
            invalid(check_value(v))?;
        }
        let results = self
            .per_region(
                pairs,
                |p| p.0.as_slice(),
                true,
                |mut c, context, pairs, request_id| async move {
                    let pairs = pairs
                        .into_iter()
                        .map(|(key, value)| KvPair {
                            key,
                            value,
                            version: 0,
                        })
                        .collect();
                    let r = c
                        .batch_put(BatchPutRequest {
                            context,
                            pairs,
                            request_id,
                        })
                        .await?
                        .into_inner();
                    Ok(attempt(r.region_error, || r.versions))
                },
            )
            .await?;
        Ok(results.into_iter().map(|(_, v)| v).collect())
    }

    /// Deletes many keys; atomic per region. Returns how many existed.
    pub async fn batch_delete(&self, keys: Vec<Vec<u8>>) -> Result<u64> {
        check_batch_keys(&keys)?;
        let results = self
            .per_region(
                keys,
                |k| k.as_slice(),
                true,
                |mut c, context, keys, request_id| async move {
                    let n = keys.len();
                    let r = c
                        .batch_delete(BatchDeleteRequest {
                            context,
                            keys,
                            request_id,
                        })
                        .await?
                        .into_inner();
                    Ok(match r.region_error {
                        Some(e) => Attempt::Region(e),
                        // The count is per region; attach it to the region's first key.
                        None => Attempt::Done(
                            std::iter::once(r.deleted)
                                .chain(std::iter::repeat_n(0, n - 1))
                                .collect(),
                        ),
                    })
                },
            )
            .await?;
        Ok(results.into_iter().map(|(_, n)| n).sum())
    }
}
