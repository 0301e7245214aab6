//! The `p2pimg` command: parses arguments and hands each mode to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use p2pimg::config::{AgentOptions, Inventory};
use p2pimg::identity::{self, Role};
use p2pimg::pack::{PackOptions, DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL};
use p2pimg::push::{self, PushOptions, Source};
use p2pimg::report::{self, ProgressMode, PushView};
use p2pimg::swarm::UploadMeter;
use tracing_subscriber::fmt::MakeWriter;

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
    /// Issue a certificate and key for a node (or another pusher): DIR/NAME.crt, DIR/NAME.key.
    Issue {
        /// The node's name, as in nodes.toml and agent.toml.
        name: String,
        /// The cluster directory made by `p2pimg init`.
        #[arg(long, default_value = "./cluster")]
        dir: PathBuf,
        /// `node` identities serve and fetch; only `pusher` identities may announce a push.
        #[arg(long, default_value = "node")]
        role: Role,
        /// Validity in days.
        #[arg(long, default_value_t = identity::DEFAULT_VALID_DAYS)]
        days: u32,
    },
}

#[derive(clap::Args)]
struct PushArgs {
    /// Images to push, as the seed's engine names them (app:1.4, or an image ID).
    #[arg(required_unless_present = "bundle", conflicts_with = "bundle")]
    images: Vec<String>,
    /// Seed every image of this bundle file instead (no Docker Engine needed).
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    #[command(flatten)]
    targets: Targets,
    /// Also tag the image as NEW on every node (repeatable; a push of one image only).
    #[arg(long = "tag", value_name = "NEW")]
    tags: Vec<String>,
    /// Give up after this many seconds; nodes not done by then are reported failed.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Most the seed uploads, in Mbit/s (agents have `max_upload_mbit` in agent.toml).
    #[arg(long, value_name = "MBIT", value_parser = clap::value_parser!(u64).range(1..))]
    max_upload_mbit: Option<u64>,
    /// The seed's Docker Engine.
    #[arg(long, env = "DOCKER_HOST", default_value = "unix:///var/run/docker.sock")]
    docker_host: String,
    /// Where the seed keeps chunks while pushing (default: a temporary directory, removed afterwards).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    pack: PackArgs,
    /// Print events and the final report as JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// How progress is shown while the push runs.
    #[arg(long, value_enum, default_value = "auto", conflicts_with = "json")]
    progress: Progress,
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
    /// Only these nodes (repeatable); default: every node of the inventory.
    #[arg(long = "node", value_name = "NAME")]
    only: Vec<String>,
    /// Only nodes whose labels match, e.g. role=worker,zone=a.
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
    fn nodes(&self) -> anyhow::Result<Vec<p2pimg::config::NodeEntry>> {
        Ok(Inventory::load(&self.nodes)?.select(&self.only, self.select.as_deref())?)
    }
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
        /// Images to pack, as the engine names them.
        #[arg(required_unless_present = "from_tar", conflicts_with = "from_tar")]
        images: Vec<String>,
        /// Read an existing `docker save` archive instead of asking an engine.
        #[arg(long, value_name = "TAR")]
        from_tar: Option<PathBuf>,
        /// The bundle file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// The Docker Engine to export from.
        #[arg(long, env = "DOCKER_HOST", default_value = "unix:///var/run/docker.sock")]
        docker_host: String,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p2pimg: {}", message(&e));
            ExitCode::FAILURE
        }
    }
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

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init { dir } => init(dir),
        Command::Cert(CertCommand::Issue {
            name,
            dir,
            role,
            days,
        }) => issue(name, dir, role, days),
        Command::Agent { config } => agent(cli.log_format, config),
        Command::Push(args) => push_images(cli.log_format, args),
        Command::Bundle(cmd) => bundle(cli.log_format, cmd),
        Command::Status(args) => status(cli.log_format, args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "p2pimg", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init(dir: PathBuf) -> anyhow::Result<ExitCode> {
    let report = identity::init_cluster(&dir)?;
    for file in &report.files {
        println!("wrote {}", file.display());
    }
    println!(
        "next: `p2pimg cert issue NODE --dir {}` for each node",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn issue(name: String, dir: PathBuf, role: Role, days: u32) -> anyhow::Result<ExitCode> {
    let files = identity::issue(&dir, &name, role, days)?;
    println!("wrote {} and {}", files.cert.display(), files.key.display());
    Ok(ExitCode::SUCCESS)
}

/// Logs to `writer` (stderr, or above push's live view), at `default`
/// level unless RUST_LOG says otherwise.
fn logging<W>(format: LogFormat, default: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => fmt.with_ansi(ansi).init(),
        LogFormat::Json => fmt.json().init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn agent(log: LogFormat, config: PathBuf) -> anyhow::Result<ExitCode> {
    logging(log, "info", std::io::stderr);
    let opts = AgentOptions::load(&config)?;
    runtime()?.block_on(async {
        let agent = p2pimg::agent::Agent::start(&opts)?;
        let stop = shutdown_signal()?;
        println!("listening on {}", agent.local_addr()?);
        if let Some(addr) = opts.metrics_listen {
            let listener = p2pimg::metrics::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr} (metrics_listen in agent.toml)"))?;
            println!("metrics on http://{}/metrics", listener.local_addr()?);
            tokio::spawn(p2pimg::metrics::serve(listener, opts.state_dir.clone()));
        }
        tracing::info!(name = %opts.name, state_dir = %opts.state_dir.display(), docker = %opts.docker_host, "agent started");
        let requested = agent.run(stop).await;
        Ok(if requested { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

/// Installs the SIGTERM and SIGINT handlers now, so a stop requested as
/// soon as the agent says it listens is a clean one, and returns the
/// future that resolves on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

fn push_images(log: LogFormat, args: PushArgs) -> anyhow::Result<ExitCode> {
    let nodes = args.targets.nodes()?;
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let seed_meter = UploadMeter::default();
    let view = PushView::new(args.json, args.progress.into(), &names, &seed_meter);
    logging(log, "warn", view.log_writer());
    let source = match args.bundle {
        Some(file) => Source::Bundle(file),
        None => Source::Engine {
            docker_host: args.docker_host,
            images: args.images,
            pack: args.pack.options(),
        },
    };
    let opts = PushOptions {
        source,
        nodes,
        cluster_dir: args.targets.cluster_dir,
        identity: args.targets.identity,
        state_dir: args.state_dir,
        tags: args.tags,
        timeout: args.timeout.map(std::time::Duration::from_secs),
        max_upload_mbit: args.max_upload_mbit,
        seed_meter,
    };
    runtime()?.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shown = tokio::spawn(view.follow(rx));
        let report = push::push(opts, tx).await;
        // On an error the view is dropped, and so cleared, before main prints it.
        let view = shown.await.context("the progress display failed")?;
        let report = report?;
        view.finish(&report);
        Ok(if report.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

fn bundle(log: LogFormat, cmd: BundleCommand) -> anyhow::Result<ExitCode> {
    logging(log, "warn", std::io::stderr);
    match cmd {
        BundleCommand::Create {
            images,
            from_tar,
            output,
            docker_host,
            pack,
        } => {
            let pack = pack.options();
            let made = runtime()?.block_on(async {
                match from_tar {
                    Some(tar) => p2pimg::bundle::create_from_tar(&tar, &pack, &output).await,
                    None => p2pimg::bundle::create_from_engine(&docker_host, &images, &pack, &output).await,
                }
            })?;
            print!("{}", report::bundle_listing(&output, &made.manifest, made.bytes));
        }
        BundleCommand::Verify { file } => {
            let bundle = p2pimg::bundle::Bundle::open(&file)?;
            bundle.verify(|_, _| {})?;
            let chunks = bundle.manifest().chunks.len();
            println!(
                "{}: {chunks} chunks verified, manifest {}",
                file.display(),
                bundle.manifest().id()
            );
        }
        BundleCommand::Ls { file } => {
            let bundle = p2pimg::bundle::Bundle::open(&file)?;
            let bytes = std::fs::metadata(&file)?.len();
            print!("{}", report::bundle_listing(&file, bundle.manifest(), bytes));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(log: LogFormat, args: StatusArgs) -> anyhow::Result<ExitCode> {
    logging(log, "warn", std::io::stderr);
    let nodes = args.targets.nodes()?;
    let t = &args.targets;
    let answers = runtime()?.block_on(p2pimg::status::status(
        &nodes,
        &t.cluster_dir,
        &t.identity,
        &args.images,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string(&answers)?);
    } else {
        print!("{}", report::status_table(&args.images, &answers));
    }
    let all_answered = answers.iter().all(|a| a.ids.is_ok());
    Ok(if all_answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
