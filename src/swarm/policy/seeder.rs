//! `Seeder`: which chunks the seed offers to which peer, so that it uploads
//! each chunk about once and the peers spread it (BitTorrent's
//! "super-seeding"). Plain synchronous state, no I/O.
//!
//! The seed holds everything but does not say so. Each peer is offered a
//! window of chunks it wants and no other peer holds or was offered
//! ("fresh" chunks); as it reports chunks (HAVE), it is offered more. Peers
//! fetch everything else from each other. Two fallbacks keep anyone from
//! starving: chunks offered to a peer that leaves are fresh again, and a
//! peer that has made no progress for [`STALL_AFTER`] (or what
//! [`Seeder::with_stall_after`] sets) and has nothing
//! offered outstanding is offered whatever it still wants.
//!
//! Once every chunk has been offered and fewer offers are outstanding than
//! there are peers (or than a window), the seed's uplink is about to idle
//! while the swarm spreads the last chunks from their one or two holders:
//! the end of every distribution. So from then on a peer's window is filled
//! with the chunks it still wants that no peer or only one holds
//! ([`EXTRA_MAX_HOLDERS`]), fewest holders first, up to an extra
//! quarter of the chunk count over the whole distribution ([`EXTRA_SHARE`]),
//! which bounds the seed's upload at about 1.25 times the image.
//!
//! Invariants: `pending(p)` ⊆ `want(p)` \ `has(p)`; `offered[i]` counts the
//! peers with `i` in `pending` or that received `i` after it was offered;
//! `holders[i]` counts the connected peers whose bitfield or HAVEs hold `i`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::swarm::policy::picker::PeerId;
use crate::wire::Bitfield;

/// How long a peer with nothing offered outstanding may go without a
/// verified chunk before the seed offers it chunks others hold or were
/// offered. Long enough that a peer waiting its turn behind busy holders is
/// not served twice (in a running swarm a node verifies chunks every
/// fraction of a second); short enough that when another node's link dies
/// with chunks offered to it, the healthy nodes that need those chunks wait
/// seconds, not the half minute until the dead node's connection times out.
/// At worst the seed uploads a window of chunks twice per stalled peer.
/// The default of [`crate::net::Timeouts::seed_stall`]: it must stay under
/// the idle timeout, so tests that shorten that shorten this too.
pub const STALL_AFTER: Duration = Duration::from_secs(8);

/// Offers of chunks already offered once, allowed after the last fresh one,
/// as a share of the chunk count: enough to keep the seed's uplink busy
/// through the end of a distribution (the last chunks of a 16-node swarm),
/// bounded so that the seed uploads each byte about once, not N times.
const EXTRA_SHARE: usize = 4;

/// Extra offers are of chunks at most this many peers hold: the last ones,
/// which spread from a single holder. A node lagging behind lacks chunks
/// that most peers hold; it gets those from them. Nodes ask the seed for
/// whatever it offers them at once (their requests to it wait their turn
/// there), so offering those too made the seed send 1.23 times the image
/// at N = 16, 50 Mbit/s.
const EXTRA_MAX_HOLDERS: u32 = 1;

struct SeedPeer {
    has: Vec<bool>,
    want: Vec<bool>,
    pending: HashSet<u32>,
    last_progress: Instant,
}

/// Offer state of the seed for one distribution.
pub struct Seeder {
    offered: Vec<u32>,
    holders: Vec<u32>,
    peers: HashMap<PeerId, SeedPeer>,
    window: usize,
    /// How long a peer goes without progress before it counts as stalled.
    stall_after: Duration,
    /// Offers left for chunks already offered (see [`EXTRA_SHARE`]).
    extra_left: usize,
    /// No peer wants a chunk that nobody holds or was offered. Only a peer
    /// joining or leaving can make a chunk fresh again.
    exhausted: bool,
}

impl Seeder {
    /// A seeder for `chunks` chunks that keeps up to `window` chunks offered
    /// and outstanding per peer. Fresh chunks are offered in the image's
    /// order: different peers still get different windows, and each node
    /// receives the start of the image first, so its load can stream.
    pub fn new(chunks: usize, window: usize) -> Self {
        Seeder {
            offered: vec![0; chunks],
            holders: vec![0; chunks],
            peers: HashMap::new(),
            window,
            stall_after: STALL_AFTER,
            extra_left: chunks / EXTRA_SHARE,
            exhausted: false,
        }
    }

    /// This seeder, counting a peer as stalled after `stall_after` instead
    /// of [`STALL_AFTER`].
    pub fn with_stall_after(mut self, stall_after: Duration) -> Self {
        self.stall_after = stall_after;
        self
    }

    /// A peer said what it holds and wants; returns the chunks to offer it.
    pub fn add_peer(&mut self, id: PeerId, have: &Bitfield, want: &Bitfield, now: Instant) -> Vec<u32> {
        let n = self.offered.len();
        let has: Vec<bool> = (0..n).map(|i| have.get(i)).collect();
        let want: Vec<bool> = (0..n).map(|i| want.get(i)).collect();
        has.iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .for_each(|(i, _)| self.holders[i] += 1);
        let peer = SeedPeer {
            has,
            want,
            pending: HashSet::new(),
            last_progress: now,
        };
        self.peers.insert(id, peer);
        self.exhausted = false;
        self.top_up(id)
    }

