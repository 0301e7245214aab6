//! Resilience: the seed leaves mid-distribution once every chunk has a copy
//! among the agents, and the agents finish among themselves.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::bin;
use crate::common::{build_test_image_with, Cluster, ImageOptions};

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

/// Seed upload limit for the pushes these tests interrupt, Mbit/s: the image then takes
/// about a minute, so every node is still fetching when the pusher goes.
const SLOW_MBIT: &str = "4";

/// `app:1` with a 24 MiB random layer: about a minute at [`SLOW_MBIT`].
fn slow_image(cluster: &Cluster) -> crate::common::TestImage {
    let opts = ImageOptions {
        layer_random_bytes: 24 << 20,
        ..ImageOptions::default()
    };
    build_test_image_with(&cluster.seed, "app:1", &opts)
}

/// A push started by [`push_until_all_fetch`], its output read by threads.
struct Running {
    child: std::process::Child,
    seen: Vec<String>,
    rest: std::thread::JoinHandle<Vec<String>>,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts `push app:1 --json` at [`SLOW_MBIT`] and returns it once every node of
/// `cluster` has reported progress.
fn push_until_all_fetch(cluster: &Cluster) -> Running {
    let mut child = cluster
        .push_command(&["app:1"], &["--json", "--max-upload-mbit", SLOW_MBIT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut text);
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut seen, mut fetching) = (Vec::new(), std::collections::HashSet::new());
    while fetching.len() < cluster.nodes.len() {
        let line = lines
            .next()
            .expect("the push ended before every node fetched")
            .unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "progress" {
            fetching.insert(event["node"].as_str().unwrap().to_string());
        }
        seen.push(line);
    }
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect());
    Running {
        child,
        seen,
        rest,
        stderr,
    }
}

impl Running {
    /// Waits for the push (60 s at most): its exit code, stdout lines and stderr.
    fn finish(mut self) -> (i32, Vec<String>, String) {
        let status = crate::common::process::wait_deadline(&mut self.child, Duration::from_secs(60));
        if status.is_none() {
            let _ = self.child.kill();
        }
        let code = status.and_then(|s| s.code()).unwrap_or(-1);
        self.seen.extend(self.rest.join().unwrap());
        (code, self.seen, self.stderr.join().unwrap())
    }
}

/// The push again, bounded by its own `--timeout 60`: on the code before these fixes,
/// every node made it wait for the interrupted distribution to give up after 180 s
/// without a chunk, so it failed every node at 60 s.
fn push_again_at_once(cluster: &Cluster, image: &crate::common::TestImage) {
    let again = cluster.push(&["app:1"], &["--timeout", "60"]);
    cluster.assert_push_ok(&again);
    println!("the push again took {}s", again.report()["secs"]);
    for node in &cluster.nodes {
        assert_eq!(again.status(&node.name), "loaded", "{}", node.name);
        node.assert_holds_only(&[("app:1", &image.id)], &[]);
    }
}

#[test]
fn retried_push_after_timeout_does_not_wait_for_the_first() {
    let cluster = Cluster::start(bin(), 3);
    let image = slow_image(&cluster);
    let cut = cluster.push(&["app:1"], &["--max-upload-mbit", SLOW_MBIT, "--timeout", "5"]);
    assert_ne!(cut.code, 0, "{}", cut.stdout);
    for node in &cluster.nodes {
        let planned = cut
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| crate::common::Push::is_planned(&e, &node.name));
        assert!(
            planned,
            "{} did not plan before the timeout, so nothing was left running:\n{}",
            node.name, cut.stdout
        );
        assert!(cut.reason(&node.name).contains("timed out"), "{}", cut.stdout);
    }
    push_again_at_once(&cluster, &image);
    // The timed-out pusher told the nodes it left (a node that missed its close took the
    // next push's take-over path instead; see the interrupted test).
    let told = cluster
        .nodes
        .iter()
        .any(|n| n.agent.log().contains("the pusher left"));
    assert!(told, "no node ended the push on the pusher's close");
}

#[test]
fn interrupted_push_tells_the_nodes_cleans_up_and_exits_143() {
    let cluster = Cluster::start(bin(), 3);
    let image = slow_image(&cluster);
    let push = push_until_all_fetch(&cluster);
    let pid = push.child.id();
    crate::common::process::signal(pid, crate::common::process::SIGTERM);
    let (code, lines, stderr) = push.finish();
    assert_eq!(code, 143, "{stderr}\n{}", lines.join("\n"));
    let report = lines.iter().find(|l| l.contains(r#""event":"report""#)).unwrap();
    let report: serde_json::Value = serde_json::from_str(report).unwrap();
    for node in report["report"]["nodes"].as_array().unwrap() {
        let reason = node["status"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("interrupted (SIGTERM)"), "{node}");
    }
    assert!(stderr.contains("not done: n1, n2, n3"), "{stderr}");
    // The seed's scratch directory went with it.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("p2pimg") && n.contains(&pid.to_string()))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The nodes end the distribution as the pusher's close reaches them. Not every node
    // does within the wait: now and then one sees the connection time out instead (30 s)
    // and goes on among its peers until the next push takes over, which
    // `push_again_at_once` then shows is at once either way.
    let told = |node: &crate::common::cluster::Node| node.agent.log().contains("the pusher left");
    let any_told = eventually(10, || cluster.nodes.iter().any(told));
    assert!(any_told, "no node ended the push on the pusher's close");
    push_again_at_once(&cluster, &image);
}

#[test]
fn crashed_pushers_distribution_is_taken_over_by_the_next_push() {
    let cluster = Cluster::start(bin(), 2);
    let image = slow_image(&cluster);
    let mut push = push_until_all_fetch(&cluster);
    push.child.kill().unwrap();
    push.finish();
    push_again_at_once(&cluster, &image);
    for node in &cluster.nodes {
        let log = node.agent.log();
        assert!(log.contains("this one takes over"), "{}:\n{log}", node.name);
    }
}

#[test]
fn agent_shut_down_mid_push_is_named() {
    let mut cluster = Cluster::start(bin(), 2);
    let opts = ImageOptions {
        layer_random_bytes: 8 << 20,
        ..ImageOptions::default()
    };
    build_test_image_with(&cluster.seed, "app:1", &opts);
    let mut stopped = false;
    let cmd = cluster.push_command(&["app:1"], &["--json", "--max-upload-mbit", "8"]);
    let push = crate::common::Push::watch(cmd, |event| {
        if !stopped && event["event"] == "progress" && event["node"] == "n1" {
            cluster.nodes[0].agent.stop();
            stopped = true;
        }
    });
    assert!(stopped, "n1 never fetched:\n{}", push.stdout);
    assert_eq!(push.status("n1"), "failed", "{}", push.stdout);
    let reason = push.reason("n1");
    assert!(
        reason.contains("the agent on n1 shut down"),
        "n1's reason should say its agent shut down: {reason}"
    );
    assert_eq!(push.status("n2"), "loaded", "{}", push.stdout);
}
