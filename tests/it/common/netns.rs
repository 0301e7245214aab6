//! [`Net`]: emulated hosts for tests that need a link to fail or slow down. Each host is
//! a network namespace with one interface, `eth0`, joined by a veth pair to a bridge in
//! a namespace of its own; nothing is attached to the root namespace, so traffic between
//! the hosts never leaves the namespaces the test created. Every `Net` has its own
//! bridge, so all use the same private subnet ([`SUBNET`]) without meeting.
//!
//! Faults: [`Net::cut`] / [`Net::restore`] take a host's bridge port down and up (its
//! packets go nowhere, as with a pulled cable); [`Net::shape`] limits a host's uplink
//! with `tc tbf`; [`Net::drop_randomly`] drops a share of its incoming packets with an
//! `iptables -m statistic` rule (this kernel has no netem).
//!
//! Names are `p2pt<pid>-<n>-br` and `p2pt<pid>-<n>-h<i>`: unique per test process and
//! `Net`. Dropping a `Net` deletes its namespaces (and so the veths and the bridge);
//! the next test process deletes those a dead one left behind.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use super::process::{is_alive, run_with_timeout};

/// The hosts' subnet, /24: host `i` is `.(i + 1)`. Private, and only ever configured
/// inside the namespaces of one `Net`.
pub const SUBNET: [u8; 3] = [10, 213, 0];

/// Prefix of every namespace this harness creates; the stale-namespace reaper looks
/// only at these.
const PREFIX: &str = "p2pt";

/// Longest a single `ip`, `tc` or `iptables` command may take.
const CMD_TIMEOUT_SECS: u64 = 30;

/// Hosts on a bridge. Dropping it deletes every namespace it created.
#[derive(Debug)]
pub struct Net {
    bridge: String,
    hosts: Vec<String>,
}

impl Net {
    /// Creates the bridge and `n` hosts, each with its address on `eth0`, all up.
    pub fn new(n: usize) -> Net {
        reap_stale_once();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            bridge: format!("{base}-br"),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &net.bridge]);
        ip(&["-n", &net.bridge, "link", "set", "lo", "up"]);
        ip(&["-n", &net.bridge, "link", "add", "br0", "type", "bridge"]);
        // No STP, no forwarding delay: ports forward at once.
        ip(&[
            "-n",
            &net.bridge,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        ip(&["-n", &net.bridge, "link", "set", "br0", "up"]);
        for i in 0..n {
            net.add_host(&base, i);
        }
        net
    }

    fn add_host(&mut self, base: &str, i: usize) {
        let ns = format!("{base}-h{i}");
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let port = port_name(i);
        ip(&[
            "link",
            "add",
            &port,
            "netns",
            &self.bridge,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        ip(&["-n", &self.bridge, "link", "set", &port, "master", "br0", "up"]);
        let cidr = format!("{}/24", self.addr(i));
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        let last = u8::try_from(i + 1).expect("at most 254 hosts");
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last)
    }

    /// A command that runs `program` inside host `i`'s namespace. nsenter, not `ip netns
    /// exec`: it execs the program (so the child's pid is the program's) and leaves /sys
    /// alone.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.hosts[i]))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Cuts host `i` off: its bridge port goes down, so nothing reaches it or leaves it.
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.bridge, "link", "set", &port_name(i), "down"]);
    }

    /// Undoes [`Net::cut`].
    pub fn restore(&self, i: usize) {
        ip(&["-n", &self.bridge, "link", "set", &port_name(i), "up"]);
    }

    /// Limits host `i`'s uplink (what it sends) to `mbit` Mbit/s with a token bucket
    /// (tbf) whose queue holds about 100 ms.
    pub fn shape(&self, i: usize, mbit: u64) {
        let rate = format!("{mbit}mbit");
        let limit = (mbit * 125_000 / 10).max(64 * 1024).to_string();
        tc(&[
            "-n",
            &self.hosts[i],
            "qdisc",
            "replace",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            &rate,
            "burst",
            "32kb",
            "limit",
            &limit,
        ]);
    }

    /// Drops each packet host `i` receives with probability `p`, with an iptables
    /// rule inside its namespace.
    pub fn drop_randomly(&self, i: usize, p: f64) {
        let mut cmd = self.command(i, "iptables");
        cmd.args([
            "-A",
            "INPUT",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
        ])
        .arg(format!("{p}"))
        .args(["-j", "DROP"])
        .stdin(Stdio::null());
        let out = run_with_timeout(&mut cmd, CMD_TIMEOUT_SECS);
        super::process::check("iptables statistic DROP rule", &out);
    }
}

impl Drop for Net {
    /// Deletes the hosts' namespaces, then the bridge's: the veths and the bridge go
    /// with them. Processes still inside keep their namespace alive until they exit.
    /// Never panics.
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.bridge]) {
            delete_ns(ns);
        }
    }
}

/// The bridge-side name of host `i`'s veth.
fn port_name(i: usize) -> String {
    format!("v{i}")
}

fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args).stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, CMD_TIMEOUT_SECS);
    super::process::check(&format!("ip {}", args.join(" ")), &out);
}

fn tc(args: &[&str]) {
    let mut cmd = Command::new("tc");
    cmd.args(args).stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, CMD_TIMEOUT_SECS);
    super::process::check(&format!("tc {}", args.join(" ")), &out);
}

fn delete_ns(ns: &str) {
    let status = Command::new("ip")
        .args(["netns", "del", ns])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("harness: cannot delete network namespace {ns}");
    }
}

/// Once per test process: deletes namespaces left by test processes that died
/// without dropping their `Net` (their pid is in the name).
fn reap_stale_once() {
    static REAP: Once = Once::new();
    REAP.call_once(|| {
        let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let owner = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if owner.is_some_and(|pid| !is_alive(pid)) {
                eprintln!("harness: deleting stale network namespace {name}");
                delete_ns(name);
            }
        }
    });
}
