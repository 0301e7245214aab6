//! The agent's options: agent.toml, with defaults, durations and sizes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::engine::{EngineSpec, Kind};
use crate::net::identity::{self, Identity};

use super::*;

/// Default agent listen address: every interface, on p2pimg's port 7701 (unassigned by IANA,
/// and the port nodes.example.toml uses), so peers on any of the node's networks can dial in.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7701";
/// Default agent state directory: the FHS place for a daemon's persistent state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/p2pimg";
/// Default time a finished distribution's chunks are kept: a day covers a push
/// retried or repeated to more nodes the same working day, and resuming one
/// that failed, without keeping every image ever pushed.
pub const DEFAULT_RETAIN: Duration = Duration::from_secs(24 * 3600);

/// The agent's options, from agent.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// This node's name; must match the CommonName of `cert`.
    pub name: String,
    /// UDP address the agent's QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Where chunks and completion records live.
    pub state_dir: PathBuf,
    /// The node's container engine: its kind, socket and namespace.
    pub engine: EngineSpec,
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
    /// How long a Docker Engine call may go unanswered before the node
    /// shows the pusher that it waits for its engine.
    pub engine_quiet: Duration,
    /// How long a load may go without a word from the engine (taking the
    /// archive, reporting a layer) before the node fails.
    pub engine_stall: Duration,
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
    #[serde(default)]
    engine: Option<Spanned<String>>,
    #[serde(default)]
    engine_host: Option<Spanned<String>>,
    #[serde(default)]
    docker_host: Option<Spanned<String>>,
    #[serde(default)]
    containerd_namespace: Option<Spanned<String>>,
    #[serde(default)]
    containerd_host: Option<Spanned<String>>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    max_upload_mbit: Option<Spanned<u64>>,
    #[serde(default)]
    metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    engine_wait_secs: Option<Spanned<u64>>,
    #[serde(default)]
    retain: Option<Spanned<String>>,
    #[serde(default)]
    store_budget: Option<Spanned<Size>>,
    #[serde(default)]
    engine_quiet_secs: Option<Spanned<u64>>,
    #[serde(default)]
    engine_stall_secs: Option<Spanned<u64>>,
}

/// A healthy engine answers a call in well under a second and takes an
/// archive as fast as it is sent; 30 s of silence is worth showing.
const DEFAULT_ENGINE_QUIET_SECS: u64 = 30;
/// dockerd reads the archive as it unpacks it and reports each layer as it
/// applies it: five minutes without either is a hung engine, not a slow
/// disk.
const DEFAULT_ENGINE_STALL_SECS: u64 = 300;
/// Largest `engine_quiet_secs` and `engine_stall_secs`: a day.
const MAX_ENGINE_SECS: u64 = 86_400;
/// What those two may be.
const ENGINE_SECS_FORM: &str = "a whole number of seconds from 1 to 86400";

/// A restarted dockerd (an upgrade, `systemctl restart docker`, a crash that
/// systemd restarts) answers again within seconds; a minute covers a slow one.
const DEFAULT_ENGINE_WAIT_SECS: u64 = 60;

/// Longest `engine_wait_secs`: an engine down for a day needs a person, not
/// a node that keeps waiting; also far from overflowing the clock.
pub const MAX_ENGINE_WAIT_SECS: u64 = 24 * 3600;

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

/// Reads agent.toml's values from its text, naming the line of one that is
/// wrong.
struct Fields<'a> {
    text: &'a str,
    origin: &'a Path,
}

impl Fields<'_> {
    /// The error for `key`'s `value` at `span`, which should be `expected`.
    fn bad(
        &self,
        key: &'static str,
        span: std::ops::Range<usize>,
        value: String,
        expected: &'static str,
    ) -> ConfigError {
        ConfigError::BadValue {
            path: self.origin.into(),
            line: line_of(self.text, span.start),
            key,
            value,
            expected,
        }
    }

    /// `value` if it lies in `range`; an error naming `key`, its line and
    /// `rule` if not. `None` when the key is absent.
    fn in_range(
        &self,
        key: &'static str,
        value: Option<Spanned<u64>>,
        range: std::ops::RangeInclusive<u64>,
        rule: &'static str,
    ) -> Result<Option<u64>, ConfigError> {
        match value {
            Some(v) if !range.contains(v.get_ref()) => Err(ConfigError::OutOfRange {
                path: self.origin.into(),
                line: line_of(self.text, v.span().start),
                key,
                value: *v.get_ref(),
                range: rule,
            }),
            v => Ok(v.map(Spanned::into_inner)),
        }
    }

    /// `name`, if it is a valid node name.
    fn name(&self, name: Spanned<String>) -> Result<String, ConfigError> {
        let line = line_of(self.text, name.span().start);
        let name = name.into_inner();
        identity::validate_name(&name).map_err(|source| ConfigError::InvalidName {
            path: self.origin.into(),
            line,
            source,
        })?;
        Ok(name)
    }

    /// `retain`: a duration, [`DEFAULT_RETAIN`] if absent.
    fn retain(&self, value: Option<Spanned<String>>) -> Result<Duration, ConfigError> {
        let Some(v) = value else { return Ok(DEFAULT_RETAIN) };
        parse_duration(v.get_ref())
            .ok_or_else(|| self.bad("retain", v.span(), v.into_inner(), DURATION_FORMS))
    }

    /// `store_budget`: bytes, or a size with a unit.
    fn store_budget(&self, value: Option<Spanned<Size>>) -> Result<Option<u64>, ConfigError> {
        let Some(v) = value else { return Ok(None) };
        match v.get_ref() {
            Size::Bytes(n) => Ok(Some(*n)),
            Size::Text(t) => parse_size(t)
                .map(Some)
                .ok_or_else(|| self.bad("store_budget", v.span(), t.clone(), SIZE_FORMS)),
        }
    }

    /// `engine_wait_secs`, from 0 to a day.
    fn engine_wait(&self, value: Option<Spanned<u64>>) -> Result<Duration, ConfigError> {
        let rule = "0 to 86400 (a day)";
        let secs = self.in_range("engine_wait_secs", value, 0..=MAX_ENGINE_WAIT_SECS, rule)?;
        Ok(Duration::from_secs(secs.unwrap_or(DEFAULT_ENGINE_WAIT_SECS)))
    }

    /// `max_upload_mbit`: at least 1, no limit if absent.
    fn max_upload(&self, value: Option<Spanned<u64>>) -> Result<Option<u64>, ConfigError> {
        let rule = "at least 1 Mbit/s (leave it out for no limit)";
        self.in_range("max_upload_mbit", value, 1..=u64::MAX, rule)
    }

    /// One of the engine's timeouts in seconds, `default` if absent.
    fn engine_secs(
        &self,
        key: &'static str,
        value: Option<Spanned<u64>>,
        default: u64,
    ) -> Result<Duration, ConfigError> {
        let secs = self.in_range(key, value, 1..=MAX_ENGINE_SECS, ENGINE_SECS_FORM)?;
        Ok(Duration::from_secs(secs.unwrap_or(default)))
    }
}

