//! Retention: the chunks of a finished distribution leave the agent's store `retain`
//! after it ended, while every chunk a live distribution holds stays: its own, and those
//! it shares with a finished one.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::bin;
use crate::common::{build_test_image, build_test_image_with, chunk_files, Cluster, ImageOptions, Push};

/// The agent's retention in this test: short, but long enough to start the next push
/// before the last one's chunks expire, even on a busy machine.
const RETAIN: &str = "10s";

/// Longest wait for a retention sweep to have happened: retention plus its sweep
/// period, with a wide margin for a busy machine.
const SWEEP_WAIT: Duration = Duration::from_secs(60);

/// Distribution records (file names: manifest IDs) in a state directory.
fn records(state: &Path) -> BTreeSet<String> {
    fs::read_dir(state.join("dists"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn set(files: Vec<PathBuf>) -> BTreeSet<PathBuf> {
    files.into_iter().collect()
}

/// Panics with what the push printed and the agents' logs unless it succeeded.
fn succeeded(cluster: &Cluster, push: &Push) {
    let logs = cluster.logs();
    assert_eq!(push.code, 0, "{}\n{}\n{logs}", push.stdout, push.stderr);
}

#[test]
fn finished_distributions_leave_the_store_and_live_chunks_stay() {
    let mut cluster = Cluster::start(bin(), 1);
    build_test_image(&cluster.seed, "a:1");
    build_test_image(&cluster.seed, "s:1");
    // b:1 is s:1 plus a 6 MiB layer: pushed at 2 Mbit/s it stays live for about 25 s,
    // past the retention of a:1 and s:1.
    let b_opts = ImageOptions {
        layer_random_bytes: 6 << 20,
        ..ImageOptions::default()
    };
    let b = build_test_image_with(&cluster.seed, "b:1", &b_opts.built_on("s:1"));
    let config = cluster.nodes[0].config.clone();
    let text = fs::read_to_string(&config).unwrap() + &format!("retain = \"{RETAIN}\"\n");
    fs::write(&config, text).unwrap();
    cluster.restart_agent(0);
    let state = cluster.nodes[0].state_dir.clone();

    let manifest = |images: &[&str]| {
        let push = cluster.push(images, &[]);
        succeeded(&cluster, &push);
        push.report()["manifest"].as_str().unwrap().to_string()
    };
    // s:1 first: every chunk file is then one of its own. The images share a few
    // chunks (the same busybox binary), so a:1's own are those it adds.
    let s_id = manifest(&["s:1"]);
    let s_files = set(chunk_files(&state));
    let a_id = manifest(&["a:1"]);
    let a_files: BTreeSet<PathBuf> = set(chunk_files(&state)).difference(&s_files).cloned().collect();
    assert!(!a_files.is_empty() && !s_files.is_empty());
    assert_eq!(records(&state), BTreeSet::from([a_id.clone(), s_id.clone()]));

    let done = AtomicBool::new(false);
    thread::scope(|scope| {
        let push = scope.spawn(|| {
            let push = cluster.push(&["b:1"], &["--max-upload-mbit", "2"]);
            done.store(true, Ordering::SeqCst);
            push
        });
        // Wait until a:1 and s:1 have expired while b:1 is live: its record is the only one.
        let deadline = Instant::now() + SWEEP_WAIT;
        loop {
            let now = records(&state);
            if now.len() == 1 && !now.contains(&a_id) && !now.contains(&s_id) {
                break;
            }
            assert!(
                !done.load(Ordering::SeqCst),
                "b:1's push ended before a:1 and s:1 expired (records {now:?})"
            );
            assert!(Instant::now() < deadline, "records {now:?} after {SWEEP_WAIT:?}");
            thread::sleep(Duration::from_millis(200));
        }
        let files = set(chunk_files(&state));
        assert!(!done.load(Ordering::SeqCst), "b:1 is still live");
        assert!(a_files.is_disjoint(&files), "a:1's own chunks are removed");
        assert!(
            s_files.is_subset(&files),
            "s:1's chunks, which live b:1 holds, stay"
        );
        assert!(files.len() > s_files.len(), "b:1's own fetched chunks stay");

        let push = push.join().unwrap();
        succeeded(&cluster, &push);
    });
    // b:1 loaded from its chunks, the shared ones included.
    assert_eq!(
        cluster.nodes[0].engine.image_id("b:1").as_deref(),
        Some(b.id.as_str())
    );

    // Once b:1 has ended too, the store empties.
    let deadline = Instant::now() + SWEEP_WAIT;
    while !(chunk_files(&state).is_empty() && records(&state).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "store not emptied: {:?}",
            records(&state)
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(cluster.nodes[0]
        .agent
        .log()
        .contains("evicted from the chunk store"));
}
