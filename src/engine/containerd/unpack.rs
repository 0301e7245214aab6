//! Layers into snapshots the way containerd 1.6's own unpacker (`unpacker.go`) does,
//! and the import of a whole image: config, manifest, unpack, image records.
//!
//! What keeps an import alive in containerd's garbage collector: the image record
//! refers to the manifest; the manifest's labels `containerd.io/gc.ref.content.config`
//! and `containerd.io/gc.ref.content.l.<i>` refer to the config and the layer blobs;
//! the config's label `containerd.io/gc.ref.snapshot.<snapshotter>` refers to the top
//! snapshot, which holds its parents. Until the record exists, a lease does.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::tonic::Code;
use containerd_client::types::Mount;

use super::{full_name, unique_suffix, Containerd, ContainerdError, Descriptor, LayerBlob, APPLY_TIMEOUT};
use crate::content::manifest::{chain_ids, config_diff_ids};
use crate::content::oci;

/// Media type of the manifests p2pimg writes.
pub const OCI_MANIFEST: &str = oci::MANIFEST_TYPE;
/// Media type of the configs p2pimg writes.
pub const OCI_CONFIG: &str = oci::CONFIG_TYPE;
/// Snapshot label naming the chain ID an unpack committed (containerd's `labelSnapshotRef`).
const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";
/// Blob label recording a verified layer's diffID, set by containerd's unpacker.
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";
/// Tries at preparing an extraction snapshot under a fresh key, as containerd does:
/// a clash of random keys is rare, three in a row is a broken daemon.
const PREPARE_TRIES: usize = 3;
/// How long the lease of an import that holds none of its own lasts if p2pimg dies
/// mid-import: long enough for the slowest unpack, short enough to free the disk.
const IMPORT_LEASE: Duration = Duration::from_secs(6 * 3600);

impl Containerd {
    /// Unpacks `layers` (bottom first) into the snapshotter: for each, the snapshot
    /// named by the chain ID so far is kept if committed, else prepared on its
    /// parent, filled by Diff.Apply, checked against the diffID and committed.
    /// Returns the top chain ID.
    pub async fn unpack(&self, layers: &[LayerBlob]) -> Result<String, ContainerdError> {
        let chain = chain_ids(layers.iter().map(|l| l.diff_id.as_str()));
        let mut parent = String::new();
        for (layer, chain_id) in layers.iter().zip(&chain) {
            self.unpack_layer(layer, &parent, chain_id).await?;
            parent.clone_from(chain_id);
        }
        Ok(parent)
    }

    /// Imports one image whose layer blobs are in the content store: writes the
    /// config and an OCI manifest with containerd's GC labels, unpacks the layers and
    /// points each of `names` (normalized to full names) at the manifest. Without a
    /// lease of its own ([`Containerd::leased`]) it holds one while it runs.
    pub async fn import_image(
        &self,
        names: &[String],
        config: Vec<u8>,
        layers: &[LayerBlob],
    ) -> Result<Descriptor, ContainerdError> {
        let names = names
            .iter()
            .map(|n| full_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        self.check_import(&config, layers).await?;
        if self.lease.is_some() {
            return self.import_leased(&names, config, layers).await;
        }
        let leased = self.leased(IMPORT_LEASE).await?;
        let imported = leased.import_leased(&names, config, layers).await;
        if let Err(e) = leased.release().await {
            tracing::warn!(host = %self.host, error = %e, "cannot release an import's lease");
        }
        imported
    }

    /// The import's steps, under this handle's lease.
    async fn import_leased(
        &self,
        names: &[String],
        config: Vec<u8>,
        layers: &[LayerBlob],
    ) -> Result<Descriptor, ContainerdError> {
        let top = chain_ids(layers.iter().map(|l| l.diff_id.as_str()))
            .pop()
            .unwrap_or_default();
        let snapshot_label = format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter);
        let config_labels = HashMap::from([(snapshot_label, top)]);
        let config = self.write_bytes(OCI_CONFIG, config, config_labels).await?;
        let blobs: Vec<&Descriptor> = layers.iter().map(|l| &l.blob).collect();
        let manifest = manifest_json(&config, &blobs);
        let manifest = self
            .write_bytes(OCI_MANIFEST, manifest, manifest_labels(&config, &blobs))
            .await?;
        self.unpack(layers).await?;
        for name in names {
            self.set_image(name, &manifest).await?;
        }
        Ok(manifest)
    }

