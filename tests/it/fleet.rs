//! One push to a fleet of every kind of engine nodes run, each a real daemon: dockerd
//! 20.10, Docker 26 with its classic store, Docker 26 with the containerd image store,
//! containerd alone (namespace `k8s.io`, as on Kubernetes nodes) and podman. Seeds of
//! each kind; a node of another platform.

use std::path::Path;

use serde_json::Value;

use crate::common::containerd::Containerd;
use crate::common::{build_test_image, Cluster, Dockerd, DockerdKind, DockerdOptions, Podman, HELLO_PATH};

/// Where the images go on containerd nodes: the kubelet's namespace.
const K8S: &str = "k8s.io";

/// The engines of a five-node fleet, n1 (dockerd 20.10, the cluster's own) aside.
struct Fleet {
    cluster: Cluster,
    d26: Dockerd,
    d26c: Dockerd,
    containerd: Containerd,
    podman: Podman,
}

fn docker26(name: &str, kind: DockerdKind) -> Dockerd {
    Dockerd::start_with(
        name,
        &DockerdOptions {
            kind,
            ..DockerdOptions::default()
        },
    )
}

/// agent.toml lines for a Docker 26 with the containerd image store: Docker 26 does not
/// say where its containerd is (API 1.45), so the test names it.
fn containerd_store_lines(d: &Dockerd) -> String {
    format!(
        "docker_host = \"{}\"\ncontainerd_host = \"unix://{}\"\ncontainerd_namespace = \"{}\"",
        d.host(),
        d.containerd_socket().display(),
        d.containerd_namespace()
    )
}

/// `push` flags for a Docker 26 seed with the containerd image store.
fn seed_flags(d: &Dockerd) -> Vec<String> {
    let containerd = format!("unix://{}", d.containerd_socket().display());
    let flags = ["--docker-host", &d.host(), "--containerd-host", &containerd];
    let namespace = ["--containerd-namespace", d.containerd_namespace()];
    flags.iter().chain(&namespace).map(|s| s.to_string()).collect()
}

fn containerd_lines(c: &Containerd) -> String {
    format!(
        "engine = \"containerd\"\nengine_host = \"{}\"\ncontainerd_namespace = \"{K8S}\"",
        c.host()
    )
}

/// n1 dockerd 20.10, n2 Docker 26 classic, n3 Docker 26 containerd store, n4 containerd,
/// n5 podman.
fn fleet() -> Fleet {
    let bin = Path::new(env!("CARGO_BIN_EXE_p2pimg"));
    let mut cluster = Cluster::start(bin, 5);
    let d26 = docker26("f26", DockerdKind::Docker26Classic);
    let d26c = docker26("f26c", DockerdKind::Docker26Containerd);
    let containerd = Containerd::start("fctd");
    let podman = Podman::start("fpod");
    cluster.use_engine(1, &format!("docker_host = \"{}\"", d26.host()));
    cluster.use_engine(2, &containerd_store_lines(&d26c));
    cluster.use_engine(3, &containerd_lines(&containerd));
    podman.serve_node(&mut cluster, 4);
    Fleet {
        cluster,
        d26,
        d26c,
        containerd,
        podman,
    }
}

impl Fleet {
    /// What `cat HELLO_PATH` prints in a container of `image` on node `i`.
    fn run_cat(&self, i: usize, image: &str) -> String {
        let docker =
            |d: &Dockerd| d.docker_ok(["run", "--rm", "--network", "none", image, "/bin/cat", HELLO_PATH]);
        match i {
            0 => docker(&self.cluster.nodes[0].engine),
            1 => docker(&self.d26),
            2 => docker(&self.d26c),
            3 => ctr_cat(&self.containerd, image),
            _ => self.podman.run_cat(image, HELLO_PATH),
        }
    }
}

