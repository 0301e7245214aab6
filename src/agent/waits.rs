//! Why a node is not moving on: the reasons its agent puts in `Progress`
//! for the pusher to show (`Progress::reason`). Pure functions of what the
//! swarm and the store say, so each rule is unit-tested without I/O.

use std::time::Duration;

use crate::engine::Kind;
use crate::swarm::SwarmProgress;
use crate::wire::reason_text;

/// A node that has received no new chunk for this long is said to be
/// waiting, and why: shorter, and the ordinary gaps between chunks (a
/// request's round trip, a seed offering its next window) would flicker in
/// the pusher's view; longer, and a stuck node would look alive.
pub(super) const QUIET_BEFORE_REASON: Duration = Duration::from_secs(3);

/// Why a fetching node got no chunk for `quiet`, if it is waiting on
/// something rather than on slow transfers: `claim_waits` of its requests
/// wait for chunks another push to this node is fetching, or nothing is in
/// flight because no peer offers a chunk it lacks.
pub(super) fn fetch_reason(p: &SwarmProgress, claim_waits: usize, quiet: Duration) -> Option<String> {
    if quiet < QUIET_BEFORE_REASON || p.complete || p.missing == 0 {
        return None;
    }
    if claim_waits > 0 {
        let (n, are) = match claim_waits {
            1 => ("1 chunk".to_string(), "is"),
            n => (format!("{n} chunks"), "are"),
        };
        return Some(format!(
            "{n} it needs {are} being fetched by another push to this node"
        ));
    }
    // Peers that answered `Busy` will be asked again in a moment: that is
    // slow transfer, not a wait.
    if p.in_flight > 0 || p.busy_peers > 0 {
        return None;
    }
    let reason = match p.peers {
        0 => format!("no peer connected yet; {} still to fetch", chunks(p.missing)),
        1 => format!(
            "its one peer offers none of the {} it still lacks",
            chunks(p.missing)
        ),
        n => format!(
            "none of its {n} peers offers any of the {} it still lacks",
            chunks(p.missing)
        ),
    };
    Some(reason)
}

/// Why a node with every chunk is not loading: its engine went away
/// (`error`) and the agent waits up to `limit` for it to answer again.
pub(super) fn engine_reason(error: &str, limit: Duration) -> String {
    let secs = limit.as_secs();
    reason_text(&format!(
        "its engine is gone; loading again once it answers (for up to {secs}s, engine_wait_secs): {error}"
    ))
}

/// Why a node waits on its engine of `kind` at `host`: a call to it
/// (planning, tagging, a load) has gone unanswered for `quiet`.
pub(super) fn engine_quiet(kind: Kind, host: &str, quiet: Duration) -> String {
    let secs = quiet.as_secs();
    let (product, daemon) = (kind.product(), kind.daemon());
    reason_text(&format!(
        "the {product} at {host} has not answered for {secs}s (is {daemon} hung or stopped?)"
    ))
}

/// Why a load failed whose engine at `host` said nothing for `stall`.
pub(super) fn engine_stalled(kind: Kind, host: &str, stall: Duration) -> String {
    let secs = stall.as_secs();
    let (product, daemon) = (kind.product(), kind.daemon());
    format!(
        "the {product} at {host} made no progress loading for {secs}s (engine_stall_secs); \
         nothing was tagged; check that {daemon} runs and is not hung (its log), then push again"
    )
}

/// `1 chunk`, `3 chunks`.
fn chunks(n: usize) -> String {
    match n {
        1 => "1 chunk".into(),
        n => format!("{n} chunks"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MAX_REASON_LEN;

    fn swarm(in_flight: usize, peers: usize, missing: usize) -> SwarmProgress {
        SwarmProgress {
            in_flight,
            peers,
            missing,
            ..SwarmProgress::default()
        }
    }

    const QUIET: Duration = QUIET_BEFORE_REASON;

    #[test]
    fn a_node_receiving_chunks_gives_no_reason() {
        assert_eq!(fetch_reason(&swarm(0, 2, 5), 0, Duration::from_secs(1)), None);
        assert_eq!(fetch_reason(&swarm(0, 2, 5), 3, Duration::ZERO), None);
    }

    #[test]
    fn slow_requests_in_flight_are_not_a_wait() {
        assert_eq!(fetch_reason(&swarm(4, 2, 5), 0, QUIET * 10), None);
    }

    #[test]
    fn busy_holders_are_not_a_wait() {
        let busy = SwarmProgress {
            busy_peers: 2,
            ..swarm(0, 2, 5)
        };
        assert_eq!(fetch_reason(&busy, 0, QUIET * 10), None);
    }

    #[test]
    fn no_peer_offering_a_missing_chunk_is_a_wait() {
        let reason = fetch_reason(&swarm(0, 3, 5), 0, QUIET).unwrap();
        assert_eq!(
            reason,
            "none of its 3 peers offers any of the 5 chunks it still lacks"
        );
        let reason = fetch_reason(&swarm(0, 1, 1), 0, QUIET).unwrap();
        assert_eq!(reason, "its one peer offers none of the 1 chunk it still lacks");
        let reason = fetch_reason(&swarm(0, 0, 2), 0, QUIET).unwrap();
        assert_eq!(reason, "no peer connected yet; 2 chunks still to fetch");
    }

    #[test]
    fn chunks_another_push_fetches_come_first() {
        let reason = fetch_reason(&swarm(2, 2, 5), 2, QUIET).unwrap();
        assert_eq!(
            reason,
            "2 chunks it needs are being fetched by another push to this node"
        );
        let reason = fetch_reason(&swarm(0, 2, 5), 1, QUIET).unwrap();
        assert_eq!(
            reason,
            "1 chunk it needs is being fetched by another push to this node"
        );
    }

    #[test]
    fn a_complete_node_is_not_waiting_on_chunks() {
        let done = SwarmProgress {
            complete: true,
            ..swarm(0, 2, 0)
        };
        assert_eq!(fetch_reason(&done, 0, QUIET * 10), None);
    }

    #[test]
    fn a_silent_engine_is_named_with_how_long() {
        let reason = engine_quiet(Kind::Docker, "unix:///run/docker.sock", Duration::from_secs(30));
        assert_eq!(
            reason,
            "the Docker Engine at unix:///run/docker.sock has not answered for 30s (is dockerd hung or stopped?)"
        );
        let containerd = engine_quiet(Kind::Containerd, "unix:///c.sock", Duration::from_secs(30));
        assert!(
            containerd.starts_with("the containerd daemon at unix:///c.sock")
                && containerd.contains("is containerd hung")
        );
        let failed = engine_stalled(Kind::Docker, "unix:///run/docker.sock", Duration::from_secs(300));
        assert!(
            failed.contains("no progress loading for 300s (engine_stall_secs)"),
            "{failed}"
        );
    }

    #[test]
    fn the_engine_reason_names_the_engine_and_the_limit_and_fits() {
        let reason = engine_reason(
            "cannot reach the Docker Engine at unix:///x.sock",
            Duration::from_secs(120),
        );
        assert!(reason.contains("Docker Engine") && reason.contains("120s, engine_wait_secs"));
        let long = engine_reason(&"x\n".repeat(400), Duration::from_secs(1));
        assert!(long.len() <= MAX_REASON_LEN && !long.contains('\n'));
    }
}
