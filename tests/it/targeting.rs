//! Choosing targets and shaping a push: a label selector, extra tags applied
//! on arrival, and a time limit that fails what is not done.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::UdpSocket;

use crate::common::bin;
use crate::common::{self, build_test_image, Cluster};

#[test]
fn select_by_label_and_tag_on_arrival() {
    let cluster = Cluster::start(bin(), 3);
    let image = build_test_image(&cluster.seed, "app:1");
    let push = cluster.push(
        &["app:1"],
        &[
            "--select",
            "parity=odd",
            "--tag",
            "registry.local:5000/team/app:prod",
        ],
    );
    assert_eq!(push.code, 0, "{}\n{}", push.stdout, push.stderr);
    let targeted: Vec<&str> = push.report()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(targeted, ["n1", "n3"]);
    for node in &cluster.nodes {
        let expected = (node.name != "n2").then_some(image.id.as_str());
        assert_eq!(
            node.engine.image_id("app:1").as_deref(),
            expected,
            "{}",
            node.name
        );
        let tagged = node.engine.image_id("registry.local:5000/team/app:prod");
        assert_eq!(tagged.as_deref(), expected, "{} carries the extra tag", node.name);
    }

    // `status` asks every node's engine, and moves no image.
    let out = common::run_ok(
        std::process::Command::new(bin())
            .args(["status", "app:1", "--json", "--nodes"])
            .arg(cluster.nodes_toml())
            .arg("--cluster-dir")
            .arg(cluster.ca_dir()),
        60,
    );
    let answers: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<(String, serde_json::Value)> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["answer"]["Ok"]["ids"][0].clone(),
            )
        })
        .collect();
    let expected = serde_json::Value::from(image.id.clone());
    assert_eq!(ids[0], ("n1".into(), expected.clone()), "{out}");
    assert_eq!(ids[1], ("n2".into(), serde_json::Value::Null), "{out}");
    assert_eq!(ids[2], ("n3".into(), expected), "{out}");
    assert_eq!(
        cluster.nodes[1].engine.image_id("app:1"),
        None,
        "status moved nothing"
    );
}

#[test]
fn timeout_fails_what_is_not_done() {
    let cluster = Cluster::start(bin(), 1);
    build_test_image(&cluster.seed, "app:1");
    // A node that never answers: a bound UDP port nobody reads.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut nodes = OpenOptions::new()
        .append(true)
        .open(cluster.nodes_toml())
        .unwrap();
    writeln!(
        nodes,
        "[[node]]\nname = \"silent\"\naddr = \"{}\"",
        silent.local_addr().unwrap()
    )
    .unwrap();

    let started = std::time::Instant::now();
    let push = cluster.push(&["app:1"], &["--timeout", "7"]);
    assert_ne!(push.code, 0);
    assert!(
        started.elapsed().as_secs() < 12,
        "the push outlived its --timeout"
    );
    assert!(
        push.reason("silent").contains("timed out"),
        "{}",
        push.reason("silent")
    );
    assert_eq!(
        push.status("n1"),
        "loaded",
        "the reachable node is held up: {}\n{}",
        push.reason("n1"),
        push.stdout
    );
}
