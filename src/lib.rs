//! p2pimg: peer-to-peer distribution of Docker images over a QUIC swarm.
//!
//! Crate map:
//! - [`bundle`]: bundle files: a manifest and its chunks in one self-verifying file.
//! - [`config`]: the node inventory (nodes.toml) and the agent's options (agent.toml).
//! - [`identity`]: the cluster CA, node and pusher certificates, roles.
//! - [`net`]: the QUIC endpoint with mutual TLS; peer identities.
//! - [`proto`]: wire messages, framing and limits (spec: `proto/PROTOCOL.md`).
//! - [`hash`]: the BLAKE3 `Hash` that addresses chunks and manifests.
//! - [`manifest`]: images, layers, chunks; content ID and validation.
//! - [`pack`]: layer tar → zstd chunks; chunk verification.
//! - [`store`]: verified chunks on disk, crash-safe.
//! - [`retention`]: which stored chunks to delete and when; the records of distributions.
//! - [`disk`]: free space and mount point of the file system holding a path.
//! - [`image`]: the Docker Engine: export and parse `docker save`, build the minimal tar, load, tag.
//! - [`plan`]: what a node already holds, what it must fetch and load.
//! - [`picker`]: which chunk to request from which peer (rarest-first, no I/O).
//! - [`seeder`]: what the seed offers to whom, so it uploads each chunk about once (no I/O).
//! - [`swarm`]: one distribution's peer links, HAVE exchange, fetching and serving.
//! - [`arrivals`]: which chunks are in, for a load that streams while the swarm fetches.
//! - [`serve`]: dispatching the streams a peer opens: swarm links, chunk requests, control.
//! - [`metrics`]: agent counters in the Prometheus text format, over HTTP.
//! - [`agent`]: the node's daemon: accepts the pusher and peers, runs distributions.
//! - [`push`]: the seed: export, announce, seed, follow every node, report.
//! - [`ratelimit`]: paces uploads to a configured rate.
//! - [`status`]: which nodes hold which images, asked of their agents.
//! - [`report`]: what people see of a push: the live fleet view, plain lines, the final table.

pub mod agent;
pub mod arrivals;
pub mod bundle;
pub mod config;
pub mod disk;
pub mod hash;
pub mod identity;
pub mod image;
pub mod manifest;
pub mod metrics;
pub mod net;
pub mod pack;
pub mod picker;
pub mod plan;
pub mod proto;
pub mod push;
pub mod ratelimit;
pub mod report;
pub mod retention;
pub mod seeder;
pub mod serve;
pub mod status;
pub mod store;
pub mod swarm;
