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
//! A chunk becomes HAVE only after [`decode_chunk`] verified it and the
//! store wrote it; only then is it announced. A peer that sends bad data
//! is disconnected and its chunk is requested elsewhere.
//!
//! Shutdown order: when every handle is dropped (the registry's last) the
//! actor's inbox closes and it returns, aborting its fetch and link tasks
//! (JoinSets abort on drop); connections stay open for other distributions.

pub mod policy;
pub mod ratelimit;
pub mod serve;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream, SendStream, VarInt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::content::arrivals::Arrivals;
use crate::content::hash::Hash;
use crate::content::manifest::Manifest;
use crate::content::pack::decode_chunk;
use crate::content::store::ChunkStore;
use crate::swarm::policy::picker::{PeerId, Picker};
use crate::swarm::policy::seeder::Seeder;
use crate::swarm::serve::Uploads;
use crate::wire::{
    self, close, read_frame, write_frame, Bitfield, ErrorCode, FrameError, Message, PeerBytes,
};

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

/// What every task of a distribution shares, immutable but for counters.
#[derive(Debug)]
pub struct DistShared {
    /// The manifest's ID.
    pub id: Hash,
    /// The validated manifest.
    pub manifest: Arc<Manifest>,
    /// Where verified chunks live.
    pub store: ChunkStore,
    served: Mutex<HashMap<String, PeerBytes>>,
    meter: UploadMeter,
}

impl DistShared {
    /// Shared state for a validated manifest.
    pub fn new(manifest: Arc<Manifest>, store: ChunkStore) -> Arc<Self> {
        Self::with_meter(manifest, store, UploadMeter::default())
    }

    /// Shared state whose served bytes also add up in `meter`.
    pub fn with_meter(manifest: Arc<Manifest>, store: ChunkStore, meter: UploadMeter) -> Arc<Self> {
        Arc::new(DistShared {
            id: manifest.id(),
            manifest,
            store,
            served: Mutex::default(),
            meter,
        })
    }

