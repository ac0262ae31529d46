//! Range commands: scan, delete-range.

use rdb_client::{Client, ScanOptions};
use serde_json::{json, Value as Json};

use crate::output::*;

/// Deletes a key range.
pub async fn delete_range(
    client: &Client,
    out: &Out,
    start: String,
    end: Option<String>,
) -> Result<(), Failure> {
    let s = arg(out, &start, "start key")?;
    let e = match end {
        Some(e) => arg(out, &e, "end key")?,
        None => Vec::new(),
    };
    let deleted = client.delete_range(s, e).await?;
    out.print(json!({"deleted": deleted}), || format!("deleted {deleted}"));
    Ok(())
}

/// Lists a key range.
pub async fn scan(
    client: &Client,
    out: &Out,
    start: String,
    end: Option<String>,
    limit: usize,
    reverse: bool,
    keys_only: bool,
) -> Result<(), Failure> {
    let s = arg(out, &start, "start key")?;
    let e = match end {
        Some(e) => arg(out, &e, "end key")?,
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
    Ok(())
}
