//! How a push looks to people: a live fleet view on a terminal
//! ([`live`]), plain progress lines elsewhere, and a final table; or, with
//! `--json`, one JSON object per line. Also the `bundle` and `status` listings
//! and the dry run's table.

mod dryrun;
mod fleet;
mod live;

use crate::push::status::{Answer, NodeImages};
use std::collections::HashMap;
use std::fmt::Write;
use std::time::Instant;

use indicatif::ProgressDrawTarget;
use tokio::sync::mpsc;

pub use dryrun::dry_run_table;
pub use fleet::{Fleet, LineText, NodeState};
pub use live::{LiveView, LogWriter};

use crate::ops::human;
use crate::push::{NodeStatus, PushEvent, PushReport};
use crate::swarm::UploadMeter;
use crate::wire::{Plan, Progress};

/// Progress is printed each time a node crosses another tenth of its bytes.
const PROGRESS_STEPS: u64 = 10;

/// Turns push events into lines for a terminal or a log.
#[derive(Default)]
pub struct Printer {
    plans: HashMap<String, Plan>,
    step: HashMap<String, u64>,
    /// What each node waits for, as last printed.
    waiting: HashMap<String, String>,
}

impl Printer {
    /// The line for an event, if it deserves one.
    pub fn line(&mut self, event: &PushEvent) -> Option<String> {
        match event {
            PushEvent::Exported { .. } => exported_line(event),
            PushEvent::Planned { node, plan, reload } => {
                self.plans.insert(node.clone(), plan.clone());
                self.waiting.remove(node);
                Some(plan_line(node, plan, *reload))
            }
            PushEvent::Waiting { node, reason } => self.waiting_line(node, Some(reason)),
            PushEvent::Progress { node, progress } => {
                let wait = self.waiting_line(node, progress.reason.as_ref());
                if progress.reason.is_some() {
                    return wait;
                }
                // A wait that ended shows as the next step, or on its own.
                self.progress_line(node, progress).or(wait)
            }
            PushEvent::Finished { node, status } => Some(format!("{node}: {}", status_text(status))),
        }
    }

    /// `n1: 40% (8.2 MB)` at each tenth of the node's bytes, and once
    /// when it loads.
    fn progress_line(&mut self, node: &str, progress: &Progress) -> Option<String> {
        let total = self.plans.get(node).map_or(0, |p| p.need_bytes).max(1);
        let step = progress.bytes.saturating_mul(PROGRESS_STEPS) / total;
        let last = self.step.insert(node.to_string(), step);
        if progress.loading {
            return Some(format!("{node}: all chunks verified, loading into docker"));
        }
        (last != Some(step) && progress.bytes > 0)
            .then(|| format!("{node}: {}% ({})", step * 10, human(progress.bytes)))
    }

    /// `n1: waiting: <reason>` when a node starts waiting or waits for
    /// something else; `n1: moving again` when its wait ends.
    fn waiting_line(&mut self, node: &str, reason: Option<&String>) -> Option<String> {
        match reason {
            Some(reason) if self.waiting.get(node) == Some(reason) => None,
            Some(reason) => {
                self.waiting.insert(node.to_string(), reason.clone());
                Some(format!("{node}: waiting: {reason}"))
            }
            None => self.waiting.remove(node).map(|_| format!("{node}: moving again")),
        }
    }
}

/// How push progress is shown when not `--json` (`--progress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// The live view when stdout is a terminal that can draw it (TERM set
    /// and not `dumb`), plain lines otherwise.
    Auto,
    /// The live view, even where it was not detected.
    Live,
    /// Plain lines.
    Plain,
}

/// What a push prints on stdout while it runs and when it ends.
pub enum PushView {
    /// `--json`: each event as a JSON object with `t`, seconds since `start`.
    Json {
        /// When the push started.
        start: Instant,
    },
    /// A plain line per notable event.
    Plain(Printer),
    /// The live fleet view.
    Live(LiveView),
}

impl PushView {
    /// The view for a push to `nodes` (in inventory order); the live view
    /// reads the seed's upload from `meter`.
    pub fn new(json: bool, mode: ProgressMode, nodes: &[String], meter: &UploadMeter) -> PushView {
        if json {
            return PushView::Json {
                start: Instant::now(),
            };
        }
        let target = match mode {
            ProgressMode::Plain => None,
            // indicatif hides its stdout target where it cannot draw.
            ProgressMode::Auto => {
                Some(ProgressDrawTarget::stdout_with_hz(live::REFRESH_HZ)).filter(|t| !t.is_hidden())
            }
            ProgressMode::Live => Some(ProgressDrawTarget::term_like_with_hz(
                Box::new(console::Term::buffered_stdout()),
                live::REFRESH_HZ,
            )),
        };
        match target {
            Some(target) => PushView::Live(LiveView::new(target, nodes, meter.clone())),
            None => PushView::Plain(Printer::default()),
        }
    }