    /// Bytes served to each peer so far, by peer name.
    pub fn served(&self) -> Vec<PeerBytes> {
        let mut v: Vec<PeerBytes> = self
            .served
            .lock()
            .expect("stats lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.peer.cmp(&b.peer));
        v
    }

    pub(crate) fn count_served(&self, peer: &str, bytes: u64) {
        let mut map = self.served.lock().expect("stats lock");
        let e = map.entry(peer.to_string()).or_insert_with(|| PeerBytes {
            peer: peer.into(),
            chunks: 0,
            bytes: 0,
        });
        e.chunks += 1;
        e.bytes += bytes;
        self.meter.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A running total of the bytes a distribution has served, readable while
/// it runs: the pusher's live view shows the seed's upload from it.
#[derive(Clone, Debug, Default)]
pub struct UploadMeter(Arc<AtomicU64>);

impl UploadMeter {
    /// Bytes served so far.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The distributions this process takes part in, by manifest ID, and the
/// limits on what it uploads serving them.
#[derive(Clone, Debug, Default)]
pub struct Registry(Arc<Mutex<HashMap<Hash, SwarmHandle>>>, Arc<Uploads>);

impl Registry {
    /// A registry whose serving uploads at most `mbit` Mbit/s.
    pub fn with_upload_limit(mbit: Option<u64>) -> Registry {
        Registry(Arc::default(), Arc::new(Uploads::new(mbit)))
    }

    /// The seed's registry: requests queue per node ([`Uploads::seed`]),
    /// serving uploads at most `mbit` Mbit/s.
    pub fn for_seed(mbit: Option<u64>) -> Registry {
        Registry(Arc::default(), Arc::new(Uploads::seed(mbit)))
    }

    /// What bounds this process's chunk answers.
    pub fn uploads(&self) -> &Arc<Uploads> {
        &self.1
    }

    /// Makes `handle` reachable for incoming swarm and request streams
    /// until the returned guard is dropped, which also happens when the
    /// task holding it is aborted.
    pub fn register(&self, handle: SwarmHandle) -> Registered {
        let previous = self
            .0
            .lock()
            .expect("registry lock")
            .insert(handle.shared.id, handle.clone());
        if previous.is_some() {
            tracing::warn!(dist = %handle.shared.id.short(), "distribution announced again while running");
        }
        Registered {
            registry: self.clone(),
            handle,
        }
    }

    /// Removes `handle`, unless a newer registration of the same
    /// distribution replaced it.
    fn unregister(&self, handle: &SwarmHandle) {
        let mut map = self.0.lock().expect("registry lock");
        if map
            .get(&handle.shared.id)
            .is_some_and(|h| Arc::ptr_eq(&h.shared, &handle.shared))
        {
            map.remove(&handle.shared.id);
        }
    }

    pub(crate) fn get(&self, id: &Hash) -> Option<SwarmHandle> {
        self.0.lock().expect("registry lock").get(id).cloned()
    }
}

/// What a peer holds and still wants, from its `Hello`.
#[derive(Clone, Debug, Default)]
pub struct Holdings {
    /// Chunks it holds, verified.
    pub have: Bitfield,
    /// Chunks it will fetch.
    pub want: Bitfield,
}

/// A registration in a [`Registry`]; dropping it unregisters.
#[derive(Debug)]
pub struct Registered {
    registry: Registry,
    handle: SwarmHandle,
}

impl Registered {
    /// The registered swarm.
    pub fn handle(&self) -> &SwarmHandle {
        &self.handle
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.unregister(&self.handle);
    }
}

/// Progress of the local node on a distribution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmProgress {
    /// Chunks fetched and verified.
    pub chunks: u32,
    /// Their compressed bytes.
    pub bytes: u64,
    /// Every needed chunk is held.
    pub complete: bool,
    /// Fetching stopped for a local reason (the chunk store failed).
    pub failed: Option<String>,
    /// Chunk requests in flight (waiting for another distribution's
    /// fetch of the chunk included). None while chunks are missing means
    /// no peer offers any of them.
    pub in_flight: usize,
    /// Peers that answered `Busy` and are left alone for a moment: chunks
    /// they hold are on their way, only later.
    pub busy_peers: usize,
    /// Peers whose `Hello` arrived.
    pub peers: usize,
    /// Needed chunks not held yet.
    pub missing: usize,
}

/// Tuning of a swarm.
#[derive(Clone, Copy, Debug)]
pub struct SwarmOptions {
    /// Requests in flight per peer.
    pub max_in_flight: usize,
    /// Requests in flight across all peers.
    pub max_total_in_flight: usize,
    /// Seed mode: hold everything, fetch nothing, and offer chunks a window
    /// at a time so each is uploaded about once ([`Seeder`]).
    pub seeding: bool,
}

impl Default for SwarmOptions {
    fn default() -> Self {
        SwarmOptions {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_total_in_flight: DEFAULT_MAX_TOTAL_IN_FLIGHT,
            seeding: false,
        }
    }
}

enum Cmd {
    AddPeer {
        name: String,
        conn: Connection,
        send: SendStream,
        recv: RecvStream,
        their: Option<Holdings>,
        seed: bool,
    },
    Hello {
        id: PeerId,
        their: Holdings,
    },
    Have {
        id: PeerId,
        index: u32,
    },
    Gone {
        id: PeerId,
    },
    Received {
        reply: tokio::sync::oneshot::Sender<Vec<PeerBytes>>,
    },
}

/// Cheap handle to a distribution's swarm actor.
#[derive(Clone, Debug)]
pub struct SwarmHandle {
    tx: mpsc::Sender<Cmd>,
    /// The distribution's shared state.
    pub shared: Arc<DistShared>,
    progress: watch::Receiver<SwarmProgress>,
    arrivals: Arc<Arrivals>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl SwarmHandle {
    /// Hands a swarm stream to the actor. `their` is the peer's bitfield
    /// when it already arrived (we accepted the stream), `None` when we
    /// opened it and still wait for the peer's `Hello`.
    pub async fn add_peer(
        &self,
        name: String,
        conn: Connection,
        (send, recv): (SendStream, RecvStream),
        their: Option<Holdings>,
    ) {
        self.add_link(name, conn, (send, recv), their, false).await
    }

    async fn add_link(
        &self,
        name: String,
        conn: Connection,
        (send, recv): (SendStream, RecvStream),
        their: Option<Holdings>,
        seed: bool,
    ) {
        let _ = self
            .tx
            .send(Cmd::AddPeer {
                name,
                conn,
                send,
                recv,
                their,
                seed,
            })
            .await;
    }

    /// Opens a swarm stream to a peer on `conn` and adds it.
    pub async fn connect_peer(&self, name: String, conn: Connection) -> Result<(), quinn::ConnectionError> {
        let streams = conn.open_bi().await?;
        self.add_link(name, conn, streams, None, false).await;
        Ok(())
    }

    /// Opens a swarm stream to the seed (the pusher) on `conn` and adds it:
    /// up to [`SEED_IN_FLIGHT`] requests to it, besides those to peers.
    pub async fn connect_seed(&self, name: String, conn: Connection) -> Result<(), quinn::ConnectionError> {
        let streams = conn.open_bi().await?;
        self.add_link(name, conn, streams, None, true).await;
        Ok(())
    }

    /// Follows the local node's progress.
    pub fn progress(&self) -> watch::Receiver<SwarmProgress> {
        self.progress.clone()
    }

    /// The chunks held so far, to read in order while the rest arrive.
    /// Chunks held at the start and chunks not needed count as arrived.
    pub fn arrivals(&self) -> Arc<Arrivals> {
        self.arrivals.clone()
    }

    /// Verified chunks and bytes received so far, per sending peer.
    pub async fn received(&self) -> Vec<PeerBytes> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Cmd::Received { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct PeerLink {
    name: String,
    conn: Connection,
    haves: mpsc::UnboundedSender<u32>,
    ready: bool,
    task: tokio::task::AbortHandle,
    /// Not asked before this: it answered `Busy`.
    busy_until: Option<tokio::time::Instant>,
    /// `Busy` answers in a row, for the backoff.
    busy_strikes: u32,
    /// The seed: requests to it wait their turn there ([`SEED_IN_FLIGHT`]).
    seed: bool,
}

/// The actor: owns the picker, the peer links and the fetch tasks.
pub struct Swarm {
    shared: Arc<DistShared>,
    picker: Picker,
    peers: HashMap<PeerId, PeerLink>,
    next_id: PeerId,
    inbox: mpsc::Receiver<Cmd>,
    self_tx: mpsc::WeakSender<Cmd>,
    links: JoinSet<()>,
    fetches: JoinSet<(PeerId, u32, Result<Fetched, FetchError>)>,
    received: HashMap<String, PeerBytes>,
    progress: watch::Sender<SwarmProgress>,
    /// The needed chunks as they are verified, for the streaming load.
    arrivals: Arc<Arrivals>,
    rng: StdRng,
    seeder: Option<Seeder>,
    failed: bool,
    /// Peers that may have something new to request from.
    dirty: HashSet<PeerId>,
    /// Every peer may: a chunk went back to NEEDED.
    all_dirty: bool,
    /// Peers dropped for misbehaving, by name, and since when.
    banned: HashMap<String, Instant>,
    /// Chunks a request found stored while another of ours still fetched
    /// them: that one's answer, when it comes, is counted as received.
    credit_late: HashSet<u32>,
}

/// How a chunk request ended well.
#[derive(Debug)]
enum Fetched {
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
        cause: crate::content::pack::ChunkError,
    },
    /// The peer answered with an error.
    #[error("peer refused chunk {index} ({code:?}): {detail}")]
    Refused {
        index: u32,
        code: ErrorCode,
        detail: String,
    },
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

impl Swarm {
    /// Starts the actor for a distribution. `need[i]`: chunk `i` must be
    /// fetched; `have[i]`: it is verified in the store. The returned task
    /// ends when every handle is dropped.
    pub fn spawn(
        shared: Arc<DistShared>,
        need: &[bool],
        have: &[bool],
        opts: SwarmOptions,
    ) -> (SwarmHandle, tokio::task::JoinHandle<()>) {
        let (tx, inbox) = mpsc::channel(INBOX);
        let picker = Picker::new(need, have, opts.max_in_flight).with_total_limit(opts.max_total_in_flight);
        let rng = StdRng::from_entropy();
        let window = opts.max_in_flight * SEED_WINDOW_PER_REQUEST;
        let seeder = opts.seeding.then(|| Seeder::new(need.len(), window));
        let complete = picker.is_complete();
        let held = need.iter().zip(have).map(|(&n, &h)| h || !n).collect();
        let arrivals = Arc::new(Arrivals::new(held));
        let (progress, progress_rx) = watch::channel(SwarmProgress {
            complete,
            missing: picker.missing(),
            ..Default::default()
        });
        let swarm = Swarm {
            shared: shared.clone(),
            picker,
            peers: HashMap::new(),
            next_id: 0,
            inbox,
            self_tx: tx.downgrade(),
            links: JoinSet::new(),
            fetches: JoinSet::new(),
            received: HashMap::new(),
            progress,
            arrivals: arrivals.clone(),
            rng,
            seeder,
            failed: false,
            dirty: HashSet::new(),
            all_dirty: false,
            credit_late: HashSet::new(),
            banned: HashMap::new(),
        };
        let task = tokio::spawn(swarm.run());
        (
            SwarmHandle {
                tx,
                shared,
                progress: progress_rx,
                arrivals,
            },
            task,
        )
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(SEED_TICK);
        loop {
            let wake = self.next_unbusy();
            tokio::select! {
                cmd = self.inbox.recv() => match cmd {
                    Some(cmd) => self.handle_cmd(cmd),
                    None => break,
                },
                Some(done) = self.fetches.join_next() => {
                    if let Ok((id, index, result)) = done {
                        self.on_fetched(id, index, result);
                    }
                    if self.idle() {
                        self.shorten_pauses();
                    }
                }
                Some(_) = self.links.join_next() => {}
                _ = tick.tick(), if self.seeder.is_some() => self.on_tick(),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                    self.on_unbusy();
                }
            }
            self.schedule();
            self.publish_state();
        }
        tracing::debug!(dist = %self.shared.id.short(), "swarm stopped");
    }

    fn handle_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::AddPeer {
                name,
                conn,
                send,
                recv,
                their,
                seed,
            } => self.on_add_peer(name, conn, (send, recv), their, seed),
            Cmd::Hello { id, their } => self.on_hello(id, their),
            Cmd::Have { id, index } => self.on_have(id, index),
            Cmd::Gone { id } => self.forget_peer(id),
            Cmd::Received { reply } => {
                let _ = reply.send(self.received.values().cloned().collect());
            }
        }
    }

    fn on_add_peer(
        &mut self,
        name: String,
        conn: Connection,
        (send, recv): (SendStream, RecvStream),
        their: Option<Holdings>,
        seed: bool,
    ) {
        if self.is_banned(&name) {
            tracing::debug!(peer = %name, "refused a swarm stream from a dropped peer");
            return; // dropping the streams resets them
        }
        let id = self.next_id;
        self.next_id += 1;
        let (haves, haves_rx) = mpsc::unbounded_channel();
        // A seeder holds everything but offers chunks one window at a time.
        let ours = match self.seeder {
            Some(_) => Holdings {
                have: Bitfield::new(self.picker.len()),
                want: Bitfield::new(self.picker.len()),
            },
            None => Holdings {
                have: self.picker.bitfield(),
                want: self.picker.wanted(),
            },
        };
        let tx = self.self_tx.clone();
        let link = LinkTask {
            id,
            dist: self.shared.id,
            chunks: self.shared.manifest.chunks.len(),
            tx,
        };
        let task = self.links.spawn(link.run(send, recv, ours, their, haves_rx));
        tracing::debug!(peer = %name, dist = %self.shared.id.short(), "peer link opened");
        self.peers.insert(
            id,
            PeerLink {
                name,
                conn,
                haves,
                ready: false,
                task,
                busy_until: None,
                busy_strikes: 0,
                seed,
            },
        );
    }

    fn on_hello(&mut self, id: PeerId, their: Holdings) {
        let Some(link) = self.peers.get_mut(&id) else {
            return;
        };
        link.ready = true;
        match link.seed {
            true => self.picker.add_seed(id, &their.have, SEED_IN_FLIGHT),
            false => self.picker.add_peer(id, &their.have),
        }
        self.dirty.insert(id);
        if let Some(seeder) = &mut self.seeder {
            let offers = seeder.add_peer(id, &their.have, &their.want, Instant::now());
            self.offer(id, offers);
        }
    }

    fn on_have(&mut self, id: PeerId, index: u32) {
        if !self.picker.peer_has(id, index) {
            return self.drop_peer(id, close::PROTOCOL, "HAVE for a chunk that does not exist");
        }
        self.dirty.insert(id);
        if let Some(seeder) = &mut self.seeder {
            let offers = seeder.on_have(id, index, Instant::now());
            self.offer(id, offers);
        }
    }

    /// Announces chunks to one peer (the seeder's offers).
    fn offer(&self, id: PeerId, chunks: Vec<u32>) {
        if let Some(link) = self.peers.get(&id) {
            chunks.into_iter().for_each(|i| {
                let _ = link.haves.send(i);
            });
        }
    }

    fn on_tick(&mut self) {
        let Some(seeder) = &mut self.seeder else { return };
        for (id, offers) in seeder.tick(Instant::now()) {
            self.offer(id, offers);
        }
    }

    fn forget_peer(&mut self, id: PeerId) {
        if let Some(link) = self.peers.remove(&id) {
            tracing::debug!(peer = %link.name, "peer link closed");
            link.task.abort();
        }
        self.picker.remove_peer(id);
        self.all_dirty = true;
        if let Some(seeder) = &mut self.seeder {
            for (other, offers) in seeder.remove_peer(id) {
                self.offer(other, offers);
            }
        }
    }

    /// Disconnects a misbehaving peer and refuses its swarm streams for
    /// [`BAN_FOR`]; its chunks are fetched elsewhere.
    fn drop_peer(&mut self, id: PeerId, code: u32, why: &str) {
        if let Some(link) = self.peers.get(&id) {
            tracing::warn!(peer = %link.name, "dropping peer: {why}");
            link.conn.close(VarInt::from_u32(code), why.as_bytes());
            self.banned.insert(link.name.clone(), Instant::now());
        }
        self.forget_peer(id);
    }

    /// When the first peer that answered `Busy` may be asked again.
    fn next_unbusy(&self) -> Option<tokio::time::Instant> {
        self.peers.values().filter_map(|l| l.busy_until).min()
    }

    /// Whether no request to a peer is in flight. Requests waiting their
    /// turn at the seed do not count: they wait seconds by design, and a node
    /// always has some there, so counting them kept every pause after `Busy`
    /// at its long cap and the node idle in the first seconds of a push.
    fn idle(&self) -> bool {
        self.picker.total_in_flight() == 0
    }

    /// Nothing is in flight any more: pauses after `Busy` end within
    /// [`IDLE_BACKOFF_MAX`], so an idle node does not wait out a long one.
    fn shorten_pauses(&mut self) {
        let soon = tokio::time::Instant::now() + IDLE_BACKOFF_MAX;
        for link in self.peers.values_mut() {
            if let Some(until) = &mut link.busy_until {
                *until = (*until).min(soon);
            }
        }
    }

    /// Peers whose `Busy` pause is over may be asked again.
    fn on_unbusy(&mut self) {
        let now = tokio::time::Instant::now();
        for (id, link) in &mut self.peers {
            if link.busy_until.is_some_and(|t| t <= now) {
                link.busy_until = None;
                self.dirty.insert(*id);
            }
        }
    }

    /// A peer answered `Busy`: leave it alone for a while, longer each time
    /// in a row, with jitter so its requesters do not come back all at once.
    fn back_off(&mut self, id: PeerId) {
        let cap = match self.idle() {
            true => IDLE_BACKOFF_MAX,
            false => BUSY_BACKOFF_MAX,
        };
        let Some(link) = self.peers.get_mut(&id) else {
            return;
        };
        let pause = BUSY_BACKOFF
            .saturating_mul(1 << link.busy_strikes.min(8))
            .min(cap)
            .mul_f64(self.rng.gen_range(0.5..1.5));
        link.busy_strikes += 1;
        link.busy_until = Some(tokio::time::Instant::now() + pause);
    }

    fn is_banned(&mut self, name: &str) -> bool {
        self.banned.retain(|_, since| since.elapsed() < BAN_FOR);
        self.banned.contains_key(name)
    }

    /// Updates what [`SwarmProgress`] says of requests and peers; watchers
    /// wake only when that changed.
    fn publish_state(&self) {
        let in_flight = self.fetches.len();
        let peers = self.peers.values().filter(|l| l.ready).count();
        let busy = self.peers.values().filter(|l| l.busy_until.is_some()).count();
        let missing = self.picker.missing();
        self.progress.send_if_modified(|p| {
            let now = (in_flight, busy, peers, missing);
            let changed = (p.in_flight, p.busy_peers, p.peers, p.missing) != now;
            (p.in_flight, p.busy_peers, p.peers, p.missing) = now;
            changed
        });
    }

    /// Starts as many requests as the picker allows.
    fn schedule(&mut self) {
        if self.failed {
            return;
        }
        // Only peers whose situation changed are asked: a pick scans every
        // chunk, and most events concern one peer.
        let dirty = std::mem::take(&mut self.dirty);
        let mut ready: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, l)| l.ready && l.busy_until.is_none())
            .filter(|(id, _)| self.all_dirty || dirty.contains(id))
            .map(|(id, _)| *id)
            .collect();
        self.all_dirty = false;
        // Slots freed under the total limit go to peers in random order,
        // not always to the same ones.
        ready.shuffle(&mut self.rng);
        for id in ready {
            while let Some(index) = self.picker.pick(id, &mut self.rng) {
                self.start_fetch(id, index);
            }
        }
    }

    /// Requests chunk `index` from peer `id` on a task of its own.
    fn start_fetch(&mut self, id: PeerId, index: u32) {
        let link = &self.peers[&id];
        let (conn, peer) = (link.conn.clone(), link.name.clone());
        let shared = self.shared.clone();
        self.fetches.spawn(async move {
            let started = Instant::now();
            let result = tokio::time::timeout(FETCH_TIMEOUT, fetch(conn, shared, index)).await;
            let result = result.unwrap_or_else(|_| {
                Err(FetchError::Transfer {
                    index,
                    detail: format!("no answer in {FETCH_TIMEOUT:?}"),
                })
            });
            // One line per request, for reading a swarm's timeline
            // (RUST_LOG=p2pimg::swarm=trace).
            let ms = started.elapsed().as_millis();
            match &result {
                Ok(_) => tracing::trace!(%peer, index, ms, "fetched"),
                Err(e) => tracing::trace!(%peer, index, ms, "fetch failed: {e}"),
            }
            (id, index, result)
        });
    }

    fn on_fetched(&mut self, id: PeerId, index: u32, result: Result<Fetched, FetchError>) {
        self.dirty.insert(id);
        // A slot freed under the total limit is any peer's.
        self.all_dirty |= self.picker.at_total_limit();
        // A failed request puts the chunk back to NEEDED, for any peer.
        self.all_dirty |= result.is_err();
        match result {
            Ok(Fetched::Received(bytes)) => {
                if let Some(link) = self.peers.get_mut(&id) {
                    link.busy_strikes = 0;
                }
                self.on_chunk(id, index, bytes, true)
            }
            // Stored by another distribution on this node, or by this one's
            // own endgame copy of the request, whose answer is still on its
            // way here and counts as the chunk's when it comes. Either way
            // the chunk is held now. (Putting it back in flight instead, for
            // the copy to complete it, livelocked: two copies that both found
            // the chunk stored each saw the other, asked again at once, as
            // still fetching it; tests/concurrent.rs hung on it.)
            Ok(Fetched::Stored(bytes)) => {
                if self.picker.requested_elsewhere(id, index) {
                    self.credit_late.insert(index);
                }
                self.on_chunk(id, index, bytes, false)
            }
            Err(FetchError::BadData { .. }) => {
                crate::ops::metrics::metrics().on_rejected();
                self.picker.on_failed(id, index);
                self.drop_peer(id, close::BAD_DATA, "sent a chunk that failed verification");
            }
            Err(FetchError::Store(e)) => {
                // A local disk problem: fetching again would only repeat it.
                self.picker.on_failed(id, index);
                let reason = e.to_string();
                tracing::error!("{reason}");
                self.failed = true;
                self.arrivals.close(&reason);
                self.progress.send_modify(|p| p.failed = Some(reason));
            }
            Err(FetchError::Refused {
                code: ErrorCode::Busy,
                ..
            }) => {
                crate::ops::metrics::metrics().on_busy_received();
                self.picker.on_failed(id, index);
                self.back_off(id);
            }
            Err(
                e @ FetchError::Refused {
                    code: ErrorCode::NotFound,
                    ..
                },
            ) => {
                tracing::debug!("{e}");
                self.picker.on_failed(id, index);
                self.picker.peer_lacks(id, index);
            }
            Err(e @ FetchError::Refused { .. }) => {
                tracing::debug!("{e}");
                self.picker.on_failed(id, index);
                self.forget_peer(id);
            }
            Err(e @ FetchError::Protocol { .. }) => {
                self.picker.on_failed(id, index);
                self.drop_peer(id, close::PROTOCOL, &e.to_string());
            }
            Err(e @ FetchError::Transfer { .. }) => {
                tracing::debug!("{e}");
                self.picker.on_failed(id, index);
            }
        }
    }

    /// A chunk is verified in the store; `from_peer` unless another
    /// distribution on this node put it there.
    fn on_chunk(&mut self, id: PeerId, index: u32, bytes: u64, from_peer: bool) {
        let Some(duplicates) = self.picker.on_received(id, index) else {
            // A late endgame duplicate: counted only if it is the answer that
            // stored a chunk its twin found stored.
            if self.credit_late.remove(&index) && from_peer {
                self.count_received(id, bytes);
            }
            return;
        };
        self.dirty.extend(duplicates);
        if from_peer {
            self.count_received(id, bytes);
        }
        self.arrivals.mark(index);
        for link in self.peers.values() {
            let _ = link.haves.send(index);
        }
        let complete = self.picker.is_complete();
        self.progress.send_modify(|p| {
            p.chunks += 1;
            p.bytes += bytes;
            p.complete = complete;
        });
    }

    /// Counts a chunk of `bytes` received from peer `id`.
    fn count_received(&mut self, id: PeerId, bytes: u64) {
        if let Some(link) = self.peers.get(&id) {
            crate::ops::metrics::metrics().on_received(&link.name, bytes);
            let e = self
                .received
                .entry(link.name.clone())
                .or_insert_with(|| PeerBytes {
                    peer: link.name.clone(),
                    chunks: 0,
                    bytes: 0,
                });
            e.chunks += 1;
            e.bytes += bytes;
        }
    }
}

/// Requests one chunk on a fresh stream, verifies and stores it, unless
/// another distribution on this node fetches or fetched it.
async fn fetch(conn: Connection, shared: Arc<DistShared>, index: u32) -> Result<Fetched, FetchError> {
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
        // A stream ended before or inside the answer, an oversize or
        // undecodable frame: the peer broke the protocol.
        Err(e @ (FrameError::Closed | FrameError::TooLarge { .. } | FrameError::Decode(_))) => {
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
        decode_chunk(&entry, &data).map_err(|cause| FetchError::BadData { index, cause })?;
        store.put(&entry.hash, &data)?;
        Ok(Fetched::Received(u64::from(entry.zsize)))
    })
    .await
    .map_err(|e| transfer(e.to_string()))?;
    drop(claim);
    stored
}

