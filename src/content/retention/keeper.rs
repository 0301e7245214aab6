//! The keeper: one thread per agent that owns the distribution records and
//! applies the retention policy to the chunk store.
//!
//! ```text
//!  distribution tasks ──Begin / End (Lease drop) / MakeRoom──► keeper thread
//!                      ◄──────────── oneshot replies ─────────  owns Records + Known map,
//!                                                               sweeps every SWEEP_EVERY
//! ```
//!
//! A thread rather than a tokio task: all it does is blocking file I/O
//! (scanning and deleting chunk files, writing records). Handling one
//! message at a time is what makes it safe: a distribution is marked live
//! (`begin`) before it plans, so no sweep can delete a chunk between the
//! plan counting it as held and the load reading it.
//!
//! Shutdown: the agent drops every lease (ending the distributions), then
//! calls [`Keeper::stop`]; the thread handles what is queued and returns.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::record::Records;
use super::{must_free, select, Known, RetentionOptions};
use crate::content::hash::Hash;
use crate::content::store::{ChunkStore, StoreError, StoredChunk};
use crate::ops::human;
use crate::ops::metrics::Metrics;

/// Longest time between two sweeps: expiry is measured in hours, and a
/// sweep lists every chunk file, so once a minute is plenty.
const SWEEP_MAX: Duration = Duration::from_secs(60);
/// Shortest time between two sweeps, for tiny retention times (tests).
const SWEEP_MIN: Duration = Duration::from_secs(1);
/// Room asked for beyond a distribution's chunk bytes: file system blocks
/// round each chunk file up (at most 4 KiB of a 1 MiB chunk, under 1%), and
/// the record and temp files need a little; 1/32 plus 1 MiB covers both.
fn with_headroom(bytes: u64) -> u64 {
    bytes + bytes / 32 + (1 << 20)
}

/// Why a distribution cannot have the room it needs.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// The file system of the state directory lacks space.
    #[error(
        "not enough disk space for chunks in the state directory {disk}: {available} free, this \
         push needs about {needed} there{evicted}; free space there or set state_dir in agent.toml \
         to a larger disk, then push again",
        available = human(*available), needed = human(*needed), evicted = evicted_note(*evicted)
    )]
    Disk {
        /// The state directory and its file system.
        disk: String,
        available: u64,
        needed: u64,
        evicted: u64,
    },
    /// The store would exceed `store_budget`.
    #[error(
        "the chunk store would exceed store_budget ({budget}): this push needs about {needed} \
         more and running distributions hold {held}; raise store_budget in agent.toml, then push again",
        budget = human(*budget), needed = human(*needed), held = human(*held)
    )]
    Budget { budget: u64, needed: u64, held: u64 },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The keeper thread is gone (the agent is stopping).
    #[error("the agent is stopping")]
    Stopped,
}

fn evicted_note(bytes: u64) -> String {
    if bytes == 0 {
        " (no finished distribution left to evict)".into()
    } else {
        format!(" after evicting {} of finished distributions", human(bytes))
    }
}

enum Cmd {
    Begin {
        id: Hash,
        chunks: HashSet<Hash>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    End {
        id: Hash,
    },
    MakeRoom {
        incoming: u64,
        reply: oneshot::Sender<Result<(), RoomError>>,
    },
    Stop,
}

/// Cheap handle to the keeper thread.
#[derive(Clone, Debug)]
pub struct Keeper {
    tx: mpsc::Sender<Cmd>,
}

/// A distribution marked live: its chunks stay until this is dropped,
/// which records the distribution as ended now.
#[derive(Debug)]
pub struct Lease {
    id: Hash,
    tx: mpsc::Sender<Cmd>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::End { id: self.id });
    }
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl Keeper {
    /// Loads the records of `store`'s state directory and starts the
    /// thread. Distributions a previous run left live (it crashed or was
    /// stopped mid-way) count as ended now: their chunks stay `retain` for
    /// a push that resumes them.
    pub fn spawn(
        store: ChunkStore,
        opts: RetentionOptions,
        metrics: Metrics,
    ) -> Result<(Keeper, JoinHandle<()>), StoreError> {
        let records = Records::open(&store)?;
        let mut known = records.load()?;
        let now = SystemTime::now();
        for (id, k) in known.iter_mut().filter(|(_, k)| k.ended.is_none()) {
            k.ended = Some(now);
            records.write(id, k)?;
        }
        let (tx, rx) = mpsc::channel();
        let state = State {
            store,
            records,
            known,
            live: HashMap::new(),
            opts,
            metrics,
        };
        let handle = std::thread::Builder::new()
            .name("p2pimg-keeper".into())
            .spawn(move || state.run(rx))
            .map_err(|source| StoreError::Io {
                path: PathBuf::from("(keeper thread)"),
                source,
            })?;
        Ok((Keeper { tx }, handle))
    }

    /// Marks the distribution `id`, made of `chunks`, live, recording it on
    /// disk before any of its chunks is fetched.
    pub async fn begin(&self, id: Hash, chunks: impl IntoIterator<Item = Hash>) -> Result<Lease, RoomError> {
        let chunks = chunks.into_iter().collect();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Begin { id, chunks, reply })
            .map_err(|_| RoomError::Stopped)?;
        rx.await.map_err(|_| RoomError::Stopped)??;
        Ok(Lease {
            id,
            tx: self.tx.clone(),
        })
    }

    /// Makes room for `incoming` more bytes of chunks, evicting finished
    /// distributions oldest first if the disk or the budget requires it.
    pub async fn make_room(&self, incoming: u64) -> Result<(), RoomError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::MakeRoom { incoming, reply })
            .map_err(|_| RoomError::Stopped)?;
        rx.await.map_err(|_| RoomError::Stopped)?
    }

    /// Asks the thread to return once it has handled what is queued.
    pub fn stop(&self) {
        let _ = self.tx.send(Cmd::Stop);
    }
}