    /// The writer for log lines: above the live view while it is up.
    pub fn log_writer(&self) -> LogWriter {
        match self {
            PushView::Live(view) => view.log_writer(),
            _ => LogWriter::default(),
        }
    }

    /// Shows events until the push closes the channel; returns the view
    /// for [`PushView::finish`].
    pub async fn follow(mut self, mut events: mpsc::UnboundedReceiver<PushEvent>) -> PushView {
        let mut tick = tokio::time::interval(live::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let live = matches!(self, PushView::Live(_));
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event(&event),
                    None => return self,
                },
                _ = tick.tick(), if live => {
                    if let PushView::Live(view) = &mut self {
                        view.on_tick();
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: &PushEvent) {
        match self {
            PushView::Json { start } => {
                let mut value = serde_json::to_value(event).expect("events serialize");
                value["t"] = start.elapsed().as_secs_f64().into();
                println!("{value}");
            }
            PushView::Plain(printer) => {
                if let Some(line) = printer.line(event) {
                    println!("{line}");
                }
            }
            PushView::Live(view) => view.on_event(event),
        }
    }

    /// Takes the view down and prints the end: the final table, or with
    /// `--json` the report object.
    pub fn finish(self, report: &PushReport) {
        match self {
            PushView::Json { .. } => {
                let value =
                    serde_json::json!({ "event": "report", "report": report, "success": report.success() });
                println!("{value}");
            }
            view => {
                drop(view);
                print!("{}", table(report));
            }
        }
    }
}

/// The export summary, for an `Exported` event.
fn exported_line(event: &PushEvent) -> Option<String> {
    let PushEvent::Exported {
        images,
        layers,
        chunks,
        bytes,
        compressed,
        secs,
    } = event
    else {
        return None;
    };
    Some(format!(
        "exported {images} image(s): {layers} layers, {chunks} chunks, {} ({} compressed) in {secs:.1}s",
        human(*bytes),
        human(*compressed)
    ))
}

/// `n1: fetching 6 chunks (2.1 MB)` when a node plans; `reload`: it holds
/// every image and loads them again (`--force`).
fn plan_line(node: &str, plan: &Plan, reload: bool) -> String {
    if !reload && plan.present.iter().all(|p| *p) {
        return format!("{node}: already has every image");
    }
    let resumed = match plan.stored_chunks {
        0 => String::new(),
        n => format!(", {n} chunks already stored"),
    };
    let reloading = match reload {
        true => "already has every image; loading it again (--force), ",
        false => "",
    };
    format!(
        "{node}: {reloading}fetching {} chunks ({}){resumed}",
        plan.need_chunks,
        human(plan.need_bytes)
    )
}

fn status_text(status: &NodeStatus) -> String {
    match status {
        NodeStatus::Loaded => "loaded".into(),
        NodeStatus::Skipped => "skipped: already present".into(),
        NodeStatus::Reloaded => "reloaded (forced)".into(),
        NodeStatus::Failed(reason) => format!("failed: {reason}"),
    }
}

/// The width of a table's NODE column: the longest name, at least the
/// header's.
fn name_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(str::len).max().unwrap_or(0).max("NODE".len())
}

/// The final table: one line per node, then the seed's upload.
pub fn table(report: &PushReport) -> String {
    let mut out = String::new();
    let width = name_width(report.nodes.iter().map(|n| n.name.as_str()));
    let _ = writeln!(
        out,
        "{:width$}  {:21}  {:>10}  {:>10}  RESULT",
        "NODE", "ADDRESS", "FROM SEED", "FROM PEERS"
    );
    for n in &report.nodes {
        let from_seed: u64 = n
            .received
            .iter()
            .filter(|r| r.peer == report.pusher)
            .map(|r| r.bytes)
            .sum();
        let from_peers: u64 = n
            .received
            .iter()
            .filter(|r| r.peer != report.pusher)
            .map(|r| r.bytes)
            .sum();
        let _ = writeln!(
            out,
            "{:width$}  {:21}  {:>10}  {:>10}  {}",
            n.name,
            n.addr.to_string(),
            human(from_seed),
            human(from_peers),
            status_text(&n.status)
        );
    }
    let uploaded: u64 = report.seed_uploaded.iter().map(|p| p.bytes).sum();
    let ratio = uploaded as f64 / report.compressed_bytes.max(1) as f64;
    let _ = writeln!(
        out,
        "seed uploaded {} ({ratio:.2}x the {} image) in {:.1}s",
        human(uploaded),
        human(report.compressed_bytes),
        report.secs
    );
    out
}

/// What `bundle ls` and `bundle create` print: the manifest ID, then one
/// line per image with its layers and sizes.
pub fn bundle_listing(path: &std::path::Path, m: &crate::content::manifest::Manifest, bytes: u64) -> String {
    let mut out = format!(
        "{}: {} ({} chunks), manifest {}\n",
        path.display(),
        human(bytes),
        m.chunks.len(),
        m.id()
    );
    for image in &m.images {
        let layers = image.layers.iter().map(|&l| &m.layers[l as usize]);
        let size: u64 = layers.clone().map(|l| l.size).sum();
        let compressed: u64 = layers
            .map(|l| m.layer_chunks(l).iter().map(|c| u64::from(c.zsize)).sum::<u64>())
            .sum();
        let refs = if image.refs.is_empty() {
            "<untagged>".to_string()
        } else {
            image.refs.join(", ")
        };
        let id = &image.id[..image.id.len().min(19)];
        let _ = writeln!(
            out,
            "  {refs}  {id}  {} layers  {} ({} compressed)",
            image.layers.len(),
            human(size),
            human(compressed)
        );
    }
    out
}

/// The `status` table: one line per node, one column per reference.
pub fn status_table(refs: &[String], nodes: &[NodeImages]) -> String {
    let mut out = String::new();
    let width = name_width(nodes.iter().map(|n| n.name.as_str()));
    let engine_of = |n: &NodeImages| n.answer.as_ref().map_or(String::new(), |a| a.engine.clone());
    let engine_width = nodes.iter().map(|n| engine_of(n).len()).max().unwrap_or(0).max(6);
    let _ = writeln!(
        out,
        "{:width$}  {:engine_width$}  {}",
        "NODE",
        "ENGINE",
        refs.join("  ")
    );
    for node in nodes {
        let cells = match &node.answer {
            Ok(answer) => status_cells(answer),
            Err(reason) => format!("cannot ask: {reason}"),
        };
        let engine = engine_of(node);
        let _ = writeln!(out, "{:width$}  {engine:engine_width$}  {cells}", node.name);
    }
    out
}

/// Per reference: the image ID, and the manifest digest where the node's
/// store keeps one; `-` where the image is absent.
fn status_cells(answer: &Answer) -> String {
    let short = |d: &str| d[..d.len().min(19)].to_string();
    let cell = |(id, digest): (&Option<String>, Option<&Option<String>>)| match (id, digest) {
        (None, _) => "-".to_string(),
        (Some(id), Some(Some(digest))) => format!("{} (manifest {})", short(id), short(digest)),
        (Some(id), _) => short(id),
    };
    let digests = answer.digests.iter().map(Some).chain(std::iter::repeat(None));
    answer
        .ids
        .iter()
        .zip(digests)
        .map(cell)
        .collect::<Vec<_>>()
        .join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(12), "12 B");
        assert_eq!(human(1_500_000), "1.5 MB");
        assert_eq!(human(820_000), "820.0 kB");
    }

    #[test]
    fn progress_prints_each_tenth_once() {
        let mut p = Printer::default();
        let plan = Plan {
            present: vec![false],
            need_chunks: 10,
            need_bytes: 1000,
            stored_chunks: 0,
            engine: String::new(),
        };
        assert!(p
            .line(&PushEvent::Planned {
                node: "n1".into(),
                plan,
                reload: false,
            })
            .unwrap()
            .contains("10 chunks"));
        let at = |bytes| PushEvent::Progress {
            node: "n1".into(),
            progress: Progress {
                chunks: 1,
                bytes,
                loading: false,
                reason: None,
            },
        };
        assert_eq!(p.line(&at(120)).as_deref(), Some("n1: 10% (120 B)"));
        assert_eq!(p.line(&at(150)), None);
        assert_eq!(p.line(&at(200)).as_deref(), Some("n1: 20% (200 B)"));
    }

    #[test]
    fn waits_print_once_each_and_when_they_end() {
        let mut p = Printer::default();
        let reason = |r: Option<&str>, bytes, loading| PushEvent::Progress {
            node: "n1".into(),
            progress: Progress {
                chunks: 1,
                bytes,
                loading,
                reason: r.map(Into::into),
            },
        };
        let dialing = PushEvent::Waiting {
            node: "n1".into(),
            reason: "not answering, dialing again".into(),
        };
        assert_eq!(
            p.line(&dialing).as_deref(),
            Some("n1: waiting: not answering, dialing again")
        );
        assert_eq!(p.line(&dialing), None);
        let plan = Plan {
            present: vec![false],
            need_chunks: 10,
            need_bytes: 1000,
            stored_chunks: 0,
            engine: String::new(),
        };
        p.line(&PushEvent::Planned {
            node: "n1".into(),
            plan,
            reload: false,
        });
        let stuck = reason(Some("no peer offers"), 0, false);
        assert_eq!(p.line(&stuck).as_deref(), Some("n1: waiting: no peer offers"));
        assert_eq!(p.line(&stuck), None, "the same reason again prints nothing");
        assert_eq!(
            p.line(&reason(None, 0, false)).as_deref(),
            Some("n1: moving again")
        );
        let engine = reason(Some("waiting for the Docker Engine"), 1000, true);
        assert_eq!(
            p.line(&engine).as_deref(),
            Some("n1: waiting: waiting for the Docker Engine")
        );
        assert_eq!(
            p.line(&reason(None, 1000, true)).as_deref(),
            Some("n1: all chunks verified, loading into docker")
        );
    }
}
