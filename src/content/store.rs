//! `ChunkStore`: verified chunks on disk, one file per chunk named by its
//! hash, written atomically (temp file, then rename).
//!
//! A chunk file exists only if its content was verified before it was
//! written: the rename is the record that says "have". No chunk is fsynced.
//! Durability would buy nothing here: what the store holds is a cache of
//! content addressed by hash, and after a restart every chunk is verified
//! again before it is counted as held (the agent's plan reads each one back
//! through [`ChunkStore::read_verified`]), so a file a power loss left empty
//! or short is deleted and fetched again, never served as good. And it cost
//! a lot: two fsyncs per chunk (file and directory) made a one-node push of
//! a 339 MB image take 20.5 s instead of 7.5 s with the store on a disk of
//! 150 operations per second (`DISK_IOPS=150 NS= scripts/bench.sh`).
//!
//! The store is shared by every distribution on a node. Two distributions
//! that need the same chunk (images sharing a layer, pushed at once) fetch
//! it once: a fetcher first takes a [`Claim`] on the chunk, and a fetcher of
//! another distribution that finds it claimed waits for the claim to end,
//! then finds it stored. (Within one distribution, a second request for a
//! chunk is an endgame duplicate and must not wait.)

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::content::chunk::{check_chunk, decode_chunk, ChunkError};
use crate::content::hash::Hash;
use crate::content::manifest::ChunkEntry;

/// Chunk files under a state directory.
#[derive(Clone, Debug)]
pub struct ChunkStore {
    root: PathBuf,
    chunks: PathBuf,
    tmp: PathBuf,
    /// Chunks being fetched now.
    claims: Arc<Mutex<HashMap<Hash, Claimed>>>,
    /// Per distribution, its fetches waiting for another one's claim.
    waits: Arc<Mutex<HashMap<Hash, usize>>>,
}

/// One fetch of distribution `owner` counted in `ChunkStore::waits` while
/// it exists; dropped when the wait ends or the fetch is given up.
struct Waiting {
    waits: Arc<Mutex<HashMap<Hash, usize>>>,
    owner: Hash,
}

impl Waiting {
    fn new(waits: &Arc<Mutex<HashMap<Hash, usize>>>, owner: Hash) -> Waiting {
        *waits.lock().expect("waits lock").entry(owner).or_default() += 1;
        Waiting {
            waits: waits.clone(),
            owner,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut waits = self.waits.lock().expect("waits lock");
        if let Some(n) = waits.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                waits.remove(&self.owner);
            }
        }
    }
}

/// Who fetches a chunk now, and the signal sent when the last of them ends.
#[derive(Debug)]
struct Claimed {
    /// The distribution fetching it.
    owner: Hash,
    /// Its requests for the chunk in flight (more than one in the endgame).
    holders: usize,
    done: Arc<Notify>,
}

/// The right to fetch one chunk into the store; others who want the chunk
/// wait until it is dropped.
#[derive(Debug)]
pub struct Claim {
    claims: Arc<Mutex<HashMap<Hash, Claimed>>>,
    hash: Hash,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claims = self.claims.lock().expect("claims lock");
        let Some(claimed) = claims.get_mut(&self.hash) else {
            return;
        };
        claimed.holders -= 1;
        if claimed.holders == 0 {
            claimed.done.notify_waiters();
            claims.remove(&self.hash);
        }
    }
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory or a file in it cannot be created, written or read.
    #[error("chunk store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A stored chunk no longer matches its hash; it has been removed.
    #[error("stored chunk {hash} is damaged ({cause}); removed, it will be fetched again")]
    Damaged { hash: Hash, cause: ChunkError },
}

