//! Air-gapped seeding: a bundle made from one engine (or from a `docker save`
//! archive) is pushed from a seed with no Docker Engine to 3 nodes. The files
//! around it: an output that is a device, a directory or the input is refused,
//! a bundle path that is not a file is named as such (never waited on), and an
//! interrupted `bundle create` leaves nothing behind.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::bin;
use crate::common::process::{signal, wait_deadline, SIGTERM};
use crate::common::{build_test_image, chunk_files, run_ok, run_with_timeout, Cluster, Dockerd, HELLO_PATH};

/// SIGINT: Ctrl-C.
const SIGINT: i32 = 2;

/// The manifest ID a `bundle create`/`ls`/`verify` line prints.
fn manifest_id(out: &str) -> String {
    let at = out.find("manifest ").expect("a manifest ID") + "manifest ".len();
    out[at..at + 64].to_string()
}

#[test]
fn bundle_from_engine_and_from_tar_pushed_without_engine() {
    let cluster = Cluster::start(bin(), 3);
    let image = build_test_image(&cluster.seed, "app:1");
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("app.p2pimg");
    let bundle_str = bundle.to_str().unwrap();

    let created = run_ok(
        Command::new(bin())
            .args(["bundle", "create", "app:1", "-o", bundle_str, "--docker-host"])
            .arg(cluster.seed.host()),
        120,
    );
    assert!(created.contains("app:1"), "{created}");
    let verified = run_ok(Command::new(bin()).args(["bundle", "verify", bundle_str]), 60);
    assert_eq!(manifest_id(&verified), manifest_id(&created));
    let listed = run_ok(Command::new(bin()).args(["bundle", "ls", bundle_str]), 60);
    assert!(
        listed.contains("app:1") && listed.contains("3 layers"),
        "{listed}"
    );

    // The same image from a `docker save` archive packs to the same manifest.
    let tar = dir.path().join("app.tar");
    cluster
        .seed
        .docker_ok(["save", "-o", tar.to_str().unwrap(), "app:1"]);
    let from_tar = dir.path().join("from-tar.p2pimg");
    let out = run_ok(
        Command::new(bin())
            .args(["bundle", "create", "--from-tar"])
            .arg(&tar)
            .arg("-o")
            .arg(&from_tar),
        120,
    );
    assert_eq!(
        manifest_id(&out),
        manifest_id(&created),
        "same content, same chunks, same ID"
    );

    // Seeded from the file alone: the seed's engine address leads nowhere.
    let no_engine = [
        "--bundle",
        bundle_str,
        "--docker-host",
        "unix:///nonexistent/docker.sock",
    ];
    let push = cluster.push(&[], &no_engine);
    assert_eq!(
        push.code,
        0,
        "{}\n{}\n{}",
        push.stdout,
        push.stderr,
        cluster.logs()
    );
    for node in &cluster.nodes {
        assert_eq!(
            node.engine.image_id("app:1").as_deref(),
            Some(image.id.as_str()),
            "{}",
            node.name
        );
        let out = node
            .engine
            .docker_ok(["run", "--rm", "--network", "none", "app:1", "cat", HELLO_PATH]);
        assert_eq!(out, image.hello.trim_end());
    }
}

#[test]
fn damaged_bundle_is_refused_before_anything_is_sent() {
    let cluster = Cluster::start(bin(), 1);
    build_test_image(&cluster.seed, "app:1");
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("app.p2pimg");
    let bundle_str = bundle.to_str().unwrap();
    run_ok(
        Command::new(bin())
            .args(["bundle", "create", "app:1", "-o", bundle_str, "--docker-host"])
            .arg(cluster.seed.host()),
        120,
    );
    let mut bytes = fs::read(&bundle).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    fs::write(&bundle, bytes).unwrap();

    let out = run_with_timeout(Command::new(bin()).args(["bundle", "verify", bundle_str]), 60);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("damaged"), "{stderr}");
    let push = cluster.push(&[], &["--bundle", bundle_str]);
    assert_ne!(push.code, 0);
    assert!(push.stderr.contains("damaged"), "{}", push.stderr);
    assert_eq!(cluster.nodes[0].engine.image_id("app:1"), None);
}

