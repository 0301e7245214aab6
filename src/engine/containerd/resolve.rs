//! An image record → the manifest for this host's platform, its config and its
//! layers: what [`ImageRecord`] reports and what export writes out.

use containerd_client::services::v1::Image;
use containerd_client::tonic::Code;
use serde::Deserialize;

use super::{Containerd, ContainerdError, Descriptor, ImageRecord};
use crate::content::manifest::config_diff_ids;

/// Image records resolved at once by [`Containerd::images`]: each takes two or three
/// small reads; enough to hide round trips, few enough not to load a busy node.
pub(super) const CONCURRENCY: usize = 8;

/// Media types of an index (a manifest list).
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// An image resolved to its platform manifest, with the blobs export writes.
pub(super) struct Resolved {
    pub record: ImageRecord,
    /// The platform manifest and its bytes as stored.
    pub manifest: (Descriptor, Vec<u8>),
    /// The config and its bytes as stored.
    pub config: (Descriptor, Vec<u8>),
    /// The layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
}

/// A descriptor in an index or a manifest.
#[derive(Deserialize)]
struct JsonDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<JsonDescriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: JsonDescriptor,
    layers: Vec<JsonDescriptor>,
}

impl From<JsonDescriptor> for Descriptor {
    fn from(d: JsonDescriptor) -> Self {
        Descriptor {
            media_type: d.media_type,
            digest: d.digest,
            size: d.size,
        }
    }
}

impl Containerd {
    /// [`Containerd::record`], or `None` (logged at debug) if the record's blobs are
    /// missing or unusable: an image half pulled or half deleted is not an error.
    pub(super) async fn record_or_skip(&self, image: Image) -> Result<Option<ImageRecord>, ContainerdError> {
        let name = image.name.clone();
        match self.record(image).await {
            Ok(record) => Ok(Some(record)),
            Err(e) if skippable(&e) => {
                tracing::debug!(host = %self.host, image = %name, error = %e, "image skipped");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The record of `image`, resolved for this host's platform.
    pub(super) async fn record(&self, image: Image) -> Result<ImageRecord, ContainerdError> {
        self.resolve(image).await.map(|r| r.record)
    }

    /// Reads `image`'s target, platform manifest and config.
    pub(super) async fn resolve(&self, image: Image) -> Result<Resolved, ContainerdError> {
        let action = format!("resolve image {}", image.name);
        let target: Descriptor = image
            .target
            .ok_or_else(|| self.malformed(&action, "the record has no target"))?
            .into();
        let manifest_desc = self.platform_manifest(&target, &action).await?;
        let manifest_bytes = self.read_small(&manifest_desc).await?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| self.malformed(&action, format!("manifest {}: {e}", manifest_desc.digest)))?;
        let config_desc: Descriptor = manifest.config.into();
        let config_bytes = self.read_small(&config_desc).await?;
        let diff_ids = config_diff_ids(&config_bytes)
            .map_err(|e| self.malformed(&action, format!("config {}: {e}", config_desc.digest)))?;
        let layers: Vec<Descriptor> = manifest.layers.into_iter().map(Descriptor::from).collect();
        let record = ImageRecord {
            name: image.name,
            target,
            manifest_digest: manifest_desc.digest.clone(),
            config_digest: config_desc.digest.clone(),
            diff_ids,
            layer_digests: layers.iter().map(|l| l.digest.clone()).collect(),
        };
        Ok(Resolved {
            record,
            manifest: (manifest_desc, manifest_bytes),
            config: (config_desc, config_bytes),
            layers,
        })
    }

    /// `target` itself, or for an index the manifest for linux on this host's architecture.
    async fn platform_manifest(
        &self,
        target: &Descriptor,
        action: &str,
    ) -> Result<Descriptor, ContainerdError> {
        if !INDEX_TYPES.contains(&target.media_type.as_str()) {
            return Ok(target.clone());
        }
        let bytes = self.read_small(target).await?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| self.malformed(action, format!("index {}: {e}", target.digest)))?;
        let arch = host_architecture();
        let wanted = |p: &Option<Platform>| {
            p.as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        };
        index
            .manifests
            .into_iter()
            .find(|m| wanted(&m.platform))
            .map(Descriptor::from)
            .ok_or_else(|| {
                self.malformed(
                    action,
                    format!("index {} has no manifest for linux/{arch}", target.digest),
                )
            })
    }
}

/// A failure that means the image's blobs are missing or unusable.
fn skippable(e: &ContainerdError) -> bool {
    matches!(e, ContainerdError::Malformed { .. }) || e.code() == Some(Code::NotFound)
}

/// This host's architecture as OCI platforms name it (Go's GOARCH).
pub(super) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}
