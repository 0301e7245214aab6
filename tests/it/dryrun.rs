//! `push --dry-run`: every node says what a push would do there (skip, fetch
//! so much, fail, or cannot be reached), and nothing is announced, fetched,
//! loaded or tagged anywhere.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::bin;
use crate::common::cluster::SHORT_TIMEOUTS;
use crate::common::{build_test_image, Cluster, ClusterOptions};

/// The distribution records in an agent's state directory.
fn dist_records(state_dir: &Path) -> Vec<PathBuf> {
    let mut records: Vec<PathBuf> = fs::read_dir(state_dir.join("dists"))
        .map(|dir| dir.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    records.sort();
    records
}

/// Each node's chunk files and distribution records.
fn state(cluster: &Cluster) -> Vec<(Vec<PathBuf>, Vec<PathBuf>)> {
    let of = |n: &crate::common::cluster::Node| (n.chunk_files(), dist_records(&n.state_dir));
    cluster.nodes.iter().map(of).collect()
}

/// The `dry_run` object `push --dry-run --json` ends with.
fn dry_run_report(stdout: &str) -> Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "dry_run")
        .unwrap_or_else(|| panic!("no dry_run object in:\n{stdout}"))
}

#[test]
fn dry_run_says_skip_fetch_and_unreachable_and_moves_nothing() {
    let opts = ClusterOptions {
        timeouts: Some(SHORT_TIMEOUTS),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start_with(bin(), 3, &opts);
    let image = build_test_image(&cluster.seed, "app:1");
    let whole = cluster.push(&["app:1"], &["--node", "n1"]);
    cluster.assert_push_ok(&whole);
    let base = cluster.push(&[&image.base], &["--node", "n2"]);
    cluster.assert_push_ok(&base);
    cluster.stop_agent(2);
    let before = state(&cluster);

    let dry = cluster.push(&["app:1"], &["--dry-run"]);
    let logs = cluster.logs();
    let why = format!("{}\n{}\n{logs}", dry.stdout, dry.stderr);
    assert_eq!(dry.code, 1, "a node is unreachable:\n{why}");
    let report = dry_run_report(&dry.stdout);
    assert_eq!(report["success"], false, "{why}");
    let report = &report["report"];
    let nodes = report["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1", "n2", "n3"], "{why}");
    let verdict = |i: usize| &nodes[i]["verdict"];
    assert_eq!(verdict(0)["kind"], "would_skip", "{why}");
    assert!(
        !verdict(0)["plan"]["engine"].as_str().unwrap().is_empty(),
        "the engine is named: {why}"
    );
    assert_eq!(verdict(1)["kind"], "would_fetch", "{why}");
    let need = verdict(1)["plan"]["need_bytes"].as_u64().unwrap();
    let whole_image = report["compressed_bytes"].as_u64().unwrap();
    assert!(
        need > 0 && need < whole_image,
        "n2 holds the base, so it fetches less than the whole image ({need} of {whole_image}): {why}"
    );
    assert_eq!(verdict(1)["plan"]["present"], serde_json::json!([false]), "{why}");
    assert_eq!(verdict(2)["kind"], "unreachable", "{why}");

    // The same in text: one line per node.
    let mut text = cluster.push_command(&["app:1"], &["--dry-run"]);
    let out = crate::common::run_with_timeout(&mut text, 300);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = |name: &str| {
        let found = stdout.lines().find(|l| l.starts_with(&format!("{name} ")));
        found
            .unwrap_or_else(|| panic!("no line for {name}:\n{stdout}"))
            .to_string()
    };
    assert!(line("n1").contains("would skip"), "{stdout}");
    assert!(line("n2").contains("would fetch"), "{stdout}");
    assert!(line("n3").contains("unreachable"), "{stdout}");
    assert!(stdout.contains("nothing announced"), "{stdout}");

    // Nothing was announced: no new distribution record, no chunk fetched,
    // no image loaded.
    assert_eq!(
        state(&cluster),
        before,
        "a dry run changed an agent's state:\n{logs}"
    );
    assert_eq!(cluster.nodes[0].engine.image_id("app:1"), Some(image.id.clone()));
    assert_eq!(
        cluster.nodes[1].engine.image_id("app:1"),
        None,
        "n2 loaded nothing"
    );
    assert_eq!(
        cluster.nodes[2].engine.image_id("app:1"),
        None,
        "n3 loaded nothing"
    );

    // A node that answers but whose push would fail says why.
    cluster.nodes[1].engine.stop();
    let dry = cluster.push(&["app:1"], &["--dry-run", "--node", "n2"]);
    let why = format!("{}\n{}", dry.stdout, dry.stderr);
    assert_eq!(dry.code, 1, "{why}");
    let report = dry_run_report(&dry.stdout);
    let verdict = &report["report"]["nodes"][0]["verdict"];
    assert_eq!(verdict["kind"], "would_fail", "{why}");
    assert!(!verdict["reason"].as_str().unwrap().is_empty(), "{why}");
}
