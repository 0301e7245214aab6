//! Parsing `docker save` output into stored chunks and a [`Manifest`], in one
//! streaming pass with one layer chunk in memory at a time.
//!
//! Both layouts are read through the top-level `manifest.json`, which Docker
//! writes in each: the legacy layout of 20.10–24 (`<id>/layer.tar`,
//! `<id>.json`, `repositories`) and the OCI layout of 25+ (`blobs/sha256/…`,
//! `index.json`, `oci-layout`), whose layers may be gzip or zstd compressed.
//! `manifest.json` comes near the end of the stream, so every entry is
//! classified as it passes: small JSON is kept in memory (configs and
//! indexes), anything else that can be a layer is decompressed on the fly
//! and packed, links are recorded as aliases. The end of the stream ties
//! them together.

use std::collections::HashMap;
use std::io::{self, Cursor, Read, Seek};
use std::path::{Component, Path};

use flate2::read::MultiGzDecoder;
use serde::Deserialize;

use crate::content::manifest::{
    check_refs, config_diff_ids, sha256_digest, ChunkEntry, ImageEntry, LayerEntry, Manifest, ManifestError,
};
use crate::content::pack::{pack_layer, PackError, PackOptions, PackedLayer};
use crate::content::store::ChunkStore;

/// Most entries read from an archive: a `docker save` of 256 images of 127
/// layers has about 4 entries per layer (directory, `VERSION`, `json`,
/// `layer.tar`), 130k in all; anything bigger is not an image archive.
pub const MAX_ENTRIES: usize = 1 << 17;
/// Most bytes of small JSON files held in memory at once: configs are a few
/// KiB each, so 64 MiB is far above any real archive and bounds a hostile one.
pub const MAX_JSON_BYTES: usize = 64 << 20;
/// Largest JSON file kept in memory. Configs are capped lower by validation
/// (`MAX_CONFIG_SIZE`); `manifest.json` of 256 images of 127 layers is about
/// 3 MB; a bigger file that looks like JSON is treated as a layer.
const MAX_JSON_FILE: u64 = 16 << 20;
/// Longest entry name accepted; Linux's `PATH_MAX`.
const MAX_PATH_LEN: usize = 4096;
/// Most links followed to resolve one name, as the kernel limits symlink
/// chains (ELOOP); Docker's archives use at most one hop.
const MAX_LINK_HOPS: usize = 16;
/// Smallest possible uncompressed tar: the two zero blocks that end it. A
/// smaller file that is neither compressed nor JSON (`VERSION`) is no layer.
const MIN_TAR_SIZE: u64 = 1024;
/// gzip's magic number.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// zstd's frame magic number.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Bytes read to classify an entry: the longest magic number.
const SNIFF_LEN: usize = 4;

/// Why a `docker save` archive could not be turned into a manifest.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The stream is not a readable tar archive.
    #[error("the image archive is not a readable tar ({0}); expected `docker save` output")]
    Tar(io::Error),
    /// There is no top-level `manifest.json`.
    #[error(
        "the image archive has no manifest.json: it is not `docker save` output \
         of Docker 1.10 or later (re-export it with `docker save IMAGE…`)"
    )]
    MissingManifest,
    /// `manifest.json` does not have the expected shape.
    #[error("the image archive's manifest.json is not valid: {0}")]
    BadManifestJson(String),
    /// An entry or link name is absolute or climbs out with `..`.
    #[error("the image archive names {path:?}, which points outside the archive; refusing it")]
    UnsafePath { path: String },
    /// The archive exceeds a limit that no real image archive reaches.
    #[error("the image archive has more than {limit} {what}; refusing it")]
    TooLarge { what: &'static str, limit: usize },
    /// A file `manifest.json` refers to is not in the archive (or a link to
    /// it dangles or loops).
    #[error("image {image}: its {what} {path} is not in the archive (is the archive truncated?)")]
    Missing {
        image: String,
        what: &'static str,
        path: String,
    },
    /// A file used as a config or a layer is not one.
    #[error("image {image}: {path} is not {what}")]
    WrongKind {
        image: String,
        path: String,
        what: &'static str,
    },
    /// An image config cannot be read.
    #[error("image {image}: config {path} is not usable: {detail}")]
    BadConfig {
        image: String,
        path: String,
        detail: String,
    },
    /// The layers' content does not match the config's `rootfs.diff_ids`.
    #[error(
        "image {image}: its layers hash to {actual:?} but its config lists {expected:?}; \
         the archive is damaged (export it again)"
    )]
    DiffIdMismatch {
        image: String,
        expected: Vec<String>,
        actual: Vec<String>,
    },
    /// A layer could not be decompressed, read or stored.
    #[error("layer {path}: {source}")]
    Layer { path: String, source: PackError },
    /// `manifest.json` names a reference Docker refuses, or one two images claim.
    #[error("in its manifest.json, {0}")]
    RepoTags(ManifestError),
    /// The manifest built from the archive does not validate.
    #[error("the image archive makes an invalid manifest: {0}")]
    Manifest(#[from] ManifestError),
}

