//! `push`: export images from the seed's engine, announce them to the
//! nodes, seed the swarm, follow every node to its end and report.
//!
//! ```text
//!  push ─► export (engine → chunks in the seed store) ─► manifest
//!       ─► per node: a task on its control stream: Announce → Plan ─┐
//!          all plans in ─► Start(peers) to every node that fetches  │ events ─► caller
//!          Progress… Done ◄──────────────────────────────────────────┘
//!       ─► every node done ─► Finish to all, close the endpoint
//!  the seed's Swarm actor serves chunks on the same connections
//! ```

pub mod bundle;
pub mod dryrun;
pub mod scratch;
mod session;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::VarInt;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::NodeEntry;
use crate::content::manifest::Manifest;
use crate::content::pack::PackOptions;
use crate::content::reference::{self, Reference, ReferenceError};
use crate::content::store::ChunkStore;
use crate::engine::node::full_name;
use crate::engine::{self, Engine, EngineSpec};
use crate::net::identity::Identity;
use crate::net::Timeouts;
use crate::ops::signal::Stop;
use crate::swarm::{DistShared, Registry, Swarm, SwarmOptions, UploadMeter};
use crate::wire::{close, PeerBytes, PeerInfo, Plan, Progress};

/// Where the pushed images come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Exported from a Docker Engine.
    Engine {
        /// The seed's engine.
        engine: EngineSpec,
        /// Image references on it.
        images: Vec<String>,
        /// How layers are cut and compressed.
        pack: PackOptions,
    },
    /// Every image of a bundle file; no engine needed.
    Bundle(PathBuf),
}

/// How long Start waits for the last plans after the first one came in:
/// reachable nodes plan within about a second; a node that is down takes
/// the 10 s connect timeout to fail and should not hold the others up.
const START_GRACE: Duration = Duration::from_secs(3);

/// Longest `--timeout`: a week is longer than any push should take, and far
/// from the overflow of adding it to the clock.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// What to push where.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Where the images come from.
    pub source: Source,
    /// Target nodes.
    pub nodes: Vec<NodeEntry>,
    /// Directory with ca.crt and the pusher's certificate and key.
    pub cluster_dir: PathBuf,
    /// Name of the identity in `cluster_dir` to push as.
    pub identity: String,
    /// Where the seed keeps chunks (locked while the push runs); a
    /// temporary directory when `None`.
    pub state_dir: Option<PathBuf>,
    /// Keep every chunk in `state_dir`, not only this push's.
    pub keep: bool,
    /// Extra tags applied on every node (a push of one image only).
    pub tags: Vec<String>,
    /// Time limit for the whole push; nodes not done by then fail.
    pub timeout: Option<Duration>,
    /// Most the seed uploads, in Mbit/s; unlimited if unset.
    pub max_upload_mbit: Option<u64>,
    /// Counts what the seed uploads while the push runs (the report has
    /// the per-node figures at the end).
    pub seed_meter: UploadMeter,
    /// Load the images again on every node, also where the engine holds
    /// them (`--force`): announced with `ForceAnnounce`.
    pub force: bool,
}

