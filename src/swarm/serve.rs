//! Serving a connection: every stream a peer opens is dispatched by its
//! first frame: `Hello` to the distribution's swarm actor, `Request` answered
//! from the chunk store, anything else to the caller (the agent's `Announce`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::task::JoinSet;

use crate::content::hash::Hash;
use crate::swarm::ratelimit::RateLimit;
use crate::swarm::{Holdings, Registry, SEED_IN_FLIGHT};
use crate::wire::{close, read_frame, write_frame, ErrorCode, Message};

/// Chunk answers on the wire at once, across all peers. A slot is held from
/// reading the chunk until the requester has acknowledged every byte, so
/// this bounds both the memory answers take (at most 4 chunks) and how many
/// answers share the uplink: a few at a time, each finishing fast, so a
/// requester can verify and pass a chunk on soon after asking, instead of
/// every answer crawling along at 1/32 of the link.
const UPLOAD_SLOTS: usize = 4;

/// Requests that may wait for an upload slot, across all peers, beyond those
/// holding one. One more round of answers is enough to keep the uplink busy;
/// a request past that is told [`ErrorCode::Busy`] at once (peers speaking
/// version 2), so its requester asks another holder instead of waiting
/// seconds in a queue while other peers' uplinks idle. That queue was the
/// hot spot of the N=16 benchmark: every node asked the few holders of the
/// newest chunks first.
const QUEUE_DEPTH: usize = UPLOAD_SLOTS;

/// Upload slots one peer may hold at once: a greedy or stalled requester
/// cannot take every slot, and two keep one connection's pipe full (the
/// next answer is queued while the last bytes of the previous are acked).
const SLOTS_PER_PEER: usize = 2;

/// Longest time to send one chunk answer and have it acknowledged: 8 MiB
/// at 2 Mbit/s, with margin.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest wait for the first frame of a stream a peer opened: an
/// `Announce` of a large manifest (tens of MB) over a slow link fits; an
/// idle stream does not hold its task forever.
const FIRST_FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves every stream a peer opens on `conn`: swarm streams (`Hello`) go
/// to the distribution's actor, `Request`s are answered from the store.
/// `on_other` gets any other first message (the agent's `Announce`).
/// Each stream is handled in its own task, so a slow stream holds up none.
/// `max_first` bounds a stream's first frame: `MAX_ANNOUNCE_FRAME` only for
/// a pusher, whose `Announce` may be large.
pub async fn serve_connection<F, Fut>(
    conn: Connection,
    peer: String,
    max_first: u32,
    registry: Registry,
    on_other: F,
) where
    F: Fn(Message, SendStream, RecvStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let on_other = Arc::new(on_other);
    let peer_slots = Arc::new(tokio::sync::Semaphore::new(SLOTS_PER_PEER));
    let peer_admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    while let Ok((send, recv)) = conn.accept_bi().await {
        let stream = StreamCtx {
            conn: conn.clone(),
            peer: peer.clone(),
            max_first,
            registry: registry.clone(),
            peer_slots: peer_slots.clone(),
            peer_admitted: peer_admitted.clone(),
        };
        tasks.spawn(stream.handle(send, recv, on_other.clone()));
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
}

/// What a stream handler needs to know about its connection.
struct StreamCtx {
    conn: Connection,
    peer: String,
    max_first: u32,
    registry: Registry,
    /// This connection's share of the process's [`UPLOAD_SLOTS`].
    peer_slots: Arc<tokio::sync::Semaphore>,
    /// This connection's requests admitted (waiting or answered).
    peer_admitted: Arc<AtomicUsize>,
}

impl StreamCtx {
    async fn handle<F, Fut>(self, send: SendStream, mut recv: RecvStream, on_other: Arc<F>)
    where
        F: Fn(Message, SendStream, RecvStream) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let first =
            match tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame(&mut recv, self.max_first)).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, "bad first frame: {e}");
                    return self.conn.close(VarInt::from_u32(close::PROTOCOL), b"bad frame");
                }
                Err(_) => return tracing::debug!(peer = %self.peer, "stream opened but no frame came"),
            };
        match first {
            Message::Hello { dist, have, want } => match self.registry.get(&dist) {
                Some(h) => {
                    let their = Some(Holdings { have, want });
                    h.add_peer(self.peer, self.conn, (send, recv), their).await
                }
                None => {
                    refuse(
                        send,
                        ErrorCode::UnknownDistribution,
                        "distribution not known here",
                    )
                    .await
                }
            },
            Message::Request { dist, index } => {
                let uploads = self.registry.uploads();
                let may_refuse = crate::net::speaks_current(&self.conn);
                let Some(_admitted) = uploads.admit(may_refuse, &self.peer_admitted) else {
                    crate::ops::metrics::metrics().on_busy_sent();
                    return refuse(send, ErrorCode::Busy, "too many answers waiting here").await;
                };
                // The connection's slot first, so a peer waiting for its own
                // turn does not hold a global slot meanwhile.
                let Ok(_slot) = self.peer_slots.acquire().await else {
                    return;
                };
                serve_request(self.registry, self.peer, send, dist, index).await
            }
            other => on_other(other, send, recv).await,
        }
    }
}

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
    slots: tokio::sync::Semaphore,
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

async fn serve_request(registry: Registry, peer: String, mut send: SendStream, dist: Hash, index: u32) {
    let Some(handle) = registry.get(&dist) else {
        return refuse(
            send,
            ErrorCode::UnknownDistribution,
            "distribution not known here",
        )
        .await;
    };
    let shared = handle.shared.clone();
    let Some(entry) = shared.manifest.chunks.get(index as usize).copied() else {
        return refuse(send, ErrorCode::BadRequest, "chunk index out of range").await;
    };
    // Bounds the chunks held in memory and on the wire, whatever peers ask.
    let uploads = registry.uploads();
    let Ok(_permit) = uploads.slots.acquire().await else {
        return;
    };
    let store = shared.store.clone();
    let data =
        tokio::task::spawn_blocking(move || store.contains(&entry.hash).then(|| store.read(&entry.hash)))
            .await;
    match data {
        // Only the encoding this manifest names: the same content stored
        // by another distribution at another zstd level is not it.
        Ok(Some(Ok(data))) if data.len() == entry.zsize as usize => {
            let len = data.len() as u64;
            if let Some(limit) = uploads.rate() {
                limit.acquire(len).await;
            }
            // A requester that stops reading gives its slot back in time.
            let _ = tokio::time::timeout(SEND_TIMEOUT, async {
                if write_frame(&mut send, &Message::Chunk { data }).await.is_ok() {
                    shared.count_served(&peer, len);
                    crate::ops::metrics::metrics().on_sent(&peer, len);
                    let _ = send.finish();
                    // Resolves once every byte is acknowledged, or the
                    // requester, having read its frame, drops the stream.
                    let _ = send.stopped().await;
                }
            })
            .await;
        }
        Ok(None) | Ok(Some(Ok(_))) => refuse(send, ErrorCode::NotFound, "chunk not held").await,
        Ok(Some(Err(e))) => refuse(send, ErrorCode::Internal, &e.to_string()).await,
        Err(e) => refuse(send, ErrorCode::Internal, &e.to_string()).await,
    }
}

/// Answers a stream with an error message and closes it.
pub async fn refuse(mut send: SendStream, code: ErrorCode, message: &str) {
    let _ = write_frame(
        &mut send,
        &Message::Error {
            code,
            message: message.into(),
        },
    )
    .await;
    let _ = send.finish();
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
