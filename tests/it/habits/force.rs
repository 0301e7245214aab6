//! `push --force` (issue #22): the selected nodes' engines load an image they already hold
//! again, the report says "reloaded (forced)" where a push says "skipped", and a node left
//! out is untouched. The proof of a reload is the engine's own: dockerd logs an image
//! `load` event for every image a `docker load` registers, which a push that skips (and
//! only tags) never causes; containerd gets back a layer blob it lost, which a push that
//! skips never writes.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::common::containerd::Containerd;
use crate::common::{bin, build_test_image, run_with_timeout, Cluster, Dockerd};

/// The namespace Kubernetes nodes keep their images in.
const K8S: &str = "k8s.io";

/// Now, as `docker events --since` and `--until` take it (seconds.nanoseconds).
fn timestamp() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// The image events `engine` logged from `since` until now: `ACTION IMAGE-ID` each.
fn image_events(engine: &Dockerd, since: &str) -> Vec<String> {
    let until = timestamp();
    let format = "{{.Action}} {{.Actor.ID}}";
    let args = [
        "events",
        "--since",
        since,
        "--until",
        &until,
        "--filter",
        "type=image",
    ];
    let out = engine.docker_ok([&args[..], &["--format", format]].concat());
    out.lines().map(str::to_string).collect()
}

/// The `load` events of image `id` among `events`.
fn loads(events: &[String], id: &str) -> usize {
    events.iter().filter(|e| *e == &format!("load {id}")).count()
}

/// The line of node `name` in a push's text output.
fn line_of<'a>(stdout: &'a str, name: &str) -> &'a str {
    let found = stdout.lines().find(|l| l.starts_with(&format!("{name} ")));
    found.unwrap_or_else(|| panic!("no line for {name}:\n{stdout}"))
}

/// The report's node entries as (name, status).
fn statuses(report: &Value) -> Vec<(String, String)> {
    let nodes = report["nodes"].as_array().unwrap();
    let status = |n: &Value| {
        (
            n["name"].as_str().unwrap().into(),
            n["status"]["status"].as_str().unwrap().into(),
        )
    };
    nodes.iter().map(status).collect()
}

