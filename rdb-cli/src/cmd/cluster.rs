//! Cluster commands: tso, stores, regions, split, check.

use rdb_client::{Client, StoreState};
use serde_json::{json, Value as Json};

use crate::output::*;

/// Takes timestamps from PD.
pub async fn tso(client: &Client, out: &Out, count: u32) -> Result<(), Failure> {
    let range = client.tso_batch(count).await?;
    let (physical, logical) = rdb_proto::limits::split_timestamp(range.start);
    out.print(
        json!({"first": range.start, "count": count, "physical_ms": physical, "logical": logical}),
        || {
            if count == 1 {
                range.start.to_string()
            } else {
                format!("{} count={count}", range.start)
            }
        },
    );
    Ok(())
}

/// Lists the stores.
pub async fn stores(client: &Client, out: &Out) -> Result<(), Failure> {
    let stores = client.stores().await?;
    let j = stores.iter().map(store_json).collect();
    out.print(Json::Array(j), || {
        let mut t = format!(
            "{:<6} {:<24} {:<15} {:>8} {:>7} VERSION",
            "ID", "ADDRESS", "STATE", "REPLICAS", "LEADERS"
        );
        for s in &stores {
            t.push_str(&format!("\n{}", store_line(s)));
        }
        t
    });
    Ok(())
}

fn state(s: &rdb_client::Store) -> String {
    let state = match StoreState::try_from(s.state) {
        Ok(StoreState::Up) => "up",
        Ok(StoreState::Down) => "down",
        _ => "unknown",
    };
    if s.draining {
        format!("{state},draining")
    } else {
        state.to_string()
    }
}

fn store_json(s: &rdb_client::Store) -> Json {
    json!({"id": s.id, "address": s.address, "state": state(s), "draining": s.draining,
        "replicas": s.replica_count, "leaders": s.leader_count,
        "last_heartbeat_ms": s.last_heartbeat_ms, "version": s.version})
}

fn store_line(s: &rdb_client::Store) -> String {
    format!(
        "{:<6} {:<24} {:<15} {:>8} {:>7} {}",
        s.id,
        s.address,
        state(s),
        s.replica_count,
        s.leader_count,
        s.version
    )
}

/// Lists PD's operators.
pub async fn operators(client: &Client, out: &Out) -> Result<(), Failure> {
    let ops = client.operators().await?;
    let j = |o: &rdb_proto::v1::OperatorStatus| {
        json!({"id": o.id, "kind": o.kind, "region_id": o.region_id, "store_id": o.store_id,
            "source": o.source, "step": o.step, "started_ms": o.started_ms,
            "finished_ms": o.finished_ms, "outcome": o.outcome})
    };
    out.print(
        json!({"running": ops.running.iter().map(j).collect::<Vec<_>>(),
            "recent": ops.recent.iter().map(j).collect::<Vec<_>>()}),
        || {
            let mut t = format!(
                "{:<5} {:<16} {:<7} {:<6} {:<9} {:<9} STEP / OUTCOME",
                "ID", "KIND", "REGION", "STORE", "SOURCE", "SECS"
            );
            for o in ops.running.iter().chain(&ops.recent) {
                let end = if o.finished_ms == 0 {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64)
                } else {
                    o.finished_ms
                };
                let secs = end.saturating_sub(o.started_ms) as f64 / 1000.0;
                let what = if o.outcome.is_empty() {
                    format!("running: {}", o.step)
                } else {
                    format!("{} ({})", o.outcome, o.step)
                };
                t.push_str(&format!(
                    "\n{:<5} {:<16} {:<7} {:<6} {:<9} {:<9.1} {}",
                    o.id, o.kind, o.region_id, o.store_id, o.source, secs, what
                ));
            }
            t
        },
    );
    Ok(())
}

/// Bytes as MiB with one decimal (KiB below 1 MiB).
fn mib(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1}K", bytes as f64 / 1024.0)
    } else {
        format!("{:.1}M", bytes as f64 / (1 << 20) as f64)
    }
}

