//! The client side of TLS and mutual TLS (rustls through tonic).
//!
//! Clients (rdb-client, rdb-cli, and the daemons when they call each other)
//! use [`ClientTls`]: the CA that signs the servers' certificates, and a
//! certificate and key when the servers require one; [`endpoint`] builds the
//! endpoint they dial with it. The server side (the daemons' `[security]`
//! section and the TLS they serve with) is in rdb-daemon's `tls` module.
//!
//! Certificates name the host clients dial: a DNS name, or an IP address
//! (subject alternative name) when nodes are reached by IP.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// TLS configuration problems, found when the files are loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The combination of settings is incomplete.
    #[error("{0}")]
    Incomplete(String),
    /// A file cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not PEM of the expected kind.
    #[error("{what} {path} is not a PEM file (no -----BEGIN line)")]
    NotPem {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// tonic refused the configuration.
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Reads the PEM file `path`; `what` names the setting in errors.
pub fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(pem)
}

/// How a client connects over TLS: the CA that signs the servers'
/// certificates and, for servers that require one, the client's own
/// certificate and key.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
    has_client_cert: bool,
}

impl ClientTls {
    /// Trusts `ca` and, with `identity`, presents it as the client certificate.
    pub fn new(ca: Certificate, identity: Option<Identity>) -> ClientTls {
        let mut config = ClientTlsConfig::new().ca_certificate(ca);
        let has_client_cert = identity.is_some();
        if let Some(id) = identity {
            config = config.identity(id);
        }
        ClientTls {
            config,
            has_client_cert,
        }
    }

    /// Whether a client certificate is presented (for mutual TLS).
    pub fn has_client_cert(&self) -> bool {
        self.has_client_cert
    }

    /// Reads PEM files: `ca` (required) and, together, `cert` and `key`.
    pub fn from_pem_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<ClientTls, TlsError> {
        let ca = Certificate::from_pem(read_pem("CA certificate", ca)?);
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some(Identity::from_pem(
                read_pem("client certificate", c)?,
                read_pem("client key", k)?,
            )),
            (None, None) => None,
            _ => {
                return Err(TlsError::Incomplete(
                    "a client certificate and its key must be given together".into(),
                ))
            }
        };
        Ok(ClientTls::new(ca, identity))
    }
}

/// The endpoint for `addr` (`HOST:PORT`, or a URL): `https://` with `tls`,
/// `http://` without. A scheme in `addr` is replaced by the one `tls` implies,
/// so a configured CA is never silently ignored.
pub fn endpoint(addr: &str, tls: Option<&ClientTls>) -> Result<Endpoint, String> {
    let host_port = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let host_port = host_port.trim_end_matches('/');
    if host_port.is_empty() {
        return Err(format!("bad address {addr:?}: expected HOST:PORT"));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ep = Endpoint::from_shared(format!("{scheme}://{host_port}"))
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    match tls {
        Some(t) => ep
            .tls_config(t.config.clone())
            .map_err(|e| format!("TLS setup for {addr}: {e}")),
        None => Ok(ep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_non_pem_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("rdb-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, b"not a certificate").unwrap();
        let e = ClientTls::from_pem_files(&junk, None, None).unwrap_err();
        assert!(matches!(e, TlsError::NotPem { .. }), "{e}");
        let e = ClientTls::from_pem_files(&dir.join("missing.pem"), None, None).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn endpoint_scheme_follows_tls() {
        let ep = endpoint("127.0.0.1:1", None).unwrap();
        assert_eq!(ep.uri().scheme_str(), Some("http"));
        let ep = endpoint("http://127.0.0.1:1", None).unwrap();
        assert_eq!(ep.uri().to_string(), "http://127.0.0.1:1/");
        assert!(endpoint("", None).is_err());
        assert!(endpoint("http://", None).is_err());
    }
}
