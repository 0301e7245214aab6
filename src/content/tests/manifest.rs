//! Manifest validation: a good manifest passes, each kind of damage is named.

use super::*;

/// A manifest with one image of two layers, chunks of 4 bytes.
pub(crate) fn sample() -> Manifest {
    let layer_data: [&[u8]; 2] = [b"layer-one-bytes", b"layer-two"];
    let mut layers = Vec::new();
    let mut chunks = Vec::new();
    for data in layer_data {
        let first_chunk = chunks.len() as u32;
        for piece in data.chunks(4) {
            chunks.push(ChunkEntry {
                hash: Hash::of(piece),
                size: piece.len() as u32,
                zsize: 9,
            });
        }
        layers.push(LayerEntry {
            diff_id: sha256_digest(data),
            size: data.len() as u64,
            first_chunk,
            chunk_count: chunks.len() as u32 - first_chunk,
        });
    }
    let config = serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [layers[0].diff_id, layers[1].diff_id]}
    })
    .to_string()
    .into_bytes();
    let image = ImageEntry {
        id: sha256_digest(&config),
        refs: vec!["app:1.4".into()],
        config,
        layers: vec![0, 1],
    };
    Manifest {
        images: vec![image],
        layers,
        chunks,
    }
}

#[test]
fn sample_is_valid() {
    sample().validate().unwrap();
}

#[test]
fn id_changes_with_content() {
    let a = sample();
    let mut b = sample();
    b.images[0].refs.push("app:latest".into());
    assert_ne!(a.id(), b.id());
    assert_eq!(a.id(), sample().id());
}

#[test]
fn rejects_empty() {
    let mut m = sample();
    m.images.clear();
    assert_eq!(m.validate(), Err(ManifestError::Empty));
}

#[test]
fn rejects_config_that_does_not_match_id() {
    let mut m = sample();
    m.images[0].config.push(b' ');
    assert!(matches!(m.validate(), Err(ManifestError::ConfigMismatch { .. })));
}

#[test]
fn rejects_layers_that_disagree_with_config() {
    let mut m = sample();
    m.images[0].layers = vec![1, 0];
    assert!(matches!(m.validate(), Err(ManifestError::BadConfig { .. })));
}

#[test]
fn rejects_layer_index_out_of_range() {
    let mut m = sample();
    m.images[0].layers.push(7);
    assert!(matches!(
        m.validate(),
        Err(ManifestError::OutOfRange { what: "layer", .. })
    ));
}

#[test]
fn rejects_overlapping_chunk_runs() {
    let mut m = sample();
    m.layers[1].first_chunk -= 1;
    assert!(matches!(m.validate(), Err(ManifestError::BadLayer { .. })));
}

#[test]
fn rejects_chunk_run_past_the_end() {
    let mut m = sample();
    m.layers[1].chunk_count += 5;
    assert!(matches!(m.validate(), Err(ManifestError::BadLayer { .. })));
}

#[test]
fn rejects_orphan_chunks() {
    let mut m = sample();
    m.chunks.push(ChunkEntry {
        hash: Hash::of(b"x"),
        size: 1,
        zsize: 9,
    });
    assert!(matches!(m.validate(), Err(ManifestError::OutOfRange { .. })));
}

#[test]
fn rejects_size_mismatch() {
    let mut m = sample();
    m.layers[0].size += 1;
    assert!(matches!(m.validate(), Err(ManifestError::BadLayer { .. })));
}

#[test]
fn rejects_absurd_chunk_sizes() {
    let mut m = sample();
    m.chunks[0].size = MAX_CHUNK_SIZE + 1;
    assert!(matches!(
        m.validate(),
        Err(ManifestError::BadChunk { index: 0, .. })
    ));
    let mut m = sample();
    m.chunks[0].zsize = u32::MAX;
    assert!(matches!(
        m.validate(),
        Err(ManifestError::BadChunk { index: 0, .. })
    ));
}

#[test]
fn rejects_duplicates() {
    let mut m = sample();
    m.images.push(m.images[0].clone());
    assert!(matches!(
        m.validate(),
        Err(ManifestError::Duplicate { what: "image", .. })
    ));
    let mut m = sample();
    m.layers[1].diff_id = m.layers[0].diff_id.clone();
    assert!(matches!(
        m.validate(),
        Err(ManifestError::Duplicate { what: "layer", .. })
    ));
}

#[test]
fn rejects_malformed_digests_and_path_like_references() {
    let mut m = sample();
    m.layers[0].diff_id = "sha256:../../etc/passwd".into();
    assert!(matches!(m.validate(), Err(ManifestError::BadDigest(_))));
    for bad in ["", "../x", "/abs:1", "a b", "-rm", "a//b", "x\0y"] {
        assert!(check_reference(bad).is_err(), "{bad:?} accepted");
    }
    for good in ["app:1.4", "registry.local:5000/team/app:v2", "busybox"] {
        check_reference(good).unwrap();
    }
}

/// Issue #21: a crafted manifest (or bundle) naming a reference Docker
/// refuses is refused before anything is fetched, naming the reference.
#[test]
fn rejects_references_docker_refuses() {
    let digested = format!("app@sha256:{}", "f".repeat(64));
    let long = format!("{}:1", "a".repeat(300));
    let cases = [
        ("app:1:2", "app:1:2: a tag may not contain ':'"),
        ("App:1", "App:1: repository names must be lowercase"),
        ("app:bad/tag", "app:bad/tag: not a valid image reference"),
        ("app:", "app:: a tag is"),
        (digested.as_str(), "a digest reference cannot be applied as a tag"),
        (long.as_str(), "too long"),
    ];
    for (bad, shown) in cases {
        let mut m = sample();
        m.images[0].refs = vec!["app:1".into(), bad.to_string()];
        let err = m.validate().expect_err(bad);
        assert!(matches!(err, ManifestError::BadReference(_)), "{err:?}");
        assert!(err.to_string().contains(shown), "{err}");
    }
}

/// Issue #21: two images claiming one tag was accepted, and the tag landed
/// on whichever a node tagged last.
#[test]
fn rejects_a_reference_two_images_claim() {
    let mut m = sample();
    let mut other = m.images[0].clone();
    other.config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": [m.layers[0].diff_id]},
        "other": true
    }))
    .unwrap();
    other.id = sha256_digest(&other.config);
    other.layers = vec![0];
    other.refs = vec!["other:1".into()];
    m.images.push(other);
    m.validate().unwrap();
    m.images[0].refs = vec!["app:1".into()];
    m.images[1].refs = vec!["docker.io/library/app:1".into()];
    let err = m.validate().unwrap_err();
    assert!(matches!(err, ManifestError::SharedReference { .. }), "{err:?}");
    assert!(err.to_string().contains("docker.io/library/app:1"), "{err}");
    // The same image may carry one tag written two ways.
    m.images[1].refs = vec!["other:1".into()];
    m.images[0].refs = vec!["app".into(), "app:latest".into()];
    m.validate().unwrap();
}

#[test]
fn rejects_too_many_refs() {
    let mut m = sample();
    m.images[0].refs = (0..=MAX_REFS).map(|i| format!("app:{i}")).collect();
    assert!(matches!(
        m.validate(),
        Err(ManifestError::TooMany { what: "refs", .. })
    ));
}

#[test]
fn chain_ids_follow_docker() {
    // chain(1) = sha256("<chain0> <diff1>"), as in the image spec.
    let ids = chain_ids(["sha256:aa", "sha256:bb"]);
    assert_eq!(ids[0], "sha256:aa");
    assert_eq!(ids[1], sha256_digest(b"sha256:aa sha256:bb"));
}
