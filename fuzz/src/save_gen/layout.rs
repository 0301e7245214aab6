//! The archive before it becomes entries: layers, configs and the lines of
//! `manifest.json`, laid out as Docker's legacy or OCI `docker save` does;
//! and what `parse_save` must make of it when nothing was broken.

use std::collections::HashSet;
use std::io::Write;

use p2pimg::content::manifest::sha256_digest;
use serde_json::json;

use super::tar_writer::{Entry, Kind};
use super::{config_json, hex_digest, layer_tar, Compression, LinkKind, SaveSpec};

/// A built archive and, if it is well-formed, what it must parse to.
pub struct Built {
    pub bytes: Vec<u8>,
    /// The images `parse_save` must return, in order; empty if it must fail.
    pub expected: Option<Vec<ExpectedImage>>,
}

/// One image as `parse_save` must return it.
#[derive(Debug, PartialEq, Eq)]
pub struct ExpectedImage {
    pub id: String,
    pub refs: Vec<String>,
    /// Bottom first: diffID and uncompressed content.
    pub layers: Vec<(String, Vec<u8>)>,
}

pub(super) struct Layer {
    /// Uncompressed tar.
    content: Vec<u8>,
    /// As written in the archive.
    stored: Vec<u8>,
    /// The earlier layer this one links to, and how.
    alias: Option<(usize, LinkKind)>,
    /// Legacy directory name.
    legacy_id: String,
}

/// One line of `manifest.json`.
pub(super) struct Line {
    pub config: String,
    pub tags: Vec<String>,
    pub layers: Vec<String>,
}

pub(super) struct Model {
    pub oci: bool,
    layers: Vec<Layer>,
    /// Per image: config bytes (after faults) and its archive name.
    pub configs: Vec<(Vec<u8>, String)>,
    /// Per image: indices into `layers`.
    pub image_layers: Vec<Vec<usize>>,
    pub lines: Vec<Line>,
    /// `manifest.json` replaced by these bytes.
    pub manifest_raw: Option<Vec<u8>>,
}

impl Model {
    pub fn new(spec: &SaveSpec) -> Self {
        let mut layers: Vec<Layer> = Vec::new();
        for (i, l) in spec.layers.iter().enumerate() {
            let alias = l
                .alias_of
                .filter(|_| i > 0)
                .map(|(j, kind)| (usize::from(j) % i, kind));
            let (content, stored) = match alias {
                Some((j, _)) => (layers[j].content.clone(), layers[j].stored.clone()),
                None => {
                    let content = layer_tar(&l.files);
                    let stored = compress(&content, l.compression);
                    (content, stored)
                }
            };
            let legacy_id = hex_digest(format!("layer {i}").as_bytes());
            layers.push(Layer {
                content,
                stored,
                alias,
                legacy_id,
            });
        }
        let mut model = Model {
            oci: spec.oci,
            layers,
            configs: Vec::new(),
            image_layers: Vec::new(),
            lines: Vec::new(),
            manifest_raw: None,
        };
        for image in &spec.images {
            let indices: Vec<usize> = match model.layers.len() {
                0 => Vec::new(),
                n => image.layers.iter().map(|&j| usize::from(j) % n).collect(),
            };
            let diff_ids: Vec<String> = indices.iter().map(|&j| model.diff_id(j)).collect();
            let config = config_json(&diff_ids, image.variant);
            let config_name = model.config_name(&config);
            model.lines.push(Line {
                config: config_name.clone(),
                tags: image.tags.iter().map(|(a, b)| format!("img{a}:v{b}")).collect(),
                layers: indices.iter().map(|&j| model.layer_path(j)).collect(),
            });
            model.configs.push((config, config_name));
            model.image_layers.push(indices);
        }
        model
    }

    fn diff_id(&self, layer: usize) -> String {
        sha256_digest(&self.layers[layer].content)
    }

    fn config_name(&self, config: &[u8]) -> String {
        match self.oci {
            true => format!("blobs/sha256/{}", hex_digest(config)),
            false => format!("{}.json", hex_digest(config)),
        }
    }

    /// Where layer `i` is in the archive.
    fn layer_path(&self, i: usize) -> String {
        let layer = &self.layers[i];
        match (self.oci, layer.alias) {
            (true, Some((j, _))) => self.layer_path(j),
            (true, None) => format!("blobs/sha256/{}", hex_digest(&layer.stored)),
            (false, _) => format!("{}/layer.tar", layer.legacy_id),
        }
    }

