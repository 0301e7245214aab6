//! `DockerApi`: a Docker Engine (or podman) over its API (bollard): connect, inspect,
//! list what it holds, export (`GET /images/get`), load (`POST /images/load`)
//! and tag.
//!
//! Every error names the engine's address, so a message from one of many
//! nodes says which daemon failed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::errors::Error as BollardError;
use bollard::image::{ImportImageOptions, ListImagesOptions, TagImageOptions};
use bollard::{Docker, API_DEFAULT_VERSION};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};

use super::progress::{progress_error, progress_text};
use super::{Held, HeldLayers};
use crate::content::manifest::chain_ids;
use crate::content::platform::Platform;

/// Seconds an ordinary API call may take: bollard's own default, long enough
/// for a busy engine, short enough that a hung one is reported.
const API_TIMEOUT_SECS: u64 = 120;
/// How long an export or load may take to answer. bollard's timeout runs
/// until the response headers, and dockerd sends those only after it has
/// read and unpacked a whole archive (load) or staged a whole image (export
/// on 20.10), so it must cover the transfer: an hour is tens of GB on a slow
/// disk. A load that streams while the node fetches gets this long after its
/// last chunk arrived ([`LOAD_TIMEOUT`] for the caller to apply).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a load may take once the engine has been sent every byte of it.
pub const LOAD_TIMEOUT: Duration = TRANSFER_TIMEOUT;
/// bollard's timeout for a load that streams while the node still fetches:
/// the fetch has limits of its own (a stall limit, the push's `--timeout`),
/// and the caller bounds what follows with [`LOAD_TIMEOUT`].
const STREAMING_LOAD_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Images inspected at once by [`DockerApi::held`]: enough to hide round trips,
/// few enough not to load a node's engine.
const INSPECT_CONCURRENCY: usize = 8;

/// A connection to one Docker Engine.
#[derive(Clone, Debug)]
pub struct DockerApi {
    docker: Docker,
    host: String,
    /// When a load last heard from the engine: it took a frame of the
    /// archive or sent a progress message. Shared by clones.
    heard: Arc<Mutex<Instant>>,
}

/// An image the engine holds, as `push` needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The reference it was asked for, such as `app:1.4`.
    pub reference: String,
    /// `sha256:<hex>` image ID (the digest of its config).
    pub id: String,
    /// Its layers' diffIDs, bottom first.
    pub diff_ids: Vec<String>,
}

/// `GET /info`'s `driver-type` of an engine whose images live in containerd
/// (Docker 25+ with the containerd image store; the default from 29).
const CONTAINERD_SNAPSHOTTER: &str = "io.containerd.snapshotter.v1";

/// What a Docker-API engine says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerAbout {
    /// The engine is podman's Docker-compatible service.
    pub podman: bool,
    /// Its version, such as `26.1.5`.
    pub version: String,
    /// Its storage driver (`overlay2`, or `overlayfs`, the containerd
    /// snapshotter, with the containerd image store).
    pub driver: String,
    /// Its images live in containerd (the containerd image store).
    pub containerd_store: bool,
    /// That containerd's socket, where the engine says (API 1.46+).
    pub containerd_address: Option<String>,
    /// The containerd namespace of its images, where the engine says.
    pub containerd_namespace: Option<String>,
    /// The platform it runs on.
    pub platform: Platform,
    /// Its data root, where it keeps images.
    pub data_root: Option<String>,
}

/// A Docker Engine operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The address is neither a unix socket nor plain HTTP.
    #[error(
        "docker host {host:?} is not usable: {reason} \
         (use unix:///var/run/docker.sock, a socket path or tcp://HOST:PORT)"
    )]
    BadHost { host: String, reason: String },
    /// The engine did not answer the version check or the ping.
    #[error(
        "cannot reach the Docker Engine at {host}: {source} \
         (is dockerd running? set docker_host in agent.toml / --docker-host)"
    )]
    Unreachable { host: String, source: BollardError },
    /// An image asked for by name or ID does not exist on the engine.
    #[error(
        "image {reference} not found in the Docker Engine at {host} \
         (check the name with `docker images`, or build or pull it first)"
    )]
    NoSuchImage { reference: String, host: String },
    /// An API call failed.
    #[error("the Docker Engine at {host} failed to {action}: {source}")]
    Api {
        host: String,
        action: String,
        source: BollardError,
    },
    /// The engine answered with something this client cannot use.
    #[error("the Docker Engine at {host} sent an unusable answer to {action}: {detail}")]
    Malformed {
        host: String,
        action: String,
        detail: String,
    },
    /// `POST /images/load` failed: an error in the progress stream, a printed
    /// unpack failure, an unparseable stream or an HTTP error.
    #[error("the Docker Engine at {host} did not load the images: {message}")]
    Load { host: String, message: String },
    /// containerd refused or failed (containerd itself, or the one under
    /// Docker's containerd image store).
    #[error(transparent)]
    Containerd(#[from] super::containerd::ContainerdError),
    /// A Docker Engine with the containerd image store whose containerd
    /// cannot be reached: p2pimg reads and loads its images there.
    #[error(
        "the Docker Engine at {host} keeps its images in containerd (the containerd image store), \
         and p2pimg cannot use that containerd: {source} (set containerd_host in agent.toml / \
         --containerd-host to its socket, usually unix:///run/containerd/containerd.sock, and \
         containerd_namespace if dockerd runs with --containerd-namespace)"
    )]
    DockerContainerd {
        host: String,
        source: super::containerd::ContainerdError,
    },
    /// A reference cannot be applied as a tag.
    #[error("cannot tag {reference}: {reason} (use NAME:TAG, such as app:1.4)")]
    BadReference { reference: String, reason: String },
}

