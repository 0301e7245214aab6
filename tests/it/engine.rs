//! `image` against real dockerd 20.10 daemons: export and parse a multi-layer image,
//! load it elsewhere from verified chunks (whole, or only the layers a node lacks), and
//! prove a damaged chunk loads nothing and tags nothing.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{build_test_image, Dockerd, TestImage, HELLO_PATH};
use p2pimg::content::arrivals::Arrivals;
use p2pimg::content::manifest::Manifest;
use p2pimg::content::pack::PackOptions;
use p2pimg::content::store::{ChunkStore, StoreError};
use p2pimg::engine::{
    export_to_manifest, load_images, DockerApi, Engine, EngineError, EngineSpec, ExportError, HeldLayers,
    LoadError, LoadTarError,
};

/// Limit for one whole test: two daemons, an image build, an export and a load take
/// 10–30 s on an idle 2-core machine; parallel tests can triple that.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Small chunks, so the 5 MiB test image has tens of them and a damaged one sits in the
/// middle of a layer.
const OPTS: PackOptions = PackOptions {
    chunk_size: 256 << 10,
    zstd_level: 1,
};

/// Runs a test body on a runtime with a deadline; the daemons it owns are dropped
/// (stopped and removed) when it ends, also on panic or timeout.
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

/// Starts a source and a target daemon in parallel: `<prefix>1`, `<prefix>2`.
fn two_daemons(prefix: &str) -> (Dockerd, Dockerd) {
    let [a, b]: [Dockerd; 2] = Dockerd::start_many(prefix, 2).try_into().expect("two daemons");
    (a, b)
}

/// A test image built on `source` and exported into a fresh store.
struct Exported {
    image: TestImage,
    manifest: Arc<Manifest>,
    store: ChunkStore,
    _state: tempfile::TempDir,
}

/// Builds `tag` on `source` and exports it, with its base image too if `with_base`.
async fn export(source: &Dockerd, tag: &str, with_base: bool) -> Exported {
    let image = build_test_image(source, tag);
    let state = tempfile::tempdir().expect("state dir");
    let store = ChunkStore::open(state.path()).expect("chunk store");
    let engine = Engine::connect(&EngineSpec::docker(&source.host()))
        .await
        .expect("connect to source");
    let mut refs = vec![tag.to_string()];
    if with_base {
        refs.push(image.base.clone());
    }
    let manifest = export_to_manifest(&engine, &refs, &store, &OPTS)
        .await
        .expect("export and parse");
    Exported {
        image,
        manifest: Arc::new(manifest),
        store,
        _state: state,
    }
}

fn all_layers(manifest: &Manifest) -> BTreeSet<usize> {
    (0..manifest.layers.len()).collect()
}

fn cat_hello(d: &Dockerd, image: &str) -> String {
    d.docker_ok(["run", "--rm", "--network", "none", image, "cat", HELLO_PATH])
}

#[test]
fn export_parse_and_load_two_images_elsewhere() {
    run(async {
        let (a, b) = two_daemons("engine-full");
        // The app and its base in one archive: dockerd 20.10 writes the shared base
        // layer once and the other `layer.tar` as a symlink to it.
        let ex = export(&a, "app:1.4", true).await;
        let m = &ex.manifest;
        assert_eq!(m.images.len(), 2);
        // `docker save` lists the two images in no fixed order.
        let find = |id: &str| {
            m.images
                .iter()
                .find(|i| i.id == id)
                .unwrap_or_else(|| panic!("{id} missing"))
        };
        let (app, base) = (find(&ex.image.id), find(&ex.image.base_id));
        assert_eq!(app.refs, ["app:1.4"]);
        assert_eq!(base.refs, [ex.image.base.as_str()]);
        let diff_ids: Vec<&str> = m.layers.iter().map(|l| l.diff_id.as_str()).collect();
        assert_eq!(diff_ids, a.layers("app:1.4"), "diffIDs as the engine has them");
        assert_eq!(diff_ids.len(), 3, "base + two COPY layers, the base listed once");
        assert_eq!(base.layers, [app.layers[0]]);

        let source = DockerApi::connect(&a.host()).await.unwrap();
        let resolved = source.resolve(&["app:1.4".to_string()]).await.unwrap();
        assert_eq!(resolved[0].id, ex.image.id);
        assert_eq!(resolved[0].diff_ids, diff_ids);
        let missing = source.resolve(&["nope:9".to_string()]).await.unwrap_err();
        assert!(matches!(missing, EngineError::NoSuchImage { .. }), "{missing}");
        assert!(missing.to_string().contains(&a.host()), "{missing}");
        let source = Engine::connect(&EngineSpec::docker(&a.host())).await.unwrap();
        let missing = export_to_manifest(&source, &["nope:9".to_string()], &ex.store, &OPTS)
            .await
            .unwrap_err();
        assert!(
            matches!(missing, ExportError::Engine(EngineError::NoSuchImage { .. })),
            "{missing}"
        );

        // A second reference with a registry port and no tag is applied as :latest.
        let mut manifest = (*ex.manifest).clone();
        let app_index = manifest.images.iter().position(|i| i.id == ex.image.id).unwrap();
        manifest.images[app_index]
            .refs
            .push("localhost:5000/team/app".into());
        let target = DockerApi::connect(&b.host()).await.unwrap();
        let layers = all_layers(&manifest);
        load_images(
            &target,
            Arc::new(manifest),
            vec![0, 1],
            layers,
            ex.store.clone(),
            None,
        )
        .await
        .expect("load into b");
        assert_eq!(b.image_id("app:1.4").as_deref(), Some(ex.image.id.as_str()));
        assert_eq!(
            b.image_id(&ex.image.base).as_deref(),
            Some(ex.image.base_id.as_str())
        );
        let latest = b.image_id("localhost:5000/team/app:latest");
        assert_eq!(latest.as_deref(), Some(ex.image.id.as_str()));
        assert_eq!(cat_hello(&b, "app:1.4"), ex.image.hello.trim());
        assert_eq!(
            target.image_id("app:1.4").await.unwrap(),
            Some(ex.image.id.clone())
        );
        assert_eq!(target.image_id("nope:9").await.unwrap(), None);
    });
}

