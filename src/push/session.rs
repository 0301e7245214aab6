//! One node's session of a push: connect, announce, plan, start, follow
//! progress to `Done`, then `Finish` when every node is done.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, watch};
use tokio_util::task::AbortOnDropHandle;

use super::{NodeReport, NodeStatus, PushEvent};
use crate::config::NodeEntry;
use crate::net;
use crate::swarm::serve::{refuse, serve_connection};
use crate::swarm::Registry;
use crate::wire::{self, read_frame, write_frame, ErrorCode, Message, Outcome, PeerInfo, Progress};

/// Longest wait for a node's plan: it inspects every image in its engine
/// and re-verifies the chunks it kept from an earlier run, about 10 GB a
/// minute from a plain disk.
const PLAN_TIMEOUT: Duration = Duration::from_secs(300);
/// First pause between two dials of a node that did not answer; doubles.
/// Each dial itself waits up to the connect timeout ([`net::Timeouts`]).
const REDIAL_FIRST: Duration = Duration::from_millis(500);
/// How long the pusher waits for an agent to close its side after Finish.
const FINISH_GRACE: Duration = Duration::from_secs(2);

pub(super) struct Session {
    pub endpoint: quinn::Endpoint,
    pub registry: Registry,
    pub node: NodeEntry,
    /// The `Announce` frame (`ForceAnnounce` with `force`), encoded once for
    /// every node.
    pub announce: Arc<Vec<u8>>,
    /// The push loads every image again (`--force`): a node holding every
    /// image reloads it.
    pub force: bool,
    pub events: mpsc::UnboundedSender<PushEvent>,
    /// (node, fetches) once the node planned or failed before planning.
    pub planned: mpsc::UnboundedSender<(String, bool)>,
    pub start: watch::Receiver<Option<Vec<PeerInfo>>>,
    pub finish: watch::Receiver<bool>,
    /// One message when the node is done, whatever the outcome.
    pub done: mpsc::UnboundedSender<()>,
    /// Why the push ends before every node is done (its `--timeout`, a
    /// signal), once it does: "the push timed out (--timeout)".
    pub cut: watch::Receiver<Option<String>>,
    /// The connection to the node, once made.
    pub conn: Option<Connection>,
    /// Dial (`connect`, `reach`) and stall (`stall`) limits.
    pub timeouts: net::Timeouts,
}

struct Progressed {
    planned: bool,
    done: bool,
}

impl Session {
    pub(super) async fn run(mut self) -> NodeReport {
        let mut report = NodeReport {
            name: self.node.name.clone(),
            addr: self.node.addr,
            status: NodeStatus::Failed("not started".into()),
            plan: None,
            received: Vec::new(),
        };
        let mut at = Progressed {
            planned: false,
            done: false,
        };
        let mut cut = self.cut.clone();
        let result = tokio::select! {
            // First: once connected, `drive` closes the connection itself
            // when the push is cut short.
            biased;
            result = self.drive(&mut report, &mut at) => result,
            why = cut.wait_for(Option::is_some) => {
                let why = why.ok().and_then(|w| w.clone()).unwrap_or_default();
                Err(format!("{why} before this node was done"))
            }
        };
        // Cut short: the node is told the pusher leaves for good, so it
        // ends the distribution now. (Dropping the connection would close
        // it as a normal end, and the node would go on without a seed.)
        if let (Some(conn), Some(why)) = (&self.conn, self.cut.borrow().as_deref()) {
            conn.close(VarInt::from_u32(wire::close::PUSHER_LEFT), why.as_bytes());
        }
        // A node that reported Done keeps its outcome, even if the push
        // timed out while it waited for the others.
        match result {
            Err(reason) if !at.done => {
                report.status = status_cut_short(report.plan.as_ref(), self.force, reason)
            }
            _ => {}
        }
        if !at.planned {
            let _ = self.planned.send((self.node.name.clone(), false));
        }
        if !at.done {
            self.finished(&report);
        }
        report
    }

