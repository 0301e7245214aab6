//! Manifests from a fuzzer-chosen [`ManifestSpec`]: valid by construction
//! (contiguous chunk runs, sizes that add up, configs whose SHA-256 is the
//! image ID and whose diffIDs match the layers) unless tweaks break them.
//! Random bytes almost never decode to a manifest that validates, so this is
//! how the fuzzer reaches the code that runs on valid ones.

use arbitrary::Arbitrary;
use p2pimg::content::hash::Hash;
use p2pimg::content::manifest::{sha256_digest, ChunkEntry, ImageEntry, LayerEntry, Manifest, MAX_CHUNK_SIZE};

/// Caps that keep one run fast while crossing the library's own limits
/// where tweaks repeat things (`MAX_IMAGES`, `MAX_LAYERS`, `MAX_REFS`).
const MAX_GEN_LAYERS: usize = 8;
const MAX_GEN_CHUNKS: usize = 16;
const MAX_GEN_IMAGES: usize = 4;
const MAX_GEN_IMAGE_LAYERS: usize = 16;
const MAX_GEN_REFS: usize = 8;
const MAX_TWEAKS: usize = 4;
const MAX_REPEAT_IMAGES: u16 = 300;
const MAX_REPEAT_LAYERS: u16 = 4200;
const MAX_REPEAT_REFS: u16 = 80;
/// Most layer references that repeating images may add, so a run stays
/// well under the 20 s timeout with the sanitizer on: 223 copies of an
/// image of 4200 layers made the checks (a chain ID per reference) take
/// over 20 s, a slow harness rather than a slow library (validation of that
/// manifest takes 0.1 s without the sanitizer).
const MAX_REPEATED_IMAGE_LAYERS: usize = 50_000;