/// Hidden files and directories `bundle create` left in `dir`: scratch stores and
/// temporary bundles.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Runs p2pimg with `args`; returns (exit code, stderr).
fn p2pimg(args: &[&str]) -> (i32, String) {
    let out = run_with_timeout(Command::new(bin()).args(args).stdin(Stdio::null()), 60);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts `args` fail in one line containing every `needles`.
fn assert_refused(args: &[&str], needles: &[&str]) {
    let (code, stderr) = p2pimg(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} missing from: {stderr}"
        );
    }
}

/// A FIFO at `path` (mkfifo(1): the harness does not link the library's libc calls).
fn mkfifo(path: &Path) {
    run_ok(Command::new("mkfifo").arg(path), 10);
}

/// PIDs above the largest pid_max Linux allows (2^22) never run.
const DEAD_PID: u32 = (1 << 22) + 1;

#[test]
fn bundle_output_never_replaces_a_device_a_directory_or_the_input() {
    let engine = Dockerd::start("bundle-out");
    build_test_image(&engine, "app:1");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tar = d.join("app.partial");
    engine.docker_ok(["save", "-o", tar.to_str().unwrap(), "app:1"]);
    let tar_bytes = fs::read(&tar).unwrap();
    let tar_s = tar.to_str().unwrap();
    let create = |out: &Path| -> Vec<String> {
        [
            "bundle",
            "create",
            "--from-tar",
            tar_s,
            "-o",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let refused = |out: &Path, needles: &[&str]| {
        let args = create(out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&args, needles);
        assert_eq!(leftovers(d), Vec::<String>::new(), "nothing left behind");
    };

    // A device node (a private /dev/null: as root the old code turned it into a file).
    let null = d.join("null");
    run_ok(Command::new("mknod").arg(&null).args(["c", "1", "3"]), 10);
    refused(&null, &["null", "is a character device, not a file"]);
    assert!(fs::metadata(&null).unwrap().file_type().is_char_device());
    let sub = d.join("sub");
    fs::create_dir(&sub).unwrap();
    refused(&sub, &["is a directory, not a file"]);
    assert!(sub.is_dir() && !d.join("sub.partial").exists());
    // The input itself, also through a symbolic link.
    refused(&tar, &["is the input archive"]);
    let link = d.join("link.p2pimg");
    std::os::unix::fs::symlink(&tar, &link).unwrap();
    refused(&link, &["is the input archive"]);
    assert_eq!(fs::read(&tar).unwrap(), tar_bytes, "the input is untouched");

    // `x.partial` → `x.p2pimg`: the old temporary name was the input's. Leftovers of a
    // killed run beside the output go; those of live processes stay.
    let stale_scratch = d.join(format!(".p2pimg-bundle-{DEAD_PID}"));
    fs::create_dir_all(stale_scratch.join("chunks/ab")).unwrap();
    let stale_tmp = d.join(format!(".app.p2pimg.tmp-{DEAD_PID}-0badc0de"));
    fs::write(&stale_tmp, b"half a bundle").unwrap();
    let live_tmp = d.join(".app.p2pimg.tmp-1-0badc0de");
    fs::write(&live_tmp, b"pid 1 runs").unwrap();
    let out = d.join("app.p2pimg");
    let args = create(&out);
    let made = run_ok(Command::new(bin()).args(&args), 120);
    assert_eq!(fs::read(&tar).unwrap(), tar_bytes, "the input is untouched");
    run_ok(Command::new(bin()).args(["bundle", "verify"]).arg(&out), 60);
    assert_eq!(leftovers(d), vec![".app.p2pimg.tmp-1-0badc0de".to_string()]);
    fs::remove_file(&live_tmp).unwrap();

    // An existing regular file is replaced.
    let again = run_ok(Command::new(bin()).args(&args), 120);
    assert_eq!(manifest_id(&again), manifest_id(&made));

    // From a pipe: `docker save app:1 | p2pimg bundle create --from-tar /dev/stdin`.
    let piped = d.join("piped.p2pimg");
    let mut cat = Command::new("cat")
        .arg(&tar)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = run_ok(
        Command::new(bin())
            .args(["bundle", "create", "--from-tar", "/dev/stdin", "-o"])
            .arg(&piped)
            .stdin(cat.stdout.take().unwrap()),
        120,
    );
    cat.wait().unwrap();
    assert_eq!(manifest_id(&out), manifest_id(&made));
    // A FIFO nothing writes to: refused at once, not waited on forever.
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let fifo_s = fifo.to_str().unwrap();
    let piped_s = piped.to_str().unwrap();
    assert_refused(
        &["bundle", "create", "--from-tar", fifo_s, "-o", piped_s],
        &["fifo", "nothing was writing to it"],
    );
    assert_refused(
        &[
            "bundle",
            "create",
            "--from-tar",
            d.to_str().unwrap(),
            "-o",
            piped_s,
        ],
        &["is a directory, not a `docker save` archive"],
    );
    assert_eq!(leftovers(d), Vec::<String>::new());
}

#[test]
fn bundle_paths_that_are_not_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(Command::new(bin()).args(["init", "--dir"]).arg(d.join("ca")), 30);
    let nodes = d.join("nodes.toml");
    fs::write(&nodes, "[[node]]\nname = \"n1\"\naddr = \"127.0.0.1:9\"\n").unwrap();
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    let ca = d.join("ca");
    let (ca, nodes) = (ca.to_str().unwrap(), nodes.to_str().unwrap());
    for (path, kind) in [
        (d.to_str().unwrap(), "is a directory"),
        (fifo.to_str().unwrap(), "is a pipe"),
    ] {
        for cmd in [
            vec!["bundle", "verify", path],
            vec!["bundle", "ls", path],
            vec!["push", "--bundle", path, "--nodes", nodes, "--cluster-dir", ca],
        ] {
            assert_refused(&cmd, &[path, kind, "not a bundle file"]);
        }
    }
    // Through a pipe (`bundle ls <(cat b)`, `push --bundle /dev/stdin`).
    let mut cat = Command::new("cat")
        .arg(nodes)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = run_with_timeout(
        Command::new(bin())
            .args(["bundle", "ls", "/dev/stdin"])
            .stdin(cat.stdout.take().unwrap()),
        60,
    );
    let _ = cat.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is a pipe") && stderr.contains("save it to a file"),
        "{stderr}"
    );
}