#[test]
fn force_reloads_a_held_image_on_the_selected_nodes_only() {
    let cluster = Cluster::start(bin(), 3);
    let image = build_test_image(&cluster.seed, "app:1");
    let first = cluster.push(&["app:1"], &[]);
    cluster.assert_push_ok(&first);
    let engine = |i: usize| &cluster.nodes[i].engine;

    // Without --force, a node holding the image skips it: its engine loads nothing.
    let since = timestamp();
    let plain = cluster.push(&["app:1"], &["--node", "n1"]);
    cluster.assert_push_ok(&plain);
    assert_eq!(plain.status("n1"), "skipped");
    assert_eq!(
        loads(&image_events(engine(0), &since), &image.id),
        0,
        "a skip loads nothing"
    );

    // The dry run of a forced push says so, and fetches nothing: dockerd holds every layer.
    let dry = cluster.push(&["app:1"], &["--dry-run", "--force", "--node", "n1"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    let verdict = dry_run_verdict(&dry.stdout);
    assert_eq!(verdict["kind"], "would_reload", "{}", dry.stdout);
    assert_eq!(verdict["plan"]["need_chunks"], 0, "{}", dry.stdout);

    // Forced on n1 and n2: each engine loads the image once more; n3 sees nothing at all.
    let since = timestamp();
    let forced = cluster.push(&["app:1"], &["--force", "--node", "n[1-2]"]);
    cluster.assert_push_ok(&forced);
    let expected = [("n1", "reloaded"), ("n2", "reloaded")].map(|(n, s)| (n.into(), s.into()));
    assert_eq!(statuses(forced.report()), expected, "{}", forced.stdout);
    for i in 0..2 {
        let events = image_events(engine(i), &since);
        assert_eq!(
            loads(&events, &image.id),
            1,
            "n{}: {events:?}\n{}",
            i + 1,
            cluster.logs()
        );
        assert_eq!(engine(i).image_id("app:1").as_deref(), Some(image.id.as_str()));
    }
    assert_eq!(
        image_events(engine(2), &since),
        Vec::<String>::new(),
        "n3 was not selected"
    );
    assert_eq!(forced.received_total("n1"), 0, "no layer was fetched again");

    // The table says so in words.
    let mut text = cluster.push_command(&["app:1"], &["--force", "--node", "n2"]);
    let out = run_with_timeout(&mut text, 300);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(line_of(&stdout, "n2").ends_with("reloaded (forced)"), "{stdout}");
    assert!(
        stdout.contains("n2: already has every image; loading it again (--force)"),
        "{stdout}"
    );
}

/// The verdict of the only node of a `push --dry-run --json`.
fn dry_run_verdict(stdout: &str) -> Value {
    let report = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "dry_run")
        .unwrap_or_else(|| panic!("no dry_run object in:\n{stdout}"));
    report["report"]["nodes"][0]["verdict"].clone()
}

/// `--force` with `--bundle` works as with an engine: the bundle's chunks are the seed's,
/// and what the nodes load is the same.
#[test]
fn force_takes_a_bundle() {
    let cluster = Cluster::start(bin(), 1);
    build_test_image(&cluster.seed, "app:1");
    let first = cluster.push(&["app:1"], &[]);
    cluster.assert_push_ok(&first);
    let bundle = cluster.dir.path().join("app.p2pimg");
    let create = Command::new(bin())
        .args(["bundle", "create", "app:1", "-o"])
        .arg(&bundle)
        .args(["--docker-host", &cluster.seed.host()])
        .output()
        .unwrap();
    assert!(
        create.status.success(),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );
    let bundle = bundle.to_str().unwrap();
    let forced = cluster.push(&[], &["--bundle", bundle, "--force"]);
    cluster.assert_push_ok(&forced);
    assert_eq!(forced.status("n1"), "reloaded");
}

/// The layer blobs (digests) containerd holds in namespace k8s.io.
fn blobs(ctd: &Containerd) -> Vec<String> {
    let listed = ctd.ctr_ok(K8S, ["content", "ls", "-q"]);
    listed.lines().map(str::to_string).collect()
}

/// containerd keeps an image whose layer blob is gone (`ctr content rm`; kubelets that
/// discard unpacked layers): a push skips it, a forced push writes the blob back.
#[test]
fn force_writes_back_a_layer_blob_containerd_lost() {
    let mut cluster = Cluster::start(bin(), 1);
    let ctd = Containerd::start("forcectd");
    let engine = format!(
        "engine = \"containerd\"\nengine_host = \"{}\"\ncontainerd_namespace = \"{K8S}\"",
        ctd.host()
    );
    cluster.use_engine(0, &engine);
    build_test_image(&cluster.seed, "app:1");
    let first = cluster.push(&["app:1"], &[]);
    cluster.assert_push_ok(&first);
    let top = cluster.seed.layers("app:1").pop().unwrap();
    assert!(
        blobs(&ctd).contains(&top),
        "p2pimg stores a layer blob under its diffID"
    );
    ctd.ctr_ok(K8S, ["content", "rm", &top]);
    assert!(!blobs(&ctd).contains(&top));

    let plain = cluster.push(&["app:1"], &[]);
    cluster.assert_push_ok(&plain);
    assert_eq!(plain.status("n1"), "skipped", "containerd still lists the image");
    assert!(!blobs(&ctd).contains(&top), "a push that skips writes nothing");

    let forced = cluster.push(&["app:1"], &["--force"]);
    cluster.assert_push_ok(&forced);
    assert_eq!(forced.status("n1"), "reloaded", "{}", forced.stdout);
    assert!(blobs(&ctd).contains(&top), "{}", cluster.logs());
    // The lost layer's chunks, and only those, from the node's store (the first push left
    // them there) or the swarm.
    let chunks = |push: &crate::common::Push| {
        let plan = &push.node("n1")["plan"];
        plan["need_chunks"].as_u64().unwrap() + plan["stored_chunks"].as_u64().unwrap()
    };
    let whole = chunks(&first);
    assert!(
        chunks(&forced) > 0 && chunks(&forced) < whole,
        "{} of {whole}",
        chunks(&forced)
    );
    let names = ctd.ctr_ok(K8S, ["images", "ls", "-q"]);
    assert!(names.lines().any(|n| n == "docker.io/library/app:1"), "{names}");
}
