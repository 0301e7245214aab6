//! Resilience: the seed leaves mid-distribution once every chunk has a copy
//! among the agents, and the agents finish among themselves.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{build_test_image_with, Cluster, ImageOptions};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_p2pimg"))
}

/// Waits until `check` holds, up to `secs`.
fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn seed_gone_after_every_chunk_is_among_the_agents() {
    let cluster = Cluster::start(bin(), 2);
    let opts = ImageOptions {
        layer_random_bytes: 24 << 20,
        ..ImageOptions::default()
    };
    let image = build_test_image_with(&cluster.seed, "app:1", &opts);

    // n2 gets the image, then loses it from its engine but keeps its chunks:
    // every chunk now has a copy among the agents.
    let first = cluster.push(&["app:1"], &["--node", "n2"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    cluster.nodes[1].engine.docker_ok(["rmi", "app:1"]);

    // Push to both, and kill the pusher as soon as both nodes are fetching.
    let mut push = Command::new(bin())
        .args(["push", "app:1", "--json", "--nodes"])
        .arg(cluster.nodes_toml())
        .arg("--cluster-dir")
        .arg(cluster.ca_dir())
        .args(["--docker-host", &cluster.seed.host()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(push.stdout.take().unwrap()).lines();
    let mut fetching = std::collections::HashSet::new();
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if event["event"] == "progress" {
            fetching.insert(event["node"].as_str().unwrap().to_string());
        }
        if fetching.len() == 2 {
            break;
        }
    }
    push.kill().unwrap();
    push.wait().unwrap();

    // Both nodes finish without the seed, from each other.
    for node in &cluster.nodes {
        let loaded = eventually(120, || {
            node.engine.image_id("app:1").as_deref() == Some(image.id.as_str())
        });
        assert!(
            loaded,
            "{} did not finish without the seed:\n{}",
            node.name,
            cluster.logs()
        );
    }

    // A later push finds the images in place and sends nothing.
    let again = cluster.push(&["app:1"], &[]);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    for node in &cluster.nodes {
        assert_eq!(again.status(&node.name), "skipped", "{}", node.name);
    }
    assert_eq!(again.seed_uploaded(), 0);
}
