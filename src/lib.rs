//! p2pimg: peer-to-peer distribution of Docker images over a QUIC swarm.
//!
//! Crate map:
//! - [`hash`]: the BLAKE3 `Hash` that addresses chunks and manifests.
//! - [`manifest`]: images, layers, chunks; content ID and validation.
//! - [`pack`]: layer tar → zstd chunks; chunk verification.
//! - [`store`]: verified chunks on disk, crash-safe.

pub mod hash;
pub mod manifest;
pub mod pack;
pub mod store;
