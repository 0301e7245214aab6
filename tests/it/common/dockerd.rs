//! A private Docker Engine per simulated node: its own dockerd (and the containerd that
//! dockerd starts under its exec-root), data-root, socket and log, under a fresh
//! `/tmp/p2pimg-test-*` directory, torn down and removed on drop.
//!
//! [`DockerdKind`] picks the engine: bookworm's 20.10 (the default), or Docker 26 from
//! trixie (scripts/fetch-dockerd26.sh) with its classic overlay2 store or with the
//! containerd image store, whose images live in the daemon's own containerd
//! ([`Dockerd::containerd_socket`], [`Dockerd::containerd_namespace`]).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::process::{
    self, check, is_alive, kill_all_referring_to, run_with_timeout, signal, unmount_under, SIGTERM,
};

/// Debian's docker.io puts the 20.10 engine here; `P2PIMG_TEST_DOCKERD` overrides it.
const DOCKERD: &str = "/usr/sbin/dockerd";

/// scripts/fetch-dockerd26.sh puts trixie's Docker 26.1.5 here (keep the two equal);
/// `P2PIMG_TEST_DOCKERD26` overrides it. Its docker-proxy sits beside it.
const DOCKERD26: &str = "/opt/p2pimg-test/docker26/dockerd";

/// What `docker info` says in `DriverStatus` (`driver-type`) when images live in
/// containerd: the containerd image store.
pub const CONTAINERD_STORE: &str = "io.containerd.snapshotter.v1";

/// The containerd namespace dockerd uses when not told another: its containers (and,
/// with the containerd store, its images) are there.
const DEFAULT_NAMESPACE: &str = "moby";

/// Parent of every daemon directory. Unix socket paths must fit in 108 bytes and
/// containerd's sockets sit four levels below the daemon directory, so it must be short:
/// not `$TMPDIR`, which may be long.
const ROOT: &str = "/tmp";

/// Prefix of daemon directories; the stale-directory reaper looks only at these.
const PREFIX: &str = "p2pimg-test-";

/// File in a daemon directory naming the pid of the test process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// How long a daemon may take to answer `_ping`. It takes 0.2–0.5 s on an idle 2-core
/// machine; parallel tests and image loads can slow that a lot.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long dockerd may take to stop after SIGTERM before it is killed. It stops
/// containers (given `SHUTDOWN_TIMEOUT_SECS`), then its containerd.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// dockerd logs this once it has stopped containers and released its storage. After
/// that and its containerd's exit, it only idles for about a second on a gRPC reconnect
/// timer before exiting, so the harness kills it then: 8 daemons drop in 1 s, not 9.
const SHUTDOWN_COMPLETE: &str = "Daemon shutdown complete";

/// `--shutdown-timeout`: seconds dockerd gives running containers to stop. Test
/// containers are throwaway, so be quick.
const SHUTDOWN_TIMEOUT_SECS: &str = "3";

/// Limit for one docker CLI command: a `docker load` of a benchmark image of several
/// hundred MB on a busy machine.
pub const DOCKER_TIMEOUT_SECS: u64 = 600;

/// Directories whose owner is gone are reaped only after this long without an owner
/// file, so that a directory another process is just creating is left alone.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// How to start a daemon; the default is what every test uses.
#[derive(Clone, Debug, Default)]
pub struct DockerdOptions {
    /// Put the data root on a tmpfs of this many bytes (a small disk for disk-full tests);
    /// the mount goes away with the daemon's directory.
    pub data_root_bytes: Option<u64>,
    /// Which engine, with which image store.
    pub kind: DockerdKind,
}

/// The engine a [`Dockerd`] runs. Docker 26 answers 1.3–1.5 s after it starts on this
/// 2-core machine (20.10: 0.5–0.9 s here, with other builds running).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DockerdKind {
    /// Debian bookworm's docker.io 20.10 (or `P2PIMG_TEST_DOCKERD`) with a graph driver
    /// (`P2PIMG_TEST_STORAGE_DRIVER`, overlay2 unless set).
    #[default]
    Docker20,
    /// Docker 26 with its classic store: the overlay2 graph driver, images outside
    /// containerd.
    Docker26Classic,
    /// Docker 26 with the containerd image store (`"containerd-snapshotter": true` in
    /// daemon.json, the overlayfs snapshotter), in a containerd namespace of its own:
    /// image IDs are manifest digests there, and images can be read through
    /// [`Dockerd::containerd_socket`] in [`Dockerd::containerd_namespace`].
    Docker26Containerd,
}

