//! The habits of the scripts p2pimg replaces (issue #22), through the built binary: node
//! ranges on the command line (`--node worker-[01-20]`, `'web[1-3],db1'`), alone and with
//! `--select`, and `cert issue --nodes` for a whole inventory, whose per-node directories
//! go through `scripts/install.sh` to an agent that takes a push. `push --force` is in
//! [`force`].

mod force;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::common::{bin, p2pimg};
use crate::common::{build_test_image, run_ok, Agent, Cluster};

/// Asserts `args` fail with exit code 2 (a usage error) and one line on stderr holding
/// every one of `needles`.
fn assert_usage_error(args: &[&str], needles: &[&str]) {
    let (code, stdout, stderr) = p2pimg(args);
    assert_eq!(code, 2, "{args:?}: exit code {code}\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?} should fail in one line:\n{stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} missing from: {stderr}"
        );
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A nodes.toml of `names`, agents on ports nobody listens on (127.0.0.1:9, :10, …).
fn inventory(dir: &Path, names: &[String]) -> PathBuf {
    let text: String = names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("[[node]]\nname = \"{name}\"\naddr = \"127.0.0.1:{}\"\n", 9 + i))
        .collect();
    let path = dir.join("nodes.toml");
    fs::write(&path, text).unwrap();
    path
}

/// Malformed patterns are refused before the inventory is even read; a range that
/// matches nothing names what exists; one that matches goes on (here to the missing
/// cluster directory).
#[test]
fn malformed_and_unmatched_ranges_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.toml");
    let cases = [
        ("web[3-1]", "the range `3-1` runs backwards (write `1-3`)"),
        ("web[", "`[` is never closed by a `]`"),
        (
            "web[a-b]",
            "`a-b` in `[a-b]` is not a number or a range of numbers",
        ),
        ("web1,,db1", "an empty name"),
        ("web*", "`*` cannot be in a node name"),
    ];
    for (pattern, reason) in cases {
        let needles = [&format!("--node `{pattern}`: {reason}") as &str];
        for command in ["push", "status"] {
            let args = [command, "app:1", "--node", pattern, "--nodes", path_str(&absent)];
            assert_usage_error(&args, &needles);
        }
    }

    let workers: Vec<String> = (1..=12).map(|i| format!("worker-{i:02}")).collect();
    let nodes = inventory(dir.path(), &workers);
    let nodes = path_str(&nodes);
    let unmatched = [
        (
            "worker-[1-3]",
            "--node `worker-[1-3]` matches no node of the inventory (it has worker-[01-03])",
        ),
        (
            "worker-[13-20]",
            "--node `worker-[13-20]` matches no node of the inventory (it has worker-[01-12])",
        ),
        (
            "worker-[01-03,15]",
            "--node `worker-[01-03,15]`: `worker-15` matches no node",
        ),
        ("worker-01,db1", "--node `db1` matches no node of the inventory"),
    ];
    for (pattern, needle) in unmatched {
        assert_usage_error(
            &["push", "nosuch:1", "--node", pattern, "--nodes", nodes],
            &[needle],
        );
    }
    assert_usage_error(
        &[
            "status",
            "app:1",
            "--node",
            "worker-[01-04]",
            "--select",
            "role=db",
            "--nodes",
            nodes,
        ],
        &["--select role=db matches no node of the inventory"],
    );
    // A range reaching past the inventory matches what is there, and the command goes on.
    let nowhere = dir.path().join("no-cluster");
    let (code, _, stderr) = p2pimg(&[
        "status",
        "app:1",
        "--node",
        "worker-[10-20]",
        "--nodes",
        nodes,
        "--cluster-dir",
        path_str(&nowhere),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("ca.crt") && stderr.contains("p2pimg init"),
        "{stderr}"
    );
}

