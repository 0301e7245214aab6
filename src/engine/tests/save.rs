//! `parse_save` on archives built in memory in both of Docker's layouts.

use std::io::Write;

use super::*;
use crate::content::manifest::sha256_digest;

/// Small chunks, so each test layer spans several.
const OPTS: PackOptions = PackOptions {
    chunk_size: 4096,
    zstd_level: 1,
};

/// A layer tar holding one file of `len` pseudo-random bytes named `name`.
fn layer_tar(name: &str, seed: u32, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, name, &data[..]).unwrap();
    tar.into_inner().unwrap()
}

fn config(diff_ids: &[&[u8]]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|l| sha256_digest(l)).collect();
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ids},
    })
    .to_string()
    .into_bytes()
}

fn hex_of(data: &[u8]) -> String {
    crate::content::manifest::digest_hex(&sha256_digest(data)).to_string()
}

/// An outer archive being written, as `docker save` would.
struct Save(tar::Builder<Vec<u8>>);

impl Save {
    fn new() -> Self {
        Save(tar::Builder::new(Vec::new()))
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        self.0.append_data(&mut header, name, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        self.0.append_data(&mut header, name, &[][..]).unwrap();
        self
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        self.0.append_link(&mut header, name, target).unwrap();
        self
    }

    /// A file whose header name is written verbatim, bypassing the tar
    /// crate's own refusal of `..`.
    fn raw_name_file(&mut self, name: &[u8], data: &[u8]) -> &mut Self {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        self.0.finish().unwrap();
        std::mem::take(self.0.get_mut())
    }
}

fn store() -> (tempfile::TempDir, ChunkStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    (dir, store)
}

/// The uncompressed bytes of layer `index`, from the store, verified.
fn reassemble(manifest: &Manifest, store: &ChunkStore, index: u32) -> Vec<u8> {
    let layer = &manifest.layers[index as usize];
    manifest
        .layer_chunks(layer)
        .iter()
        .flat_map(|c| store.read_verified(c).unwrap())
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn legacy_layout_with_shared_base_and_symlinked_layer() {
    let (base, one, two) = (
        layer_tar("etc/base.txt", 1, 10_000),
        layer_tar("app/one.txt", 2, 9_000),
        layer_tar("app/two.txt", 3, 5_000),
    );
    let (config_a, config_b) = (config(&[&base, &one]), config(&[&base, &two]));
    let (id_a, id_b) = (sha256_digest(&config_a), sha256_digest(&config_b));
    let manifest_json = serde_json::json!([
        {"Config": format!("{}.json", hex_of(&config_a)), "RepoTags": ["app:1.4", "app:latest"],
         "Layers": ["a0/layer.tar", "a1/layer.tar"]},
        {"Config": format!("{}.json", hex_of(&config_b)), "RepoTags": null,
         "Layers": ["b0/layer.tar", "./b1/layer.tar"]},
    ]);
    let archive = Save::new()
        .dir("a0/")
        .file("a0/VERSION", b"1.0")
        .file("a0/json", b"{\"id\":\"a0\"}")
        .file("./a0/layer.tar", &base)
        .file("a1/layer.tar", &one)
        .dir("b0/")
        .symlink("b0/layer.tar", "../a0/layer.tar")
        .file("b1/layer.tar", &two)
        .file(&format!("{}.json", hex_of(&config_a)), &config_a)
        .file(&format!("{}.json", hex_of(&config_b)), &config_b)
        .file("manifest.json", manifest_json.to_string().as_bytes())
        .file("repositories", b"{\"app\":{\"1.4\":\"a1\"}}")
        .finish();
    let (_dir, store) = store();
    let manifest = parse_save(&archive[..], &store, &OPTS).unwrap();

    assert_eq!(manifest.images.len(), 2);
    // Images come out sorted by ID, whatever order manifest.json has.
    assert!(manifest.images[0].id < manifest.images[1].id);
    let find = |id: &str| manifest.images.iter().find(|i| i.id == id).unwrap();
    let (a, b) = (find(&id_a), find(&id_b));
    assert_eq!(a.refs, ["app:1.4", "app:latest"]);
    assert!(b.refs.is_empty());
    assert_eq!(a.config, config_a);
    // The base layer is listed once and shared.
    assert_eq!(manifest.layers.len(), 3);
    assert_eq!(a.layers[0], b.layers[0]);
    for (image, tars) in [(a, [&base, &one]), (b, [&base, &two])] {
        for (&index, tar) in image.layers.iter().zip(tars) {
            assert_eq!(manifest.layers[index as usize].diff_id, sha256_digest(tar));
            assert_eq!(&reassemble(&manifest, &store, index), tar);
        }
    }
    assert!(manifest.layers[0].chunk_count > 1, "layers span several chunks");
}

#[test]
fn oci_layout_with_gzip_and_zstd_layers() {
    let (base, app) = (
        layer_tar("etc/base.txt", 4, 12_000),
        layer_tar("app/x.txt", 5, 3_000),
    );
    let (base_gz, app_zst) = (gzip(&base), zstd::encode_all(&app[..], 3).unwrap());
    let cfg = config(&[&base, &app]);
    let blob = |data: &[u8]| format!("blobs/sha256/{}", hex_of(data));
    let oci_manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": sha256_digest(&cfg), "size": cfg.len()},
        "layers": [{"digest": sha256_digest(&base_gz)}, {"digest": sha256_digest(&app_zst)}],
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"digest": sha256_digest(&oci_manifest), "annotations": {"io.containerd.image.name": "docker.io/library/web:2"}}
    ]});
    let manifest_json = serde_json::json!([
        {"Config": blob(&cfg), "RepoTags": ["web:2"], "Layers": [blob(&base_gz), blob(&app_zst)]}
    ]);
    let archive = Save::new()
        .dir("blobs/")
        .dir("blobs/sha256/")
        .file(&blob(&base_gz), &base_gz)
        .file(&blob(&app_zst), &app_zst)
        .file(&blob(&cfg), &cfg)
        .file(&blob(&oci_manifest), &oci_manifest)
        .file("index.json", index.to_string().as_bytes())
        .file("manifest.json", manifest_json.to_string().as_bytes())
        .file("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}")
        .finish();
    let (_dir, store) = store();
    let manifest = parse_save(&archive[..], &store, &OPTS).unwrap();

    let image = &manifest.images[0];
    assert_eq!(image.id, sha256_digest(&cfg));
    assert_eq!(image.refs, ["web:2"]);
    for (&index, tar) in image.layers.iter().zip([&base, &app]) {
        assert_eq!(manifest.layers[index as usize].diff_id, sha256_digest(tar));
        assert_eq!(manifest.layers[index as usize].size, tar.len() as u64);
        assert_eq!(&reassemble(&manifest, &store, index), tar);
    }
}

