//! Load, light (issue #5, scenario 8): six nodes, three images in one push. Every node
//! ends with all three; each agent's peak memory stays bounded, and it opens at most one
//! connection per other node plus the pusher's. The full 16-node, 5-image run is
//! `scripts/load.sh`, too heavy for a 2-core CI machine.

use crate::common::bin;
use crate::common::{build_test_image, Cluster, ClusterOptions};

const NODES: usize = 6;

/// Bound on an agent's peak resident memory. An agent idles at about 9 MiB; serving
/// peers, its peak grows with the chunks it sends at once (32 answers in flight) and what
/// QUIC buffers per connection, not with the images: about 40 to 85 MiB here, up to
/// 200 MiB for 16 nodes (`scripts/load.sh`). An agent that held whole images or leaked
/// per chunk would pass this bound on a larger push, not on these small images, so this
/// catches only gross growth; the script's figures are the real measure.
const MAX_PEAK_RSS_KIB: u64 = 256 * 1024;

#[test]
fn six_nodes_three_images_bounded_memory_and_connections() {
    let opts = ClusterOptions {
        agent_toml: "metrics_listen = \"127.0.0.1:0\"".into(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(bin(), NODES, &opts);
    let images: Vec<_> = ["one:1", "two:1", "three:1"]
        .iter()
        .map(|tag| build_test_image(&cluster.seed, tag))
        .collect();
    let refs: Vec<&str> = images.iter().map(|i| i.tag.as_str()).collect();
    let push = cluster.push(&refs, &[]);
    cluster.assert_push_ok(&push);
    let expected: Vec<(&str, &str)> = images.iter().map(|i| (i.tag.as_str(), i.id.as_str())).collect();
    println!("node  peak_rss_kib  peak_connections");
    for node in &cluster.nodes {
        assert_eq!(push.status(&node.name), "loaded", "{}", node.name);
        node.assert_holds_only(&expected, &[]);
        let rss = node.agent.memory_kib("VmHWM");
        let connections = node.agent.metric("p2pimg_connections_peak");
        println!("{:<5} {rss:>12} {connections:>17}", node.name);
        assert!(rss < MAX_PEAK_RSS_KIB, "{} peaked at {rss} KiB", node.name);
        // One connection per pair of nodes, and the pusher's.
        assert!(
            (1..=NODES as u64).contains(&connections),
            "{} had {connections} connections open at once",
            node.name
        );
    }
}
