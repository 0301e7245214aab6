//! The inventory of nodes a pusher distributes to: nodes.toml, and its
//! selection by name and labels.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::net::identity;

use super::ranges::{fold, NodePatterns};

use super::*;

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
        let lines = Lines::of(text);
        let nodes = raw
            .node
            .into_iter()
            .map(|node| seen.check(node, &lines, origin))
            .collect::<Result<_, _>>()?;
        Ok(Inventory { nodes })
    }

    /// The nodes `--node` and `--select` choose, in inventory order: those matching one
    /// of the `patterns` (every node when there are none; see [`super::ranges`]) and whose
    /// labels match every `key=value` of `selector` (comma-separated).
    pub fn select(&self, patterns: &[String], selector: Option<&str>) -> Result<Vec<NodeEntry>, ConfigError> {
        let named = NodePatterns::parse(patterns)?;
        let wanted = parse_selector(selector.unwrap_or(""))?;
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        let by_name = match named.is_empty() {
            true => vec![true; names.len()],
            false => named.matches(&names)?,
        };
        let by_label: Vec<bool> = self.nodes.iter().map(|n| labels_match(n, &wanted)).collect();
        let picked = |flags: &[bool]| -> Vec<&str> {
            names
                .iter()
                .zip(flags)
                .filter(|(_, f)| **f)
                .map(|(n, _)| *n)
                .collect()
        };
        let selector = selector.unwrap_or("").to_string();
        if !by_label.contains(&true) {
            return Err(ConfigError::NoneSelected { selector });
        }
        let both: Vec<bool> = by_name.iter().zip(&by_label).map(|(a, b)| *a && *b).collect();
        if !both.contains(&true) {
            return Err(ConfigError::NoneInBoth {
                patterns: patterns.join(" --node "),
                named: fold(&picked(&by_name)),
                selector,
                labelled: fold(&picked(&by_label)),
            });
        }
        let nodes = self.nodes.iter().zip(both).filter(|(_, b)| *b);
        Ok(nodes.map(|(n, _)| n.clone()).collect())
    }
}

/// Whether `node` carries every `key=value` of `wanted`.
fn labels_match(node: &NodeEntry, wanted: &[(&str, &str)]) -> bool {
    wanted
        .iter()
        .all(|(k, v)| node.labels.get(*k).map(String::as_str) == Some(*v))
}

/// Names and addresses met so far, with their lines, to report duplicates.
#[derive(Default)]
struct Seen {
    names: HashMap<String, usize>,
    addrs: HashMap<SocketAddr, (String, usize)>,
}

impl Seen {
    /// Validates one node and records it; errors point at the offending line.
    fn check(&mut self, node: RawNode, lines: &Lines, path: &Path) -> Result<NodeEntry, ConfigError> {
        let name_line = lines.line(node.name.span().start);
        let addr_line = lines.line(node.addr.span().start);
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

/// Resolves `host:port` to its first socket address; the port is 1 to
/// 65535 (an agent on port 0 cannot be dialed).
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    check_port(addr)?;
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

/// Refuses a port of 0 or past 65535, which would otherwise read as a
/// missing port, or fail only when dialed.
fn check_port(addr: &str) -> Result<(), String> {
    let Some((_, port)) = addr.rsplit_once(':') else {
        return Ok(());
    };
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let in_range = port.parse::<u64>().is_ok_and(|p| (1..=65535).contains(&p));
    match digits && !in_range {
        true => Err(format!("port {port} is out of range (1-65535)")),
        false => Ok(()),
    }
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
