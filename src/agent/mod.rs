//! The agent: one per node. Accepts QUIC connections from the pusher and
//! from peers, serves the chunks it holds, and runs each announced
//! distribution: plan → fetch from the swarm, with `docker load` streaming
//! the chunks in as they arrive → report.
//!
//! ```text
//!  endpoint.accept ─► connection task (serve_connection)
//!                       ├─ Hello / Request ─► swarm::Registry ─► Swarm actor of that distribution
//!                       ├─ Announce, ForceAnnounce (pusher identities only) ─► distribution task (dist.rs)
//!                       ├─ Query (pusher identities only) ─► the engine's image IDs (status)
//!                       └─ PlanQuery, ForcePlanQuery (pusher identities only) ─► the plan a push would get (dry.rs)
//! ```
//!
//! Distributions run in the agent's own task set, not the connection's, so
//! one goes on among the peers if the pusher leaves mid-way.
//!
//! Shutdown (SIGINT/SIGTERM): stop accepting, close the endpoint with
//! "agent shutting down" (so pushers and peers learn why at once, instead
//! of seeing their streams end), cancel the distributions and wait for them
//! (one interrupted mid-fetch resumes from its verified chunks when pushed
//! again), stop the retention keeper, abort connection tasks, wait briefly
//! for the close to reach peers.

mod dist;
mod dry;
pub mod plan;
mod room;
mod waits;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentOptions;
use crate::content::lock::DirLock;
use crate::content::retention::{Keeper, RetentionOptions};
use crate::content::store::ChunkStore;
use crate::net::identity::Role;
use crate::net::{self, PeerIdentity, Timeouts};
use crate::ops::metrics::Metrics;
use crate::swarm::serve::{refuse, serve_connection};
use crate::swarm::{Registry, SwarmOptions};
use crate::wire::{close, ErrorCode, Message, MAX_ANNOUNCE_FRAME, MAX_FIRST_FRAME};

