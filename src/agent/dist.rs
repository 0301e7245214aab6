//! One distribution on one agent, driven by the pusher's control stream:
//! Announce → Plan → Start → Progress… → Done → Finish.
//!
//! The same distribution announced again while it runs (the same images
//! pushed twice at once) waits its turn ([`Running`]), then plans against
//! what the first run left: usually a skip, so nothing is fetched or loaded
//! twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinSet;

use super::{waits, AgentCtx};
use crate::agent::plan::{self, NodePlan};
use crate::content::hash::Hash;
use crate::content::manifest::Manifest;
use crate::content::retention::Lease;
use crate::engine::{self, Engine};
use crate::net::{self, PeerIdentity};
use crate::swarm::{DistShared, Swarm, SwarmHandle};
use crate::wire::{self, read_frame, write_frame, ErrorCode, Message, Outcome, PeerInfo, Progress};

/// Least time between two progress reports to the pusher: often enough for
/// a live view, rare enough to cost nothing next to the chunks.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// First pause before loading again once the engine went away; it doubles
/// up to [`ENGINE_RETRY_MAX`], until the agent's `engine_wait` is spent.
const ENGINE_RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest pause between two tries: a restarted engine is noticed within
/// seconds of answering again.
const ENGINE_RETRY_MAX: Duration = Duration::from_secs(4);

/// How often a fetching node looks again at why it is waiting, when no
/// chunk arrives: reasons appear in the pusher's view within a second or so.
const REASON_EVERY: Duration = Duration::from_secs(1);

/// How long a node whose pusher went away waits for a new chunk from its
/// peers before giving up: as long as the pusher's own stall limit.
const ALONE_STALL: Duration = Duration::from_secs(180);

/// The distributions planning, fetching or loading on this node: one turn
/// at a time per distribution ID.
#[derive(Debug, Default)]
pub(crate) struct Running(Mutex<HashMap<Hash, Arc<tokio::sync::Mutex<()>>>>);

/// A distribution's turn; the next announce of the same ID goes on when it
/// is dropped.
struct Turn<'a> {
    running: &'a Running,
    id: Hash,
    _held: OwnedMutexGuard<()>,
}

impl Running {
    /// Waits until no other run of distribution `id` plans, fetches or loads.
    async fn turn(&self, id: Hash) -> Turn<'_> {
        let lock = self
            .0
            .lock()
            .expect("running lock")
            .entry(id)
            .or_default()
            .clone();
        let held = lock.lock_owned().await;
        Turn {
            running: self,
            id,
            _held: held,
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut map = self.running.0.lock().expect("running lock");
        // Two references: the map's and the guard's. More: someone waits.
        if map.get(&self.id).is_some_and(|l| Arc::strong_count(l) == 2) {
            map.remove(&self.id);
        }
    }
}

/// The control stream to the pusher.
struct Control {
    send: SendStream,
    recv: RecvStream,
}

impl Control {
    async fn send(&mut self, msg: &Message) -> bool {
        write_frame(&mut self.send, msg).await.is_ok()
    }

    /// Waits until the pusher says `Finish` or goes away.
    async fn wait_finish(&mut self) {
        while let Ok(msg) = read_frame(&mut self.recv, wire::MAX_FRAME).await {
            if msg == Message::Finish {
                break;
            }
        }
        let _ = self.send.finish();
    }
}