impl DockerApi {
    /// Connects to `host` (`unix:///path`, a socket path, `tcp://host:port` or
    /// `http://host:port`), negotiates the API version and pings.
    pub async fn connect(host: &str) -> Result<DockerApi, EngineError> {
        let docker = open(host)?;
        let unreachable = |source| EngineError::Unreachable {
            host: host.to_string(),
            source,
        };
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(DockerApi {
            docker,
            host: host.to_string(),
            heard: Arc::new(Mutex::new(Instant::now())),
        })
    }

    /// The address this engine was reached at, for messages.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// How long since a load last heard from the engine: since it took
    /// the last frame of the archive or sent its last progress message (or
    /// since the engine was reached, before any load). An engine that
    /// unpacks reads the archive and reports each layer as it goes, so a
    /// long silence means it is hung (or stopped with SIGSTOP).
    pub fn quiet_for(&self) -> Duration {
        self.heard.lock().expect("heard lock").elapsed()
    }

    fn on_heard(&self) {
        *self.heard.lock().expect("heard lock") = Instant::now();
    }

    /// What the engine says about itself (`GET /version`, `GET /info`):
    /// product, version, image store, platform, data root.
    pub async fn about(&self) -> Result<DockerAbout, EngineError> {
        // Both at once: podman takes up to a second for each.
        let (version, info) = tokio::join!(self.docker.version(), self.docker.info());
        let version = version.map_err(|e| self.api("read its version", e))?;
        let info = info.map_err(|e| self.api("read its info", e))?;
        let podman = version
            .components
            .iter()
            .flatten()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"));
        let driver_status = info.driver_status.unwrap_or_default();
        let containerd_store = driver_status
            .iter()
            .any(|pair| pair.len() == 2 && pair[0] == "driver-type" && pair[1] == CONTAINERD_SNAPSHOTTER);
        let containerd = info.containerd.unwrap_or_default();
        Ok(DockerAbout {
            podman,
            version: version.version.unwrap_or_default(),
            driver: info.driver.unwrap_or_default(),
            containerd_store,
            containerd_address: containerd.address.filter(|a| !a.is_empty()),
            containerd_namespace: containerd
                .namespaces
                .and_then(|n| n.containers)
                .filter(|n| !n.is_empty()),
            platform: Platform::from_uname(
                info.os_type.as_deref().unwrap_or("linux"),
                info.architecture.as_deref().unwrap_or_default(),
            ),
            data_root: info.docker_root_dir.filter(|d| !d.is_empty()),
        })
    }

    /// The underlying bollard client, for calls this type does not wrap.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Inspects each reference; a missing one is [`EngineError::NoSuchImage`].
    pub async fn resolve(&self, refs: &[String]) -> Result<Vec<ResolvedImage>, EngineError> {
        let mut out = Vec::with_capacity(refs.len());
        for reference in refs {
            let (id, diff_ids) =
                self.inspect_layers(reference)
                    .await?
                    .ok_or_else(|| EngineError::NoSuchImage {
                        reference: reference.clone(),
                        host: self.host.clone(),
                    })?;
            out.push(ResolvedImage {
                reference: reference.clone(),
                id,
                diff_ids,
            });
        }
        Ok(out)
    }