/// Runs a container from `image` (a short name) in containerd's `k8s.io` namespace, on
/// the overlayfs snapshotter (so it must be unpacked there), and returns what it printed.
fn ctr_cat(c: &Containerd, image: &str) -> String {
    let name = format!("docker.io/library/{image}");
    // A new container ID each time: `ctr run --rm` may not have released the last one.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("cat{}-{run}", std::process::id());
    let args = [
        "run",
        "--rm",
        "--snapshotter",
        "overlayfs",
        &name,
        &id,
        "/bin/cat",
        HELLO_PATH,
    ];
    c.ctr_ok(K8S, args).trim().to_string()
}

/// `status IMAGE --json` as JSON.
fn status(cluster: &Cluster, image: &str) -> Value {
    let out = crate::common::process::run_ok(
        std::process::Command::new(&cluster.bin)
            .args(["status", image, "--json", "--nodes"])
            .arg(cluster.nodes_toml())
            .arg("--cluster-dir")
            .arg(cluster.ca_dir()),
        60,
    );
    serde_json::from_str(&out).expect("status JSON")
}

#[test]
fn one_push_reaches_every_kind_of_engine_and_a_second_sends_nothing() {
    let f = fleet();
    let c = &f.cluster;
    let image = build_test_image(&c.seed, "app:1");
    // The digest-based nodes (containerd store, containerd) hold the base already: they
    // must fetch only the layers above it.
    let base = c.push(&[&image.base], &["--node", "n3", "--node", "n4"]);
    c.assert_push_ok(&base);

    let push = c.push(&["app:1"], &[]);
    c.assert_push_ok(&push);
    // The per-engine figures (time to loaded, bytes from the seed and from peers), shown
    // with --nocapture.
    for line in push
        .stdout
        .lines()
        .filter(|l| l.contains("\"finished\"") || l.contains("\"n5\""))
    {
        eprintln!("mixed fleet: {line}");
    }
    eprintln!("mixed fleet report: {}", push.report());
    let all = push.received_total("n1");
    for (i, name) in ["n1", "n2", "n3", "n4", "n5"].iter().enumerate() {
        assert_eq!(push.status(name), "loaded", "{name}: {}", push.stdout);
        assert_eq!(f.run_cat(i, "app:1"), image.hello.trim(), "{name} runs the image");
        let got = push.received_total(name);
        match *name {
            "n3" | "n4" => assert!(
                got > 0 && got < all,
                "{name} fetched {got} of {all}: the base is held"
            ),
            _ => assert_eq!(got, all, "{name} fetched the whole image"),
        }
    }

    let answers = status(c, "app:1");
    for node in answers.as_array().expect("status array") {
        let answer = &node["answer"]["Ok"];
        assert_eq!(answer["ids"][0], Value::from(image.id.clone()), "{node}");
        let digest_based = answer["engine"]
            .as_str()
            .unwrap_or_default()
            .contains("namespace");
        assert_eq!(!answer["digests"][0].is_null(), digest_based, "{node}");
    }

    let again = c.push(&["app:1"], &[]);
    c.assert_push_ok(&again);
    for name in ["n1", "n2", "n3", "n4", "n5"] {
        assert_eq!(again.status(name), "skipped", "{name}: {}", again.stdout);
    }
    assert_eq!(again.seed_uploaded(), 0, "a second push sends nothing");
}

