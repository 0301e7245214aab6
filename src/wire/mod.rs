//! The wire protocol: message types, their framing and limits.
//! `proto/PROTOCOL.md` is the specification; this module and that file
//! change together, and the golden tests below freeze the encoding.
//!
//! Every message travels on a QUIC bidirectional stream as a frame:
//! a 4-byte big-endian length, then the postcard encoding of [`Message`].
//! The length is checked against the stream's limit before any allocation.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::content::hash::Hash;
use crate::content::manifest::Manifest;

/// ALPN of this protocol version; a peer speaking another version fails the
/// TLS handshake instead of misreading frames. Version 3 addresses chunks by
/// the hash of their compressed bytes, so a node of an earlier version would
/// take every chunk for damaged: it is the only version spoken. It also adds
/// [`Message::ForceAnnounce`] and [`Message::ForcePlanQuery`].
pub const ALPN: &[u8] = b"p2pimg/3";
/// The ALPNs offered, most preferred first.
pub const ALPNS: [&[u8]; 1] = [ALPN];
/// ALPNs of earlier versions, which this one no longer speaks (for tests and
/// error messages).
pub const EARLIER_ALPNS: [&[u8]; 2] = [b"p2pimg/2", b"p2pimg/1"];

/// Largest frame on swarm streams: one chunk of `MAX_CHUNK_SIZE` (8 MiB)
/// after zstd's worst-case expansion, plus the message header.
pub const MAX_FRAME: u32 = 9 << 20;
/// Largest first frame of a stream a node opens: a `Hello` for `MAX_CHUNKS`
/// chunks carries two bitfields of 128 KiB each.
pub const MAX_FIRST_FRAME: u32 = 320 << 10;
/// Largest frame on a swarm link after the `Hello`: a `Have` is a few
/// bytes; room is left for an `Error` with its message.
pub const MAX_LINK_FRAME: u32 = 4 << 10;
/// Largest `Announce` frame: the largest manifest (only a pusher may send
/// it).
pub const MAX_ANNOUNCE_FRAME: u32 = crate::content::manifest::MAX_ENCODED_LEN;

/// Longest `Progress::reason`, in bytes: a line on a terminal, with room
/// for a Docker Engine error quoted in it. Longer ones break the protocol.
pub const MAX_REASON_LEN: usize = 300;

/// Application close codes for QUIC connections.
pub mod close {
    /// Normal end of a distribution.
    pub const DONE: u32 = 0;
    /// The peer broke the protocol (bad frame, unexpected message).
    pub const PROTOCOL: u32 = 1;
    /// The peer sent data that failed verification.
    pub const BAD_DATA: u32 = 2;
    /// The peer's identity may not do what it asked.
    pub const NOT_AUTHORIZED: u32 = 3;
    /// The pusher was interrupted (SIGINT, SIGTERM, its `--timeout`) before
    /// every node was done: an agent ends the distributions it announced at
    /// once, keeping their verified chunks, instead of finishing them among
    /// the peers (which it does when a pusher's connection is merely lost).
    pub const PUSHER_LEFT: u32 = 4;
    /// The agent is shutting down (SIGTERM, `systemctl stop`): its
    /// distributions end, and a pusher says so instead of "connection lost".
    pub const SHUTTING_DOWN: u32 = 5;
}

/// Every message of the protocol. Variant order is part of the encoding:
/// append new variants, never reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Pusher → agent, first frame of a control stream: the distribution.
    Announce { manifest: Manifest },
    /// Agent → pusher: what the node already holds and will fetch.
    Plan(Plan),
    /// Pusher → agent: the other participating agents; start fetching.
    Start { peers: Vec<PeerInfo> },
    /// Agent → pusher: fetch progress.
    Progress(Progress),
    /// Agent → pusher: final result for this node.
    Done(Outcome),
    /// Pusher → agent: the distribution is over; stop serving it.
    Finish,
    /// First frame each way of a swarm stream: which chunks the sender
    /// holds, and which it still wants (the seed offers only those).
    Hello {
        dist: Hash,
        have: Bitfield,
        want: Bitfield,
    },
    /// Swarm stream: the sender has verified one more chunk.
    Have { index: u32 },
    /// First frame of a request stream: send chunk `index` of `dist`.
    Request { dist: Hash, index: u32 },
    /// Answer to `Request`: the chunk's zstd bytes. Encoded as one byte
    /// string, not byte by byte: the same bytes on the wire, a memcpy instead
    /// of a loop per byte (11% of a busy agent's CPU went to that loop).
    Chunk {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A refusal or failure, on any stream.
    Error { code: ErrorCode, message: String },
    /// Pusher → agent, first frame of a status stream: which image does
    /// each of these references name in your engine?
    Query { refs: Vec<String> },
    /// Agent → pusher: per reference, the image ID (config digest), or
    /// none; then the node's engine and, per reference, the manifest digest
    /// where its store keeps one (both appended: see PROTOCOL.md).
    Status {
        ids: Vec<Option<String>>,
        engine: String,
        digests: Vec<Option<String>>,
    },
    /// Pusher → agent, first frame of a dry-run stream (`push --dry-run`):
    /// what would you fetch for this manifest? Answered with a `Plan`, or
    /// an `Error` saying why the push would fail there; nothing is
    /// registered, fetched or loaded. Appended: an agent older than this
    /// variant answers `Error { BadRequest, "unexpected first message" }`.
    PlanQuery { manifest: Manifest },
    /// Pusher → agent, first frame of a control stream (`push --force`):
    /// an `Announce` after which the node loads every image again, also
    /// those its engine holds. Version 3: sent only to agents that speak
    /// it, so an older agent never has to read it.
    ForceAnnounce { manifest: Manifest },
    /// Pusher → agent, first frame of a dry-run stream (`push --dry-run
    /// --force`): the plan a `ForceAnnounce` of this manifest would get.
    /// Version 3, as `ForceAnnounce`.
    ForcePlanQuery { manifest: Manifest },
}

