//! `Picker`: which chunk to request next from which peer. Plain
//! synchronous state, no I/O, so every rule is unit-tested without tokio.
//!
//! Invariants:
//! - every chunk is in exactly one of NOT_NEEDED, NEEDED, IN_FLIGHT, HAVE;
//! - a chunk is IN_FLIGHT iff at least one peer has an outstanding request
//!   for it, and `peer.in_flight` is the number of that peer's requests;
//! - `availability[i]` is the number of known peers that hold chunk `i`.
//!
//! Requests go rarest-first (fewest holders), random among equals, at most
//! `max_in_flight` per peer and `max_total` across peers. The seed is a
//! peer of its own kind ([`Picker::add_seed`]): its own limit, outside the
//! total, since requests to it wait their turn there rather than being
//! refused. In the endgame (nothing left NEEDED) a chunk already in flight
//! may be requested from a second peer, so one slow peer cannot hold up the
//! end.

use std::collections::HashMap;

use rand::Rng;

use crate::wire::Bitfield;

/// A peer's key within one distribution.
pub type PeerId = u64;

/// Most peers asked for the same chunk at once during the endgame: two
/// covers one slow peer without multiplying the last chunks' traffic.
const ENDGAME_COPIES: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotNeeded,
    Needed,
    InFlight,
    Have,
}

#[derive(Debug)]
struct Peer {
    has: Vec<bool>,
    in_flight: usize,
    /// Most requests in flight to this peer.
    limit: usize,
    /// Whether its requests count against the total limit.
    counted: bool,
}

/// Chunk states, availability and per-peer requests of one distribution.
#[derive(Debug)]
pub struct Picker {
    state: Vec<State>,
    availability: Vec<u32>,
    requested_from: HashMap<u32, Vec<PeerId>>,
    peers: HashMap<PeerId, Peer>,
    max_in_flight: usize,
    max_total: usize,
    missing: usize,
}

impl Picker {
    /// `need[i]` says the node must fetch chunk `i`; `have[i]` that it
    /// already holds it verified (a chunk may be held without being needed).
    pub fn new(need: &[bool], have: &[bool], max_in_flight: usize) -> Self {
        let state: Vec<State> = need
            .iter()
            .zip(have)
            .map(|(&n, &h)| match (n, h) {
                (_, true) => State::Have,
                (true, false) => State::Needed,
                (false, false) => State::NotNeeded,
            })
            .collect();
        let missing = state.iter().filter(|s| **s == State::Needed).count();
        Picker {
            availability: vec![0; state.len()],
            state,
            requested_from: HashMap::new(),
            peers: HashMap::new(),
            max_in_flight,
            max_total: usize::MAX,
            missing,
        }
    }

    /// Limits the requests in flight across all peers to `max_total`.
    pub fn with_total_limit(mut self, max_total: usize) -> Self {
        self.max_total = max_total;
        self
    }

