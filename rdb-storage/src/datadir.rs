//! Ownership of a daemon's data directory: an exclusive lock and an identity file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Result, StorageError};

pub(crate) const LOCK_FILE: &str = "LOCK.flaredb";
const IDENTITY_FILE: &str = "IDENTITY";

/// Who a data directory belongs to, stored in its `IDENTITY` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The daemon kind: `pd` or `server`.
    pub role: String,
    /// The cluster the data belongs to.
    pub cluster_id: u64,
    /// The node id inside the cluster (the store id for `server`, 0 for `pd`).
    pub node_id: u64,
}

impl Identity {
    /// Parses the text of an `IDENTITY` file: `key=value` lines for `role`,
    /// `cluster_id` and `node_id`; blank lines and `#` comments are skipped.
    /// The error says what is wrong.
    pub fn parse(text: &str) -> std::result::Result<Identity, String> {
        let bad = |line: &str| format!("{IDENTITY_FILE} has an unreadable line {line:?}");
        let mut role = None;
        let mut cluster_id = None;
        let mut node_id = None;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (k, v) = line.split_once('=').ok_or_else(|| bad(line))?;
            match k.trim() {
                "role" => role = Some(v.trim().to_string()),
                "cluster_id" => cluster_id = Some(v.trim().parse().map_err(|_| bad(line))?),
                "node_id" => node_id = Some(v.trim().parse().map_err(|_| bad(line))?),
                _ => return Err(bad(line)),
            }
        }
        match (role, cluster_id, node_id) {
            (Some(role), Some(cluster_id), Some(node_id)) => Ok(Identity {
                role,
                cluster_id,
                node_id,
            }),
            _ => Err(format!("{IDENTITY_FILE} is incomplete")),
        }
    }

    /// The text of the `IDENTITY` file for this identity; [`Identity::parse`]
    /// reads it back (for a role without line breaks or surrounding spaces).
    pub fn to_text(&self) -> String {
        format!(
            "# FlareDB data directory identity; do not edit.\nrole={}\ncluster_id={}\nnode_id={}\n",
            self.role, self.cluster_id, self.node_id
        )
    }
}

/// A data directory held exclusively by this process until dropped.
///
/// The lock is an OS file lock on `LOCK.flaredb`, so it is released when the
/// process dies, also by `kill -9`.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock; fails with
    /// [`StorageError::Locked`] if another process holds it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path).map_err(|e| {
            StorageError::io(format!("creating data directory {}", path.display()), e)
        })?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StorageError::io(format!("opening lock file {}", lock_path.display()), e)
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Locked { dir: path })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StorageError::io(
                    format!("locking {}", lock_path.display()),
                    e,
                ))
            }
        }
        Ok(DataDir { path, _lock: lock })
    }

    /// The directory path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the identity file, `None` if the directory has none yet.
    pub fn identity(&self) -> Result<Option<Identity>> {
        let file = self.path.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(format!("reading {}", file.display()), e)),
        };
        Identity::parse(&text)
            .map(Some)
            .map_err(|message| StorageError::IdentityMismatch {
                dir: self.path.clone(),
                message,
            })
    }

    /// Writes the identity file atomically (temp file, fsync, rename).
    pub fn write_identity(&self, id: &Identity) -> Result<()> {
        let tmp = self.path.join(format!("{IDENTITY_FILE}.tmp"));
        let file = self.path.join(IDENTITY_FILE);
        let text = id.to_text();
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            File::open(&self.path)?.sync_all()
        };
        write().map_err(|e| StorageError::io(format!("writing {}", file.display()), e))
    }

    /// Checks that the directory was created for `role` (if it has an identity
    /// at all) and returns the identity.
    pub fn check_role(&self, role: &str) -> Result<Option<Identity>> {
        let id = self.identity()?;
        if let Some(id) = &id {
            if id.role != role {
                return Err(StorageError::IdentityMismatch {
                    dir: self.path.clone(),
                    message: format!("it belongs to an rdb-{}, not an rdb-{role}", id.role),
                });
            }
        }
        Ok(id)
    }

    /// Fails unless the directory's cluster id is `cluster_id`.
    pub fn check_cluster(&self, id: &Identity, cluster_id: u64) -> Result<()> {
        if id.cluster_id != cluster_id {
            return Err(StorageError::IdentityMismatch {
                dir: self.path.clone(),
                message: format!(
                    "it belongs to cluster {} but the PD serves cluster {cluster_id}; use an empty data directory to join this cluster",
                    id.cluster_id
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_identity_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        assert!(matches!(
            DataDir::open(tmp.path()),
            Err(StorageError::Locked { .. })
        ));
        assert_eq!(dir.identity().unwrap(), None);
        let id = Identity {
            role: "server".into(),
            cluster_id: 7,
            node_id: 3,
        };
        dir.write_identity(&id).unwrap();
        assert_eq!(dir.check_role("server").unwrap(), Some(id.clone()));
        assert!(dir.check_role("pd").is_err());
        assert!(dir.check_cluster(&id, 7).is_ok());
        let err = dir.check_cluster(&id, 8).unwrap_err().to_string();
        assert!(err.contains("cluster 7"), "{err}");
        drop(dir);
        assert!(DataDir::open(tmp.path()).is_ok());
    }
}
