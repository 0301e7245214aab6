//! Images as an OCI-layout tar stream (`oci-layout`, `index.json`, `manifest.json`,
//! `blobs/sha256/<hex>`), built from the content store one piece at a time: layers are
//! streamed from Content.Read, never held whole. `engine::save::parse_save` reads it
//! like a Docker 25 `docker save`.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use containerd_client::services::v1::ReadContentResponse;
use containerd_client::tonic::codec::Streaming;
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::json;

use super::resolve::Resolved;
use super::{full_name, Containerd, ContainerdError, Descriptor};

/// A tar block: headers and padding come in these.
const BLOCK: usize = 512;
/// Annotation with the full image name, as `ctr images export` writes it.
const NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The OCI annotation naming a tag.
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// One file of the archive.
enum Entry {
    /// Small, already in memory.
    Bytes(String, Bytes),
    /// A blob streamed from the content store.
    Blob(Descriptor),
}

/// One image to export: its names and what they resolve to.
struct Named {
    names: Vec<String>,
    resolved: Resolved,
}

impl Containerd {
    /// The images named by `refs` (full or Docker-style short names) as an OCI-layout
    /// tar stream, for this host's platform. A missing image fails the stream before
    /// its first byte, naming it.
    pub fn export(
        &self,
        refs: &[String],
    ) -> impl Stream<Item = Result<Bytes, ContainerdError>> + Send + 'static {
        let this = self.clone();
        let refs = refs.to_vec();
        stream::once(async move {
            match this.export_plan(&refs).await {
                Ok(entries) => this.tar(entries),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
    }

    /// Resolves `refs` and lists the archive's files in order.
    async fn export_plan(&self, refs: &[String]) -> Result<Vec<Entry>, ContainerdError> {
        let images = self.resolve_refs(refs).await?;
        let mut entries = vec![Entry::Bytes(
            "oci-layout".into(),
            Bytes::from_static(br#"{"imageLayoutVersion":"1.0.0"}"#),
        )];
        let mut seen = HashSet::new();
        for image in &images {
            let r = &image.resolved;
            for (desc, bytes) in [&r.config, &r.manifest] {
                if seen.insert(desc.digest.clone()) {
                    entries.push(Entry::Bytes(blob_path(&desc.digest), Bytes::from(bytes.clone())));
                }
            }
            let fresh = r.layers.iter().filter(|l| seen.insert(l.digest.clone()));
            entries.extend(fresh.cloned().map(Entry::Blob));
        }
        entries.push(Entry::Bytes("index.json".into(), index_json(&images)));
        entries.push(Entry::Bytes(
            "manifest.json".into(),
            docker_manifest_json(&images),
        ));
        Ok(entries)
    }

    /// Each ref's image, those with the same platform manifest merged.
    async fn resolve_refs(&self, refs: &[String]) -> Result<Vec<Named>, ContainerdError> {
        let mut by_manifest: BTreeMap<String, Named> = BTreeMap::new();
        for reference in refs {
            let name = full_name(reference)?;
            let image = self
                .get_image(&name)
                .await?
                .ok_or_else(|| ContainerdError::NoSuchImage {
                    reference: reference.clone(),
                    namespace: self.namespace.clone(),
                    host: self.host.clone(),
                })?;
            let resolved = self.resolve(image).await?;
            let named = by_manifest
                .entry(resolved.record.manifest_digest.clone())
                .or_insert_with(|| Named {
                    names: vec![],
                    resolved,
                });
            if !named.names.contains(&name) {
                named.names.push(name);
            }
        }
        Ok(by_manifest.into_values().collect())
    }

    /// The tar stream of `entries`, with the end-of-archive blocks.
    fn tar(&self, entries: Vec<Entry>) -> BoxStream<'static, Result<Bytes, ContainerdError>> {
        let this = self.clone();
        let files = stream::iter(entries).flat_map(move |entry| this.tar_entry(entry));
        let end = stream::once(async { Ok(Bytes::from(vec![0u8; 2 * BLOCK])) });
        files.chain(end).boxed()
    }

    /// One file: its header, its bytes, its padding.
    fn tar_entry(&self, entry: Entry) -> BoxStream<'static, Result<Bytes, ContainerdError>> {
        match entry {
            Entry::Bytes(path, bytes) => {
                let parts = [
                    header(&path, bytes.len() as u64),
                    bytes.clone(),
                    padding(bytes.len() as u64),
                ];
                stream::iter(parts.into_iter().map(Ok)).boxed()
            }
            Entry::Blob(desc) => {
                let size = desc.size.max(0) as u64;
                let head = header(&blob_path(&desc.digest), size);
                let head = stream::once(async move { Ok(head) });
                let tail = stream::once(async move { Ok(padding(size)) });
                head.chain(self.blob_stream(desc)).chain(tail).boxed()
            }
        }
    }

    /// The bytes of blob `desc` from the content store; fails if they are not
    /// `desc.size` bytes (the archive would be corrupt).
    fn blob_stream(&self, desc: Descriptor) -> BoxStream<'static, Result<Bytes, ContainerdError>> {
        let this = self.clone();
        let opened = stream::once(async move {
            let pieces = this.open_read(&desc.digest).await?;
            Ok::<_, ContainerdError>(stream::unfold(Some((this, pieces, desc, 0)), read_piece))
        });
        opened.try_flatten().boxed()
    }
}

