//! A tour of the FlareDB client against a running cluster.
//!
//! ```text
//! bash scripts/local-cluster.sh            # in one terminal (PD on 127.0.0.1:2379)
//! cargo run -p rdb-client --example quickstart -- 127.0.0.1:2379
//! ```

use rdb_client::{CasExpect, Client, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let pd = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2379".to_string());
    let client = Client::connect([pd]).await?;

    // Plain writes and reads; every write returns the key's new version.
    let version = client.put(b"user/1".to_vec(), b"ada".to_vec()).await?;
    println!("put user/1 -> version {version}");
    if let Some(v) = client.get(b"user/1".to_vec()).await? {
        println!(
            "get user/1 -> {} (version {})",
            String::from_utf8_lossy(&v.value),
            v.version
        );
    }

    // Batches are split per region and sent in parallel.
    let pairs = (2..=5)
        .map(|i| {
            (
                format!("user/{i}").into_bytes(),
                format!("name-{i}").into_bytes(),
            )
        })
        .collect();
    client.batch_put(pairs).await?;

    // Scans walk the regions in key order.
    for p in client
        .scan(b"user/".to_vec(), b"user0".to_vec(), 10)
        .await?
    {
        println!(
            "scan {} = {}",
            String::from_utf8_lossy(&p.key),
            String::from_utf8_lossy(&p.value)
        );
    }

    // An optimistic counter: read, then compare-and-swap on the version read.
    let key = b"counter".to_vec();
    loop {
        let current = client.get(key.clone()).await?;
        let (expect, n) = match &current {
            Some(v) => (
                CasExpect::Version(v.version),
                String::from_utf8_lossy(&v.value)
                    .parse::<u64>()
                    .unwrap_or(0),
            ),
            None => (CasExpect::Absent, 0),
        };
        let r = client
            .compare_and_swap(key.clone(), expect, Some((n + 1).to_string().into_bytes()))
            .await?;
        if r.succeeded {
            println!("counter -> {}", n + 1);
            break;
        }
    }

    // Timestamps from PD's oracle, strictly increasing.
    let ts = client.tso().await?;
    let batch = client.tso_batch(3).await?;
    println!("tso {ts}, then {batch:?}");
    Ok(())
}