    /// Every image ID and layer chain ID the engine holds, including
    /// untagged and intermediate images.
    pub async fn held(&self) -> Result<Held, EngineError> {
        let options = ListImagesOptions::<String> {
            all: true,
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(|e| self.api("list images", e))?;
        let inspections = summaries
            .into_iter()
            .map(|summary| async move { self.inspect_layers(&summary.id).await });
        let mut inspected = futures::stream::iter(inspections).buffer_unordered(INSPECT_CONCURRENCY);
        let (mut image_ids, mut chains) = (HashSet::new(), HashSet::new());
        while let Some(found) = inspected.next().await {
            // An image removed between the listing and its inspection is not held.
            if let Some((id, diff_ids)) = found? {
                image_ids.insert(id);
                chains.extend(chain_ids(diff_ids.iter().map(String::as_str)));
            }
        }
        Ok(Held {
            image_ids,
            layers: HeldLayers::Chains(chains),
        })
    }

    /// The engine's `docker save` archive of `refs` (`GET /images/get`), as a
    /// stream: nothing is buffered beyond what the caller holds.
    pub fn export(&self, refs: &[String]) -> impl Stream<Item = Result<Bytes, EngineError>> + Send + 'static {
        let names: Vec<&str> = refs.iter().map(String::as_str).collect();
        let listed = refs.join(", ");
        let host = self.host.clone();
        self.transfer_client()
            .export_images(&names)
            .map_err(move |source| export_error(&host, &listed, source))
    }

    /// Streams an image archive into `POST /images/load` and reads the
    /// progress to its end; any failure it reports is [`EngineError::Load`].
    /// A body that waits for chunks still being fetched is `streaming`: its
    /// request may stay open for as long as the fetch takes.
    pub async fn load(
        &self,
        body: impl Stream<Item = Bytes> + Send + 'static,
        streaming: bool,
    ) -> Result<(), EngineError> {
        let options = ImportImageOptions { quiet: false };
        let timeout = if streaming {
            STREAMING_LOAD_TIMEOUT
        } else {
            TRANSFER_TIMEOUT
        };
        let client = self.docker.clone().with_timeout(timeout);
        self.on_heard();
        let taken = self.clone();
        let body = body.inspect(move |_| taken.on_heard());
        let mut progress = client.import_image_stream(options, body, None);
        while let Some(item) = progress.next().await {
            self.on_heard();
            let info = item.map_err(|e| match is_transport(&e) {
                // The engine went away mid-load (stopped, restarted, crashed).
                true => self.unreachable(e),
                false => self.load_failed(load_error_message(e)),
            })?;
            if let Some(message) = progress_error(&info) {
                return Err(self.load_failed(message));
            }
            if let Some(text) = progress_text(&info) {
                tracing::debug!(host = %self.host, "load: {text}");
            }
        }
        Ok(())
    }

    /// Tags `image_id` as `reference` (`repo[:tag]`, `latest` when no tag).
    pub async fn tag(&self, image_id: &str, reference: &str) -> Result<(), EngineError> {
        let (repo, tag) = split_reference(reference)?;
        let options = TagImageOptions { repo, tag };
        self.docker
            .tag_image(image_id, Some(options))
            .await
            .map_err(|e| self.api(&format!("tag {image_id} as {reference}"), e))
    }

    /// The ID of the image `reference` names, or `None` if there is none.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        Ok(self.inspect_layers(reference).await?.map(|(id, _)| id))
    }

    /// ID and diffIDs of an image, `None` when the engine has no such image.
    async fn inspect_layers(&self, reference: &str) -> Result<Option<(String, Vec<String>)>, EngineError> {
        let action = || format!("inspect image {reference}");
        let inspect = match self.docker.inspect_image(reference).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.api(&action(), e)),
        };
        let id = inspect.id.ok_or_else(|| self.malformed(action(), "no Id"))?;
        let diff_ids = inspect.root_fs.and_then(|r| r.layers).unwrap_or_default();
        Ok(Some((id, diff_ids)))
    }

    /// A client whose timeout covers a whole export or load.
    fn transfer_client(&self) -> Docker {
        self.docker.clone().with_timeout(TRANSFER_TIMEOUT)
    }

    fn api(&self, action: &str, source: BollardError) -> EngineError {
        if is_transport(&source) {
            return self.unreachable(source);
        }
        EngineError::Api {
            host: self.host.clone(),
            action: action.to_string(),
            source,
        }
    }

    fn malformed(&self, action: String, detail: &str) -> EngineError {
        EngineError::Malformed {
            host: self.host.clone(),
            action,
            detail: detail.to_string(),
        }
    }

    fn load_failed(&self, message: String) -> EngineError {
        EngineError::Load {
            host: self.host.clone(),
            message,
        }
    }
}

