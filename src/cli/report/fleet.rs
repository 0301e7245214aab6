//! The state behind the live fleet view, with no terminal in it: what each
//! node is doing, how many bytes it has, how fast they come, and the text
//! of each line. Time is passed in, so every function here is pure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::status_text;
use crate::ops::human;
use crate::push::{NodeStatus, PushEvent};

/// Rates are measured over the last 5 s: long enough to smooth the steps of
/// whole chunks (512 KiB each by default), short enough to follow a change of
/// pace. A node that receives nothing for that long shows 0 B/s.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// No rate is shown before samples span this long: one chunk over a few
/// milliseconds would give an absurd figure.
const MIN_RATE_SPAN: Duration = Duration::from_millis(500);
/// Room for the longest state word (`exporting`), so the bars line up.
const STATE_WIDTH: usize = 9;
/// Characters inside a bar's brackets.
const BAR_WIDTH: usize = 24;

/// Where a node is in the push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// No plan from it yet.
    Queued,
    /// Receiving chunks.
    Fetching,
    /// Every chunk verified; `docker load` runs.
    Loading,
    /// The images are loaded.
    Done,
    /// It already held every image.
    Skipped,
    /// It held every image and loaded them again (`--force`).
    Reloaded,
    /// It failed, and why.
    Failed(String),
}

impl NodeState {
    /// The state's word in the view.
    pub fn word(&self) -> &'static str {
        match self {
            NodeState::Queued => "queued",
            NodeState::Fetching => "fetching",
            NodeState::Loading => "loading",
            NodeState::Done => "done",
            NodeState::Skipped => "skipped",
            NodeState::Reloaded => "reloaded",
            NodeState::Failed(_) => "failed",
        }
    }
}

/// What one line of the view shows: `label state [bar] detail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineText {
    /// The node's name, or `total`.
    pub label: String,
    /// The state word.
    pub state: String,
    /// (bytes so far, bytes in all) when the line has a bar.
    pub bar: Option<(u64, u64)>,
    /// Bytes, rate, ETA, or why it failed.
    pub detail: String,
}

impl LineText {
    /// The line as drawn, its label padded to `label_width`:
    /// `n1     fetching  [=====>      ] 8.2 MB / 17.9 MB  4.1 MB/s  ETA 3s`.
    pub fn render(&self, label_width: usize) -> String {
        let head = format!("{:label_width$}  {:STATE_WIDTH$}", self.label, self.state);
        let line = match self.bar {
            Some((done, len)) => format!("{head} [{}] {}", bar(done, len), self.detail),
            None => format!("{head} {}", self.detail),
        };
        line.trim_end().to_string()
    }
}

/// `=====>      `: [`BAR_WIDTH`] characters, filled in proportion to
/// `done` of `len` (full when there was nothing to do).
fn bar(done: u64, len: u64) -> String {
    let filled = match len {
        0 => BAR_WIDTH,
        _ => (done.min(len) as u128 * BAR_WIDTH as u128 / len as u128) as usize,
    };
    let head = if filled < BAR_WIDTH && done > 0 { ">" } else { "" };
    let blank = BAR_WIDTH - filled - head.len();
    format!("{}{head}{}", "=".repeat(filled), " ".repeat(blank))
}

/// Byte counts sampled over time, for a rate over [`RATE_WINDOW`].
#[derive(Debug, Default)]
struct Rate {
    /// (when, bytes so far), oldest first; at most one sample is older
    /// than the window, the base the rate is measured from.
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn record(&mut self, now: Instant, bytes: u64) {
        self.samples.push_back((now, bytes));
        let Some(from) = now.checked_sub(RATE_WINDOW) else {
            return;
        };
        while self.samples.get(1).is_some_and(|(t, _)| *t <= from) {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the last [`RATE_WINDOW`] up to `now`.
    fn per_sec(&self, now: Instant) -> Option<f64> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let from = now.checked_sub(RATE_WINDOW).unwrap_or(first.0);
        let base = self
            .samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= from)
            .unwrap_or(first);
        let span = now.saturating_duration_since(base.0);
        (span >= MIN_RATE_SPAN).then(|| last.1.saturating_sub(base.1) as f64 / span.as_secs_f64())
    }
}

