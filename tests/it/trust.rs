//! Trust: a pusher with a certificate from another cluster's CA is refused at
//! the handshake, a node identity of this cluster cannot announce a push, and
//! an identity on an agent's deny list is refused.

use std::process::Command;

use crate::common::bin;
use crate::common::{build_test_image, run_ok, Cluster};

#[test]
fn foreign_ca_node_identity_and_denied_identity_are_refused() {
    let mut cluster = Cluster::start(bin(), 1);
    let image = build_test_image(&cluster.seed, "app:1");
    let engine = &cluster.nodes[0].engine;

    // A pusher of another cluster: same file layout, different CA.
    let foreign = cluster.dir.path().join("foreign");
    run_ok(Command::new(bin()).args(["init", "--dir"]).arg(&foreign), 30);
    let push = cluster.push(&["app:1"], &["--cluster-dir", foreign.to_str().unwrap()]);
    assert_ne!(push.code, 0, "foreign pusher succeeded:\n{}", push.stdout);
    assert_eq!(push.status("n1"), "failed");
    let reason = push.reason("n1");
    assert!(
        reason.contains("CA"),
        "reason should name the CA problem: {reason}"
    );
    assert_eq!(engine.image_id("app:1"), None, "nothing arrived");

    // This cluster's node identity n1 used as a pusher: the agent refuses the announce.
    let push = cluster.push(&["app:1"], &["--identity", "n1"]);
    assert_ne!(push.code, 0, "node identity announced a push:\n{}", push.stdout);
    let reason = push.reason("n1");
    assert!(reason.contains("only a pusher identity"), "reason: {reason}");
    assert_eq!(engine.image_id("app:1"), None, "nothing arrived");
    assert!(
        cluster.nodes[0].agent.log().contains("refused an announce"),
        "{}",
        cluster.logs()
    );

    // The real pusher still works.
    let push = cluster.push(&["app:1"], &[]);
    assert_eq!(
        push.code,
        0,
        "{}\n{}\n{}",
        push.stdout,
        push.stderr,
        cluster.logs()
    );
    assert_eq!(engine.image_id("app:1").as_deref(), Some(image.id.as_str()));

    // The operator denies the pusher's identity in agent.toml: its pushes are refused.
    cluster.stop_agent(0);
    let config = cluster.nodes[0].config.clone();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("deny = [\"pusher\"]\n");
    std::fs::write(&config, text).unwrap();
    cluster.restart_agent(0);
    let push = cluster.push(&["app:1"], &[]);
    assert_ne!(push.code, 0, "a denied pusher succeeded:\n{}", push.stdout);
    let reason = push.reason("n1");
    assert!(
        reason.contains("denied"),
        "reason should say the identity is denied: {reason}"
    );
    assert!(
        cluster.nodes[0].agent.log().contains("refused a denied identity"),
        "{}",
        cluster.logs()
    );
}