impl ChunkStore {
    /// Opens (creating) `state_dir/chunks`, clearing leftovers of writes a
    /// crash interrupted.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let store = ChunkStore {
            root: state_dir.to_path_buf(),
            chunks: state_dir.join("chunks"),
            tmp: state_dir.join("tmp"),
            claims: Arc::default(),
            waits: Arc::default(),
        };
        for dir in [&store.chunks, &store.tmp] {
            fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        for entry in fs::read_dir(&store.tmp).map_err(|e| io_err(&store.tmp, e))? {
            let path = entry.map_err(|e| io_err(&store.tmp, e))?.path();
            let _ = fs::remove_file(path);
        }
        // Prove writability now, not halfway through a distribution.
        let probe = store.tmp.join("probe");
        File::create(&probe).map_err(|e| io_err(&store.tmp, e))?;
        let _ = fs::remove_file(probe);
        Ok(store)
    }

    /// The state directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory for files being written, on the store's file system:
    /// emptied at open, so a crash leaves nothing behind there.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    fn path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.chunks.join(&hex[..2]).join(hex)
    }

    /// Whether a chunk file is present (it was verified when written).
    pub fn contains(&self, hash: &Hash) -> bool {
        self.path(hash).is_file()
    }

    /// Whether a chunk is present with the compressed length `entry` names,
    /// so it can be served to peers of that entry's distribution.
    pub fn holds(&self, entry: &ChunkEntry) -> bool {
        fs::metadata(self.path(&entry.hash)).is_ok_and(|m| m.len() == u64::from(entry.zsize))
    }

    /// Before distribution `owner` fetches a chunk: `None` if it is stored
    /// (perhaps by another distribution that fetched it meanwhile), else the
    /// claim to fetch it, once no other distribution holds one. Drop the
    /// claim after storing the chunk, or after failing to: a waiter then
    /// tries itself.
    pub async fn claim(&self, entry: &ChunkEntry, owner: Hash) -> Option<Claim> {
        loop {
            let ended = {
                let mut claims = self.claims.lock().expect("claims lock");
                if self.holds(entry) {
                    return None;
                }
                let claimed = claims.entry(entry.hash).or_insert_with(|| Claimed {
                    owner,
                    holders: 0,
                    done: Arc::new(Notify::new()),
                });
                if claimed.owner == owner {
                    claimed.holders += 1;
                    return Some(Claim {
                        claims: self.claims.clone(),
                        hash: entry.hash,
                    });
                }
                // Registered before the lock is released, so the end of
                // that claim cannot be missed.
                claimed.done.clone().notified_owned()
            };
            let _waiting = Waiting::new(&self.waits, owner);
            ended.await;
        }
    }

    /// How many fetches of distribution `owner` wait, now, for chunks that
    /// another distribution on this node is fetching ([`ChunkStore::claim`]).
    pub fn waiting_on_others(&self, owner: Hash) -> usize {
        let waits = self.waits.lock().expect("waits lock");
        waits.get(&owner).copied().unwrap_or(0)
    }

    /// Stores the compressed bytes of a chunk the caller has verified. A
    /// file already there is kept only if it has the same length: the same
    /// content compressed at another level is replaced, since manifests
    /// name the compressed length they announce.
    pub fn put(&self, hash: &Hash, zdata: &[u8]) -> Result<(), StoreError> {
        let dest = self.path(hash);
        if fs::metadata(&dest).is_ok_and(|m| m.len() == zdata.len() as u64) {
            return Ok(());
        }
        self.write_via_tmp(&dest, zdata, false)
    }

    /// Writes `data` to `dest` (on the store's file system) so that a crash
    /// leaves either the old file or the whole new one: temp file, fsync,
    /// rename, fsync of the directory. For the few files that must survive a
    /// crash as written (a retention record, one per distribution), not for
    /// chunks.
    pub fn write_durable(&self, dest: &Path, data: &[u8]) -> Result<(), StoreError> {
        self.write_via_tmp(dest, data, true)
    }

    /// Temp file, then rename, so that no reader ever sees part of `data`;
    /// fsynced only if `durable`. Without, a power loss may leave the file
    /// empty or short, which verification catches (see the module's
    /// documentation).
    fn write_via_tmp(&self, dest: &Path, data: &[u8], durable: bool) -> Result<(), StoreError> {
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let tmp = self.tmp.join(format!("{name}.{}", rand::random::<u64>()));
        let written = write_file(&tmp, data, durable).map_err(|e| io_err(&tmp, e));
        if written.is_err() {
            // A full disk leaves a partial temp file: give the space back now.
            let _ = fs::remove_file(&tmp);
            return written;
        }
        let dir = dest.parent().expect("destination has a parent");
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        fs::rename(&tmp, dest).map_err(|e| io_err(dest, e))?;
        if !durable {
            return Ok(());
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))
    }

    /// The compressed bytes of a stored chunk, as they go on the wire.
    pub fn read(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let path = self.path(hash);
        fs::read(&path).map_err(|e| io_err(&path, e))
    }

    /// Reads, decompresses and checks a chunk against its entry; a damaged
    /// file is deleted so it is fetched again.
    pub fn read_verified(&self, entry: &ChunkEntry) -> Result<Vec<u8>, StoreError> {
        let zdata = self.read(&entry.hash)?;
        decode_chunk(entry, &zdata).map_err(|cause| {
            let _ = fs::remove_file(self.path(&entry.hash));
            StoreError::Damaged {
                hash: entry.hash,
                cause,
            }
        })
    }

    /// Checks a stored chunk (length and hash, no decompression), deleting
    /// it if damaged; true if it is good.
    pub fn verify(&self, entry: &ChunkEntry) -> bool {
        let Ok(zdata) = self.read(&entry.hash) else {
            return false;
        };
        let good = check_chunk(entry, &zdata).is_ok();
        if !good {
            let _ = fs::remove_file(self.path(&entry.hash));
        }
        good
    }
}