#[test]
fn seeds_of_every_kind_push_to_a_docker_and_a_containerd_node() {
    let bin = Path::new(env!("CARGO_BIN_EXE_p2pimg"));
    let mut c = Cluster::start(bin, 2);
    let node_ctd = Containerd::start("sctd");
    c.use_engine(1, &containerd_lines(&node_ctd));
    let d26c = docker26("s26c", DockerdKind::Docker26Containerd);
    let seed_ctd = Containerd::start("sseed");

    // A Docker 26 seed with the containerd image store.
    let image = build_test_image(&d26c, "from26c:1");
    let flags = seed_flags(&d26c);
    let push = c.push(
        &["from26c:1"],
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    c.assert_push_ok(&push);
    let run = [
        "run",
        "--rm",
        "--network",
        "none",
        "from26c:1",
        "/bin/cat",
        HELLO_PATH,
    ];
    assert_eq!(c.nodes[0].engine.docker_ok(run), image.hello.trim());
    assert_eq!(ctr_cat(&node_ctd, "from26c:1"), image.hello.trim());

    // A containerd seed (a kubeadm control-plane node): the image gets there from a bundle
    // made on another machine, imported the way Kubernetes operators do (`ctr import`).
    let tar = c.dir.path().join("fromctd.tar");
    let built = build_test_image(&c.seed, "fromctd:1");
    c.seed
        .docker_ok(["save", "-o", tar.to_str().unwrap(), "fromctd:1"]);
    seed_ctd.ctr_ok(
        K8S,
        [
            "images",
            "import",
            "--snapshotter",
            "overlayfs",
            tar.to_str().unwrap(),
        ],
    );
    let seed = ["--engine", "containerd", "--engine-host", &seed_ctd.host()];
    let push = c.push(&["fromctd:1"], &seed);
    c.assert_push_ok(&push);
    assert_eq!(
        c.nodes[0].engine.image_id("fromctd:1").as_deref(),
        Some(built.id.as_str())
    );
    assert_eq!(ctr_cat(&node_ctd, "fromctd:1"), built.hello.trim());

    // A bundle made from containerd, pushed to nodes that hold only the first image.
    let bundle = c.dir.path().join("b.bundle");
    let mut create = std::process::Command::new(bin);
    create.args(["bundle", "create", "fromctd:1", "-o"]).arg(&bundle);
    create.args(["--engine", "containerd", "--engine-host", &seed_ctd.host()]);
    crate::common::run_ok(&mut create, 120);
    c.nodes[0].engine.docker_ok(["rmi", "fromctd:1"]);
    node_ctd.ctr_ok(K8S, ["images", "rm", "--sync", "docker.io/library/fromctd:1"]);
    let push = c.push(&[], &["--bundle", bundle.to_str().unwrap()]);
    c.assert_push_ok(&push);
    assert_eq!(
        c.nodes[0].engine.image_id("fromctd:1").as_deref(),
        Some(built.id.as_str())
    );
    assert_eq!(ctr_cat(&node_ctd, "fromctd:1"), built.hello.trim());
}

#[test]
fn a_node_of_another_platform_fails_clearly_and_loads_nothing() {
    let bin = Path::new(env!("CARGO_BIN_EXE_p2pimg"));
    let mut c = Cluster::start(bin, 2);
    let node_ctd = Containerd::start("pctd");
    c.use_engine(1, &containerd_lines(&node_ctd));
    let dir = c.dir.path().join("armfs");
    std::fs::create_dir_all(&dir).expect("rootfs dir");
    std::fs::write(dir.join("hello.txt"), "built for arm64\n").expect("rootfs file");
    let rootfs = c.dir.path().join("arm.tar");
    let mut tar = std::process::Command::new("tar");
    tar.arg("-C").arg(&dir).arg("-cf").arg(&rootfs).arg(".");
    crate::common::run_ok(&mut tar, 60);
    // dockerd 20.10 ignores `import --platform`; Docker 26 keeps it.
    let seed = docker26("parm", DockerdKind::Docker26Containerd);
    seed.docker_ok([
        "import",
        "--platform",
        "linux/arm64",
        rootfs.to_str().unwrap(),
        "armapp:1",
    ]);
    let flags = seed_flags(&seed);
    let push = c.push(
        &["armapp:1"],
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(push.code, 1, "{}", push.stdout);
    for name in ["n1", "n2"] {
        let reason = push.reason(name);
        assert!(
            reason.contains("built for linux/arm64") && reason.contains("this node is linux/amd64"),
            "{name}: {reason}"
        );
        assert_eq!(push.received_total(name), 0, "{name} fetched nothing");
    }
    assert_eq!(c.nodes[0].engine.image_id("armapp:1"), None);
    let listed = node_ctd.ctr_ok(K8S, ["images", "ls", "-q"]);
    assert!(!listed.contains("armapp"), "{listed}");
}
