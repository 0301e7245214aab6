//! `engine::containerd` against a real private containerd 1.6: import images built
//! here (a busybox layer and a small top layer), run a container from one with `ctr`,
//! share a base layer, import twice, fail a blob stream midway, refuse a wrong diffID,
//! and export back through `parse_save`.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Cursor, Write};
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

use crate::common::containerd::Containerd as Daemon;
use p2pimg::content::pack::PackOptions;
use p2pimg::content::store::ChunkStore;
use p2pimg::engine::containerd::{Containerd, ContainerdError, Descriptor, LayerBlob};
use p2pimg::engine::parse_save;

/// Limit for one whole test: a daemon, a few small imports and a container run take
/// 2–5 s on an idle 2-core machine; parallel tests and builds can slow that a lot.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The namespace Kubernetes nodes keep their images in.
const NAMESPACE: &str = "k8s.io";
/// containerd 1.6's default snapshotter.
const SNAPSHOTTER: &str = "overlayfs";
/// Media type of the layers built here.
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// What `/file` in the base layer holds: a container prints it.
const FILE_TEXT: &str = "hello from containerd\n";

/// Runs a test body on a runtime with a deadline; what it owns is dropped (daemons
/// stopped and removed) when it ends, also on panic or timeout.
fn run<F: Future<Output = ()>>(body: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, body)
            .await
            .expect("test timed out")
    });
}

/// A layer built in memory: its gzip blob and its diffID.
struct Layer {
    gz: Vec<u8>,
    layer: LayerBlob,
}

/// `sha256:<hex>` of `data`.
fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A gzip layer holding `files` (path, content, mode) and `links` (path → target).
fn layer(files: &[(&str, &[u8], u32)], links: &[(&str, &str)]) -> Layer {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1);
        tar.append_data(&mut h, path, *data).expect("tar file");
    }
    for (path, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, path, target).expect("tar link");
    }
    let tar = tar.into_inner().expect("tar");
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let blob = Descriptor {
        media_type: GZIP_LAYER.into(),
        digest: sha256(&gz),
        size: gz.len() as i64,
    };
    Layer {
        layer: LayerBlob {
            blob,
            diff_id: sha256(&tar),
        },
        gz,
    }
}

/// The base layer: a static busybox, `sh` and `cat` links, and `/file`.
fn base_layer() -> Layer {
    let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox (install busybox)");
    layer(
        &[
            ("bin/busybox", &busybox, 0o755),
            ("file", FILE_TEXT.as_bytes(), 0o644),
        ],
        &[("bin/sh", "busybox"), ("bin/cat", "busybox")],
    )
}

/// A one-file top layer; `text` makes it distinct.
fn top_layer(text: &str) -> Layer {
    layer(&[("top.txt", text.as_bytes(), 0o644)], &[])
}

/// An image config listing `diff_ids`.
fn config(diff_ids: &[&str]) -> Vec<u8> {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    config.to_string().into_bytes()
}

/// A daemon and a client in `k8s.io` with the overlayfs snapshotter.
async fn start(name: &str) -> (Daemon, Containerd) {
    let daemon = Daemon::start(name);
    let client = Containerd::connect(&daemon.host(), NAMESPACE, SNAPSHOTTER)
        .await
        .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", daemon.log_tail(30)));
    (daemon, client)
}

/// Writes each layer's blob into the content store.
async fn write_layers(c: &Containerd, layers: &[&Layer]) {
    for l in layers {
        let body = futures::stream::iter([Ok(Bytes::from(l.gz.clone()))]);
        c.write_blob(&l.layer.blob, HashMap::new(), body)
            .await
            .expect("write layer blob");
    }
}

/// Writes the layers and imports them as `name`, under a lease as the agent does (blobs no
/// image names yet are garbage to containerd's collector); the manifest descriptor.
async fn import(c: &Containerd, name: &str, layers: &[&Layer]) -> Descriptor {
    let leased = c.leased(Duration::from_secs(600)).await.expect("lease");
    write_layers(&leased, layers).await;
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.layer.diff_id.as_str()).collect();
    let blobs: Vec<LayerBlob> = layers.iter().map(|l| l.layer.clone()).collect();
    let manifest = leased
        .import_image(&[name.to_string()], config(&diff_ids), &blobs)
        .await
        .expect("import image");
    leased.release().await.expect("release the lease");
    manifest
}

