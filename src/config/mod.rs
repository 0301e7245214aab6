//! Configuration files: the inventory of nodes a pusher distributes to (`nodes.toml`) and the
//! agent's options (`agent.toml`). Both are strict: unknown keys are errors, and every error
//! names the file and, where it can, the line, so a typo is fixed in one look.
//!
//! ```toml
//! # nodes.toml
//! [[node]]
//! name = "n1"
//! addr = "10.0.0.1:7701"                     # host:port; host names are resolved at load
//! labels = { role = "worker", zone = "a" }   # optional
//! ```

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::Spanned;

use crate::net::identity::{self, Identity, IdentityError};

/// Default agent listen address: every interface, on p2pimg's port 7701 (unassigned by IANA,
/// and the port nodes.example.toml uses), so peers on any of the node's networks can dial in.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7701";
/// Default agent state directory: the FHS place for a daemon's persistent state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/p2pimg";
/// Default Docker Engine endpoint: the socket dockerd creates on every Linux install.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// Default time a finished distribution's chunks are kept: a day covers a push
/// retried or repeated to more nodes the same working day, and resuming one
/// that failed, without keeping every image ever pushed.
pub const DEFAULT_RETAIN: Duration = Duration::from_secs(24 * 3600);

/// Errors from reading and checking configuration files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A node asked for on the command line is not in the inventory.
    #[error("node {name:?} is not in the inventory")]
    UnknownNode { name: String },
    /// A label selector is not `key=value[,key=value…]`.
    #[error("bad selector {selector:?}: write key=value, several joined by commas (role=worker,zone=a)")]
    BadSelector { selector: String },
    /// No node matches the selection.
    #[error("no node of the inventory matches the selection {selector:?}")]
    NoneSelected { selector: String },
    /// The file could not be read.
    #[error("cannot read {}: {source} (check the path, or pass another file)", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// TOML syntax error, unknown key, missing key or wrongly typed value.
    #[error("{}{}: {message}", path.display(), at_line(*line))]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// The inventory has no `[[node]]` table.
    #[error("{} lists no nodes: add a [[node]] table with `name` and `addr` for each node", path.display())]
    Empty { path: PathBuf },
    /// A name breaks the naming rule.
    #[error("{} line {line}: {source}", path.display())]
    InvalidName {
        path: PathBuf,
        line: usize,
        source: IdentityError,
    },
    /// Two nodes have the same name.
    #[error("{} line {line}: node name `{name}` is already used on line {first_line}; each node needs its own name", path.display())]
    DuplicateName {
        path: PathBuf,
        name: String,
        line: usize,
        first_line: usize,
    },
    /// Two nodes have the same address.
    #[error("{} line {line}: node `{name}` has address {addr}, already used by node `{first}` on line {first_line}; each agent listens on its own address", path.display())]
    DuplicateAddr {
        path: PathBuf,
        addr: SocketAddr,
        name: String,
        line: usize,
        first: String,
        first_line: usize,
    },
    /// An address does not parse or resolve.
    #[error("{} line {line}: address `{addr}` of node `{name}` is unusable: {detail} (write host:port, e.g. 10.0.0.1:7701)", path.display())]
    BadAddr {
        path: PathBuf,
        line: usize,
        name: String,
        addr: String,
        detail: String,
    },
    /// The agent's certificate, key or CA could not be loaded.
    #[error("{}: {source}", path.display())]
    Identity { path: PathBuf, source: IdentityError },
    /// A duration or size in agent.toml does not parse.
    #[error("{} line {line}: {key} = {value:?} is not {expected}", path.display())]
    BadValue {
        path: PathBuf,
        line: usize,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    /// agent.toml's `name` differs from the CommonName of its `cert`.
    #[error("{}: name is `{name}` but certificate {} is issued to `{cert_name}` (make them match, or issue a certificate for `{name}`)", path.display(), cert.display())]
    NameMismatch {
        path: PathBuf,
        name: String,
        cert: PathBuf,
        cert_name: String,
    },
}

const _: () = crate::ops::assert_error_is_send_sync::<ConfigError>();

/// " line N" when the line is known.
fn at_line(line: Option<usize>) -> String {
    line.map(|n| format!(" line {n}")).unwrap_or_default()
}

/// One node of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The node's name; the CommonName its agent's certificate must carry.
    pub name: String,
    /// Where its agent listens (host names resolved at load).
    pub addr: SocketAddr,
    /// Free-form labels for selecting nodes.
    pub labels: BTreeMap<String, String>,
}

/// The nodes a pusher distributes to, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// At least one node; names and addresses are unique.
    pub nodes: Vec<NodeEntry>,
}

/// nodes.toml as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    node: Vec<RawNode>,
}

