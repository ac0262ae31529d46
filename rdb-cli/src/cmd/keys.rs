//! Point and batch commands: get, put, delete, batch-get, batch-put, batch-delete.

use rdb_client::Client;
use serde_json::{json, Value as Json};

use crate::output::*;

/// Prints a key's value.
pub async fn get(client: &Client, out: &Out, key: String, stale: bool) -> Result<(), Failure> {
    let k = arg(out, &key, "key")?;
    let got = if stale {
        client.get_stale(k.clone()).await?
    } else {
        client.get(k.clone()).await?
    };
    match got {
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
    Ok(())
}

/// Writes a key (the value from the command line or standard input).
pub async fn put(
    client: &Client,
    out: &Out,
    key: String,
    value: Option<String>,
) -> Result<(), Failure> {
    let k = arg(out, &key, "key")?;
    let v = match value.as_deref() {
        None | Some("-") => stdin_value(out)?,
        Some(v) => arg(out, v, "value")?,
    };
    let version = client.put(k.clone(), v).await?;
    out.print(json!({"key": out.bytes(&k), "version": version}), || {
        format!("OK version={version}")
    });
    Ok(())
}

/// Deletes a key.
pub async fn delete(client: &Client, out: &Out, key: String) -> Result<(), Failure> {
    let k = arg(out, &key, "key")?;
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
    Ok(())
}

/// Reads several keys.
pub async fn batch_get(client: &Client, out: &Out, keys: Vec<String>) -> Result<(), Failure> {
    let keys = keys
        .iter()
        .map(|k| arg(out, k, "key"))
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
    Ok(())
}

/// Writes several keys.
pub async fn batch_put(client: &Client, out: &Out, pairs: Vec<String>) -> Result<(), Failure> {
    if !pairs.len().is_multiple_of(2) {
        return Err(Failure(
            2,
            "batch-put needs KEY VALUE pairs: the last key has no value".into(),
        ));
    }
    let mut kvs = Vec::with_capacity(pairs.len() / 2);
    for kv in pairs.chunks(2) {
        kvs.push((arg(out, &kv[0], "key")?, arg(out, &kv[1], "value")?));
    }
    let keys: Vec<String> = kvs.iter().map(|(k, _)| out.bytes(k)).collect();
    let versions = client.batch_put(kvs).await?;
    let j = keys
        .iter()
        .zip(&versions)
        .map(|(k, v)| json!({"key": k, "version": v}))
        .collect();
    out.print(Json::Array(j), || format!("OK {} keys", versions.len()));
    Ok(())
}

/// Deletes several keys.
pub async fn batch_delete(client: &Client, out: &Out, keys: Vec<String>) -> Result<(), Failure> {
    let keys = keys
        .iter()
        .map(|k| arg(out, k, "key"))
        .collect::<Result<Vec<_>, _>>()?;
    let deleted = client.batch_delete(keys).await?;
    out.print(json!({"deleted": deleted}), || format!("deleted {deleted}"));
    Ok(())
}