    /// A peer verified chunk `i`; returns further chunks to offer it.
    pub fn on_have(&mut self, id: PeerId, i: u32, now: Instant) -> Vec<u32> {
        let Some(peer) = self.peers.get_mut(&id) else {
            return Vec::new();
        };
        let Some(slot) = peer.has.get_mut(i as usize) else {
            return Vec::new();
        };
        if !std::mem::replace(slot, true) {
            self.holders[i as usize] += 1;
            peer.last_progress = now;
        }
        peer.pending.remove(&i);
        self.top_up(id)
    }

    /// A peer left: what it was offered but never got is fresh again, and
    /// is offered to the others at once; returns those offers.
    pub fn remove_peer(&mut self, id: PeerId) -> Vec<(PeerId, Vec<u32>)> {
        let Some(peer) = self.peers.remove(&id) else {
            return Vec::new();
        };
        for (i, _) in peer.has.iter().enumerate().filter(|(_, h)| **h) {
            self.holders[i] -= 1;
        }
        for i in peer.pending {
            self.offered[i as usize] -= 1;
        }
        self.exhausted = false;
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        ids.into_iter()
            .map(|id| (id, self.top_up(id)))
            .filter(|(_, offers)| !offers.is_empty())
            .collect()
    }

    /// Offers for peers that stalled: no progress for its stall limit
    /// ([`STALL_AFTER`] by default) and nothing outstanding. Call periodically.
    pub fn tick(&mut self, now: Instant) -> Vec<(PeerId, Vec<u32>)> {
        let stalled: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.pending.is_empty() && now.duration_since(p.last_progress) >= self.stall_after)
            .map(|(id, _)| *id)
            .collect();
        stalled
            .into_iter()
            .filter_map(|id| {
                let offers = self.offer_wanted(id, now);
                (!offers.is_empty()).then_some((id, offers))
            })
            .collect()
    }

    /// Fills the peer's window with fresh chunks it wants; once there are
    /// none left anywhere and the seed's queue is running dry, with the
    /// wanted chunks fewest peers hold, while the extra offers last.
    ///
    /// Running dry: fewer offers outstanding than peers (some peer has
    /// nothing left to ask the seed for) and than a window. Earlier, the
    /// extra chunks only delay the last fresh ones: starting at a window
    /// outstanding cost N = 4 about 5% more seed upload and as much time.
    fn top_up(&mut self, id: PeerId) -> Vec<u32> {
        let mut offers = self.offer_fresh(id);
        let room = self
            .peers
            .get(&id)
            .map_or(0, |p| self.window.saturating_sub(p.pending.len()));
        let outstanding: usize = self.peers.values().map(|p| p.pending.len()).sum();
        let dry = outstanding < self.window.min(self.peers.len());
        if room > 0 && self.extra_left > 0 && dry && self.fresh_exhausted() {
            let extra = self.offer_rarest(id, room.min(self.extra_left), EXTRA_MAX_HOLDERS);
            self.extra_left -= extra.len();
            offers.extend(extra);
        }
        offers
    }

    /// Whether no peer wants a chunk that nobody holds or was offered.
    fn fresh_exhausted(&mut self) -> bool {
        if !self.exhausted {
            let fresh = |c: usize| self.offered[c] == 0 && self.holders[c] == 0;
            self.exhausted = !self
                .peers
                .values()
                .any(|p| (0..self.offered.len()).any(|c| p.want[c] && !p.has[c] && fresh(c)));
        }
        self.exhausted
    }

    /// Fills the peer's window with fresh chunks it wants, in image order.
    fn offer_fresh(&mut self, id: PeerId) -> Vec<u32> {
        let Some(peer) = self.peers.get_mut(&id) else {
            return Vec::new();
        };
        let mut offers = Vec::new();
        for c in 0..self.offered.len() {
            if peer.pending.len() >= self.window {
                break;
            }
            let i = c as u32;
            if peer.want[c] && !peer.has[c] && self.offered[c] == 0 && self.holders[c] == 0 {
                self.offered[c] += 1;
                peer.pending.insert(i);
                offers.push(i);
            }
        }
        offers
    }

    /// Offers a stalled peer up to a window of anything it still wants,
    /// chunks nobody holds first.
    fn offer_wanted(&mut self, id: PeerId, now: Instant) -> Vec<u32> {
        let offers = self.offer_rarest(id, self.window, u32::MAX);
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.last_progress = now;
        }
        offers
    }

    /// Offers a peer up to `limit` chunks it wants and was not offered yet,
    /// those the fewest peers hold (then were offered to) first.
    /// Only chunks at most `max_holders` peers hold are offered.
    fn offer_rarest(&mut self, id: PeerId, limit: usize, max_holders: u32) -> Vec<u32> {
        let Some(peer) = self.peers.get_mut(&id) else {
            return Vec::new();
        };
        let holders = &self.holders;
        let mut candidates: Vec<u32> = (0..peer.has.len() as u32)
            .filter(|&i| peer.want[i as usize] && !peer.has[i as usize] && !peer.pending.contains(&i))
            .filter(|&i| holders[i as usize] <= max_holders)
            .collect();
        candidates.sort_by_key(|&i| (holders[i as usize], self.offered[i as usize]));
        candidates.truncate(limit);
        for &i in &candidates {
            self.offered[i as usize] += 1;
            peer.pending.insert(i);
        }
        candidates
    }
}

#[cfg(test)]
#[path = "tests/seeder.rs"]
mod tests;
