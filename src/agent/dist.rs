//! One distribution on one agent, driven by the pusher's control stream:
//! Announce → Plan → Start → Progress… → Done → Finish.
//!
//! The same distribution announced again while it runs (the same images
//! pushed twice at once) waits its turn ([`Running`]), telling its pusher
//! why, then plans against what the first run left: usually a skip, so
//! nothing is fetched or loaded twice. If the running one's pusher is gone
//! (it crashed, or its connection is closed), the new announce takes over at
//! once: the old run ends, keeping its verified chunks, and the new one plans
//! from them.
//!
//! A pusher that leaves before the node is done ([`close::PUSHER_LEFT`]:
//! interrupted, timed out) ends the distribution at once. One whose
//! connection is merely lost does not: the node goes on among its peers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use tokio::task::JoinSet;

use super::{waits, AgentCtx};
use crate::agent::plan::{self, NodePlan};
use crate::content::hash::Hash;
use crate::content::manifest::Manifest;
use crate::content::retention::{Lease, RoomError};
use crate::content::store::StoreError;
use crate::engine::{self, Engine};
use crate::net::{self, PeerIdentity};
use crate::swarm::{DistShared, Swarm, SwarmHandle};
use crate::wire::{self, close, read_frame, write_frame, ErrorCode, Message, Outcome, PeerInfo, Progress};

mod turns;

pub(crate) use turns::Running;

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

