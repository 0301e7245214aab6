//! The harness's other engines, tested on their own: Docker 26 with its classic store and
//! with the containerd image store, and a private podman API service. Each starts, takes
//! a test image and runs a container from it, and leaves nothing behind when dropped. And
//! a podman service as a node's engine ([`Podman::serve_node`]) takes a first push.

use std::fs;
use std::process::Command;
use std::time::Instant;

use crate::common::dockerd::CONTAINERD_STORE;
use crate::common::process::{self, run_ok};
use crate::common::{build_test_image, Cluster, Dockerd, DockerdKind, DockerdOptions, Podman, HELLO_PATH};

/// Starts a daemon of `kind` and says how long it took (shown with `--nocapture`).
fn start(name: &str, kind: DockerdKind) -> Dockerd {
    let t = Instant::now();
    let d = Dockerd::start_with(
        name,
        &DockerdOptions {
            kind,
            ..DockerdOptions::default()
        },
    );
    eprintln!("{kind:?} answered after {:?}", t.elapsed());
    d
}

/// Panics unless nothing of the daemon in `dir` is left: no directory, no process, no mount.
fn assert_gone(dir: &std::path::Path) {
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        process::pids_referring_to(dir).is_empty(),
        "processes of {} remain",
        dir.display()
    );
    let mounts = p2pimg::content::disk::mount_points();
    assert!(
        !mounts.iter().any(|m| m.starts_with(dir)),
        "mounts under {} remain",
        dir.display()
    );
}

#[test]
fn docker26_containerd_store_builds_runs_and_shows_its_images_in_containerd() {
    let d = start("d26c", DockerdKind::Docker26Containerd);
    assert_eq!(d.kind(), DockerdKind::Docker26Containerd);
    assert_eq!(d.driver_type().as_deref(), Some(CONTAINERD_STORE));
    assert!(d.uses_containerd_store());
    let image = build_test_image(&d, "engines26c:1");
    let out = d.docker_ok([
        "run",
        "--rm",
        "--network",
        "none",
        &image.tag,
        "/bin/cat",
        HELLO_PATH,
    ]);
    assert_eq!(out, image.hello.trim());

    // The image is in the daemon's own containerd, in its own namespace.
    let ns = d.containerd_namespace().to_string();
    assert!(ns.starts_with("p2pimg-"), "{ns}");
    let socket = d.containerd_socket();
    let listed = run_ok(
        Command::new("ctr")
            .arg("-a")
            .arg(&socket)
            .args(["-n", &ns, "images", "ls", "-q"]),
        60,
    );
    assert!(
        listed.lines().any(|l| l == "docker.io/library/engines26c:1"),
        "{listed}"
    );

    // A restart keeps the store, the namespace and the image.
    let mut d = d;
    d.restart();
    assert!(d.uses_containerd_store());
    assert_eq!(d.containerd_namespace(), ns);
    assert_eq!(d.image_id(&image.tag).as_deref(), Some(image.id.as_str()));

    // Dropped with a container running: its snapshot mount and shim go too.
    d.docker_ok(["run", "-d", "--network", "none", &image.tag, "/bin/sleep", "600"]);
    let dir = d.dir().to_path_buf();
    drop(d);
    assert_gone(&dir);
}

#[test]
fn docker26_classic_store_builds_and_runs() {
    let d = start("d26o", DockerdKind::Docker26Classic);
    assert_eq!(d.driver_type(), None);
    assert_eq!(d.docker_ok(["info", "--format", "{{.Driver}}"]), "overlay2");
    assert!(d
        .docker_ok(["version", "--format", "{{.Server.Version}}"])
        .starts_with("26."));
    let image = build_test_image(&d, "engines26o:1");
    let out = d.docker_ok([
        "run",
        "--rm",
        "--network",
        "none",
        &image.tag,
        "/bin/cat",
        HELLO_PATH,
    ]);
    assert_eq!(out, image.hello.trim());
    d.docker_ok(["run", "-d", "--network", "none", &image.tag, "/bin/sleep", "600"]);
    let dir = d.dir().to_path_buf();
    drop(d);
    assert_gone(&dir);
}