#[derive(Arbitrary, Debug)]
pub struct ManifestSpec {
    pub layers: Vec<Vec<(u32, u32)>>,
    pub images: Vec<ImageGen>,
    pub tweaks: Vec<Tweak>,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct ImageGen {
    pub layers: Vec<u8>,
    pub refs: Vec<(u8, u8)>,
    pub variant: u32,
}

/// A change that may make the manifest invalid.
#[derive(Arbitrary, Debug)]
pub enum Tweak {
    // Before configs are derived from the layers.
    FirstChunk(u8, u32),
    ChunkCount(u8, u32),
    LayerSize(u8, u64),
    ChunkSize(u16, u32),
    ChunkZsize(u16, u32),
    DiffId(u8, String),
    DiffIdOf(u8, u8),
    OrphanChunk,
    RemoveChunk(u16),
    SwapLayers(u8, u8),
    ImageLayer(u8, u32),
    Ref(u8, String),
    RepeatImage(u8, u16),
    RepeatLayer(u16),
    RepeatRef(u8, u16),
    RepeatImageLayer(u8, u16),
    // After: configs and IDs.
    Config(u8, Vec<u8>),
    ConfigKeepId(u8, Vec<u8>),
    ImageId(u8, String),
    DuplicateImage(u8),
}

impl ManifestSpec {
    /// Whether the spec builds a manifest that must validate: no tweaks,
    /// at least one image, and no two images alike.
    pub fn must_validate(&self, m: &Manifest) -> bool {
        let mut ids: Vec<&str> = m.images.iter().map(|i| i.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        self.tweaks.is_empty() && !m.images.is_empty() && ids.len() == m.images.len()
    }

    pub fn build(&self) -> Manifest {
        let mut m = Manifest {
            images: Vec::new(),
            layers: Vec::new(),
            chunks: Vec::new(),
        };
        for (i, chunks) in self.layers.iter().take(MAX_GEN_LAYERS).enumerate() {
            push_layer(&mut m, i, chunks);
        }
        let mut plans: Vec<ImageGen> = self.images.iter().take(MAX_GEN_IMAGES).cloned().collect();
        let mut refs: Vec<Vec<String>> = plans
            .iter()
            .map(|p| p.refs.iter().take(MAX_GEN_REFS).map(simple_ref).collect())
            .collect();
        let tweaks = &self.tweaks[..self.tweaks.len().min(MAX_TWEAKS)];
        let mut raw_layers: Vec<Vec<u32>> = plans
            .iter()
            .map(|p| layer_indices(&p.layers, m.layers.len()))
            .collect();
        for t in tweaks {
            before_configs(&mut m, &mut plans, &mut refs, &mut raw_layers, t);
        }
        for ((plan, refs), layers) in plans.iter().zip(refs).zip(raw_layers) {
            let config = config_for(&m, &layers, plan.variant);
            m.images.push(ImageEntry {
                id: sha256_digest(&config),
                refs,
                config,
                layers,
            });
        }
        for t in tweaks {
            after_configs(&mut m, t);
        }
        m
    }
}

fn push_layer(m: &mut Manifest, i: usize, chunks: &[(u32, u32)]) {
    let first = m.chunks.len() as u32;
    let mut size = 0u64;
    for (j, &(s, z)) in chunks.iter().take(MAX_GEN_CHUNKS).enumerate() {
        let chunk_size = 1 + s % MAX_CHUNK_SIZE;
        let bound = zstd::zstd_safe::compress_bound(chunk_size as usize) as u32;
        size += u64::from(chunk_size);
        m.chunks.push(ChunkEntry {
            hash: Hash::of(&[i as u8, j as u8]),
            size: chunk_size,
            zsize: 1 + z % bound,
        });
    }
    m.layers.push(LayerEntry {
        diff_id: sha256_digest(format!("layer {i}").as_bytes()),
        size,
        first_chunk: first,
        chunk_count: m.chunks.len() as u32 - first,
    });
}

fn simple_ref(&(name, tag): &(u8, u8)) -> String {
    format!("app{name}:v{tag}")
}

fn layer_indices(picks: &[u8], layers: usize) -> Vec<u32> {
    match layers {
        0 => Vec::new(),
        n => picks
            .iter()
            .take(MAX_GEN_IMAGE_LAYERS)
            .map(|&p| (usize::from(p) % n) as u32)
            .collect(),
    }
}

/// An image config listing the diffIDs of `layers` (a placeholder for an
/// index out of range, which validation must catch).
fn config_for(m: &Manifest, layers: &[u32], variant: u32) -> Vec<u8> {
    let diff_ids: Vec<&str> = layers
        .iter()
        .map(|&l| {
            m.layers
                .get(l as usize)
                .map_or("sha256:none", |l| l.diff_id.as_str())
        })
        .collect();
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "variant": variant,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes()
}

fn before_configs(
    m: &mut Manifest,
    plans: &mut Vec<ImageGen>,
    refs: &mut Vec<Vec<String>>,
    layers: &mut Vec<Vec<u32>>,
    t: &Tweak,
) {
    match t {
        Tweak::FirstChunk(i, v) => with(&mut m.layers, *i, |l| l.first_chunk = *v),
        Tweak::ChunkCount(i, v) => with(&mut m.layers, *i, |l| l.chunk_count = *v),
        Tweak::LayerSize(i, v) => with(&mut m.layers, *i, |l| l.size = *v),
        Tweak::ChunkSize(i, v) => with(&mut m.chunks, *i, |c| c.size = *v),
        Tweak::ChunkZsize(i, v) => with(&mut m.chunks, *i, |c| c.zsize = *v),
        Tweak::DiffId(i, s) => with(&mut m.layers, *i, |l| l.diff_id = s.clone()),
        Tweak::DiffIdOf(i, j) => {
            if let Some(src) = pick(&m.layers, *j).map(|l| l.diff_id.clone()) {
                with(&mut m.layers, *i, |l| l.diff_id = src);
            }
        }
        Tweak::OrphanChunk => m.chunks.push(m.chunks.last().copied().unwrap_or(ChunkEntry {
            hash: Hash([0; 32]),
            size: 1,
            zsize: 1,
        })),
        Tweak::RemoveChunk(i) if !m.chunks.is_empty() => {
            let n = m.chunks.len();
            m.chunks.remove(usize::from(*i) % n);
        }
        Tweak::SwapLayers(i, j) if !m.layers.is_empty() => {
            let n = m.layers.len();
            m.layers.swap(usize::from(*i) % n, usize::from(*j) % n);
        }
        Tweak::ImageLayer(i, v) => with(layers, *i, |l| l.push(*v)),
        Tweak::Ref(i, s) => with(refs, *i, |r| r.push(s.clone())),
        Tweak::RepeatImage(i, n) => {
            if let Some(plan) = pick(plans, *i).cloned() {
                let picked = pick(layers, *i).cloned().unwrap_or_default();
                let copies =
                    (*n % MAX_REPEAT_IMAGES).min(cap_u16(MAX_REPEATED_IMAGE_LAYERS / picked.len().max(1)));
                for k in 0..u32::from(copies) {
                    plans.push(ImageGen {
                        variant: plan.variant.wrapping_add(k + 1),
                        ..plan.clone()
                    });
                    layers.push(picked.clone());
                    refs.push(Vec::new());
                }
            }
        }
        Tweak::RepeatLayer(n) => {
            for k in 0..*n % MAX_REPEAT_LAYERS {
                m.layers.push(LayerEntry {
                    diff_id: sha256_digest(format!("empty {k}").as_bytes()),
                    size: 0,
                    first_chunk: m.chunks.len() as u32,
                    chunk_count: 0,
                });
            }
        }
        Tweak::RepeatImageLayer(i, n) => with(layers, *i, |l| {
            if let Some(&last) = l.last() {
                l.extend(std::iter::repeat_n(last, usize::from(*n % MAX_REPEAT_LAYERS)));
            }
        }),
        Tweak::RepeatRef(i, n) => with(refs, *i, |r| {
            r.extend((0..*n % MAX_REPEAT_REFS).map(|k| format!("r{k}:t")))
        }),
        _ => {}
    }
}

fn after_configs(m: &mut Manifest, t: &Tweak) {
    match t {
        Tweak::Config(i, bytes) => with(&mut m.images, *i, |img| {
            img.config = bytes.clone();
            img.id = sha256_digest(bytes);
        }),
        Tweak::ConfigKeepId(i, bytes) => with(&mut m.images, *i, |img| img.config = bytes.clone()),
        Tweak::ImageId(i, s) => with(&mut m.images, *i, |img| img.id = s.clone()),
        Tweak::DuplicateImage(i) => {
            if let Some(img) = pick(&m.images, *i).cloned() {
                m.images.push(img);
            }
        }
        _ => {}
    }
}

fn pick<T>(items: &[T], i: impl Into<usize>) -> Option<&T> {
    match items.len() {
        0 => None,
        n => items.get(i.into() % n),
    }
}

fn with<T>(items: &mut [T], i: impl Into<usize>, f: impl FnOnce(&mut T)) {
    let n = items.len();
    if n > 0 {
        f(&mut items[i.into() % n]);
    }
}

fn cap_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}
