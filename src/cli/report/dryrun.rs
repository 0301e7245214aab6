//! What `push --dry-run` prints: one line per node saying what a push
//! would do there, laid out as the table a push ends with.

use std::fmt::Write;

use crate::ops::human;
use crate::push::dryrun::{DryRunReport, Verdict};

/// The dry run's table: one line per node, then what a push would send.
pub fn dry_run_table(report: &DryRunReport) -> String {
    let mut out = String::new();
    let width = super::name_width(report.nodes.iter().map(|n| n.name.as_str()));
    let engine_of = |v: &Verdict| match v {
        Verdict::WouldSkip { plan } | Verdict::WouldReload { plan } | Verdict::WouldFetch { plan } => {
            plan.engine.clone()
        }
        _ => "-".to_string(),
    };
    let engine_width = report
        .nodes
        .iter()
        .map(|n| engine_of(&n.verdict).len())
        .max()
        .unwrap_or(0)
        .max(6);
    let _ = writeln!(
        out,
        "{:width$}  {:21}  {:engine_width$}  DRY RUN",
        "NODE", "ADDRESS", "ENGINE"
    );
    for n in &report.nodes {
        let _ = writeln!(
            out,
            "{:width$}  {:21}  {:engine_width$}  {}",
            n.name,
            n.addr.to_string(),
            engine_of(&n.verdict),
            verdict_text(&n.verdict)
        );
    }
    let _ = writeln!(
        out,
        "dry run: nothing announced or transferred; manifest {} ({} compressed)",
        &report.manifest[..report.manifest.len().min(16)],
        human(report.compressed_bytes)
    );
    out
}

/// What a push would do on one node, for people.
pub fn verdict_text(verdict: &Verdict) -> String {
    match verdict {
        Verdict::WouldSkip { .. } => "would skip: already has every image".into(),
        Verdict::WouldReload { plan } => format!(
            "would reload (forced): already has every image; {}",
            fetch_text(plan)
        ),
        Verdict::WouldFetch { plan } => format!("would {}", fetch_text(plan)),
        Verdict::WouldFail { reason } => format!("would fail: {reason}"),
        Verdict::Unreachable { reason } => format!("unreachable: {reason}"),
    }
}

/// `fetch 6 chunks (2.1 MB), 2 already stored`.
fn fetch_text(plan: &crate::wire::Plan) -> String {
    let stored = match plan.stored_chunks {
        0 => String::new(),
        n => format!(", {n} already stored"),
    };
    format!(
        "fetch {} chunks ({}){stored}",
        plan.need_chunks,
        human(plan.need_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Plan;

    #[test]
    fn fetch_lines_name_chunks_bytes_and_stored() {
        let plan = Plan {
            present: vec![false],
            need_chunks: 4,
            need_bytes: 2_000_000,
            stored_chunks: 1,
            engine: "docker".into(),
        };
        let text = verdict_text(&Verdict::WouldFetch { plan });
        assert!(text.starts_with("would fetch 4 chunks ("), "{text}");
        assert!(text.ends_with(", 1 already stored"), "{text}");
        let reload = Verdict::WouldReload {
            plan: Plan {
                present: vec![true],
                engine: "docker".into(),
                ..Plan::default()
            },
        };
        assert_eq!(
            verdict_text(&reload),
            "would reload (forced): already has every image; fetch 0 chunks (0 B)"
        );
    }
}