/// How long the endpoint may take to tell peers it is closing.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node identity could not be loaded or is not this node's.
    #[error(transparent)]
    Identity(#[from] crate::config::ConfigError),
    /// The identity is a pusher's, not a node's.
    #[error("{cert} is a pusher certificate; an agent needs a node certificate (p2pimg cert issue NAME)")]
    NotANode { cert: String },
    /// The state directory is unusable.
    #[error(
        "state directory unusable: {0} (set state_dir in agent.toml to a directory the agent can write)"
    )]
    Store(#[from] crate::content::store::StoreError),
    /// Another process (an agent, a `push --state-dir`) uses the state
    /// directory.
    #[error("{0} (state_dir in agent.toml)")]
    Lock(#[from] crate::content::lock::LockError),
    /// The QUIC endpoint could not be opened.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

/// What every task of the agent shares.
pub(crate) struct AgentCtx {
    pub name: String,
    /// The node's engine.
    pub engine: crate::engine::EngineSpec,
    /// How long a load waits for a restarting engine.
    pub engine_wait: Duration,
    /// How long an engine call goes unanswered before the pusher is told.
    pub engine_quiet: Duration,
    /// How long a load goes without a word from the engine before it fails.
    pub engine_stall: Duration,
    pub store: ChunkStore,
    /// Records distributions and evicts the chunks of finished ones.
    pub keeper: Keeper,
    pub registry: Registry,
    pub endpoint: quinn::Endpoint,
    /// Dials to peers (`connect`) and how long to fetch alone (`stall`).
    pub timeouts: Timeouts,
    pub swarm: SwarmOptions,
    /// Certificate names refused whatever their signature says.
    pub deny: HashSet<String>,
    /// One turn at a time per distribution ID.
    pub running: dist::Running,
    /// Running distributions. They belong to the agent, not to the
    /// pusher's connection: they go on if the pusher goes away.
    pub dists: TaskTracker,
    /// Cancelled when the agent stops; distributions end with it.
    pub stopping: CancellationToken,
}

/// A started agent, listening.
pub struct Agent {
    ctx: Arc<AgentCtx>,
    keeper: std::thread::JoinHandle<()>,
    /// The state directory is this agent's alone while it runs.
    _lock: DirLock,
}

impl Agent {
    /// Loads the identity, opens the store and binds the endpoint, with the
    /// default timeouts.
    pub fn start(opts: &AgentOptions) -> Result<Agent, AgentError> {
        Agent::start_with(opts, Timeouts::default())
    }

    /// [`Agent::start`] with these `timeouts` (tests shorten them).
    pub fn start_with(opts: &AgentOptions, timeouts: Timeouts) -> Result<Agent, AgentError> {
        let identity = opts.load_identity()?;
        if identity.role != Role::Node {
            let cert = opts.cert.display().to_string();
            return Err(AgentError::NotANode { cert });
        }
        // Before the store is opened: opening clears its `tmp/`.
        let lock = DirLock::acquire(&opts.state_dir)?;
        let store = ChunkStore::open(&opts.state_dir)?;
        let metrics = Metrics::default();
        let retention = RetentionOptions {
            retain: opts.retain,
            budget: opts.store_budget,
        };
        let (keeper, keeper_thread) = Keeper::spawn(store.clone(), retention, metrics.clone())?;
        let endpoint = net::endpoint_with(&identity, opts.listen, net::transport_config_with(&timeouts))?;
        let ctx = AgentCtx {
            name: opts.name.clone(),
            engine: opts.engine.clone(),
            engine_wait: opts.engine_wait,
            engine_quiet: opts.engine_quiet,
            engine_stall: opts.engine_stall,
            store,
            keeper,
            registry: Registry::with_upload_limit(opts.max_upload_mbit, metrics),
            endpoint,
            timeouts,
            swarm: SwarmOptions::default(),
            deny: opts.deny.iter().cloned().collect(),
            running: dist::Running::default(),
            dists: TaskTracker::new(),
            stopping: CancellationToken::new(),
        };
        Ok(Agent {
            ctx: Arc::new(ctx),
            keeper: keeper_thread,
            _lock: lock,
        })
    }

    /// The agent's counters, for the metrics endpoint.
    pub fn metrics(&self) -> Metrics {
        self.ctx.registry.metrics().clone()
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.ctx.endpoint.local_addr()
    }

    /// Serves until `shutdown` resolves, then shuts down in order. Returns
    /// false if it stopped for another reason (the endpoint closed), so a
    /// supervisor can tell a failure from a requested stop.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> bool {
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        let requested = loop {
            tokio::select! {
                incoming = self.ctx.endpoint.accept() => match incoming {
                    Some(incoming) => { conns.spawn(handle_incoming(self.ctx.clone(), incoming)); }
                    None => break false,
                },
                Some(_) = conns.join_next() => {}
                _ = &mut shutdown => break true,
            }
        };
        tracing::info!("shutting down");
        self.ctx.endpoint.set_server_config(None);
        // Closed before the distributions end: a pusher reading its control
        // stream then sees the close's reason, not the stream's end.
        self.ctx
            .endpoint
            .close(VarInt::from_u32(close::SHUTTING_DOWN), b"agent shutting down");
        self.ctx.stopping.cancel();
        self.ctx.dists.close();
        self.ctx.dists.wait().await;
        // Every distribution has ended (and said so to the keeper).
        self.ctx.keeper.stop();
        let _ = tokio::task::spawn_blocking(move || self.keeper.join()).await;
        conns.shutdown().await;
        let _ = tokio::time::timeout(CLOSE_GRACE, self.ctx.endpoint.wait_idle()).await;
        requested
    }
}

async fn handle_incoming(ctx: Arc<AgentCtx>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => return tracing::warn!(%remote, "refused connection: {e}"),
    };
    match net::peer_identity(&conn) {
        Ok(peer) if ctx.deny.contains(&peer.name) => {
            tracing::warn!(peer = %peer.name, %remote, "refused a denied identity");
            conn.close(
                VarInt::from_u32(close::NOT_AUTHORIZED),
                b"identity denied by this node",
            );
        }
        Ok(peer) => serve(ctx, conn, peer).await,
        Err(e) => tracing::warn!(%remote, "connection without a usable identity: {e}"),
    }
}

