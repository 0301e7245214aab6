//! Each mode of the command line, run from its parsed arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use tracing_subscriber::fmt::MakeWriter;

use super::report::{self, PushView};
use super::{BundleCommand, CertCommand, Cli, Command, LogFormat, PushArgs, StatusArgs};
use crate::config::AgentOptions;
use crate::content::pack::PackOptions;
use crate::net::identity::{self, Role};
use crate::ops::signal::Signals;
use crate::push::bundle::{CreateError, Input};
use crate::push::{self, PushOptions, Source};
use crate::swarm::UploadMeter;

pub(super) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init { dir } => init(dir),
        Command::Cert(CertCommand::Issue {
            name,
            nodes,
            out,
            dir,
            role,
            days,
        }) => match (name, nodes) {
            (_, Some(nodes)) => super::certs::issue_inventory(&nodes, &dir, out.as_deref(), days),
            (Some(name), None) => issue(name, dir, role, days),
            (None, None) => unreachable!("clap requires NAME or --nodes"),
        },
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
        "next: `p2pimg cert issue --nodes nodes.toml --dir {}` for every node of the inventory \
         (or `cert issue NODE` for one)",
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

/// Logs what the agent's engine is, or a warning naming why it cannot be
/// reached (the agent still starts: the engine is asked again at each push).
async fn say_engine(spec: crate::engine::EngineSpec) {
    match crate::engine::Engine::connect(&spec).await {
        Ok(engine) => tracing::info!(engine = %engine.about(), "engine found"),
        Err(e) => tracing::warn!("{e}; pushes to this node fail until it answers"),
    }
}

