//! TLS and mutual TLS for every FlareDB connection (rustls through tonic).
//!
//! One [`Security`] section configures a node: the CA that signs the
//! certificates of the cluster, the node's own certificate and key (served to
//! its clients and presented to the peers it calls), and whether clients must
//! present a certificate signed by that CA (mutual TLS). Clients (rdb-client,
//! rdb-cli) use [`ClientTls`]: the CA, and a certificate and key when the
//! servers require one.
//!
//! Certificates name the host clients dial: a DNS name, or an IP address
//! (subject alternative name) when nodes are reached by IP.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The `[security]` section of the daemons' configuration. Empty paths mean
/// "not set"; with no certificate the node serves plaintext gRPC.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Security {
    /// PEM file of the CA certificate(s) that sign the cluster's certificates:
    /// used to verify the nodes this one connects to and, with
    /// `require-client-cert`, the clients that connect to it.
    pub ca_path: PathBuf,
    /// PEM file of this node's certificate (chain). Setting it turns TLS on.
    pub cert_path: PathBuf,
    /// PEM file of the private key of `cert-path`.
    pub key_path: PathBuf,
    /// Mutual TLS: refuse clients that do not present a certificate signed
    /// by `ca-path`.
    pub require_client_cert: bool,
}

/// TLS configuration problems, found at start.
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

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
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

fn is_set(p: &Path) -> bool {
    !p.as_os_str().is_empty()
}

impl Security {
    /// Whether this node serves TLS (a certificate is configured).
    pub fn enabled(&self) -> bool {
        is_set(&self.cert_path)
    }

    /// Reads and checks the files. `None` when TLS is off. The key names in
    /// errors are the config file's (`security.ca-path` ...).
    pub fn load(&self) -> Result<Option<NodeTls>, TlsError> {
        let (ca, cert, key) = (
            is_set(&self.ca_path),
            is_set(&self.cert_path),
            is_set(&self.key_path),
        );
        if !cert && !key && !ca {
            if self.require_client_cert {
                return Err(TlsError::Incomplete(
                    "security.require-client-cert needs security.ca-path, security.cert-path \
                     and security.key-path"
                        .into(),
                ));
            }
            return Ok(None);
        }
        if cert != key {
            return Err(TlsError::Incomplete(
                "security.cert-path and security.key-path must be given together".into(),
            ));
        }
        if !cert {
            return Err(TlsError::Incomplete(
                "security.ca-path is set but security.cert-path and security.key-path are not: \
                 a node needs its own certificate to serve TLS"
                    .into(),
            ));
        }
        if !ca {
            return Err(TlsError::Incomplete(
                "security.cert-path is set but security.ca-path is not: a node needs the CA to \
                 verify the nodes it connects to"
                    .into(),
            ));
        }
        let ca = read_pem("security.ca-path", &self.ca_path)?;
        let cert = read_pem("security.cert-path", &self.cert_path)?;
        let key = read_pem("security.key-path", &self.key_path)?;
        let identity = Identity::from_pem(cert, key);
        let ca = Certificate::from_pem(ca);
        let mut server = ServerTlsConfig::new().identity(identity.clone());
        if self.require_client_cert {
            server = server.client_ca_root(ca.clone());
        }
        Ok(Some(NodeTls {
            server,
            client: ClientTls::new(ca, Some(identity)),
        }))
    }
}

/// A node's loaded TLS material: what it serves with, and how it connects
/// to its peers.
#[derive(Debug, Clone)]
pub struct NodeTls {
    server: ServerTlsConfig,
    /// How this node connects to other nodes (the CA, and its own
    /// certificate as a client certificate).
    pub client: ClientTls,
}

impl NodeTls {
    /// The configuration for tonic's `Server::tls_config`.
    pub fn server_config(&self) -> ServerTlsConfig {
        self.server.clone()
    }
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
    fn new(ca: Certificate, identity: Option<Identity>) -> ClientTls {
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
    fn incomplete_settings_name_the_missing_key() {
        let s = Security {
            cert_path: "c.pem".into(),
            ..Default::default()
        };
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("security.key-path"), "{e}");
        let s = Security {
            cert_path: "c.pem".into(),
            key_path: "k.pem".into(),
            ..Default::default()
        };
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("security.ca-path"), "{e}");
        let s = Security {
            require_client_cert: true,
            ..Default::default()
        };
        assert!(s.load().is_err());
        assert!(Security::default().load().unwrap().is_none());
    }

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
