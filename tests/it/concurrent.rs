//! Concurrent pushes (issue #5, scenario 6): two different images that share layers,
//! pushed at once from two seeds to the same nodes, and one image pushed twice at once.
//! Every push completes, and each node fetches every distinct chunk once: the chunks
//! it received over both pushes, per the push reports, are as many as its store holds.

use std::thread;

use crate::common::bin;
use crate::common::{build_test_image_with, Cluster, Dockerd, ImageOptions, Push, TestImage};

/// Seed upload limit, Mbit/s: a push then takes seconds, not a fraction of one, so the
/// two pushes overlap even if one export finishes a little before the other.
const SEED_MBIT: &str = "24";

/// Runs two pushes at once: `(images, extra arguments)` each.
fn push_both(cluster: &Cluster, a: (&[&str], &[&str]), b: (&[&str], &[&str])) -> (Push, Push) {
    thread::scope(|s| {
        let first = s.spawn(|| cluster.push(a.0, a.1));
        let second = s.spawn(|| cluster.push(b.0, b.1));
        (first.join().unwrap(), second.join().unwrap())
    })
}

fn assert_ok(cluster: &Cluster, push: &Push) {
    cluster.assert_push_ok(push);
    for node in &cluster.nodes {
        let status = push.status(&node.name);
        assert!(
            status == "loaded" || status == "skipped",
            "{}: {status}",
            node.name
        );
    }
}

/// Chunks node `name` planned to fetch in `push`.
fn planned(push: &Push, name: &str) -> u64 {
    push.node(name)["plan"]["need_chunks"].as_u64().unwrap_or(0)
}

/// Each node received, over both pushes, exactly the distinct chunks its store holds.
fn assert_fetched_once(cluster: &Cluster, a: &Push, b: &Push) {
    for node in &cluster.nodes {
        let stored = node.chunk_files().len() as u64;
        let received = a.received_chunks(&node.name) + b.received_chunks(&node.name);
        assert_eq!(
            received, stored,
            "{} received {received} chunks for {stored} distinct ones\n{}\n{}",
            node.name, a.stdout, b.stdout
        );
    }
}

/// `common:1` (three layers, copied to both engines) under two images with layers of
/// their own: `a:1` on `one`, `b:1` on `two`.
fn images_sharing_a_base(one: &Dockerd, two: &Dockerd) -> (TestImage, TestImage) {
    build_test_image_with(one, "common:1", &ImageOptions::default());
    one.copy_image_to(two, "common:1");
    let a = build_test_image_with(one, "a:1", &ImageOptions::default().built_on("common:1"));
    let b = build_test_image_with(two, "b:1", &ImageOptions::default().built_on("common:1"));
    (a, b)
}

#[test]
fn two_images_from_two_seeds_fetch_shared_layers_once_per_node() {
    let cluster = Cluster::start(bin(), 2);
    let seed2 = Dockerd::start("seed2");
    let (a, b) = images_sharing_a_base(&cluster.seed, &seed2);
    let shared = cluster.seed.layers("a:1")[..3].to_vec();
    assert_eq!(
        seed2.layers("b:1")[..3],
        shared[..],
        "the images share three layers"
    );

    let host2 = seed2.host();
    let (pa, pb) = push_both(
        &cluster,
        (&["a:1"], &["--max-upload-mbit", SEED_MBIT]),
        (
            &["b:1"],
            &["--max-upload-mbit", SEED_MBIT, "--docker-host", &host2],
        ),
    );
    assert_ok(&cluster, &pa);
    assert_ok(&cluster, &pb);
    for node in &cluster.nodes {
        assert_eq!(pa.status(&node.name), "loaded");
        assert_eq!(pb.status(&node.name), "loaded");
        // Both distributions planned the shared chunks: the pushes overlapped.
        let both = planned(&pa, &node.name) + planned(&pb, &node.name);
        let stored = node.chunk_files().len() as u64;
        assert!(
            both > stored,
            "{}: the pushes did not overlap ({both} chunks planned, {stored} distinct)",
            node.name
        );
        node.assert_holds_only(&[("a:1", &a.id), ("b:1", &b.id)], &[]);
    }
    assert_fetched_once(&cluster, &pa, &pb);
}

#[test]
fn same_image_pushed_twice_at_once_is_fetched_and_loaded_once() {
    let cluster = Cluster::start(bin(), 2);
    let image = build_test_image_with(&cluster.seed, "app:1", &ImageOptions::default());
    let args: &[&str] = &["--max-upload-mbit", SEED_MBIT];
    let (p1, p2) = push_both(&cluster, (&["app:1"], args), (&["app:1"], args));
    assert_ok(&cluster, &p1);
    assert_ok(&cluster, &p2);
    for node in &cluster.nodes {
        // One push loads the image; the other finds it there afterwards.
        let mut statuses = [p1.status(&node.name), p2.status(&node.name)];
        statuses.sort();
        assert_eq!(statuses, ["loaded", "skipped"], "{}", node.name);
        node.assert_holds_only(&[("app:1", &image.id)], &[]);
    }
    assert_fetched_once(&cluster, &p1, &p2);
}

#[test]
fn same_image_pushed_again_while_it_runs_shows_why_it_waits() {
    let cluster = Cluster::start(bin(), 2);
    let opts = ImageOptions {
        layer_random_bytes: 8 << 20,
        ..ImageOptions::default()
    };
    let image = build_test_image_with(&cluster.seed, "app:1", &opts);
    // The first push runs for seconds; the second starts once every node fetches for
    // the first, so it waits for its turn on every node, and says so.
    let cmd = cluster.push_command(&["app:1"], &["--json", "--max-upload-mbit", "8"]);
    let (first, second) = thread::scope(|s| {
        let mut fetching = std::collections::HashSet::new();
        let mut second = None;
        let first = Push::watch(cmd, |event| {
            if event["event"] == "progress" {
                fetching.insert(event["node"].as_str().unwrap().to_string());
            }
            if second.is_none() && fetching.len() == cluster.nodes.len() {
                second = Some(s.spawn(|| cluster.push(&["app:1"], &[])));
            }
        });
        (first, second.map(|h| h.join().unwrap()))
    });
    let second = second.expect("the first push never had every node fetching");
    assert_ok(&cluster, &first);
    assert_ok(&cluster, &second);
    for node in &cluster.nodes {
        let waited = second.stdout.lines().any(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            e["event"] == "waiting"
                && e["node"] == node.name.as_str()
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("another push of the same images"))
        });
        assert!(
            waited,
            "{}: the second push did not say why it waited:\n{}",
            node.name, second.stdout
        );
        node.assert_holds_only(&[("app:1", &image.id)], &[]);
    }
}
