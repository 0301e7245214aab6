//! Nodes unreachable or cut off, and slow, lossy links (issue #5, scenarios 3 and 7).
//! The pusher and each agent run on hosts of their own (network namespaces on a
//! bridge, [`crate::common::Net`]); links are cut by taking a host's bridge port down.
//!
//! - A node unreachable when the push starts, and one cut off mid-transfer, whose links
//!   come back within the timeout: both complete.
//! - The same two faults, links never back: the push exits non-zero with both nodes
//!   failed and the cause; the healthy node finished first, not held up by them.
//! - One node's uplink rate-limited and 5 % of its incoming packets dropped: it
//!   finishes, and so does everyone else.
//!
//! The pusher and agents run with [`SHORT_TIMEOUTS`] (a 16 s redial window and a 12 s
//! idle timeout instead of 30 s each), so a dead link is judged sooner; both still
//! outlast a healthy node's push with a dead peer (about 11 s here), as the "not held
//! up" assertion needs.

use std::thread;
use std::time::{Duration, Instant};

use crate::common::bin;
use crate::common::cluster::SHORT_TIMEOUTS;
use crate::common::{build_test_image_with, Cluster, ClusterOptions, ImageOptions, Push, TestImage};

/// Seed upload limit, Mbit/s: the transfer lasts seconds, so a link can be cut while
/// it runs.
const SEED_MBIT: &str = "40";

/// How long a link stays down when it comes back: well within the pusher's redial
/// window (16 s) and QUIC's idle timeout (12 s) of [`SHORT_TIMEOUTS`] (it was 6 s of the
/// product's 30 s).
const OUTAGE: Duration = Duration::from_secs(3);

fn netns_cluster(n: usize) -> Cluster {
    let opts = ClusterOptions {
        netns: true,
        timeouts: Some(SHORT_TIMEOUTS),
        ..ClusterOptions::default()
    };
    Cluster::start_with(bin(), n, &opts)
}

/// An image of about 15 MiB: two to three seconds from the rate-limited seed.
fn image(cluster: &Cluster) -> TestImage {
    let opts = ImageOptions {
        layer_random_bytes: 12 << 20,
        ..ImageOptions::default()
    };
    build_test_image_with(&cluster.seed, "app:1", &opts)
}

/// Whether `event` says node `name` has received some chunks.
fn is_fetching(event: &serde_json::Value, name: &str) -> bool {
    event["event"] == "progress" && event["node"] == name && event["progress"]["chunks"].as_u64() > Some(0)
}

fn assert_all_loaded(cluster: &Cluster, push: &Push, image: &TestImage) {
    cluster.assert_push_ok(push);
    for node in &cluster.nodes {
        assert_eq!(push.status(&node.name), "loaded", "{}", node.name);
        node.assert_holds_only(&[("app:1", &image.id)], &[]);
    }
}

#[test]
fn links_back_within_the_timeout_complete() {
    let cluster = netns_cluster(3);
    let image = image(&cluster);
    let net = cluster.net();
    let (n2, n3) = (Cluster::host_of(1), Cluster::host_of(2));
    net.cut(n2);
    let started = Instant::now();
    let mut n3_cut: Option<Instant> = None;
    let push = thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(OUTAGE);
            net.restore(n2);
        });
        let cmd = cluster.push_command(&["app:1"], &["--json", "--max-upload-mbit", SEED_MBIT]);
        Push::watch(cmd, |event| {
            if n3_cut.is_none() && is_fetching(event, "n3") {
                net.cut(n3);
                n3_cut = Some(Instant::now());
                s.spawn(|| {
                    thread::sleep(OUTAGE);
                    net.restore(n3);
                });
            }
        })
    });
    assert!(n3_cut.is_some(), "n3 never fetched:\n{}", push.stdout);
    assert_all_loaded(&cluster, &push, &image);
    println!(
        "n2 unreachable {OUTAGE:?} from the start, n3 cut {OUTAGE:?} mid-transfer: push took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn links_never_back_fail_those_nodes_only() {
    let cluster = netns_cluster(3);
    let image = image(&cluster);
    let net = cluster.net();
    net.cut(Cluster::host_of(1));
    let mut n3_cut = false;
    let (mut finished, mut timeline) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let at = || format!("{:.1}s", started.elapsed().as_secs_f64());
    let cmd = cluster.push_command(&["app:1"], &["--json", "--max-upload-mbit", SEED_MBIT]);
    let push = Push::watch(cmd, |event| {
        if !n3_cut && is_fetching(event, "n3") {
            net.cut(Cluster::host_of(2));
            n3_cut = true;
            timeline.push(format!("n3 cut {}", at()));
        }
        if event["event"] == "finished" {
            let node = event["node"].as_str().unwrap_or("?").to_string();
            timeline.push(format!("{node} finished {}", at()));
            finished.push(node);
        }
    });
    println!("{timeline:?}");
    assert!(n3_cut, "n3 never fetched:\n{}", push.stdout);
    assert_ne!(push.code, 0, "two nodes failed, the push must say so");
    assert_eq!(push.status("n1"), "loaded", "{}", cluster.logs());
    cluster.nodes[0].assert_holds_only(&[("app:1", &image.id)], &[]);
    assert_eq!(
        finished.first().map(String::as_str),
        Some("n1"),
        "n1 was held up by the unreachable nodes: {finished:?}"
    );
    for name in ["n2", "n3"] {
        assert_eq!(push.status(name), "failed", "{name}");
        println!("{name} failed with: {}", push.reason(name));
    }
    let n2 = push.reason("n2");
    assert!(n2.contains("unreachable") && n2.contains("no answer"), "{n2}");
    let n3 = push.reason("n3");
    assert!(n3.contains("stopped answering"), "{n3}");
    for node in &cluster.nodes[1..] {
        node.assert_holds_only(&[], &[]);
    }
}

#[test]
fn slow_lossy_link_finishes() {
    let cluster = netns_cluster(3);
    let image = image(&cluster);
    let net = cluster.net();
    let n3 = Cluster::host_of(2);
    net.shape(n3, 8);
    net.drop_randomly(n3, 0.05);
    let started = Instant::now();
    let mut done = Vec::new();
    let cmd = cluster.push_command(&["app:1"], &["--json"]);
    let push = Push::watch(cmd, |event| {
        if event["event"] == "finished" {
            let node = event["node"].as_str().unwrap_or("?").to_string();
            done.push(format!("{node} {:.1}s", started.elapsed().as_secs_f64()));
        }
    });
    assert_all_loaded(&cluster, &push, &image);
    println!("n3 at 8 Mbit/s up, 5 % loss in: finished {done:?}");
}