/// Why a push could not start.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The pusher identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] crate::net::identity::IdentityError),
    /// The seed's engine could not export the images.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The bundle could not be read or is damaged.
    #[error(transparent)]
    Bundle(#[from] crate::content::bundle::BundleError),
    /// `--tag` was given with more or fewer than one image, or is invalid.
    #[error("--tag {0}")]
    Tag(String),
    /// An image is named by a reference Docker would refuse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Exporting or packing failed.
    #[error("export failed: {0}")]
    Export(String),
    /// The seed's chunk store is unusable.
    #[error("seed state directory: {0}")]
    Store(#[from] crate::content::store::StoreError),
    /// The seed's state directory is another process's, or unusable.
    #[error("seed {0}")]
    Scratch(#[from] scratch::ScratchError),
    /// The QUIC endpoint could not be opened.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// SIGINT or SIGTERM arrived before any node was told of the push.
    #[error("interrupted by {} before any node was told of the push; nothing was sent", .0.name())]
    Interrupted(Stop),
}

/// Something that happened during a push, for a progress display.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PushEvent {
    /// The images are exported and packed.
    Exported {
        images: usize,
        layers: usize,
        chunks: usize,
        bytes: u64,
        compressed: u64,
        secs: f64,
    },
    /// A node answered the announce with its plan. `reload`: it holds every
    /// image and loads them again (`--force`), where it would have skipped.
    Planned { node: String, plan: Plan, reload: bool },
    /// A node reported progress; `progress.reason` says what it waits for
    /// while it cannot move on.
    Progress { node: String, progress: Progress },
    /// The pusher waits on a node before the node plans, and why: it does
    /// not answer and is dialed again, its Docker Engine is slow to answer,
    /// or it waits for another push of the same images to finish there. A
    /// `Planned` event ends it.
    Waiting { node: String, reason: String },
    /// A node finished.
    Finished { node: String, status: NodeStatus },
}

/// How a node ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum NodeStatus {
    /// The images were loaded.
    Loaded,
    /// The node already held every image.
    Skipped,
    /// The node held every image and loaded them again (`--force`).
    Reloaded,
    /// The node failed, and why.
    Failed(String),
}

/// The result for one node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// How it ended.
    pub status: NodeStatus,
    /// What it planned to fetch, if it got that far.
    pub plan: Option<Plan>,
    /// Verified chunks it received, per sending peer.
    pub received: Vec<PeerBytes>,
}

/// The result of a push.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    /// Manifest ID (hex).
    pub manifest: String,
    /// Pushed images as (reference, image ID).
    pub images: Vec<(String, String)>,
    /// Compressed size of all chunks.
    pub compressed_bytes: u64,
    /// Per node results, in inventory order.
    pub nodes: Vec<NodeReport>,
    /// The pusher's identity name, as nodes name the seed in `received`.
    pub pusher: String,
    /// Bytes the seed uploaded, per receiving node.
    pub seed_uploaded: Vec<PeerBytes>,
    /// Seconds from start to the last node done.
    pub secs: f64,
    /// The signal that cut the push short, if one did: the nodes not done
    /// by then are failed, saying so.
    #[serde(skip)]
    pub interrupted: Option<Stop>,
}

impl PushReport {
    /// True when every node has every image.
    pub fn success(&self) -> bool {
        self.nodes.iter().all(|n| {
            matches!(
                n.status,
                NodeStatus::Loaded | NodeStatus::Skipped | NodeStatus::Reloaded
            )
        })
    }
}

/// Runs a push to the end; node failures are in the report, not errors.
/// When `stop` resolves (SIGINT or SIGTERM) or `--timeout` runs out, the
/// nodes not done yet are failed and told the pusher is leaving
/// ([`close::PUSHER_LEFT`]): they end the distribution at once, keeping
/// their verified chunks for the next push.
/// With the default timeouts.
pub async fn push(
    opts: PushOptions,
    events: mpsc::UnboundedSender<PushEvent>,
    stop: impl Future<Output = Stop>,
) -> Result<PushReport, PushError> {
    push_with(opts, Timeouts::default(), events, stop).await
}