#[derive(Debug)]
struct Row {
    name: String,
    state: NodeState,
    need: u64,
    bytes: u64,
    rate: Rate,
    /// What it waits for, while it cannot move on.
    waiting: Option<String>,
}

impl Row {
    fn line(&self, now: Instant) -> LineText {
        if let Some(reason) = self.waiting.as_ref().filter(|_| self.state.is_ongoing()) {
            return self.waiting_line(reason);
        }
        let (bar, detail) = match &self.state {
            NodeState::Queued => (None, String::new()),
            NodeState::Fetching => (
                Some((self.bytes, self.need)),
                transfer(self.bytes, self.need, self.rate.per_sec(now)),
            ),
            NodeState::Loading => (
                Some((self.bytes, self.need)),
                format!("{}, loading into docker", human(self.bytes)),
            ),
            NodeState::Done => (
                Some((self.bytes, self.need)),
                format!("{} fetched, loaded", human(self.bytes)),
            ),
            NodeState::Skipped => (None, "already has every image".into()),
            NodeState::Reloaded => (
                Some((self.bytes, self.need)),
                format!("{} fetched, reloaded (forced)", human(self.bytes)),
            ),
            NodeState::Failed(reason) => (None, reason.clone()),
        };
        LineText {
            label: self.name.clone(),
            state: self.state.word().into(),
            bar,
            detail,
        }
    }
}

/// Every node's state and the push's totals.
#[derive(Debug)]
pub struct Fleet {
    rows: Vec<Row>,
    exported: bool,
    seed_uploaded: u64,
    total_rate: Rate,
}

impl Row {
    /// `n1  waiting  [===>    ] none of its 3 peers offers…  8.2 MB / 17.9 MB`:
    /// the reason first, since a narrow terminal cuts the end.
    fn waiting_line(&self, reason: &str) -> LineText {
        let (bar, detail) = match self.state {
            NodeState::Queued => (None, reason.to_string()),
            _ => (
                Some((self.bytes, self.need)),
                format!("{reason}  {} / {}", human(self.bytes), human(self.need)),
            ),
        };
        LineText {
            label: self.name.clone(),
            state: "waiting".into(),
            bar,
            detail,
        }
    }
}

impl NodeState {
    /// Whether the node is still on its way (queued, fetching, loading).
    fn is_ongoing(&self) -> bool {
        matches!(self, NodeState::Queued | NodeState::Fetching | NodeState::Loading)
    }
}

impl Fleet {
    /// A fleet whose nodes are all queued, in display order.
    pub fn new(nodes: &[String]) -> Fleet {
        let row = |name: &String| Row {
            name: name.clone(),
            state: NodeState::Queued,
            need: 0,
            bytes: 0,
            rate: Rate::default(),
            waiting: None,
        };
        Fleet {
            rows: nodes.iter().map(row).collect(),
            exported: false,
            seed_uploaded: 0,
            total_rate: Rate::default(),
        }
    }

