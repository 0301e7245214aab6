//! User mistakes, through the built binary: each gives one clear line on
//! stderr and a non-zero exit, never a panic or a backtrace.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, run_ok, AgentConfig, Cluster};
use crate::common::{bin, p2pimg};

/// Asserts a failure explained in one line that contains every `needles`.
fn assert_one_line_error(args: &[&str], needles: &[&str]) {
    let (code, stdout, stderr) = p2pimg(args);
    assert_ne!(code, 0, "{args:?} succeeded:\n{stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?} should fail in one line, printed:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} missing from: {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn inventory_mistakes_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("syntax.toml", "[[node]]\nname = \"n1\"\naddr = 10.0.0.1:7701\n", vec!["line 3"]),
        ("unknown.toml", "[[node]]\nname = \"n1\"\nadr = \"10.0.0.1:7701\"\n", vec!["line 3", "adr"]),
        (
            "dupname.toml",
            "[[node]]\nname = \"n1\"\naddr = \"10.0.0.1:7701\"\n[[node]]\nname = \"n1\"\naddr = \"10.0.0.2:7701\"\n",
            vec!["n1", "line 2"],
        ),
        (
            "dupaddr.toml",
            "[[node]]\nname = \"n1\"\naddr = \"10.0.0.1:7701\"\n[[node]]\nname = \"n2\"\naddr = \"10.0.0.1:7701\"\n",
            vec!["10.0.0.1:7701"],
        ),
    ];
    for (file, text, needles) in cases {
        let nodes = write(dir.path(), file, text);
        let mut expected = vec![file];
        expected.extend(needles);
        assert_one_line_error(&["push", "app:1", "--nodes", path_str(&nodes)], &expected);
    }
    let missing = dir.path().join("absent.toml");
    assert_one_line_error(
        &["push", "app:1", "--nodes", path_str(&missing)],
        &["absent.toml"],
    );
}

/// Issue #21: references Docker refuses were accepted and applied wrongly
/// (`--tag app:1:2` repointed `app:2`) or failed on every node after the
/// transfer. Each is refused before any file is read.
#[test]
fn references_docker_refuses_are_refused_up_front() {
    let digest = format!("app@sha256:{}", "f".repeat(64));
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &["push", "app:1", "--tag", "app:1:2"],
            &["--tag app:1:2: a tag may not contain ':'"],
        ),
        (
            &["push", "app:1", "--tag", "App:1"],
            &["--tag App:1: repository names must be lowercase"],
        ),
        (
            &["push", "app:1", "--tag", &digest],
            &["cannot be applied as a tag"],
        ),
        (&["push", ""], &["an image reference may not be empty"]),
        (
            &["push", "app:bad/tag"],
            &["app:bad/tag: not a valid image reference"],
        ),
        (
            &["bundle", "create", "App:1", "-o", "/nonexistent/x.p2pimg"],
            &["App:1: repository names must be lowercase"],
        ),
        (&["status", "app:1:2"], &["app:1:2: a tag may not contain ':'"]),
    ];
    for (args, needles) in cases {
        assert_one_line_error(args, needles);
    }
}

/// Issue #21: `--timeout 0` was accepted, `-1` got clap's "unexpected
/// argument", and a huge one panicked adding to the clock.
#[test]
fn timeout_takes_whole_seconds_up_to_a_week() {
    for value in ["0", "-1", "9223372036854775807", "604801", "1.5"] {
        assert_one_line_error(
            &["push", "app:1", "--timeout", value],
            &[value, "--timeout takes whole seconds, 1 to 604800 (7 days)"],
        );
    }
}