/// One peer's swarm stream: sends our HELLO and HAVEs, reads theirs.
struct LinkTask {
    id: PeerId,
    dist: Hash,
    chunks: usize,
    tx: mpsc::WeakSender<Cmd>,
}

impl LinkTask {
    async fn run(
        self,
        mut send: SendStream,
        mut recv: RecvStream,
        ours: Holdings,
        their: Option<Holdings>,
        mut haves: mpsc::UnboundedReceiver<u32>,
    ) {
        // HAVEs must not wait behind chunk answers on the same connection.
        let _ = send.set_priority(CONTROL_PRIORITY);
        let result = self.exchange(&mut send, &mut recv, ours, their, &mut haves).await;
        if let Err(e) = result {
            tracing::debug!(dist = %self.dist.short(), "peer link ended: {e}");
        }
        self.tell(Cmd::Gone { id: self.id }).await;
    }

    async fn exchange(
        &self,
        send: &mut (impl AsyncWrite + Unpin),
        recv: &mut (impl AsyncRead + Unpin),
        ours: Holdings,
        their: Option<Holdings>,
        haves: &mut mpsc::UnboundedReceiver<u32>,
    ) -> Result<(), wire::FrameError> {
        let hello = Message::Hello {
            dist: self.dist,
            have: ours.have,
            want: ours.want,
        };
        write_frame(send, &hello).await?;
        let their = match their {
            Some(their) => their,
            None => match read_frame(recv, wire::MAX_FIRST_FRAME).await? {
                Message::Hello { dist, have, want } if dist == self.dist => Holdings { have, want },
                other => {
                    tracing::warn!(dist = %self.dist.short(), "peer answered the swarm link with {other:?}");
                    return Ok(());
                }
            },
        };
        if !their.have.fits(self.chunks) || !their.want.fits(self.chunks) {
            return Ok(());
        }
        self.tell(Cmd::Hello { id: self.id, their }).await;
        // Reading and writing run as two whole loops raced against each other,
        // never a frame read inside a select!: a read cancelled mid-frame
        // would leave the stream in the middle of a frame.
        let reader = async {
            loop {
                match read_frame(recv, wire::MAX_LINK_FRAME).await? {
                    Message::Have { index } => self.tell(Cmd::Have { id: self.id, index }).await,
                    _ => return Ok(()),
                }
            }
        };
        let writer = async {
            while let Some(index) = haves.recv().await {
                write_frame(send, &Message::Have { index }).await?;
            }
            Ok(())
        };
        tokio::select! {
            r = reader => r,
            w = writer => w,
        }
    }