    /// Refuses an import whose config does not list the layers' diffIDs, or whose
    /// layer blobs are not in the store.
    async fn check_import(&self, config: &[u8], layers: &[LayerBlob]) -> Result<(), ContainerdError> {
        let bad = |detail: String| ContainerdError::BadImage {
            host: self.host.clone(),
            detail,
        };
        let listed = config_diff_ids(config).map_err(bad)?;
        let given: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        if listed != given {
            return Err(bad(format!(
                "its config lists diffIDs {listed:?} but its layers are {given:?}"
            )));
        }
        for layer in layers {
            if self.blob_size(&layer.blob.digest).await?.is_none() {
                let digest = &layer.blob.digest;
                return Err(bad(format!(
                    "layer blob {digest} is not in the content store (write it first)"
                )));
            }
        }
        Ok(())
    }

    /// One step of [`Containerd::unpack`].
    async fn unpack_layer(
        &self,
        layer: &LayerBlob,
        parent: &str,
        chain_id: &str,
    ) -> Result<(), ContainerdError> {
        if self.snapshot_exists(chain_id).await? {
            return Ok(());
        }
        let Some((key, mounts)) = self.prepare(parent, chain_id).await? else {
            return Ok(()); // committed by a concurrent unpack meanwhile
        };
        if let Err(e) = self.apply_and_commit(layer, &key, mounts, chain_id).await {
            self.remove_snapshot(&key).await;
            return Err(e);
        }
        let labels = HashMap::from([(UNCOMPRESSED_LABEL.to_string(), layer.diff_id.clone())]);
        self.add_labels(&layer.blob.digest, labels).await
    }

