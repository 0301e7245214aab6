//! Configuration files: the inventory of nodes a pusher distributes to (`nodes.toml`) and the
//! agent's options (`agent.toml`). Both are strict: unknown keys are errors, and every error
//! names the file and, where it can, the line, so a typo is fixed in one look. The nodes a
//! command acts on are chosen from the inventory by `--node` patterns (`worker-[01-20]`,
//! [`NodePatterns`]) and `--select` labels, both I/O-free.
//!
//! ```toml
//! # nodes.toml
//! [[node]]
//! name = "n1"
//! addr = "10.0.0.1:7701"                     # host:port; host names are resolved at load
//! labels = { role = "worker", zone = "a" }   # optional
//! ```
mod agent;
mod inventory;
mod ranges;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::net::identity::IdentityError;

pub use agent::{
    parse_duration, parse_size, AgentOptions, DEFAULT_LISTEN, DEFAULT_RETAIN, DEFAULT_STATE_DIR,
    MAX_ENGINE_WAIT_SECS,
};
pub use inventory::{Inventory, NodeEntry};
pub use ranges::{NodePatterns, PatternError};

/// Errors from reading and checking configuration files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--node` pattern is malformed or matches no node of the inventory.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// A label selector is not `key=value[,key=value…]`.
    #[error("bad selector {selector:?}: write key=value, several joined by commas (role=worker,zone=a)")]
    BadSelector { selector: String },
    /// No node matches the selection.
    #[error("--select {selector} matches no node of the inventory")]
    NoneSelected { selector: String },
    /// `--node` and `--select` each match nodes, but none matches both.
    #[error(
        "no node matches both --node {patterns} ({named}) and --select {selector} ({labelled}); \
             they are combined as an intersection"
    )]
    NoneInBoth {
        patterns: String,
        named: String,
        selector: String,
        labelled: String,
    },
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
    /// A key in agent.toml does not apply with the others set.
    #[error("{} line {line}: {key} {reason}", path.display())]
    DoesNotApply {
        path: PathBuf,
        line: usize,
        key: &'static str,
        reason: &'static str,
    },
    /// A number in agent.toml is outside what it may be.
    #[error("{} line {line}: {key} = {value} is out of range: {range}", path.display())]
    OutOfRange {
        path: PathBuf,
        line: usize,
        key: &'static str,
        value: u64,
        range: &'static str,
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
/// The line numbers of a file's byte offsets, its newlines found once: an
/// inventory of 10,000 nodes asks for 20,000 lines, and counting from the
/// start each time took 54 s.
struct Lines(Vec<usize>);

impl Lines {
    fn of(text: &str) -> Lines {
        Lines(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// The line (from 1) of byte `offset`, as [`line_of`] counts it.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&newline| newline < offset) + 1
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests;
