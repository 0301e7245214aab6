//! [`Cluster`]: a seed engine plus N nodes, each a private dockerd with a real
//! `p2pimg agent` on a loopback port the OS chose, a cluster CA, and a nodes.toml;
//! and [`Push`], one run of `p2pimg push --json` with its parsed report.
//!
//! With [`ClusterOptions::netns`], each agent runs in a network namespace of its own
//! (host `i` of a [`Net`] for node `ni`) and the pusher in host 0; the engines stay in
//! the root namespace, reached through their unix sockets.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::process::{run_ok, run_with_timeout, signal, SIGKILL};
use super::{Agent, AgentConfig, Dockerd, DockerdOptions, Net};

/// Longest a push in these tests may take before the test fails.
pub const PUSH_TIMEOUT_SECS: u64 = 300;

/// The environment variable through which a debug build of `p2pimg` takes shortened
/// timeouts (`net::TEST_ENV` in the library; this harness drives the binary only).
pub const TIMEOUTS_ENV: &str = "P2PIMG_TEST_TIMEOUTS";

/// Timeouts for tests that wait for a link to be declared dead, in milliseconds: the
/// product's are 10 s connect, 5 s keep-alive, 30 s idle, a 30 s redial window and an 8 s
/// seed stall fallback. A dial still has ample time on a loaded 2-core machine; the seed
/// still routes around a dead node well before its connection times out; and the idle
/// timeout and redial window still outlast a healthy node's push with a dead peer
/// (netns: 3 s start grace, the transfer, the stall fallback, the load: about 11 s), so
/// a test can tell "failed" from "held up".
pub const SHORT_TIMEOUTS: &str = "connect=2000,keep_alive=1000,idle=12000,reach=16000,seed_stall=1000";

/// A node: its engine and its agent.
pub struct Node {
    pub name: String,
    pub engine: Dockerd,
    pub agent: Agent,
    /// Its agent.toml.
    pub config: PathBuf,
    /// Its agent's state directory.
    pub state_dir: PathBuf,
}

/// How to start a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// TOML lines added to every agent.toml.
    pub agent_toml: String,
    /// Run the pusher and each agent on a host of their own ([`Net`]).
    pub netns: bool,
    /// Engine options: `engine(0)` for the seed, `engine(i)` for node `ni`.
    pub engine: fn(usize) -> DockerdOptions,
    /// Timeouts given to the pusher and every agent ([`TIMEOUTS_ENV`], such as
    /// [`SHORT_TIMEOUTS`]); the product's when `None`.
    pub timeouts: Option<&'static str>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            agent_toml: String::new(),
            netns: false,
            engine: |_| DockerdOptions::default(),
            timeouts: None,
        }
    }
}

/// A local cluster for one test. Fields drop in order: the agents go before the
/// network namespaces they run in.
pub struct Cluster {
    pub bin: PathBuf,
    pub dir: TempDir,
    pub seed: Dockerd,
    pub nodes: Vec<Node>,
    /// The hosts, with [`ClusterOptions::netns`]: 0 is the pusher's, `i` node `i - 1`'s.
    pub net: Option<Net>,
    /// [`ClusterOptions::timeouts`].
    pub timeouts: Option<&'static str>,
}

/// One finished `p2pimg push --json`.
pub struct Push {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The final report object (`{"event":"report"}` line), if printed.
    pub report: Option<Value>,
}

impl Cluster {
    /// Starts `n` nodes n1..nN and a seed engine, and a cluster CA in a temp dir.
    pub fn start(bin: &Path, n: usize) -> Cluster {
        Cluster::start_with(bin, n, &ClusterOptions::default())
    }

