//! The record of each distribution a node took part in, one small file per
//! distribution under `STATE_DIR/dists/`, named by the manifest ID: its
//! chunks, and when it ended here. Written crash-safely (temp file, fsync,
//! rename) before the first chunk is fetched, so no chunk of a distribution
//! is ever on disk without a record naming it, and rewritten when it ends.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Known;
use crate::content::hash::Hash;
use crate::content::store::{ChunkStore, StoreError};

/// Format version of a record file; a file of another version is dropped
/// (its chunks then age out as chunks no record names).
const VERSION: u8 = 1;

/// A record file as encoded (postcard).
#[derive(Serialize, Deserialize)]
struct RecordFile {
    version: u8,
    /// Milliseconds since the Unix epoch when the distribution ended.
    ended_ms: Option<u64>,
    chunks: Vec<Hash>,
}

/// The record files of a state directory.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
    store: ChunkStore,
}

impl Records {
    /// Opens (creating) `dists/` next to the store's chunks.
    pub fn open(store: &ChunkStore) -> Result<Records, StoreError> {
        let dir = store.root().join("dists");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Records {
            dir,
            store: store.clone(),
        })
    }

    fn path(&self, id: &Hash) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// Every readable record. A damaged or foreign file is deleted with a
    /// warning: losing a record only makes its chunks age out sooner.
    pub fn load(&self) -> Result<HashMap<Hash, Known>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut out = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            match read(&path) {
                Ok(Some((id, known))) => {
                    out.insert(id, known);
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(path = %path.display(), "unreadable distribution record removed");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(out)
    }

    /// Writes the record of `id`, replacing any earlier one.
    pub fn write(&self, id: &Hash, known: &Known) -> Result<(), StoreError> {
        let mut chunks: Vec<Hash> = known.chunks.iter().copied().collect();
        chunks.sort();
        let file = RecordFile {
            version: VERSION,
            ended_ms: known.ended.map(to_ms),
            chunks,
        };
        let bytes = postcard::to_allocvec(&file).expect("a record always encodes");
        self.store.write_durable(&self.path(id), &bytes)
    }

    /// Deletes the record of `id`.
    pub fn remove(&self, id: &Hash) -> Result<(), StoreError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io { path, source: e }),
            _ => Ok(()),
        }
    }
}

/// The record in `path`; `None` if the name or the version is not ours.
fn read(path: &Path) -> io::Result<Option<(Hash, Known)>> {
    let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(Hash::from_hex) else {
        return Ok(None);
    };
    let bytes = fs::read(path)?;
    let Ok(file) = postcard::from_bytes::<RecordFile>(&bytes) else {
        return Ok(None);
    };
    if file.version != VERSION {
        return Ok(None);
    }
    let known = Known {
        chunks: file.chunks.into_iter().collect(),
        ended: file
            .ended_ms
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
    };
    Ok(Some((id, known)))
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_bad_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let records = Records::open(&store).unwrap();
        let ended = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let done = Known {
            chunks: [Hash::of(b"a"), Hash::of(b"b")].into(),
            ended: Some(ended),
        };
        let live = Known {
            chunks: [Hash::of(b"b")].into(),
            ended: None,
        };
        records.write(&Hash::of(b"d1"), &done).unwrap();
        records.write(&Hash::of(b"d2"), &live).unwrap();
        fs::write(
            dir.path().join("dists").join(Hash::of(b"d3").to_hex()),
            b"\xff\xff",
        )
        .unwrap();
        fs::write(dir.path().join("dists/stray"), b"").unwrap();

        let store = ChunkStore::open(dir.path()).unwrap();
        let loaded = Records::open(&store).unwrap().load().unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[&Hash::of(b"d1")], done);
        assert_eq!(loaded[&Hash::of(b"d2")], live);
        assert_eq!(fs::read_dir(dir.path().join("dists")).unwrap().count(), 2);

        records.remove(&Hash::of(b"d1")).unwrap();
        records.remove(&Hash::of(b"d1")).unwrap();
        assert_eq!(records.load().unwrap().len(), 1);
    }
}
