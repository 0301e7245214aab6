//! `Containerd`: a containerd over its gRPC API (the `containerd-client` bindings),
//! in one namespace: what it holds (images, blobs, snapshots), writing blobs,
//! unpacking layers into a snapshotter, import, tagging and export.
//!
//! Kubernetes nodes keep their images in the namespace `k8s.io`; Docker Engine's
//! containerd image store keeps them in `moby`. containerd reads the namespace (and a
//! lease, when one is held) from gRPC metadata on every request.
//!
//! - `lease`: leases, which keep what an import writes from the garbage collector.
//! - `content`: the content store: streaming a blob in (Content.Write), reading one.
//! - `resolve`: an image record → its platform manifest, config and layers.
//! - `unpack`: layers into snapshots as containerd's own unpacker does; import.
//! - `export`: images as an OCI-layout tar stream.
//!
//! Every error names the containerd's address, so a message from one of many nodes
//! says which daemon failed.

mod content;
mod export;
mod lease;
mod resolve;
mod unpack;

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{Kind, ListSnapshotsRequest};
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    content_client::ContentClient, images_client::ImagesClient, CreateImageRequest, GetImageRequest, Image,
    ListContentRequest, UpdateImageRequest,
};
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Response, Status};
use futures::StreamExt;

use crate::content::reference::Reference;

/// Seconds an ordinary API call may take: containerd answers metadata calls in
/// milliseconds, so a minute only fires for a hung or overloaded daemon.
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting and the version check may take: the socket is local.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one layer's Diff.Apply may take: it decompresses and unpacks the whole
/// layer on the server before answering; an hour is tens of GB on a slow disk.
const APPLY_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest gRPC message accepted: Images.List answers with every image in one
/// message, and a busy Kubernetes node has thousands of them with labels.
const MAX_MESSAGE: usize = 64 << 20;
/// gRPC metadata key containerd reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// gRPC metadata key containerd reads the lease from.
const LEASE_HEADER: &str = "containerd-lease";

/// A connection to one containerd, in one namespace. Clone is cheap.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    host: String,
    namespace: String,
    namespace_value: MetadataValue<Ascii>,
    snapshotter: String,
    /// The lease every request is made under, if this handle holds one.
    lease: Option<MetadataValue<Ascii>>,
}

/// An image record as p2pimg needs it, resolved for this host's platform (for an
/// index target: the manifest for linux on this host's architecture).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    /// The name as containerd stores it, such as `docker.io/library/app:1`.
    pub name: String,
    /// The record's target (a manifest or an index).
    pub target: Descriptor,
    /// The platform manifest's digest (`target.digest` unless the target is an index).
    pub manifest_digest: String,
    /// `sha256:…` of the config blob: the image ID of Docker with its own image
    /// store and of CRI (`crictl images`). Docker with the containerd image store
    /// shows `target.digest` as the image ID instead.
    pub config_digest: String,
    /// The config's `rootfs.diff_ids`, bottom first.
    pub diff_ids: Vec<String>,
    /// The manifest's layer blob digests, bottom first.
    pub layer_digests: Vec<String>,
}

/// A content descriptor: what a blob is, its digest and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Its media type, such as `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its size in bytes.
    pub size: i64,
}

/// One layer to unpack: its blob (already in the content store) and its diffID.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    /// The layer blob as stored (compressed or not).
    pub blob: Descriptor,
    /// `sha256:…` of the uncompressed layer tar.
    pub diff_id: String,
}

/// A containerd operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The address is not a unix socket.
    #[error(
        "containerd host {host:?} is not usable: {reason} \
         (use unix:///run/containerd/containerd.sock or a socket path)"
    )]
    BadHost { host: String, reason: String },
    /// The namespace cannot be sent as gRPC metadata.
    #[error("containerd namespace {namespace:?} is not usable (use a name such as k8s.io or moby)")]
    BadNamespace { namespace: String },
    /// The daemon did not answer the connection or the version check.
    #[error(
        "cannot reach containerd at {host}: {detail} \
         (is containerd running? set engine_host in agent.toml / --engine-host)"
    )]
    Unreachable { host: String, detail: String },
    /// An API call failed.
    #[error("containerd at {host} failed to {action}: {}: {}", status.code(), status.message())]
    Api {
        host: String,
        action: String,
        status: Status,
    },
    /// The daemon answered with something this client cannot use.
    #[error("containerd at {host} sent an unusable answer to {action}: {detail}")]
    Malformed {
        host: String,
        action: String,
        detail: String,
    },
    /// An image asked for by name is not in the namespace.
    #[error(
        "image {reference} not found in namespace {namespace} of containerd at {host} \
         (list images with `ctr -n {namespace} images ls`)"
    )]
    NoSuchImage {
        reference: String,
        namespace: String,
        host: String,
    },
    /// A name cannot be an image name.
    #[error("{reference:?} is not a usable image name: {reason} (use NAME:TAG, such as app:1.4)")]
    BadReference { reference: String, reason: String },
    /// The bytes given for a blob failed, or were not the blob.
    #[error("cannot write blob {digest} to containerd at {host}: {detail}")]
    Blob {
        host: String,
        digest: String,
        detail: String,
    },
    /// An image given to import does not hold together (config, layers).
    #[error("cannot import into containerd at {host}: {detail}")]
    BadImage { host: String, detail: String },
    /// A layer unpacked to different content than its diffID says.
    #[error(
        "containerd at {host} unpacked layer blob {blob} to {actual}, but its diffID is \
         {expected}: the layer is damaged or the config does not belong to it"
    )]
    DiffIdMismatch {
        host: String,
        blob: String,
        expected: String,
        actual: String,
    },
}