fn agent(log: LogFormat, config: PathBuf) -> anyhow::Result<ExitCode> {
    logging(log, "info", std::io::stderr);
    let opts = AgentOptions::load(&config)?;
    runtime()?.block_on(async {
        let timeouts = crate::net::Timeouts::from_test_env();
        let agent = crate::agent::Agent::start_with(&opts, timeouts)?;
        let mut signals = Signals::install().context("cannot handle SIGINT and SIGTERM")?;
        let stop = async move {
            signals.recv().await;
        };
        println!("listening on {}", agent.local_addr()?);
        if let Some(addr) = opts.metrics_listen {
            let listener = crate::ops::metrics::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr} (metrics_listen in agent.toml)"))?;
            println!("metrics on http://{}/metrics", listener.local_addr()?);
            tokio::spawn(crate::ops::metrics::serve(listener, opts.state_dir.clone(), agent.metrics()));
        }
        tracing::info!(name = %opts.name, state_dir = %opts.state_dir.display(), engine = %opts.engine.kind, engine_host = %opts.engine.host, "agent started");
        tokio::spawn(say_engine(opts.engine.clone()));
        let requested = agent.run(stop).await;
        Ok(if requested { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

fn push_images(log: LogFormat, args: PushArgs) -> anyhow::Result<ExitCode> {
    // What the user typed is checked before any file is read or image exported.
    push::check_request(&args.images, &args.tags)?;
    let nodes = args.targets.nodes()?;
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let seed_meter = UploadMeter::default();
    if args.dry_run {
        // Plain lines: the export line, then the table; no live view.
        let view = PushView::new(args.json, report::ProgressMode::Plain, &names, &seed_meter);
        logging(log, "warn", std::io::stderr);
        let json = args.json;
        return dry_run(push_options(args, nodes, seed_meter), view, json);
    }
    let view = PushView::new(args.json, args.progress.into(), &names, &seed_meter);
    logging(log, "warn", view.log_writer());
    let opts = push_options(args, nodes, seed_meter);
    runtime()?.block_on(async move {
        // SIGINT and SIGTERM end the push, not the process: the nodes are
        // told the pusher leaves, the seed's scratch directory is removed,
        // and the table says which nodes were not done.
        let mut signals = Signals::install().context("cannot handle SIGINT and SIGTERM")?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shown = tokio::spawn(view.follow(rx));
        let timeouts = crate::net::Timeouts::from_test_env();
        let report = push::push_with(opts, timeouts, tx, async move { signals.recv().await }).await;
        // On an error the view is dropped, and so cleared, before main prints it.
        let view = shown.await.context("the progress display failed")?;
        let report = match report {
            Err(push::PushError::Interrupted(signal)) => {
                eprintln!("p2pimg: {}", push::PushError::Interrupted(signal));
                return Ok(ExitCode::from(signal.exit_code()));
            }
            report => report?,
        };
        view.finish(&report);
        Ok(exit_code(&report))
    })
}

/// What to push where, from the command line.
fn push_options(
    args: PushArgs,
    nodes: Vec<crate::config::NodeEntry>,
    seed_meter: UploadMeter,
) -> PushOptions {
    let source = match args.bundle {
        Some(file) => Source::Bundle(file),
        None => Source::Engine {
            engine: args.engine.spec(),
            images: args.images,
            pack: args.pack.options(),
        },
    };
    PushOptions {
        source,
        nodes,
        cluster_dir: args.targets.cluster_dir,
        identity: args.targets.identity,
        state_dir: args.state_dir,
        keep: args.keep,
        tags: args.tags,
        timeout: args.timeout.map(std::time::Duration::from_secs),
        max_upload_mbit: args.max_upload_mbit,
        seed_meter,
        force: args.force,
    }
}

/// `push --dry-run`: the export line (or event), then the dry run's table
/// (or report). 0 when every node answered and none would fail, else 1;
/// 130 or 143 when a signal ends the export.
fn dry_run(opts: PushOptions, view: PushView, json: bool) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let mut signals = Signals::install().context("cannot handle SIGINT and SIGTERM")?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shown = tokio::spawn(view.follow(rx));
        let timeouts = crate::net::Timeouts::from_test_env();
        let stop = async move { signals.recv().await };
        let report = push::dryrun::dry_run(opts, timeouts, tx, stop).await;
        let _ = shown.await;
        let report = match report {
            Err(push::PushError::Interrupted(signal)) => {
                eprintln!("p2pimg: {}", push::PushError::Interrupted(signal));
                return Ok(ExitCode::from(signal.exit_code()));
            }
            report => report?,
        };
        match json {
            true => {
                let value =
                    serde_json::json!({ "event": "dry_run", "report": report, "success": report.success() });
                println!("{value}");
            }
            false => print!("{}", report::dry_run_table(&report)),
        }
        Ok(if report.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// 0 when every node holds the images, 1 when one failed, 130 or 143 when
/// a signal cut the push short (then a line names the nodes not done).
fn exit_code(report: &push::PushReport) -> ExitCode {
    let Some(signal) = report.interrupted else {
        return if report.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    };
    let not_done: Vec<&str> = report
        .nodes
        .iter()
        .filter(|n| matches!(n.status, push::NodeStatus::Failed(_)))
        .map(|n| n.name.as_str())
        .collect();
    let not_done = match not_done.is_empty() {
        true => "none".to_string(),
        false => not_done.join(", "),
    };
    eprintln!(
        "p2pimg: interrupted by {}; not done: {not_done}; their agents stopped this push and keep \
         the chunks they verified, so pushing again resumes",
        signal.name(),
    );
    ExitCode::from(signal.exit_code())
}

fn bundle(log: LogFormat, cmd: BundleCommand) -> anyhow::Result<ExitCode> {
    logging(log, "warn", std::io::stderr);
    match cmd {
        BundleCommand::Create {
            images,
            from_tar,
            output,
            engine,
            pack,
        } => {
            push::check_request(&images, &[])?;
            let input = match from_tar {
                Some(tar) => Input::Tar(tar),
                None => Input::Engine {
                    engine: engine.spec(),
                    images,
                },
            };
            return create_bundle(input, &pack.options(), &output);
        }
        BundleCommand::Verify { file } => {
            let bundle = crate::content::bundle::Bundle::open(&file)?;
            bundle.verify(|_, _| {})?;
            let chunks = bundle.manifest().chunks.len();
            println!(
                "{}: {chunks} chunks verified, manifest {}",
                file.display(),
                bundle.manifest().id()
            );
        }
        BundleCommand::Ls { file } => {
            let bundle = crate::content::bundle::Bundle::open(&file)?;
            let bytes = std::fs::metadata(&file)?.len();
            print!("{}", report::bundle_listing(&file, bundle.manifest(), bytes));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bundle create`: exit status 130 or 143, everything written removed, when
/// stopped by SIGINT or SIGTERM.
fn create_bundle(input: Input, pack: &PackOptions, output: &Path) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let made = rt.block_on(async {
        let mut signals = Signals::install().context("cannot handle SIGINT and SIGTERM")?;
        let stop = async move { signals.recv().await };
        anyhow::Ok(crate::push::bundle::create(input, pack, output, stop).await)
    })?;
    let made = match made {
        Err(CreateError::Stopped(stop)) => {
            eprintln!("p2pimg: {}", CreateError::Stopped(stop));
            // An export stuck on its engine must not hold the exit up.
            rt.shutdown_background();
            return Ok(ExitCode::from(stop.exit_code()));
        }
        made => made?,
    };
    print!("{}", report::bundle_listing(output, &made.manifest, made.bytes));
    Ok(ExitCode::SUCCESS)
}

fn status(log: LogFormat, args: StatusArgs) -> anyhow::Result<ExitCode> {
    logging(log, "warn", std::io::stderr);
    push::check_request(&args.images, &[])?;
    let nodes = args.targets.nodes()?;
    let t = &args.targets;
    let answers = runtime()?.block_on(crate::push::status::status(
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
    let all_answered = answers.iter().all(|a| a.answer.is_ok());
    Ok(if all_answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