    /// Number of node lines.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Records an event seen at `now`. Returns which node line changed, if
    /// one did, and a line to keep above the view, if the event deserves one
    /// (the export summary, a node's failure in full).
    pub fn on_event(&mut self, event: &PushEvent, now: Instant) -> (Option<usize>, Option<String>) {
        let node = match event {
            PushEvent::Exported { .. } => {
                self.exported = true;
                return (None, super::exported_line(event));
            }
            PushEvent::Planned { node, .. }
            | PushEvent::Progress { node, .. }
            | PushEvent::Waiting { node, .. }
            | PushEvent::Finished { node, .. } => node,
        };
        let Some(i) = self.rows.iter().position(|r| &r.name == node) else {
            return (None, None);
        };
        let row = &mut self.rows[i];
        let keep = match event {
            PushEvent::Planned { plan, reload, .. } => {
                row.need = plan.need_bytes;
                row.waiting = None;
                row.state = if !reload && plan.present.iter().all(|p| *p) {
                    NodeState::Skipped
                } else {
                    NodeState::Fetching
                };
                row.rate.record(now, 0);
                None
            }
            PushEvent::Progress { progress, .. } => {
                row.bytes = progress.bytes;
                row.rate.record(now, progress.bytes);
                row.waiting = progress.reason.clone();
                if progress.loading {
                    row.state = NodeState::Loading;
                }
                None
            }
            PushEvent::Waiting { reason, .. } => {
                row.waiting = Some(reason.clone());
                None
            }
            PushEvent::Finished { status, .. } => {
                row.state = match status {
                    NodeStatus::Loaded => NodeState::Done,
                    NodeStatus::Skipped => NodeState::Skipped,
                    NodeStatus::Reloaded => NodeState::Reloaded,
                    NodeStatus::Failed(reason) => NodeState::Failed(reason.clone()),
                };
                matches!(status, NodeStatus::Failed(_)).then(|| format!("{node}: {}", status_text(status)))
            }
            PushEvent::Exported { .. } => unreachable!("handled above"),
        };
        let total = self.rows.iter().map(|r| r.bytes).sum();
        self.total_rate.record(now, total);
        (Some(i), keep)
    }

    /// Records what the seed has uploaded so far.
    pub fn set_seed_uploaded(&mut self, bytes: u64) {
        self.seed_uploaded = bytes;
    }

    /// The line of node `i` (in the order given to [`Fleet::new`]).
    pub fn node_line(&self, i: usize, now: Instant) -> LineText {
        self.rows[i].line(now)
    }

    /// The total line: nodes done, every node's bytes, the seed's upload.
    pub fn total_line(&self, now: Instant) -> LineText {
        let label = "total".to_string();
        if !self.exported {
            let detail = "exporting and packing the images".into();
            let state = "exporting".into();
            return LineText {
                label,
                state,
                bar: None,
                detail,
            };
        }
        let bytes = self.rows.iter().map(|r| r.bytes).sum();
        // A failed node has nothing left to fetch: the bar can still fill.
        let need = self.rows.iter().map(|r| match r.state {
            NodeState::Failed(_) => r.bytes,
            _ => r.need,
        });
        let need = need.sum();
        let count = |f: fn(&NodeState) -> bool| self.rows.iter().filter(|r| f(&r.state)).count();
        let done = count(|s| matches!(s, NodeState::Done | NodeState::Skipped | NodeState::Reloaded));
        let failed = count(|s| matches!(s, NodeState::Failed(_)));
        let waiting = self
            .rows
            .iter()
            .filter(|r| r.waiting.is_some() && r.state.is_ongoing())
            .count();
        let state = if done + failed == self.rows.len() {
            "finished"
        } else {
            "pushing"
        };
        let failed = match failed {
            0 => String::new(),
            n => format!(", {n} failed"),
        };
        let waiting = match waiting {
            0 => String::new(),
            n => format!(", {n} waiting"),
        };
        // What matters most first: a narrow terminal cuts the end.
        let detail = format!(
            "{done}/{} done{failed}{waiting}  {}  seed uploaded {}",
            self.rows.len(),
            transfer(bytes, need, self.total_rate.per_sec(now)),
            human(self.seed_uploaded),
        );
        LineText {
            label,
            state: state.into(),
            bar: Some((bytes, need)),
            detail,
        }
    }
}

/// `8.2 MB / 17.9 MB  4.1 MB/s  ETA 3s`; the rate and ETA once known.
fn transfer(bytes: u64, need: u64, rate: Option<f64>) -> String {
    let mut s = format!("{} / {}", human(bytes), human(need));
    let Some(rate) = rate else {
        return s;
    };
    s.push_str(&format!("  {}/s", human(rate as u64)));
    let left = need.saturating_sub(bytes);
    if left > 0 && rate >= 1.0 {
        s.push_str(&format!("  ETA {}", duration(left as f64 / rate)));
    }
    s
}

/// Seconds for people: 42s, 3m05s, 2h07m.
pub fn duration(secs: f64) -> String {
    let s = secs.ceil() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
#[path = "tests/fleet.rs"]
mod tests;
