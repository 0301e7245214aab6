//! Upload admission: what bounds the chunk answers of one process, across
//! its connections and distributions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::ratelimit::RateLimit;
use super::SEED_IN_FLIGHT;

/// Chunk answers on the wire at once, across all peers. A slot is held from
/// reading the chunk until the requester has acknowledged every byte, so
/// this bounds both the memory answers take (at most 4 chunks) and how many
/// answers share the uplink: a few at a time, each finishing fast, so a
/// requester can verify and pass a chunk on soon after asking, instead of
/// every answer crawling along at 1/32 of the link.
pub(super) const UPLOAD_SLOTS: usize = 4;
/// Requests that may wait for an upload slot, across all peers, beyond those
/// holding one. One more round of answers is enough to keep the uplink busy;
/// a request past that is told [`ErrorCode::Busy`] at once (peers speaking
/// version 2), so its requester asks another holder instead of waiting
/// seconds in a queue while other peers' uplinks idle. That queue was the
/// hot spot of the N=16 benchmark: every node asked the few holders of the
/// newest chunks first.
const QUEUE_DEPTH: usize = UPLOAD_SLOTS;

/// What bounds the chunk answers of one process, across its connections and
/// distributions: upload slots, the queue before them, and the configured
/// upload rate.
///
/// A node's queue is short and shared: a request past it is told `Busy` and
/// asked elsewhere. The seed's is per node instead ([`Uploads::seed`]): the
/// seed alone holds the chunks it offers, so a node told `Busy` could only
/// ask it again later, and the nodes whose answer had just ended took every
/// free place first (at N = 16, one node's first chunk from the seed came
/// after 10.6 s). It queues about [`SEED_IN_FLIGHT`] requests per node, oldest
/// first, so the nodes take turns.
#[derive(Debug)]
pub struct Uploads {
    pub(super) slots: tokio::sync::Semaphore,
    /// Requests waiting for a slot or holding one.
    admitted: AtomicUsize,
    rate: Option<RateLimit>,
    /// The seed's queue: requests admitted per connection, none refused
    /// for the others'.
    per_peer: Option<usize>,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads::new(None)
    }
}

impl Uploads {
    /// Answers paced to at most `mbit` Mbit/s, if set.
    pub fn new(mbit: Option<u64>) -> Uploads {
        Uploads {
            slots: tokio::sync::Semaphore::new(UPLOAD_SLOTS),
            admitted: AtomicUsize::new(0),
            rate: mbit.map(RateLimit::mbit),
            per_peer: None,
        }
    }

    /// The seed's: every node's requests wait their turn, up to
    /// [`SEED_IN_FLIGHT`] per node; answers paced to `mbit`, if set.
    pub fn seed(mbit: Option<u64>) -> Uploads {
        Uploads {
            // One more than a node asks at once: a place is freed only once
            // the answer is acknowledged, and by then the node, which has
            // the chunk, may have asked again.
            per_peer: Some(SEED_IN_FLIGHT + 1),
            ..Uploads::new(mbit)
        }
    }

    /// The upload rate limit, if any.
    pub fn rate(&self) -> Option<&RateLimit> {
        self.rate.as_ref()
    }

    /// Admits a request of the connection whose admitted requests `peer`
    /// counts, until the returned guard is dropped, unless the queue is full
    /// (the seed's: that connection's share of it) and the requester
    /// understands `Busy` (`may_refuse`): a version 1 peer waits its turn,
    /// as it always did.
    pub fn admit(self: &Arc<Self>, may_refuse: bool, peer: &Arc<AtomicUsize>) -> Option<Admission> {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let peer_before = peer.fetch_add(1, Ordering::AcqRel);
        let full = match self.per_peer {
            Some(limit) => peer_before >= limit,
            None => before >= UPLOAD_SLOTS + QUEUE_DEPTH,
        };
        let admission = Admission(self.clone(), peer.clone());
        (!(may_refuse && full)).then_some(admission)
    }

    /// Requests admitted now.
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }
}

/// One request admitted by [`Uploads::admit`], until dropped.
#[derive(Debug)]
pub struct Admission(Arc<Uploads>, Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
        self.1.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Arc<AtomicUsize> {
        Arc::new(AtomicUsize::new(0))
    }

    #[test]
    fn a_full_queue_refuses_current_peers_and_queues_old_ones() {
        let uploads = Arc::new(Uploads::default());
        let held: Vec<Admission> = (0..UPLOAD_SLOTS + QUEUE_DEPTH)
            .map(|_| uploads.admit(true, &peer()).expect("room"))
            .collect();
        assert!(
            uploads.admit(true, &peer()).is_none(),
            "a current peer is told Busy"
        );
        assert_eq!(uploads.admitted(), UPLOAD_SLOTS + QUEUE_DEPTH);
        let old = uploads
            .admit(false, &peer())
            .expect("a version 1 peer waits its turn");
        assert_eq!(uploads.admitted(), UPLOAD_SLOTS + QUEUE_DEPTH + 1);
        drop(old);
        drop(held);
        assert_eq!(uploads.admitted(), 0);
        assert!(uploads.admit(true, &peer()).is_some());
    }

    #[test]
    fn the_seed_queues_every_nodes_requests_up_to_its_share() {
        let uploads = Arc::new(Uploads::seed(None));
        let nodes: Vec<Arc<AtomicUsize>> = (0..16).map(|_| peer()).collect();
        // Sixteen nodes, each with its share waiting: nobody told Busy.
        let held: Vec<Admission> = nodes
            .iter()
            .flat_map(|n| (0..=SEED_IN_FLIGHT).map(|_| uploads.admit(true, n).expect("its share")))
            .collect();
        assert_eq!(uploads.admitted(), 16 * (SEED_IN_FLIGHT + 1));
        assert!(uploads.admit(true, &nodes[3]).is_none(), "past its share: Busy");
        assert_eq!(nodes[3].load(Ordering::Acquire), SEED_IN_FLIGHT + 1);
        drop(held);
        assert_eq!(uploads.admitted(), 0);
        assert!(nodes.iter().all(|n| n.load(Ordering::Acquire) == 0));
    }
}
