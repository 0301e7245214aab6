//! `docker save` archives from a fuzzer-chosen [`SaveSpec`]: the legacy
//! layout (`<id>/layer.tar`, `<hex>.json`) or the OCI layout
//! (`blobs/sha256/<hex>`, `index.json`), layers uncompressed, gzip
//! (one or two members) or zstd, shared layers as links, plus extra entries
//! and faults at three levels: the model (configs, `manifest.json`), the
//! entries (drop, move, rename, retype, lying sizes, PAX names) and the
//! bytes (truncation, flips).
//!
//! A spec with no extras and no faults builds a well-formed archive, and
//! [`Built::expected`] says what `parse_save` must return for it.

mod faults;
mod layout;
pub mod tar_writer;

use arbitrary::Arbitrary;
use p2pimg::content::manifest::sha256_digest;

pub use layout::{Built, ExpectedImage};
use tar_writer::Entry;

/// Most layers, images, extras and faults a spec uses: enough for sharing,
/// deduplication and interacting faults; small enough to run fast.
const MAX_LAYERS: usize = 6;
const MAX_IMAGES: usize = 4;
const MAX_EXTRAS: usize = 6;
const MAX_FAULTS: usize = 4;
/// Most tags and layers of one image: well-formed specs stay within the
/// library's own limits (`MAX_REFS`, `MAX_LAYERS`).
const MAX_TAGS: usize = 8;
const MAX_IMAGE_LAYERS: usize = 16;
/// Most files in one layer and bytes in one file.
const MAX_FILES: usize = 4;
const MAX_FILE_BYTES: usize = 3000;

/// An archive to build.
#[derive(Arbitrary, Debug, Clone)]
pub struct SaveSpec {
    pub oci: bool,
    pub layers: Vec<LayerSpec>,
    pub images: Vec<ImageSpec>,
    pub extras: Vec<Extra>,
    pub faults: Vec<Fault>,
}

/// One layer: the files of its tar and how it is stored.
#[derive(Arbitrary, Debug, Clone)]
pub struct LayerSpec {
    pub files: Vec<(u8, Vec<u8>)>,
    pub compression: Compression,
    /// Same content as an earlier layer, written as a link to it (legacy)
    /// or not written again (OCI), as Docker does for shared layers.
    pub alias_of: Option<(u8, LinkKind)>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    GzipTwoMembers,
    Zstd,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum LinkKind {
    Symlink,
    Hardlink,
}

/// One image: which layers (indices into the spec's layers), its tags and
/// a byte that makes its config differ from another with the same layers.
#[derive(Arbitrary, Debug, Clone)]
pub struct ImageSpec {
    pub layers: Vec<u8>,
    pub tags: Vec<(u8, u8)>,
    pub variant: u8,
}

/// An entry the layout does not need.
#[derive(Arbitrary, Debug, Clone)]
pub struct Extra {
    pub at: u16,
    pub name: NameSpec,
    pub kind: ExtraKind,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum ExtraKind {
    Dir,
    File(Vec<u8>),
    Symlink(NameSpec),
    Hardlink(NameSpec),
    /// A raw type flag: FIFO, sparse, PAX global, long name…
    Type(u8, Vec<u8>),
}

/// A name, usually derived from one already in the archive.
#[derive(Arbitrary, Debug, Clone)]
pub enum NameSpec {
    /// `extra/<n>`: collides with nothing the layout writes.
    Fresh(u8),
    /// The name of entry `k`.
    Existing(u16),
    /// `../` + the name of entry `k`.
    Parent(u16),
    /// `/` + the name of entry `k`.
    Absolute(u16),
    /// `./` + the name of entry `k`.
    DotSlash(u16),
    /// `n` directories deep, then the name of entry `k` (past `PATH_MAX`).
    Deep(u16, u16),
    Raw(String),
}

/// Something wrong with the archive.
#[derive(Arbitrary, Debug, Clone)]
pub enum Fault {
    // The model.
    /// Image `i`'s config lists its diffIDs reversed, with one dropped or added.
    ConfigLies(u8, u8),
    /// Image `i`'s config bytes replaced (its name stays).
    ConfigRaw(u8, Vec<u8>),
    /// `manifest.json` replaced.
    ManifestRaw(Vec<u8>),
    /// In `manifest.json`, image `i`'s config path replaced.
    ManifestConfigPath(u8, NameSpec),
    /// In `manifest.json`, image `i`'s layer `j` path replaced.
    ManifestLayerPath(u8, u8, NameSpec),
    /// In `manifest.json`, image `i` listed twice (with other tags).
    ManifestDuplicate(u8),
    // The entries.
    Drop(u16),
    Duplicate(u16),
    Move(u16, u16),
    Rename(u16, NameSpec),
    ReplaceData(u16, Vec<u8>),
    SetType(u16, u8),
    SizeLies(u16, u64),
    PaxPath(u16, NameSpec),
    // The bytes.
    Truncate(u16),
    Flip(u16, u8),
}

impl SaveSpec {
    /// Builds the archive.
    pub fn build(&self) -> Built {
        let spec = self.capped();
        let mut model = layout::Model::new(&spec);
        faults::apply_to_model(&mut model, &spec.faults);
        let mut entries = model.entries();
        faults::add_extras(&mut entries, &spec.extras);
        faults::apply_to_entries(&mut entries, &spec.faults);
        let mut bytes = tar_writer::write_tar(&entries);
        faults::apply_to_bytes(&mut bytes, &spec.faults);
        let clean = spec.extras.is_empty() && spec.faults.is_empty();
        Built {
            bytes,
            expected: clean.then(|| model.expected()),
        }
    }

