//! p2pimg: peer-to-peer distribution of container images over a QUIC swarm.
//!
//! The crate is cut into layers. Each uses only the layers listed above it,
//! and data flows down the list in a push:
//!
//! ```text
//!   engine export ─► content: pack ─► store ─► wire: announce ─► swarm ─► engine load
//!      (seed)          (chunks, manifest)         (pusher→agents)  (agents)   (each node)
//! ```
//!
//! - [`ops`]: metrics counters (a handle, passed in) and sizes for people.
//! - [`content`]: hash, manifest, image references, platforms, the OCI
//!   manifest p2pimg writes, chunk packing and
//!   verification, the chunk store, arrivals, retention, disk space, the
//!   state-directory lock, the bundle file.
//! - [`wire`]: the messages agents and pushers exchange, their framing and
//!   limits (spec: `proto/PROTOCOL.md`).
//! - [`net`]: the QUIC endpoint with mutual TLS; the cluster's identities;
//!   the timeouts that decide when a peer is gone.
//! - [`engine`]: the node's container engine, one interface over Docker
//!   (classic or containerd image store), containerd and podman: export and
//!   parse `docker save`, load only the missing layers, tag, identify.
//! - [`swarm`]: one distribution among peers: the I/O-free policy
//!   ([`swarm::policy`]: picker, seeder) and the tokio side (links, fetch,
//!   serve, rate limit).
//! - [`config`]: the node inventory (nodes.toml) and the agent's options
//!   (agent.toml).
//! - [`agent`]: the node's daemon: plans what to fetch, runs distributions,
//!   loads the images.
//! - [`push`]: the seed: export, announce, seed, follow every node; `status`;
//!   the dry run; bundle creation; scratch chunk stores.
//! - [`cli`]: the command line and what people see of a push.

pub mod ops;

pub mod content;

pub mod wire;

pub mod net;

pub mod engine;

pub mod swarm;

pub mod config;

pub mod agent;

pub mod push;

pub mod cli;
