//! The live fleet view on a terminal (indicatif): a total line, then one
//! line per node with its state, a bar, bytes, rate and ETA; and the log
//! writer that keeps tracing output from tearing it.
//!
//! ```text
//!  PushEvent ──► Fleet (state, rates: report::fleet) ──► LineText ──► ProgressBar of that line
//!  tick, every TICK ──► seed upload from the UploadMeter; rates and ETAs redrawn
//!  tracing ──► LogWriter ──► MultiProgress::suspend: the view steps aside for the log line
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;

use super::fleet::{Fleet, LineText};
use crate::push::PushEvent;
use crate::swarm::UploadMeter;

/// How often rates, ETAs and the seed's upload are refreshed when no event
/// comes: 4 times a second reads as live without costing anything.
pub const TICK: Duration = Duration::from_millis(250);
/// Redraws per second at most: indicatif's own default.
pub const REFRESH_HZ: u8 = 20;
/// Each line is rendered whole by [`LineText::render`], so one update is
/// one consistent line; indicatif cuts it to the terminal's width.
const TEMPLATE: &str = "{wide_msg}";

/// The view: one indicatif progress bar per line, drawn from a [`Fleet`].
pub struct LiveView {
    multi: MultiProgress,
    total: ProgressBar,
    nodes: Vec<ProgressBar>,
    fleet: Fleet,
    meter: UploadMeter,
    label_width: usize,
}

impl LiveView {
    /// A view of `nodes`, all queued, drawn on `target`; the seed's upload
    /// is read from `meter`.
    pub fn new(target: ProgressDrawTarget, nodes: &[String], meter: UploadMeter) -> LiveView {
        let multi = MultiProgress::with_draw_target(target);
        let style = ProgressStyle::with_template(TEMPLATE).expect("the view's template is valid");
        let line = || multi.add(ProgressBar::new(0).with_style(style.clone()));
        let total = line();
        let bars = nodes.iter().map(|_| line()).collect();
        let label_width = nodes.iter().map(String::len).chain([5]).max().unwrap_or(5);
        let view = LiveView {
            multi,
            total,
            nodes: bars,
            fleet: Fleet::new(nodes),
            meter,
            label_width,
        };
        view.redraw_all(Instant::now());
        view
    }

    /// A tracing writer whose lines appear above the view, not through it.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter(Some(self.multi.clone()))
    }

    /// Shows an event: the node's line and the total change; an export
    /// summary or a failure is also printed above the view, to stay.
    pub fn on_event(&mut self, event: &PushEvent) {
        let now = Instant::now();
        let (changed, keep) = self.fleet.on_event(event, now);
        if let Some(line) = keep {
            let _ = self.multi.println(line);
        }
        if let Some(i) = changed {
            self.show(&self.nodes[i], &self.fleet.node_line(i, now));
        }
        self.show(&self.total, &self.fleet.total_line(now));
    }

    /// Refreshes what changes with time alone: rates, ETAs, the seed's upload.
    pub fn on_tick(&mut self) {
        self.fleet.set_seed_uploaded(self.meter.bytes());
        self.redraw_all(Instant::now());
    }

    fn redraw_all(&self, now: Instant) {
        self.show(&self.total, &self.fleet.total_line(now));
        for (i, bar) in self.nodes.iter().enumerate() {
            self.show(bar, &self.fleet.node_line(i, now));
        }
    }

    fn show(&self, bar: &ProgressBar, line: &LineText) {
        bar.set_message(line.render(self.label_width));
    }
}

impl Drop for LiveView {
    /// Takes the view off the screen for good: what is printed next (the
    /// final table, an error) starts where the view was.
    fn drop(&mut self) {
        for bar in self.nodes.iter().chain([&self.total]) {
            self.multi.remove(bar);
        }
        let _ = self.multi.clear();
        self.multi.set_draw_target(ProgressDrawTarget::hidden());
    }
}

/// Where tracing writes: stderr, and while a live view is up, above it
/// (the view is cleared, the line written, the view drawn again).
#[derive(Clone, Default)]
pub struct LogWriter(Option<MultiProgress>);

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            buf: Vec::new(),
            view: self.0.clone(),
        }
    }
}

/// One log event, gathered and written out whole when dropped.
pub struct LogLine {
    buf: Vec<u8>,
    view: Option<MultiProgress>,
}

