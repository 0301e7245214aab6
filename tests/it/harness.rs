//! Proves the test harness in `tests/it/common`: private daemons side by side, a
//! registry-free image that runs, an image moved between daemons with the same ID, and
//! the agent and timeout helpers (against a stand-in agent script).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::agent::{parse_listening, toml_string};
use crate::common::image::base_tag;
use crate::common::{
    self, build_test_image, build_test_image_with, run_with_timeout, Agent, AgentConfig, Dockerd,
    ImageOptions, HELLO_PATH,
};

/// Starts two daemons at once (as parallel tests do).
fn two_daemons(prefix: &str) -> (Dockerd, Dockerd) {
    let mut both = Dockerd::start_many(prefix, 2);
    let b = both.pop().expect("second daemon");
    (both.pop().expect("first daemon"), b)
}

fn cat_hello(d: &Dockerd, image: &str) -> String {
    d.docker_ok(["run", "--rm", "--network", "none", image, "cat", HELLO_PATH])
}

#[test]
fn two_daemons_build_run_and_move_an_image() {
    let (a, b) = two_daemons("harness-");
    assert_ne!(a.host(), b.host());
    let img = build_test_image(&a, "p2pimg-harness:1");
    assert_eq!(a.layers(&img.tag).len(), 3, "base + two COPY layers");
    assert_eq!(cat_hello(&a, &img.tag), img.hello.trim());
    assert_eq!(b.image_id(&img.tag), None, "daemons must not share images");

    a.copy_image_to(&b, &img.tag);
    assert_eq!(b.image_id(&img.tag), Some(img.id.clone()));
    assert_eq!(cat_hello(&b, &img.tag), img.hello.trim());
}

#[test]
fn same_seed_gives_same_layers_on_two_daemons() {
    let (a, b) = two_daemons("harness-seed-");
    let opts = ImageOptions::default().seeded(42);
    let (x, y) = thread::scope(|s| {
        let y = s.spawn(|| build_test_image_with(&b, "seeded:1", &opts));
        (
            build_test_image_with(&a, "seeded:1", &opts),
            y.join().expect("build on b"),
        )
    });
    assert_eq!(x.hello, y.hello);
    // The imported base is a deterministic tar: the same diffID on both daemons.
    // (`COPY` layers carry the build's file times, so they may differ.)
    assert_eq!(a.layers(&x.tag)[0], b.layers(&y.tag)[0]);
    // The daemon stamps creation times into image configs: same layers, new image IDs.
    assert_ne!(x.id, y.id);

    // A derived image on top of an existing one shares all of its layers.
    let v2 = build_test_image_with(&a, "seeded:2", &ImageOptions::default().built_on("seeded:1"));
    let (l1, l2) = (a.layers("seeded:1"), a.layers("seeded:2"));
    assert_eq!(&l2[..l1.len()], &l1[..]);
    assert_eq!(l2.len(), l1.len() + 2);
    assert_eq!(cat_hello(&a, &v2.tag), v2.hello.trim());
}

#[test]
fn unseeded_images_share_no_layer() {
    let d = Dockerd::start("harness-fresh");
    let small = ImageOptions {
        base_random_bytes: 64 << 10,
        base_text_bytes: 16 << 10,
        layer_random_bytes: 64 << 10,
        ..ImageOptions::default()
    };
    let x = build_test_image_with(&d, "fresh:1", &small);
    let y = build_test_image_with(&d, "fresh:2", &small);
    let (lx, ly) = (d.layers(&x.tag), d.layers(&y.tag));
    assert!(lx.iter().all(|l| !ly.contains(l)), "{lx:?} vs {ly:?}");
}

#[test]
fn dropping_a_daemon_stops_it_and_removes_its_directory() {
    let d = Dockerd::start("harness-drop");
    let (dir, pid) = (d.dir().to_path_buf(), d.pid());
    drop(d);
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!common::process::is_alive(pid), "dockerd {pid} still runs");
    assert!(common::process::pids_referring_to(&dir).is_empty());
}

/// Writes an executable stand-in for the p2pimg binary.
fn fake_bin(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("fake-p2pimg");
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write fake binary");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn agent_is_ready_at_its_listening_line_and_killed_on_drop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = fake_bin(
        tmp.path(),
        r#"[ "$1 $2" = "agent --config" ] || exit 2
echo "loading $3" >&2
echo "listening on 127.0.0.1:4242"
exec sleep 600"#,
    );
    let config = tmp.path().join("agent.toml");
    let mut agent = Agent::start(&bin, &config);
    assert_eq!(agent.addr().to_string(), "127.0.0.1:4242");
    let pid = agent.pid();
    assert!(agent.try_exit_status().is_none());
    agent.kill();
    assert!(!common::process::is_alive(pid));
    let log = agent.log();
    assert!(
        log.contains("stderr: loading") && log.contains("listening on"),
        "{log}"
    );
    assert_eq!(agent.log_path(), tmp.path().join("agent.log"));
}

#[test]
fn agent_that_exits_early_panics_with_its_stderr() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = fake_bin(tmp.path(), "echo 'bad config: no ca' >&2; exit 3");
    let config = tmp.path().join("agent.toml");
    let err = catch_unwind(AssertUnwindSafe(|| Agent::start(&bin, &config))).expect_err("panics");
    let msg = err.downcast_ref::<String>().expect("string panic");
    assert!(
        msg.contains("bad config: no ca") && msg.contains("exit status: 3"),
        "{msg}"
    );
}

#[test]
fn run_with_timeout_kills_a_hung_command() {
    let started = Instant::now();
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let err = catch_unwind(AssertUnwindSafe(|| run_with_timeout(&mut cmd, 1))).expect_err("panics");
    let msg = err.downcast_ref::<String>().expect("string panic");
    assert!(msg.contains("timed out after 1 s"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let mut echo = Command::new("echo");
    echo.arg("hi");
    let out = run_with_timeout(&mut echo, 5);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hi\n");
}

#[test]
fn agent_config_is_written_as_toml() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("agent.toml");
    AgentConfig {
        name: "n1".into(),
        listen: "127.0.0.1:0".into(),
        state_dir: "state".into(),
        docker_host: "unix:///tmp/x/docker.sock".into(),
        ca: "../ca/ca.crt".into(),
        cert: "../ca/n1.crt".into(),
        key: "../ca/n1.key".into(),
    }
    .write(&path);
    let text = fs::read_to_string(&path).expect("read");
    assert!(
        text.starts_with("name = \"n1\"\nlisten = \"127.0.0.1:0\"\n"),
        "{text}"
    );
    assert!(
        text.contains("docker_host = \"unix:///tmp/x/docker.sock\"\n"),
        "{text}"
    );
    assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
}

#[test]
fn small_parsers() {
    assert_eq!(base_tag("app:1"), "app-base:1");
    assert_eq!(base_tag("app"), "app-base");
    assert_eq!(base_tag("host:5000/app:2"), "host:5000/app-base:2");
    assert_eq!(base_tag("host:5000/app"), "host:5000/app-base");
    let addr = parse_listening("listening on 127.0.0.2:7701 (n1)").expect("parsed");
    assert_eq!(addr.to_string(), "127.0.0.2:7701");
    assert_eq!(parse_listening("listening soon"), None);
    assert_eq!(
        p2pimg::content::disk::unescape_octal(r"/tmp/a\040b\134c"),
        r"/tmp/a b\c"
    );
}
