//! The load archive read back with `tar`, and the body's refusal to end
//! after a failed write.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::content::manifest::{sha256_digest, ImageEntry, LayerEntry};
use crate::content::pack::{pack_layer, PackOptions};
use crate::engine::Engine;

/// Small chunks, so each layer spans several.
const OPTS: PackOptions = PackOptions {
    chunk_size: 1000,
    zstd_level: 1,
};

struct Fixture {
    _dir: tempfile::TempDir,
    store: ChunkStore,
    manifest: Manifest,
    layer_data: Vec<Vec<u8>>,
}

/// Two images, `app:1.4` = [base, one] and `tool` = [base, two], packed.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let layer_data: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; 2500 + 700 * i as usize]).collect();
    let mut manifest = Manifest {
        images: vec![],
        layers: vec![],
        chunks: vec![],
    };
    for data in &layer_data {
        let packed = pack_layer(&data[..], &store, &OPTS).unwrap();
        manifest.layers.push(LayerEntry {
            diff_id: packed.diff_id,
            size: packed.size,
            first_chunk: manifest.chunks.len() as u32,
            chunk_count: packed.chunks.len() as u32,
        });
        manifest.chunks.extend(packed.chunks);
    }
    for (refs, layers) in [(vec!["app:1.4"], [0u32, 1]), (vec!["tool"], [0, 2])] {
        let ids: Vec<&str> = layers
            .iter()
            .map(|&l| manifest.layers[l as usize].diff_id.as_str())
            .collect();
        let config = serde_json::json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": ids}})
            .to_string()
            .into_bytes();
        manifest.images.push(ImageEntry {
            id: sha256_digest(&config),
            refs: refs.into_iter().map(String::from).collect(),
            config,
            layers: layers.to_vec(),
        });
    }
    manifest.validate().unwrap();
    Fixture {
        _dir: dir,
        store,
        manifest,
        layer_data,
    }
}

/// Entry name → content of a tar in memory, in archive order.
fn read_tar(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(data);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            (name, content)
        })
        .collect()
}

fn hex(digest: &str) -> &str {
    digest_hex(digest)
}

#[test]
fn full_archive_has_manifest_configs_then_layers() {
    let f = fixture();
    let mut out = Vec::new();
    let all: BTreeSet<usize> = (0..3).collect();
    let written = write_load_tar(&f.manifest, &[0, 1], &all, &f.store, &mut out).unwrap();
    assert_eq!(written, out.len() as u64);
    let entries = read_tar(&out);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    let (a, b) = (&f.manifest.images[0], &f.manifest.images[1]);
    let layer = |i: usize| format!("{}/layer.tar", hex(&f.manifest.layers[i].diff_id));
    let expected = [
        "manifest.json".to_string(),
        format!("{}.json", hex(&a.id)),
        format!("{}.json", hex(&b.id)),
        layer(0),
        layer(1),
        layer(2),
    ];
    assert_eq!(names, expected);
    let by_name: BTreeMap<_, _> = entries.into_iter().collect();
    assert_eq!(by_name[&expected[1]], a.config);
    for (i, data) in f.layer_data.iter().enumerate() {
        assert_eq!(&by_name[&layer(i)], data);
    }
    let json: serde_json::Value = serde_json::from_slice(&by_name["manifest.json"]).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"Config": expected[1], "RepoTags": ["app:1.4"], "Layers": [layer(0), layer(1)]},
            {"Config": expected[2], "RepoTags": ["tool:latest"], "Layers": [layer(0), layer(2)]},
        ])
    );
}