/// Runs a distribution the pusher `pusher` announced on `conn`.
pub(super) async fn run(
    ctx: Arc<AgentCtx>,
    conn: Connection,
    pusher: PeerIdentity,
    manifest: Manifest,
    send: SendStream,
    recv: RecvStream,
) {
    let mut control = Control { send, recv };
    if let Err(e) = manifest.validate() {
        tracing::warn!(pusher = %pusher.name, "rejected manifest: {e}");
        let msg = Message::Error {
            code: ErrorCode::BadManifest,
            message: e.to_string(),
        };
        control.send(&msg).await;
        return control.wait_finish().await;
    }
    let manifest = Arc::new(manifest);
    let shared = DistShared::new(
        manifest.clone(),
        ctx.store.clone(),
        ctx.registry.metrics().clone(),
    );
    let id = shared.id;
    tracing::info!(dist = %id.short(), pusher = %pusher.name, images = manifest.images.len(), "announced");
    // Connections dialed to peers are served until the distribution ends,
    // so peers still fetching can request chunks on them.
    let mut dials = JoinSet::new();
    // Unregisters when dropped, even if this task is aborted.
    let mut registered = None;
    let turn = ctx.running.turn(id).await;
    // Marks the distribution live until the end of this function: no chunk
    // of it is evicted while it plans, fetches, loads or serves peers.
    let mut lease = None;
    let outcome = match prepare(&ctx, id, &manifest).await {
        Ok((engine, plan, held)) => {
            lease = Some(held);
            let room = super::room::check(&ctx.keeper, &engine, &manifest, &plan).await;
            // Registered before the plan goes out: the pusher starts the peers
            // only once every plan is in, so none can dial before this.
            if room.is_ok() && !plan.is_skip() {
                let (swarm, _task) = Swarm::spawn(shared, &plan.need, &plan.have, ctx.swarm);
                registered = Some(ctx.registry.register(swarm));
            }
            control.send(&Message::Plan(plan.summary.clone())).await;
            match room {
                Err(reason) => Outcome::Failed {
                    reason,
                    received: Vec::new(),
                },
                Ok(()) => {
                    let node = Node {
                        ctx: &ctx,
                        conn: &conn,
                        pusher: &pusher,
                        engine,
                    };
                    let swarm = registered.as_ref().map(|r| r.handle());
                    node.distribute(&mut control, &mut dials, swarm, manifest, plan)
                        .await
                }
            }
        }
        Err(reason) => Outcome::Failed {
            reason,
            received: Vec::new(),
        },
    };
    // Released before waiting for Finish: that waits for the pusher's other
    // nodes, which may themselves wait for a turn behind another push.
    drop(turn);
    log_outcome(&id, &outcome);
    control.send(&Message::Done(outcome)).await;
    control.wait_finish().await;
    drop(registered);
    dials.shutdown().await;
    drop(lease);
}

/// Everything before fetching: mark the distribution live, reach the
/// engine, see what it holds, plan.
async fn prepare(
    ctx: &AgentCtx,
    id: Hash,
    manifest: &Arc<Manifest>,
) -> Result<(Engine, NodePlan, Lease), String> {
    let chunks = manifest.chunks.iter().map(|c| c.hash);
    let lease = ctx.keeper.begin(id, chunks).await.map_err(|e| e.to_string())?;
    let engine = Engine::connect(&ctx.docker_host)
        .await
        .map_err(|e| e.to_string())?;
    let held = engine.held().await.map_err(|e| e.to_string())?;
    let (m, store) = (manifest.clone(), ctx.store.clone());
    let plan = tokio::task::spawn_blocking(move || plan::plan(&m, &held.image_ids, &held.chain_ids, &store))
        .await
        .map_err(|e| format!("planning failed: {e}"))?;
    Ok((engine, plan, lease))
}

/// The node's side of one distribution.
struct Node<'a> {
    ctx: &'a Arc<AgentCtx>,
    conn: &'a Connection,
    pusher: &'a PeerIdentity,
    engine: Engine,
}

