//! Tests of `config`.

use std::time::Duration;

use super::*;
use crate::net::identity;

fn inventory(text: &str) -> Result<Inventory, ConfigError> {
    Inventory::parse(text, Path::new("nodes.toml"))
}

fn err(text: &str) -> String {
    inventory(text).unwrap_err().to_string()
}

#[test]
fn example_inventory_parses() {
    let inv = inventory(include_str!("../../nodes.example.toml")).unwrap();
    assert!(inv.nodes.len() >= 3);
    assert!(inv.nodes.iter().any(|n| !n.labels.is_empty()));
}

#[test]
fn good_inventory_parses_in_order() {
    let text = "# fleet\n[[node]]\nname = \"n1\"\naddr = \"10.0.0.1:7701\"\n\
                labels = { role = \"worker\", zone = \"a\" }\n\n\
                [[node]]\nname = \"n2\"\naddr = \"localhost:7702\"\n";
    let inv = inventory(text).unwrap();
    assert_eq!(inv.nodes[0].name, "n1");
    assert_eq!(inv.nodes[0].addr, "10.0.0.1:7701".parse().unwrap());
    assert_eq!(inv.nodes[0].labels["zone"], "a");
    assert_eq!(inv.nodes[1].addr.port(), 7702);
    assert!(inv.nodes[1].labels.is_empty());
}

#[test]
fn syntax_error_names_line() {
    let text = "[[node]]\nname = \"n1\"\naddr = \"10.0.0.1:7701\n";
    assert!(err(text).starts_with("nodes.toml line 3: "), "{}", err(text));
}

#[test]
fn unknown_key_names_line_and_expected_keys() {
    let text = "[[node]]\nname = \"n1\"\naddr = \"10.0.0.1:1\"\n\n\n\nadr = \"x\"\n";
    let msg = err(text);
    assert!(
        msg.starts_with("nodes.toml line 7: unknown field `adr`, expected one of"),
        "{msg}"
    );
    assert!(msg.contains("`labels`"), "{msg}");
}

#[test]
fn duplicate_name_names_both_lines() {
    let text = "[[node]]\nname = \"n1\"\naddr = \"10.0.0.1:1\"\n\
                [[node]]\nname = \"n1\"\naddr = \"10.0.0.2:1\"\n";
    assert_eq!(
        err(text),
        "nodes.toml line 5: node name `n1` is already used on line 2; each node needs its own name"
    );
}

#[test]
fn duplicate_addr_names_both_nodes() {
    let text = "[[node]]\nname = \"n1\"\naddr = \"10.0.0.1:1\"\n\
                [[node]]\nname = \"n2\"\naddr = \"10.0.0.1:1\"\n";
    let msg = err(text);
    assert!(
        msg.starts_with(
            "nodes.toml line 6: node `n2` has address 10.0.0.1:1, already used by node `n1` on line 3"
        ),
        "{msg}"
    );
}

#[test]
fn bad_names_addresses_and_empty_files_are_refused() {
    let bad_name = "[[node]]\nname = \"-n1\"\naddr = \"10.0.0.1:1\"\n";
    assert!(
        err(bad_name).starts_with("nodes.toml line 2: invalid name `-n1`"),
        "{}",
        err(bad_name)
    );
    let no_port = "[[node]]\nname = \"n1\"\naddr = \"10.0.0.1\"\n";
    assert!(
        err(no_port).starts_with("nodes.toml line 3: address `10.0.0.1`"),
        "{}",
        err(no_port)
    );
    assert!(err("# nothing\n").contains("lists no nodes"));
    // Issue #21: port 70000 read as "is the port missing?", port 0 passed.
    for port in ["70000", "0", "99999999999999999999"] {
        let text = format!("[[node]]\nname = \"n1\"\naddr = \"10.0.0.1:{port}\"\n");
        let msg = err(&text);
        assert!(
            msg.starts_with("nodes.toml line 3:")
                && msg.contains(&format!("port {port} is out of range (1-65535)")),
            "{msg}"
        );
    }
    let v6 = "[[node]]\nname = \"n1\"\naddr = \"[::1]:0\"\n";
    assert!(err(v6).contains("port 0 is out of range"), "{}", err(v6));
    assert!(err("[[nodes]]\nname = \"n1\"\n").contains("unknown field `nodes`"));
}