#[test]
fn engine_holding_the_base_gets_only_the_missing_layers() {
    run(async {
        let (a, c) = two_daemons("engine-part");
        let ex = export(&a, "app:2", false).await;
        a.copy_image_to(&c, &ex.image.base);
        let target = DockerApi::connect(&c.host()).await.unwrap();
        let held = target.held().await.unwrap();
        assert!(held.image_ids.contains(&ex.image.base_id));
        assert!(!held.image_ids.contains(&ex.image.id));

        let image = &ex.manifest.images[0];
        let chains = image.chain_ids(&ex.manifest);
        let missing: BTreeSet<usize> = image
            .layers
            .iter()
            .zip(&chains)
            .filter(|(_, chain)| !chains_of(&held).contains(*chain))
            .map(|(&layer, _)| layer as usize)
            .collect();
        assert!(chains_of(&held).contains(&chains[0]), "base layer held");
        assert_eq!(
            missing,
            BTreeSet::from([1, 2]),
            "only the two COPY layers are missing"
        );

        load_images(
            &target,
            ex.manifest.clone(),
            vec![0],
            missing,
            ex.store.clone(),
            None,
        )
        .await
        .expect("load the missing layers into c");
        assert_eq!(c.image_id("app:2").as_deref(), Some(ex.image.id.as_str()));
        assert_eq!(cat_hello(&c, "app:2"), ex.image.hello.trim());
        let held = target.held().await.unwrap();
        assert!(chains.iter().all(|chain| chains_of(&held).contains(chain)));
    });
}

#[test]
fn failed_loads_load_nothing_and_tag_nothing() {
    run(async {
        let (a, d) = two_daemons("engine-fail");
        let ex = export(&a, "app:3", false).await;
        let target = DockerApi::connect(&d.host()).await.unwrap();

        // An archive without the layers the engine lacks: dockerd reports the missing
        // file in the progress stream (HTTP 200 already sent).
        let err = load_images(
            &target,
            ex.manifest.clone(),
            vec![0],
            BTreeSet::new(),
            ex.store.clone(),
            None,
        )
        .await
        .expect_err("a load without the needed layers must fail");
        assert!(
            matches!(err, LoadError::Engine(EngineError::Load { ref message, .. }) if message.contains("layer.tar")),
            "{err}"
        );
        assert_nothing_loaded(&d, &target, &ex).await;

        // A damaged chunk in the middle of the archive, met after the engine has received
        // the manifest, the config and whole chunks: the upload is cut mid-body.
        let state = tempfile::tempdir().unwrap();
        let damaged = ChunkStore::open(state.path()).unwrap();
        let victim = ex.manifest.chunks.len() / 2;
        for (i, chunk) in ex.manifest.chunks.iter().enumerate() {
            let mut z = ex.store.read(&chunk.hash).unwrap();
            if i == victim {
                let mid = z.len() / 2;
                z[mid] ^= 0x55;
            }
            damaged.put(&chunk.hash, &z).unwrap();
        }
        let layers = all_layers(&ex.manifest);
        let err = load_images(&target, ex.manifest.clone(), vec![0], layers, damaged, None)
            .await
            .expect_err("a damaged chunk must fail the load");
        assert!(
            matches!(
                err,
                LoadError::Tar(LoadTarError::Chunk {
                    source: StoreError::Damaged { .. },
                    ..
                })
            ),
            "{err}"
        );
        assert_nothing_loaded(&d, &target, &ex).await;
    });
}

