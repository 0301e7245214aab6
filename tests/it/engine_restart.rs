//! Docker Engine down or restarted mid-distribution (issue #5, scenario 5). Four nodes:
//! n1 untouched; n2's engine stopped once it planned and started again once it tries to
//! load; n3's engine killed as its load starts and started again; n4's engine killed
//! for good. n1 to n3 end with the right image (n2 and n3 by loading again once their
//! engine is back); n4 fails with a clear reason and the push exits non-zero. Nothing
//! partial is left in any engine, and once n4's engine is back a second push completes
//! it from the chunks it kept. While n2 and n4 wait for their engines, the push's
//! progress events say so.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::common::bin;
use crate::common::{build_test_image_with, Cluster, ClusterOptions, ImageOptions, Push};

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
                .any(|r| r.contains("its engine is gone") && r.contains("engine_wait_secs")),
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

/// How long an engine call may go unanswered before the node says so, in the test
/// below: short, so the test need not wait the default 30 s.
const ENGINE_QUIET_SECS: u64 = 2;

/// Whether `event` says node `name` waits on its silent Docker Engine: a `waiting`
/// event (before it plans) or a `progress` reason (later).
fn waits_on_silent_engine(event: &serde_json::Value, name: &str) -> bool {
    let reason = match event["event"].as_str() {
        Some("waiting") => &event["reason"],
        Some("progress") => &event["progress"]["reason"],
        _ => return false,
    };
    event["node"] == name
        && reason
            .as_str()
            .is_some_and(|r| r.contains("Docker Engine at unix://") && r.contains("has not answered for 2s"))
}

#[test]
fn hung_engine_is_shown_and_waited_for() {
    let opts = ClusterOptions {
        agent_toml: format!("engine_quiet_secs = {ENGINE_QUIET_SECS}"),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(bin(), 2, &opts);
    let image = build_test_image_with(&cluster.seed, "app:1", &ImageOptions::default());
    // n1's engine hangs before the push, so n1 cannot plan; n2's hangs once n2 has
    // planned, so its load cannot go on. Each is let go once the push shows the node
    // waiting on it, or after 60 s (the code before this showed nothing: the test then
    // fails on the missing reasons instead of waiting out the engine's limits).
    let n1_hung = Arc::new(Mutex::new(Some(cluster.nodes[0].engine.pause())));
    let n2_hung = Arc::new(Mutex::new(None));
    let watchdog = {
        let (n1, n2) = (n1_hung.clone(), n2_hung.clone());
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(60));
            n1.lock().unwrap().take();
            n2.lock().unwrap().take();
        })
    };
    let (mut n1_shown, mut n2_shown) = (false, false);
    let cmd = cluster.push_command(&["app:1"], &["--json"]);
    let push = Push::watch(cmd, |event| {
        if Push::is_planned(event, "n2") {
            *n2_hung.lock().unwrap() = Some(cluster.nodes[1].engine.pause());
        }
        if !n1_shown && waits_on_silent_engine(event, "n1") {
            n1_shown = true;
            n1_hung.lock().unwrap().take();
        }
        if !n2_shown && waits_on_silent_engine(event, "n2") {
            assert_eq!(event["progress"]["loading"], true, "{event}");
            n2_shown = true;
            n2_hung.lock().unwrap().take();
        }
    });
    n1_hung.lock().unwrap().take();
    n2_hung.lock().unwrap().take();
    drop(watchdog);
    assert!(
        n1_shown,
        "n1 planned against a hung engine without a word:\n{}",
        push.stdout
    );
    assert!(
        n2_shown,
        "n2 loaded into a hung engine without a word:\n{}",
        push.stdout
    );
    cluster.assert_push_ok(&push);
    for node in &cluster.nodes {
        node.assert_holds_only(&[("app:1", &image.id)], &[]);
    }
}

#[test]
fn load_into_a_silent_engine_fails_after_engine_stall_secs() {
    let opts = ClusterOptions {
        agent_toml: format!("engine_quiet_secs = {ENGINE_QUIET_SECS}\nengine_stall_secs = 5"),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(bin(), 1, &opts);
    let image = build_test_image_with(&cluster.seed, "app:1", &ImageOptions::default());
    // n1's engine hangs once n1 has planned, and stays hung for the whole push.
    let mut hung = None;
    let cmd = cluster.push_command(&["app:1"], &["--json"]);
    let push = Push::watch(cmd, |event| {
        if hung.is_none() && Push::is_planned(event, "n1") {
            hung = Some(cluster.nodes[0].engine.pause());
        }
    });
    drop(hung);
    assert_eq!(push.status("n1"), "failed", "{}", push.stdout);
    let reason = push.reason("n1");
    assert!(
        reason.contains("made no progress loading for 5s (engine_stall_secs)")
            && reason.contains("nothing was tagged"),
        "{reason}"
    );
    // The engine answers again: nothing partial is in it, and a push completes from
    // the chunks n1 kept.
    cluster.nodes[0].assert_holds_only(&[], &[]);
    let again = cluster.push(&["app:1"], &[]);
    cluster.assert_push_ok(&again);
    assert_eq!(again.received_chunks("n1"), 0, "{}", again.stdout);
    cluster.nodes[0].assert_holds_only(&[("app:1", &image.id)], &[]);
}
