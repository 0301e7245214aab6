//! The command line: clap's definitions of every mode and flag, the modes
//! themselves ([`commands`]), and what people see of a push ([`report`]).
//! `main.rs` only calls [`main`].

mod certs;
mod commands;
pub mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Inventory, NodeEntry, NodePatterns};
use crate::content::pack::{PackOptions, DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL};
use crate::engine::{EngineSpec, Kind};
use crate::net::identity::{self, Role};
use report::ProgressMode;

/// Peer-to-peer distribution of Docker images: push images from one machine
/// to every node of a cluster over a QUIC swarm, without a registry.
#[derive(Parser)]
#[command(name = "p2pimg", version, propagate_version = true)]
struct Cli {
    /// Log lines as `text` or as `json` objects (for log collectors).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a cluster identity: a CA (ca.crt, ca.key) and a pusher certificate.
    Init {
        /// Directory to write the identity to (created; keys are 0600).
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
    },
    /// Issue certificates signed by the cluster CA.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Run the agent of a node: serve and fetch chunks, load images into the local Docker Engine.
    Agent {
        /// The agent's configuration file (name, listen, state_dir, docker_host, ca, cert, key).
        #[arg(long, default_value = "/etc/p2pimg/agent.toml")]
        config: PathBuf,
    },
    /// Push images from this machine's Docker Engine to the nodes; exits 0 only when every node holds them.
    Push(PushArgs),
    /// Bundle files for air-gapped seeds: create, verify, list.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Show which nodes hold which images (image IDs), transferring nothing.
    Status(StatusArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `p2pimg man > /usr/local/share/man/man1/p2pimg.1`.
    Man,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue a certificate and key for a node (or another pusher): DIR/NAME.crt, DIR/NAME.key;
    /// or with --nodes, for every node of an inventory that has none yet.
    Issue {
        /// The node's name, as in nodes.toml and agent.toml.
        #[arg(required_unless_present = "nodes", conflicts_with = "nodes")]
        name: Option<String>,
        /// Instead of NAME: every node of this inventory whose certificate and key are not
        /// in --dir yet (existing ones are kept, never overwritten); also writes a
        /// directory per node holding ca.crt, NODE.crt and NODE.key, for
        /// `scripts/install.sh --cert-dir`.
        #[arg(long, value_name = "FILE")]
        nodes: Option<PathBuf>,
        /// With --nodes: where the per-node directories go, OUT/NODE/ (directories 0700,
        /// keys 0600) [default: DIR/nodes, so ./cluster/nodes/NODE/].
        #[arg(long, value_name = "OUT", requires = "nodes")]
        out: Option<PathBuf>,
        /// The cluster directory made by `p2pimg init`.
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
        /// `node` identities serve and fetch; only `pusher` identities may announce a push
        /// (--nodes always issues `node` identities).
        #[arg(long, default_value = "node", conflicts_with = "nodes")]
        role: Role,
        /// Validity in days, 1 to 36500 (100 years).
        #[arg(long, default_value_t = identity::DEFAULT_VALID_DAYS)]
        days: u32,
    },
}

#[derive(clap::Args)]
struct PushArgs {
    /// Images to push, as the seed's engine names them: a reference (app:1.4, registry:5000/team/app@sha256:…) or an image ID.
    #[arg(required_unless_present = "bundle", conflicts_with = "bundle")]
    images: Vec<String>,
    /// Seed every image of this bundle file instead (no Docker Engine needed).
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    #[command(flatten)]
    targets: Targets,
    /// Also tag the image as NEW on every node (repeatable; a push of one image only). NEW is
    /// [HOST[:PORT]/]NAME[:TAG] as Docker writes it: NAME lowercase, TAG `latest` if left out, no digest.
    #[arg(long = "tag", value_name = "NEW")]
    tags: Vec<String>,
    /// Give up after this many seconds, 1 to 604800 (7 days); nodes not done by then are reported failed.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true, value_parser = parse_timeout)]
    timeout: Option<u64>,
    /// Most the seed uploads, in Mbit/s (agents have `max_upload_mbit` in agent.toml).
    #[arg(long, value_name = "MBIT", value_parser = clap::value_parser!(u64).range(1..))]
    max_upload_mbit: Option<u64>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Where the seed keeps chunks while pushing (default: a temporary directory, removed
    /// afterwards). Locked while the push runs, so not an agent's state_dir; after the push it
    /// keeps only this push's chunks, unless --keep.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Keep every chunk in --state-dir after the push, not only this push's.
    #[arg(long, requires = "state_dir")]
    keep: bool,
    #[command(flatten)]
    pack: PackArgs,
    /// Load the images again on every selected node, also where its engine already holds them
    /// (a node whose image storage was damaged, an engine reset that kept its image list):
    /// the table says "reloaded (forced)" there instead of "skipped". The engine re-registers
    /// each image and its tags and gets back any layer it lacks; a layer it still holds is kept
    /// as it is (on every engine), so to replace a damaged layer remove the image on that node
    /// first (docker rmi, podman rmi, ctr images rm), then push. Needs agents of this version;
    /// with --dry-run, shows what a forced push would fetch.
    #[arg(long)]
    force: bool,
    /// Announce nothing, transfer nothing: export as a push would, then ask every node what it
    /// would fetch (or why it would fail) and print that. Exit 0 when every node answered and
    /// none would fail.
    #[arg(long)]
    dry_run: bool,
    /// Print events and the final report as JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// How progress is shown while the push runs.
    #[arg(long, value_enum, default_value = "auto", conflicts_with = "json")]
    progress: Progress,
}

/// `--timeout`: whole seconds from 1 to [`crate::push::MAX_TIMEOUT`]; anything
/// else (0, -1, 1.5, a number past u64) gets the same one line.
fn parse_timeout(text: &str) -> Result<u64, String> {
    let max = crate::push::MAX_TIMEOUT.as_secs();
    match text.parse::<u64>() {
        Ok(secs) if (1..=max).contains(&secs) => Ok(secs),
        _ => Err(format!("--timeout takes whole seconds, 1 to {max} (7 days)")),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Progress {
    /// The live view when stdout is a terminal, plain lines otherwise.
    Auto,
    /// A line per node with a bar, redrawn in place, even where no terminal was detected.
    Live,
    /// A line per event.
    Plain,
}

impl From<Progress> for ProgressMode {
    fn from(p: Progress) -> ProgressMode {
        match p {
            Progress::Auto => ProgressMode::Auto,
            Progress::Live => ProgressMode::Live,
            Progress::Plain => ProgressMode::Plain,
        }
    }
}

#[derive(clap::Args)]
struct StatusArgs {
    /// Image references to look for on each node.
    #[arg(required = true)]
    images: Vec<String>,
    #[command(flatten)]
    targets: Targets,
    /// Print the answers as JSON.
    #[arg(long)]
    json: bool,
}

/// Which nodes, and as whom.
#[derive(clap::Args)]
struct Targets {
    /// The node inventory.
    #[arg(long, default_value = "nodes.toml")]
    nodes: PathBuf,
    /// Only these nodes (repeatable): names or ranges, as worker-[01-20] or 'web[1-3,7],db1'
    /// (a bracket holds numbers and ranges; padding is kept); default: every node of the
    /// inventory. A name or range that matches no node is an error.
    #[arg(long = "node", value_name = "PATTERN")]
    only: Vec<String>,
    /// Only nodes whose labels match, e.g. role=worker,zone=a; with --node, the nodes
    /// matching both.
    #[arg(long, value_name = "KEY=VALUE,…")]
    select: Option<String>,
    /// The cluster directory made by `p2pimg init` (ca.crt and the pusher's certificate and key).
    #[arg(long, default_value = "./cluster")]
    cluster_dir: PathBuf,
    /// Which identity in the cluster directory to act as.
    #[arg(long, default_value = identity::PUSHER_NAME)]
    identity: String,
}

impl Targets {
    /// The chosen nodes; a malformed `--node` is refused before the inventory is read.
    fn nodes(&self) -> anyhow::Result<Vec<NodeEntry>> {
        NodePatterns::parse(&self.only).map_err(ConfigError::from)?;
        Ok(Inventory::load(&self.nodes)?.select(&self.only, self.select.as_deref())?)
    }
}

/// The seed's engine, which the images are exported from.
#[derive(clap::Args)]
struct EngineArgs {
    /// The kind of engine the images are in: docker (Docker Engine, classic or containerd
    /// image store, detected), containerd (e.g. a Kubernetes control-plane node) or podman.
    #[arg(long, value_name = "KIND", default_value = "docker", value_parser = parse_kind)]
    engine: Kind,
    /// The engine's API socket [default: $DOCKER_HOST for docker, else the kind's usual
    /// socket: /var/run/docker.sock, /run/containerd/containerd.sock, /run/podman/podman.sock].
    #[arg(long, visible_alias = "docker-host", value_name = "URL")]
    engine_host: Option<String>,
    /// containerd's namespace: for --engine containerd [default: k8s.io], or Docker's
    /// containerd image store [default: what Docker says, else moby].
    #[arg(long, value_name = "NS")]
    containerd_namespace: Option<String>,
    /// The socket of the containerd under Docker's containerd image store, where Docker does
    /// not say it [default: /run/containerd/containerd.sock].
    #[arg(long, value_name = "URL")]
    containerd_host: Option<String>,
}

impl EngineArgs {
    fn spec(self) -> EngineSpec {
        let from_env = || match self.engine {
            Kind::Docker => std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()),
            _ => None,
        };
        let host = self.engine_host.clone().or_else(from_env);
        EngineSpec {
            kind: self.engine,
            host: host.unwrap_or_else(|| self.engine.default_host().to_string()),
            namespace: self.containerd_namespace,
            containerd_host: self.containerd_host,
        }
    }
}

fn parse_kind(text: &str) -> Result<Kind, String> {
    Kind::parse(text)
        .ok_or_else(|| format!("{text:?} is not an engine kind: use docker, containerd or podman"))
}

/// How images are cut into chunks.
#[derive(clap::Args)]
struct PackArgs {
    /// Uncompressed chunk size in KiB (64 to 8192).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE >> 10, value_parser = clap::value_parser!(u32).range(64..=8192))]
    chunk_size_kib: u32,
    /// zstd level for chunks (1 fastest .. 19 smallest).
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
}

impl PackArgs {
    fn options(&self) -> PackOptions {
        PackOptions {
            chunk_size: self.chunk_size_kib << 10,
            zstd_level: self.zstd_level,
        }
    }
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Pack images into one self-verifying file, for seeding where no engine is.
    Create {
        /// Images to pack, as the engine names them: a reference (app:1.4) or an image ID.
        #[arg(required_unless_present = "from_tar", conflicts_with = "from_tar")]
        images: Vec<String>,
        /// Read an existing `docker save` archive instead of asking an engine.
        #[arg(long, value_name = "TAR")]
        from_tar: Option<PathBuf>,
        /// The bundle file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
        #[command(flatten)]
        pack: PackArgs,
    },
    /// Check every chunk of a bundle against its hash.
    Verify {
        /// The bundle file.
        file: PathBuf,
    },
    /// List a bundle's images, layers and sizes.
    Ls {
        /// The bundle file.
        file: PathBuf,
    },
}

/// Parses the command line, runs the mode, and turns an error into one
/// line on stderr.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p2pimg: {}", message(&e));
            failure_code(&e)
        }
    }
}

/// 2, clap's status for a usage error, when the nodes asked for with `--node` and
/// `--select` are malformed or match nothing; 1 for every other failure.
fn failure_code(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<ConfigError>() {
        Some(
            ConfigError::Pattern(_)
            | ConfigError::BadSelector { .. }
            | ConfigError::NoneSelected { .. }
            | ConfigError::NoneInBoth { .. },
        ) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// A value that failed its check is one line, like every other error;
/// clap prints the rest (unknown flags with their tips, help, version).
fn usage_error(e: clap::Error) -> ExitCode {
    if e.kind() != clap::error::ErrorKind::ValueValidation {
        e.exit();
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    eprintln!("p2pimg: {}", first.trim_start_matches("error: "));
    // clap's exit status for a usage error.
    ExitCode::from(2)
}

/// The error and its causes on one line, leaving out a cause whose text the
/// message already quotes.
fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg = format!("{msg}: {cause}");
        }
    }
    msg
}