    fn finished(&self, report: &NodeReport) {
        let node = self.node.name.clone();
        let _ = self.events.send(PushEvent::Finished {
            node,
            status: report.status.clone(),
        });
        let _ = self.done.send(());
    }

    async fn drive(&mut self, report: &mut NodeReport, at: &mut Progressed) -> Result<(), String> {
        let (conn, peer) = self.connect().await?;
        self.conn = Some(conn.clone());
        // Aborted when this future ends or is dropped (at the deadline).
        let _serving = AbortOnDropHandle::new(tokio::spawn(serve_connection(
            conn.clone(),
            peer.name,
            wire::MAX_FIRST_FRAME,
            self.registry.clone(),
            |_, send, _| {
                refuse(
                    send,
                    ErrorCode::BadRequest,
                    "a pusher accepts only swarm and request streams",
                )
            },
        )));
        let mut cut = self.cut.clone();
        tokio::select! {
            // The connection is closed as "pusher left" before anything
            // else of this session ends: a node seeing its streams end
            // first might take them for a broken peer.
            biased;
            why = cut.wait_for(Option::is_some) => {
                let why = why.ok().and_then(|w| w.clone()).unwrap_or_default();
                conn.close(VarInt::from_u32(wire::close::PUSHER_LEFT), why.as_bytes());
                Err(format!("{why} before this node was done"))
            }
            result = self.control(&conn, report, at) => {
                result.map_err(|e| with_close_reason(&conn, &self.node.name, e))
            }
        }
    }