/// A chunk file found by [`ChunkStore::scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    /// The chunk's hash, from the file name.
    pub hash: Hash,
    /// Its size on disk.
    pub bytes: u64,
    /// When it was written.
    pub written: SystemTime,
}

impl ChunkStore {
    /// Deletes a chunk file; returns the bytes freed (0 if it was absent).
    pub fn remove(&self, hash: &Hash) -> Result<u64, StoreError> {
        let path = self.path(hash);
        let bytes = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(&path, e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Every chunk file, with its size and time of writing. Files whose
    /// names are not chunk hashes are skipped.
    pub fn scan(&self) -> Result<Vec<StoredChunk>, StoreError> {
        let mut found = Vec::new();
        for dir in fs::read_dir(&self.chunks).map_err(|e| io_err(&self.chunks, e))? {
            let dir = dir.map_err(|e| io_err(&self.chunks, e))?.path();
            let Ok(files) = fs::read_dir(&dir) else {
                continue; // not a directory
            };
            for file in files.flatten() {
                let name = file.file_name();
                let Some(hash) = name.to_str().and_then(Hash::from_hex) else {
                    continue;
                };
                // A file removed since the listing is simply not there.
                let Ok(meta) = file.metadata() else { continue };
                found.push(StoredChunk {
                    hash,
                    bytes: meta.len(),
                    written: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(found)
    }
}

fn write_file(path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(data)?;
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

fn io_err(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::chunk::encode_chunk;

    #[test]
    fn put_read_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (entry, z) = encode_chunk(b"hello chunk", 3);
        assert!(!store.contains(&entry.hash));
        store.put(&entry.hash, &z).unwrap();
        assert!(store.contains(&entry.hash));
        assert_eq!(store.read_verified(&entry).unwrap(), b"hello chunk");
        // Survives reopening: the file is the record.
        let store = ChunkStore::open(dir.path()).unwrap();
        assert!(store.verify(&entry));
    }

    #[test]
    fn put_replaces_another_compression_of_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        // Text-like bytes: compressible, and differently at levels 1 and 19.
        let mut x = 12345u32;
        let raw: Vec<u8> = (0..200_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"etaoin shrdlu"[(x >> 16) as usize % 13]
            })
            .collect();
        let (fast, z1) = encode_chunk(&raw, 1);
        let (small, z19) = encode_chunk(&raw, 19);
        assert_ne!(fast.zsize, small.zsize);
        store.put(&fast.hash, &z1).unwrap();
        store.put(&small.hash, &z19).unwrap();
        assert_eq!(store.read(&small.hash).unwrap().len(), small.zsize as usize);
        assert_eq!(store.read_verified(&small).unwrap(), raw);
    }

    #[test]
    fn damaged_chunk_is_detected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (entry, mut z) = encode_chunk(&[7u8; 5000], 3);
        let last = z.len() - 1;
        z[last] ^= 0xff;
        store.put(&entry.hash, &z).unwrap();
        assert!(matches!(
            store.read_verified(&entry),
            Err(StoreError::Damaged { .. })
        ));
        assert!(!store.contains(&entry.hash));
    }

    #[test]
    fn a_chunk_file_a_power_loss_left_empty_is_fetched_again() {
        // Chunks are not fsynced: after a power loss the rename may be on
        // disk and the content not. Such a file is not held, fails
        // verification, and a fresh copy replaces it.
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (entry, z) = encode_chunk(&[9u8; 5000], 3);
        store.put(&entry.hash, &z).unwrap();
        let path = store.path(&entry.hash);
        File::create(&path).unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        assert!(!store.holds(&entry));
        assert!(!store.verify(&entry));
        assert!(!path.exists(), "the empty file was removed");
        store.put(&entry.hash, &z).unwrap();
        assert_eq!(store.read_verified(&entry).unwrap(), [9u8; 5000]);
    }

    #[tokio::test]
    async fn a_claimed_chunk_is_fetched_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (entry, z) = encode_chunk(b"shared layer bytes", 3);
        let (a, b) = (Hash::of(b"dist a"), Hash::of(b"dist b"));
        let first = store.claim(&entry, a).await.expect("first claim");
        let endgame = store.claim(&entry, a).await.expect("same distribution: no wait");
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.claim(&entry, b).await.is_none() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the second fetcher waits");
        assert_eq!(store.waiting_on_others(b), 1, "and is counted as waiting");
        assert_eq!(store.waiting_on_others(a), 0);
        store.put(&entry.hash, &z).unwrap();
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "until every request of the owner ends");
        drop(endgame);
        assert!(waiter.await.unwrap(), "and then finds the chunk stored");
        assert_eq!(store.waiting_on_others(b), 0);
    }

    #[tokio::test]
    async fn a_wait_given_up_is_no_longer_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (entry, _) = encode_chunk(b"slow chunk", 3);
        let b = Hash::of(b"b");
        let _first = store.claim(&entry, Hash::of(b"a")).await.expect("first claim");
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.claim(&entry, b).await.is_some() }
        });
        tokio::task::yield_now().await;
        assert_eq!(store.waiting_on_others(b), 1);
        // A fetch timing out drops its claim future mid-wait.
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(store.waiting_on_others(b), 0);
    }

    #[tokio::test]
    async fn a_failed_claim_passes_to_the_next_fetcher() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (entry, _) = encode_chunk(b"never stored", 3);
        let first = store.claim(&entry, Hash::of(b"a")).await.expect("first claim");
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.claim(&entry, Hash::of(b"b")).await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(first);
        assert!(waiter.await.unwrap(), "the waiter may fetch it now");
    }

    #[test]
    fn scan_lists_and_remove_frees() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (a, za) = encode_chunk(b"chunk a", 3);
        let (b, zb) = encode_chunk(&[1u8; 3000], 3);
        store.put(&a.hash, &za).unwrap();
        store.put(&b.hash, &zb).unwrap();
        let mut found: Vec<(Hash, u64)> = store.scan().unwrap().iter().map(|c| (c.hash, c.bytes)).collect();
        found.sort();
        let mut want = vec![(a.hash, za.len() as u64), (b.hash, zb.len() as u64)];
        want.sort();
        assert_eq!(found, want);
        assert_eq!(store.remove(&a.hash).unwrap(), za.len() as u64);
        assert_eq!(store.remove(&a.hash).unwrap(), 0);
        assert!(!store.contains(&a.hash) && store.contains(&b.hash));
        assert_eq!(store.scan().unwrap().len(), 1);
    }

    #[test]
    fn open_clears_interrupted_writes() {
        let dir = tempfile::tempdir().unwrap();
        ChunkStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("tmp/half-written"), b"x").unwrap();
        ChunkStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
