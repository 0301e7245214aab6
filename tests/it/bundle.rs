//! Air-gapped seeding: a bundle made from one engine (or from a `docker save`
//! archive) is pushed from a seed with no Docker Engine to 3 nodes.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::{build_test_image, run_ok, run_with_timeout, Cluster, HELLO_PATH};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_p2pimg"))
}

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