#[test]
fn agent_defaults_and_relative_paths() {
    let text = "name = \"n1\"\nca = \"ca.crt\"\ncert = \"certs/n1.crt\"\nkey = \"/etc/p2pimg/n1.key\"\n";
    let opts = AgentOptions::parse(text, Path::new("/etc/p2pimg/agent.toml")).unwrap();
    assert_eq!(opts.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(opts.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert_eq!(
        opts.engine,
        crate::engine::EngineSpec::docker("unix:///var/run/docker.sock")
    );
    assert_eq!(opts.ca, Path::new("/etc/p2pimg/ca.crt"));
    assert_eq!(opts.cert, Path::new("/etc/p2pimg/certs/n1.crt"));
    assert_eq!(opts.key, Path::new("/etc/p2pimg/n1.key"));
    assert_eq!(opts.engine_wait, Duration::from_secs(60));
    let opts =
        AgentOptions::parse(&format!("{text}engine_wait_secs = 5\n"), Path::new("agent.toml")).unwrap();
    assert_eq!(opts.engine_wait, Duration::from_secs(5));
    assert_eq!(opts.retain, DEFAULT_RETAIN);
    assert_eq!(opts.store_budget, None);
}

#[test]
fn agent_engine_kinds_sockets_and_namespaces() {
    use crate::engine::{EngineSpec, Kind};
    let base = "name = \"n1\"\nca = \"ca.crt\"\ncert = \"n1.crt\"\nkey = \"n1.key\"\n";
    let parse = |extra: &str| AgentOptions::parse(&format!("{base}{extra}"), Path::new("agent.toml"));
    let engine = |extra: &str| parse(extra).unwrap().engine;
    let err = |extra: &str| parse(extra).unwrap_err().to_string();
    assert_eq!(
        engine("docker_host = \"unix:///d.sock\"\n"),
        EngineSpec::docker("unix:///d.sock")
    );
    assert_eq!(
        engine("engine = \"podman\"\n"),
        EngineSpec::of(Kind::Podman, "unix:///run/podman/podman.sock")
    );
    let containerd = engine("engine = \"containerd\"\n");
    assert_eq!(
        containerd,
        EngineSpec::of(Kind::Containerd, "unix:///run/containerd/containerd.sock")
    );
    let custom =
        engine("engine = \"containerd\"\nengine_host = \"/c.sock\"\ncontainerd_namespace = \"ns\"\n");
    assert_eq!(
        (custom.host.as_str(), custom.namespace.as_deref()),
        ("/c.sock", Some("ns"))
    );
    let store = engine("containerd_host = \"unix:///c.sock\"\ncontainerd_namespace = \"moby2\"\n");
    assert_eq!(store.containerd_host.as_deref(), Some("unix:///c.sock"));

    let bad_kind = err("engine = \"crio\"\n");
    assert!(
        bad_kind.contains("line 5") && bad_kind.contains("\"docker\", \"containerd\", \"podman\""),
        "{bad_kind}"
    );
    let docker_host = err("engine = \"containerd\"\ndocker_host = \"/d.sock\"\n");
    assert!(
        docker_host.contains("docker_host is for engine = \"docker\""),
        "{docker_host}"
    );
    let both = err("docker_host = \"/d.sock\"\nengine_host = \"/e.sock\"\n");
    assert!(
        both.contains("docker_host and engine_host are both set"),
        "{both}"
    );
    let podman_ns = err("engine = \"podman\"\ncontainerd_namespace = \"k8s.io\"\n");
    assert!(
        podman_ns.contains("line 6: containerd_namespace does not apply to podman"),
        "{podman_ns}"
    );
    let ctd_host = err("engine = \"containerd\"\ncontainerd_host = \"/c.sock\"\n");
    assert!(
        ctd_host.contains("containerd_host is for Docker's containerd image store"),
        "{ctd_host}"
    );
}

#[test]
fn agent_retention_and_budget() {
    let base = "name = \"n1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
    let parse = |extra: &str| AgentOptions::parse(&format!("{base}{extra}"), Path::new("agent.toml"));
    let opts = parse("retain = \"90s\"\nstore_budget = \"20GiB\"\n").unwrap();
    assert_eq!(opts.retain, Duration::from_secs(90));
    assert_eq!(opts.store_budget, Some(20 << 30));
    assert_eq!(parse("store_budget = 4096\n").unwrap().store_budget, Some(4096));
    assert_eq!(
        parse("retain = \"7d\"\n").unwrap().retain,
        Duration::from_secs(7 * 86_400)
    );
    let msg = parse("retain = \"1 week\"\n").unwrap_err().to_string();
    assert!(
        msg.starts_with("agent.toml line 5: retain = \"1 week\" is not a duration"),
        "{msg}"
    );
    let msg = parse("\nstore_budget = \"20 gigs\"\n").unwrap_err().to_string();
    assert!(
        msg.starts_with("agent.toml line 6: store_budget = \"20 gigs\" is not a size"),
        "{msg}"
    );
}

/// Issue #21: `max_upload_mbit = 0` silently meant 1 Mbit/s, and a huge
/// `engine_wait_secs` panicked a worker when the engine went away.
#[test]
fn agent_numbers_out_of_range() {
    let base = "name = \"n1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
    let parse = |extra: &str| AgentOptions::parse(&format!("{base}{extra}"), Path::new("agent.toml"));
    let msg = parse("max_upload_mbit = 0\n").unwrap_err().to_string();
    assert_eq!(
        msg,
        "agent.toml line 5: max_upload_mbit = 0 is out of range: at least 1 Mbit/s (leave it out for no limit)"
    );
    assert_eq!(parse("max_upload_mbit = 1\n").unwrap().max_upload_mbit, Some(1));
    let msg = parse("engine_wait_secs = 9223372036854775807\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "agent.toml line 5: engine_wait_secs = 9223372036854775807 is out of range: 0 to 86400 (a day)"
    );
    let day = parse("engine_wait_secs = 86400\n").unwrap().engine_wait;
    assert_eq!(day, Duration::from_secs(MAX_ENGINE_WAIT_SECS));
    assert_eq!(
        parse("engine_wait_secs = 0\n").unwrap().engine_wait,
        Duration::ZERO
    );
}

#[test]
fn durations_and_sizes_parse() {
    assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
    assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
    assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
    for bad in ["", "h", "10", "1.5h", "-1h", "10y"] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
    assert_eq!(parse_size("500MB"), Some(500_000_000));
    assert_eq!(parse_size("1kib"), Some(1024));
    assert_eq!(parse_size("123"), Some(123));
    for bad in ["", "GiB", "1.5GiB", "99999999999999TiB", "10 parsecs"] {
        assert_eq!(parse_size(bad), None, "{bad:?}");
    }
}

#[test]
fn agent_errors_name_line() {
    let origin = Path::new("agent.toml");
    let typo = "name = \"n1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nlisen = \"0.0.0.0:1\"\n";
    let msg = AgentOptions::parse(typo, origin).unwrap_err().to_string();
    assert!(
        msg.starts_with("agent.toml line 5: unknown field `lisen`"),
        "{msg}"
    );
    let missing = "name = \"n1\"\nca = \"a\"\ncert = \"b\"\n";
    let msg = AgentOptions::parse(missing, origin).unwrap_err().to_string();
    assert!(msg.contains("missing field `key`"), "{msg}");
}

#[test]
fn agent_identity_must_match_name() {
    let dir = tempfile::tempdir().unwrap();
    identity::init_cluster(dir.path()).unwrap();
    identity::issue(dir.path(), "n1", identity::Role::Node, 1).unwrap();
    let origin = dir.path().join("agent.toml");
    let text = "name = \"n2\"\nca = \"ca.crt\"\ncert = \"n1.crt\"\nkey = \"n1.key\"\n";
    let opts = AgentOptions::parse(text, &origin).unwrap();
    let msg = opts.load_identity().unwrap_err().to_string();
    assert!(msg.contains("name is `n2` but certificate"), "{msg}");
    let opts = AgentOptions {
        name: "n1".into(),
        ..opts
    };
    assert_eq!(opts.load_identity().unwrap().name, "n1");
}

#[test]
fn select_by_name_and_labels() {
    let inv = inventory(include_str!("../../nodes.example.toml")).unwrap();
    let names = |nodes: Vec<NodeEntry>| nodes.into_iter().map(|n| n.name).collect::<Vec<_>>();
    assert_eq!(inv.select(&[], None).unwrap().len(), inv.nodes.len());
    assert_eq!(
        names(inv.select(&[], Some("role=worker,zone=a")).unwrap()),
        ["worker-a1", "worker-a2"]
    );
    assert_eq!(
        names(inv.select(&["worker-b1".into()], Some("role=worker")).unwrap()),
        ["worker-b1"]
    );
    assert!(matches!(
        inv.select(&[], Some("zone=z")),
        Err(ConfigError::NoneSelected { .. })
    ));
    assert!(matches!(
        inv.select(&[], Some("role")),
        Err(ConfigError::BadSelector { .. })
    ));
    assert!(matches!(
        inv.select(&["nope".into()], None),
        Err(ConfigError::Pattern(PatternError::Unmatched { .. }))
    ));
}

#[test]
fn node_patterns_and_selector_intersect() {
    let inv = inventory(include_str!("../../nodes.example.toml")).unwrap();
    let names = |nodes: Vec<NodeEntry>| nodes.into_iter().map(|n| n.name).collect::<Vec<_>>();
    let select = |nodes: &[&str], selector: Option<&str>| {
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        inv.select(&nodes, selector)
    };
    assert_eq!(
        names(select(&["worker-a[1-2],gateway"], None).unwrap()),
        ["worker-a1", "worker-a2", "gateway"]
    );
    let msg = select(&["worker-[a-b]1"], None).unwrap_err().to_string();
    assert!(msg.contains("`a-b` in `[a-b]` is not a number"), "{msg}");
    assert_eq!(
        names(select(&["worker-a[1-2]", "worker-b1"], Some("zone=a")).unwrap()),
        ["worker-a1", "worker-a2"]
    );
    // In inventory order, each node once, however the patterns overlap.
    assert_eq!(
        names(select(&["gateway", "worker-a[1-2]", "worker-a1"], None).unwrap()),
        ["worker-a1", "worker-a2", "gateway"]
    );
    let msg = select(&["gateway"], Some("role=worker")).unwrap_err().to_string();
    assert_eq!(
        msg,
        "no node matches both --node gateway (gateway) and --select role=worker \
         (worker-a[1-2],worker-b1); they are combined as an intersection"
    );
    let msg = select(&["worker-a[1-2]"], Some("zone=z"))
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "--select zone=z matches no node of the inventory");
    // A malformed pattern is refused before the selector is looked at.
    let err = select(&["web[3-1]"], Some("role")).unwrap_err();
    assert!(
        matches!(err, ConfigError::Pattern(PatternError::Malformed { .. })),
        "{err}"
    );
}

#[test]
fn engine_silence_limits_default_and_are_bounded() {
    let text = "name = \"n1\"\nca = \"ca.crt\"\ncert = \"n1.crt\"\nkey = \"n1.key\"\n";
    let opts = AgentOptions::parse(text, Path::new("agent.toml")).unwrap();
    assert_eq!(opts.engine_quiet, Duration::from_secs(30));
    assert_eq!(opts.engine_stall, Duration::from_secs(300));
    let set = format!("{text}engine_quiet_secs = 2\nengine_stall_secs = 5\n");
    let opts = AgentOptions::parse(&set, Path::new("agent.toml")).unwrap();
    assert_eq!(
        (opts.engine_quiet, opts.engine_stall),
        (Duration::from_secs(2), Duration::from_secs(5))
    );
    for bad in ["engine_quiet_secs = 0", "engine_stall_secs = 9223372036854775807"] {
        let err = AgentOptions::parse(&format!("{text}{bad}\n"), Path::new("agent.toml")).unwrap_err();
        assert!(err.to_string().contains("from 1 to 86400"), "{bad}: {err}");
    }
}

#[test]
fn lines_counts_as_line_of() {
    let text = "a\nbb\n\nccc";
    let lines = Lines::of(text);
    for offset in 0..=text.len() + 2 {
        assert_eq!(lines.line(offset), line_of(text, offset), "offset {offset}");
    }
}