/// One `[[node]]` table as written, with spans for line numbers in errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    addr: Spanned<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl Inventory {
    /// Reads and checks the inventory at `path`.
    pub fn load(path: &Path) -> Result<Inventory, ConfigError> {
        Inventory::parse(&read(path)?, path)
    }

    /// Parses and checks inventory `text`; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Inventory, ConfigError> {
        let raw: RawInventory = parse_toml(text, origin)?;
        if raw.node.is_empty() {
            return Err(ConfigError::Empty { path: origin.into() });
        }
        let mut seen = Seen::default();
        let nodes = raw
            .node
            .into_iter()
            .map(|node| seen.check(node, text, origin))
            .collect::<Result<_, _>>()?;
        Ok(Inventory { nodes })
    }

    /// The nodes named in `names` (all when empty) whose labels match every
    /// `key=value` of `selector` (comma-separated), in inventory order.
    pub fn select(&self, names: &[String], selector: Option<&str>) -> Result<Vec<NodeEntry>, ConfigError> {
        let wanted = parse_selector(selector.unwrap_or(""))?;
        let matches = |node: &NodeEntry| {
            wanted
                .iter()
                .all(|(k, v)| node.labels.get(*k) == Some(&v.to_string()))
        };
        let nodes: Vec<NodeEntry> = self.only(names)?.into_iter().filter(|n| matches(n)).collect();
        if nodes.is_empty() {
            return Err(ConfigError::NoneSelected {
                selector: selector.unwrap_or("").to_string(),
            });
        }
        Ok(nodes)
    }

    /// The nodes named in `names`, in inventory order; all nodes when
    /// `names` is empty.
    pub fn only(&self, names: &[String]) -> Result<Vec<NodeEntry>, ConfigError> {
        if let Some(unknown) = names
            .iter()
            .find(|n| !self.nodes.iter().any(|node| &&node.name == n))
        {
            return Err(ConfigError::UnknownNode {
                name: unknown.clone(),
            });
        }
        let wanted = |node: &&NodeEntry| names.is_empty() || names.contains(&node.name);
        Ok(self.nodes.iter().filter(wanted).cloned().collect())
    }
}

/// Names and addresses met so far, with their lines, to report duplicates.
#[derive(Default)]
struct Seen {
    names: HashMap<String, usize>,
    addrs: HashMap<SocketAddr, (String, usize)>,
}

impl Seen {
    /// Validates one node and records it; errors point at the offending line.
    fn check(&mut self, node: RawNode, text: &str, path: &Path) -> Result<NodeEntry, ConfigError> {
        let name_line = line_of(text, node.name.span().start);
        let addr_line = line_of(text, node.addr.span().start);
        let name = node.name.into_inner();
        identity::validate_name(&name).map_err(|source| ConfigError::InvalidName {
            path: path.into(),
            line: name_line,
            source,
        })?;
        if let Some(&first_line) = self.names.get(&name) {
            return Err(ConfigError::DuplicateName {
                path: path.into(),
                name,
                line: name_line,
                first_line,
            });
        }
        let addr = resolve(node.addr.get_ref()).map_err(|detail| ConfigError::BadAddr {
            path: path.into(),
            line: addr_line,
            name: name.clone(),
            addr: node.addr.get_ref().clone(),
            detail,
        })?;
        if let Some((first, first_line)) = self.addrs.get(&addr).cloned() {
            let line = addr_line;
            return Err(ConfigError::DuplicateAddr {
                path: path.into(),
                addr,
                name,
                line,
                first,
                first_line,
            });
        }
        self.names.insert(name.clone(), name_line);
        self.addrs.insert(addr, (name.clone(), addr_line));
        Ok(NodeEntry {
            name,
            addr,
            labels: node.labels,
        })
    }
}

/// Resolves `host:port` to its first socket address.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    let mut addrs = addr.to_socket_addrs().map_err(|e| match e.kind() {
        io::ErrorKind::InvalidInput => "it is not host:port (is the port missing?)".to_string(),
        _ => e.to_string(),
    })?;
    addrs
        .next()
        .ok_or_else(|| "the host name resolves to no address".to_string())
}

/// The agent's options, from agent.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// This node's name; must match the CommonName of `cert`.
    pub name: String,
    /// UDP address the agent's QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Where chunks and completion records live.
    pub state_dir: PathBuf,
    /// The local Docker Engine endpoint.
    pub docker_host: String,
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key (mode 0600).
    pub key: PathBuf,
    /// Certificate names refused at every connection: a leaked or retired
    /// identity, shut out without re-keying the cluster.
    pub deny: Vec<String>,
    /// Most this agent uploads serving chunks, in Mbit/s; unlimited if unset.
    pub max_upload_mbit: Option<u64>,
    /// Where to serve Prometheus metrics over HTTP; off if unset.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a load waits for the Docker Engine to come back when it is
    /// down or restarting, before the node fails.
    pub engine_wait: Duration,
    /// How long chunks of a finished distribution are kept.
    pub retain: Duration,
    /// Most bytes the chunk store may hold; finished distributions are
    /// evicted oldest first to stay under it. Unbounded if unset.
    pub store_budget: Option<u64>,
    /// The file these options came from, for error messages.
    pub source: PathBuf,
}