    /// Like [`Cluster::start`], with options.
    pub fn start_with(bin: &Path, n: usize, opts: &ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("p2pimg-cluster-")
            .tempdir()
            .expect("temp dir");
        let ca = dir.path().join("ca");
        run_ok(Command::new(bin).args(["init", "--dir"]).arg(&ca), 30);
        let mut engines = Dockerd::start_many_with("node", n + 1, |i| (opts.engine)(i - 1));
        let seed = engines.remove(0);
        let net = opts.netns.then(|| Net::new(n + 1));
        let nodes = engines
            .into_iter()
            .enumerate()
            .map(|(i, engine)| {
                let listen = match &net {
                    Some(net) => format!("{}:0", net.addr(i + 1)),
                    None => "127.0.0.1:0".to_string(),
                };
                let name = format!("n{}", i + 1);
                let config = write_node_config(bin, dir.path(), &name, &engine, &listen, &opts.agent_toml);
                let agent = start_agent(bin, net.as_ref(), i, &config.path, opts.timeouts);
                Node {
                    name,
                    engine,
                    agent,
                    config: config.path,
                    state_dir: config.state_dir,
                }
            })
            .collect();
        let cluster = Cluster {
            bin: bin.to_path_buf(),
            dir,
            seed,
            nodes,
            net,
            timeouts: opts.timeouts,
        };
        cluster.write_inventory();
        cluster
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn nodes_toml(&self) -> PathBuf {
        self.dir.path().join("nodes.toml")
    }

    /// Stops node `i`'s agent; `restart_agent` starts it again on the same state.
    pub fn stop_agent(&mut self, i: usize) {
        self.nodes[i].agent.stop();
    }

    /// Starts node `i`'s agent again (on a new port) and rewrites nodes.toml. One still
    /// running is stopped first: two agents cannot share a state directory.
    pub fn restart_agent(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.agent.try_exit_status().is_none() {
            node.agent.stop();
        }
        node.agent = start_agent(&self.bin, self.net.as_ref(), i, &node.config, self.timeouts);
        self.write_inventory();
    }

    /// Points node `i`'s agent at another engine: agent.toml's `docker_host` line becomes
    /// `engine` (such as `engine = "podman"\nengine_host = "unix:///…"`), and the agent
    /// restarts on it. The node's own dockerd stays up, unused.
    pub fn use_engine(&mut self, i: usize, engine: &str) {
        let config = &self.nodes[i].config;
        let text = fs::read_to_string(config).expect("read agent.toml");
        let text: String = text
            .lines()
            .map(|l| match l.starts_with("docker_host") {
                true => format!("{}\n", engine.trim_end()),
                false => format!("{l}\n"),
            })
            .collect();
        fs::write(config, text).expect("write agent.toml");
        self.restart_agent(i);
    }

    /// The network, which [`ClusterOptions::netns`] asks for.
    pub fn net(&self) -> &Net {
        self.net.as_ref().expect("a cluster started with netns")
    }

    /// Node `i`'s host in [`Cluster::net`].
    pub fn host_of(i: usize) -> usize {
        i + 1
    }

    fn write_inventory(&self) {
        let mut s = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            // A label for selector tests: n1, n3, … are odd; n2, n4, … even.
            let parity = if i % 2 == 0 { "odd" } else { "even" };
            s.push_str(&format!(
                "[[node]]\nname = \"{}\"\naddr = \"{}\"\nlabels = {{ parity = \"{parity}\" }}\n\n",
                node.name,
                node.agent.addr()
            ));
        }
        fs::write(self.nodes_toml(), s).expect("write nodes.toml");
    }