#[test]
fn imported_image_is_listed_and_runs() {
    run(async {
        let (daemon, c) = start("run").await;
        let (base, top) = (base_layer(), top_layer("one"));
        let manifest = import(&c, "app:1", &[&base, &top]).await;

        let images = c.images().await.expect("images");
        assert_eq!(images.len(), 1, "{images:?}");
        let image = &images[0];
        assert_eq!(image.name, "docker.io/library/app:1");
        assert_eq!(image.target, manifest);
        assert_eq!(image.manifest_digest, manifest.digest);
        let diff_ids = [base.layer.diff_id.as_str(), top.layer.diff_id.as_str()];
        assert_eq!(image.config_digest, sha256(&config(&diff_ids)));
        assert_eq!(image.diff_ids, diff_ids);
        assert_eq!(
            image.layer_digests,
            [base.layer.blob.digest.as_str(), &top.layer.blob.digest]
        );
        assert_eq!(
            c.image("docker.io/library/app:1").await.unwrap().as_ref(),
            Some(image)
        );
        assert_eq!(c.image("docker.io/library/nope:1").await.unwrap(), None);

        let out = daemon.ctr_ok(
            NAMESPACE,
            [
                "run",
                "--rm",
                "--snapshotter",
                SNAPSHOTTER,
                "docker.io/library/app:1",
                "t1",
            ]
            .into_iter()
            .chain(["/bin/busybox", "cat", "/file", "/top.txt"]),
        );
        assert_eq!(out, format!("{FILE_TEXT}one"));
    });
}

#[test]
fn shared_base_unpacks_only_the_top_and_reimport_is_idempotent() {
    run(async {
        let (_daemon, c) = start("share").await;
        let base = base_layer();
        let (one, two) = (top_layer("one"), top_layer("two"));
        let first = import(&c, "app:1", &[&base, &one]).await;
        assert_eq!(c.snapshots().await.unwrap().len(), 2);

        import(&c, "app:2", &[&base, &two]).await;
        let snapshots = c.snapshots().await.unwrap();
        assert_eq!(
            snapshots.len(),
            3,
            "only the second top layer is new: {snapshots:?}"
        );
        assert!(
            snapshots.contains(&base.layer.diff_id),
            "a base layer's chain ID is its diffID"
        );

        let again = import(&c, "app:1", &[&base, &one]).await;
        assert_eq!(again, first, "same image, same manifest");
        assert_eq!(c.snapshots().await.unwrap(), snapshots);
        assert_eq!(c.images().await.unwrap().len(), 2);
        let blobs = c.blobs().await.unwrap();
        assert_eq!(
            blobs.len(),
            3 + 2 * 2,
            "3 layers, 2 configs, 2 manifests: {blobs:?}"
        );

        c.set_image("app:latest", &first).await.expect("tag");
        let tagged = c
            .image("docker.io/library/app:latest")
            .await
            .unwrap()
            .expect("tagged");
        assert_eq!(tagged.manifest_digest, first.digest);
    });
}

#[test]
fn failed_or_short_blob_stream_leaves_no_blob() {
    run(async {
        let (daemon, c) = start("fail").await;
        let base = base_layer();
        let half = Bytes::from(base.gz[..base.gz.len() / 2].to_vec());
        let failing = futures::stream::iter([Ok(half.clone()), Err(std::io::Error::other("peer vanished"))]);
        let err = c
            .write_blob(&base.layer.blob, HashMap::new(), failing)
            .await
            .expect_err("a failing stream must fail the write");
        assert!(err.to_string().contains("peer vanished"), "{err}");

        let short = futures::stream::iter([Ok::<_, std::io::Error>(half)]);
        let err = c
            .write_blob(&base.layer.blob, HashMap::new(), short)
            .await
            .expect_err("a short stream must fail the write");
        assert!(err.to_string().contains("ended after"), "{err}");

        let mut damaged = base.gz.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let wrong = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(damaged))]);
        let err = c
            .write_blob(&base.layer.blob, HashMap::new(), wrong)
            .await
            .expect_err("bytes that are not the blob must fail the write");
        assert!(matches!(err, ContainerdError::Api { .. }), "{err}");

        assert!(!c.blobs().await.unwrap().contains(&base.layer.blob.digest));
        let active = daemon.ctr_ok(NAMESPACE, ["content", "active"]);
        assert_eq!(
            active.lines().count(),
            1,
            "only the header, no ingest left: {active}"
        );

        // The same blob written whole afterwards is fine, and a second write is a no-op
        // (leased: an unnamed blob is garbage to containerd's collector).
        let c = c.leased(Duration::from_secs(600)).await.expect("lease");
        write_layers(&c, &[&base, &base]).await;
        assert!(c.blobs().await.unwrap().contains(&base.layer.blob.digest));
    });
}