impl Node<'_> {
    async fn distribute(
        &self,
        control: &mut Control,
        dials: &mut JoinSet<()>,
        swarm: Option<&SwarmHandle>,
        manifest: Arc<Manifest>,
        plan: NodePlan,
    ) -> Outcome {
        let (ctx, conn, pusher, engine) = (self.ctx, self.conn, self.pusher, &self.engine);
        let Some(swarm) = swarm else {
            return match tag_all(engine, &manifest).await {
                Ok(()) => Outcome::Skipped,
                Err(reason) => Outcome::Failed {
                    reason,
                    received: Vec::new(),
                },
            };
        };
        let peers = match read_frame(&mut control.recv, wire::MAX_FRAME).await {
            Ok(Message::Start { peers }) => peers,
            other => {
                let got = match other {
                    Ok(msg) => format!("sent {} instead", msg.kind()),
                    Err(e) => e.to_string(),
                };
                let reason = format!("the pusher did not start the distribution: {got}");
                return Outcome::Failed {
                    reason,
                    received: Vec::new(),
                };
            }
        };
        if let Err(e) = swarm.connect_seed(pusher.name.clone(), conn.clone()).await {
            let reason = format!("cannot open a swarm stream to the pusher: {e}");
            return Outcome::Failed {
                reason,
                received: Vec::new(),
            };
        }
        for peer in peers
            .into_iter()
            .filter(|p| p.name > ctx.name && !ctx.deny.contains(&p.name))
        {
            dials.spawn(dial_peer(ctx.clone(), swarm.clone(), peer));
        }
        // The load streams from the start: dockerd unpacks the archive as
        // the chunks arrive, and only its import is left after the last.
        let streaming = engine::load_images(
            engine,
            manifest.clone(),
            plan.images.clone(),
            plan.layers.clone(),
            ctx.store.clone(),
            Some(swarm.arrivals()),
        );
        tokio::pin!(streaming);
        let mut streamed = None;
        let fetched = tokio::select! {
            fetched = follow_progress(swarm, control) => fetched,
            // Ended first: it failed, or it took the last chunk a moment
            // before the swarm reported it. Fetching goes on, so peers
            // still get what this node holds; an error is reported once it
            // is done.
            loaded = &mut streaming => {
                streamed = Some(loaded);
                follow_progress(swarm, control).await
            }
        };
        let received = swarm.received().await;
        if let Err(reason) = fetched {
            // Returning drops the load, which cuts its upload short: the
            // engine registers nothing. Not awaited: an engine that stopped
            // reading would keep this node from reporting its failure.
            return Outcome::Failed { reason, received };
        }
        let loading = Progress {
            loading: true,
            ..current(swarm)
        };
        control.send(&Message::Progress(loading.clone())).await;
        let fetched_at = std::time::Instant::now();
        let first = match streamed {
            Some(loaded) => loaded,
            None => match tokio::time::timeout(engine::LOAD_TIMEOUT, streaming).await {
                Ok(loaded) => loaded,
                Err(_) => {
                    let secs = engine::LOAD_TIMEOUT.as_secs();
                    let reason = format!(
                        "the Docker Engine at {} did not finish loading within {secs}s of the last \
                         chunk; nothing was tagged (check dockerd's log)",
                        engine.host()
                    );
                    return Outcome::Failed { reason, received };
                }
            },
        };
        ctx.registry
            .metrics()
            .on_load(first.is_ok(), fetched_at.elapsed());
        match load_again(ctx, &manifest, &plan, control, loading, first).await {
            Ok(()) => Outcome::Loaded { received },
            Err(reason) => Outcome::Failed { reason, received },
        }
    }
}

