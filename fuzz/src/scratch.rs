//! A temporary [`ChunkStore`] for the `parse_save` targets, reused across
//! runs (opening one per run would dominate the time) and replaced every
//! [`RUNS_PER_STORE`] runs so the disk it uses stays small. It lives under
//! `$TMPDIR`, which `run.sh` points at a directory it removes afterwards.

use std::cell::RefCell;

use p2pimg::content::pack::PackOptions;
use p2pimg::content::store::ChunkStore;
use tempfile::TempDir;

/// Runs sharing one store: chunks pile up between resets, a few MB at most.
const RUNS_PER_STORE: u32 = 2000;

/// Chunk sizes the targets pick from: 4 KiB, below `push`'s minimum, so
/// small inputs make multi-chunk layers; `push`'s minimum (64 KiB), its
/// default and the largest a manifest allows.
pub const CHUNK_SIZES: [u32; 4] = [
    4 << 10,
    64 << 10,
    p2pimg::content::pack::DEFAULT_CHUNK_SIZE,
    p2pimg::content::manifest::MAX_CHUNK_SIZE,
];

struct Scratch {
    /// Kept so the directory is removed when the store is replaced.
    _dir: TempDir,
    store: ChunkStore,
    runs: u32,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Runs `f` with the scratch store.
pub fn with_store<T>(f: impl FnOnce(&ChunkStore) -> T) -> T {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|s| s.runs >= RUNS_PER_STORE) {
            // Drop the old directory (removing it) before making the next.
            *slot = None;
            let dir = tempfile::Builder::new()
                .prefix("p2pimg-fuzz-store")
                .tempdir()
                .expect("temp dir");
            let store = ChunkStore::open(dir.path()).expect("scratch store opens");
            *slot = Some(Scratch {
                _dir: dir,
                store,
                runs: 0,
            });
        }
        let scratch = slot.as_mut().expect("just set");
        scratch.runs += 1;
        f(&scratch.store)
    })
}

/// Pack options from a selector byte: chunk size and a fast zstd level.
pub fn pack_options(selector: u8) -> PackOptions {
    PackOptions {
        chunk_size: CHUNK_SIZES[usize::from(selector & 3)],
        zstd_level: 1,
    }
}
