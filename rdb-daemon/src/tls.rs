//! The server side of TLS and mutual TLS (rustls through tonic).
//!
//! One [`Security`] section configures a node: the CA that signs the
//! certificates of the cluster, the node's own certificate and key (served to
//! its clients and presented to the peers it calls), and whether clients must
//! present a certificate signed by that CA (mutual TLS). [`Security::load`]
//! reads them into a [`NodeTls`]: the server configuration, and the
//! [`ClientTls`] the node calls its peers with (the client side lives in
//! `rdb_proto::tls`, so that clients build without this crate).

use std::path::{Path, PathBuf};

use rdb_proto::tls::{read_pem, ClientTls, TlsError};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

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
}
