//! Printing results (text or JSON), failures and their exit codes.

use rdb_client::{Error, KvPair, RegionRoute};
use serde_json::{json, Value as Json};

/// Exit code of any other failure.
pub const EXIT_OTHER: u8 = 1;
/// Exit code when a key was not found (get, delete).
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code when a CAS condition did not hold.
pub const EXIT_CAS_FAILED: u8 = 4;
/// Exit code when PD or a store could not be reached.
pub const EXIT_UNREACHABLE: u8 = 5;
/// Exit code when a region's replicas disagree (`rdb-cli check`).
pub const EXIT_REPLICAS_DISAGREE: u8 = 6;

/// How results are printed.
pub struct Out {
    /// One JSON document per command.
    pub json: bool,
    /// Keys and values as hex.
    pub hex: bool,
}

impl Out {
    pub fn bytes(&self, b: &[u8]) -> String {
        if self.hex {
            hex::encode(b)
        } else {
            String::from_utf8_lossy(b).into_owned()
        }
    }

    pub fn pair(&self, p: &KvPair) -> Json {
        json!({"key": self.bytes(&p.key), "value": self.bytes(&p.value), "version": p.version})
    }

    pub fn route(&self, r: &RegionRoute) -> Json {
        let region = r.region.clone().unwrap_or_default();
        let epoch = region.epoch.unwrap_or_default();
        json!({
            "id": region.id,
            "start_key": self.bytes(&region.start_key),
            "end_key": self.bytes(&region.end_key),
            "epoch": {"version": epoch.version, "conf_ver": epoch.conf_ver},
            "store_id": region.store_id,
            "store_address": r.leader.as_ref().map(|s| s.address.clone()),
            "leader_store_id": r.leader.as_ref().map(|s| s.id),
            "approximate_size": r.approximate_size,
            "approximate_keys": r.approximate_keys,
            "peers": region.peers.iter().map(|p| json!({
                "id": p.id,
                "store_id": p.store_id,
                "role": if p.role == rdb_client::PeerRole::Learner as i32 { "learner" } else { "voter" },
                "down": r.down_peer_ids.contains(&p.id),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn print(&self, j: Json, text: impl FnOnce() -> String) {
        if self.json {
            println!("{j}");
        } else {
            let t = text();
            if !t.is_empty() {
                println!("{t}");
            }
        }
    }
}

/// A failure with its exit code.
pub struct Failure(pub u8, pub String);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            e if e.is_unavailable() => EXIT_UNREACHABLE,
            Error::InvalidArgument(_) => 2,
            Error::NotFound(_) => EXIT_NOT_FOUND,
            _ => EXIT_OTHER,
        };
        Failure(code, e.to_string())
    }
}

pub fn arg(out: &Out, s: &str, what: &str) -> Result<Vec<u8>, Failure> {
    if out.hex {
        hex::decode(s).map_err(|e| Failure(2, format!("{what} {s:?} is not valid hex: {e}")))
    } else {
        Ok(s.as_bytes().to_vec())
    }
}

/// A value read from standard input: its bytes, or with --hex its text
/// decoded as hex (surrounding white space ignored).
pub fn stdin_value(out: &Out) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    let mut raw = Vec::new();
    std::io::stdin().lock().read_to_end(&mut raw).map_err(|e| {
        Failure(
            EXIT_OTHER,
            format!("reading the value from standard input: {e}"),
        )
    })?;
    if out.hex {
        let text = String::from_utf8(raw)
            .map_err(|_| Failure(2, "the value on standard input is not hex text".into()))?;
        return arg(out, text.trim(), "value");
    }
    Ok(raw)
}
