//! The distribution manifest: which images, their layers and each layer's
//! chunks; how it is identified (BLAKE3 of its encoding) and validated on
//! receipt before anything is fetched or loaded.
//!
//! Chain IDs are not carried on the wire: a layer's chain ID depends on the
//! image it sits in, so receivers derive them from the validated diffIDs
//! ([`ImageEntry::chain_ids`]) instead of trusting a sender's.
//!
//! Nothing in a manifest is a path: the tar a node assembles for `docker load`
//! names its files after digests the node checks itself, so a manifest cannot
//! steer a file outside the archive.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::content::hash::Hash;
use crate::content::reference::{Problem, Reference, ReferenceError};

/// Most images one distribution may carry: far above any real `push`, low
/// enough that a hostile manifest cannot make a node allocate much.
pub const MAX_IMAGES: usize = 256;
/// Most distinct layers; real images have tens, Docker caps an image at 127.
pub const MAX_LAYERS: usize = 4096;
/// Most chunks: 2^20 chunks of 1 MiB is 1 TiB of layers.
pub const MAX_CHUNKS: usize = 1 << 20;
/// Largest uncompressed chunk accepted; `push --chunk-size` is capped here.
pub const MAX_CHUNK_SIZE: u32 = 8 << 20;
/// Largest image config JSON; real ones are a few KiB.
pub const MAX_CONFIG_SIZE: usize = 1 << 20;
/// Most references (tags) per image.
pub const MAX_REFS: usize = 64;
/// Longest image reference accepted: a 255-character repository path and a
/// 128-character tag, with room for a registry host.
pub const MAX_REF_LEN: usize = 512;
/// Largest encoded manifest, in bytes: a manifest of `MAX_CHUNKS` entries
/// is about 42 bytes each; 64 MiB leaves room for configs. Bounds both the
/// `Announce` frame and a bundle's manifest.
pub const MAX_ENCODED_LEN: u32 = 64 << 20;

/// Everything a node needs to fetch, verify and load a set of images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The images, in the order the pusher named them.
    pub images: Vec<ImageEntry>,
    /// Distinct layers, each once, in chunk order.
    pub layers: Vec<LayerEntry>,
    /// All chunks; each layer owns a contiguous run of them.
    pub chunks: Vec<ChunkEntry>,
}

/// One image: its ID, the tags to apply on arrival and its config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// `sha256:<hex>` of `config`: Docker's image ID.
    pub id: String,
    /// References to tag on each node, such as `app:1.4`.
    pub refs: Vec<String>,
    /// The image config JSON, byte for byte as `docker save` wrote it.
    pub config: Vec<u8>,
    /// Indices into [`Manifest::layers`], bottom layer first.
    pub layers: Vec<u32>,
}

/// One layer: an uncompressed tar identified by its diffID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerEntry {
    /// `sha256:<hex>` of the uncompressed layer tar.
    pub diff_id: String,
    /// Uncompressed size in bytes: the sum of its chunks' sizes.
    pub size: u64,
    /// Index of the layer's first chunk in [`Manifest::chunks`].
    pub first_chunk: u32,
    /// How many chunks the layer has.
    pub chunk_count: u32,
}