    /// `p2pimg push IMAGES --json` from the seed engine, plus `extra` arguments.
    pub fn push(&self, images: &[&str], extra: &[&str]) -> Push {
        let mut cmd = self.push_command(images, &[&["--json"], extra].concat());
        let out = run_with_timeout(&mut cmd, PUSH_TIMEOUT_SECS);
        Push::new(
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The command `p2pimg push IMAGES` from the seed engine to every node, plus `extra`
    /// arguments (without `--json`: [`Cluster::push`] adds it; give it for [`Push::watch`]).
    pub fn push_command(&self, images: &[&str], extra: &[&str]) -> Command {
        let mut cmd = match &self.net {
            Some(net) => net.command(0, &self.bin),
            None => Command::new(&self.bin),
        };
        if let Some(timeouts) = self.timeouts {
            cmd.env(TIMEOUTS_ENV, timeouts);
        }
        cmd.arg("push").args(images).arg("--nodes").arg(self.nodes_toml());
        if !extra.contains(&"--cluster-dir") {
            cmd.arg("--cluster-dir").arg(self.ca_dir());
        }
        if !extra.contains(&"--docker-host") && !extra.contains(&"--engine-host") {
            cmd.args(["--docker-host", &self.seed.host()]);
        }
        cmd.args(extra);
        cmd
    }

    /// Panics, showing the push's output and every agent's log, unless `push` exited 0.
    pub fn assert_push_ok(&self, push: &Push) {
        assert_eq!(
            push.code,
            0,
            "push failed:\n{}\n{}\n{}",
            push.stdout,
            push.stderr,
            self.logs()
        );
    }

    /// All agents' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}\n", n.name, n.agent.log()))
            .collect()
    }
}

impl Node {
    /// Every chunk file in the node's store: one per distinct chunk it verified.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        super::chunk_files(&self.state_dir)
    }

    /// Panics unless the node's engine names each `(reference, image ID)` as given and
    /// holds no image besides these and `others` (image IDs): nothing half-loaded, no
    /// stray image.
    pub fn assert_holds_only(&self, expected: &[(&str, &str)], others: &[&str]) {
        for (reference, id) in expected {
            assert_eq!(
                self.engine.image_id(reference).as_deref(),
                Some(*id),
                "{} holds the wrong {reference}",
                self.name
            );
        }
        let listed = self.engine.docker_ok(["images", "-aq", "--no-trunc"]);
        for id in listed.lines() {
            let known = expected.iter().any(|(_, e)| *e == id) || others.contains(&id);
            assert!(known, "{} holds an unexpected image {id}:\n{listed}", self.name);
        }
    }
}

/// Node `i`'s agent, in its host of `net` if there is one, with `timeouts`
/// ([`TIMEOUTS_ENV`]) if given.
fn start_agent(bin: &Path, net: Option<&Net>, i: usize, config: &Path, timeouts: Option<&str>) -> Agent {
    let mut cmd = match net {
        Some(net) => net.command(Cluster::host_of(i), bin),
        None => Command::new(bin),
    };
    if let Some(timeouts) = timeouts {
        cmd.env(TIMEOUTS_ENV, timeouts);
    }
    Agent::start_command(cmd, bin, config)
}

/// Where a node's agent.toml went, and the state directory it names.
struct NodeConfig {
    path: PathBuf,
    state_dir: PathBuf,
}

/// Issues node `name`'s certificate and writes its agent.toml (plus `extra` lines).
fn write_node_config(
    bin: &Path,
    dir: &Path,
    name: &str,
    engine: &Dockerd,
    listen: &str,
    extra: &str,
) -> NodeConfig {
    let ca = dir.join("ca");
    run_ok(
        Command::new(bin).args(["cert", "issue", name, "--dir"]).arg(&ca),
        30,
    );
    let node_dir = dir.join(name);
    fs::create_dir_all(&node_dir).expect("node dir");
    let config = AgentConfig {
        name: name.to_string(),
        listen: listen.into(),
        state_dir: node_dir.join("state"),
        docker_host: engine.host(),
        ca: ca.join("ca.crt"),
        cert: ca.join(format!("{name}.crt")),
        key: ca.join(format!("{name}.key")),
    };
    let path = node_dir.join("agent.toml");
    config.write(&path);
    if !extra.is_empty() {
        let text = fs::read_to_string(&path).expect("read agent.toml") + extra + "\n";
        fs::write(&path, text).expect("write agent.toml");
    }
    NodeConfig {
        path,
        state_dir: config.state_dir,
    }
}