/// Lists the regions.
pub async fn regions(client: &Client, out: &Out) -> Result<(), Failure> {
    let routes = client.regions().await?;
    out.print(
        Json::Array(routes.iter().map(|r| out.route(r)).collect()),
        || {
            let mut t = format!(
                "{:<6} {:<20} {:<20} {:<10} {:>9} {:>8} {:<28} LEADER",
                "ID", "START", "END", "EPOCH", "SIZE", "KEYS", "PEERS (id@store)"
            );
            for r in &routes {
                let j = out.route(r);
                let region = r.region.clone().unwrap_or_default();
                let e = region.epoch.unwrap_or_default();
                let peers = region
                    .peers
                    .iter()
                    .map(|p| {
                        let learner = p.role == rdb_client::PeerRole::Learner as i32;
                        let down = r.down_peer_ids.contains(&p.id);
                        format!(
                            "{}@{}{}{}",
                            p.id,
                            p.store_id,
                            if learner { "(l)" } else { "" },
                            if down { "(down)" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let (size, keys) = if r.approximate_size == 0 && r.approximate_keys == 0 {
                    ("-".to_string(), "-".to_string())
                } else {
                    (mib(r.approximate_size), r.approximate_keys.to_string())
                };
                t.push_str(&format!(
                    "\n{:<6} {:<20} {:<20} {:<10} {:>9} {:>8} {:<28} {} ({})",
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
                    size,
                    keys,
                    peers,
                    region.store_id,
                    j["store_address"].as_str().unwrap_or("?"),
                ));
            }
            t
        },
    );
    Ok(())
}

/// Splits a region.
pub async fn split(client: &Client, out: &Out, key: String) -> Result<(), Failure> {
    let (left, right) = client.split(arg(out, &key, "split key")?).await?;
    let (l, r) = (out.route(&left), out.route(&right));
    out.print(json!({"left": l, "right": r}), || {
        format!(
            "left:  region {} led by store {}\nright: region {} led by store {}",
            l["id"], l["store_id"], r["id"], r["store_id"]
        )
    });
    Ok(())
}

/// Compares the replicas of every region (or of one) by their digests.
pub async fn check(
    client: &Client,
    out: &Out,
    region: Option<u64>,
    wait_secs: u64,
) -> Result<(), Failure> {
    let ids: Vec<u64> = match region {
        Some(id) => vec![id],
        None => client
            .regions()
            .await?
            .iter()
            .filter_map(|r| r.region.as_ref().map(|g| g.id))
            .collect(),
    };
    let wait = std::time::Duration::from_secs(wait_secs);
    let (mut checks, mut disagree) = (Vec::new(), 0usize);
    for (n, id) in ids.iter().enumerate() {
        if !out.json {
            eprint!("\rchecking region {id} ({}/{})", n + 1, ids.len());
        }
        let c = client.check_replicas(*id, wait).await?;
        disagree += usize::from(!c.agree());
        checks.push(c);
    }
    if !out.json && !ids.is_empty() {
        eprintln!();
    }
    let j = checks
        .iter()
        .map(|c| {
            json!({"region_id": c.region_id, "index": c.index, "agree": c.agree(),
                "replicas": c.replicas.iter().map(|r| json!({
                    "peer_id": r.peer_id, "store_id": r.store_id, "address": r.address,
                    "digest": r.digest.as_deref().map(hex::encode),
                    "keys": r.keys, "records": r.records, "error": r.error,
                })).collect::<Vec<_>>()})
        })
        .collect();
    out.print(Json::Array(j), || {
        let mut t = String::new();
        for c in &checks {
            let verdict = if c.agree() { "agree" } else { "DISAGREE" };
            t.push_str(&format!(
                "region {} at index {}: {verdict}\n",
                c.region_id, c.index
            ));
            for r in &c.replicas {
                let d = match (&r.digest, &r.error) {
                    (Some(d), _) => format!(
                        "{} ({} keys, {} records)",
                        &hex::encode(d)[..16],
                        r.keys,
                        r.records
                    ),
                    (None, Some(e)) => format!("no digest: {e}"),
                    (None, None) => "no digest".into(),
                };
                t.push_str(&format!(
                    "  peer {}@{} {}: {d}\n",
                    r.peer_id, r.store_id, r.address
                ));
            }
        }
        t.trim_end().to_string()
    });
    if disagree > 0 {
        return Err(Failure(
            EXIT_REPLICAS_DISAGREE,
            format!(
                "the replicas of {disagree} of {} regions disagree",
                ids.len()
            ),
        ));
    }
    Ok(())
}

/// Runs a replica operator and prints the region after it.
pub async fn operator(
    client: &Client,
    out: &Out,
    op: crate::cli::OperatorCommand,
) -> Result<(), Failure> {
    use crate::cli::OperatorCommand as Op;
    let (what, route) = match op {
        Op::DrainStore { store, cancel } => {
            let s = client.drain_store(store, cancel).await?;
            out.print(json!({"store": store_json(&s)}), || {
                format!(
                    "store {store} {}\n{}",
                    if cancel {
                        "is no longer draining"
                    } else {
                        "is draining: its leaderships and replicas move away (watch `rdb-cli stores`)"
                    },
                    store_line(&s)
                )
            });
            return Ok(());
        }
        Op::AddReplica { region, store } => (
            format!("added a replica of region {region} on store {store}"),
            client.add_replica(region, store).await?,
        ),
        Op::RemoveReplica { region, store } => (
            format!("removed region {region}'s replica on store {store}"),
            client.remove_replica(region, store).await?,
        ),
        Op::TransferLeader { region, store } => (
            format!("store {store} leads region {region}"),
            client.transfer_leader(region, store).await?,
        ),
    };
    let j = out.route(&route);
    out.print(json!({"region": j}), || {
        let peers: Vec<String> = j["peers"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        format!(
                            "{}@{} ({})",
                            p["id"],
                            p["store_id"],
                            p["role"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "{what}\npeers: {}\nleader: store {}",
            peers.join(", "),
            j["store_id"]
        )
    });
    Ok(())
}
