//! A private podman per test: `podman system service` serving the Docker-compatible API
//! on its own socket, with its own storage (overlay), run root, libpod tmp dir, file
//! locks, events log, network config and containers.conf, all under a fresh
//! `/tmp/p2pimg-test-*` directory like a [`Dockerd`]'s, torn down and removed on drop.
//!
//! Two podmans never share state: nothing under /run/libpod, /var/lib/containers,
//! /etc/containers/networks or /dev/shm. Settings that make containers run on these
//! machines: runc (crun refuses their hybrid cgroup layout), cgroupfs, no default ulimits
//! (raising rlimits is not permitted), `--network none`.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::dockerd::{
    log_tail, make_dir, ping, reap_stale_once, remove_daemon_dir, Dockerd, DOCKER_TIMEOUT_SECS,
};
use super::process::{check, cli_ok, cli_output, run_with_timeout, terminate};
use super::Cluster;

/// Debian's podman (4.3 in bookworm); `P2PIMG_TEST_PODMAN` overrides it.
const PODMAN: &str = "/usr/bin/podman";

/// How long the service may take to answer `_ping`: 0.2–0.4 s on this 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the service gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The containers.conf every service and CLI call reads (`CONTAINERS_CONF`); `{dir}` is
/// the podman's directory.
const CONTAINERS_CONF: &str = r#"[containers]
# Podman raises RLIMIT_NOFILE and RLIMIT_NPROC for containers by default; not permitted here.
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{dir}/events.log"
# Its own alive file and exit files: podmans sharing /run/libpod would trip on each other.
tmp_dir = "{dir}/libpod"
# File locks under tmp_dir, instead of the one /dev/shm segment every root podman shares.
lock_type = "file"
# Where an OCI archive given to `POST /images/load` is unpacked (else /var/tmp).
image_copy_tmp_dir = "{dir}/tmp"

[network]
# CNI: install-deps.sh gets containernetworking-plugins with podman (no netavark), and the
# same backend everywhere keeps runs alike; containers run with `--network none` anyway.
network_backend = "cni"
network_config_dir = "{dir}/networks"
"#;

/// storage.conf (`CONTAINERS_STORAGE_CONF`): no system-wide storage options apply.
const STORAGE_CONF: &str = r#"[storage]
driver = "overlay"
graphroot = "{dir}/root"
runroot = "{dir}/run"
"#;

/// registries.conf (`CONTAINERS_REGISTRIES_CONF`): no registry, so a short name means a
/// local image and nothing is ever looked up on the network.
const REGISTRIES_CONF: &str = "unqualified-search-registries = []\n";

/// A running private podman API service. Dropping it stops the service and removes its
/// directory.
#[derive(Debug)]
pub struct Podman {
    name: String,
    dir: PathBuf,
    socket: PathBuf,
    child: Child,
}