    /// Requests in flight across all peers but the seed.
    pub fn total_in_flight(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.counted)
            .map(|p| p.in_flight)
            .sum()
    }

    /// Whether requests in flight are at the limit across all peers but the
    /// seed.
    pub fn at_total_limit(&self) -> bool {
        self.total_in_flight() >= self.max_total
    }

    /// Number of chunks in the distribution.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether the distribution has no chunk at all.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Chunks neither held nor fetched yet, in flight included.
    pub fn missing(&self) -> usize {
        self.missing
    }

    /// Whether every needed chunk is held.
    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    /// Whether chunk `i` is held (verified).
    pub fn has(&self, i: u32) -> bool {
        self.state.get(i as usize) == Some(&State::Have)
    }

    /// The held chunks, to announce in a `Hello`.
    pub fn bitfield(&self) -> Bitfield {
        let mut b = Bitfield::new(self.state.len());
        (0..self.state.len())
            .filter(|&i| self.state[i] == State::Have)
            .for_each(|i| b.set(i));
        b
    }

    /// The chunks still to fetch (needed, in flight or not), for a `Hello`.
    pub fn wanted(&self) -> Bitfield {
        let mut b = Bitfield::new(self.state.len());
        (0..self.state.len())
            .filter(|&i| matches!(self.state[i], State::Needed | State::InFlight))
            .for_each(|i| b.set(i));
        b
    }

    /// A peer joined with the chunks of `bits` (validated by the caller).
    pub fn add_peer(&mut self, id: PeerId, bits: &Bitfield) {
        self.insert_peer(id, bits, self.max_in_flight, true);
    }

    /// The seed joined: at most `limit` requests to it, not counted in the
    /// total. It queues requests instead of refusing them, so they wait
    /// there in turn with every other node's, and a node's other requests
    /// go on meanwhile.
    pub fn add_seed(&mut self, id: PeerId, bits: &Bitfield, limit: usize) {
        self.insert_peer(id, bits, limit, false);
    }

    fn insert_peer(&mut self, id: PeerId, bits: &Bitfield, limit: usize, counted: bool) {
        let has: Vec<bool> = (0..self.state.len()).map(|i| bits.get(i)).collect();
        for (i, _) in has.iter().enumerate().filter(|(_, h)| **h) {
            self.availability[i] += 1;
        }
        let peer = Peer {
            has,
            in_flight: 0,
            limit,
            counted,
        };
        self.peers.insert(id, peer);
    }

    /// A peer announced a new chunk. Returns false for an out-of-range index.
    pub fn peer_has(&mut self, id: PeerId, i: u32) -> bool {
        let (Some(peer), true) = (self.peers.get_mut(&id), (i as usize) < self.state.len()) else {
            return false;
        };
        if !std::mem::replace(&mut peer.has[i as usize], true) {
            self.availability[i as usize] += 1;
        }
        true
    }

    /// A peer said it does not hold chunk `i` after all (it answered
    /// NotFound): stop asking it for `i` until it announces it again.
    pub fn peer_lacks(&mut self, id: PeerId, i: u32) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if let Some(slot) = peer.has.get_mut(i as usize) {
            if std::mem::replace(slot, false) {
                self.availability[i as usize] -= 1;
            }
        }
    }

    /// A peer left; its outstanding requests go back to NEEDED unless
    /// another peer is also fetching them.
    pub fn remove_peer(&mut self, id: PeerId) {
        let Some(peer) = self.peers.remove(&id) else {
            return;
        };
        for (i, _) in peer.has.iter().enumerate().filter(|(_, h)| **h) {
            self.availability[i] -= 1;
        }
        let pending: Vec<u32> = self
            .requested_from
            .iter()
            .filter(|(_, peers)| peers.contains(&id))
            .map(|(&i, _)| i)
            .collect();
        for i in pending {
            self.forget_request(id, i);
        }
    }

    /// The next chunk to request from `id`, marking it in flight; `None`
    /// when the peer is at its limit or holds nothing useful.
    pub fn pick(&mut self, id: PeerId, rng: &mut impl Rng) -> Option<u32> {
        if self.missing == 0 {
            return None;
        }
        let peer = self.peers.get(&id)?;
        if peer.in_flight >= peer.limit || (peer.counted && self.at_total_limit()) {
            return None;
        }
        // An endgame copy from the seed one at a time: it is the fallback
        // for a chunk stuck at a stalled peer, but its queue takes every
        // request, so copies of every chunk in flight filled its uplink
        // (N = 16, 50 Mbit/s: the seed sent 1.24 times the image, 1.65x).
        let seed_busy = !peer.counted && peer.in_flight > 0;
        let i = self.rarest(peer, State::Needed, rng).or_else(|| {
            (!seed_busy)
                .then(|| self.endgame_candidate(id, peer, rng))
                .flatten()
        })?;
        self.state[i] = State::InFlight;
        self.requested_from.entry(i as u32).or_default().push(id);
        self.peers.get_mut(&id).expect("peer present").in_flight += 1;
        Some(i as u32)
    }

    fn rarest(&self, peer: &Peer, wanted: State, rng: &mut impl Rng) -> Option<usize> {
        self.rarest_where(peer, rng, |i| self.state[i] == wanted)
    }

    /// Reservoir sampling over the chunks of minimal availability, so ties
    /// break uniformly at random in one pass.
    fn rarest_where(&self, peer: &Peer, rng: &mut impl Rng, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<(u32, usize)> = None;
        let mut ties = 0u32;
        for i in (0..self.state.len()).filter(|&i| peer.has[i] && ok(i)) {
            let a = self.availability[i];
            match best {
                Some((b, _)) if a > b => {}
                Some((b, _)) if a == b => {
                    ties += 1;
                    if rng.gen_range(0..ties) == 0 {
                        best = Some((a, i));
                    }
                }
                _ => {
                    best = Some((a, i));
                    ties = 1;
                }
            }
        }
        best.map(|(_, i)| i)
    }

    fn endgame_candidate(&self, id: PeerId, peer: &Peer, rng: &mut impl Rng) -> Option<usize> {
        if self.state.contains(&State::Needed) {
            return None;
        }
        self.rarest_where(peer, rng, |i| {
            self.state[i] == State::InFlight
                && self
                    .requested_from
                    .get(&(i as u32))
                    .is_some_and(|p| p.len() < ENDGAME_COPIES && !p.contains(&id))
        })
    }

    /// Chunk `i` arrived from `id` and was verified and stored. Returns the
    /// other peers still fetching it (endgame duplicates), whose answers
    /// can be dropped. Returns `None` if it was already held.
    pub fn on_received(&mut self, id: PeerId, i: u32) -> Option<Vec<PeerId>> {
        self.forget_request(id, i);
        if self.state.get(i as usize)? == &State::Have {
            return None;
        }
        self.state[i as usize] = State::Have;
        self.missing -= 1;
        let others = self.requested_from.remove(&i).unwrap_or_default();
        for other in &others {
            if let Some(p) = self.peers.get_mut(other) {
                p.in_flight -= 1;
            }
        }
        Some(others)
    }

    /// A request for `i` from `id` failed (bad data, error, timeout).
    pub fn on_failed(&mut self, id: PeerId, i: u32) {
        self.forget_request(id, i);
    }

    /// Drops one outstanding request; a chunk nobody is fetching any more
    /// goes back to NEEDED.
    fn forget_request(&mut self, id: PeerId, i: u32) {
        let Some(peers) = self.requested_from.get_mut(&i) else {
            return;
        };
        let Some(pos) = peers.iter().position(|p| *p == id) else {
            return;
        };
        peers.swap_remove(pos);
        if let Some(p) = self.peers.get_mut(&id) {
            p.in_flight -= 1;
        }
        if peers.is_empty() {
            self.requested_from.remove(&i);
            if self.state[i as usize] == State::InFlight {
                self.state[i as usize] = State::Needed;
            }
        }
    }

    /// Whether chunk `i` is also requested from a peer other than `id`.
    pub fn requested_elsewhere(&self, id: PeerId, i: u32) -> bool {
        self.requested_from
            .get(&i)
            .is_some_and(|peers| peers.iter().any(|p| *p != id))
    }

    /// Outstanding requests to `id`.
    pub fn in_flight(&self, id: PeerId) -> usize {
        self.peers.get(&id).map_or(0, |p| p.in_flight)
    }
}

#[cfg(test)]
#[path = "tests/picker.rs"]
mod tests;