/// What the keeper thread owns.
struct State {
    store: ChunkStore,
    records: Records,
    /// Every recorded distribution, live or ended.
    known: HashMap<Hash, Known>,
    /// Live distributions and how many runs of each (the same manifest
    /// may be pushed twice at once).
    live: HashMap<Hash, usize>,
    opts: RetentionOptions,
    metrics: Metrics,
}

impl State {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let every = (self.opts.retain / 4).clamp(SWEEP_MIN, SWEEP_MAX);
        self.sweep_logged();
        loop {
            match rx.recv_timeout(every) {
                Ok(Cmd::Begin { id, chunks, reply }) => {
                    let _ = reply.send(self.on_begin(id, chunks));
                }
                Ok(Cmd::End { id }) => self.on_end(id),
                Ok(Cmd::MakeRoom { incoming, reply }) => {
                    let _ = reply.send(self.make_room(incoming));
                }
                Err(RecvTimeoutError::Timeout) => self.sweep_logged(),
                Ok(Cmd::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        tracing::debug!("keeper stopped");
    }

    fn on_begin(&mut self, id: Hash, chunks: HashSet<Hash>) -> Result<(), StoreError> {
        let runs = self.live.get(&id).copied().unwrap_or(0);
        if runs == 0 {
            let known = Known { chunks, ended: None };
            self.records.write(&id, &known)?;
            self.known.insert(id, known);
        }
        self.live.insert(id, runs + 1);
        Ok(())
    }

    fn on_end(&mut self, id: Hash) {
        let Some(runs) = self.live.get_mut(&id) else {
            return;
        };
        *runs -= 1;
        if *runs > 0 {
            return;
        }
        self.live.remove(&id);
        if let Some(known) = self.known.get_mut(&id) {
            known.ended = Some(SystemTime::now());
            if let Err(e) = self.records.write(&id, known) {
                tracing::warn!(dist = %id.short(), "cannot record the end of a distribution: {e}");
            }
        }
        // The store may be over its budget now that these chunks can go.
        self.sweep_logged();
    }

    fn make_room(&mut self, incoming: u64) -> Result<(), RoomError> {
        let dir = self.store.root().to_path_buf();
        let space = || {
            crate::content::disk::space(&dir).map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })
        };
        let needed = with_headroom(incoming);
        let short = needed.saturating_sub(space()?.available);
        let (stored, freed) = self.sweep(incoming, short)?;
        let held = total(&stored) - freed;
        let space = space()?;
        if space.available < needed {
            return Err(RoomError::Disk {
                disk: space.describe(&dir),
                available: space.available,
                needed,
                evicted: freed,
            });
        }
        match self.opts.budget {
            Some(budget) if held + incoming > budget => Err(RoomError::Budget {
                budget,
                needed: incoming,
                held,
            }),
            _ => Ok(()),
        }
    }

    fn sweep_logged(&mut self) {
        if let Err(e) = self.sweep(0, 0) {
            tracing::warn!("chunk store sweep failed: {e}");
        }
    }

    /// Deletes what has expired, and what keeps the store over its budget
    /// once `incoming` bytes are written, or the disk `disk_short` bytes
    /// short. Returns the chunks on disk before, and the bytes freed.
    fn sweep(&mut self, incoming: u64, disk_short: u64) -> Result<(Vec<StoredChunk>, u64), StoreError> {
        let stored = self.store.scan()?;
        let must = must_free(total(&stored), incoming, self.opts.budget, disk_short);
        let eviction = select(&self.known, &stored, SystemTime::now(), self.opts.retain, must);
        let mut freed = 0;
        // Chunks first, then records: a crash in between leaves a record of
        // missing chunks (harmless), never chunks nothing ages out.
        for h in &eviction.chunks {
            freed += self.store.remove(h)?;
        }
        for id in &eviction.dists {
            self.records.remove(id)?;
            self.known.remove(id);
        }
        if !eviction.dists.is_empty() || !eviction.chunks.is_empty() {
            let (d, c) = (eviction.dists.len(), eviction.chunks.len());
            tracing::info!(
                distributions = d,
                chunks = c,
                bytes = freed,
                "evicted from the chunk store"
            );
            self.metrics.on_evicted(d as u64, c as u64, freed);
        }
        Ok((stored, freed))
    }
}

fn total(stored: &[StoredChunk]) -> u64 {
    stored.iter().map(|c| c.bytes).sum()
}

#[cfg(test)]
#[path = "tests/keeper.rs"]
mod tests;