/// Resolves when the pusher on `conn` leaves for good before the node is
/// done ([`close::PUSHER_LEFT`]), with why; never if the connection ends
/// any other way (the node then goes on among its peers).
async fn pusher_left(conn: &Connection) -> String {
    match conn.closed().await {
        ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(close::PUSHER_LEFT) => {
            let why = wire::reason_text(&String::from_utf8_lossy(&c.reason));
            format!("the pusher left before this node was done ({why})")
        }
        other => {
            tracing::info!("the pusher's connection ended ({other}); going on among the peers");
            std::future::pending().await
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

    /// Awaits `call`, which waits on the Docker Engine at `host`; once it
    /// has gone unanswered for the agent's `engine_quiet`, tells the pusher
    /// why the node waits (`progress` with that reason).
    async fn engine_call<T>(
        &mut self,
        ctx: &AgentCtx,
        host: &str,
        progress: Progress,
        call: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(call);
        tokio::select! {
            done = &mut call => return done,
            _ = tokio::time::sleep(ctx.engine_quiet) => {}
        }
        let reason = Some(waits::engine_quiet(ctx.engine.kind, host, ctx.engine_quiet));
        self.send(&Message::Progress(Progress { reason, ..progress }))
            .await;
        call.await
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

/// What a pusher announced.
pub(super) struct Announced {
    /// The distribution.
    pub manifest: Manifest,
    /// Load every image again, also those the engine holds (`push --force`).
    pub force: bool,
}

/// Runs a distribution the pusher `pusher` announced on `conn`.
pub(super) async fn run(
    ctx: Arc<AgentCtx>,
    conn: Connection,
    pusher: PeerIdentity,
    announced: Announced,
    send: SendStream,
    recv: RecvStream,
) {
    let Announced { manifest, force } = announced;
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
    tracing::info!(dist = %id.short(), pusher = %pusher.name, images = manifest.images.len(), force, "announced");
    let turn = tokio::select! {
        turn = ctx.running.turn(id, &conn, &mut control) => turn,
        _ = conn.closed() => {
            return tracing::info!(dist = %id.short(), "the pusher left while this push waited for its turn");
        }
    };
    let mut held = Held::default();
    let attempt = Attempt {
        ctx: &ctx,
        conn: &conn,
        pusher: &pusher,
        shared,
        force,
    };
    let ended = tokio::select! {
        outcome = attempt.run(manifest, &mut control, &mut held) => Ok(outcome),
        why = pusher_left(&conn) => Err(why),
        _ = turn.superseded.cancelled() => Err("a new push of the same images took over".to_string()),
    };
    // Released before waiting for Finish: that waits for the pusher's other
    // nodes, which may themselves wait for a turn behind another push.
    drop(turn);
    match ended {
        Ok(outcome) => {
            log_outcome(&id, &outcome);
            control.send(&Message::Done(outcome)).await;
            control.wait_finish().await;
        }
        // Its pusher is gone: nothing to report to, no Finish to wait for.
        // The chunks it verified stay in the store (the lease ends,
        // retention keeps them), and the next push plans from them.
        Err(why) => {
            tracing::info!(dist = %id.short(), "ended: {why}; its verified chunks stay for the next push")
        }
    }
    held.release().await;
}

/// What a distribution holds until it ends, released in this order.
#[derive(Default)]
struct Held {
    /// The swarm, registered so peers' streams reach it; unregisters when
    /// dropped, even if the task is aborted.
    registered: Option<crate::swarm::Registered>,
    /// Connections dialed to peers, served until the distribution ends, so
    /// peers still fetching can request chunks on them.
    dials: JoinSet<()>,
    /// Marks the distribution live: no chunk of it is evicted while it
    /// plans, fetches, loads or serves peers.
    lease: Option<Lease>,
}

impl Held {
    async fn release(mut self) {
        drop(self.registered.take());
        self.dials.shutdown().await;
        drop(self.lease);
    }
}

/// One announce's way from planning to its outcome.
struct Attempt<'a> {
    ctx: &'a Arc<AgentCtx>,
    conn: &'a Connection,
    pusher: &'a PeerIdentity,
    shared: Arc<DistShared>,
    /// Load every image, also those the engine holds.
    force: bool,
}

impl Attempt<'_> {
    /// Plans, checks the room, sends the plan, then fetches and loads;
    /// what it sets up goes into `held`.
    async fn run(self, manifest: Arc<Manifest>, control: &mut Control, held: &mut Held) -> Outcome {
        let ctx = self.ctx;
        let failed = |reason| Outcome::Failed {
            reason,
            received: Vec::new(),
        };
        let (engine, plan, lease) = match prepare(ctx, self.shared.id, &manifest, self.force, control).await {
            Ok(prepared) => prepared,
            Err(reason) => return failed(reason),
        };
        held.lease = Some(lease);
        let check = super::room::check(&ctx.keeper, &engine, &manifest, &plan);
        let room = control
            .engine_call(ctx, engine.host(), Progress::default(), check)
            .await;
        // Registered before the plan goes out: the pusher starts the peers
        // only once every plan is in, so none can dial before this.
        if room.is_ok() && !plan.is_skip() {
            let (swarm, _task) = Swarm::spawn(self.shared, &plan.need, &plan.have, ctx.swarm);
            held.registered = Some(ctx.registry.register(swarm));
        }
        control.send(&Message::Plan(plan.summary.clone())).await;
        if let Err(reason) = room {
            return failed(reason);
        }
        let node = Node {
            ctx,
            conn: self.conn,
            pusher: self.pusher,
            engine,
        };
        let swarm = held.registered.as_ref().map(|r| r.handle());
        node.distribute(control, &mut held.dials, swarm, manifest, plan)
            .await
    }
}

/// Everything before fetching: mark the distribution `id` live, reach the
/// engine, see what it holds, plan (every image with `force`). An engine
/// slow to answer is shown to the pusher (on `control`) while the node
/// waits for it.
async fn prepare(
    ctx: &AgentCtx,
    id: Hash,
    manifest: &Arc<Manifest>,
    force: bool,
    control: &mut Control,
) -> Result<(Engine, NodePlan, Lease), String> {
    let lease = begin(ctx, id, manifest).await?;
    let inspect = async {
        let engine = Engine::connect(&ctx.engine).await.map_err(|e| e.to_string())?;
        let held = engine.held().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((engine, held))
    };
    let (engine, held) = control
        .engine_call(ctx, &ctx.engine.host, Progress::default(), inspect)
        .await?;
    let plan = plan::plan_on(&engine, held, manifest, &ctx.store, force).await?;
    Ok((engine, plan, lease))
}

/// Marks the distribution live. That writes its record in the state
/// directory: on a full disk, room is made for the distribution (evicting
/// finished ones) and it is tried once more, so a disk with no byte free
/// gets the same "not enough disk space" line as one short of the chunks.
async fn begin(ctx: &AgentCtx, id: Hash, manifest: &Manifest) -> Result<Lease, String> {
    let chunks = || manifest.chunks.iter().map(|c| c.hash);
    match ctx.keeper.begin(id, chunks()).await {
        Ok(lease) => Ok(lease),
        Err(e) if is_disk_full(&e) => {
            let room = ctx.keeper.make_room(manifest.compressed_size()).await;
            room.map_err(|e| e.to_string())?;
            ctx.keeper.begin(id, chunks()).await.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the store failed for lack of space (ENOSPC).
fn is_disk_full(e: &RoomError) -> bool {
    matches!(e, RoomError::Store(StoreError::Io { source, .. })
        if source.kind() == std::io::ErrorKind::StorageFull)
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
            let tagged = tag_all(engine, &manifest);
            let tagged = control
                .engine_call(ctx, engine.host(), Progress::default(), tagged)
                .await;
            return match tagged {
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
        let request = plan.load_request(&manifest, &ctx.store, Some(swarm.arrivals()));
        let streaming = engine.load(request);
        tokio::pin!(streaming);
        let mut streamed = None;
        let fetched = tokio::select! {
            fetched = follow_progress(swarm, control, ctx.timeouts.stall) => fetched,
            // Ended first: it failed, or it took the last chunk a moment
            // before the swarm reported it. Fetching goes on, so peers
            // still get what this node holds; an error is reported once it
            // is done.
            loaded = &mut streaming => {
                streamed = Some(loaded);
                follow_progress(swarm, control, ctx.timeouts.stall).await
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
            None => match wait_load(ctx, engine, control, &loading, streaming).await {
                Ok(loaded) => loaded,
                Err(reason) => return Outcome::Failed { reason, received },
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
            if let Ok(engine) = Engine::connect(&ctx.engine).await {
                break engine;
            }
        };
        control.send(&Message::Progress(loading.clone())).await;
        let started = std::time::Instant::now();
        let load = engine.load(plan.load_request(manifest, &ctx.store, None));
        loaded = wait_load(ctx, &engine, control, &loading, load).await?;
        ctx.registry.metrics().on_load(loaded.is_ok(), started.elapsed());
    }
}

/// Waits for a load once every chunk is in, telling the pusher when the
/// engine has gone [`AgentCtx::engine_quiet`] without a word (taking the
/// archive, reporting a layer) and telling it again when it speaks. Fails
/// after [`AgentCtx::engine_stall`] of silence, or [`engine::LOAD_TIMEOUT`]
/// in all: nothing is tagged then.
async fn wait_load(
    ctx: &AgentCtx,
    engine: &Engine,
    control: &mut Control,
    loading: &Progress,
    load: impl Future<Output = Result<(), engine::LoadError>>,
) -> Result<Result<(), engine::LoadError>, String> {
    tokio::pin!(load);
    let since = std::time::Instant::now();
    let mut told = false;
    loop {
        tokio::select! {
            loaded = &mut load => return Ok(loaded),
            _ = tokio::time::sleep(REASON_EVERY) => {}
        }
        // Waiting for chunks before this was not the engine's silence.
        let quiet = engine.quiet_for().min(since.elapsed());
        if quiet >= ctx.engine_stall {
            return Err(waits::engine_stalled(
                ctx.engine.kind,
                engine.host(),
                ctx.engine_stall,
            ));
        }
        if since.elapsed() >= engine::LOAD_TIMEOUT {
            let secs = engine::LOAD_TIMEOUT.as_secs();
            return Err(format!(
                "the Docker Engine at {} did not finish loading within {secs}s of the last chunk; \
                 nothing was tagged (check dockerd's log)",
                engine.host()
            ));
        }
        let hung = quiet >= ctx.engine_quiet;
        if hung != told {
            told = hung;
            let reason = hung.then(|| waits::engine_quiet(ctx.engine.kind, engine.host(), ctx.engine_quiet));
            let report = Progress {
                reason,
                ..loading.clone()
            };
            control.send(&Message::Progress(report)).await;
        }
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
/// `alone_stall` without a new chunk: as long as the pusher's own stall
/// limit ([`net::Timeouts::stall`]).
async fn follow_progress(
    swarm: &SwarmHandle,
    control: &mut Control,
    alone_stall: Duration,
) -> Result<(), String> {
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
        if !pusher_here && quiet >= alone_stall {
            return Err(format!(
                "the pusher went away and no peer had the missing chunks for {alone_stall:?}"
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
    let within = ctx.timeouts.connect;
    match net::connect_within(&ctx.endpoint, peer.addr, Some(&peer.name), within).await {
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
    for index in 0..manifest.images.len() {
        engine.tag(manifest, index).await.map_err(|e| e.to_string())?;
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