/// [`push`] with these `timeouts` (tests shorten them).
pub async fn push_with(
    opts: PushOptions,
    timeouts: Timeouts,
    events: mpsc::UnboundedSender<PushEvent>,
    stop: impl Future<Output = Stop>,
) -> Result<PushReport, PushError> {
    tokio::pin!(stop);
    let start = Instant::now();
    let images = match &opts.source {
        Source::Engine { images, .. } => images.as_slice(),
        Source::Bundle(_) => &[],
    };
    check_request(images, &opts.tags)?;
    let identity = Identity::load_from_dir(&opts.cluster_dir, &opts.identity)?;
    let seed_store = scratch::SeedStore::open(opts.state_dir.as_deref())?;
    let store = seed_store.store().clone();
    let manifest = tokio::select! {
        manifest = load_source(&opts.source, &store, &events) => manifest?,
        signal = &mut stop => return Err(PushError::Interrupted(signal)),
    };
    let manifest = with_tags(manifest, &opts.tags)?;
    // A deadline past the clock's range is no deadline (the CLI caps it at MAX_TIMEOUT).
    let deadline = (opts.timeout)
        .and_then(|t| start.checked_add(t))
        .map(tokio::time::Instant::from_std);
    let shared = DistShared::with_meter(manifest.clone(), store, opts.seed_meter.clone());
    let chunks = manifest.chunks.len();
    let (seed, _task) = Swarm::spawn(
        shared.clone(),
        &vec![false; chunks],
        &vec![true; chunks],
        SwarmOptions {
            seeding: true,
            seed_stall: timeouts.seed_stall,
            ..SwarmOptions::default()
        },
    );
    let registry = Registry::for_seed(opts.max_upload_mbit);
    let registered = registry.register(seed);
    let transport = crate::net::transport_config_with(&timeouts);
    let endpoint = crate::net::endpoint_with(&identity, bind_addr(&opts.nodes), transport)?;
    let (cut_tx, cut_rx) = watch::channel(None);
    let sessions = run_sessions(
        &endpoint,
        &registry,
        timeouts,
        &opts.nodes,
        (&manifest, opts.force),
        &events,
        cut_rx,
    );
    let (nodes, interrupted) = cut_short(sessions, &cut_tx, stop, deadline).await;
    drop(registered);
    // Sessions cut short closed their connections as leaving for good.
    match cut_tx.borrow().as_deref() {
        Some(why) => endpoint.close(VarInt::from_u32(close::PUSHER_LEFT), why.as_bytes()),
        None => endpoint.close(VarInt::from_u32(close::DONE), b"push done"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    if !opts.keep {
        // The images are where they should be: tidying up cannot fail the push.
        if let Err(e) = seed_store.retain_only(&manifest) {
            tracing::warn!("could not drop older chunks from the seed's state directory: {e}");
        }
    }
    Ok(PushReport {
        manifest: shared.id.to_hex(),
        images: manifest
            .images
            .iter()
            .flat_map(|i| i.refs.iter().map(|r| (r.clone(), i.id.clone())))
            .collect(),
        compressed_bytes: manifest.compressed_size(),
        nodes,
        pusher: identity.name.clone(),
        seed_uploaded: shared.served(),
        secs: start.elapsed().as_secs_f64(),
        interrupted,
    })
}

/// Runs `sessions` to their end; if `stop` resolves or `deadline` passes
/// first, sends the reason on `cut`, which fails every node not done yet
/// and ends its session. Returns the reports and the signal, if one came.
async fn cut_short(
    sessions: impl Future<Output = Vec<NodeReport>>,
    cut: &watch::Sender<Option<String>>,
    stop: Pin<&mut impl Future<Output = Stop>>,
    deadline: Option<tokio::time::Instant>,
) -> (Vec<NodeReport>, Option<Stop>) {
    tokio::pin!(sessions);
    let mut stop = stop;
    let timeout = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    let (mut interrupted, mut timed_out) = (None, false);
    loop {
        tokio::select! {
            nodes = &mut sessions => return (nodes, interrupted),
            signal = &mut stop, if interrupted.is_none() => {
                interrupted = Some(signal);
                cut_with(cut, format!("the push was interrupted ({})", signal.name()));
            }
            _ = &mut timeout, if !timed_out => {
                timed_out = true;
                cut_with(cut, "the push timed out (--timeout)".into());
            }
        }
    }
}

/// Sends the first reason to cut the push; a later one changes nothing.
fn cut_with(cut: &watch::Sender<Option<String>>, why: String) {
    cut.send_if_modified(|c| match c {
        Some(_) => false,
        None => {
            *c = Some(why);
            true
        }
    });
}

/// Fills the seed's store from the source and returns the manifest.
async fn load_source(
    source: &Source,
    store: &ChunkStore,
    events: &mpsc::UnboundedSender<PushEvent>,
) -> Result<Arc<Manifest>, PushError> {
    let t = Instant::now();
    let manifest = match source {
        Source::Engine { engine, images, pack } => export(engine, images, pack, store).await?,
        Source::Bundle(path) => {
            let (path, store) = (path.clone(), store.clone());
            tokio::task::spawn_blocking(move || -> Result<Manifest, PushError> {
                let bundle = crate::content::bundle::Bundle::open(&path)?;
                bundle.import(&store)?;
                Ok(bundle.manifest().clone())
            })
            .await
            .map_err(|e| PushError::Export(e.to_string()))??
        }
    };
    let _ = events.send(PushEvent::Exported {
        images: manifest.images.len(),
        layers: manifest.layers.len(),
        chunks: manifest.chunks.len(),
        bytes: manifest.layers.iter().map(|l| l.size).sum(),
        compressed: manifest.compressed_size(),
        secs: t.elapsed().as_secs_f64(),
    });
    Ok(Arc::new(manifest))
}

/// Checks what a push names before anything is read or exported: each image
/// is a reference Docker accepts or an image ID, each tag a reference that can
/// be applied as a tag (`--tag` also names the image it applies to).
pub fn check_request(images: &[String], tags: &[String]) -> Result<(), PushError> {
    for image in images {
        reference::check_image(image)?;
    }
    for tag in tags {
        Reference::parse_tag(tag).map_err(|e| PushError::Tag(e.to_string()))?;
    }
    Ok(())
}

/// Adds `tags` to the manifest's only image, so every node applies them.
fn with_tags(manifest: Arc<Manifest>, tags: &[String]) -> Result<Arc<Manifest>, PushError> {
    if tags.is_empty() {
        return Ok(manifest);
    }
    if manifest.images.len() != 1 {
        let n = manifest.images.len();
        return Err(PushError::Tag(format!(
            "applies only to a push of one image; this one has {n}"
        )));
    }
    let mut m = (*manifest).clone();
    for tag in tags {
        Reference::parse_tag(tag).map_err(|e| PushError::Tag(e.to_string()))?;
        if !m.images[0].refs.contains(tag) {
            m.images[0].refs.push(tag.clone());
        }
    }
    m.validate()
        .map_err(|e| PushError::Tag(format!("cannot be applied: {e}")))?;
    Ok(Arc::new(m))
}

/// Exports `images` from the engine `spec` names into `store`,
/// failing early, with the image's name, if one is missing.
pub async fn export(
    spec: &EngineSpec,
    images: &[String],
    pack: &PackOptions,
    store: &ChunkStore,
) -> Result<Manifest, PushError> {
    check_request(images, &[])?;
    let engine = Engine::connect(spec).await?;
    engine.resolve(images).await?;
    let mut manifest = engine::export_to_manifest(&engine, images, store, pack)
        .await
        .map_err(|e| PushError::Export(e.to_string()))?;
    as_asked(&mut manifest, images);
    Ok(manifest)
}

/// Writes each exported reference the way it was asked for: podman exports
/// `app:1` as `localhost/app:1` (or `docker.io/library/app:1`), and nodes
/// should be tagged `app:1`, as with any other seed.
fn as_asked(manifest: &mut Manifest, asked: &[String]) {
    let same = |exported: &str, asked: &str| {
        exported.strip_prefix("localhost/") == Some(asked) || full_name(exported) == full_name(asked)
    };
    for image in &mut manifest.images {
        for r in &mut image.refs {
            if let Some(a) = asked.iter().find(|a| same(r, a)) {
                r.clone_from(a);
            }
        }
    }
}

/// Sends Start once every node has planned, or [`START_GRACE`] after the
/// first plan, whichever comes first: an unreachable node does not hold the
/// others up. A node that plans later starts at once, and the peer list
/// grows for whoever starts after it. Returns when every node is done.
async fn coordinate(
    nodes: &[NodeEntry],
    mut planned_rx: mpsc::UnboundedReceiver<(String, bool)>,
    mut done_rx: mpsc::UnboundedReceiver<()>,
    start_tx: &watch::Sender<Option<Vec<PeerInfo>>>,
) {
    let peers_of = |fetching: &[String]| -> Vec<PeerInfo> {
        let chosen = nodes.iter().filter(|n| fetching.contains(&n.name));
        chosen
            .map(|n| PeerInfo {
                name: n.name.clone(),
                addr: n.addr,
            })
            .collect()
    };
    let (mut planned, mut done) = (0, 0);
    let mut fetching = Vec::new();
    let mut grace: Option<tokio::time::Instant> = None;
    let mut started = false;
    while done < nodes.len() {
        let grace_over = grace.is_some_and(|g| tokio::time::Instant::now() >= g);
        if !started && (planned == nodes.len() || grace_over) {
            start_tx.send_replace(Some(peers_of(&fetching)));
            started = true;
        }
        let wake = grace.unwrap_or_else(|| tokio::time::Instant::now() + START_GRACE);
        tokio::select! {
            Some((name, fetches)) = planned_rx.recv() => {
                planned += 1;
                if fetches {
                    fetching.push(name);
                }
                grace.get_or_insert_with(|| tokio::time::Instant::now() + START_GRACE);
                if started {
                    start_tx.send_replace(Some(peers_of(&fetching)));
                }
            }
            received = done_rx.recv() => match received {
                Some(()) => done += 1,
                None => break,
            },
            _ = tokio::time::sleep_until(wake), if !started => {}
        }
    }
}

/// Binds the pusher's endpoint in the address family of the nodes.
pub(crate) fn bind_addr(nodes: &[NodeEntry]) -> SocketAddr {
    match nodes.first().map(|n| n.addr) {
        Some(SocketAddr::V6(_)) => "[::]:0".parse().expect("valid address"),
        _ => "0.0.0.0:0".parse().expect("valid address"),
    }
}

/// The announce of `manifest`: `ForceAnnounce` with `force`.
fn announce(manifest: &Manifest, force: bool) -> crate::wire::Message {
    let manifest = manifest.clone();
    match force {
        true => crate::wire::Message::ForceAnnounce { manifest },
        false => crate::wire::Message::Announce { manifest },
    }
}

/// Runs one session per node, each with `timeouts`, announcing `manifest`
/// (forced or not); Start goes out once every node has planned (or
/// failed), Finish once every node is done.
async fn run_sessions(
    endpoint: &quinn::Endpoint,
    registry: &Registry,
    timeouts: Timeouts,
    nodes: &[NodeEntry],
    (manifest, force): (&Arc<Manifest>, bool),
    events: &mpsc::UnboundedSender<PushEvent>,
    cut: watch::Receiver<Option<String>>,
) -> Vec<NodeReport> {
    let (planned_tx, planned_rx) = mpsc::unbounded_channel::<(String, bool)>();
    let (start_tx, start_rx) = watch::channel::<Option<Vec<PeerInfo>>>(None);
    let (finish_tx, finish_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::unbounded_channel::<()>();
    let announce = Arc::new(crate::wire::encode(&announce(manifest, force)));
    let mut tasks = JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let session = session::Session {
            endpoint: endpoint.clone(),
            registry: registry.clone(),
            node: node.clone(),
            announce: announce.clone(),
            force,
            events: events.clone(),
            planned: planned_tx.clone(),
            start: start_rx.clone(),
            finish: finish_rx.clone(),
            done: done_tx.clone(),
            cut: cut.clone(),
            conn: None,
            timeouts,
        };
        tasks.spawn(async move { (i, session.run().await) });
    }
    // Only the sessions hold senders now: if one dies, the receivers see it.
    drop((planned_tx, done_tx));
    coordinate(nodes, planned_rx, done_rx, &start_tx).await;
    let _ = finish_tx.send(true);
    let mut reports: Vec<(usize, NodeReport)> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        reports.extend(r.ok());
    }
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_names_go_back_to_what_was_asked() {
        let mut m = crate::content::manifest::tests::sample();
        m.images[0].refs = vec![
            "localhost/app:1".into(),
            "docker.io/library/tool:2".into(),
            "localhost/other:3".into(),
        ];
        as_asked(&mut m, &["app:1".into(), "tool:2".into()]);
        assert_eq!(m.images[0].refs, ["app:1", "tool:2", "localhost/other:3"]);
    }
}