impl Write for LogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&self.buf);
            let _ = err.flush();
        };
        match &self.view {
            Some(view) => view.suspend(write),
            None => write(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use indicatif::TermLike;

    use super::*;
    use crate::push::NodeStatus;
    use crate::wire::{Plan, Progress};

    /// Columns of the test terminal.
    const WIDTH: usize = 100;

    /// A terminal for indicatif to draw on: rows of text, a cursor, and
    /// the wrap at the right margin that indicatif's padding relies on.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Cells>>);

    #[derive(Debug, Default)]
    struct Cells {
        rows: Vec<String>,
        row: usize,
        col: usize,
    }

    impl Cells {
        fn put(&mut self, c: char) {
            if c == '\r' {
                self.col = 0;
                return;
            }
            if self.col == WIDTH {
                (self.row, self.col) = (self.row + 1, 0);
            }
            if self.rows.len() <= self.row {
                self.rows.resize(self.row + 1, String::new());
            }
            let mut line: Vec<char> = self.rows[self.row].chars().collect();
            line.resize(line.len().max(self.col + 1), ' ');
            line[self.col] = c;
            self.rows[self.row] = line.into_iter().collect();
            self.col += 1;
        }
    }

    impl Screen {
        /// What a person sees: each row without its trailing blanks.
        fn lines(&self) -> Vec<String> {
            let cells = self.0.lock().unwrap();
            cells.rows.iter().map(|r| r.trim_end().to_string()).collect()
        }

        fn write(&self, s: &str) {
            let mut cells = self.0.lock().unwrap();
            s.chars().for_each(|c| cells.put(c));
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            WIDTH as u16
        }
        fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
            let mut cells = self.0.lock().unwrap();
            cells.row = cells.row.saturating_sub(n);
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
            self.0.lock().unwrap().row += n;
            Ok(())
        }
        fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
            self.0.lock().unwrap().col += n;
            Ok(())
        }
        fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
            let mut cells = self.0.lock().unwrap();
            cells.col = cells.col.saturating_sub(n);
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write(s);
            let mut cells = self.0.lock().unwrap();
            (cells.row, cells.col) = (cells.row + 1, 0);
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.write(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            let mut cells = self.0.lock().unwrap();
            let row = cells.row;
            if let Some(line) = cells.rows.get_mut(row) {
                line.clear();
            }
            cells.col = 0;
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A view of n1 and node-two drawn on `screen`, with no rate limit.
    fn view(screen: &Screen) -> LiveView {
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        LiveView::new(target, &["n1".into(), "node-two".into()], UploadMeter::default())
    }

    #[test]
    fn renders_a_total_line_then_a_line_per_node() {
        let screen = Screen::default();
        let mut v = view(&screen);
        assert_eq!(
            screen.lines(),
            [
                "total     exporting exporting and packing the images",
                "n1        queued",
                "node-two  queued",
            ]
        );

        v.on_event(&PushEvent::Planned {
            node: "n1".into(),
            plan: Plan {
                present: vec![false],
                need_chunks: 2,
                need_bytes: 2_000_000,
                stored_chunks: 0,
                engine: String::new(),
            },
            reload: false,
        });
        v.on_event(&PushEvent::Progress {
            node: "n1".into(),
            progress: Progress {
                chunks: 1,
                bytes: 1_000_000,
                loading: false,
                reason: None,
            },
        });
        let lines = screen.lines();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert_eq!(
            lines[1],
            "n1        fetching  [============>           ] 1.0 MB / 2.0 MB"
        );
        assert_eq!(lines[2], "node-two  queued");
    }

    #[test]
    fn a_line_longer_than_the_terminal_is_cut_not_wrapped() {
        let screen = Screen::default();
        let mut v = view(&screen);
        let why = "x".repeat(3 * WIDTH);
        v.on_event(&PushEvent::Finished {
            node: "node-two".into(),
            status: NodeStatus::Failed(why.clone()),
        });
        let lines = screen.lines();
        // The failure in full above the view (wrapped by the terminal), then
        // the three lines of the view, each within the width.
        let view_lines = &lines[lines.len() - 3..];
        assert!(view_lines[2].starts_with("node-two  failed    xxx"), "{lines:#?}");
        assert!(view_lines.iter().all(|l| l.chars().count() <= WIDTH));
        let above: String = lines[..lines.len() - 3].concat();
        assert_eq!(above, format!("node-two: failed: {why}"));
    }

    #[test]
    fn a_fleet_taller_than_the_terminal_keeps_the_total_line() {
        let screen = Screen::default();
        let names: Vec<String> = (1..=30).map(|i| format!("n{i}")).collect();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let _view = LiveView::new(target, &names, UploadMeter::default());
        let lines = screen.lines();
        // Screen has TermLike's default height, 20 rows.
        assert_eq!(lines.len(), 20, "{lines:#?}");
        assert!(lines[0].starts_with("total  exporting"), "{lines:#?}");
        assert_eq!(lines[19], "n19    queued");
    }

    #[test]
    fn dropping_the_view_clears_it_and_logs_do_not_bring_it_back() {
        let screen = Screen::default();
        let mut v = view(&screen);
        v.on_event(&PushEvent::Finished {
            node: "n1".into(),
            status: NodeStatus::Failed("connection lost".into()),
        });
        let writer = v.log_writer();
        drop(v);
        let only_kept = |lines: Vec<String>| {
            let shown: Vec<String> = lines.into_iter().filter(|l| !l.is_empty()).collect();
            assert_eq!(shown, ["n1: failed: connection lost"]);
        };
        only_kept(screen.lines());
        // A log line after the view ended (to stderr) redraws nothing here.
        drop(writer.make_writer());
        only_kept(screen.lines());
    }
}