/// Issue #21: `cert issue --days 3000000` panicked; a CA key readable by
/// others was used without a word; a missing one was blamed on ca.crt.
#[test]
fn cert_issue_bounds_days_and_guards_the_ca_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    run_ok(Command::new(bin()).args(["init", "--dir"]).arg(&ca), 30);
    let issue = |extra: &[&str]| {
        let mut args = vec!["cert", "issue", "n1", "--dir", path_str(&ca)];
        args.extend(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let check = |args: Vec<String>, needles: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_one_line_error(&args, needles);
    };
    check(issue(&["--days", "3000000"]), &["1 to 36500 days", "3000000"]);
    let ca_key = ca.join("ca.key");
    fs::set_permissions(&ca_key, fs::Permissions::from_mode(0o644)).unwrap();
    check(issue(&[]), &["ca.key", "mode 644", "chmod 600"]);
    assert!(!ca.join("n1.key").exists(), "a key was issued with a 0644 CA key");
    fs::remove_file(&ca_key).unwrap();
    let (code, _, stderr) = p2pimg(&issue(&[]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_ne!(code, 0);
    assert!(
        stderr.contains("ca.key") && !stderr.contains("ca.crt"),
        "{stderr}"
    );
}

/// Issue #21: port 70000 said "is the port missing?", port 0 was accepted.
#[test]
fn inventory_ports_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    for port in ["70000", "0"] {
        let text = format!("[[node]]\nname = \"n1\"\naddr = \"127.0.0.1:{port}\"\n");
        let nodes = write(dir.path(), "nodes.toml", &text);
        assert_one_line_error(
            &["push", "app:1", "--nodes", path_str(&nodes)],
            &["line 3", &format!("port {port} is out of range (1-65535)")],
        );
    }
}

/// Issue #21: `max_upload_mbit = 0` silently meant 1 Mbit/s; a huge
/// `engine_wait_secs` panicked a worker when the engine went away mid-load.
#[test]
fn agent_numbers_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, config) = node_setup(dir.path());
    let cases = [
        (
            "max_upload_mbit = 0",
            "max_upload_mbit = 0 is out of range: at least 1 Mbit/s",
        ),
        (
            "engine_wait_secs = 9223372036854775807",
            "engine_wait_secs = 9223372036854775807 is out of range: 0 to 86400",
        ),
    ];
    for (line, needle) in cases {
        config.write(&path);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("{text}{line}\n")).unwrap();
        assert_one_line_error(
            &["agent", "--config", path_str(&path)],
            &["agent.toml line 8", needle],
        );
    }
}

/// A legacy-layout `docker save` archive of two images (one layer each),
/// whose manifest.json gives them `tags`.
fn save_archive(path: &Path, tags: [&str; 2]) {
    use p2pimg::content::manifest::sha256_digest;
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o644);
    header.set_cksum();
    layer.append_data(&mut header, "hello", &b"hello"[..]).unwrap();
    let layer = layer.into_inner().unwrap();
    let diff_id = sha256_digest(&layer);
    let mut archive = tar::Builder::new(fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, name, data).unwrap();
    };
    add("layer/layer.tar", &layer);
    let mut entries = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [diff_id]}, "n": i});
        let config = config.to_string().into_bytes();
        let name = format!("{}.json", &sha256_digest(&config)[7..]);
        add(&name, &config);
        entries.push(serde_json::json!({"Config": name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}));
    }
    add(
        "manifest.json",
        serde_json::to_string(&entries).unwrap().as_bytes(),
    );
    archive.finish().unwrap();
}

/// Issue #21: two images claiming one tag made a bundle, and each node left
/// the tag on whichever it tagged last; a tag Docker refuses made one too.
/// Both are refused before anything is packed or written.
#[test]
fn bundle_from_tar_refuses_shared_and_bad_tags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.p2pimg");
    let tar = dir.path().join("save.tar");
    save_archive(&tar, ["app:1", "app:2"]);
    let args = [
        "bundle",
        "create",
        "--from-tar",
        path_str(&tar),
        "-o",
        path_str(&out),
    ];
    let (code, _, stderr) = p2pimg(&args);
    assert_eq!(code, 0, "the archive itself is sound: {stderr}");
    fs::remove_file(&out).unwrap();
    let cases = [
        (
            ["app:1", "docker.io/library/app:1"],
            "two images claim the reference docker.io/library/app:1",
        ),
        (["app:1:2", "app:2"], "app:1:2: a tag may not contain ':'"),
    ];
    for (tags, needle) in cases {
        save_archive(&tar, tags);
        assert_one_line_error(&args, &["save.tar", needle]);
        assert!(!out.exists());
    }
}