#[test]
fn podman_service_loads_a_docker_save_archive_and_runs_it() {
    let d = Dockerd::start("podsrc");
    let image = build_test_image(&d, "enginespod:1");
    let t = Instant::now();
    let p = Podman::start("pod");
    eprintln!("podman answered after {:?}", t.elapsed());
    p.load_from(&d, &image.tag);
    // podman names a short name under localhost/.
    let id = p.image_id(&image.tag).expect("loaded image");
    assert_eq!(id, image.id, "podman keeps the config digest as image ID");
    assert_eq!(p.run_cat(&image.tag, HELLO_PATH), image.hello.trim());
    p.podman_ok(["run", "-d", "--network", "none", &image.tag, "/bin/sleep", "600"]);
    assert!(p.version_json()["Components"][0]["Name"] == "Podman Engine");
    let (dir, pid) = (p.dir().to_path_buf(), p.pid());
    drop(p);
    assert!(!process::is_alive(pid), "podman service {pid} still runs");
    assert_gone(&dir);
}

#[test]
fn podman_imports_a_rootfs_and_the_docker_cli_runs_it_through_the_socket() {
    let p = Podman::start("podimp");
    let root = p.dir().join("tmp/rootfs");
    fs::create_dir_all(root.join("bin")).expect("rootfs");
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", root.join("bin/cat")).expect("symlink");
    fs::write(root.join("hello.txt"), "imported\n").expect("hello");
    let tar = p.dir().join("tmp/rootfs.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        60,
    );
    let id = p.import(&tar, "imported:1");
    assert_eq!(p.image_id("imported:1"), Some(id));

    // The Docker CLI, as a user of the compatible API would, through the socket.
    let mut docker = Command::new("docker");
    docker.args([
        "-H",
        &p.host(),
        "run",
        "--rm",
        "--network",
        "none",
        "imported:1",
        "/bin/cat",
        "/hello.txt",
    ]);
    assert_eq!(
        run_ok(docker.env("DOCKER_CONFIG", p.dir().join("cli")), 120),
        "imported"
    );
}

/// A podman node through its Docker-compatible API: a first push loads under the config
/// digest (podman's image ID too); a push of an image on top of one it holds sends only
/// the layers above, in an OCI layout (podman refuses a `docker save` archive with layers
/// left out), and runs; a third push skips it.
#[test]
fn podman_node_loads_whole_then_partial_then_skips() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_p2pimg"));
    let mut cluster = Cluster::start(bin, 2);
    let p = Podman::start("podnode");
    p.serve_node(&mut cluster, 1);
    let image = build_test_image(&cluster.seed, "app:1");
    let base = cluster.push(&[&image.base], &["--node", "n2"]);
    cluster.assert_push_ok(&base);
    assert_eq!(
        p.image_id(&image.base_id).as_deref(),
        Some(image.base_id.as_str())
    );

    let push = cluster.push(&["app:1"], &[]);
    cluster.assert_push_ok(&push);
    assert_eq!(push.status("n2"), "loaded", "{}", push.stdout);
    assert_eq!(p.image_id(&image.id).as_deref(), Some(image.id.as_str()));
    let (status, body) = p.api("GET", &format!("/images/{}/json", image.id));
    assert_eq!(status, 200, "{body}");
    // n1 lacked the base and fetched it; n2, holding it, only the layers above.
    let (all, top) = (push.received_total("n1"), push.received_total("n2"));
    assert!(top > 0 && top < all, "n2 fetched {top} bytes, n1 (no base) {all}");
    assert_eq!(p.run_cat("app:1", HELLO_PATH), image.hello.trim());

    let again = cluster.push(&["app:1"], &[]);
    cluster.assert_push_ok(&again);
    assert_eq!(again.status("n2"), "skipped", "{}", again.stdout);
    assert_eq!(again.received_total("n1") + again.received_total("n2"), 0);
}