    /// Fills the prepared snapshot `key` with `layer`, checks its diffID and commits
    /// it as `chain_id` (one committed meanwhile by a concurrent unpack will do).
    async fn apply_and_commit(
        &self,
        layer: &LayerBlob,
        key: &str,
        mounts: Vec<Mount>,
        chain_id: &str,
    ) -> Result<(), ContainerdError> {
        let applied = self.apply(&layer.blob, mounts).await?;
        if applied != layer.diff_id {
            return Err(ContainerdError::DiffIdMismatch {
                host: self.host.clone(),
                blob: layer.blob.digest.clone(),
                expected: layer.diff_id.clone(),
                actual: applied,
            });
        }
        let req = self.request(CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: chain_id.to_string(),
            key: key.to_string(),
            labels: snapshot_labels(chain_id),
        });
        let action = format!("commit snapshot {chain_id}");
        match self.call(&action, self.snapshots_client().commit(req)).await {
            Err(e) if e.code() == Some(Code::AlreadyExists) => {
                self.remove_snapshot(key).await;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Prepares an extraction snapshot on `parent` under a fresh key; `None` if the
    /// snapshot `chain_id` turned up committed meanwhile.
    async fn prepare(
        &self,
        parent: &str,
        chain_id: &str,
    ) -> Result<Option<(String, Vec<Mount>)>, ContainerdError> {
        let action = format!("prepare a snapshot for {chain_id}");
        let mut last = None;
        for _ in 0..PREPARE_TRIES {
            // containerd's UnpackKeyFormat: "extract-<unique> <chain ID>".
            let key = format!("extract-{} {chain_id}", unique_suffix());
            let req = self.request(PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.clone(),
                parent: parent.to_string(),
                labels: snapshot_labels(chain_id),
            });
            match self.call(&action, self.snapshots_client().prepare(req)).await {
                Ok(prepared) => return Ok(Some((key, prepared.mounts))),
                Err(e) if e.code() == Some(Code::AlreadyExists) => {
                    if self.snapshot_exists(chain_id).await? {
                        return Ok(None);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| self.malformed(&action, "no try was made")))
    }

    /// Diff.Apply of `blob` onto `mounts`: the diffID of what containerd unpacked.
    async fn apply(&self, blob: &Descriptor, mounts: Vec<Mount>) -> Result<String, ContainerdError> {
        let req = self.request(ApplyRequest {
            diff: Some(blob.into()),
            mounts,
            ..Default::default()
        });
        let action = format!("unpack layer blob {}", blob.digest);
        let mut client = DiffClient::new(self.channel.clone());
        let applied = self
            .call_within(APPLY_TIMEOUT, &action, client.apply(req))
            .await?;
        applied
            .applied
            .map(|d| d.digest)
            .ok_or_else(|| self.malformed(&action, "no descriptor of the applied layer"))
    }

    /// True if a snapshot named `key` exists in this snapshotter.
    async fn snapshot_exists(&self, key: &str) -> Result<bool, ContainerdError> {
        let req = self.request(StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        });
        match self
            .call(
                &format!("look up snapshot {key}"),
                self.snapshots_client().stat(req),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the extraction snapshot `key`; failures are only logged (containerd's
    /// garbage collector removes an unreferenced active snapshot).
    async fn remove_snapshot(&self, key: &str) {
        let req = self.request(RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        });
        let action = format!("remove snapshot {key}");
        if let Err(e) = self.call(&action, self.snapshots_client().remove(req)).await {
            tracing::warn!(host = %self.host, error = %e, "cannot clean up a failed unpack");
        }
    }
}

/// Labels of an unpacked layer's snapshot, as containerd's unpacker sets them.
fn snapshot_labels(chain_id: &str) -> HashMap<String, String> {
    HashMap::from([(SNAPSHOT_REF_LABEL.to_string(), chain_id.to_string())])
}

/// The manifest's GC references to its config and layer blobs.
fn manifest_labels(config: &Descriptor, layers: &[&Descriptor]) -> HashMap<String, String> {
    let config = (
        "containerd.io/gc.ref.content.config".to_string(),
        config.digest.clone(),
    );
    let layers = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone()));
    std::iter::once(config).chain(layers).collect()
}

/// The OCI manifest of `config` and `layers` ([`oci::manifest_bytes`]: the
/// same image always makes the same bytes and digest).
pub(super) fn manifest_json(config: &Descriptor, layers: &[&Descriptor]) -> Vec<u8> {
    let layers = layers
        .iter()
        .map(|l| oci::Descriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: l.size.max(0) as u64,
        })
        .collect();
    oci::manifest_bytes((&config.digest, config.size.max(0) as u64), layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str, digest: &str, size: i64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size,
        }
    }

    #[test]
    fn manifest_json_is_fixed() {
        let config = desc("whatever", "sha256:c", 3);
        let layer = desc("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:l", 9);
        let json = String::from_utf8(manifest_json(&config, &[&layer])).unwrap();
        assert_eq!(
            json,
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c","size":3},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l","size":9}]}"#
        );
    }

    #[test]
    fn manifest_labels_reference_config_and_layers() {
        let (c, a, b) = (
            desc("", "sha256:c", 1),
            desc("", "sha256:a", 1),
            desc("", "sha256:b", 1),
        );
        let labels = manifest_labels(&c, &[&a, &b]);
        assert_eq!(labels["containerd.io/gc.ref.content.config"], "sha256:c");
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], "sha256:a");
        assert_eq!(labels["containerd.io/gc.ref.content.l.1"], "sha256:b");
    }
}