    async fn tell(&self, cmd: Cmd) {
        if let Some(tx) = self.tx.upgrade() {
            let _ = tx.send(cmd).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::wire::encode;

    /// Regression: the link raced a frame read against outgoing HAVEs in one
    /// `select!`, so a read cancelled mid-frame desynchronised the stream.
    /// Here every incoming frame arrives a byte at a time while HAVEs go out.
    #[tokio::test]
    async fn link_survives_frames_split_while_haves_go_out() {
        let dist = Hash::of(b"dist");
        let (tx, mut rx) = mpsc::channel(1024);
        let link = LinkTask {
            id: 7,
            dist,
            chunks: 64,
            tx: tx.downgrade(),
        };
        let (mut ours, mut theirs) = (tokio::io::duplex(1 << 16), tokio::io::duplex(1 << 16));
        let (haves_tx, mut haves_rx) = mpsc::unbounded_channel();
        let holdings = Holdings {
            have: Bitfield::new(64),
            want: Bitfield::new(64),
        };
        let task = tokio::spawn(async move {
            let _ = link
                .exchange(&mut ours.0, &mut theirs.0, holdings.clone(), None, &mut haves_rx)
                .await;
        });
        let peer_hello = Message::Hello {
            dist,
            have: Bitfield::new(64),
            want: Bitfield::new(64),
        };
        let mut incoming = encode(&peer_hello);
        (0..64).for_each(|i| incoming.extend(encode(&Message::Have { index: i })));
        for byte in incoming {
            theirs.1.write_all(&[byte]).await.unwrap();
            let _ = haves_tx.send(1);
            tokio::task::yield_now().await;
        }
        let mut got = Vec::new();
        while got.len() < 64 {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Cmd::Have { index, .. } => got.push(index),
                Cmd::Hello { .. } => {}
                other => panic!("link ended early: {other:?}"),
            }
        }
        assert_eq!(got, (0..64).collect::<Vec<_>>());
        drop(haves_tx);
        task.await.unwrap();
        drop(ours.1);
    }
}