#[test]
fn interrupted_bundle_create_removes_its_scratch_data() {
    let engine = Dockerd::start("bundle-int");
    build_test_image(&engine, "app:1");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tar = d.join("app.tar");
    engine.docker_ok(["save", "-o", tar.to_str().unwrap(), "app:1"]);
    let archive = fs::read(&tar).unwrap();
    let out = d.join("out");
    fs::create_dir(&out).unwrap();
    for (sig, code) in [(SIGINT, 130), (SIGTERM, 143)] {
        // All but the archive's end, through a pipe held open: the command has packed
        // chunks into its scratch store and waits for the rest when the signal comes.
        let mut child = Command::new(bin())
            .args(["bundle", "create", "--from-tar", "/dev/stdin", "-o"])
            .arg(out.join("app.p2pimg"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&archive[..archive.len() - 10_240]).unwrap();
        let scratch = out.join(format!(".p2pimg-bundle-{}", child.id()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while chunk_files(&scratch).is_empty() {
            assert!(Instant::now() < deadline, "no chunks in {}", scratch.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(leftovers(&out).len(), 2, "{:?}", leftovers(&out));
        signal(child.id(), sig);
        let status = wait_deadline(&mut child, Duration::from_secs(60)).expect("exits");
        drop(stdin);
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert_eq!(status.code(), Some(code), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert_eq!(
            leftovers(&out),
            Vec::<String>::new(),
            "scratch and partial bundle removed"
        );
        assert!(!out.join("app.p2pimg").exists());
    }
}