#[test]
fn wrong_diff_id_is_refused() {
    run(async {
        let (daemon, c) = start("diffid").await;
        let base = base_layer();
        // Under a lease, as the agent writes: containerd's startup collection could take
        // an unnamed blob before the import.
        let c = c.leased(Duration::from_secs(600)).await.expect("lease");
        write_layers(&c, &[&base]).await;
        let mut lying = base.layer.clone();
        lying.diff_id = sha256(b"not this layer");
        let err = c
            .import_image(&["bad:1".into()], config(&[&lying.diff_id]), &[lying])
            .await
            .expect_err("a wrong diffID must fail the import");
        assert!(matches!(err, ContainerdError::DiffIdMismatch { .. }), "{err}");
        assert!(c.snapshots().await.unwrap().is_empty());
        assert!(c.images().await.unwrap().is_empty());
        let all = daemon.ctr_ok(NAMESPACE, ["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
        assert_eq!(all.lines().count(), 1, "no extraction snapshot left: {all}");

        let err = c
            .import_image(&["bad:1".into()], config(&[]), std::slice::from_ref(&base.layer))
            .await
            .expect_err("a config that does not list the layers must fail");
        assert!(matches!(err, ContainerdError::BadImage { .. }), "{err}");
    });
}

#[test]
fn export_round_trips_through_parse_save() {
    run(async {
        let (_daemon, c) = start("export").await;
        let (base, top) = (base_layer(), top_layer("one"));
        import(&c, "app:1", &[&base, &top]).await;
        let record = c
            .image("docker.io/library/app:1")
            .await
            .unwrap()
            .expect("imported");

        let tar: Vec<u8> = c
            .export(&["app:1".to_string()])
            .map_ok(|b| b.to_vec())
            .try_concat()
            .await
            .expect("export");
        let state = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(state.path()).expect("chunk store");
        let opts = PackOptions {
            chunk_size: 256 << 10,
            zstd_level: 1,
        };
        let manifest = parse_save(Cursor::new(tar), &store, &opts).expect("parse the export");
        assert_eq!(manifest.images.len(), 1);
        let image = &manifest.images[0];
        assert_eq!(image.id, record.config_digest);
        assert_eq!(image.refs, ["app:1"]);
        let diff_ids: Vec<&str> = image
            .layers
            .iter()
            .map(|&i| manifest.layers[i as usize].diff_id.as_str())
            .collect();
        assert_eq!(diff_ids, record.diff_ids);

        let missing = c.export(&["nope:1".to_string()]).try_collect::<Vec<_>>().await;
        let err = missing.expect_err("a missing image fails the export");
        assert!(err.to_string().contains("ctr -n k8s.io images ls"), "{err}");
    });
}

#[test]
fn unreachable_daemon_says_what_to_do() {
    run(async {
        let err = Containerd::connect(
            "unix:///tmp/p2pimg-test-nothing-here.sock",
            NAMESPACE,
            SNAPSHOTTER,
        )
        .await
        .expect_err("no daemon there");
        let text = err.to_string();
        assert!(text.contains("/tmp/p2pimg-test-nothing-here.sock"), "{text}");
        assert!(text.contains("is containerd running?"), "{text}");
    });
}

#[test]
fn concurrent_imports_of_one_image_both_succeed() {
    run(async {
        let (daemon, c) = start("race").await;
        let (base, top) = (base_layer(), top_layer("one"));
        let layers = [&base, &top];
        let (a, b) = tokio::join!(import(&c, "app:1", &layers), import(&c, "app:2", &layers));
        assert_eq!(a, b, "one image, one manifest");
        assert_eq!(c.snapshots().await.unwrap().len(), 2);
        assert_eq!(c.images().await.unwrap().len(), 2);
        let all = daemon.ctr_ok(NAMESPACE, ["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
        assert_eq!(
            all.lines().count(),
            3,
            "the loser's extraction snapshot is removed: {all}"
        );
    });
}

#[test]
fn garbage_collection_keeps_imports_and_leased_blobs() {
    run(async {
        let (daemon, c) = start("gc").await;
        let (base, top) = (base_layer(), top_layer("one"));
        import(&c, "app:1", &[&base, &top]).await;
        let leased = c.leased(Duration::from_secs(600)).await.expect("lease");
        let (pending, stray) = (top_layer("pending"), top_layer("stray"));
        write_layers(&leased, &[&pending]).await;
        write_layers(&c, &[&stray]).await;

        collect_garbage(&daemon);
        let blobs = c.blobs().await.unwrap();
        assert!(
            !blobs.contains(&stray.layer.blob.digest),
            "a blob nothing refers to is collected"
        );
        assert!(
            blobs.contains(&pending.layer.blob.digest),
            "the lease keeps its blob"
        );
        assert_eq!(
            blobs.len(),
            2 + 2 + 1,
            "the image's layers, config and manifest stay: {blobs:?}"
        );
        assert_eq!(
            c.snapshots().await.unwrap().len(),
            2,
            "the image keeps its snapshots"
        );
        let out = daemon.ctr_ok(
            NAMESPACE,
            [
                "run",
                "--rm",
                "--snapshotter",
                SNAPSHOTTER,
                "docker.io/library/app:1",
                "gc1",
            ]
            .into_iter()
            .chain(["/bin/busybox", "cat", "/top.txt"]),
        );
        assert_eq!(out, "one");

        leased.release().await.expect("release");
        collect_garbage(&daemon);
        assert!(!c.blobs().await.unwrap().contains(&pending.layer.blob.digest));
    });
}

/// Makes containerd collect garbage now: deleting a lease with `--sync` runs a
/// collection before it answers.
fn collect_garbage(daemon: &Daemon) {
    let id = daemon.ctr_ok(NAMESPACE, ["leases", "create"]);
    daemon.ctr_ok(NAMESPACE, ["leases", "delete", "--sync", &id]);
}

#[test]
fn index_resolves_to_the_host_platform_and_broken_records_are_skipped() {
    run(async {
        let (_daemon, c) = start("index").await;
        let (base, top) = (base_layer(), top_layer("one"));
        let manifest = import(&c, "app:1", &[&base, &top]).await;
        let other = sha256(b"a manifest for another platform, never stored");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                { "mediaType": manifest.media_type, "digest": other, "size": 10,
                  "platform": { "os": "linux", "architecture": "not-this-one" } },
                { "mediaType": manifest.media_type, "digest": manifest.digest, "size": manifest.size,
                  "platform": { "os": "linux", "architecture": host_arch() } },
            ],
        });
        let index_type = "application/vnd.oci.image.index.v1+json";
        let labels = HashMap::from([(
            "containerd.io/gc.ref.content.m.0".to_string(),
            manifest.digest.clone(),
        )]);
        // Leased until named, as every write: an unnamed blob is garbage to containerd.
        let leased = c.leased(Duration::from_secs(600)).await.expect("lease");
        let index = leased
            .write_bytes(index_type, index.to_string().into_bytes(), labels)
            .await
            .expect("write index");
        leased
            .set_image("multi:1", &index)
            .await
            .expect("point at the index");
        leased.release().await.expect("release");
        let ghost = Descriptor {
            media_type: manifest.media_type.clone(),
            digest: other,
            size: 10,
        };
        c.set_image("ghost:1", &ghost)
            .await
            .expect("point at a missing manifest");

        let images = c
            .images()
            .await
            .expect("a broken record is skipped, not an error");
        let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["docker.io/library/app:1", "docker.io/library/multi:1"]);
        let multi = &images[1];
        assert_eq!(multi.target, index);
        assert_eq!(multi.manifest_digest, manifest.digest);
        assert_eq!(multi.config_digest, images[0].config_digest);
        assert!(
            c.image("docker.io/library/ghost:1").await.is_err(),
            "asked for by name, it is an error"
        );
    });
}

/// This host's architecture as OCI platforms name it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
