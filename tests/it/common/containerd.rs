//! A private containerd per test: its own root, state, sockets and log under a fresh
//! `/tmp/p2pimg-test-*` directory, stopped and removed on drop, and `ctr` pointed at it.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::dockerd::{log_tail, make_dir};
use super::process::{self, kill_all_referring_to, terminate, unmount_under};

/// Debian's containerd 1.6; `P2PIMG_TEST_CONTAINERD` overrides it.
const CONTAINERD: &str = "/usr/bin/containerd";

/// How long containerd may take to answer on its socket: about 0.1 s idle; parallel
/// tests and builds on 2 cores slow it a lot.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long containerd may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Limit for one `ctr` command: a `ctr run` of busybox takes well under a second.
pub const CTR_TIMEOUT_SECS: u64 = 120;

/// Plugins this machine cannot run or the tests do not need: CRI (it would start a
/// stream server and look for CNI) and the snapshotters that need a device or a
/// filesystem of their own (devmapper fails to load without configuration).
const DISABLED_PLUGINS: &str = r#"["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs"]"#;

/// A running private containerd. Dropping it stops the daemon and removes its directory.
#[derive(Debug)]
pub struct Containerd {
    name: String,
    dir: PathBuf,
    socket: PathBuf,
    child: Child,
}

impl Containerd {
    /// Starts a containerd named `name` (used in its directory name and messages) and
    /// waits until it answers. Panics, with the tail of its log, if it does not.
    pub fn start(name: &str) -> Containerd {
        // `/tmp/p2pimg-test-ctd-NAME-XXXXXX`, owned by this process: the dockerd
        // harness's reaper removes it if the test process dies without dropping it.
        let dir = make_dir(&format!("ctd-{name}"));
        let socket = dir.join("c.sock");
        let config = write_config(&dir, &socket);
        let child = spawn(&dir, &config);
        let mut c = Containerd {
            name: name.to_string(),
            dir,
            socket,
            child,
        };
        c.wait_ready();
        c
    }

    /// `unix:///tmp/p2pimg-test-…/c.sock`: the value for an agent's `engine_host`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `ctr` against this daemon in `namespace`, ignoring the caller's environment.
    fn ctr_cmd(&self, namespace: &str) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(&self.socket).args(["-n", namespace]);
        cmd.env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        cmd
    }

    /// Like [`Containerd::ctr`], but panics unless it succeeds; returns trimmed stdout.
    pub fn ctr_ok<I, S>(&self, namespace: &str, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let label = format!("ctr ({}) -n {namespace}", self.name);
        process::cli_ok(
            &label,
            self.ctr_cmd(namespace),
            args.into_iter().collect(),
            CTR_TIMEOUT_SECS,
        )
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.join("containerd.log"), lines)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while UnixStream::connect(&self.socket).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "containerd {} exited ({status}) before listening on {}; log tail:\n{}",
                    self.name,
                    self.socket.display(),
                    self.log_tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "containerd {} did not listen on {} within {START_TIMEOUT:?}; log tail:\n{}",
                self.name,
                self.socket.display(),
                self.log_tail(30)
            );
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Containerd {
    /// Shutdown order: SIGTERM containerd (SIGKILL after `STOP_TIMEOUT`), SIGKILL
    /// whatever still names the directory (shims, containers), detach leftover mounts,
    /// remove the directory. Never panics.
    fn drop(&mut self) {
        terminate(&mut self.child, STOP_TIMEOUT);
        kill_all_referring_to(&self.dir);
        unmount_under(&self.dir);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("harness: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Writes the daemon's config.toml: everything it writes or binds is under `dir`.
fn write_config(dir: &Path, socket: &Path) -> PathBuf {
    let at = |name: &str| dir.join(name).display().to_string();
    let config = format!(
        "version = 2\nroot = {root:?}\nstate = {state:?}\ndisabled_plugins = {DISABLED_PLUGINS}\n\
         [grpc]\n  address = {grpc:?}\n[ttrpc]\n  address = {ttrpc:?}\n[debug]\n  address = {debug:?}\n",
        root = at("root"),
        state = at("state"),
        grpc = socket.display().to_string(),
        ttrpc = at("c.sock.ttrpc"),
        debug = at("debug.sock"),
    );
    let path = dir.join("config.toml");
    fs::write(&path, config).expect("write containerd config.toml");
    path
}

fn spawn(dir: &Path, config: &Path) -> Child {
    let log = fs::File::create(dir.join("containerd.log")).expect("create containerd.log");
    let bin = std::env::var("P2PIMG_TEST_CONTAINERD").unwrap_or_else(|_| CONTAINERD.to_string());
    Command::new(&bin)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (install Debian's containerd)"))
}
