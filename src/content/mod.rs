//! What an image becomes and how a node keeps it: content-addressed chunks
//! on disk, described by a manifest.
//!
//! - [`hash`]: the BLAKE3 `Hash` that addresses chunks and manifests.
//! - [`manifest`]: images, layers, chunks; the content ID and validation.
//! - [`reference`]: image references, by Docker's grammar.
//! - [`oci`]: the canonical OCI manifest of an image as p2pimg carries it.
//! - [`platform`]: OCI platforms (`linux/amd64`) of images and nodes.
//! - [`chunk`]: one chunk's zstd encoding and its verification.
//! - [`pack`]: a layer's tar → stored chunks, on worker threads.
//! - [`store`]: verified chunks on disk.
//! - [`arrivals`]: which chunks are in, for a load that streams while the
//!   swarm still fetches.
//! - [`retention`]: which stored chunks to delete and when; the records of
//!   distributions.
//! - [`disk`]: free space and mount point of the file system holding a path.
//! - [`lock`]: the lock that gives one process a state directory.
//! - [`bundle`]: the bundle file: a manifest and its chunks in one
//!   self-verifying file.

pub mod arrivals;
pub mod bundle;
pub mod chunk;
pub mod disk;
pub mod hash;
pub mod lock;
pub mod manifest;
pub mod oci;
pub mod pack;
pub mod platform;
pub mod reference;
pub mod retention;
pub mod store;