    /// The spec within the size caps.
    fn capped(&self) -> SaveSpec {
        let mut s = self.clone();
        s.layers.truncate(MAX_LAYERS);
        s.images.truncate(MAX_IMAGES);
        s.extras.truncate(MAX_EXTRAS);
        s.faults.truncate(MAX_FAULTS);
        for image in &mut s.images {
            image.tags.truncate(MAX_TAGS);
            image.layers.truncate(MAX_IMAGE_LAYERS);
        }
        for layer in &mut s.layers {
            layer.files.truncate(MAX_FILES);
            for (_, data) in &mut layer.files {
                data.truncate(MAX_FILE_BYTES);
            }
        }
        s
    }
}

/// The name `spec` stands for, given the archive's names so far.
pub(crate) fn name_of(spec: &NameSpec, names: &[String]) -> String {
    let pick = |k: &u16| {
        if names.is_empty() {
            String::from("missing")
        } else {
            names[usize::from(*k) % names.len()].clone()
        }
    };
    match spec {
        NameSpec::Fresh(n) => format!("extra/{n}"),
        NameSpec::Existing(k) => pick(k),
        NameSpec::Parent(k) => format!("../{}", pick(k)),
        NameSpec::Absolute(k) => format!("/{}", pick(k)),
        NameSpec::DotSlash(k) => format!("./{}", pick(k)),
        NameSpec::Deep(n, k) => format!("{}{}", "d/".repeat(usize::from(*n) % 2100), pick(k)),
        NameSpec::Raw(s) => s.clone(),
    }
}

/// A layer tar holding `files`.
fn layer_tar(files: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let entries: Vec<Entry> = files
        .iter()
        .map(|(name, data)| Entry::file(format!("f{name}"), data.clone()))
        .collect();
    tar_writer::write_tar(&entries)
}

/// An image config listing `diff_ids`.
fn config_json(diff_ids: &[String], variant: u8) -> Vec<u8> {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("VARIANT={variant}")]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes()
}

/// Hex of SHA-256, as names in the archive use it.
fn hex_digest(data: &[u8]) -> String {
    sha256_digest(data)["sha256:".len()..].to_string()
}
