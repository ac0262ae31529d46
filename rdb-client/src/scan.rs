//! Range calls across regions: scans and range deletes.

use rdb_proto::limits::{check_range, MAX_SCAN_LIMIT};
use rdb_proto::v1::*;

use crate::error::Result;
use crate::retry::*;
use crate::routing::*;
use crate::types::*;
use crate::Client;

impl Client {
    /// Scans `[start, end)` in key order (empty `end` = to the end of the key
    /// space), across regions, returning at most `limit` pairs (0 = no limit).
    pub async fn scan(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> Result<Vec<KvPair>> {
        self.scan_with(
            start,
            end,
            ScanOptions {
                limit,
                ..Default::default()
            },
        )
        .await
    }

    /// Scans with [`ScanOptions`] (reverse order, keys only).
    ///
    /// ```no_run
    /// # async fn demo(client: rdb_client::Client) -> Result<(), rdb_client::Error> {
    /// use rdb_client::ScanOptions;
    ///
    /// // The last 10 keys under "user/", newest key first, without values.
    /// let opts = ScanOptions { limit: 10, reverse: true, keys_only: true };
    /// for pair in client.scan_with(b"user/".to_vec(), b"user0".to_vec(), opts).await? {
    ///     println!("{}", String::from_utf8_lossy(&pair.key));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn scan_with(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        opts: ScanOptions,
    ) -> Result<Vec<KvPair>> {
        invalid(check_range(&start, &end))?;
        let limit = if opts.limit == 0 {
            usize::MAX
        } else {
            opts.limit
        };
        let mut out = Vec::new();
        let (mut lo, mut hi) = (start.clone(), end.clone());
        while out.len() < limit {
            let chunk = (limit - out.len()).min(MAX_SCAN_LIMIT as usize) as u32;
            let (route, (pairs, has_more)) = self
                .on_region(
                    || async {
                        if opts.reverse {
                            self.locate_before(&lo, &hi).await
                        } else {
                            self.locate(&lo).await
                        }
                    },
                    |mut c, route| {
                        let r = region_of(&route);
                        let sub_start = if opts.reverse {
                            lo.clone().max(r.start_key.clone())
                        } else {
                            lo.clone()
                        };
                        let sub_end = match (hi.is_empty(), r.end_key.is_empty()) {
                            (_, true) => hi.clone(),
                            (true, false) => r.end_key.clone(),
                            (false, false) => hi.clone().min(r.end_key.clone()),
                        };
                        let req = ScanRequest {
                            context: ctx(&route),
                            start_key: sub_start,
                            end_key: sub_end,
                            limit: chunk,
                            reverse: opts.reverse,
                            keys_only: opts.keys_only,
                        };
                        async move {
                            let r = c.scan(req).await?.into_inner();
                            Ok(attempt(r.region_error, || (r.pairs, r.has_more)))
                        }
                    },
                )
                .await?;
            // A store with a smaller max-scan-limit answers a full page of
            // fewer pairs than asked, with has_more.
            let full = has_more || pairs.len() as u32 == chunk;
            let last_key = pairs.last().map(|p| p.key.clone());
            out.extend(pairs);
            let r = region_of(&route);
            if full {
                // The region has more: continue inside it after the last key.
                match last_key {
                    Some(k) if opts.reverse => hi = k,
                    Some(mut k) => {
                        k.push(0);
                        lo = k;
                    }
                    None => break,
                }
                continue;
            }
            if opts.reverse {
                if r.start_key.as_slice() <= start.as_slice() || r.start_key.is_empty() {
                    break;
                }
                hi = r.start_key;
            } else {
                if r.end_key.is_empty()
                    || (!end.is_empty() && r.end_key.as_slice() >= end.as_slice())
                {
                    break;
                }
                lo = r.end_key;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Deletes every key in `[start, end)` (empty `end` = to the end of the
    /// key space), across regions; atomic per region. Returns how many keys were removed.
    pub async fn delete_range(&self, start: Vec<u8>, end: Vec<u8>) -> Result<u64> {
        invalid(check_range(&start, &end))?;
        let mut lo = start;
        let mut deleted = 0;
        loop {
            let (route, n) = self
                .on_write(
                    || self.locate(&lo),
                    |mut c, route, id| {
                        let req = DeleteRangeRequest {
                            context: ctx(&route),
                            start_key: lo.clone(),
                            end_key: end.clone(),
                            request_id: Some(id),
                        };
                        async move {
                            let r = c.delete_range(req).await?.into_inner();
                            Ok(attempt(r.region_error, || r.deleted))
                        }
                    },
                )
                .await?;
            deleted += n;
            let r = region_of(&route);
            if r.end_key.is_empty() || (!end.is_empty() && r.end_key >= end) {
                return Ok(deleted);
            }
            lo = r.end_key;
        }
    }
}