/// One line of `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// What a regular file in the archive turned out to be.
enum Blob {
    /// Packed into the store.
    Layer(PackedLayer),
    /// Small JSON kept in memory: a config, `manifest.json`, an index.
    Json(Vec<u8>),
    /// Neither (a `VERSION` file).
    Other,
}

/// The archive's files by normalised name, and its links.
#[derive(Default)]
struct Archive {
    blobs: HashMap<String, Blob>,
    links: HashMap<String, String>,
    json_bytes: usize,
}

/// Reads a `docker save` archive, packing each layer into `store`, and
/// returns the validated manifest of the images it holds.
pub fn parse_save(reader: impl Read, store: &ChunkStore, opts: &PackOptions) -> Result<Manifest, SaveError> {
    let mut archive = Archive::default();
    let mut tar = tar::Archive::new(reader);
    let entries = tar.entries().map_err(SaveError::Tar)?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(SaveError::TooLarge {
                what: "entries",
                limit: MAX_ENTRIES,
            });
        }
        archive.add(entry.map_err(SaveError::Tar)?, store, opts)?;
    }
    archive.into_manifest(store, opts)
}

/// Checks the references (`RepoTags`) an archive's `manifest.json` gives its
/// images, reading only entry headers and that file: a reference Docker
/// would refuse, or one two images claim, is refused before any layer is
/// packed. What this pass cannot see (a `manifest.json` behind a link) is
/// checked by [`parse_save`] at the end.
pub fn check_repo_tags(reader: impl Read + Seek) -> Result<(), SaveError> {
    let mut tar = tar::Archive::new(reader);
    let mut found = None;
    let entries = tar.entries_with_seek().map_err(SaveError::Tar)?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(SaveError::TooLarge {
                what: "entries",
                limit: MAX_ENTRIES,
            });
        }
        let mut entry = entry.map_err(SaveError::Tar)?;
        let path = normalise(&entry.path().map_err(SaveError::Tar)?)?;
        let small = entry.size() <= MAX_JSON_FILE;
        if path == "manifest.json" && entry.header().entry_type().is_file() && small {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(SaveError::Tar)?;
            found = Some(data);
        }
    }
    let Some(data) = found else {
        return Ok(());
    };
    let entries: Vec<SaveEntry> =
        serde_json::from_slice(&data).map_err(|e| SaveError::BadManifestJson(e.to_string()))?;
    // The config's file name is its digest in both layouts: the image ID.
    let images = entries.iter().map(|e| {
        let id = e.config.rsplit('/').next().unwrap_or_default();
        (
            id.trim_end_matches(".json"),
            e.repo_tags.as_deref().unwrap_or_default(),
        )
    });
    check_refs(images).map_err(SaveError::RepoTags)
}

