//! The swarm actor of one distribution: owns the picker, the peer links
//! and the fetch tasks, and turns their events into requests, HAVEs and
//! progress.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::fetch::{fetch, Fetched};
use super::handle::Cmd;
use super::link::LinkTask;
use super::*;
use crate::content::arrivals::Arrivals;
use crate::swarm::policy::picker::{PeerId, Picker};
use crate::swarm::policy::seeder::Seeder;
use crate::wire::{close, Bitfield, ErrorCode, PeerBytes};

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
        let seeder = opts
            .seeding
            .then(|| Seeder::new(need.len(), window).with_stall_after(opts.seed_stall));
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
                self.shared.metrics.on_rejected();
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
                self.shared.metrics.on_busy_received();
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
            Err(e @ (FetchError::Refused { .. } | FetchError::Stopped { .. })) => {
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
            self.shared.metrics.on_received(&link.name, bytes);
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