impl DockerdKind {
    /// The dockerd binary to run.
    fn binary(self) -> String {
        match self {
            DockerdKind::Docker20 => std::env::var("P2PIMG_TEST_DOCKERD").unwrap_or_else(|_| DOCKERD.into()),
            _ => std::env::var("P2PIMG_TEST_DOCKERD26").unwrap_or_else(|_| DOCKERD26.into()),
        }
    }

    /// `--storage-driver`: a graph driver, or with the containerd store a snapshotter
    /// (Docker 26 takes `overlay2` there for a snapshotter name and fails to unpack:
    /// "snapshotter not loaded: overlay2").
    fn storage_driver(self) -> String {
        match self {
            DockerdKind::Docker20 => {
                std::env::var("P2PIMG_TEST_STORAGE_DRIVER").unwrap_or_else(|_| "overlay2".into())
            }
            DockerdKind::Docker26Classic => "overlay2".into(),
            DockerdKind::Docker26Containerd => "overlayfs".into(),
        }
    }

    /// What to do when the binary is missing.
    fn install_hint(self) -> &'static str {
        match self {
            DockerdKind::Docker20 => "scripts/test.sh installs Debian's docker.io",
            _ => "scripts/fetch-dockerd26.sh installs it; scripts/test.sh runs that",
        }
    }
}

/// A running private dockerd. Dropping it stops the daemon and removes its directory.
#[derive(Debug)]
pub struct Dockerd {
    name: String,
    dir: PathBuf,
    socket: PathBuf,
    child: Child,
    kind: DockerdKind,
    /// The containerd namespace dockerd keeps its containers (and containerd-store
    /// images) in.
    namespace: String,
    /// False between [`Dockerd::stop`] or [`Dockerd::kill`] and [`Dockerd::restart`]:
    /// the child is reaped then, and its pid must not be signalled.
    running: bool,
}

impl Dockerd {
    /// Starts a daemon named `name` (used in its directory name and in messages) and
    /// waits until it answers. Panics, with the tail of its log, if it does not.
    pub fn start(name: &str) -> Dockerd {
        Dockerd::start_with(name, &DockerdOptions::default())
    }

    /// [`Dockerd::start`] with options.
    pub fn start_with(name: &str, opts: &DockerdOptions) -> Dockerd {
        reap_stale_once();
        let dir = make_dir(name);
        if let Some(bytes) = opts.data_root_bytes {
            mount_tmpfs(&dir.join("data"), bytes);
        }
        let socket = dir.join("docker.sock");
        let namespace = match opts.kind {
            DockerdKind::Docker26Containerd => namespace_for(&dir),
            _ => DEFAULT_NAMESPACE.to_string(),
        };
        let child = spawn_dockerd(&dir, &socket, opts.kind, &namespace);
        let mut d = Dockerd {
            name: name.to_string(),
            dir,
            socket,
            child,
            kind: opts.kind,
            namespace,
            running: true,
        };
        d.wait_ready();
        d
    }

    /// Stops the daemon as `systemctl stop docker` would (SIGTERM, containers stopped,
    /// then its containerd); its data stays for [`Dockerd::restart`].
    pub fn stop(&mut self) {
        if self.running {
            self.stop_daemon();
            kill_all_referring_to(&self.dir);
            self.running = false;
        }
    }

    /// Kills the daemon and its containerd at once (SIGKILL), as a crash would; its
    /// data stays for [`Dockerd::restart`].
    pub fn kill(&mut self) {
        if self.running {
            let _ = self.child.kill();
            let _ = self.child.wait();
            kill_all_referring_to(&self.dir);
            self.running = false;
        }
    }

    /// Freezes dockerd (SIGSTOP), as a hung engine: it accepts connections but answers
    /// nothing, until the returned guard is dropped (SIGCONT).
    pub fn pause(&self) -> Paused {
        super::process::signal(self.pid(), super::process::SIGSTOP);
        Paused(self.pid())
    }

