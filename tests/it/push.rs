//! End to end: real dockerd engines, real agents, real QUIC on loopback.
//! A multi-layer image pushed to 4 nodes arrives with the same image ID and tag
//! everywhere and runs; nodes exchange chunks among themselves; a node holding
//! the base fetches only the rest; pushing again sends nothing. A seed's
//! `--state-dir` holds the last push only.

use std::path::Path;

use crate::common::bin;
use crate::common::{build_test_image_with, chunk_files, Cluster, ImageOptions, HELLO_PATH};

/// Random (incompressible) bytes in the base image's own files.
const BASE_RANDOM: usize = 4 << 20;

#[test]
fn push_to_four_nodes_then_again() {
    let cluster = Cluster::start(bin(), 4);
    // 4 MiB random base + 1 MiB text, 24 MiB random app layer: ~30 chunks, enough for
    // peers to trade chunks before the seed has sent every node everything.
    let opts = ImageOptions {
        base_random_bytes: BASE_RANDOM,
        base_text_bytes: 1 << 20,
        layer_random_bytes: 24 << 20,
        ..ImageOptions::default()
    };
    let image = build_test_image_with(&cluster.seed, "app:1.4", &opts);
    // n4 already holds the base image: it must fetch only the layers above it.
    cluster.seed.copy_image_to(&cluster.nodes[3].engine, &image.base);

    let push = cluster.push(&["app:1.4"], &[]);
    assert_eq!(
        push.code,
        0,
        "push failed:\n{}\n{}\n{}",
        push.stdout,
        push.stderr,
        cluster.logs()
    );
    let compressed = push.report()["compressed_bytes"].as_u64().unwrap();
    for node in &cluster.nodes {
        assert_eq!(
            push.status(&node.name),
            "loaded",
            "{}: {}",
            node.name,
            push.reason(&node.name)
        );
        assert_eq!(
            node.engine.image_id("app:1.4").as_deref(),
            Some(image.id.as_str()),
            "{}",
            node.name
        );
        let out = node
            .engine
            .docker_ok(["run", "--rm", "--network", "none", "app:1.4", "cat", HELLO_PATH]);
        assert_eq!(out, image.hello.trim_end(), "{} reads the top layer", node.name);
    }

    // Nodes without the base received every chunk, from the seed or from peers.
    for name in ["n1", "n2", "n3"] {
        assert_eq!(
            push.received_total(name),
            compressed,
            "{name} received the whole image once"
        );
    }
    // n4 received only the layers above the base: at least the base's random
    // bytes less than the others.
    let n4 = push.received_total("n4");
    assert!(
        n4 > 0 && n4 <= compressed - BASE_RANDOM as u64,
        "n4 received {n4} of {compressed}"
    );
    assert_eq!(push.node("n4")["plan"]["need_bytes"].as_u64(), Some(n4));

    // Peers exchanged chunks: some node received bytes from another node.
    let from_peers: u64 = ["n1", "n2", "n3", "n4"]
        .iter()
        .flat_map(|to| ["n1", "n2", "n3", "n4"].map(|from| push.received(to, from)))
        .sum();
    assert!(from_peers > 0, "no chunk went between nodes:\n{}", push.stdout);
    let from_seed: u64 = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| push.received(n, "pusher"))
        .sum();
    // The seed may also have sent endgame duplicates that arrived second and were dropped.
    assert!(
        push.seed_uploaded() >= from_seed,
        "seed counted less than the nodes received from it"
    );

    // The seed offers each chunk to one node and lets the nodes spread it: it uploads
    // about one copy (the design's bound is 1.5x), not one per node.
    let uploaded = push.seed_uploaded();
    assert!(
        uploaded * 2 <= compressed * 3,
        "seed uploaded {uploaded} for a {compressed}-byte image"
    );

    // The same push again: every node skips, no chunk byte moves.
    let again = cluster.push(&["app:1.4"], &[]);
    assert_eq!(
        again.code, 0,
        "second push failed:\n{}\n{}",
        again.stdout, again.stderr
    );
    for node in &cluster.nodes {
        assert_eq!(again.status(&node.name), "skipped", "{}", node.name);
        assert_eq!(again.received_total(&node.name), 0, "{}", node.name);
    }
    assert_eq!(again.seed_uploaded(), 0);
}

/// Bytes of the chunk files under a state directory.
fn store_bytes(state_dir: &Path) -> u64 {
    chunk_files(state_dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

#[test]
fn push_state_dir_keeps_the_last_push_only_unless_keep() {
    let cluster = Cluster::start(bin(), 1);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("seed");
    let state_s = state.to_str().unwrap();
    // A push killed outright left its scratch store in the temporary directory;
    // 2^22 + 1 is above any pid_max, so no process runs with that PID.
    let stale = std::env::temp_dir().join(format!("p2pimg-seed-{}", (1 << 22) + 1));
    std::fs::create_dir_all(stale.join("chunks/ab")).unwrap();
    let mut sizes = Vec::new();
    for (i, tag) in ["a:1", "b:1", "c:1"].iter().enumerate() {
        build_test_image_with(&cluster.seed, tag, &ImageOptions::default().seeded(i as u64 + 1));
        let push = cluster.push(&[tag], &["--state-dir", state_s]);
        cluster.assert_push_ok(&push);
        let compressed = push.report()["compressed_bytes"].as_u64().unwrap();
        let held = store_bytes(&state);
        assert!(
            held <= compressed,
            "{tag}: the store holds {held}, the push {compressed}"
        );
        sizes.push(held);
    }
    assert!(!stale.exists(), "the dead push's scratch store was removed");
    // --keep: the next push adds to what is there.
    let before = store_bytes(&state);
    let push = cluster.push(&["a:1"], &["--state-dir", state_s, "--keep"]);
    cluster.assert_push_ok(&push);
    let kept = store_bytes(&state);
    assert!(
        kept > before,
        "--keep kept {before} and added a:1's chunks: {kept}"
    );
    eprintln!("store after pushes of a, b, c: {sizes:?} bytes; then a with --keep: {kept}");
}