    /// Dials the node; while it does not answer at all, dials again with
    /// backoff for up to [`net::Timeouts::reach`]. Any other failure (a
    /// refused certificate, a wrong name) is final at once.
    async fn connect(&self) -> Result<(Connection, net::PeerIdentity), String> {
        let reach = self.timeouts.reach;
        let give_up = tokio::time::Instant::now() + reach;
        let mut pause = REDIAL_FIRST;
        let (addr, name) = (self.node.addr, Some(self.node.name.as_str()));
        loop {
            match net::connect_within(&self.endpoint, addr, name, self.timeouts.connect).await {
                Ok(connected) => return Ok(connected),
                Err(e @ net::NetError::Timeout { .. }) if tokio::time::Instant::now() + pause < give_up => {
                    tracing::warn!(node = %self.node.name, "{e}; dialing again");
                    let _ = self.events.send(PushEvent::Waiting {
                        node: self.node.name.clone(),
                        reason: format!("not answering; dialing again for up to {reach:?}: {e}"),
                    });
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e @ net::NetError::Timeout { .. }) => {
                    return Err(format!("unreachable for {reach:?}: {e}"));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn control(
        &mut self,
        conn: &Connection,
        report: &mut NodeReport,
        at: &mut Progressed,
    ) -> Result<(), String> {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("connection lost: {e}"))?;
        let _ = send.set_priority(crate::swarm::CONTROL_PRIORITY);
        send.write_all(&self.announce)
            .await
            .map_err(|e| format!("cannot announce: {e}"))?;
        let fetches = self.await_plan(&mut recv, report).await?;
        at.planned = true;
        let _ = self.planned.send((self.node.name.clone(), fetches));
        if fetches {
            self.send_start(&mut send).await?;
        }
        self.await_done(&mut recv, report).await?;
        at.done = true;
        self.finished(report);
        let _ = self.finish.wait_for(|f| *f).await;
        let _ = write_frame(&mut send, &Message::Finish).await;
        let _ = send.finish();
        // Let the agent see Finish and close its side before the endpoint
        // closes, so it ends the distribution cleanly.
        let _ = tokio::time::timeout(FINISH_GRACE, read_frame(&mut recv, wire::MAX_FRAME)).await;
        Ok(())
    }

    /// Reads the node's plan; true when it has something to fetch. Before
    /// it, the node may say why it cannot plan yet (a `Progress` with a
    /// reason: its engine is slow to answer, another push of the same
    /// images runs there), shown as a `Waiting` event; each such message
    /// starts [`PLAN_TIMEOUT`] again.
    async fn await_plan(&self, recv: &mut RecvStream, report: &mut NodeReport) -> Result<bool, String> {
        let mut waiting = None;
        let msg = loop {
            let msg = tokio::time::timeout(PLAN_TIMEOUT, read_frame(recv, wire::MAX_FRAME))
                .await
                .map_err(|_| match &waiting {
                    Some(reason) => format!("no plan within {PLAN_TIMEOUT:?}: {reason}"),
                    None => format!("no plan within {PLAN_TIMEOUT:?}"),
                })?;
            match msg.map_err(|e| format!("connection lost before planning: {e}"))? {
                Message::Progress(progress) => {
                    progress
                        .check()
                        .map_err(|e| format!("protocol error: the node sent {e}"))?;
                    if let Some(reason) = progress.reason {
                        let node = self.node.name.clone();
                        let _ = self.events.send(PushEvent::Waiting {
                            node,
                            reason: reason.clone(),
                        });
                        waiting = Some(reason);
                    }
                }
                other => break other,
            }
        };
        match msg {
            Message::Plan(plan) => {
                let reload = reloads(&plan, self.force);
                let fetches = reload || plan.present.iter().any(|p| !p);
                let node = self.node.name.clone();
                let _ = self.events.send(PushEvent::Planned {
                    node,
                    plan: plan.clone(),
                    reload,
                });
                report.plan = Some(plan);
                Ok(fetches)
            }
            other => Err(describe_refusal(other)),
        }
    }

    async fn send_start(&mut self, send: &mut SendStream) -> Result<(), String> {
        let name = &self.node.name;
        let peers: Vec<PeerInfo> = {
            let all = self
                .start
                .wait_for(Option::is_some)
                .await
                .map_err(|_| "push aborted".to_string())?;
            all.iter()
                .flatten()
                .filter(|p| &p.name != name)
                .cloned()
                .collect()
        };
        write_frame(send, &Message::Start { peers })
            .await
            .map_err(|e| format!("connection lost: {e}"))
    }

    /// Follows the node to its `Done`. A node whose counts do not move for
    /// [`net::Timeouts::stall`] while fetching is failed, with the last reason it
    /// gave (a new reason is not progress); while it loads, the engine's
    /// own time limit applies.
    async fn await_done(&self, recv: &mut RecvStream, report: &mut NodeReport) -> Result<(), String> {
        let mut last = Progress::default();
        let stall = self.timeouts.stall;
        let mut stalled_at = tokio::time::Instant::now() + stall;
        loop {
            let next = read_frame(recv, wire::MAX_FRAME);
            let msg = if last.loading {
                next.await
            } else {
                tokio::time::timeout_at(stalled_at, next)
                    .await
                    .map_err(|_| stall_reason(&last, stall))?
            };
            match msg.map_err(|e| format!("connection lost: {e}"))? {
                Message::Progress(progress) => {
                    progress
                        .check()
                        .map_err(|e| format!("protocol error: the node sent {e}"))?;
                    if (progress.chunks, progress.loading) != (last.chunks, last.loading) {
                        stalled_at = tokio::time::Instant::now() + stall;
                    }
                    last = progress.clone();
                    let node = self.node.name.clone();
                    let _ = self.events.send(PushEvent::Progress { node, progress });
                }
                Message::Done(outcome) => {
                    let reloaded = report.plan.as_ref().is_some_and(|p| reloads(p, self.force));
                    (report.status, report.received) = match outcome {
                        Outcome::Skipped => (NodeStatus::Skipped, Vec::new()),
                        Outcome::Loaded { received } if reloaded => (NodeStatus::Reloaded, received),
                        Outcome::Loaded { received } => (NodeStatus::Loaded, received),
                        Outcome::Failed { reason, received } => (NodeStatus::Failed(reason), received),
                    };
                    return Ok(());
                }
                other => return Err(describe_refusal(other)),
            }
        }
    }
}

/// How a node ends whose session ended before its `Done` (the push timed
/// out or was interrupted, the connection was lost): failed for `reason`,
/// unless its plan said it holds every image already and the push is not
/// forced. That node is skipped, whatever came after: it was found holding
/// the images. A forced one was to load them again, and did not say it did.
fn status_cut_short(plan: Option<&wire::Plan>, force: bool, reason: String) -> NodeStatus {
    match plan {
        Some(plan) if !force && plan.present.iter().all(|p| *p) => NodeStatus::Skipped,
        _ => NodeStatus::Failed(reason),
    }
}

/// Whether a node that planned `plan` loads images it holds again: the push
/// is forced and it holds every image (it would have skipped).
fn reloads(plan: &wire::Plan, force: bool) -> bool {
    force && plan.present.iter().all(|p| *p)
}

/// Why a fetching node is failed after `stall` without progress: what it
/// last said it waited for, if anything.
fn stall_reason(last: &Progress, stall: Duration) -> String {
    match &last.reason {
        Some(reason) => format!("no progress for {stall:?}: {reason}"),
        None => format!("no progress for {stall:?}: no peer could send the chunks it lacks"),
    }
}

/// `error`, or the connection's own reason when it is closed: a stream
/// only says "connection lost", the connection says why.
fn with_close_reason(conn: &Connection, node: &str, error: String) -> String {
    match conn.close_reason() {
        Some(quinn::ConnectionError::TimedOut) => {
            "connection lost: the node stopped answering (its link is down or its host is gone)".into()
        }
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == quinn::VarInt::from_u32(wire::close::SHUTTING_DOWN) =>
        {
            format!(
                "the agent on {node} shut down (SIGTERM or stop) before it was done; push again once it runs"
            )
        }
        Some(reason) => format!("connection lost: {reason}"),
        None => error,
    }
}

/// A message in place of the expected one, as a reason for people.
fn describe_refusal(msg: Message) -> String {
    match msg {
        Message::Error {
            code: ErrorCode::NotAuthorized,
            message,
        } => {
            format!("refused the push: {message} (push with the cluster's pusher identity)")
        }
        Message::Error { code, message } => format!("refused the push ({code:?}): {message}"),
        Message::Done(Outcome::Failed { reason, .. }) => reason,
        other => format!("protocol error: unexpected {}", other.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(present: Vec<bool>) -> wire::Plan {
        wire::Plan {
            present,
            ..wire::Plan::default()
        }
    }

    #[test]
    fn a_node_found_holding_every_image_is_skipped_when_the_push_is_cut_short() {
        let why = || "the push timed out (--timeout) before this node was done".to_string();
        let held = plan(vec![true, true]);
        assert_eq!(status_cut_short(Some(&held), false, why()), NodeStatus::Skipped);
        let lacking = plan(vec![true, false]);
        assert_eq!(
            status_cut_short(Some(&lacking), false, why()),
            NodeStatus::Failed(why())
        );
        assert_eq!(status_cut_short(None, false, why()), NodeStatus::Failed(why()));
    }

    #[test]
    fn a_forced_node_cut_short_has_not_reloaded() {
        let why = || "the push timed out (--timeout) before this node was done".to_string();
        let held = plan(vec![true, true]);
        assert_eq!(
            status_cut_short(Some(&held), true, why()),
            NodeStatus::Failed(why())
        );
    }

    #[test]
    fn only_a_forced_node_holding_every_image_reloads() {
        assert!(reloads(&plan(vec![true, true]), true));
        assert!(!reloads(&plan(vec![true, true]), false));
        assert!(
            !reloads(&plan(vec![true, false]), true),
            "it loads one image for the first time"
        );
    }
}