/// Opens a bollard client for `host` without contacting it.
fn open(host: &str) -> Result<Docker, EngineError> {
    let bad = |reason: String| EngineError::BadHost {
        host: host.to_string(),
        reason,
    };
    let result = if let Some(path) = socket_path(host) {
        Docker::connect_with_unix(path, API_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, API_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else {
        return Err(bad("unsupported scheme".into()));
    };
    result.map_err(|e| match e {
        BollardError::SocketNotFoundError(path) => EngineError::Unreachable {
            host: host.to_string(),
            source: BollardError::SocketNotFoundError(path),
        },
        other => bad(other.to_string()),
    })
}

/// The socket path of a `unix://` address or a bare path.
fn socket_path(host: &str) -> Option<&str> {
    match host.strip_prefix("unix://") {
        Some(path) => Some(path),
        None if host.starts_with('/') || host.starts_with('.') => Some(host),
        None => None,
    }
}

/// Splits `reference` into repository and tag, as the tag API wants them.
/// The tag is what follows the last `:` after the last `/`, so the port in
/// `registry:5000/app` is not mistaken for one; no tag means `latest`.
pub fn split_reference(reference: &str) -> Result<(&str, &str), EngineError> {
    let bad = |reason: &str| EngineError::BadReference {
        reference: reference.to_string(),
        reason: reason.to_string(),
    };
    if reference.contains('@') {
        return Err(bad("a digest reference cannot be a tag"));
    }
    let name_start = reference.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match reference[name_start..].rfind(':') {
        Some(i) => (&reference[..name_start + i], &reference[name_start + i + 1..]),
        None => (reference, "latest"),
    };
    if repo.is_empty() || tag.is_empty() {
        return Err(bad("empty repository or tag"));
    }
    Ok((repo, tag))
}

/// An export failure; a 404 means a reference is unknown (dockerd does not
/// say which: "reference does not exist").
fn export_error(host: &str, listed: &str, source: BollardError) -> EngineError {
    if is_not_found(&source) {
        let reference = match listed.contains(", ") {
            true => format!("one of {listed}"),
            false => listed.to_string(),
        };
        return EngineError::NoSuchImage {
            reference,
            host: host.to_string(),
        };
    }
    EngineError::Api {
        host: host.to_string(),
        action: format!("export {listed}"),
        source,
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError { status_code: 404, .. }
    )
}

/// The message for a failed load, by what went wrong with the response.
impl DockerApi {
    fn unreachable(&self, source: BollardError) -> EngineError {
        EngineError::Unreachable {
            host: self.host.clone(),
            source,
        }
    }
}

impl EngineError {
    /// True when the engine did not answer at all (down, restarting, its
    /// socket gone), as opposed to answering with an error: trying again once
    /// it is back may succeed.
    pub fn is_unreachable(&self) -> bool {
        match self {
            EngineError::Unreachable { .. } => true,
            EngineError::Containerd(e) | EngineError::DockerContainerd { source: e, .. } => {
                e.is_unreachable()
            }
            _ => false,
        }
    }
}

/// Whether a bollard error is a failure to talk to the engine at all rather
/// than an answer from it.
fn is_transport(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::IOError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::RequestTimeoutError
            | BollardError::SocketNotFoundError(_)
    )
}

fn load_error_message(e: BollardError) -> String {
    match e {
        BollardError::DockerStreamError { error } => error,
        BollardError::DockerResponseServerError { status_code, message } => {
            format!("HTTP {status_code}: {message}")
        }
        BollardError::JsonDataError { message, .. } => {
            format!("unparseable progress stream: {message}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_reference_handles_ports_and_missing_tags() {
        let ok = |r| split_reference(r).unwrap();
        assert_eq!(ok("app:1.4"), ("app", "1.4"));
        assert_eq!(ok("app"), ("app", "latest"));
        assert_eq!(ok("registry:5000/app:1.4"), ("registry:5000/app", "1.4"));
        assert_eq!(ok("registry:5000/team/app"), ("registry:5000/team/app", "latest"));
        assert!(split_reference("app@sha256:abcd").is_err());
        assert!(split_reference("app:").is_err());
    }

    #[test]
    fn socket_paths() {
        assert_eq!(socket_path("unix:///run/d.sock"), Some("/run/d.sock"));
        assert_eq!(socket_path("/run/d.sock"), Some("/run/d.sock"));
        assert_eq!(socket_path("tcp://127.0.0.1:2375"), None);
    }

    #[tokio::test]
    async fn unreachable_engine_names_the_host_and_the_fix() {
        let err = DockerApi::connect("unix:///nonexistent/p2pimg/docker.sock")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, EngineError::Unreachable { .. }), "{text}");
        assert!(text.contains("unix:///nonexistent/p2pimg/docker.sock"), "{text}");
        assert!(text.contains("--docker-host"), "{text}");
        let err = DockerApi::connect("ssh://node1").await.unwrap_err();
        assert!(matches!(err, EngineError::BadHost { .. }), "{err}");
    }

    #[tokio::test]
    async fn refused_tcp_port_is_unreachable() {
        // Port 1 on loopback: nothing listens there, the connection is refused.
        let err = DockerApi::connect("tcp://127.0.0.1:1").await.unwrap_err();
        assert!(matches!(err, EngineError::Unreachable { .. }), "{err}");
    }
}