    /// Starts the daemon again on the same data, socket and log, and waits until it
    /// answers. Stops it first if it runs.
    pub fn restart(&mut self) {
        self.stop();
        unmount_under(&self.dir.join("exec"));
        // The killed containerd may linger as a zombie (this machine's init does not
        // always reap orphans), and dockerd would take its pid file for a live one.
        let _ = fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
        self.child = spawn_dockerd(&self.dir, &self.socket, self.kind, &self.namespace);
        self.running = true;
        self.wait_ready();
    }

    /// Starts `n` daemons named `<prefix>1` … `<prefix>n` in parallel (about 0.1 s each on
    /// an idle machine, so 8 start in well under a second).
    pub fn start_many(prefix: &str, n: usize) -> Vec<Dockerd> {
        Dockerd::start_many_with(prefix, n, |_| DockerdOptions::default())
    }

    /// [`Dockerd::start_many`] with options for daemon `i` (1-based) from `opts(i)`.
    pub fn start_many_with(
        prefix: &str,
        n: usize,
        opts: impl Fn(usize) -> DockerdOptions + Sync,
    ) -> Vec<Dockerd> {
        let opts = &opts;
        thread::scope(|s| {
            let starts: Vec<_> = (1..=n)
                .map(|i| s.spawn(move || Dockerd::start_with(&format!("{prefix}{i}"), &opts(i))))
                .collect();
            starts
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    /// The daemon's name, as given to [`Dockerd::start`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `unix:///tmp/p2pimg-test-…/docker.sock`: the value for `docker -H` or an agent's
    /// `docker_host`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's private directory (data, exec-root, log). Scratch space for a test
    /// that must be on the same filesystem lives here too and goes away with the daemon.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The dockerd process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The engine it runs.
    pub fn kind(&self) -> DockerdKind {
        self.kind
    }

    /// The socket of the containerd this dockerd started and manages
    /// (`EXEC_ROOT/containerd/containerd.sock`); `ctr -a` or a containerd client reads
    /// the containerd image store through it. Gone while the daemon is stopped.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("exec/containerd/containerd.sock")
    }

    /// The containerd namespace of its containers and, with
    /// [`DockerdKind::Docker26Containerd`], of its images: `p2pimg-XXXXXX`, unique per
    /// daemon; `moby` for the other kinds, whose images are not in containerd.
    pub fn containerd_namespace(&self) -> &str {
        &self.namespace
    }

    /// `driver-type` from `docker info`'s driver status: [`CONTAINERD_STORE`] when
    /// images live in containerd; `None` for a graph driver, which has no such line.
    pub fn driver_type(&self) -> Option<String> {
        let json = self.docker_ok(["info", "--format", "{{json .DriverStatus}}"]);
        let status: Vec<(String, String)> = serde_json::from_str::<Option<_>>(&json)
            .unwrap_or_else(|e| panic!("bad driver status {json:?}: {e}"))
            .unwrap_or_default();
        status
            .into_iter()
            .find(|(k, _)| k == "driver-type")
            .map(|(_, v)| v)
    }

    /// Whether the daemon says it runs the containerd image store.
    pub fn uses_containerd_store(&self) -> bool {
        self.driver_type().as_deref() == Some(CONTAINERD_STORE)
    }

    /// A `docker -H <this daemon>` command, isolated from the user's docker
    /// environment, to add arguments and stdio to (for pipes).
    pub fn docker_cmd(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(self.host())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .env("DOCKER_CLI_HINTS", "false");
        cmd
    }

    /// Runs the docker CLI against this daemon with no stdin; returns its output
    /// whatever the exit status.
    pub fn docker<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        process::cli_output(self.docker_cmd(), args, DOCKER_TIMEOUT_SECS)
    }

    /// Runs the docker CLI and panics unless it succeeds; returns trimmed stdout.
    pub fn docker_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let label = format!("docker ({})", self.name);
        process::cli_ok(
            &label,
            self.docker_cmd(),
            args.into_iter().collect(),
            DOCKER_TIMEOUT_SECS,
        )
    }

    /// The image ID (`sha256:…`) of `reference` on this daemon, or `None` if the daemon
    /// has no such image. Panics on any other error (daemon down…).
    pub fn image_id(&self, reference: &str) -> Option<String> {
        let out = self.docker(["image", "inspect", "--format", "{{.Id}}", reference]);
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.to_lowercase().contains("no such image") {
            return None;
        }
        panic!("docker ({}) image inspect {reference} failed: {err}", self.name)
    }

