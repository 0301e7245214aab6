//! The load archive as an OCI image layout, for podman: `oci-layout`, the
//! configs, the canonical manifests ([`oci::image_manifest`]) and only the
//! missing layers under `blobs/sha256/`, then `index.json` naming each image
//! by its references. podman reuses the layers it holds by digest (a layer
//! blob's digest is its diffID), where a legacy archive must be complete.

use std::collections::BTreeSet;
use std::io::Write;

use super::load::{append, append_layer, Chunks, Layout, LoadTarError};
use crate::content::manifest::{digest_hex, Manifest};
use crate::content::oci;

/// An OCI layout of `images` with only `layers` among the layer blobs: the
/// config, the canonical manifest ([`oci::image_manifest`]) and an
/// `index.json` entry per reference (one without a name for an untagged
/// image), written last.
pub(super) fn write<W: Write>(
    tar: &mut tar::Builder<W>,
    manifest: &Manifest,
    images: &[usize],
    layers: &BTreeSet<usize>,
    chunks: &Chunks<'_>,
) -> Result<(), LoadTarError> {
    append(tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut index = Vec::new();
    for &i in images {
        let image = &manifest.images[i];
        append(tar, &blob_name(&image.id), &image.config)?;
        let sizes = image.layers.iter().map(|&l| {
            let layer = &manifest.layers[l as usize];
            (layer.diff_id.as_str(), layer.size)
        });
        let (bytes, descriptor) = oci::image_manifest(&image.config, sizes);
        append(tar, &blob_name(&descriptor.digest), &bytes)?;
        index.extend(index_entries(&image.refs, &descriptor));
    }
    for &l in layers {
        append_layer(tar, manifest, l, chunks, Layout::Oci)?;
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::INDEX_TYPE,
        "manifests": index,
    });
    append(
        tar,
        "index.json",
        &serde_json::to_vec(&index).expect("an index serialises"),
    )
}

/// `index.json` entries of an image: one per reference, named by it.
fn index_entries(refs: &[String], manifest: &oci::Descriptor) -> Vec<serde_json::Value> {
    let entry = |name: Option<&String>| {
        let mut entry = serde_json::to_value(manifest).expect("a descriptor serialises");
        if let Some(name) = name {
            entry["annotations"] = serde_json::json!({ oci::REF_NAME: name });
        }
        entry
    };
    match refs.is_empty() {
        true => vec![entry(None)],
        false => refs.iter().map(Some).map(entry).collect(),
    }
}

pub(super) fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest_hex(digest))
}
