//! Snapshots on the wire and on the receiver's disk.
//!
//! A snapshot travels as a stream of messages (one gRPC client stream):
//! the head (the leader's vote and the snapshot's metadata), then
//! [`Frame::Data`] chunks of the machine's data in order, then
//! [`Frame::End`] with their count. The receiver writes the chunks to a
//! staged file as they come and installs the snapshot from that file once
//! the stream has ended complete, so neither side holds more than a few
//! chunks in memory, whatever the size of the snapshot.
//!
//! A staged file, `<dir>/<group>-<random>.snap`: frames of a 4-byte
//! little-endian length and that many bytes; the first frame is the
//! snapshot's metadata, each later one a chunk. It is synced before the
//! install starts and removed once the install is done; an install cut
//! short by a crash runs again from it when the group starts (see
//! [`crate::sm::Adapter`]).

use std::io;
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use openraft::type_config::alias::{SnapshotMetaOf, VoteOf};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};

use crate::sm::Chunks;
use crate::{decode, encode, TypeConfig};

/// Largest chunk a machine should produce (the transport's messages are
/// bounded by `net::MAX_MESSAGE`).
pub const CHUNK_BYTES: usize = 1 << 20;

/// The first message of a snapshot stream.
#[derive(Serialize, Deserialize)]
pub(crate) struct Head {
    pub vote: VoteOf<TypeConfig>,
    pub meta: SnapshotMetaOf<TypeConfig>,
}

/// Every later message of a snapshot stream.
#[derive(Serialize, Deserialize)]
pub(crate) enum Frame {
    /// The next chunk.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The end: how many chunks came before (a stream that stops without
    /// it, or with another count, was cut short and is not installed).
    End { chunks: u64 },
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Where snapshots for group `group` are staged under `dir`: a new name.
pub(crate) fn new_path(dir: &Path, group: u64) -> PathBuf {
    dir.join(format!("{group}-{:016x}.snap", rand::random::<u64>()))
}

/// The staged files of `group` under `dir`.
pub(crate) fn staged_files(dir: &Path, group: u64) -> Vec<PathBuf> {
    let prefix = format!("{group}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".snap"))
        })
        .collect()
}

async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| io_err("snapshot chunk over 4 GiB"))?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(data).await
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut data = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut data).await?;
    Ok(Some(data))
}

/// Writes `meta` and the chunks of `frames` (encoded [`Frame`]s) to a new
/// staged file at `path`, synced (file and directory); fails, leaving no
/// file, if the frames stop before a matching [`Frame::End`].
pub(crate) async fn write(
    path: &Path,
    meta: &SnapshotMetaOf<TypeConfig>,
    mut frames: impl Stream<Item = Result<Vec<u8>, String>> + Unpin,
) -> io::Result<()> {
    let result = async {
        let dir = path
            .parent()
            .ok_or_else(|| io_err("staged file without a directory"))?;
        tokio::fs::create_dir_all(dir).await?;
        let file = tokio::fs::File::create(path).await?;
        let mut w = BufWriter::new(file);
        write_frame(&mut w, &encode(meta).map_err(io_err)?).await?;
        let mut chunks = 0u64;
        loop {
            let raw = match frames.next().await {
                Some(Ok(raw)) => raw,
                Some(Err(e)) => return Err(io_err(format!("snapshot stream broke: {e}"))),
                None => {
                    return Err(io_err(format!(
                        "snapshot stream ended after {chunks} chunks without its end"
                    )))
                }
            };
            match decode::<Frame>(&raw).map_err(io_err)? {
                Frame::Data(d) => {
                    write_frame(&mut w, &d).await?;
                    chunks += 1;
                }
                Frame::End { chunks: n } if n == chunks => break,
                Frame::End { chunks: n } => {
                    return Err(io_err(format!(
                        "snapshot stream says {n} chunks, {chunks} came"
                    )))
                }
            }
        }
        w.flush().await?;
        w.into_inner().sync_all().await?;
        tokio::fs::File::open(dir).await?.sync_all().await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
    result
}

/// The metadata a staged file starts with.
pub(crate) async fn read_meta(path: &Path) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    let mut r = BufReader::new(tokio::fs::File::open(path).await?);
    let raw = read_frame(&mut r)
        .await?
        .ok_or_else(|| io_err(format!("staged snapshot {} is empty", path.display())))?;
    decode(&raw).map_err(io_err)
}

/// The chunks of a staged file, read one at a time.
pub(crate) async fn read_chunks(path: &Path) -> io::Result<Chunks> {
    let mut r = BufReader::new(tokio::fs::File::open(path).await?);
    read_frame(&mut r).await?;
    Ok(futures::stream::unfold(Some(r), |r| async move {
        let mut r = r?;
        match read_frame(&mut r).await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(r))),
            Ok(None) => None,
            Err(e) => Some((Err(e.to_string()), None)),
        }
    })
    .boxed())
}

/// The messages after the head for `chunks`: one [`Frame::Data`] each,
/// then [`Frame::End`]; a chunk that fails ends the messages without the
/// end (the receiver then refuses the snapshot) and puts its error in
/// `failed`.
pub(crate) fn frames(
    chunks: Chunks,
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
) -> impl Stream<Item = Vec<u8>> + Send + 'static {
    futures::stream::unfold((chunks, 0u64, false), move |(mut chunks, n, done)| {
        let failed = failed.clone();
        async move {
            if done {
                return None;
            }
            let frame = match chunks.next().await {
                Some(Ok(d)) => Frame::Data(d),
                Some(Err(e)) => {
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return None;
                }
                None => Frame::End { chunks: n },
            };
            let end = matches!(frame, Frame::End { .. });
            match encode(&frame) {
                Ok(raw) => Some((raw, (chunks, n + 1, end))),
                Err(e) => {
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    None
                }
            }
        }
    })
}
