//! p2pimg: peer-to-peer distribution of Docker images over a QUIC swarm.
//!
//! Crate map:
//! - [`hash`]: the BLAKE3 `Hash` that addresses chunks and manifests.
//! - [`manifest`]: images, layers, chunks; content ID and validation.
//! - [`pack`]: layer tar → zstd chunks; chunk verification.
//! - [`picker`]: which chunk to request from which peer (rarest-first, no I/O).
//! - [`plan`]: what a node already holds, what it must fetch and load.
//! - [`store`]: verified chunks on disk, crash-safe.
//! - [`swarm`]: one distribution's peer links, HAVE exchange, fetching and serving.
//! - [`proto`]: wire messages, framing and limits (spec: `proto/PROTOCOL.md`).

pub mod hash;
pub mod manifest;
pub mod pack;
pub mod picker;
pub mod plan;
pub mod proto;
pub mod store;
pub mod swarm;