#[test]
fn parent_dir_names_are_refused() {
    let (_dir, store) = store();
    let archive = Save::new().raw_name_file(b"../evil", b"x").finish();
    let err = parse_save(&archive[..], &store, &OPTS).unwrap_err();
    assert!(matches!(err, SaveError::UnsafePath { .. }), "{err}");

    let archive = Save::new().symlink("a/layer.tar", "../../etc/passwd").finish();
    let err = parse_save(&archive[..], &store, &OPTS).unwrap_err();
    assert!(matches!(err, SaveError::UnsafePath { .. }), "{err}");

    let manifest_json = br#"[{"Config":"../c.json","RepoTags":null,"Layers":[]}]"#;
    let archive = Save::new().file("manifest.json", manifest_json).finish();
    let err = parse_save(&archive[..], &store, &OPTS).unwrap_err();
    assert!(matches!(err, SaveError::UnsafePath { .. }), "{err}");
}

#[test]
fn layer_that_does_not_match_the_config_names_the_image() {
    let (base, other) = (layer_tar("a", 6, 2_000), layer_tar("b", 7, 2_000));
    let cfg = config(&[&base]);
    let manifest_json = serde_json::json!([
        {"Config": "c.json", "RepoTags": ["app:1"], "Layers": ["l/layer.tar"]}
    ]);
    let archive = Save::new()
        .file("l/layer.tar", &other)
        .file("c.json", &cfg)
        .file("manifest.json", manifest_json.to_string().as_bytes())
        .finish();
    let (_dir, store) = store();
    let err = parse_save(&archive[..], &store, &OPTS).unwrap_err();
    assert!(
        matches!(err, SaveError::DiffIdMismatch { ref image, .. } if image == "app:1"),
        "{err}"
    );
}

#[test]
fn missing_pieces_are_named() {
    let (_dir, store) = store();
    let archive = Save::new()
        .file("x/layer.tar", &layer_tar("a", 8, 2_000))
        .finish();
    let err = parse_save(&archive[..], &store, &OPTS).unwrap_err();
    assert!(matches!(err, SaveError::MissingManifest), "{err}");

    let manifest_json = br#"[{"Config":"c.json","RepoTags":["app:1"],"Layers":[]}]"#;
    let archive = Save::new().file("manifest.json", manifest_json).finish();
    let err = parse_save(&archive[..], &store, &OPTS).unwrap_err();
    assert!(matches!(err, SaveError::Missing { what: "config", .. }), "{err}");
    assert!(err.to_string().contains("app:1"), "{err}");

    let garbage = vec![b'x'; 2048];
    let err = parse_save(&garbage[..], &store, &OPTS).unwrap_err();
    assert!(matches!(err, SaveError::Tar(_)), "{err}");
}