impl Message {
    /// The variant's name, for messages to people.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Announce { .. } => "Announce",
            Message::Plan(_) => "Plan",
            Message::Start { .. } => "Start",
            Message::Progress(_) => "Progress",
            Message::Done(_) => "Done",
            Message::Finish => "Finish",
            Message::Hello { .. } => "Hello",
            Message::Have { .. } => "Have",
            Message::Request { .. } => "Request",
            Message::Chunk { .. } => "Chunk",
            Message::Error { .. } => "Error",
            Message::Query { .. } => "Query",
            Message::Status { .. } => "Status",
            Message::PlanQuery { .. } => "PlanQuery",
            Message::ForceAnnounce { .. } => "ForceAnnounce",
            Message::ForcePlanQuery { .. } => "ForcePlanQuery",
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The sender's identity may not do this (a node announcing a push).
    NotAuthorized,
    /// The distribution is not known here (not announced, or over).
    UnknownDistribution,
    /// The chunk is not held here.
    NotFound,
    /// The request was malformed or unexpected.
    BadRequest,
    /// The manifest failed validation.
    BadManifest,
    /// Something failed on this side.
    Internal,
    /// The chunk is held, but its answer would wait behind too many others:
    /// ask another holder, or this one again shortly. Version 2 only.
    Busy,
}

/// What an agent will do for an announced distribution.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Per image of the manifest: already in the node's engine.
    pub present: Vec<bool>,
    /// Chunks the node must fetch.
    pub need_chunks: u32,
    /// Compressed bytes the node must fetch.
    pub need_bytes: u64,
    /// Chunks it needs that were already verified in its store (resume).
    pub stored_chunks: u32,
    /// The node's engine: kind, version, store and platform, such as
    /// `containerd (namespace k8s.io, linux/amd64)`. Appended: see
    /// PROTOCOL.md's Versioning.
    pub engine: String,
}

/// An agent's progress on a distribution.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Chunks verified so far (of `Plan::need_chunks`).
    pub chunks: u32,
    /// Compressed bytes verified so far.
    pub bytes: u64,
    /// True once every chunk is verified and `docker load` runs.
    pub loading: bool,
    /// What the node is waiting for, while it cannot move on (its Docker
    /// Engine to come back, chunks no peer offers, chunks another push to
    /// the node is fetching); `None` while it moves. One line for people:
    /// at most [`MAX_REASON_LEN`] bytes, no control characters.
    pub reason: Option<String>,
}

impl Progress {
    /// Checks what a receiver must not take on trust: the reason's length
    /// and characters (it is printed on the pusher's terminal).
    pub fn check(&self) -> Result<(), String> {
        let Some(reason) = &self.reason else {
            return Ok(());
        };
        if reason.len() > MAX_REASON_LEN {
            return Err(format!(
                "a progress reason of {} bytes (at most {MAX_REASON_LEN})",
                reason.len()
            ));
        }
        if reason.chars().any(char::is_control) {
            return Err("a progress reason with control characters".into());
        }
        Ok(())
    }
}

/// `text` made fit for [`Progress::reason`]: control characters (a line
/// break in an engine's error) become spaces, and it is cut, at a character
/// boundary, to [`MAX_REASON_LEN`] bytes.
pub fn reason_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REASON_LEN));
    for c in text.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > MAX_REASON_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// How a distribution ended on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every image was already in the engine; nothing was fetched.
    Skipped,
    /// The images were loaded and tagged.
    Loaded { received: Vec<PeerBytes> },
    /// The node could not complete.
    Failed {
        reason: String,
        received: Vec<PeerBytes>,
    },
}

/// Bytes one node received from one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerBytes {
    /// The sending peer's certificate name.
    pub peer: String,
    /// Verified chunks received from it.
    pub chunks: u32,
    /// Their compressed bytes.
    pub bytes: u64,
}

/// Another agent of the swarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its name, which its certificate must carry.
    pub name: String,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
}

/// One bit per chunk, chunk 0 in the lowest bit of byte 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bitfield(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl Bitfield {
    /// All bits clear, for `len` chunks.
    pub fn new(len: usize) -> Self {
        Bitfield(vec![0; len.div_ceil(8)])
    }

    /// Sets bit `i`.
    pub fn set(&mut self, i: usize) {
        self.0[i / 8] |= 1 << (i % 8);
    }

    /// Bit `i`; false past the end.
    pub fn get(&self, i: usize) -> bool {
        self.0.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Whether this is a valid bitfield for `len` chunks: exact byte length,
    /// no bits set past `len`.
    pub fn fits(&self, len: usize) -> bool {
        self.0.len() == len.div_ceil(8) && (len..self.0.len() * 8).all(|i| !self.get(i))
    }
}

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended mid-frame.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended cleanly before a frame began.
    #[error("stream closed")]
    Closed,
    /// The length prefix exceeds the limit for this stream.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    /// The frame is not a valid message.
    #[error("undecodable message: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes a message as one frame (length prefix included).
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4]).expect("messages encode");
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf
}

/// Writes one frame.
pub async fn write_frame(w: &mut (impl AsyncWrite + Unpin), msg: &Message) -> Result<(), FrameError> {
    w.write_all(&encode(msg)).await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes; `Closed` if the stream ended
/// before its first byte.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin), max: u32) -> Result<Message, FrameError> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1]).await? {
        0 => return Err(FrameError::Closed),
        _ => r.read_exact(&mut len[1..]).await?,
    };
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    Ok(postcard::from_bytes(&body)?)
}

#[cfg(test)]
mod tests;
