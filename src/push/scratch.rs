//! Scratch chunk stores: where a push without `--state-dir` and `bundle
//! create` keep the chunks they pack, about the image's size. Each is a
//! directory `PREFIX-PID` that its process removes when it ends, and locks
//! ([`DirLock`]) while it runs. A process killed outright cannot remove its
//! own, so every new one first removes the stale ones beside it: those
//! whose process no longer runs and whose lock is free. Both tests must
//! pass, so a directory is never taken from a live process, whether it runs
//! an older version (which took no lock) or sits in another PID namespace
//! (whose PID means nothing here).
//!
//! The seed's store ([`SeedStore`]) is either such a scratch directory or
//! the `--state-dir` the pusher names, locked as well, and kept to the
//! chunks of the last push unless asked to keep everything.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::content::lock::{DirLock, LockError};
use crate::content::manifest::Manifest;
use crate::content::store::{ChunkStore, StoreError};

/// The name prefix of a push's scratch directory, in the system's
/// temporary directory.
pub(crate) const SEED_PREFIX: &str = "p2pimg-seed";
/// The name prefix of `bundle create`'s scratch directory, hidden beside
/// the output.
pub(crate) const BUNDLE_PREFIX: &str = ".p2pimg-bundle";

/// Why a scratch or seed store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The directory is locked by another process, or cannot be locked.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The chunk store in it cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A scratch chunk store, removed when dropped.
#[derive(Debug)]
pub(crate) struct Scratch {
    dir: PathBuf,
    store: ChunkStore,
    _lock: DirLock,
}

impl Scratch {
    /// Removes the stale scratch directories named `prefix-PID` in `parent`,
    /// then makes this process's own.
    pub fn create(parent: &Path, prefix: &str) -> Result<Scratch, ScratchError> {
        remove_stale(parent, prefix);
        let dir = parent.join(format!("{prefix}-{}", std::process::id()));
        let lock = DirLock::acquire(&dir)?;
        // Locked and named by our PID: anything in it is a dead process's.
        let _ = fs::remove_dir_all(dir.join("chunks"));
        let store = ChunkStore::open(&dir)?;
        Ok(Scratch {
            dir,
            store,
            _lock: lock,
        })
    }

    /// The chunk store in it.
    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    /// Removes the directory now, while its user may still be writing:
    /// with the directory gone, its next chunk fails. Dropping removes it
    /// again, so whatever was written meanwhile goes too.
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes every directory `prefix-PID` in `parent` whose process is gone
/// and whose lock is free. Symbolic links are never followed: only real
/// directories are considered, and `remove_dir_all` does not follow links
/// inside them. Failures are ignored: this is tidying up.
pub(crate) fn remove_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix)?.strip_prefix('-')?.parse::<u32>().ok())
        else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if pid == me || !is_dir || process_runs(pid) {
            continue;
        }
        let dir = entry.path();
        if let Ok(_held) = DirLock::acquire(&dir) {
            tracing::info!(dir = %dir.display(), "removing the scratch directory of a process that is gone");
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// Whether a process with this PID exists (in this PID namespace).
pub(crate) fn process_runs(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let sent = unsafe { libc::kill(pid, 0) } == 0;
    // EPERM: it exists but belongs to someone else.
    sent || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Where the seed keeps chunks while it pushes.
#[derive(Debug)]
pub(crate) enum SeedStore {
    /// A scratch directory, removed when the push ends.
    Scratch(Scratch),
    /// `--state-dir`: kept, and locked while the push runs.
    Kept { store: ChunkStore, _lock: DirLock },
}

impl SeedStore {
    /// Opens `state_dir`, or a scratch directory in the system's temporary
    /// directory. Either way, stale scratch directories of pushes that were
    /// killed go first.
    pub fn open(state_dir: Option<&Path>) -> Result<SeedStore, ScratchError> {
        let tmp = std::env::temp_dir();
        let Some(dir) = state_dir else {
            return Ok(SeedStore::Scratch(Scratch::create(&tmp, SEED_PREFIX)?));
        };
        remove_stale(&tmp, SEED_PREFIX);
        // Before the store is opened: opening clears its `tmp/`.
        let lock = DirLock::acquire(dir)?;
        let store = ChunkStore::open(dir)?;
        Ok(SeedStore::Kept { store, _lock: lock })
    }

    /// The chunk store.
    pub fn store(&self) -> &ChunkStore {
        match self {
            SeedStore::Scratch(s) => s.store(),
            SeedStore::Kept { store, .. } => store,
        }
    }

    /// After a push: drops every chunk of a kept state directory that
    /// `manifest` does not name, so the directory holds one push, not all
    /// of them. Returns the bytes freed.
    pub fn retain_only(&self, manifest: &Manifest) -> Result<u64, StoreError> {
        let SeedStore::Kept { store, .. } = self else {
            return Ok(0);
        };
        let wanted: HashSet<_> = manifest.chunks.iter().map(|c| c.hash).collect();
        let mut freed = 0;
        for chunk in store.scan()? {
            if !wanted.contains(&chunk.hash) {
                freed += store.remove(&chunk.hash)?;
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
#[path = "tests/scratch.rs"]
mod tests;
