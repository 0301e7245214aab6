//! The lock that gives one process a state directory for its whole life.
//!
//! Two processes on one chunk store undo each other's work: each clears the
//! store's `tmp/` when it opens it, and an agent's retention deletes chunks
//! the other still serves. So the agent, a `push --state-dir` and each
//! scratch directory hold an exclusive `flock` on `DIR/lock` while they use
//! the directory. The kernel releases it when the process dies, however it
//! dies, so a lock file left by a dead process never blocks; the PID written
//! in it only names the holder in the message a second process gets.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the directory it guards.
const LOCK_FILE: &str = "lock";

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the directory.
    #[error(
        "state directory {dir} is in use by {holder}: two p2pimg processes must not share one; \
         stop that one or give this one another directory",
        dir = dir.display(),
        holder = pid.map_or("another process".to_string(), |p| format!("process {p}"))
    )]
    Held {
        dir: PathBuf,
        /// The holder's PID, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// The directory or its lock file cannot be created or locked.
    #[error("state directory {dir}: {source}", dir = dir.display())]
    Io { dir: PathBuf, source: io::Error },
}

/// An exclusive lock on a directory, held until dropped (or the process
/// ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, failing at once (never waiting)
    /// if another process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let io_err = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(LOCK_FILE))
            .map_err(io_err)?;
        // SAFETY: flock(2) on a descriptor `file` owns; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(io_err(err));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        file.set_len(0).map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
#[path = "tests/lock.rs"]
mod tests;