#[test]
fn oci_layout_names_blobs_by_digest_and_leaves_held_layers_out() {
    let f = fixture();
    let chunks = Chunks {
        store: &f.store,
        arrivals: &Arrivals::all(f.manifest.chunks.len()),
        cancelled: &|| false,
    };
    let mut out = Vec::new();
    let only_top = BTreeSet::from([1]);
    write_streaming_tar(&f.manifest, &[0], &only_top, &chunks, &mut out, Layout::Oci).unwrap();
    let entries: BTreeMap<_, _> = read_tar(&out).into_iter().collect();
    let image = &f.manifest.images[0];
    let blob = |digest: &str| format!("blobs/sha256/{}", hex(digest));
    let sizes = image.layers.iter().map(|&l| {
        let layer = &f.manifest.layers[l as usize];
        (layer.diff_id.as_str(), layer.size)
    });
    let (manifest_bytes, descriptor) = crate::content::oci::image_manifest(&image.config, sizes);
    let expected = BTreeMap::from([
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (blob(&image.id), image.config.clone()),
        (blob(&descriptor.digest), manifest_bytes),
        (blob(&f.manifest.layers[1].diff_id), f.layer_data[1].clone()),
        ("index.json".to_string(), entries["index.json"].clone()),
    ]);
    assert_eq!(entries, expected, "the base layer, held, is left out");
    let index: serde_json::Value = serde_json::from_slice(&entries["index.json"]).unwrap();
    assert_eq!(index["manifests"][0]["digest"], descriptor.digest);
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "app:1.4"
    );
}

/// Writes the full archive of both images while `arrive` marks chunks from
/// another thread.
fn write_while_arriving(
    f: &Fixture,
    arrivals: &Arc<Arrivals>,
    arrive: impl FnOnce(&Arrivals) + Send + 'static,
) -> Result<Vec<u8>, LoadTarError> {
    let marker = {
        let arrivals = arrivals.clone();
        std::thread::spawn(move || arrive(&arrivals))
    };
    let chunks = Chunks {
        store: &f.store,
        arrivals,
        cancelled: &|| false,
    };
    let mut out = Vec::new();
    let written = write_streaming_tar(
        &f.manifest,
        &[0, 1],
        &(0..3).collect(),
        &chunks,
        &mut out,
        Layout::DockerSave,
    );
    marker.join().unwrap();
    written.map(|_| out)
}

#[test]
fn a_streaming_archive_waits_for_chunks_arriving_out_of_order() {
    let f = fixture();
    let n = f.manifest.chunks.len();
    let arrivals = Arc::new(Arrivals::new(vec![false; n]));
    let out = write_while_arriving(&f, &arrivals, move |arrivals| {
        for i in (0..n as u32).rev() {
            std::thread::sleep(Duration::from_millis(2));
            arrivals.mark(i);
        }
    })
    .unwrap();
    let mut all = Vec::new();
    write_load_tar(&f.manifest, &[0, 1], &(0..3).collect(), &f.store, &mut all).unwrap();
    assert_eq!(out, all, "the same archive as from a complete store");
}

#[test]
fn a_streaming_archive_fails_when_fetching_stops() {
    let f = fixture();
    let n = f.manifest.chunks.len();
    let arrivals = Arc::new(Arrivals::new(vec![false; n]));
    let err = write_while_arriving(&f, &arrivals, |arrivals| {
        arrivals.mark(0);
        std::thread::sleep(Duration::from_millis(20));
        arrivals.close("no peer has chunk 1");
    })
    .unwrap_err();
    let LoadTarError::Fetch { diff_id, reason } = &err else {
        panic!("{err}");
    };
    assert_eq!(diff_id, &f.manifest.layers[0].diff_id);
    assert!(reason.contains("no peer has chunk 1"), "{reason}");
}