    /// The diffIDs of the layers of `reference`, bottom first. Panics if it is absent.
    pub fn layers(&self, reference: &str) -> Vec<String> {
        let json = self.docker_ok([
            "image",
            "inspect",
            "--format",
            "{{json .RootFS.Layers}}",
            reference,
        ]);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("bad layer list {json:?}: {e}"))
    }

    /// Copies `reference` from this daemon to `to` with `docker save | docker load`.
    pub fn copy_image_to(&self, to: &Dockerd, reference: &str) {
        let save_err = self.dir.join(format!("save-{}.err", unique_suffix()));
        let mut save = self
            .docker_cmd()
            .args(["save", reference])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&save_err).expect("create save stderr file"))
            .spawn()
            .expect("start docker save");
        let mut load = to.docker_cmd();
        load.args(["load"])
            .stdin(save.stdout.take().expect("save stdout"));
        let loaded = run_with_timeout(&mut load, DOCKER_TIMEOUT_SECS);
        let saved = save.wait().expect("wait for docker save");
        let err = fs::read_to_string(&save_err).unwrap_or_default();
        let _ = fs::remove_file(&save_err);
        assert!(
            saved.success(),
            "docker ({}) save {reference} failed ({saved}): {err}",
            self.name
        );
        check(&format!("docker ({}) load of {reference}", to.name), &loaded);
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.join("dockerd.log"), lines)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !ping(&self.socket) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "dockerd {} exited ({status}) before answering on {}; log tail:\n{}",
                    self.name,
                    self.socket.display(),
                    self.log_tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "dockerd {} did not answer on {} within {START_TIMEOUT:?}; log tail:\n{}",
                self.name,
                self.socket.display(),
                self.log_tail(30)
            );
            thread::sleep(Duration::from_millis(25));
        }
    }
}

/// A dockerd frozen by [`Dockerd::pause`]: SIGCONT when dropped, so a failing test
/// never leaves a daemon that cannot be stopped.
pub struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        super::process::signal(self.0, super::process::SIGCONT);
    }
}

impl Drop for Dockerd {
    /// Shutdown order: kill running containers, SIGTERM dockerd (it stops containers, then its containerd), SIGKILL
    /// it once that is done or after `STOP_TIMEOUT`, SIGKILL whatever still names the
    /// directory (containerd, shims), detach leftover mounts, remove the directory.
    /// Never panics.
    fn drop(&mut self) {
        if self.running {
            self.kill_containers();
            self.stop_daemon();
        }
        remove_daemon_dir(&self.dir);
    }
}

impl Dockerd {
    /// dockerd gives each running container its own stop timeout (10 s by default,
    /// whatever `--shutdown-timeout` says), and busybox as PID 1 ignores SIGTERM: kill
    /// leftover containers first so a drop never waits for them.
    fn kill_containers(&self) {
        let any = fs::read_dir(self.dir.join("data/containers")).is_ok_and(|mut d| d.next().is_some());
        if !any {
            return;
        }
        let Some(ids) = self.try_docker(&["ps", "-q"]) else {
            return;
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            self.try_docker(&[&["kill"], &ids[..]].concat());
        }
    }

    /// The docker CLI for use in drop: stdout if it succeeded within 20 s, else `None`.
    fn try_docker(&self, args: &[&str]) -> Option<String> {
        let mut child = self
            .docker_cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let status = process::wait_deadline(&mut child, Duration::from_secs(20));
        if !status.is_some_and(|s| s.success()) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        let mut out = String::new();
        child.stdout.take()?.read_to_string(&mut out).ok()?;
        Some(out)
    }

