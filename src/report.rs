//! How a push looks to people: plain progress lines while it runs and a
//! final table; or, with `--json`, one JSON object per line.

use std::collections::HashMap;
use std::fmt::Write;

use crate::proto::Plan;
use crate::push::{NodeStatus, PushEvent, PushReport};

/// Progress is printed each time a node crosses another tenth of its bytes.
const PROGRESS_STEPS: u64 = 10;

/// Turns push events into lines for a terminal or a log.
#[derive(Default)]
pub struct Printer {
    plans: HashMap<String, Plan>,
    step: HashMap<String, u64>,
}

impl Printer {
    /// The line for an event, if it deserves one.
    pub fn line(&mut self, event: &PushEvent) -> Option<String> {
        match event {
            PushEvent::Exported { images, layers, chunks, bytes, compressed, secs } => Some(format!(
                "exported {images} image(s): {layers} layers, {chunks} chunks, {} ({} compressed) in {secs:.1}s",
                human(*bytes),
                human(*compressed)
            )),
            PushEvent::Planned { node, plan } => {
                self.plans.insert(node.clone(), plan.clone());
                Some(plan_line(node, plan))
            }
            PushEvent::Progress { node, progress } => {
                let total = self.plans.get(node).map_or(0, |p| p.need_bytes).max(1);
                let step = progress.bytes.saturating_mul(PROGRESS_STEPS) / total;
                let last = self.step.insert(node.clone(), step);
                if progress.loading {
                    return Some(format!("{node}: all chunks verified, loading into docker"));
                }
                (last != Some(step) && progress.bytes > 0).then(|| format!("{node}: {}% ({})", step * 10, human(progress.bytes)))
            }
            PushEvent::Finished { node, status } => Some(format!("{node}: {}", status_text(status))),
        }
    }
}

fn plan_line(node: &str, plan: &Plan) -> String {
    if plan.present.iter().all(|p| *p) {
        return format!("{node}: already has every image");
    }
    let resumed = match plan.stored_chunks {
        0 => String::new(),
        n => format!(", {n} chunks already stored"),
    };
    format!(
        "{node}: fetching {} chunks ({}){resumed}",
        plan.need_chunks,
        human(plan.need_bytes)
    )
}

fn status_text(status: &NodeStatus) -> String {
    match status {
        NodeStatus::Loaded => "loaded".into(),
        NodeStatus::Skipped => "skipped: already present".into(),
        NodeStatus::Failed(reason) => format!("failed: {reason}"),
    }
}

/// The final table: one line per node, then the seed's upload.
pub fn table(report: &PushReport) -> String {
    let mut out = String::new();
    let width = report
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
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
pub fn bundle_listing(path: &std::path::Path, m: &crate::manifest::Manifest, bytes: u64) -> String {
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
pub fn status_table(refs: &[String], nodes: &[crate::status::NodeImages]) -> String {
    let mut out = String::new();
    let width = nodes.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(out, "{:width$}  {}", "NODE", refs.join("  "));
    for node in nodes {
        let cells = match &node.ids {
            Ok(ids) => {
                let short = |id: &Option<String>| {
                    id.as_deref()
                        .map_or("-".to_string(), |i| i[..i.len().min(19)].into())
                };
                ids.iter().map(short).collect::<Vec<_>>().join("  ")
            }
            Err(reason) => format!("cannot ask: {reason}"),
        };
        let _ = writeln!(out, "{:width$}  {cells}", node.name);
    }
    out
}

/// Bytes for people: 1.5 MB, 820 kB, 12 B (decimal units, as `docker images`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Progress;

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
        };
        assert!(p
            .line(&PushEvent::Planned {
                node: "n1".into(),
                plan
            })
            .unwrap()
            .contains("10 chunks"));
        let at = |bytes| PushEvent::Progress {
            node: "n1".into(),
            progress: Progress {
                chunks: 1,
                bytes,
                loading: false,
            },
        };
        assert_eq!(p.line(&at(120)).as_deref(), Some("n1: 10% (120 B)"));
        assert_eq!(p.line(&at(150)), None);
        assert_eq!(p.line(&at(200)).as_deref(), Some("n1: 20% (200 B)"));
    }
}