/// Issue #21: a bundle whose manifest names a tag Docker refuses (crafted
/// here through the library, as a hostile or damaged bundle would be) is
/// refused when opened: by `ls`, `verify` and `push`, before any announce.
#[test]
fn bundle_with_a_bad_reference_is_refused() {
    use p2pimg::content::manifest::{sha256_digest, ImageEntry, LayerEntry, Manifest};
    use p2pimg::content::pack::{pack_layer, PackOptions};
    let dir = tempfile::tempdir().unwrap();
    let store = p2pimg::content::store::ChunkStore::open(&dir.path().join("store")).unwrap();
    let opts = PackOptions {
        chunk_size: 64 << 10,
        zstd_level: 1,
    };
    let data = vec![7u8; 10_000];
    let layer = pack_layer(&data[..], &store, &opts).unwrap();
    let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}).to_string();
    let manifest = Manifest {
        images: vec![ImageEntry {
            id: sha256_digest(config.as_bytes()),
            refs: vec!["App:1".into()],
            config: config.into_bytes(),
            layers: vec![0],
        }],
        layers: vec![LayerEntry {
            diff_id: layer.diff_id,
            size: layer.size,
            first_chunk: 0,
            chunk_count: layer.chunks.len() as u32,
        }],
        chunks: layer.chunks,
    };
    let bundle = dir.path().join("bad.p2pimg");
    p2pimg::content::bundle::write_bundle(
        &manifest,
        &store,
        std::fs::File::create(&bundle).unwrap(),
        &bundle,
    )
    .unwrap();
    let needle = "App:1: repository names must be lowercase";
    assert_one_line_error(&["bundle", "ls", path_str(&bundle)], &[needle]);
    assert_one_line_error(&["bundle", "verify", path_str(&bundle)], &[needle]);
    let ca = dir.path().join("ca");
    run_ok(Command::new(bin()).args(["init", "--dir"]).arg(&ca), 30);
    let nodes = write(
        dir.path(),
        "nodes.toml",
        "[[node]]\nname = \"n1\"\naddr = \"127.0.0.1:9\"\n",
    );
    let push = [
        "push",
        "--bundle",
        path_str(&bundle),
        "--nodes",
        path_str(&nodes),
        "--cluster-dir",
        path_str(&ca),
        "--json",
    ];
    assert_one_line_error(&push, &[needle]);
}

#[test]
fn missing_identity_files_say_how_to_make_them() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(
        dir.path(),
        "nodes.toml",
        "[[node]]\nname = \"n1\"\naddr = \"127.0.0.1:9\"\n",
    );
    let nowhere = dir.path().join("no-cluster");
    let args = [
        "push",
        "app:1",
        "--nodes",
        path_str(&nodes),
        "--cluster-dir",
        path_str(&nowhere),
    ];
    assert_one_line_error(&args, &["ca.crt", "p2pimg init"]);
}

/// A cluster dir with a node identity n1, and an agent.toml for it.
fn node_setup(dir: &Path) -> (PathBuf, AgentConfig) {
    let ca = dir.join("ca");
    run_ok(Command::new(bin()).args(["init", "--dir"]).arg(&ca), 30);
    run_ok(
        Command::new(bin())
            .args(["cert", "issue", "n1", "--dir"])
            .arg(&ca),
        30,
    );
    let config = AgentConfig {
        name: "n1".into(),
        listen: "127.0.0.1:0".into(),
        state_dir: dir.join("state"),
        docker_host: "unix:///nonexistent/docker.sock".into(),
        ca: ca.join("ca.crt"),
        cert: ca.join("n1.crt"),
        key: ca.join("n1.key"),
    };
    (dir.join("agent.toml"), config)
}

#[test]
fn agent_refuses_bad_setups_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, good) = node_setup(dir.path());
    let agent = |config: &AgentConfig| {
        config.write(&path);
        vec!["agent".to_string(), "--config".into(), path_str(&path).into()]
    };
    let check = |config: &AgentConfig, needles: &[&str]| {
        let args = agent(config);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_one_line_error(&args, needles);
    };

    // A state directory that cannot be created.
    let blocker = write(dir.path(), "a-file", "x");
    let unwritable = AgentConfig {
        state_dir: blocker.join("state"),
        ..good.clone()
    };
    check(&unwritable, &["state directory", "a-file"]);

    // A certificate for another name.
    let other = AgentConfig {
        name: "n2".into(),
        ..good.clone()
    };
    check(&other, &["n2", "n1"]);

    // A missing key file.
    let nokey = AgentConfig {
        key: dir.path().join("absent.key"),
        ..good.clone()
    };
    check(&nokey, &["absent.key"]);

    // A key readable by others.
    fs::set_permissions(&good.key, fs::Permissions::from_mode(0o644)).unwrap();
    check(&good, &["n1.key", "chmod 600"]);
}