impl AgentOptions {
    /// Reads agent.toml at `path`; relative paths in it are taken relative to its directory.
    pub fn load(path: &Path) -> Result<AgentOptions, ConfigError> {
        AgentOptions::parse(&read(path)?, path)
    }

    /// Parses agent.toml `text`; `origin` names the file and anchors relative paths.
    pub fn parse(text: &str, origin: &Path) -> Result<AgentOptions, ConfigError> {
        let raw: RawAgent = parse_toml(text, origin)?;
        let engine = engine_spec(&raw, text, origin)?;
        let fields = Fields { text, origin };
        let base = origin.parent().unwrap_or(Path::new(""));
        Ok(AgentOptions {
            name: fields.name(raw.name)?,
            listen: raw.listen,
            state_dir: base.join(raw.state_dir),
            engine,
            ca: base.join(raw.ca),
            cert: base.join(raw.cert),
            key: base.join(raw.key),
            deny: raw.deny,
            max_upload_mbit: fields.max_upload(raw.max_upload_mbit)?,
            metrics_listen: raw.metrics_listen,
            engine_wait: fields.engine_wait(raw.engine_wait_secs)?,
            retain: fields.retain(raw.retain)?,
            store_budget: fields.store_budget(raw.store_budget)?,
            source: origin.into(),
            engine_quiet: fields.engine_secs(
                "engine_quiet_secs",
                raw.engine_quiet_secs,
                DEFAULT_ENGINE_QUIET_SECS,
            )?,
            engine_stall: fields.engine_secs(
                "engine_stall_secs",
                raw.engine_stall_secs,
                DEFAULT_ENGINE_STALL_SECS,
            )?,
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

/// What agent.toml's `engine` may be.
const ENGINE_KINDS: &str = "one of \"docker\", \"containerd\", \"podman\"";

/// The engine agent.toml names: `engine` (default `docker`), its socket
/// `engine_host` (`docker_host` still works for Docker), and for containerd
/// (or Docker's containerd image store) `containerd_namespace` and
/// `containerd_host`. A key that does not apply to the kind is an error,
/// not silently ignored.
fn engine_spec(raw: &RawAgent, text: &str, origin: &Path) -> Result<EngineSpec, ConfigError> {
    let kind = match &raw.engine {
        None => Kind::Docker,
        Some(v) => Kind::parse(v.get_ref()).ok_or_else(|| {
            let fields = Fields { text, origin };
            fields.bad("engine", v.span(), v.get_ref().clone(), ENGINE_KINDS)
        })?,
    };
    if let Some((key, v, reason)) = misplaced(raw, kind) {
        return Err(ConfigError::DoesNotApply {
            path: origin.into(),
            line: line_of(text, v.span().start),
            key,
            reason,
        });
    }
    let text_of = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().clone());
    let host = text_of(&raw.engine_host).or(text_of(&raw.docker_host));
    Ok(EngineSpec {
        kind,
        host: host.unwrap_or_else(|| kind.default_host().to_string()),
        namespace: text_of(&raw.containerd_namespace),
        containerd_host: text_of(&raw.containerd_host),
    })
}

/// The first engine key that does not apply to `kind` (or to the other keys
/// set), with the reason.
fn misplaced(raw: &RawAgent, kind: Kind) -> Option<(&'static str, &Spanned<String>, &'static str)> {
    let rules = [
        (
            "docker_host",
            &raw.docker_host,
            kind != Kind::Docker,
            "is for engine = \"docker\"; set engine_host to the engine's socket",
        ),
        (
            "docker_host",
            &raw.docker_host,
            raw.engine_host.is_some(),
            "and engine_host are both set; keep engine_host",
        ),
        (
            "containerd_namespace",
            &raw.containerd_namespace,
            kind == Kind::Podman,
            "does not apply to podman, which has no namespaces",
        ),
        (
            "containerd_host",
            &raw.containerd_host,
            kind != Kind::Docker,
            "is for Docker's containerd image store; with engine = \"containerd\" set engine_host",
        ),
    ];
    rules
        .into_iter()
        .find_map(|(key, value, wrong, reason)| Some((key, value.as_ref().filter(|_| wrong)?, reason)))
}
