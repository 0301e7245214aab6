//! `push --dry-run`: export and pack as a push does, then ask every node,
//! concurrently and on a stream of its own (`PlanQuery`, as `status` asks;
//! `ForcePlanQuery` with `--force`), what it would fetch. Nothing is
//! announced: no node registers a distribution, fetches, loads or tags
//! anything.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use super::{
    bind_addr, check_request, load_source, scratch, with_tags, PushError, PushEvent, PushOptions, Source,
};
use crate::config::NodeEntry;
use crate::net::identity::Identity;
use crate::net::Timeouts;
use crate::ops::signal::Stop;
use crate::wire::{close, Message, Plan};

/// Longest wait for one node's plan, connection included: planning
/// re-reads and hashes the chunks of the manifest the node already stores
/// (a few seconds for a few GiB), and asks its engine what it holds.
const PLAN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a push would do on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Verdict {
    /// The node holds every image: it would only tag them.
    WouldSkip { plan: Plan },
    /// The node holds every image and would load them again (`--force`),
    /// fetching what `plan` says (the layers its engine lacks, if any).
    WouldReload { plan: Plan },
    /// The node would fetch what `plan` says, then load.
    WouldFetch { plan: Plan },
    /// The node answered: a push would fail there, and why.
    WouldFail { reason: String },
    /// The node could not be asked, and why.
    Unreachable { reason: String },
}

/// One node's answer.
#[derive(Clone, Debug, Serialize)]
pub struct NodeDryRun {
    /// Node name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// What a push would do there.
    pub verdict: Verdict,
}

/// The result of a dry run.
#[derive(Clone, Debug, Serialize)]
pub struct DryRunReport {
    /// Manifest ID (hex) a push would announce.
    pub manifest: String,
    /// Images as (reference, image ID).
    pub images: Vec<(String, String)>,
    /// Compressed size of all chunks: what a node holding nothing fetches.
    pub compressed_bytes: u64,
    /// Per node, in inventory order.
    pub nodes: Vec<NodeDryRun>,
}

impl DryRunReport {
    /// True when every node answered and none would fail.
    pub fn success(&self) -> bool {
        self.nodes.iter().all(|n| {
            matches!(
                n.verdict,
                Verdict::WouldSkip { .. } | Verdict::WouldReload { .. } | Verdict::WouldFetch { .. }
            )
        })
    }
}

/// Exports and packs as [`super::push_with`] does, then asks each node
/// what it would fetch, instead of announcing. `stop` (SIGINT, SIGTERM)
/// ends it while it exports.
pub async fn dry_run(
    opts: PushOptions,
    timeouts: Timeouts,
    events: mpsc::UnboundedSender<PushEvent>,
    stop: impl Future<Output = Stop>,
) -> Result<DryRunReport, PushError> {
    let images = match &opts.source {
        Source::Engine { images, .. } => images.as_slice(),
        Source::Bundle(_) => &[],
    };
    check_request(images, &opts.tags)?;
    let identity = Identity::load_from_dir(&opts.cluster_dir, &opts.identity)?;
    let seed_store = scratch::SeedStore::open(opts.state_dir.as_deref())?;
    let manifest = tokio::select! {
        manifest = load_source(&opts.source, seed_store.store(), &events) => manifest?,
        signal = stop => return Err(PushError::Interrupted(signal)),
    };
    let manifest = with_tags(manifest, &opts.tags)?;
    let transport = crate::net::transport_config_with(&timeouts);
    let endpoint = crate::net::endpoint_with(&identity, bind_addr(&opts.nodes), transport)?;
    let manifest_copy = (*manifest).clone();
    let query = match opts.force {
        true => Message::ForcePlanQuery {
            manifest: manifest_copy,
        },
        false => Message::PlanQuery {
            manifest: manifest_copy,
        },
    };
    let (connect, nodes) = (timeouts.connect, &opts.nodes);
    let answers = super::status::ask_each(&endpoint, nodes, &query, connect, PLAN_TIMEOUT).await;
    endpoint.close(quinn::VarInt::from_u32(close::DONE), b"dry run done");
    if !opts.keep {
        if let Err(e) = seed_store.retain_only(&manifest) {
            tracing::warn!("could not drop older chunks from the seed's state directory: {e}");
        }
    }
    Ok(DryRunReport {
        manifest: manifest.id().to_hex(),
        images: manifest
            .images
            .iter()
            .flat_map(|i| i.refs.iter().map(|r| (r.clone(), i.id.clone())))
            .collect(),
        compressed_bytes: manifest.compressed_size(),
        nodes: answers
            .into_iter()
            .map(|answer| node_dry_run(answer, opts.force))
            .collect(),
    })
}

fn node_dry_run((node, answer): (NodeEntry, Result<Message, String>), force: bool) -> NodeDryRun {
    NodeDryRun {
        name: node.name,
        addr: node.addr,
        verdict: match answer {
            Ok(msg) => verdict(msg, force),
            Err(reason) => Verdict::Unreachable { reason },
        },
    }
}

/// What a node's answer to `PlanQuery` (`ForcePlanQuery` with `force`)
/// means.
fn verdict(answer: Message, force: bool) -> Verdict {
    match answer {
        Message::Plan(plan) if plan.present.iter().all(|p| *p) => match force {
            true => Verdict::WouldReload { plan },
            false => Verdict::WouldSkip { plan },
        },
        Message::Plan(plan) => Verdict::WouldFetch { plan },
        Message::Error { message, .. } => Verdict::WouldFail { reason: message },
        other => Verdict::WouldFail {
            reason: format!("protocol error: answered with {}", other.kind()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_error_is_a_failure_there() {
        let full = Message::Error {
            code: crate::wire::ErrorCode::Internal,
            message: "not enough disk space".into(),
        };
        assert!(matches!(verdict(full, false), Verdict::WouldFail { .. }));
    }

    #[test]
    fn a_plan_with_every_image_present_is_a_skip_or_forced_a_reload() {
        let plan = Plan {
            present: vec![true, true],
            ..Plan::default()
        };
        assert!(matches!(
            verdict(Message::Plan(plan.clone()), false),
            Verdict::WouldSkip { .. }
        ));
        assert!(matches!(
            verdict(Message::Plan(plan), true),
            Verdict::WouldReload { .. }
        ));
        let plan = Plan {
            present: vec![true, false],
            need_chunks: 3,
            ..Plan::default()
        };
        for force in [false, true] {
            assert!(matches!(
                verdict(Message::Plan(plan.clone()), force),
                Verdict::WouldFetch { .. }
            ));
        }
    }
}