    fn stop_daemon(&mut self) {
        let containerd = fs::read_to_string(self.dir.join("exec/containerd/containerd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        signal(self.child.id(), SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while let Ok(None) = self.child.try_wait() {
            let done =
                containerd.is_some_and(|pid| !is_alive(pid)) && self.log_tail(40).contains(SHUTDOWN_COMPLETE);
            if done || Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Creates `/tmp/p2pimg-test-<name>-XXXXXX` and marks it as owned by this process.
pub(super) fn make_dir(name: &str) -> PathBuf {
    let short: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(16)
        .collect();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{short}-"))
        .rand_bytes(6)
        .tempdir_in(ROOT)
        .unwrap_or_else(|e| panic!("cannot create a daemon directory in {ROOT}: {e}"))
        .keep();
    fs::write(dir.join(OWNER_FILE), std::process::id().to_string()).expect("write owner file");
    dir
}

/// `p2pimg-<the directory's random suffix>`: unique among live daemons (the directory
/// exists), and a valid
/// containerd namespace (letters, digits, single `-` between them).
fn namespace_for(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix: String = name
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("p2pimg-{suffix}")
}

fn spawn_dockerd(dir: &Path, socket: &Path, kind: DockerdKind, namespace: &str) -> Child {
    // Containerd's debug socket is the longest path the daemon binds.
    let longest = dir.join("exec/containerd/containerd-debug.sock");
    assert!(
        longest.as_os_str().len() < 108,
        "socket path too long: {}",
        longest.display()
    );
    // The config file isolates the daemon from /etc/docker/daemon.json, and its
    // `deprecated-key-path` (a config key, not a flag, in 20.10) keeps the daemon's
    // identity key out of the shared /etc/docker/key.json that parallel daemons would race
    // to create (Docker 26 accepts and ignores it).
    let mut config = serde_json::json!({ "deprecated-key-path": dir.join("key.json") });
    if kind == DockerdKind::Docker26Containerd {
        config["features"] = serde_json::json!({ "containerd-snapshotter": true });
    }
    fs::write(dir.join("daemon.json"), config.to_string()).expect("write daemon.json");
    // Appended to: a restarted daemon keeps one log.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("dockerd.log"))
        .expect("open dockerd.log");
    let bin = kind.binary();
    let driver = kind.storage_driver();
    let mut cmd = Command::new(&bin);
    if kind != DockerdKind::Docker20 {
        // Its own docker-proxy first; containerd, runc and docker-init from the system.
        let beside = Path::new(&bin).parent().unwrap_or(Path::new("/"));
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", beside.display()));
        cmd.arg("--containerd-namespace")
            .arg(namespace)
            .arg("--containerd-plugins-namespace")
            .arg(format!("{namespace}-plugins"));
    }
    cmd.arg("--config-file")
        .arg(dir.join("daemon.json"))
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("--pidfile")
        .arg(dir.join("docker.pid"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
        .args([
            "--storage-driver",
            &driver,
            "--shutdown-timeout",
            SHUTDOWN_TIMEOUT_SECS,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e} ({})", kind.install_hint()))
}

/// Mounts a tmpfs of `bytes` on `dir` (created). Root only, as every daemon here is.
pub fn mount_tmpfs(dir: &Path, bytes: u64) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let mut cmd = Command::new("mount");
    cmd.args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .stdin(Stdio::null());
    check(
        &format!("mount tmpfs on {}", dir.display()),
        &run_with_timeout(&mut cmd, 30),
    );
}

/// True if the daemon answers `GET /_ping` with 200 on its socket.
pub(super) fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.") && reply.lines().next().is_some_and(|l| l.contains(" 200 "))
}

/// Kills what is left of a daemon, unmounts and removes its directory. Never panics.
pub(super) fn remove_daemon_dir(dir: &Path) {
    kill_all_referring_to(dir);
    unmount_under(dir);
    if let Err(e) = fs::remove_dir_all(dir) {
        eprintln!("harness: cannot remove {}: {e}", dir.display());
    }
}

/// Once per test process: removes daemon directories (and kills their processes) left by
/// test processes that died without dropping their daemons (a timeout, a SIGKILL).
pub(super) fn reap_stale_once() {
    static REAP: Once = Once::new();
    REAP.call_once(|| {
        let Ok(entries) = fs::read_dir(ROOT) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with(PREFIX) && is_orphan(&e.path()) {
                eprintln!("harness: reaping stale {}", e.path().display());
                remove_daemon_dir(&e.path());
            }
        }
    });
}

fn is_orphan(dir: &Path) -> bool {
    match fs::read_to_string(dir.join(OWNER_FILE)) {
        Ok(pid) => pid.trim().parse().is_ok_and(|pid: u32| !is_alive(pid)),
        Err(_) => fs::metadata(dir)
            .and_then(|m| m.modified())
            .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > ORPHAN_AGE),
    }
}

/// The last `lines` lines of a text file ("" if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A suffix unique within this process, for scratch files in a shared directory.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
