//! Resume: an agent restarted on the same state directory re-verifies the
//! chunks it kept and fetches only what is missing or damaged.

use std::fs;

use crate::common::bin;
use crate::common::{build_test_image, Cluster};

#[test]
fn restarted_agent_fetches_only_missing_and_damaged_chunks() {
    let mut cluster = Cluster::start(bin(), 1);
    let image = build_test_image(&cluster.seed, "app:1");
    let first = cluster.push(&["app:1"], &[]);
    assert_eq!(
        first.code,
        0,
        "{}\n{}\n{}",
        first.stdout,
        first.stderr,
        cluster.logs()
    );
    let chunks = first.node("n1")["plan"]["need_chunks"].as_u64().unwrap();
    assert!(chunks >= 3, "test image should have several chunks, has {chunks}");

    // While the agent is down: the image leaves the engine, one chunk file is
    // damaged and another is emptied, as a power loss can leave a chunk the
    // store wrote without fsync.
    cluster.stop_agent(0);
    let engine = &cluster.nodes[0].engine;
    engine.docker_ok(["rmi", "app:1"]);
    assert_eq!(engine.image_id("app:1"), None);
    let files = cluster.nodes[0].chunk_files();
    assert_eq!(files.len() as u64, chunks, "one file per distinct chunk");
    let damaged = &files[0];
    let mut bytes = fs::read(damaged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    fs::write(damaged, bytes).unwrap();
    fs::File::create(&files[1]).unwrap();
    // This time the agent also serves metrics.
    let config = cluster.nodes[0].config.clone();
    let text = fs::read_to_string(&config).unwrap() + "metrics_listen = \"127.0.0.1:0\"\n";
    fs::write(&config, text).unwrap();
    cluster.restart_agent(0);

    let second = cluster.push(&["app:1"], &[]);
    assert_eq!(
        second.code,
        0,
        "{}\n{}\n{}",
        second.stdout,
        second.stderr,
        cluster.logs()
    );
    let plan = &second.node("n1")["plan"];
    assert_eq!(
        plan["stored_chunks"].as_u64(),
        Some(chunks - 2),
        "kept chunks re-verified: {plan}"
    );
    assert_eq!(
        plan["need_chunks"].as_u64(),
        Some(2),
        "only the damaged and the empty chunk are fetched: {plan}"
    );
    let received = second.node("n1")["received"][0]["chunks"].as_u64();
    assert_eq!(received, Some(2), "{}", second.stdout);
    assert_eq!(
        cluster.nodes[0].engine.image_id("app:1").as_deref(),
        Some(image.id.as_str())
    );

    // The metrics count what happened since the restart.
    let text = cluster.nodes[0].agent.metrics();
    for line in [
        "p2pimg_received_bytes_total{peer=\"pusher\"}",
        "p2pimg_chunks_verified_total 2",
        "p2pimg_loads_total{result=\"ok\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    let store: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("p2pimg_store_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(store > 0, "{text}");
}
