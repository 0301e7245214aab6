//! One chunk request: a fresh stream to the peer, the answer verified and
//! stored, unless another distribution on this node fetches it too.

use std::sync::Arc;

use quinn::Connection;

use super::*;
use crate::content::chunk::check_chunk;
use crate::wire::{self, read_frame, write_frame, ErrorCode, FrameError, Message};

/// How a chunk request ended well.
#[derive(Debug)]
pub(super) enum Fetched {
    /// The peer sent it; this many compressed bytes.
    Received(u64),
    /// Another distribution on this node stored it while this one waited
    /// for it ([`ChunkStore::claim`]): nothing crossed the network.
    Stored(u64),
}

/// Why one chunk request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The peer sent bytes that are not the chunk.
    #[error("peer sent bad data for chunk {index}: {cause}")]
    BadData {
        index: u32,
        cause: crate::content::chunk::ChunkError,
    },
    /// The peer answered with an error.
    #[error("peer refused chunk {index} ({code:?}): {detail}")]
    Refused {
        index: u32,
        code: ErrorCode,
        detail: String,
    },
    /// The peer ended the request's stream without a byte of answer: it
    /// stopped serving this distribution (it ended there, or its agent
    /// stopped). Not a fault: its chunks are fetched elsewhere.
    #[error("peer stopped serving chunk {index}: the stream ended without an answer")]
    Stopped { index: u32 },
    /// The peer's answer broke the protocol.
    #[error("peer broke the protocol answering chunk {index}: {detail}")]
    Protocol { index: u32, detail: String },
    /// The stream or connection failed.
    #[error("transfer of chunk {index} failed: {detail}")]
    Transfer { index: u32, detail: String },
    /// The chunk could not be stored locally.
    #[error(transparent)]
    Store(#[from] crate::content::store::StoreError),
}

/// Requests one chunk on a fresh stream, verifies and stores it, unless
/// another distribution on this node fetches or fetched it.
pub(super) async fn fetch(
    conn: Connection,
    shared: Arc<DistShared>,
    index: u32,
) -> Result<Fetched, FetchError> {
    let transfer = |detail: String| FetchError::Transfer { index, detail };
    let entry = shared.manifest.chunks[index as usize];
    let Some(claim) = shared.store.claim(&entry, shared.id).await else {
        return Ok(Fetched::Stored(u64::from(entry.zsize)));
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transfer(e.to_string()))?;
    // A request is a few bytes: it overtakes the chunks we are sending this peer.
    let _ = send.set_priority(CONTROL_PRIORITY);
    write_frame(
        &mut send,
        &Message::Request {
            dist: shared.id,
            index,
        },
    )
    .await
    .map_err(|e| transfer(e.to_string()))?;
    let _ = send.finish();
    let data = match read_frame(&mut recv, wire::MAX_FRAME).await {
        Ok(Message::Chunk { data }) => data,
        Ok(Message::Error { code, message }) => {
            return Err(FetchError::Refused {
                index,
                code,
                detail: message,
            });
        }
        Ok(other) => {
            let detail = format!("answered with {}", other.kind());
            return Err(FetchError::Protocol { index, detail });
        }
        // Ended before a byte of the answer: what a peer's stream does
        // when that peer stops serving the distribution.
        Err(FrameError::Closed) => return Err(FetchError::Stopped { index }),
        // Ended inside the answer, an oversize or undecodable frame: the
        // peer broke the protocol.
        Err(e @ (FrameError::TooLarge { .. } | FrameError::Decode(_))) => {
            return Err(FetchError::Protocol {
                index,
                detail: e.to_string(),
            });
        }
        Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FetchError::Protocol {
                index,
                detail: format!("truncated answer: {e}"),
            });
        }
        Err(e) => return Err(transfer(e.to_string())),
    };
    let store = shared.store.clone();
    let stored = tokio::task::spawn_blocking(move || {
        check_chunk(&entry, &data).map_err(|cause| FetchError::BadData { index, cause })?;
        store.put(&entry.hash, &data)?;
        Ok(Fetched::Received(u64::from(entry.zsize)))
    })
    .await
    .map_err(|e| transfer(e.to_string()))?;
    drop(claim);
    stored
}