/// A blob being read: the handle, its Content.Read stream, its descriptor, bytes so far.
type Reading = (Containerd, Streaming<ReadContentResponse>, Descriptor, i64);

/// One step of [`Containerd::blob_stream`]: the next piece, or the error that ends it.
async fn read_piece(state: Option<Reading>) -> Option<(Result<Bytes, ContainerdError>, Option<Reading>)> {
    let (this, mut pieces, desc, sent) = state?;
    let action = format!("read blob {}", desc.digest);
    let wrong = |sent: i64, what: &str| {
        let detail = format!("it has {what} {sent} bytes, its descriptor says {}", desc.size);
        Some((Err(this.malformed(&action, detail)), None))
    };
    match pieces.message().await {
        Ok(Some(piece)) => {
            let sent = sent + piece.data.len() as i64;
            if sent > desc.size {
                return wrong(sent, "at least");
            }
            Some((Ok(Bytes::from(piece.data)), Some((this, pieces, desc, sent))))
        }
        Ok(None) if sent == desc.size => None,
        Ok(None) => wrong(sent, "only"),
        Err(status) => Some((Err(this.api(&action, status)), None)),
    }
}

/// `blobs/sha256/<hex>` for `sha256:<hex>`.
fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// A ustar header for a regular file.
fn header(path: &str, size: u64) -> Bytes {
    let mut h = tar::Header::new_ustar();
    // Paths here are at most 77 bytes (blobs/sha256/<64 hex>), within ustar's 100.
    let _ = h.set_path(path);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Bytes::copy_from_slice(h.as_bytes())
}

/// Zeros up to the next block boundary after `size` bytes.
fn padding(size: u64) -> Bytes {
    let rem = (size % BLOCK as u64) as usize;
    Bytes::from(vec![0u8; if rem == 0 { 0 } else { BLOCK - rem }])
}

/// The OCI index: each image's platform manifest, annotated with its name(s).
fn index_json(images: &[Named]) -> Bytes {
    let manifests: Vec<_> = images
        .iter()
        .flat_map(|image| {
            let (desc, _) = &image.resolved.manifest;
            image.names.iter().map(move |name| {
                let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
                json!({
                    "mediaType": desc.media_type,
                    "digest": desc.digest,
                    "size": desc.size,
                    "annotations": { NAME_ANNOTATION: name, REF_NAME_ANNOTATION: tag },
                })
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    Bytes::from(index.to_string())
}

/// Docker's `manifest.json`, which `docker load` and `parse_save` read.
fn docker_manifest_json(images: &[Named]) -> Bytes {
    let entries: Vec<_> = images
        .iter()
        .map(|image| {
            let r = &image.resolved;
            let tags: Vec<String> = image.names.iter().map(|n| familiar(n)).collect();
            let layers: Vec<String> = r.layers.iter().map(|l| blob_path(&l.digest)).collect();
            json!({ "Config": blob_path(&r.config.0.digest), "RepoTags": tags, "Layers": layers })
        })
        .collect();
    Bytes::from(serde_json::Value::from(entries).to_string())
}

/// The name as Docker shows it: `app:1` for `docker.io/library/app:1`.
fn familiar(name: &str) -> String {
    let short = name.strip_prefix("docker.io/").unwrap_or(name);
    short.strip_prefix("library/").unwrap_or(short).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_names() {
        assert_eq!(familiar("docker.io/library/app:1"), "app:1");
        assert_eq!(familiar("docker.io/team/app:1"), "team/app:1");
        assert_eq!(familiar("reg:5000/library/app:1"), "reg:5000/library/app:1");
    }

    #[test]
    fn padding_fills_blocks() {
        assert_eq!(padding(0).len(), 0);
        assert_eq!(padding(1).len(), 511);
        assert_eq!(padding(512).len(), 0);
    }
}