/// One chunk: a slice of a layer, carried zstd-compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// BLAKE3 of the uncompressed bytes.
    pub hash: Hash,
    /// Uncompressed length.
    pub size: u32,
    /// Compressed length on the wire and on disk.
    pub zsize: u32,
}

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// A count is outside what a sane distribution needs.
    #[error("manifest has {count} {what}, more than the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    /// The manifest lists no image at all.
    #[error("manifest lists no image")]
    Empty,
    /// A digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("malformed digest {0:?}")]
    BadDigest(String),
    /// An image reference breaks Docker's grammar or cannot be a tag.
    #[error("image reference {0}")]
    BadReference(#[from] ReferenceError),
    /// Two images claim the same reference: only one can hold the tag.
    #[error("two images claim the reference {reference} ({first} and {second}); a tag names one image")]
    SharedReference {
        reference: String,
        first: String,
        second: String,
    },
    /// An image ID does not match the hash of its config.
    #[error("image {id} does not match its config (config hashes to {actual})")]
    ConfigMismatch { id: String, actual: String },
    /// An image config does not parse or does not list the image's layers.
    #[error("image {id}: {detail}")]
    BadConfig { id: String, detail: String },
    /// The same image or layer appears twice.
    #[error("duplicate {what} {id}")]
    Duplicate { what: &'static str, id: String },
    /// An index points outside the list it refers to.
    #[error("{what} index {index} is out of range")]
    OutOfRange { what: &'static str, index: u64 },
    /// Layers' chunk runs overlap, leave gaps, or disagree with sizes.
    #[error("layer {diff_id}: {detail}")]
    BadLayer { diff_id: String, detail: String },
    /// A chunk has an impossible size.
    #[error("chunk {index}: {detail}")]
    BadChunk { index: usize, detail: String },
}

impl Manifest {
    /// The manifest's content address: BLAKE3 of its canonical encoding.
    pub fn id(&self) -> Hash {
        Hash::of(&postcard::to_allocvec(self).expect("manifest encodes"))
    }

    /// Total compressed bytes of all chunks.
    pub fn compressed_size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.zsize)).sum()
    }

    /// The chunks of layer `layer`, in order.
    pub fn layer_chunks(&self, layer: &LayerEntry) -> &[ChunkEntry] {
        let start = layer.first_chunk as usize;
        &self.chunks[start..start + layer.chunk_count as usize]
    }

    /// Index of the layer with this diffID.
    pub fn layer_index(&self, diff_id: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.diff_id == diff_id)
    }

    /// Checks every bound and every internal reference; a manifest that
    /// passes can be indexed without panicking and loads to the IDs it names.
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_count("images", self.images.len(), MAX_IMAGES)?;
        check_count("layers", self.layers.len(), MAX_LAYERS)?;
        check_count("chunks", self.chunks.len(), MAX_CHUNKS)?;
        if self.images.is_empty() {
            return Err(ManifestError::Empty);
        }
        self.validate_chunks()?;
        self.validate_layers()?;
        let mut seen = std::collections::HashSet::new();
        for image in &self.images {
            if !seen.insert(image.id.as_str()) {
                return Err(dup("image", &image.id));
            }
            self.validate_image(image)?;
        }
        check_refs(self.images.iter().map(|i| (i.id.as_str(), i.refs.as_slice())))
    }

    fn validate_chunks(&self) -> Result<(), ManifestError> {
        for (index, c) in self.chunks.iter().enumerate() {
            let bad = |detail: String| ManifestError::BadChunk { index, detail };
            if c.size == 0 || c.size > MAX_CHUNK_SIZE {
                return Err(bad(format!("size {} outside 1..={MAX_CHUNK_SIZE}", c.size)));
            }
            if c.zsize == 0 || c.zsize as usize > zstd::zstd_safe::compress_bound(c.size as usize) {
                return Err(bad(format!(
                    "compressed size {} impossible for {} bytes",
                    c.zsize, c.size
                )));
            }
        }
        Ok(())
    }

    fn validate_layers(&self) -> Result<(), ManifestError> {
        let mut next_chunk = 0u64;
        let mut seen = std::collections::HashSet::new();
        for layer in &self.layers {
            check_digest(&layer.diff_id)?;
            if !seen.insert(layer.diff_id.as_str()) {
                return Err(dup("layer", &layer.diff_id));
            }
            let bad = |detail: String| ManifestError::BadLayer {
                diff_id: layer.diff_id.clone(),
                detail,
            };
            if u64::from(layer.first_chunk) != next_chunk {
                return Err(bad(format!(
                    "chunks start at {}, expected {next_chunk}",
                    layer.first_chunk
                )));
            }
            next_chunk += u64::from(layer.chunk_count);
            if next_chunk > self.chunks.len() as u64 {
                return Err(bad(format!(
                    "chunk run ends at {next_chunk}, past the last chunk"
                )));
            }
            let sum: u64 = self.layer_chunks(layer).iter().map(|c| u64::from(c.size)).sum();
            if sum != layer.size {
                return Err(bad(format!(
                    "size {} but its chunks hold {sum} bytes",
                    layer.size
                )));
            }
        }
        if next_chunk != self.chunks.len() as u64 {
            return Err(ManifestError::OutOfRange {
                what: "unowned chunk",
                index: next_chunk,
            });
        }
        Ok(())
    }

    fn validate_image(&self, image: &ImageEntry) -> Result<(), ManifestError> {
        check_digest(&image.id)?;
        check_count("refs", image.refs.len(), MAX_REFS)?;
        check_count("config bytes", image.config.len(), MAX_CONFIG_SIZE)?;
        check_count("image layers", image.layers.len(), MAX_LAYERS)?;
        let actual = sha256_digest(&image.config);
        if actual != image.id {
            return Err(ManifestError::ConfigMismatch {
                id: image.id.clone(),
                actual,
            });
        }
        let mut diff_ids = Vec::with_capacity(image.layers.len());
        for &i in &image.layers {
            let layer = self.layers.get(i as usize).ok_or(ManifestError::OutOfRange {
                what: "layer",
                index: u64::from(i),
            })?;
            diff_ids.push(layer.diff_id.clone());
        }
        let config_ids = config_diff_ids(&image.config).map_err(|detail| ManifestError::BadConfig {
            id: image.id.clone(),
            detail,
        })?;
        if config_ids != diff_ids {
            return Err(ManifestError::BadConfig {
                id: image.id.clone(),
                detail: "config rootfs.diff_ids differ from the manifest's layers".into(),
            });
        }
        Ok(())
    }
}

