//! Serving a connection: every stream a peer opens is dispatched by its
//! first frame: `Hello` to the distribution's swarm actor, `Request` answered
//! from the chunk store, anything else to the caller (the agent's `Announce`).

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::task::JoinSet;

use crate::content::hash::Hash;
use crate::swarm::{Holdings, Registry};
use crate::wire::{close, read_frame, write_frame, ErrorCode, Message};

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
                // Every peer speaks version 3, which knows `Busy`.
                let may_refuse = true;
                let Some(_admitted) = uploads.admit(may_refuse, &self.peer_admitted) else {
                    self.registry.metrics().on_busy_sent();
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
                    shared.metrics.on_sent(&peer, len);
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
