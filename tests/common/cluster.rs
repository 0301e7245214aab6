//! [`Cluster`]: a seed engine plus N nodes, each a private dockerd with a real
//! `p2pimg agent` on a loopback port the OS chose, a cluster CA, and a nodes.toml;
//! and [`Push`], one run of `p2pimg push --json` with its parsed report.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

use super::process::{run_ok, run_with_timeout};
use super::{Agent, AgentConfig, Dockerd};

/// Longest a push in these tests may take before the test fails.
pub const PUSH_TIMEOUT_SECS: u64 = 300;

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

/// A local cluster for one test.
pub struct Cluster {
    pub bin: PathBuf,
    pub dir: TempDir,
    pub seed: Dockerd,
    pub nodes: Vec<Node>,
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
        let dir = tempfile::Builder::new()
            .prefix("p2pimg-cluster-")
            .tempdir()
            .expect("temp dir");
        let ca = dir.path().join("ca");
        run_ok(Command::new(bin).args(["init", "--dir"]).arg(&ca), 30);
        let mut engines = Dockerd::start_many("node", n + 1);
        let seed = engines.remove(0);
        let nodes = engines
            .into_iter()
            .enumerate()
            .map(|(i, engine)| start_node(bin, dir.path(), &format!("n{}", i + 1), engine))
            .collect();
        let cluster = Cluster {
            bin: bin.to_path_buf(),
            dir,
            seed,
            nodes,
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

    /// Starts node `i`'s agent again (on a new port) and rewrites nodes.toml.
    pub fn restart_agent(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.agent = Agent::start(&self.bin, &node.config);
        self.write_inventory();
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

    /// The command `p2pimg push IMAGES` from the seed engine to every node,
    /// plus `extra` arguments.
    pub fn push_command(&self, images: &[&str], extra: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("push").args(images).arg("--nodes").arg(self.nodes_toml());
        if !extra.contains(&"--cluster-dir") {
            cmd.arg("--cluster-dir").arg(self.ca_dir());
        }
        if !extra.contains(&"--docker-host") {
            cmd.args(["--docker-host", &self.seed.host()]);
        }
        cmd.args(extra);
        cmd
    }

    /// `p2pimg push IMAGES --json` from the seed engine, plus `extra` arguments.
    pub fn push(&self, images: &[&str], extra: &[&str]) -> Push {
        let mut cmd = self.push_command(images, &[&["--json"], extra].concat());
        let out = run_with_timeout(&mut cmd, PUSH_TIMEOUT_SECS);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "report")
            .map(|v| v["report"].clone());
        Push {
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            report,
        }
    }

    /// All agents' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}\n", n.name, n.agent.log()))
            .collect()
    }
}

fn start_node(bin: &Path, dir: &Path, name: &str, engine: Dockerd) -> Node {
    let ca = dir.join("ca");
    run_ok(
        Command::new(bin).args(["cert", "issue", name, "--dir"]).arg(&ca),
        30,
    );
    let node_dir = dir.join(name);
    fs::create_dir_all(&node_dir).expect("node dir");
    let config = AgentConfig {
        name: name.to_string(),
        listen: "127.0.0.1:0".into(),
        state_dir: node_dir.join("state"),
        docker_host: engine.host(),
        ca: ca.join("ca.crt"),
        cert: ca.join(format!("{name}.crt")),
        key: ca.join(format!("{name}.key")),
    };
    let path = node_dir.join("agent.toml");
    config.write(&path);
    let agent = Agent::start(bin, &path);
    Node {
        name: name.to_string(),
        engine,
        agent,
        config: path,
        state_dir: config.state_dir,
    }
}

impl Push {
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