    /// The archive's entries, in the order Docker writes them.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        if self.oci {
            out.push(Entry::dir("blobs/"));
            out.push(Entry::dir("blobs/sha256/"));
        }
        for i in 0..self.layers.len() {
            self.layer_entries(i, &mut out);
        }
        for (config, name) in &self.configs {
            out.push(Entry::file(name.clone(), config.clone()));
        }
        if self.oci {
            self.oci_entries(&mut out);
        }
        let manifest = self.manifest_raw.clone().unwrap_or_else(|| self.manifest_json());
        out.push(Entry::file("manifest.json", manifest));
        out.push(Entry::file("repositories", self.repositories()));
        dedup_by_name(out)
    }

    fn layer_entries(&self, i: usize, out: &mut Vec<Entry>) {
        let layer = &self.layers[i];
        if self.oci {
            if layer.alias.is_none() {
                out.push(Entry::file(self.layer_path(i), layer.stored.clone()));
            }
            return;
        }
        let id = &layer.legacy_id;
        out.push(Entry::dir(format!("{id}/")));
        out.push(Entry::file(format!("{id}/VERSION"), b"1.0".to_vec()));
        out.push(Entry::file(
            format!("{id}/json"),
            json!({ "id": id }).to_string().into_bytes(),
        ));
        let path = self.layer_path(i);
        out.push(match layer.alias {
            None => Entry::file(path, layer.stored.clone()),
            Some((j, LinkKind::Symlink)) => {
                let target = format!("../{}/layer.tar", self.layers[j].legacy_id);
                Entry::new(path, Kind::Symlink(target), Vec::new())
            }
            Some((j, LinkKind::Hardlink)) => Entry::new(path, Kind::Hardlink(self.layer_path(j)), Vec::new()),
        });
    }

    /// Per-image OCI manifests, `index.json` and `oci-layout`.
    fn oci_entries(&self, out: &mut Vec<Entry>) {
        let mut manifests = Vec::new();
        for (image, (config, _)) in self.configs.iter().enumerate() {
            let layers: Vec<_> = self.image_layers[image]
                .iter()
                .map(|&j| descriptor("application/vnd.oci.image.layer.v1.tar", &self.layers[j].stored))
                .collect();
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": descriptor("application/vnd.oci.image.config.v1+json", config),
                "layers": layers,
            })
            .to_string()
            .into_bytes();
            manifests.push(descriptor(
                "application/vnd.oci.image.manifest.v1+json",
                &manifest,
            ));
            out.push(Entry::file(
                format!("blobs/sha256/{}", hex_digest(&manifest)),
                manifest,
            ));
        }
        let index = json!({"schemaVersion": 2, "manifests": manifests});
        out.push(Entry::file("index.json", index.to_string().into_bytes()));
        out.push(Entry::file(
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
    }

    fn manifest_json(&self) -> Vec<u8> {
        let lines: Vec<_> = self
            .lines
            .iter()
            .map(|l| {
                let tags = (!l.tags.is_empty()).then_some(&l.tags);
                json!({"Config": l.config, "RepoTags": tags, "Layers": l.layers})
            })
            .collect();
        serde_json::to_vec(&lines).expect("json")
    }

    fn repositories(&self) -> Vec<u8> {
        let mut repos = serde_json::Map::new();
        for (line, (config, _)) in self.lines.iter().zip(&self.configs) {
            for tag in &line.tags {
                let (name, tag) = tag.split_once(':').expect("tags have a colon");
                let entry = repos.entry(name).or_insert_with(|| json!({}));
                entry[tag] = json!(hex_digest(config));
            }
        }
        serde_json::to_vec(&repos).expect("json")
    }

    /// What `parse_save` must return for this model unbroken: images
    /// merged by ID as the manifest builder does (refs deduplicated, in
    /// `manifest.json` order), then in ID order, as the library sorts them.
    pub fn expected(&self) -> Vec<ExpectedImage> {
        let mut out: Vec<ExpectedImage> = Vec::new();
        for (image, line) in self.lines.iter().enumerate() {
            let id = sha256_digest(&self.configs[image].0);
            if let Some(existing) = out.iter_mut().find(|e| e.id == id) {
                for tag in &line.tags {
                    if !existing.refs.contains(tag) {
                        existing.refs.push(tag.clone());
                    }
                }
                continue;
            }
            let layers = self.image_layers[image]
                .iter()
                .map(|&j| (self.diff_id(j), self.layers[j].content.clone()))
                .collect();
            out.push(ExpectedImage {
                id,
                refs: line.tags.clone(),
                layers,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": sha256_digest(blob), "size": blob.len()})
}

/// Keeps the first entry of each name: identical configs or blobs are
/// written once, as Docker does.
fn dedup_by_name(entries: Vec<Entry>) -> Vec<Entry> {
    let mut seen = HashSet::new();
    entries
        .into_iter()
        .filter(|e| seen.insert(e.name.clone()))
        .collect()
}

fn compress(content: &[u8], how: Compression) -> Vec<u8> {
    match how {
        Compression::None => content.to_vec(),
        Compression::Gzip => gzip(content),
        Compression::GzipTwoMembers => {
            let (a, b) = content.split_at(content.len() / 2);
            [gzip(a), gzip(b)].concat()
        }
        Compression::Zstd => zstd::bulk::compress(content, 1).expect("zstd"),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}