impl ImageEntry {
    /// Chain IDs of the image's layers, bottom first, derived from diffIDs as
    /// Docker does: chain(0) = diff(0), chain(n) = sha256(chain(n-1) + " " + diff(n)).
    pub fn chain_ids(&self, manifest: &Manifest) -> Vec<String> {
        let diff_ids = self
            .layers
            .iter()
            .map(|&i| manifest.layers[i as usize].diff_id.as_str());
        chain_ids(diff_ids)
    }
}

/// Chain IDs for a stack of diffIDs, bottom first.
pub fn chain_ids<'a>(diff_ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.to_string(),
            Some(parent) => sha256_digest(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// `sha256:<hex>` of `data`, Docker's digest notation.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The `rootfs.diff_ids` list of an image config.
pub fn config_diff_ids(config: &[u8]) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let c: Config = serde_json::from_slice(config).map_err(|e| format!("config is not valid: {e}"))?;
    Ok(c.rootfs.diff_ids)
}

/// The hex part of a validated `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn check_count(what: &'static str, count: usize, limit: usize) -> Result<(), ManifestError> {
    if count > limit {
        return Err(ManifestError::TooMany { what, count, limit });
    }
    Ok(())
}

fn check_digest(d: &str) -> Result<(), ManifestError> {
    let hex = d.strip_prefix("sha256:").unwrap_or("");
    let ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::BadDigest(d.to_string()))
    }
}

/// Checks the references of images given as (image ID, references): each
/// can be applied as a tag ([`check_reference`]), and no two images claim one
/// (`app` and `docker.io/library/app:latest` are one), since each node would
/// leave it on whichever image it tagged last.
pub fn check_refs<'a>(
    images: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> Result<(), ManifestError> {
    let mut owner: std::collections::HashMap<String, &str> = Default::default();
    for (id, refs) in images {
        for r in refs {
            let canonical = check_reference(r)?.canonical();
            match owner.insert(canonical, id) {
                Some(first) if first != id => {
                    return Err(ManifestError::SharedReference {
                        reference: r.clone(),
                        first: short_id(first),
                        second: short_id(id),
                    });
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Accepts a reference a node can apply as a tag: Docker's grammar
/// ([`Reference::parse_tag`]), no digest, within [`MAX_REF_LEN`].
pub fn check_reference(r: &str) -> Result<Reference, ManifestError> {
    if r.len() > MAX_REF_LEN {
        let shown: String = r.chars().take(64).collect();
        return Err(ReferenceError {
            reference: format!("{shown}…"),
            problem: Problem::TooLong,
        }
        .into());
    }
    Ok(Reference::parse_tag(r)?)
}

/// The first 12 hex digits of an image ID, as `docker images` shows it.
fn short_id(id: &str) -> String {
    digest_hex(id).chars().take(12).collect()
}

fn dup(what: &'static str, id: &str) -> ManifestError {
    ManifestError::Duplicate {
        what,
        id: id.to_string(),
    }
}

#[cfg(test)]
#[path = "tests/manifest.rs"]
pub(crate) mod tests;