/// After the first, streamed load: if the engine went away (stopped or
/// restarted mid-load), waits for it with backoff for up to the agent's
/// `engine_wait` and loads again from the store: the engine keeps no partial
/// image from an interrupted load (it tags an image only once its load
/// completed), and the chunks are still in the store. While it waits, the
/// pusher is told why (`loading` with a reason), and told again when it
/// loads.
async fn load_again(
    ctx: &AgentCtx,
    manifest: &Arc<Manifest>,
    plan: &NodePlan,
    control: &mut Control,
    loading: Progress,
    first: Result<(), engine::LoadError>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + ctx.engine_wait;
    let mut pause = ENGINE_RETRY_FIRST;
    let mut loaded = first;
    loop {
        let error = match loaded {
            Ok(()) => return Ok(()),
            Err(e) if e.is_engine_gone() => e,
            Err(e) => return Err(e.to_string()),
        };
        tracing::warn!("{error}; loading again once the engine answers");
        let reason = waits::engine_reason(&error.to_string(), ctx.engine_wait);
        let waiting = Progress {
            reason: Some(reason),
            ..loading.clone()
        };
        control.send(&Message::Progress(waiting)).await;
        let engine = loop {
            if tokio::time::Instant::now() + pause > deadline {
                let secs = ctx.engine_wait.as_secs();
                return Err(format!(
                    "{error}; it did not come back within {secs}s (engine_wait_secs)"
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(ENGINE_RETRY_MAX);
            if let Ok(engine) = Engine::connect(&ctx.docker_host).await {
                break engine;
            }
        };
        control.send(&Message::Progress(loading.clone())).await;
        let (images, layers, store) = (plan.images.clone(), plan.layers.clone(), ctx.store.clone());
        let started = std::time::Instant::now();
        loaded = engine::load_images(&engine, manifest.clone(), images, layers, store, None).await;
        ctx.registry.metrics().on_load(loaded.is_ok(), started.elapsed());
    }
}

fn current(swarm: &SwarmHandle) -> Progress {
    let p = swarm.progress().borrow().clone();
    Progress {
        chunks: p.chunks,
        bytes: p.bytes,
        loading: false,
        reason: None,
    }
}

/// Reports progress until every chunk is held: counts as they change, and
/// why the node waits when no chunk comes ([`waits::fetch_reason`]). If the
/// pusher goes away the node keeps fetching from its peers: once every
/// chunk is among the agents, the seed may leave. Alone, it gives up after
/// [`ALONE_STALL`] without a new chunk.
async fn follow_progress(swarm: &SwarmHandle, control: &mut Control) -> Result<(), String> {
    let mut progress = swarm.progress();
    let mut pusher_here = true;
    let mut sent = None;
    let (mut chunks, mut moved) = (0, std::time::Instant::now());
    loop {
        let now = progress.borrow_and_update().clone();
        if let Some(reason) = now.failed {
            return Err(reason);
        }
        if now.complete {
            return Ok(());
        }
        if now.chunks != chunks {
            (chunks, moved) = (now.chunks, std::time::Instant::now());
        }
        let quiet = moved.elapsed();
        let claim_waits = swarm.shared.store.waiting_on_others(swarm.shared.id);
        let report = Progress {
            reason: waits::fetch_reason(&now, claim_waits, quiet),
            ..current(swarm)
        };
        if pusher_here && sent.as_ref() != Some(&report) {
            pusher_here = control.send(&Message::Progress(report.clone())).await;
            if !pusher_here {
                tracing::warn!("the pusher went away; fetching the rest from peers");
            }
            sent = Some(report);
        }
        // With the pusher there, its own stall timeout decides.
        if !pusher_here && quiet >= ALONE_STALL {
            let secs = ALONE_STALL.as_secs();
            return Err(format!(
                "the pusher went away and no peer had the missing chunks for {secs}s"
            ));
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
        if let Ok(Err(_)) = tokio::time::timeout(REASON_EVERY, progress.changed()).await {
            return Err("the swarm stopped".into());
        }
    }
}

/// Connects to a peer and opens a swarm stream; the connection is also
/// served, so the peer can request chunks on it.
async fn dial_peer(ctx: Arc<AgentCtx>, swarm: SwarmHandle, peer: PeerInfo) {
    match net::connect(&ctx.endpoint, peer.addr, Some(&peer.name)).await {
        Ok((conn, identity)) => {
            if let Err(e) = swarm.connect_peer(peer.name.clone(), conn.clone()).await {
                tracing::warn!(peer = %peer.name, "cannot open a swarm stream: {e}");
            }
            super::serve(ctx, conn, identity).await;
        }
        Err(e) => tracing::warn!(peer = %peer.name, "cannot reach peer: {e}"),
    }
}

async fn tag_all(engine: &Engine, manifest: &Manifest) -> Result<(), String> {
    for image in &manifest.images {
        for r in &image.refs {
            engine.tag(&image.id, r).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn log_outcome(id: &crate::content::hash::Hash, outcome: &Outcome) {
    match outcome {
        Outcome::Skipped => tracing::info!(dist = %id.short(), "skipped: images already present"),
        Outcome::Loaded { .. } => tracing::info!(dist = %id.short(), "loaded"),
        Outcome::Failed { reason, .. } => tracing::warn!(dist = %id.short(), "failed: {reason}"),
    }
}
