//! Configuration files.
//!
//! Each daemon has one settings struct (`serde(default, deny_unknown_fields,
//! rename_all = "kebab-case")`, as TiKV does) read from a TOML file with
//! [`load`]. Environment variables override the file and flags override
//! both: the daemons' command lines (clap, with `env`) yield `Option`s that
//! are laid over what the file says.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A config file that cannot be used; the message names the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the
    /// wrong type (toml's message shows the line and the key).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What was wrong, where.
        message: String,
    },
    /// A value is of the right type but not allowed.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Lays command-line values over settings: for each `field => path`, sets
/// `settings.path` to `args.field` when that `Option` is `Some` (given as a
/// flag or in the environment).
#[macro_export]
macro_rules! overlay {
    ($args:ident => $settings:ident: $($field:ident => $($path:ident).+),* $(,)?) => {
        $(if let Some(v) = $args.$field { $settings.$($path).+ = v; })*
    };
}

/// The TLS flags both daemons take (`#[command(flatten)]`); they override
/// the file's `[security]` section.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// PEM CA certificate that signs the cluster's certificates (TLS).
    #[arg(long, env = "FLAREDB_CA")]
    pub ca_path: Option<std::path::PathBuf>,
    /// PEM certificate of this node; turns TLS on (needs --key-path and --ca-path).
    #[arg(long, env = "FLAREDB_CERT")]
    pub cert_path: Option<std::path::PathBuf>,
    /// PEM private key of --cert-path.
    #[arg(long, env = "FLAREDB_KEY")]
    pub key_path: Option<std::path::PathBuf>,
    /// Mutual TLS: refuse clients without a certificate signed by --ca-path.
    #[arg(long, env = "FLAREDB_REQUIRE_CLIENT_CERT")]
    pub require_client_cert: bool,
}

impl SecurityArgs {
    /// Lays the given flags over `security`.
    pub fn apply(self, security: &mut crate::tls::Security) {
        let a = self;
        overlay!(a => security:
            ca_path => ca_path,
            cert_path => cert_path,
            key_path => key_path,
        );
        if a.require_client_cert {
            security.require_client_cert = true;
        }
    }
}

/// Reads the settings from `path`, or the defaults without a file.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|message| ConfigError::Parse {
        path: path.display().to_string(),
        message,
    })
}

/// Parses settings from TOML text; the error shows the line and key.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

/// Parses a `status-addr` value ("" = none); the error names the key.
pub fn parse_status_addr(s: &str) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| {
        ConfigError::Invalid(format!(
            "status-addr = {s:?} is not an IP:PORT address: {e}"
        ))
    })
}

/// Checks that `documented`, a commented config file printed by
/// `--print-default-config`, parses to exactly `default` and sets every key
/// that `default` has (so the documentation cannot go stale).
pub fn check_documented_default<T>(documented: &str, default: &T) -> Result<(), String>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let parsed: T = parse(documented)?;
    if &parsed != default {
        return Err(format!(
            "the documented default differs from the code's:\n{parsed:#?}\nvs\n{default:#?}"
        ));
    }
    let want = toml::Table::try_from(default).map_err(|e| e.to_string())?;
    let have: toml::Table = toml::from_str(documented).map_err(|e| e.to_string())?;
    let mut missing = Vec::new();
    missing_keys("", &want, &have, &mut missing);
    if !missing.is_empty() {
        return Err(format!(
            "the documented default does not set: {}",
            missing.join(", ")
        ));
    }
    Ok(())
}

fn missing_keys(prefix: &str, want: &toml::Table, have: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in want {
        let name = format!("{prefix}{k}");
        match (v, have.get(k)) {
            (_, None) => out.push(name),
            (toml::Value::Table(w), Some(toml::Value::Table(h))) => {
                missing_keys(&format!("{name}."), w, h, out)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
    struct Demo {
        heartbeat_ms: u64,
        inner: Inner,
    }

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
    struct Inner {
        ca_path: String,
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = parse::<Demo>("heartbeat-msx = 3").unwrap_err();
        assert!(e.contains("heartbeat-msx"), "{e}");
        let e = parse::<Demo>("heartbeat-ms = \"fast\"").unwrap_err();
        assert!(e.contains("heartbeat-ms"), "{e}");
        let e = parse::<Demo>("[inner]\nca-pth = \"x\"").unwrap_err();
        assert!(e.contains("ca-pth"), "{e}");
        assert_eq!(parse::<Demo>("").unwrap(), Demo::default());
    }

    #[test]
    fn documented_default_must_set_every_key_with_the_default_value() {
        let d = Demo::default();
        assert!(
            check_documented_default("heartbeat-ms = 0\n[inner]\nca-path = \"\"\n", &d).is_ok()
        );
        let e = check_documented_default("heartbeat-ms = 0\n", &d).unwrap_err();
        assert!(e.contains("inner"), "{e}");
        let e = check_documented_default("heartbeat-ms = 1\n[inner]\nca-path = \"\"\n", &d)
            .unwrap_err();
        assert!(e.contains("differs"), "{e}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = load::<Demo>(Some(Path::new("/nonexistent/flaredb.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/flaredb.toml"), "{e}");
        assert_eq!(load::<Demo>(None).unwrap(), Demo::default());
    }
}