/// No image, no tag, no layer, and no load still in progress on `d`.
/// The chain IDs a classic-store engine holds.
fn chains_of(held: &p2pimg::engine::Held) -> &std::collections::HashSet<String> {
    match &held.layers {
        HeldLayers::Chains(chains) => chains,
        other => panic!("a classic store keys layers by chain ID: {other:?}"),
    }
}

async fn assert_nothing_loaded(d: &Dockerd, engine: &DockerApi, ex: &Exported) {
    // dockerd unpacks an upload into data/tmp/docker-import-*; once the load is over,
    // failed or abandoned, that directory is gone. Wait for it (the abort is
    // asynchronous: dockerd notices the closed connection on its next read).
    let tmp = d.dir().join("data/tmp");
    let mut waited = Duration::ZERO;
    while std::fs::read_dir(&tmp).is_ok_and(|mut entries| entries.next().is_some()) {
        assert!(
            waited < Duration::from_secs(30),
            "dockerd is still loading: {}",
            tmp.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(d.image_id(&ex.image.id), None, "no image from a failed load");
    assert_eq!(d.image_id(&ex.image.tag), None, "no tag from a failed load");
    assert_eq!(
        d.docker_ok(["images", "-a", "-q"]),
        "",
        "nothing at all was loaded"
    );
    let held = engine.held().await.unwrap();
    assert!(held.image_ids.is_empty() && held.layers == HeldLayers::Chains(Default::default()));
    // data/image/<storage driver>/layerdb/sha256 holds one directory per layer.
    for driver in std::fs::read_dir(d.dir().join("data/image")).unwrap().flatten() {
        let layerdb = driver.path().join("layerdb/sha256");
        let layers = std::fs::read_dir(&layerdb).map_or(0, |entries| entries.count());
        assert_eq!(layers, 0, "no layer registered in {}", layerdb.display());
    }
}

/// Waits until `d` has started unpacking an upload (its `data/tmp/docker-import-*`).
async fn wait_for_unpacking(d: &Dockerd) {
    let tmp = d.dir().join("data/tmp");
    let mut waited = Duration::ZERO;
    while !std::fs::read_dir(&tmp).is_ok_and(|mut entries| entries.next().is_some()) {
        assert!(
            waited < Duration::from_secs(60),
            "dockerd never started unpacking"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
}

#[test]
fn a_load_streams_while_chunks_arrive_and_loads_nothing_if_fetching_stops() {
    run(async {
        let [a, b, c]: [Dockerd; 3] = Dockerd::start_many("engine-stream", 3)
            .try_into()
            .expect("daemons");
        let ex = export(&a, "app:4", false).await;
        let layers = all_layers(&ex.manifest);
        let n = ex.manifest.chunks.len();
        assert!(n >= 8, "the test image spans {n} chunks");

        // Half the chunks are in: dockerd is already unpacking before the rest arrive.
        let arrivals = Arc::new(Arrivals::new(vec![false; n]));
        (0..n as u32 / 2).for_each(|i| arrivals.mark(i));
        let target = DockerApi::connect(&b.host()).await.unwrap();
        let load = tokio::spawn({
            let (manifest, store, arrivals) = (ex.manifest.clone(), ex.store.clone(), arrivals.clone());
            async move { load_images(&target, manifest, vec![0], layers, store, Some(arrivals)).await }
        });
        wait_for_unpacking(&b).await;
        assert_eq!(
            b.image_id("app:4"),
            None,
            "nothing is loaded before the last chunk"
        );
        (n as u32 / 2..n as u32).for_each(|i| arrivals.mark(i));
        load.await.unwrap().expect("the streamed load");
        assert_eq!(b.image_id("app:4").as_deref(), Some(ex.image.id.as_str()));
        assert_eq!(cat_hello(&b, "app:4"), ex.image.hello.trim());

        // Fetching fails halfway: the upload is cut, nothing is loaded or tagged.
        let arrivals = Arc::new(Arrivals::new(vec![false; n]));
        (0..n as u32 / 2).for_each(|i| arrivals.mark(i));
        let target = DockerApi::connect(&c.host()).await.unwrap();
        let load = tokio::spawn({
            let (manifest, store, arrivals) = (ex.manifest.clone(), ex.store.clone(), arrivals.clone());
            let layers = all_layers(&manifest);
            async move { load_images(&target, manifest, vec![0], layers, store, Some(arrivals)).await }
        });
        wait_for_unpacking(&c).await;
        arrivals.close("no peer holds the missing chunks");
        let err = load.await.unwrap().expect_err("a load cut short must fail");
        assert!(
            matches!(&err, LoadError::Tar(LoadTarError::Fetch { reason, .. }) if reason.contains("no peer holds")),
            "{err}"
        );
        let engine = DockerApi::connect(&c.host()).await.unwrap();
        assert_nothing_loaded(&c, &engine, &ex).await;
    });
}
