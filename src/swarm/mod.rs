//! The swarm side of one distribution: links to peers, HAVE exchange and
//! chunk fetching. (Answering peers' requests is `serve`'s.)
//!
//! ```text
//!   connection tasks ──AddPeer──►  Swarm actor  ◄──Hello/Have/Gone── link tasks (one per peer)
//!   (serve_connection)             owns Picker  ──Have(i)──────────►  (write HAVE to the peer)
//!                                  JoinSet of fetch tasks: open stream, Request, verify, store
//!   callers ◄── watch<SwarmProgress> ──┘
//! ```
//!
//! A chunk becomes HAVE only after [`check_chunk`](crate::content::chunk::check_chunk) verified it and the
//! store wrote it; only then is it announced. A peer that sends bad data
//! is disconnected and its chunk is requested elsewhere.
//!
//! Shutdown order: when every handle is dropped (the registry's last) the
//! actor's inbox closes and it returns, aborting its fetch and link tasks
//! (JoinSets abort on drop); connections stay open for other distributions.

mod actor;
mod fetch;
mod handle;
mod link;
pub mod policy;
pub mod ratelimit;
mod registry;
pub mod serve;
mod uploads;

use std::time::Duration;

pub use actor::Swarm;
pub use fetch::FetchError;
pub use handle::{SwarmHandle, SwarmOptions, SwarmProgress};
pub use registry::{DistShared, Holdings, Registered, Registry, UploadMeter};
pub use uploads::{Admission, Uploads};

/// Requests in flight per peer. A server sends each requester at most 2
/// answers at once, so 4 keep its share of the peer's uplink busy (2 on the
/// wire, 2 waiting). More only queue up at the server: a request made
/// early waits behind them, committed to that peer, while the chunk may
/// turn up sooner elsewhere, which drew out the end of a distribution
/// (N=8 benchmark: 1.38x of the bound with 8, 1.20x with 4).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Requests in flight across all peers. A node needs only enough
/// outstanding to keep its own download busy; every request beyond that
/// sits in some server's queue, so with many peers (4 each to 15 peers is
/// 60) a request for a rare chunk waited seconds behind the others at its
/// only holder, and the last chunks trickled in.
pub const DEFAULT_MAX_TOTAL_IN_FLIGHT: usize = 8;
/// Requests in flight to the seed, outside [`DEFAULT_MAX_TOTAL_IN_FLIGHT`]:
/// the seed lets one more per node wait, oldest first, so each
/// node keeps its place in the seed's round (the seed alone holds the chunks
/// it offers, so asking elsewhere is no option). With `Busy` instead, the
/// nodes whose answer had just ended took every free place again: at N = 16
/// one node received its first chunk from the seed after 0.2 s, another
/// after 10.6 s. Three keep the seed's two answers per node going while the
/// next request is on its way.
pub const SEED_IN_FLIGHT: usize = 3;
/// Longest wait for one chunk before asking someone else: 8 requests of
/// 1 MiB over a 2 Mbit/s link take about 35 s.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Chunks a seeder keeps offered per peer, per request the peer may have
/// in flight: two windows' worth keeps the peer's pipeline full while its
/// HAVEs travel back.
const SEED_WINDOW_PER_REQUEST: usize = 2;
/// How often a seeder looks for stalled peers; stalls are measured in
/// tens of seconds, so once a second is plenty.
const SEED_TICK: Duration = Duration::from_secs(1);
/// How long a peer dropped for bad data or a protocol violation is refused:
/// long enough to finish the distribution without it.
const BAN_FOR: Duration = Duration::from_secs(600);
/// First pause before asking a peer again after it answered `Busy`; each
/// further `Busy` in a row doubles it, up to [`BUSY_BACKOFF_MAX`]. A busy
/// server frees an upload slot about every chunk-time (0.04 s for 512 KiB
/// at 100 Mbit/s, 0.17 s at 25), so the first retries land near the next
/// free place. 50 ms made the nodes of the N=16 benchmark ask so often that
/// the CPU, not the links, became the limit at 25 Mbit/s (1.16x -> 1.24x).
const BUSY_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause after `Busy` while other requests are in flight: asking a
/// busy server costs both sides CPU, and with 17 hosts on 2 cores a 0.4 s
/// cap took enough of it to cost 20% of the N=16 benchmark's transfer.
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(1600);
/// Longest pause once nothing else is in flight: the node is idle, so it
/// asks again soon. The seed answers `Busy` all through a push, so a node's
/// pause for it reaches the cap; at the end, the last chunks the seed had
/// offered that node waited out the rest of it while the seed idled (every
/// node of the N=4 benchmark sat 1.4 s before its last 8 chunks).
const IDLE_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// Depth of the actor's inbox; senders wait when it is full.
const INBOX: usize = 256;

/// QUIC send priority of streams carrying small control messages (HELLO/HAVE,
/// requests, a push's control stream): sent before the chunk answers that
/// share the connection (priority 0), so they never wait behind megabytes.
pub const CONTROL_PRIORITY: i32 = 1;