impl Containerd {
    /// Connects to `host` (`unix:///run/containerd/containerd.sock` or a bare path)
    /// for `namespace`, unpacking into `snapshotter`, and checks that the server
    /// answers (Version service).
    pub async fn connect(
        host: &str,
        namespace: &str,
        snapshotter: &str,
    ) -> Result<Containerd, ContainerdError> {
        let path = socket_path(host)?;
        let namespace_value = metadata(namespace).ok_or_else(|| ContainerdError::BadNamespace {
            namespace: namespace.to_string(),
        })?;
        let unreachable = |detail: String| ContainerdError::Unreachable {
            host: host.to_string(),
            detail,
        };
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(path))
            .await
            .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(error_chain(&e)))?;
        let this = Containerd {
            channel,
            host: host.to_string(),
            namespace: namespace.to_string(),
            namespace_value,
            snapshotter: snapshotter.to_string(),
            lease: None,
        };
        let mut client = VersionClient::new(this.channel.clone());
        let version = tokio::time::timeout(CONNECT_TIMEOUT, client.version(this.request(())))
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|s| unreachable(format!("{}: {}", s.code(), s.message())))?;
        tracing::debug!(host, version = %version.get_ref().version, "containerd connected");
        Ok(this)
    }

    /// The address this containerd was reached at, for messages.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The namespace every request is made in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The snapshotter layers are unpacked into.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// Every image in the namespace. Records whose manifest or config blob is
    /// missing or unparseable are skipped (logged at debug), not errors.
    pub async fn images(&self) -> Result<Vec<ImageRecord>, ContainerdError> {
        let req = self.request(containerd_client::services::v1::ListImagesRequest { filters: vec![] });
        let list = self.call("list images", self.images_client().list(req)).await?;
        let resolved = list.images.into_iter().map(|image| self.record_or_skip(image));
        let mut records = futures::stream::iter(resolved).buffer_unordered(resolve::CONCURRENCY);
        let mut out = Vec::new();
        while let Some(record) = records.next().await {
            out.extend(record?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One image by (full) name, `None` if absent; an error if its manifest or
    /// config blob is missing or unusable.
    pub async fn image(&self, name: &str) -> Result<Option<ImageRecord>, ContainerdError> {
        match self.get_image(name).await? {
            Some(image) => self.record(image).await.map(Some),
            None => Ok(None),
        }
    }

    /// Digests of every blob in the content store.
    pub async fn blobs(&self) -> Result<HashSet<String>, ContainerdError> {
        let req = self.request(ListContentRequest { filters: vec![] });
        let mut stream = self
            .call("list content", ContentClient::new(self.channel.clone()).list(req))
            .await?;
        let mut out = HashSet::new();
        while let Some(batch) = stream.message().await.map_err(|s| self.api("list content", s))? {
            out.extend(batch.info.into_iter().map(|info| info.digest));
        }
        Ok(out)
    }

    /// Names (keys) of committed snapshots in this snapshotter (an unpacked layer's
    /// key is its chain ID).
    pub async fn snapshots(&self) -> Result<HashSet<String>, ContainerdError> {
        let action = format!("list snapshots of {}", self.snapshotter);
        let req = self.request(ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters: vec![],
        });
        let mut stream = self.call(&action, self.snapshots_client().list(req)).await?;
        let mut out = HashSet::new();
        while let Some(batch) = stream.message().await.map_err(|s| self.api(&action, s))? {
            let committed = batch
                .info
                .into_iter()
                .filter(|i| i.kind == Kind::Committed as i32);
            out.extend(committed.map(|info| info.name));
        }
        Ok(out)
    }

    /// Points image `name` (normalized to its full name) at `target`, creating
    /// the record or updating it: what tagging is in containerd.
    pub async fn set_image(&self, name: &str, target: &Descriptor) -> Result<(), ContainerdError> {
        let name = full_name(name)?;
        let image = Image {
            name: name.clone(),
            target: Some(target.into()),
            ..Default::default()
        };
        if self.get_image(&name).await?.is_none() {
            let req = self.request(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            });
            let action = format!("create image {name}");
            match self.call(&action, self.images_client().create(req)).await {
                // Created by someone else since the look-up: update it below.
                Err(e) if e.code() == Some(Code::AlreadyExists) => {}
                other => return other.map(|_| ()),
            }
        }
        let req = self.request(UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["target".to_string()],
            }),
            source_date_epoch: None,
        });
        self.call(&format!("update image {name}"), self.images_client().update(req))
            .await
            .map(|_| ())
    }

    /// The image record named `name`, `None` if absent.
    async fn get_image(&self, name: &str) -> Result<Option<Image>, ContainerdError> {
        let req = self.request(GetImageRequest {
            name: name.to_string(),
        });
        match self
            .call(&format!("look up image {name}"), self.images_client().get(req))
            .await
        {
            Ok(found) => Ok(found.image),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A request carrying this handle's namespace and lease.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        let meta = req.metadata_mut();
        meta.insert(NAMESPACE_HEADER, self.namespace_value.clone());
        if let Some(lease) = &self.lease {
            meta.insert(LEASE_HEADER, lease.clone());
        }
        req
    }

    /// Awaits one call for at most [`API_TIMEOUT`] and names what failed.
    async fn call<T>(
        &self,
        action: &str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, ContainerdError> {
        self.call_within(API_TIMEOUT, action, call).await
    }

    /// [`Containerd::call`] with its own time limit.
    async fn call_within<T>(
        &self,
        limit: Duration,
        action: &str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, ContainerdError> {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.api(action, status)),
            Err(_) => Err(self.api(
                action,
                Status::deadline_exceeded(format!("no answer within {limit:?}")),
            )),
        }
    }

    fn api(&self, action: &str, status: Status) -> ContainerdError {
        ContainerdError::Api {
            host: self.host.clone(),
            action: action.to_string(),
            status,
        }
    }

    fn malformed(&self, action: &str, detail: impl Into<String>) -> ContainerdError {
        ContainerdError::Malformed {
            host: self.host.clone(),
            action: action.to_string(),
            detail: detail.into(),
        }
    }

    fn images_client(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn snapshots_client(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
}

impl ContainerdError {
    /// True when containerd did not answer at all (down, restarting, its
    /// socket gone): trying again once it is back may succeed.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ContainerdError::Unreachable { .. }) || self.code() == Some(Code::Unavailable)
    }

    /// The gRPC status code of a failed API call.
    pub fn code(&self) -> Option<Code> {
        match self {
            ContainerdError::Api { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

impl From<&Descriptor> for containerd_client::types::Descriptor {
    fn from(d: &Descriptor) -> Self {
        containerd_client::types::Descriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            annotations: Default::default(),
        }
    }
}

impl From<containerd_client::types::Descriptor> for Descriptor {
    fn from(d: containerd_client::types::Descriptor) -> Self {
        Descriptor {
            media_type: d.media_type,
            digest: d.digest,
            size: d.size,
        }
    }
}

/// `docker.io/library/app:1` for `app:1`: the name containerd files an image under.
pub fn full_name(reference: &str) -> Result<String, ContainerdError> {
    Reference::parse(reference)
        .map(|r| r.canonical())
        .map_err(|e| ContainerdError::BadReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })
}

/// The socket path of `unix:///path` or `/path`.
fn socket_path(host: &str) -> Result<&str, ContainerdError> {
    let path = host.strip_prefix("unix://").unwrap_or(host);
    if path.starts_with('/') {
        return Ok(path);
    }
    Err(ContainerdError::BadHost {
        host: host.to_string(),
        reason: "containerd is reached over a local unix socket".to_string(),
    })
}

/// `text` as a gRPC metadata value, if it is a non-empty printable ASCII string.
fn metadata(text: &str) -> Option<MetadataValue<Ascii>> {
    if text.is_empty() {
        return None;
    }
    text.parse().ok()
}

/// An error and its sources on one line: tonic's transport errors say little at the top.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out = format!("{out}: {s}");
        source = s.source();
    }
    out
}

/// A string unique to this process and moment, for lease IDs and snapshot keys.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{nanos}-{:08x}", std::process::id(), rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_unix_sockets() {
        assert_eq!(socket_path("unix:///run/c.sock").unwrap(), "/run/c.sock");
        assert_eq!(socket_path("/run/c.sock").unwrap(), "/run/c.sock");
        assert!(matches!(
            socket_path("tcp://h:1"),
            Err(ContainerdError::BadHost { .. })
        ));
    }

    #[test]
    fn names_are_full() {
        assert_eq!(full_name("app:1").unwrap(), "docker.io/library/app:1");
        assert_eq!(full_name("reg:5000/a/b").unwrap(), "reg:5000/a/b:latest");
        assert!(full_name("UP").is_err());
    }
}
