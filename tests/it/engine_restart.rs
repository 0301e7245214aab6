//! Docker Engine down or restarted mid-distribution (issue #5, scenario 5). Four nodes:
//! n1 untouched; n2's engine stopped once it planned and started again once it tries to
//! load; n3's engine killed as its load starts and started again; n4's engine killed
//! for good. n1 to n3 end with the right image (n2 and n3 by loading again once their
//! engine is back); n4 fails with a clear reason and the push exits non-zero. Nothing
//! partial is left in any engine, and once n4's engine is back a second push completes
//! it from the chunks it kept. While n2 and n4 wait for their engines, the push's
//! progress events say so.

use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::common::{build_test_image_with, Cluster, ClusterOptions, ImageOptions, Push};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_p2pimg"))
}

/// How long agents wait for an engine to come back: long enough for a restart here
/// (about a second), short enough that the node whose engine stays down fails soon.
const ENGINE_WAIT_SECS: u64 = 8;

/// Seed upload limit, Mbit/s: fetching takes a few seconds, so the engines are stopped
/// while the nodes still fetch.
const SEED_MBIT: &str = "40";

#[test]
fn engine_down_or_restarted_mid_distribution() {
    let opts = ClusterOptions {
        agent_toml: format!("engine_wait_secs = {ENGINE_WAIT_SECS}"),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start_with(bin(), 4, &opts);
    let image = build_test_image_with(
        &cluster.seed,
        "app:1",
        &ImageOptions {
            layer_random_bytes: 12 << 20,
            ..ImageOptions::default()
        },
    );

    // Faults, each once, at the moment the push's events say.
    let (mut n2_stopped, mut n2_back, mut n3_killed, mut n4_killed) = (false, false, false, false);
    let cmd = cluster.push_command(&["app:1"], &["--json", "--max-upload-mbit", SEED_MBIT]);
    let push = Push::watch(cmd, |event| {
        let nodes = &mut cluster.nodes;
        if !n2_stopped && Push::is_planned(event, "n2") {
            nodes[1].engine.stop();
            n2_stopped = true;
        }
        if n2_stopped && !n2_back && Push::is_loading(event, "n2") {
            // Its first load fails at once; it waits and loads again.
            thread::sleep(Duration::from_secs(1));
            nodes[1].engine.restart();
            n2_back = true;
        }
        if !n3_killed && Push::is_loading(event, "n3") {
            nodes[2].engine.kill();
            nodes[2].engine.restart();
            n3_killed = true;
        }
        if !n4_killed && Push::is_planned(event, "n4") {
            nodes[3].engine.kill();
            n4_killed = true;
        }
    });
    assert!(
        n2_back && n3_killed && n4_killed,
        "not every fault happened:\n{}",
        push.stdout
    );
    let logs = cluster.logs();
    assert_ne!(push.code, 0, "a node failed, the push must say so");
    for name in ["n1", "n2", "n3"] {
        assert_eq!(
            push.status(name),
            "loaded",
            "{name}: {}\n{logs}",
            push.reason(name)
        );
    }
    assert_eq!(push.status("n4"), "failed");
    let reason = push.reason("n4");
    assert!(
        reason.contains("cannot reach the Docker Engine") && reason.contains("engine_wait_secs"),
        "n4's reason should name the engine and the wait: {reason}"
    );
    println!("n4 failed with: {reason}");
    // While n2 and n4 waited for their engines, the push showed why.
    for name in ["n2", "n4"] {
        let waited = push.progress_reasons(name);
        assert!(
            waited
                .iter()
                .any(|r| r.contains("Docker Engine is gone") && r.contains("engine_wait_secs")),
            "{name}'s progress should say it waits for its Docker Engine: {waited:?}"
        );
        println!("{name} waited: {waited:?}");
    }
    let n2_log = cluster.nodes[1].agent.log();
    assert!(
        n2_log.contains("loading again once the engine answers"),
        "n2 should have loaded again once its engine was back:\n{n2_log}"
    );
    let n3_retried = cluster.nodes[2].agent.log().contains("loading again");
    println!("n3's load was cut by the kill and retried: {n3_retried}");
    for node in &cluster.nodes[..3] {
        node.assert_holds_only(&[("app:1", &image.id)], &[]);
    }

    // n4's engine is back: it holds nothing, and a second push completes it from the
    // chunks it kept, fetching nothing.
    cluster.nodes[3].engine.restart();
    cluster.nodes[3].assert_holds_only(&[], &[]);
    let again = cluster.push(&["app:1"], &[]);
    cluster.assert_push_ok(&again);
    assert_eq!(again.status("n4"), "loaded");
    assert_eq!(
        again.received_chunks("n4"),
        0,
        "n4 kept its chunks: {}",
        again.stdout
    );
    for node in &cluster.nodes {
        node.assert_holds_only(&[("app:1", &image.id)], &[]);
    }
}