impl Push {
    fn new(code: i32, stdout: String, stderr: String) -> Push {
        let report = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "report")
            .map(|v| v["report"].clone());
        Push {
            code,
            stdout,
            stderr,
            report,
        }
    }

    /// Runs `cmd` ([`Cluster::push_command`]), calling `on_event` with each JSON event
    /// as the push prints it, so a test can inject a fault at a given point of the
    /// distribution. Kills the push after [`PUSH_TIMEOUT_SECS`].
    pub fn watch(mut cmd: Command, mut on_event: impl FnMut(&Value)) -> Push {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start p2pimg push");
        let pid = child.id();
        let finished = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let finished = finished.clone();
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(PUSH_TIMEOUT_SECS);
                while !finished.load(Ordering::Relaxed) {
                    if Instant::now() >= deadline {
                        eprintln!("harness: push ran over {PUSH_TIMEOUT_SECS} s; killing it");
                        signal(pid, SIGKILL);
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let mut err = child.stderr.take().expect("push stderr");
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let mut stdout = String::new();
        for line in BufReader::new(child.stdout.take().expect("push stdout")).lines() {
            let line = line.expect("read push output");
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                on_event(&event);
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let status = child.wait().expect("wait for push");
        finished.store(true, Ordering::Relaxed);
        let _ = watchdog.join();
        Push::new(
            status.code().unwrap_or(-1),
            stdout,
            stderr.join().unwrap_or_default(),
        )
    }

    /// Whether `event` is a progress event of node `name` saying it loads.
    pub fn is_loading(event: &Value, name: &str) -> bool {
        event["event"] == "progress" && event["node"] == name && event["progress"]["loading"] == true
    }

    /// The reasons node `name` gave in its progress events, in order.
    pub fn progress_reasons(&self, name: &str) -> Vec<String> {
        let events = self
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok());
        events
            .filter(|e| e["event"] == "progress" && e["node"] == name)
            .filter_map(|e| e["progress"]["reason"].as_str().map(String::from))
            .collect()
    }

    /// Whether `event` is node `name`'s plan.
    pub fn is_planned(event: &Value, name: &str) -> bool {
        event["event"] == "planned" && event["node"] == name
    }

    /// The report, or a panic showing what the push printed.
    pub fn report(&self) -> &Value {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("push printed no report:\n{}\n{}", self.stdout, self.stderr))
    }

    /// The report entry of node `name`.
    pub fn node(&self, name: &str) -> &Value {
        let nodes = self.report()["nodes"].as_array().expect("nodes array");
        nodes
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no node {name} in report"))
    }

    /// Bytes node `name` received from peer `from`.
    pub fn received(&self, name: &str, from: &str) -> u64 {
        let received = self.node(name)["received"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        received
            .iter()
            .filter(|r| r["peer"] == from)
            .map(|r| r["bytes"].as_u64().unwrap())
            .sum()
    }

    /// Chunks node `name` received in all, from any peer.
    pub fn received_chunks(&self, name: &str) -> u64 {
        let received = self.node(name)["received"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        received.iter().map(|r| r["chunks"].as_u64().unwrap()).sum()
    }

    /// Bytes node `name` received in all.
    pub fn received_total(&self, name: &str) -> u64 {
        let received = self.node(name)["received"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        received.iter().map(|r| r["bytes"].as_u64().unwrap()).sum()
    }

    /// Bytes the seed uploaded in all.
    pub fn seed_uploaded(&self) -> u64 {
        let up = self.report()["seed_uploaded"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        up.iter().map(|r| r["bytes"].as_u64().unwrap()).sum()
    }

    /// The status word of node `name` (loaded, skipped, failed).
    pub fn status(&self, name: &str) -> String {
        self.node(name)["status"]["status"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    }

    /// The failure reason of node `name`, or "".
    pub fn reason(&self, name: &str) -> String {
        self.node(name)["status"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}