/// The names in a push's report, in order.
fn targeted(push: &crate::common::Push) -> Vec<String> {
    let nodes = push.report()["nodes"].as_array().unwrap();
    nodes
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

/// Ranges against a real cluster: refused ones before the seed's engine is asked (the
/// image does not exist), then a range intersected with `--select` pushes to the
/// intersection only, as the nodes' engines show; `status` takes ranges too.
#[test]
fn ranges_and_select_push_to_the_intersection() {
    let cluster = Cluster::start(bin(), 3);
    let (nodes, ca) = (cluster.nodes_toml(), cluster.ca_dir());
    let base = ["--nodes", path_str(&nodes), "--cluster-dir", path_str(&ca)];
    let push_nosuch = |extra: &[&'static str]| [&["push", "nosuch:1"], &base[..], extra].concat();
    assert_usage_error(
        &push_nosuch(&["--node", "n[4-9]"]),
        &["--node `n[4-9]` matches no node of the inventory (it has n[1-3])"],
    );
    assert_usage_error(
        &push_nosuch(&["--node", "n[1-2,7]"]),
        &["--node `n[1-2,7]`: `n7` matches no node"],
    );
    // n2 is even: nothing is both.
    assert_usage_error(
        &push_nosuch(&["--node", "n2", "--select", "parity=odd"]),
        &["no node matches both --node n2 (n2) and --select parity=odd (n[1,3])"],
    );

    let image = build_test_image(&cluster.seed, "app:1");
    let push = cluster.push(&["app:1"], &["--node", "n[2-3]", "--select", "parity=odd"]);
    cluster.assert_push_ok(&push);
    assert_eq!(targeted(&push), ["n3"]);
    let held = |i: usize| cluster.nodes[i].engine.image_id("app:1");
    assert_eq!(
        [held(0), held(1), held(2)],
        [None, None, Some(image.id.clone())],
        "only n3 holds app:1"
    );

    // A list and a repeated --node: each node once, in inventory order.
    let push = cluster.push(&["app:1"], &["--node", "n2,n[1]", "--node", "n1"]);
    cluster.assert_push_ok(&push);
    assert_eq!(targeted(&push), ["n1", "n2"]);
    for i in 0..3 {
        assert_eq!(
            held(i).as_deref(),
            Some(image.id.as_str()),
            "{}",
            cluster.nodes[i].name
        );
    }

    let out = run_ok(
        Command::new(bin())
            .args(["status", "app:1", "--json", "--node", "n[3],n1"])
            .args(base),
        60,
    );
    let answers: serde_json::Value = serde_json::from_str(&out).unwrap();
    let answered: Vec<(&str, &str)> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap(),
                a["answer"]["Ok"]["ids"][0].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        answered,
        [("n1", image.id.as_str()), ("n3", image.id.as_str())],
        "{out}"
    );
}

/// A file's bytes and modification time.
fn snapshot(path: &Path) -> (Vec<u8>, SystemTime) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (bytes, fs::metadata(path).unwrap().modified().unwrap())
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `cert issue --nodes` keeps the certificates that exist (bytes and times untouched),
/// issues the rest, and writes a directory per node; one of those goes through
/// `scripts/install.sh` into an agent that takes a push alongside an agent of a kept
/// certificate.
#[test]
fn cert_issue_for_an_inventory_keeps_and_issues() {
    let mut cluster = Cluster::start(bin(), 2);
    let ca = cluster.ca_dir();
    let fleet: Vec<String> = ["n1", "n2", "n3", "n4"].map(String::from).to_vec();
    let fleet_toml = inventory(cluster.dir.path(), &fleet);
    // n1 and n2 have certificates (the cluster issued them); set their times in the past
    // so that a rewrite could not hide in the same clock tick.
    let past = SystemTime::now() - Duration::from_secs(86_400);
    let kept: Vec<PathBuf> = ["n1.crt", "n1.key", "n2.crt", "n2.key", "ca.crt", "ca.key"]
        .iter()
        .map(|f| ca.join(f))
        .collect();
    for path in &kept {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(past)
            .unwrap();
    }
    let before: Vec<_> = kept.iter().map(|p| snapshot(p)).collect();

    let issue = [
        "cert",
        "issue",
        "--nodes",
        path_str(&fleet_toml),
        "--dir",
        path_str(&ca),
    ];
    let (code, stdout, stderr) = p2pimg(&issue);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for (line, (verb, name)) in
        lines
            .iter()
            .zip([("kept", "n1"), ("kept", "n2"), ("issued", "n3"), ("issued", "n4")])
    {
        let kit = ca.join("nodes").join(name);
        assert!(
            line.starts_with(verb) && line.contains(&format!(" {name}: ")),
            "{line}"
        );
        assert!(line.ends_with(&format!("wrote {}/", kit.display())), "{line}");
    }
    assert!(lines[4].starts_with("2 issued, 2 kept"), "{stdout}");
    let after: Vec<_> = kept.iter().map(|p| snapshot(p)).collect();
    assert!(before == after, "a kept certificate, key or the CA was rewritten");

    for name in &fleet {
        let kit = ca.join("nodes").join(name);
        assert_eq!(mode(&kit), 0o700, "{}", kit.display());
        assert_eq!(mode(&kit.join(format!("{name}.key"))), 0o600);
        for (file, source) in [
            ("ca.crt".to_string(), "ca.crt".to_string()),
            (format!("{name}.crt"), format!("{name}.crt")),
            (format!("{name}.key"), format!("{name}.key")),
        ] {
            assert_eq!(
                fs::read(kit.join(&file)).unwrap(),
                fs::read(ca.join(&source)).unwrap(),
                "{name}/{file}"
            );
        }
    }

    // Again: everything is kept and nothing changes; NAME with --nodes is refused.
    let (code, stdout, _) = p2pimg(&issue);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("0 issued, 4 kept") && stdout.matches("unchanged").count() == 4,
        "{stdout}"
    );
    let (code, _, stderr) = p2pimg(&[&issue[..], &["n5"]].concat());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    assert!(!ca.join("n5.crt").exists());

    // n3's directory, installed by install.sh, runs n3's agent on n2's engine.
    cluster.stop_agent(1);
    let root = cluster.dir.path().join("n3-root");
    let kit = ca.join("nodes").join("n3");
    let mut install = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"));
    install
        .env("P2PIMG_ROOT", &root)
        .args([
            "--name",
            "n3",
            "--cert-dir",
            path_str(&kit),
            "--listen",
            "127.0.0.1:0",
            "--no-start",
        ])
        .args(["--binary", path_str(bin())]);
    run_ok(&mut install, 60);
    let config = root.join("etc/p2pimg/agent.toml");
    let text = fs::read_to_string(&config).unwrap();
    let engine = format!("engine_host = \"{}\"", cluster.nodes[1].engine.host());
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("engine_host") {
                engine.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    fs::write(&config, text.join("\n") + "\n").unwrap();
    let n3 = Agent::start(bin(), &config);
    let inventory = format!(
        "[[node]]\nname = \"n1\"\naddr = \"{}\"\n[[node]]\nname = \"n3\"\naddr = \"{}\"\n",
        cluster.nodes[0].agent.addr(),
        n3.addr()
    );
    fs::write(cluster.nodes_toml(), inventory).unwrap();
    let image = build_test_image(&cluster.seed, "app:1");
    let push = cluster.push(&["app:1"], &[]);
    assert_eq!(
        push.code,
        0,
        "{}\n{}\n--- n3 ---\n{}",
        push.stdout,
        push.stderr,
        n3.log()
    );
    assert_eq!(push.status("n3"), "loaded");
    assert_eq!(cluster.nodes[1].engine.image_id("app:1"), Some(image.id));
}

/// Each thing `cert issue --nodes` cannot keep or complete stops it with one line naming
/// the file, before it writes anything: no certificate issued, no per-node directory.
#[test]
fn cert_issue_for_an_inventory_refuses_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (dir.path().join("ca"), dir.path().join("other"));
    for cluster in [&ca, &other] {
        run_ok(Command::new(bin()).args(["init", "--dir"]).arg(cluster), 30);
    }
    let names: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
    let nodes = inventory(dir.path(), &names);
    let issue = [
        "cert",
        "issue",
        "--nodes",
        path_str(&nodes),
        "--dir",
        path_str(&ca),
    ];
    let one = |name: &str, cluster: &Path| {
        let args = ["cert", "issue", name, "--dir", path_str(cluster)];
        run_ok(Command::new(bin()).args(args), 30);
    };
    let refused = |needles: &[&str]| {
        let (code, stdout, stderr) = p2pimg(&issue);
        assert_eq!(code, 1, "{stdout}\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        for needle in needles.iter().chain(&["nothing was written"]) {
            assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
        }
        assert!(
            !ca.join("n1.crt").exists() && !ca.join("nodes").exists(),
            "{stdout}"
        );
    };

    // n3 has a certificate without its key.
    one("n3", &ca);
    fs::remove_file(ca.join("n3.key")).unwrap();
    refused(&["node n3", "n3.crt exists but", "n3.key does not"]);
    // n3's certificate and key are another cluster's.
    fs::remove_file(ca.join("n3.crt")).unwrap();
    one("n3", &other);
    for file in ["n3.crt", "n3.key"] {
        fs::rename(other.join(file), ca.join(file)).unwrap();
    }
    refused(&["cannot keep", "n3.crt", "not issued by the CA"]);
    // n3's key is readable by others.
    for file in ["n3.crt", "n3.key"] {
        fs::remove_file(ca.join(file)).unwrap();
    }
    one("n3", &ca);
    fs::set_permissions(ca.join("n3.key"), fs::Permissions::from_mode(0o644)).unwrap();
    refused(&["cannot keep", "chmod 600"]);
    fs::set_permissions(ca.join("n3.key"), fs::Permissions::from_mode(0o600)).unwrap();
    // A per-node directory holds something else under --out.
    let out = dir.path().join("out");
    fs::create_dir_all(out.join("n2")).unwrap();
    fs::write(out.join("n2").join("ca.crt"), "not this CA").unwrap();
    let with_out = [&issue[..], &["--out", path_str(&out)]].concat();
    let (code, _, stderr) = p2pimg(&with_out);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("out/n2/ca.crt exists and differs"), "{stderr}");
    assert!(!ca.join("n1.crt").exists() && !out.join("n1").exists());
    // Fixed, it does the whole job.
    fs::remove_file(out.join("n2").join("ca.crt")).unwrap();
    let (code, stdout, stderr) = p2pimg(&with_out);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2 issued, 1 kept"), "{stdout}");
    assert!(out.join("n1").join("n1.key").exists());
}