impl Archive {
    /// Classifies one tar entry and records it.
    fn add<R: Read>(
        &mut self,
        entry: tar::Entry<'_, R>,
        store: &ChunkStore,
        opts: &PackOptions,
    ) -> Result<(), SaveError> {
        let path = normalise(&entry.path().map_err(SaveError::Tar)?)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name().map_err(SaveError::Tar)?.unwrap_or_default();
            let target = if kind.is_symlink() {
                resolve_symlink(&path, &target)?
            } else {
                normalise(&target)?
            };
            self.blobs.remove(&path);
            self.links.insert(path, target);
        } else if kind.is_file() || kind.is_contiguous() {
            let blob = self.classify(entry, &path, store, opts)?;
            self.links.remove(&path);
            if let Some(Blob::Json(old)) = self.blobs.insert(path, blob) {
                self.json_bytes -= old.len();
            }
        }
        Ok(())
    }

    /// Sniffs a file's first bytes and keeps it as JSON or packs it as a layer.
    fn classify<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        path: &str,
        store: &ChunkStore,
        opts: &PackOptions,
    ) -> Result<Blob, SaveError> {
        let size = entry.size();
        let mut head = [0u8; SNIFF_LEN];
        let n = crate::content::pack::read_full(&mut entry, &mut head).map_err(SaveError::Tar)?;
        let head = &head[..n];
        let whole = Cursor::new(head.to_vec()).chain(entry);
        let layer_err = |source| SaveError::Layer {
            path: path.to_string(),
            source,
        };
        if head.starts_with(&GZIP_MAGIC) {
            return pack_layer(MultiGzDecoder::new(whole), store, opts)
                .map(Blob::Layer)
                .map_err(layer_err);
        }
        if head.starts_with(&ZSTD_MAGIC) {
            let decoder = zstd::Decoder::new(whole).map_err(|e| layer_err(PackError::Read(e)))?;
            return pack_layer(decoder, store, opts)
                .map(Blob::Layer)
                .map_err(layer_err);
        }
        if matches!(head.first(), Some(b'{' | b'[')) && size <= MAX_JSON_FILE {
            return self.keep_json(whole, size);
        }
        if size < MIN_TAR_SIZE {
            return Ok(Blob::Other);
        }
        pack_layer(whole, store, opts).map(Blob::Layer).map_err(layer_err)
    }

    /// Reads a small JSON file into memory, within [`MAX_JSON_BYTES`].
    fn keep_json(&mut self, reader: impl Read, size: u64) -> Result<Blob, SaveError> {
        self.json_bytes += size as usize;
        if self.json_bytes > MAX_JSON_BYTES {
            return Err(SaveError::TooLarge {
                what: "bytes of JSON files",
                limit: MAX_JSON_BYTES,
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        reader.take(size).read_to_end(&mut data).map_err(SaveError::Tar)?;
        Ok(Blob::Json(data))
    }

    /// The name `path` finally refers to, after following links.
    fn resolve(&self, path: &str) -> Option<String> {
        let mut current = path.to_string();
        for _ in 0..=MAX_LINK_HOPS {
            match self.links.get(&current) {
                Some(next) => current = next.clone(),
                None => return self.blobs.contains_key(&current).then_some(current),
            }
        }
        None
    }

    /// Ties `manifest.json` to the configs and packed layers.
    fn into_manifest(mut self, store: &ChunkStore, opts: &PackOptions) -> Result<Manifest, SaveError> {
        let entries = self.save_entries()?;
        let mut images = Vec::with_capacity(entries.len());
        for entry in &entries {
            images.push(self.image(entry, store, opts)?);
        }
        // `docker save` lists images in no fixed order; sorting by ID makes
        // the same images give the same manifest, and so the same ID.
        images.sort_by(|a, b| a.id.cmp(&b.id));
        let mut builder = ManifestBuilder::default();
        for image in images {
            builder.add(image);
        }
        let manifest = builder.finish();
        manifest.validate()?;
        Ok(manifest)
    }

    fn save_entries(&self) -> Result<Vec<SaveEntry>, SaveError> {
        let path = self.resolve("manifest.json").ok_or(SaveError::MissingManifest)?;
        let Some(Blob::Json(data)) = self.blobs.get(&path) else {
            return Err(SaveError::MissingManifest);
        };
        serde_json::from_slice(data).map_err(|e| SaveError::BadManifestJson(e.to_string()))
    }

    /// One image of `manifest.json`: its config, ID, refs and packed layers.
    fn image(
        &mut self,
        entry: &SaveEntry,
        store: &ChunkStore,
        opts: &PackOptions,
    ) -> Result<FoundImage, SaveError> {
        let refs = entry.repo_tags.clone().unwrap_or_default();
        let mut name = refs.first().cloned().unwrap_or_else(|| entry.config.clone());
        let config_path = self.find(&name, "config", &entry.config)?;
        let Some(Blob::Json(config)) = self.blobs.get(&config_path) else {
            return Err(wrong_kind(
                &name,
                &config_path,
                "an image config (a JSON file of at most 1 MiB)",
            ));
        };
        let config = config.clone();
        let id = sha256_digest(&config);
        if refs.is_empty() {
            name = id.clone();
        }
        let bad_config = |detail| SaveError::BadConfig {
            image: name.clone(),
            path: config_path.clone(),
            detail,
        };
        let expected = config_diff_ids(&config).map_err(bad_config)?;
        let mut layers = Vec::with_capacity(entry.layers.len());
        for layer_path in &entry.layers {
            layers.push(self.layer(&name, layer_path, store, opts)?);
        }
        let actual: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        if actual != expected {
            return Err(SaveError::DiffIdMismatch {
                image: name,
                expected,
                actual,
            });
        }
        Ok(FoundImage {
            id,
            refs,
            config,
            layers,
        })
    }

    /// The packed layer at `path`; a small file kept as JSON is packed now.
    fn layer(
        &mut self,
        image: &str,
        path: &str,
        store: &ChunkStore,
        opts: &PackOptions,
    ) -> Result<PackedLayer, SaveError> {
        let resolved = self.find(image, "layer", path)?;
        let packed = match self.blobs.get(&resolved) {
            Some(Blob::Layer(packed)) => return Ok(packed.clone()),
            Some(Blob::Json(data)) => {
                pack_layer(&data[..], store, opts).map_err(|source| SaveError::Layer {
                    path: resolved.clone(),
                    source,
                })?
            }
            _ => return Err(wrong_kind(image, &resolved, "a layer (a tar, gzip or zstd file)")),
        };
        self.blobs.insert(resolved, Blob::Layer(packed.clone()));
        Ok(packed)
    }

    /// Normalises a name from `manifest.json` and resolves it to a file.
    fn find(&self, image: &str, what: &'static str, path: &str) -> Result<String, SaveError> {
        let normal = normalise(Path::new(path))?;
        self.resolve(&normal).ok_or_else(|| SaveError::Missing {
            image: image.to_string(),
            what,
            path: path.to_string(),
        })
    }
}

/// An image found in the archive, before layers are deduplicated.
struct FoundImage {
    id: String,
    refs: Vec<String>,
    config: Vec<u8>,
    layers: Vec<PackedLayer>,
}

/// Collects images into a [`Manifest`]: each layer once, by diffID, with
/// contiguous chunk runs in layer order; an image listed twice merges refs.
#[derive(Default)]
struct ManifestBuilder {
    images: Vec<ImageEntry>,
    layers: Vec<LayerEntry>,
    chunks: Vec<ChunkEntry>,
    layer_index: HashMap<String, u32>,
}

impl ManifestBuilder {
    fn add(&mut self, image: FoundImage) {
        if let Some(existing) = self.images.iter_mut().find(|i| i.id == image.id) {
            for r in image.refs {
                if !existing.refs.contains(&r) {
                    existing.refs.push(r);
                }
            }
            return;
        }
        let layers = image.layers.iter().map(|l| self.layer(l)).collect();
        self.images.push(ImageEntry {
            id: image.id,
            refs: image.refs,
            config: image.config,
            layers,
        });
    }

    /// Index of `packed` in the manifest's layers, adding it if new.
    fn layer(&mut self, packed: &PackedLayer) -> u32 {
        if let Some(&index) = self.layer_index.get(&packed.diff_id) {
            return index;
        }
        let index = self.layers.len() as u32;
        self.layers.push(LayerEntry {
            diff_id: packed.diff_id.clone(),
            size: packed.size,
            first_chunk: self.chunks.len() as u32,
            chunk_count: packed.chunks.len() as u32,
        });
        self.chunks.extend_from_slice(&packed.chunks);
        self.layer_index.insert(packed.diff_id.clone(), index);
        index
    }

    fn finish(self) -> Manifest {
        Manifest {
            images: self.images,
            layers: self.layers,
            chunks: self.chunks,
        }
    }
}

/// An archive name as a plain relative path: `./x` → `x`; absolute names and
/// `..` are refused.
fn normalise(path: &Path) -> Result<String, SaveError> {
    let unsafe_path = || SaveError::UnsafePath {
        path: path.to_string_lossy().into_owned(),
    };
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str().ok_or_else(unsafe_path)?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(unsafe_path()),
        }
    }
    let joined = parts.join("/");
    if joined.len() > MAX_PATH_LEN {
        return Err(unsafe_path());
    }
    Ok(joined)
}

/// The archive name a symlink at `link` pointing to `target` refers to.
/// Docker writes `layer.tar` links as `../<id>/layer.tar`: `..` is resolved
/// against the link's directory and may not climb above the archive root.
fn resolve_symlink(link: &str, target: &Path) -> Result<String, SaveError> {
    let escape = || SaveError::UnsafePath {
        path: format!("{link} -> {}", target.display()),
    };
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for component in target.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str().ok_or_else(escape)?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop().ok_or_else(escape)?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(escape()),
        }
    }
    Ok(parts.join("/"))
}

fn wrong_kind(image: &str, path: &str, what: &'static str) -> SaveError {
    SaveError::WrongKind {
        image: image.to_string(),
        path: path.to_string(),
        what,
    }
}

#[cfg(test)]
#[path = "tests/save.rs"]
mod tests;