#[test]
fn push_explains_a_missing_image_and_a_node_without_engine() {
    let cluster = Cluster::start(bin(), 1);
    // The seed's engine lacks the image: one line, before anything is sent.
    let (code, _, stderr) = p2pimg(&[
        "push",
        "nosuch:1",
        "--nodes",
        path_str(&cluster.nodes_toml()),
        "--cluster-dir",
        path_str(&cluster.ca_dir()),
        "--docker-host",
        &cluster.seed.host(),
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("nosuch:1") && stderr.contains("not found"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // A node whose agent cannot reach its engine: that node fails, with why.
    common::build_test_image(&cluster.seed, "app:1");
    let dir = tempfile::tempdir().unwrap();
    let (path, mut config) = node_setup(dir.path());
    config.ca = cluster.ca_dir().join("ca.crt");
    run_ok(
        Command::new(bin())
            .args(["cert", "issue", "lonely", "--dir"])
            .arg(cluster.ca_dir()),
        30,
    );
    config.name = "lonely".into();
    config.cert = cluster.ca_dir().join("lonely.crt");
    config.key = cluster.ca_dir().join("lonely.key");
    config.write(&path);
    let agent = common::Agent::start(bin(), &path);
    let nodes = write(
        dir.path(),
        "nodes.toml",
        &format!("[[node]]\nname = \"lonely\"\naddr = \"{}\"\n", agent.addr()),
    );
    let (code, stdout, _) = p2pimg(&[
        "push",
        "app:1",
        "--nodes",
        path_str(&nodes),
        "--cluster-dir",
        path_str(&cluster.ca_dir()),
        "--docker-host",
        &cluster.seed.host(),
    ]);
    assert_ne!(code, 0, "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("lonely "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("failed") && line.contains("/nonexistent/docker.sock"),
        "{line}"
    );
    drop(agent);
}

#[test]
fn completions_man_page_and_json_logs() {
    let (code, bash, _) = p2pimg(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(bash.contains("_p2pimg") && bash.contains("bundle"), "{bash}");
    let (code, man, _) = p2pimg(&["man"]);
    assert_eq!(code, 0);
    assert!(man.contains(".TH p2pimg") && man.contains("push"), "{man}");

    // The agent logs JSON objects when asked: one per line, with a message.
    let dir = tempfile::tempdir().unwrap();
    let (path, config) = node_setup(dir.path());
    config.write(&path);
    let mut child = Command::new(bin())
        .args(["--log-format", "json", "agent", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("listening on "), "{first}");
    // SIGTERM: the agent logs its shutdown, then exits 0.
    common::process::signal(child.id(), common::process::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "a requested stop exits 0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
}

#[test]
fn a_state_dir_in_use_refuses_a_second_agent_and_a_push() {
    let dir = tempfile::tempdir().unwrap();
    let (path, config) = node_setup(dir.path());
    config.write(&path);
    let mut first = common::Agent::start(bin(), &path);
    let pid = first.pid().to_string();
    let state = path_str(&config.state_dir).to_string();
    // A second agent on the same agent.toml: refused, naming the directory and the holder.
    assert_one_line_error(
        &["agent", "--config", path_str(&path)],
        &[&state, &pid, "in use", "state_dir"],
    );
    // A push pointed at it is refused before it touches the agent's files.
    let in_flight = config.state_dir.join("tmp").join("being-written");
    fs::write(&in_flight, b"a chunk on its way").unwrap();
    let nodes = write(
        dir.path(),
        "nodes.toml",
        &format!("[[node]]\nname = \"n1\"\naddr = \"{}\"\n", first.addr()),
    );
    let cluster_dir = dir.path().join("ca");
    assert_one_line_error(
        &[
            "push",
            "app:1",
            "--state-dir",
            &state,
            "--nodes",
            path_str(&nodes),
            "--cluster-dir",
            path_str(&cluster_dir),
            "--docker-host",
            "unix:///nonexistent/docker.sock",
        ],
        &[&state, &pid, "in use"],
    );
    assert!(in_flight.exists(), "the agent's tmp/ is untouched");
    // Killed outright, the first leaves its lock file; it does not block the next.
    first.kill();
    let second = common::Agent::start(bin(), &path);
    assert_ne!(second.pid(), first.pid());
}
