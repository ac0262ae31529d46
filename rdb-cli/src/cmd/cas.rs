//! The cas command.

use rdb_client::{CasExpect, Client};
use serde_json::json;

use crate::cli::*;
use crate::output::*;

/// Compare-and-swap on one key.
pub async fn cas(client: &Client, out: &Out, a: CasArgs) -> Result<(), Failure> {
    let k = arg(out, &a.key, "key")?;
    let expected = if a.expect.expect_absent {
        CasExpect::Absent
    } else if let Some(v) = a.expect.expect_version {
        CasExpect::Version(v)
    } else if let Some(v) = &a.expect.expect_value {
        CasExpect::Value(arg(out, v, "expected value")?)
    } else {
        return Err(Failure(
            2,
            "give one of --expect-absent, --expect-version, --expect-value".into(),
        ));
    };
    let new = if a.delete {
        None
    } else {
        Some(arg(out, &a.new, "new value")?)
    };
    let r = client.compare_and_swap(k.clone(), expected, new).await?;
    let current = r
        .current
        .as_ref()
        .map(|c| json!({"value": out.bytes(&c.value), "version": c.version}));
    let j = json!({"key": out.bytes(&k), "succeeded": r.succeeded, "current": current, "new_version": r.new_version});
    if r.succeeded {
        out.print(j, || match r.new_version {
            Some(v) => format!("OK version={v}"),
            None => "OK deleted".into(),
        });
    } else {
        if out.json {
            println!("{j}");
        }
        let now = match &r.current {
            Some(c) => format!(
                "current version={} value={}",
                c.version,
                out.bytes(&c.value)
            ),
            None => "key does not exist".into(),
        };
        return Err(Failure(EXIT_CAS_FAILED, format!("CAS failed: {now}")));
    }
    Ok(())
}