impl Podman {
    /// Starts a service named `name` and waits until it answers `_ping`. Panics, with
    /// the tail of its log, if it does not.
    pub fn start(name: &str) -> Podman {
        reap_stale_once();
        let dir = make_dir(name);
        write_config(&dir);
        let socket = dir.join("podman.sock");
        let log = File::create(dir.join("podman.log")).expect("create podman.log");
        let mut cmd = podman_command(&dir);
        cmd.args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start podman: {e} (scripts/test.sh installs Debian's podman)")
        });
        let mut p = Podman {
            name: name.to_string(),
            dir,
            socket,
            child,
        };
        p.wait_ready();
        p
    }

    /// `unix:///tmp/p2pimg-test-…/podman.sock`: the value for an agent's `docker_host`,
    /// `docker -H` or `podman --url`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The service's private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The podman CLI on the same storage and configuration as the service (not through
    /// its socket: `--url` is an argument away), to add arguments and stdio to.
    pub fn podman_cmd(&self) -> Command {
        podman_command(&self.dir)
    }

    /// Runs the podman CLI with no stdin; returns its output whatever the exit status.
    pub fn podman<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cli_output(self.podman_cmd(), args, DOCKER_TIMEOUT_SECS)
    }

    /// Runs the podman CLI and panics unless it succeeds; returns trimmed stdout.
    pub fn podman_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let label = format!("podman ({})", self.name);
        cli_ok(
            &label,
            self.podman_cmd(),
            args.into_iter().collect(),
            DOCKER_TIMEOUT_SECS,
        )
    }

    /// The image ID (`sha256:…`, the config digest) of `reference`, or `None` if podman
    /// has no such image. A short name like `app:1` finds `localhost/app:1`.
    pub fn image_id(&self, reference: &str) -> Option<String> {
        let out = self.podman(["image", "inspect", "--format", "{{.Id}}", reference]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("image not known") || err.contains("no such image"),
                "podman ({}) image inspect {reference} failed: {err}",
                self.name
            );
            return None;
        }
        Some(format!("sha256:{}", String::from_utf8_lossy(&out.stdout).trim()))
    }

    /// `podman load` of a `docker save` archive (or an OCI archive) at `archive`.
    pub fn load(&self, archive: &Path) {
        self.podman_ok([
            OsStr::new("load"),
            OsStr::new("-q"),
            OsStr::new("-i"),
            archive.as_os_str(),
        ]);
    }

    /// Copies `reference` from a [`Dockerd`] with `docker save` and `podman load`.
    pub fn load_from(&self, from: &Dockerd, reference: &str) {
        let archive = self.dir.join("tmp/load.tar");
        let mut save = from.docker_cmd();
        save.args(["save", "-o"])
            .arg(&archive)
            .arg(reference)
            .stdin(Stdio::null());
        check(
            &format!("docker save {reference}"),
            &run_with_timeout(&mut save, DOCKER_TIMEOUT_SECS),
        );
        self.load(&archive);
        let _ = fs::remove_file(&archive);
    }

    /// `podman import` of a root filesystem tar as `reference` (one layer).
    pub fn import(&self, rootfs_tar: &Path, reference: &str) -> String {
        let out = self.podman_ok([
            OsStr::new("import"),
            OsStr::new("-q"),
            rootfs_tar.as_os_str(),
            OsStr::new(reference),
        ]);
        out.lines().last().unwrap_or_default().to_string()
    }

    /// Runs `cat path` in a throwaway container of `image` (no network); its output.
    pub fn run_cat(&self, image: &str, path: &str) -> String {
        self.podman_ok(["run", "--rm", "--network", "none", image, "/bin/cat", path])
    }

    /// `GET /version` of the Docker-compatible API.
    pub fn version_json(&self) -> Value {
        let (status, body) = self.api("GET", "/version");
        assert_eq!(status, 200, "GET /version: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad /version {body:?}: {e}"))
    }

    /// One bodiless request to the API on the socket (`GET /info`, `POST
    /// /images/ID/tag?repo=…`): the status code and the body.
    pub fn api(&self, method: &str, path: &str) -> (u16, String) {
        let mut s = UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set timeout");
        // HTTP/1.0: the server closes after its answer, and never sends it chunked.
        let request = format!("{method} {path} HTTP/1.0\r\nHost: podman\r\nContent-Length: 0\r\n\r\n");
        s.write_all(request.as_bytes()).expect("send request");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("read reply");
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad HTTP reply to {method} {path}: {reply:?}"));
        (status, body.to_string())
    }

    /// Makes this service node `i`'s engine in `cluster` (`engine = "podman"` in its
    /// agent.toml), and restarts its agent on it.
    pub fn serve_node(&self, cluster: &mut Cluster, i: usize) {
        let engine = format!("engine = \"podman\"\nengine_host = \"{}\"", self.host());
        cluster.use_engine(i, &engine);
    }

    /// The last `lines` lines of the service's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.join("podman.log"), lines)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !ping(&self.socket) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "podman {} exited ({status}) before answering; log tail:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "podman {} did not answer on {} within {START_TIMEOUT:?}; log tail:\n{}",
                self.name,
                self.socket.display(),
                self.log_tail(30)
            );
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Podman {
    /// Shutdown order: remove every container (their conmons and runc processes go with
    /// them), SIGTERM the service and SIGKILL it after `STOP_GRACE`, SIGKILL whatever
    /// still names the directory, detach leftover mounts (overlay layers of containers),
    /// remove the directory. Never panics.
    fn drop(&mut self) {
        let mut rm = self.podman_cmd();
        rm.args(["rm", "--all", "--force", "--time", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Ok(mut child) = rm.spawn() {
            if super::process::wait_deadline(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        terminate(&mut self.child, STOP_GRACE);
        remove_daemon_dir(&self.dir);
    }
}

/// `podman` with the storage flags and the configuration files of the podman in `dir`.
fn podman_command(dir: &Path) -> Command {
    let bin = std::env::var("P2PIMG_TEST_PODMAN").unwrap_or_else(|_| PODMAN.to_string());
    let mut cmd = Command::new(bin);
    cmd.env("CONTAINERS_CONF", dir.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"))
        .env("TMPDIR", dir.join("tmp"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "overlay"]);
    cmd
}

/// Writes the configuration files [`podman_command`] names, and the tmp directory.
fn write_config(dir: &Path) {
    let at = dir.display().to_string();
    fs::write(dir.join("containers.conf"), CONTAINERS_CONF.replace("{dir}", &at))
        .expect("write containers.conf");
    fs::write(dir.join("storage.conf"), STORAGE_CONF.replace("{dir}", &at)).expect("write storage.conf");
    fs::write(dir.join("registries.conf"), REGISTRIES_CONF).expect("write registries.conf");
    fs::create_dir_all(dir.join("tmp")).expect("create podman tmp dir");
}
