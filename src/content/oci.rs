//! The OCI image manifest p2pimg writes for an image it carries: the config
//! and the uncompressed layer tars, each blob named by its sha256 (a
//! layer's is its diffID). The bytes are canonical (the same image gives
//! the same bytes, so the same digest, on every node), whichever engine
//! they are loaded into: containerd's content store or podman's OCI-layout
//! load.

use serde::Serialize;

use super::manifest::sha256_digest;

/// Media type of an OCI image manifest.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed layer tar: how p2pimg carries layers.
pub const LAYER_TAR_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of an OCI index (`index.json` of a layout).
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The annotation that names an image in an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor, with its fields in the order OCI writes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    pub media_type: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

/// An image manifest, fields in a fixed order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The manifest of an image whose config has digest and size `config` and
/// whose layer blobs are `layers`, bottom first: compact JSON with a fixed
/// field order, so the same image always makes the same bytes and digest.
pub fn manifest_bytes(config: (&str, u64), layers: Vec<Descriptor>) -> Vec<u8> {
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: MANIFEST_TYPE,
        config: Descriptor {
            media_type: CONFIG_TYPE.to_string(),
            digest: config.0.to_string(),
            size: config.1,
        },
        layers,
    };
    serde_json::to_vec(&manifest).expect("a manifest serialises")
}

/// The canonical manifest of an image with `config` and layers given as
/// `(diffID, uncompressed size)`, bottom first, with its descriptor.
pub fn image_manifest<'a>(
    config: &[u8],
    layers: impl IntoIterator<Item = (&'a str, u64)>,
) -> (Vec<u8>, Descriptor) {
    let digest = sha256_digest(config);
    let layers = layers
        .into_iter()
        .map(|(diff_id, size)| layer(diff_id, size))
        .collect();
    let bytes = manifest_bytes((&digest, config.len() as u64), layers);
    let descriptor = Descriptor {
        media_type: MANIFEST_TYPE.to_string(),
        digest: sha256_digest(&bytes),
        size: bytes.len() as u64,
    };
    (bytes, descriptor)
}

/// The descriptor of a layer carried as its uncompressed tar.
pub fn layer(diff_id: &str, size: u64) -> Descriptor {
    Descriptor {
        media_type: LAYER_TAR_TYPE.to_string(),
        digest: diff_id.to_string(),
        size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_is_canonical_and_names_every_blob() {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let d = format!("sha256:{}", "1".repeat(64));
        let (bytes, descriptor) = image_manifest(config, [(d.as_str(), 10)]);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:"#),
            "{text}"
        );
        assert!(text.ends_with(&format!(r#""layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":10}}]}}"#)), "{text}");
        assert_eq!(descriptor.digest, sha256_digest(&bytes));
        assert_eq!(
            image_manifest(config, [(d.as_str(), 10)]).0,
            bytes,
            "same image, same bytes"
        );
    }
}