#[test]
fn layers_not_requested_are_left_out_but_still_listed() {
    let f = fixture();
    let mut out = Vec::new();
    write_load_tar(&f.manifest, &[0], &BTreeSet::from([1]), &f.store, &mut out).unwrap();
    let entries = read_tar(&out);
    let layer_entries: Vec<&str> = entries
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.ends_with("/layer.tar"))
        .collect();
    let one = format!("{}/layer.tar", hex(&f.manifest.layers[1].diff_id));
    assert_eq!(layer_entries, [one.as_str()]);
    let json: serde_json::Value = serde_json::from_slice(&entries[0].1).unwrap();
    assert_eq!(json[0]["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(json.as_array().unwrap().len(), 1);
}

#[test]
fn damaged_chunk_fails_the_archive() {
    let f = fixture();
    let victim = f.manifest.chunks[f.manifest.layers[2].first_chunk as usize + 1];
    let mut z = f.store.read(&victim.hash).unwrap();
    z[0] ^= 0xff;
    let path = f
        ._dir
        .path()
        .join("chunks")
        .join(&victim.hash.to_hex()[..2])
        .join(victim.hash.to_hex());
    std::fs::write(path, z).unwrap();
    let err = write_load_tar(&f.manifest, &[1], &BTreeSet::from([2]), &f.store, Vec::new()).unwrap_err();
    assert!(
        matches!(err, LoadTarError::Chunk { ref diff_id, source: StoreError::Damaged { .. } }
            if *diff_id == f.manifest.layers[2].diff_id),
        "{err}"
    );
}

#[test]
fn indices_outside_the_manifest_are_refused() {
    let f = fixture();
    let err = write_load_tar(&f.manifest, &[2], &BTreeSet::new(), &f.store, Vec::new()).unwrap_err();
    assert!(
        matches!(
            err,
            LoadTarError::OutOfRange {
                what: "image",
                index: 2
            }
        ),
        "{err}"
    );
    let err = write_load_tar(&f.manifest, &[0], &BTreeSet::from([3]), &f.store, Vec::new()).unwrap_err();
    assert!(
        matches!(
            err,
            LoadTarError::OutOfRange {
                what: "layer",
                index: 3
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn body_ends_only_after_the_writer_finished() {
    // Finished writer: every frame, then the end.
    let (tx, rx) = mpsc::channel(2);
    let (done_tx, done_rx) = oneshot::channel();
    tx.send(Bytes::from_static(b"frame")).await.unwrap();
    drop(tx);
    done_tx.send(()).unwrap();
    let frames: Vec<Bytes> = body(rx, done_rx, CancellationToken::new()).collect().await;
    assert_eq!(frames, [Bytes::from_static(b"frame")]);

    // Failed writer: the frames so far, then no end, so the upload is cut.
    let (tx, rx) = mpsc::channel(2);
    let (done_tx, done_rx) = oneshot::channel::<()>();
    tx.send(Bytes::from_static(b"partial")).await.unwrap();
    drop((tx, done_tx));
    let mut stream = Box::pin(body(rx, done_rx, CancellationToken::new()));
    assert_eq!(stream.next().await.unwrap(), Bytes::from_static(b"partial"));
    let ended = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(ended.is_err(), "body ended after a failed write");
}

#[tokio::test]
async fn frames_are_one_mib_and_cancel_releases_the_writer() {
    let (tx, mut rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let writer_cancel = cancel.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut frames = FrameWriter::new(tx, writer_cancel);
        // 3.5 frames: three full ones go out; the channel holds one, so
        // the writer blocks until cancelled.
        frames.write_all(&vec![7u8; LOAD_FRAME_SIZE * 7 / 2])
    });
    let first = rx.recv().await.unwrap();
    assert_eq!(first.len(), LOAD_FRAME_SIZE);
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
}

/// The agent and `push` run these inside spawned tasks: they must be `Send`.
#[allow(dead_code, clippy::manual_async_fn)]
fn public_futures_are_send(engine: &DockerApi, node: &Engine, manifest: Arc<Manifest>, store: ChunkStore) {
    fn send<T: Send>(_: T) {}
    send(load_images(
        engine,
        manifest.clone(),
        vec![],
        BTreeSet::new(),
        store.clone(),
        None,
    ));
    send(engine.held());
    send(engine.resolve(&[]));
    send(engine.tag("", ""));
    send(engine.image_id(""));
    send(engine.load(futures::stream::empty(), false));
    send(engine.export(&[]));
    send(node.held());
    send(node.load(LoadRequest {
        manifest: manifest.clone(),
        images: vec![],
        layers: BTreeSet::new(),
        store: store.clone(),
        arrivals: None,
    }));
    send(node.tag(&manifest, 0));
    send(node.identify(""));
    send(node.resolve(&[]));
    send(super::super::export_to_manifest(
        node,
        &[],
        &store,
        &PackOptions::default(),
    ));
}
