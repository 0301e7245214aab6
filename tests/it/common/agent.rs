//! A running `p2pimg agent` process: started from the built binary, ready once it prints
//! `listening on IP:PORT`, its stdout and stderr drained into a log file, killed on drop.
//! Also writes the agent.toml it reads.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::process::{terminate, wait_deadline};

/// How long an agent may take to print `listening on`: it only binds a port and reads
/// its certificates, so seconds mean something is wrong.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`Agent::stop`] gives the agent to shut down cleanly before killing it.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The line prefix the agent prints once its endpoint is bound.
const READY_PREFIX: &str = "listening on ";

/// A running agent. Dropping it kills the process.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    drains: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Runs `<bin> agent --config <config_path>` and waits (20 s) for its
    /// `listening on IP:PORT` line. Output goes to `<config_path minus .toml>.log`,
    /// appended to, so a restarted agent keeps one log. Panics with the log on failure.
    ///
    /// In an integration test, `bin` is `Path::new(env!("CARGO_BIN_EXE_p2pimg"))`.
    pub fn start(bin: &Path, config_path: &Path) -> Agent {
        Agent::start_command(Command::new(bin), bin, config_path)
    }

    /// Runs `cmd` (the agent binary `bin`, perhaps under a wrapper that execs it, such as
    /// [`crate::common::Net::command`], with the environment the test chose) with
    /// `agent --config <config_path>`.
    pub fn start_command(mut cmd: Command, bin: &Path, config_path: &Path) -> Agent {
        let log_path = config_path.with_extension("log");
        let log = open_log(&log_path, bin, config_path);
        let mut child = cmd
            .args(["agent", "--config"])
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let out = child.stdout.take().expect("agent stdout");
        let err = child.stderr.take().expect("agent stderr");
        let drains = vec![
            drain_lines(out, "", log.clone(), Some(ready_tx)),
            drain_lines(err, "stderr: ", log, None),
        ];
        let mut agent = Agent {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log_path,
            drains,
        };
        agent.addr = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(RecvTimeoutError::Timeout) => agent.fail("did not print `listening on` within 20 s"),
            Err(RecvTimeoutError::Disconnected) => agent.fail("closed stdout without `listening on`"),
        };
        agent
    }

    /// The address from the agent's `listening on` line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the agent's stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything in the log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The agent's metrics (Prometheus text), fetched from the address it printed
    /// (`metrics on http://ADDR/metrics`; its agent.toml must set `metrics_listen`).
    pub fn metrics(&self) -> String {
        let log = self.log();
        let url = log
            .lines()
            .find_map(|l| l.split("metrics on http://").nth(1))
            .unwrap_or_else(|| panic!("the agent printed no metrics address:\n{log}"));
        let addr = url.trim().trim_end_matches("/metrics");
        let mut conn = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send the metrics request");
        let mut response = String::new();
        conn.read_to_string(&mut response).expect("read the metrics");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// The value of metric `name` (a line `name VALUE`), or a panic.
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.metrics();
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`: the peak resident size).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("agent status");
        let prefix = format!("{field}:");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in:\n{status}"))
    }

    /// The exit status if the agent has exited, `None` while it runs.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the agent at once (SIGKILL), as a crash or a power cut would. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_drains();
    }

    /// Stops the agent politely: SIGTERM, up to 10 s, then SIGKILL. Returns how it ended.
    pub fn stop(&mut self) -> ExitStatus {
        let status = terminate(&mut self.child, STOP_GRACE);
        self.join_drains();
        status
    }

    fn join_drains(&mut self) {
        for h in self.drains.drain(..) {
            let _ = h.join();
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        // Give an exiting agent a moment to finish writing its last words.
        let status = wait_deadline(&mut self.child, Duration::from_secs(2));
        self.kill();
        let status = status.map_or("killed by the harness".to_string(), |s| s.to_string());
        panic!(
            "agent {what} ({status}); log {}:\n{}",
            self.log_path.display(),
            self.log()
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Opens the log for appending and writes a header naming this start.
fn open_log(path: &Path, bin: &Path, config: &Path) -> Arc<Mutex<File>> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open agent log {}: {e}", path.display()));
    let header = format!(
        "=== harness: {} agent --config {}\n",
        bin.display(),
        config.display()
    );
    f.write_all(header.as_bytes()).expect("write agent log");
    Arc::new(Mutex::new(f))
}

/// Copies `pipe` line by line into `log` (each line prefixed) until EOF. If `ready` is
/// given, sends the address of the first `listening on` line to it.
fn drain_lines(
    pipe: impl Read + Send + 'static,
    prefix: &'static str,
    log: Arc<Mutex<File>>,
    mut ready: Option<Sender<SocketAddr>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Ok(mut f) = log.lock() {
                let _ = writeln!(f, "{prefix}{line}");
            }
            if let Some(addr) = ready.as_ref().and_then(|_| parse_listening(line)) {
                let _ = ready.take().map(|tx| tx.send(addr));
            }
            raw.clear();
        }
    })
}

/// The address in a `listening on IP:PORT` line (anything after the address ignored).
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(READY_PREFIX)? + READY_PREFIX.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Every chunk file under an agent's state directory, sorted (none before the agent
/// created its store).
pub fn chunk_files(state_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(dirs) = fs::read_dir(state_dir.join("chunks")) else {
        return files;
    };
    for dir in dirs {
        for f in fs::read_dir(dir.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
}

/// The keys of an agent.toml. Relative paths in it are resolved by the agent from the
/// file's directory.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Node name, as in nodes.toml and the node's certificate.
    pub name: String,
    /// `ip:port` to bind; port 0 lets the OS choose (read it back with [`Agent::addr`]).
    pub listen: String,
    /// Chunk store and records.
    pub state_dir: PathBuf,
    /// `unix:///…/docker.sock` of the node's engine ([`super::Dockerd::host`]).
    pub docker_host: String,
    /// Cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl AgentConfig {
    /// Writes the config as TOML to `path`.
    pub fn write(&self, path: &Path) {
        let mut s = String::new();
        for (k, v) in [
            ("name", self.name.clone()),
            ("listen", self.listen.clone()),
            ("state_dir", self.state_dir.display().to_string()),
            ("docker_host", self.docker_host.clone()),
            ("ca", self.ca.display().to_string()),
            ("cert", self.cert.display().to_string()),
            ("key", self.key.display().to_string()),
        ] {
            s.push_str(&format!("{k} = {}\n", toml_string(&v)));
        }
        fs::write(path, s).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// A TOML basic string. JSON string escapes are valid TOML basic-string escapes.
pub fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}