/// Serves a connection, whichever side opened it. Boxed because serving
/// may start a distribution, which dials peers and serves those connections.
pub(crate) fn serve(ctx: Arc<AgentCtx>, conn: Connection, peer: PeerIdentity) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let _open = ctx.registry.metrics().on_connection();
        tracing::debug!(peer = %peer.name, remote = %conn.remote_address(), "connected");
        let registry = ctx.registry.clone();
        let name = peer.name.clone();
        let max_first = if peer.role == Role::Pusher {
            MAX_ANNOUNCE_FRAME
        } else {
            MAX_FIRST_FRAME
        };
        let on_other = {
            let conn = conn.clone();
            move |msg, send, recv| on_control(ctx.clone(), conn.clone(), peer.clone(), msg, send, recv)
        };
        serve_connection(conn, name, max_first, registry, on_other).await;
    })
}

async fn on_control(
    ctx: Arc<AgentCtx>,
    conn: Connection,
    peer: PeerIdentity,
    msg: Message,
    send: SendStream,
    recv: RecvStream,
) {
    let pusher = peer.role == Role::Pusher;
    match msg {
        Message::Announce { manifest } if pusher => {
            let announced = dist::Announced {
                manifest,
                force: false,
            };
            start_dist(ctx, conn, peer, announced, send, recv)
        }
        Message::ForceAnnounce { manifest } if pusher => {
            let announced = dist::Announced {
                manifest,
                force: true,
            };
            start_dist(ctx, conn, peer, announced, send, recv)
        }
        Message::Query { refs } if pusher => answer_query(&ctx, send, refs).await,
        Message::PlanQuery { manifest } if pusher => {
            dry::answer_plan_query(&ctx, send, manifest, false).await
        }
        Message::ForcePlanQuery { manifest } if pusher => {
            dry::answer_plan_query(&ctx, send, manifest, true).await
        }
        Message::Announce { .. }
        | Message::ForceAnnounce { .. }
        | Message::Query { .. }
        | Message::PlanQuery { .. }
        | Message::ForcePlanQuery { .. } => {
            tracing::warn!(peer = %peer.name, "refused an announce from a {} identity", peer.role);
            let why = "only a pusher identity may announce a distribution or query the node";
            refuse(send, ErrorCode::NotAuthorized, why).await;
        }
        _ => refuse(send, ErrorCode::BadRequest, "unexpected first message").await,
    }
}

/// Runs an announced distribution in the agent's task set, until it ends or
/// the agent stops.
fn start_dist(
    ctx: Arc<AgentCtx>,
    conn: Connection,
    peer: PeerIdentity,
    announced: dist::Announced,
    send: SendStream,
    recv: RecvStream,
) {
    let stopping = ctx.stopping.clone();
    let run = dist::run(ctx.clone(), conn, peer, announced, send, recv);
    ctx.dists.spawn(async move {
        tokio::select! {
            _ = run => {}
            _ = stopping.cancelled() => {}
        }
    });
}

/// Answers `p2pimg status`: the image ID each reference names in the
/// engine, without touching any distribution.
async fn answer_query(ctx: &AgentCtx, mut send: SendStream, refs: Vec<String>) {
    let status = async {
        let engine = crate::engine::Engine::connect(&ctx.engine).await?;
        let (mut ids, mut digests) = (Vec::new(), Vec::new());
        for r in refs.iter().take(crate::content::manifest::MAX_IMAGES) {
            let identity = engine.identify(r).await?;
            ids.push(identity.as_ref().map(|i| i.id.clone()));
            digests.push(identity.and_then(|i| i.digest));
        }
        let engine = engine.about().to_string();
        Ok::<_, crate::engine::EngineError>(Message::Status { ids, engine, digests })
    };
    match status.await {
        Ok(status) => {
            let _ = crate::wire::write_frame(&mut send, &status).await;
            let _ = send.finish();
        }
        Err(e) => refuse(send, ErrorCode::Internal, &e.to_string()).await,
    }
}
