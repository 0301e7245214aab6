//! Retention of the agent's chunk store: which chunks to delete, and when.
//!
//! Chunks are content-addressed, so one file may belong to several
//! distributions. The node keeps a record of each distribution it took part
//! in ([`record`]): its chunks, and when it ended. The policy (this file,
//! no I/O) then says:
//! - a chunk of a *live* distribution (one running in this process) is
//!   never deleted, whatever else holds it;
//! - a distribution that ended more than `retain` ago is forgotten, and so
//!   is every chunk that no remaining distribution holds;
//! - a chunk no record names (left by an older version or a lost record)
//!   goes `retain` after it was written;
//! - under pressure (the store over its budget once incoming chunks are
//!   counted, or too little disk for them) ended distributions and ownerless
//!   chunks go oldest first until enough is freed.
//!
//! The [`keeper`] thread applies it: it owns the records, sweeps
//! periodically, and makes room before a distribution fetches.

pub mod keeper;
pub mod record;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::content::hash::Hash;
use crate::content::store::StoredChunk;

pub use keeper::{Keeper, Lease, RoomError};

/// How long and how much the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionOptions {
    /// How long chunks of an ended distribution are kept.
    pub retain: Duration,
    /// Most bytes the store may hold; unbounded if `None`.
    pub budget: Option<u64>,
}

/// A distribution the node knows of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// Every chunk of its manifest (held or not).
    pub chunks: HashSet<Hash>,
    /// When it ended here; `None` while it is live.
    pub ended: Option<SystemTime>,
}

/// What to delete, and what it frees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Eviction {
    /// Ended distributions whose records go.
    pub dists: Vec<Hash>,
    /// Chunk files that go: no remaining distribution holds them.
    pub chunks: Vec<Hash>,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Bytes still to free that nothing evictable could cover.
    pub short: u64,
}

/// Why something would be freed: chosen oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Candidate {
    /// An ended distribution.
    Dist(Hash),
    /// A chunk no distribution names.
    Orphan(Hash),
}

/// Chooses what to delete at `now`: everything expired, then, oldest first,
/// enough to free `must_free` bytes beyond it. `stored` is the store's
/// content. Chunks of live distributions are never chosen.
pub fn select(
    known: &HashMap<Hash, Known>,
    stored: &[StoredChunk],
    now: SystemTime,
    retain: Duration,
    must_free: u64,
) -> Eviction {
    let mut ledger = Ledger::new(known, stored);
    let mut out = Eviction::default();
    for (at, c) in candidates(known, stored, &ledger) {
        let expired = now.duration_since(at).is_ok_and(|age| age >= retain);
        if expired || out.bytes < must_free {
            ledger.free(c, known, &mut out);
        }
    }
    out.short = must_free.saturating_sub(out.bytes);
    out
}

/// Who holds each stored chunk, while [`select`] frees them.
struct Ledger {
    /// Size on disk of each stored chunk.
    sizes: HashMap<Hash, u64>,
    /// How many known distributions still name each stored chunk.
    holders: HashMap<Hash, usize>,
    /// Stored chunks of live distributions: never freed.
    live: HashSet<Hash>,
}

impl Ledger {
    fn new(known: &HashMap<Hash, Known>, stored: &[StoredChunk]) -> Ledger {
        let sizes: HashMap<Hash, u64> = stored.iter().map(|c| (c.hash, c.bytes)).collect();
        let mut holders: HashMap<Hash, usize> = HashMap::new();
        let mut live = HashSet::new();
        for k in known.values() {
            for h in k.chunks.iter().filter(|h| sizes.contains_key(h)) {
                *holders.entry(*h).or_default() += 1;
                if k.ended.is_none() {
                    live.insert(*h);
                }
            }
        }
        Ledger { sizes, holders, live }
    }

    /// Adds `c` to `out`, with the chunks nothing else holds any more.
    fn free(&mut self, c: Candidate, known: &HashMap<Hash, Known>, out: &mut Eviction) {
        match c {
            Candidate::Orphan(h) => {
                out.chunks.push(h);
                out.bytes += self.sizes[&h];
            }
            Candidate::Dist(id) => {
                out.dists.push(id);
                for h in known[&id].chunks.iter().filter(|h| self.sizes.contains_key(h)) {
                    let n = self.holders.get_mut(h).expect("counted in Ledger::new");
                    *n -= 1;
                    if *n == 0 && !self.live.contains(h) {
                        out.chunks.push(*h);
                        out.bytes += self.sizes[h];
                    }
                }
            }
        }
    }
}

/// Ended distributions and chunks no distribution names, oldest first.
fn candidates(
    known: &HashMap<Hash, Known>,
    stored: &[StoredChunk],
    ledger: &Ledger,
) -> Vec<(SystemTime, Candidate)> {
    let mut candidates: Vec<(SystemTime, Candidate)> = known
        .iter()
        .filter_map(|(id, k)| Some((k.ended?, Candidate::Dist(*id))))
        .chain(
            stored
                .iter()
                .filter(|c| !ledger.holders.contains_key(&c.hash))
                .map(|c| (c.written, Candidate::Orphan(c.hash))),
        )
        .collect();
    candidates.sort();
    candidates
}

/// Bytes to free so that the store, holding `stored` bytes and about to
/// receive `incoming`, fits `budget`, and so that the disk gets the
/// `disk_short` bytes it lacks.
pub fn must_free(stored: u64, incoming: u64, budget: Option<u64>, disk_short: u64) -> u64 {
    let over_budget = budget.map_or(0, |b| (stored + incoming).saturating_sub(b));
    over_budget.max(disk_short)
}

#[cfg(test)]
#[path = "tests/retention.rs"]
mod tests;