/// agent.toml as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Spanned<String>,
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_docker_host")]
    docker_host: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    max_upload_mbit: Option<u64>,
    #[serde(default)]
    metrics_listen: Option<SocketAddr>,
    #[serde(default = "default_engine_wait_secs")]
    engine_wait_secs: u64,
    #[serde(default)]
    retain: Option<Spanned<String>>,
    #[serde(default)]
    store_budget: Option<Spanned<Size>>,
}

/// A restarted dockerd (an upgrade, `systemctl restart docker`, a crash that
/// systemd restarts) answers again within seconds; a minute covers a slow one.
const DEFAULT_ENGINE_WAIT_SECS: u64 = 60;

fn default_engine_wait_secs() -> u64 {
    DEFAULT_ENGINE_WAIT_SECS
}

/// A size as written: bytes, or text with a unit (`"20GiB"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .expect("DEFAULT_LISTEN is a socket address")
}

fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}

fn default_docker_host() -> String {
    DEFAULT_DOCKER_HOST.into()
}

impl AgentOptions {
    /// Reads agent.toml at `path`; relative paths in it are taken relative to its directory.
    pub fn load(path: &Path) -> Result<AgentOptions, ConfigError> {
        AgentOptions::parse(&read(path)?, path)
    }

    /// Parses agent.toml `text`; `origin` names the file and anchors relative paths.
    pub fn parse(text: &str, origin: &Path) -> Result<AgentOptions, ConfigError> {
        let raw: RawAgent = parse_toml(text, origin)?;
        let line = line_of(text, raw.name.span().start);
        let name = raw.name.into_inner();
        identity::validate_name(&name).map_err(|source| ConfigError::InvalidName {
            path: origin.into(),
            line,
            source,
        })?;
        let bad = |key, span: std::ops::Range<usize>, value: String, expected| ConfigError::BadValue {
            path: origin.into(),
            line: line_of(text, span.start),
            key,
            value,
            expected,
        };
        let retain = match raw.retain {
            None => DEFAULT_RETAIN,
            Some(v) => parse_duration(v.get_ref())
                .ok_or_else(|| bad("retain", v.span(), v.get_ref().clone(), DURATION_FORMS))?,
        };
        let store_budget = match raw.store_budget {
            None => None,
            Some(v) => Some(match v.get_ref() {
                Size::Bytes(n) => *n,
                Size::Text(t) => {
                    parse_size(t).ok_or_else(|| bad("store_budget", v.span(), t.clone(), SIZE_FORMS))?
                }
            }),
        };
        let base = origin.parent().unwrap_or(Path::new(""));
        Ok(AgentOptions {
            name,
            listen: raw.listen,
            state_dir: base.join(raw.state_dir),
            docker_host: raw.docker_host,
            ca: base.join(raw.ca),
            cert: base.join(raw.cert),
            key: base.join(raw.key),
            deny: raw.deny,
            max_upload_mbit: raw.max_upload_mbit,
            metrics_listen: raw.metrics_listen,
            engine_wait: Duration::from_secs(raw.engine_wait_secs),
            retain,
            store_budget,
            source: origin.into(),
        })
    }

    /// Loads the identity in `ca`, `cert` and `key`, and checks it is issued to `name`.
    pub fn load_identity(&self) -> Result<Identity, ConfigError> {
        let origin = &self.source;
        let identity =
            Identity::load(&self.ca, &self.cert, &self.key).map_err(|source| ConfigError::Identity {
                path: origin.into(),
                source,
            })?;
        if identity.name != self.name {
            return Err(ConfigError::NameMismatch {
                path: origin.into(),
                name: self.name.clone(),
                cert: self.cert.clone(),
                cert_name: identity.name,
            });
        }
        Ok(identity)
    }
}

/// What `retain` accepts, for error messages.
const DURATION_FORMS: &str =
    "a duration: a whole number with s, m, h or d (\"90s\", \"30m\", \"24h\", \"7d\")";
/// What `store_budget` accepts, for error messages.
const SIZE_FORMS: &str =
    "a size: bytes, or a whole number with B, KB, MB, GB, TB, KiB, MiB, GiB or TiB (\"20GiB\", \"500MB\")";

/// Parses `"90s"`, `"30m"`, `"24h"`, `"7d"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = text[..split].parse().ok()?;
    let unit = match text[split..].trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit).map(Duration::from_secs)
}

/// Parses `"20GiB"`, `"500MB"`, `"4096"` (bytes); units are case-insensitive.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let n: u64 = text[..split].parse().ok()?;
    let unit: u64 = match text[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// `key=value` pairs of a selector such as `role=worker,zone=a`.
fn parse_selector(selector: &str) -> Result<Vec<(&str, &str)>, ConfigError> {
    let bad = || ConfigError::BadSelector {
        selector: selector.to_string(),
    };
    selector
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(bad)?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                Err(bad())
            } else {
                Ok((k, v))
            }
        })
        .collect()
}

/// Reads a whole configuration file.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })
}

/// Deserializes TOML, turning an error's byte span into a line number.
fn parse_toml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: origin.into(),
        line: e.span().map(|span| line_of(text, span.start)),
        message: e.message().trim_end().to_string(),
    })
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests;
