//! The fleet view's state and line text, given events and times.

use super::*;
use crate::wire::{Plan, Progress};

fn planned(node: &str, need: u64, present: bool) -> PushEvent {
    PushEvent::Planned {
        node: node.into(),
        plan: Plan {
            present: vec![present],
            need_chunks: (need / 100) as u32,
            need_bytes: need,
            stored_chunks: 0,
            engine: String::new(),
        },
        reload: false,
    }
}

fn progress(node: &str, bytes: u64, loading: bool) -> PushEvent {
    PushEvent::Progress {
        node: node.into(),
        progress: Progress {
            chunks: (bytes / 100) as u32,
            bytes,
            loading,
            reason: None,
        },
    }
}

fn finished(node: &str, status: NodeStatus) -> PushEvent {
    PushEvent::Finished {
        node: node.into(),
        status,
    }
}

fn exported() -> PushEvent {
    PushEvent::Exported {
        images: 1,
        layers: 3,
        chunks: 30,
        bytes: 4000,
        compressed: 3000,
        secs: 0.2,
    }
}

fn fleet() -> Fleet {
    Fleet::new(&["n1".into(), "n2".into(), "n3".into()])
}

#[test]
fn nodes_start_queued_while_the_seed_exports() {
    let f = fleet();
    let now = Instant::now();
    for i in 0..3 {
        let line = f.node_line(i, now);
        assert_eq!((line.state.as_str(), line.bar), ("queued", None));
    }
    let total = f.total_line(now);
    assert_eq!(total.state, "exporting");
    assert_eq!(total.bar, None);
}

#[test]
fn a_node_goes_through_fetching_loading_done() {
    let mut f = fleet();
    let t0 = Instant::now();
    let (_, kept) = f.on_event(&exported(), t0);
    assert!(kept
        .unwrap()
        .starts_with("exported 1 image(s): 3 layers, 30 chunks"));
    assert_eq!(f.on_event(&planned("n2", 3000, false), t0), (Some(1), None));
    let line = f.node_line(1, t0);
    assert_eq!(line.state, "fetching");
    assert_eq!(line.bar, Some((0, 3000)));
    assert_eq!(line.detail, "0 B / 3.0 kB");

    // 1000 bytes in the first second: 1.0 kB/s, 2 kB left, 2 s to go.
    let t1 = t0 + Duration::from_secs(1);
    f.on_event(&progress("n2", 1000, false), t1);
    let line = f.node_line(1, t1);
    assert_eq!(line.bar, Some((1000, 3000)));
    assert_eq!(line.detail, "1.0 kB / 3.0 kB  1.0 kB/s  ETA 2s");

    f.on_event(&progress("n2", 3000, true), t1);
    let line = f.node_line(1, t1);
    assert_eq!(line.state, "loading");
    assert_eq!(line.detail, "3.0 kB, loading into docker");

    f.on_event(&finished("n2", NodeStatus::Loaded), t1);
    let line = f.node_line(1, t1);
    assert_eq!(line.state, "done");
    assert_eq!(line.bar, Some((3000, 3000)));
    assert_eq!(line.detail, "3.0 kB fetched, loaded");
}

#[test]
fn skipped_and_failed_nodes_say_so_and_failures_are_kept() {
    let mut f = fleet();
    let t = Instant::now();
    f.on_event(&planned("n1", 0, true), t);
    assert_eq!(f.node_line(0, t).state, "skipped");
    let (_, kept) = f.on_event(&finished("n1", NodeStatus::Skipped), t);
    assert_eq!(kept, None);
    let line = f.node_line(0, t);
    assert_eq!(
        (line.state.as_str(), line.detail.as_str()),
        ("skipped", "already has every image")
    );

    let why = "no answer from 127.0.0.3:7701 within 10s";
    let (changed, kept) = f.on_event(&finished("n3", NodeStatus::Failed(why.into())), t);
    assert_eq!(changed, Some(2));
    assert_eq!(kept.as_deref(), Some(format!("n3: failed: {why}").as_str()));
    let line = f.node_line(2, t);
    assert_eq!(
        (line.state.as_str(), line.bar, line.detail.as_str()),
        ("failed", None, why)
    );
}

#[test]
fn a_forced_node_holding_the_image_loads_it_again_and_says_reloaded() {
    let mut f = fleet();
    let t = Instant::now();
    f.on_event(&exported(), t);
    let PushEvent::Planned { node, plan, .. } = planned("n1", 0, true) else {
        unreachable!()
    };
    f.on_event(
        &PushEvent::Planned {
            node,
            plan,
            reload: true,
        },
        t,
    );
    assert_eq!(f.node_line(0, t).state, "fetching", "not skipped: it loads again");
    f.on_event(&progress("n1", 0, true), t);
    assert_eq!(f.node_line(0, t).state, "loading");
    f.on_event(&finished("n1", NodeStatus::Reloaded), t);
    let line = f.node_line(0, t);
    assert_eq!(
        (line.state.as_str(), line.detail.as_str()),
        ("reloaded", "0 B fetched, reloaded (forced)")
    );
    assert!(
        f.total_line(t).detail.contains("1/3 done"),
        "{:?}",
        f.total_line(t)
    );
}

#[test]
fn total_adds_up_nodes_and_shows_the_seed_upload() {
    let mut f = fleet();
    let t0 = Instant::now();
    f.on_event(&exported(), t0);
    f.on_event(&planned("n1", 3000, false), t0);
    f.on_event(&planned("n2", 3000, false), t0);
    f.on_event(&planned("n3", 0, true), t0);
    f.on_event(&finished("n3", NodeStatus::Skipped), t0);
    let t1 = t0 + Duration::from_secs(2);
    f.on_event(&progress("n1", 2000, false), t1);
    f.on_event(&progress("n2", 1000, false), t1);
    f.set_seed_uploaded(2500);
    let total = f.total_line(t1);
    assert_eq!(total.state, "pushing");
    assert_eq!(total.bar, Some((3000, 6000)));
    assert_eq!(
        total.detail,
        "1/3 done  3.0 kB / 6.0 kB  1.5 kB/s  ETA 2s  seed uploaded 2.5 kB"
    );

    f.on_event(&finished("n1", NodeStatus::Failed("disk full".into())), t1);
    f.on_event(&finished("n2", NodeStatus::Loaded), t1);
    let total = f.total_line(t1);
    assert_eq!(total.state, "finished");
    // n1 failed with 2.0 of its 3.0 kB: what it lacked is no longer to come.
    assert_eq!(total.bar, Some((3000, 5000)));
    assert!(
        total.detail.starts_with("2/3 done, 1 failed  "),
        "{}",
        total.detail
    );
}

#[test]
fn a_stalled_node_shows_no_eta() {
    let mut f = fleet();
    let t0 = Instant::now();
    f.on_event(&planned("n1", 3000, false), t0);
    f.on_event(&progress("n1", 1000, false), t0 + Duration::from_secs(1));
    // Nothing for longer than the rate window: 0 B/s, no ETA.
    let later = t0 + Duration::from_secs(10);
    assert_eq!(f.node_line(0, later).detail, "1.0 kB / 3.0 kB  0 B/s");
}

fn waiting(node: &str, bytes: u64, loading: bool, reason: &str) -> PushEvent {
    let PushEvent::Progress { node, mut progress } = progress(node, bytes, loading) else {
        unreachable!()
    };
    progress.reason = Some(reason.into());
    PushEvent::Progress { node, progress }
}

#[test]
fn a_waiting_node_shows_why_until_it_moves_again() {
    let mut f = fleet();
    let t0 = Instant::now();
    f.on_event(&exported(), t0);
    f.on_event(&planned("n1", 3000, false), t0);
    f.on_event(
        &waiting(
            "n1",
            1000,
            false,
            "none of its 2 peers offers any of the 20 chunks it still lacks",
        ),
        t0,
    );
    let line = f.node_line(0, t0);
    assert_eq!(line.state, "waiting");
    assert_eq!(line.bar, Some((1000, 3000)));
    assert_eq!(
        line.detail,
        "none of its 2 peers offers any of the 20 chunks it still lacks  1.0 kB / 3.0 kB"
    );
    assert!(f.total_line(t0).detail.starts_with("0/3 done, 1 waiting  "));
    f.on_event(&progress("n1", 1100, false), t0);
    assert_eq!(f.node_line(0, t0).state, "fetching");
    assert!(f.total_line(t0).detail.starts_with("0/3 done  "));

    // Loading, its engine gone: waiting, then loading again.
    f.on_event(
        &waiting(
            "n1",
            3000,
            true,
            "waiting up to 60s (engine_wait_secs) for the Docker Engine",
        ),
        t0,
    );
    let line = f.node_line(0, t0);
    assert_eq!(line.state, "waiting");
    assert!(line
        .detail
        .starts_with("waiting up to 60s (engine_wait_secs) for the Docker Engine  3.0 kB"));
    f.on_event(&progress("n1", 3000, true), t0);
    assert_eq!(f.node_line(0, t0).state, "loading");
}

#[test]
fn a_node_the_pusher_cannot_reach_shows_why_until_it_plans_or_fails() {
    let mut f = fleet();
    let t0 = Instant::now();
    let reason = "not answering, dialing again for up to 30s: timed out";
    let event = PushEvent::Waiting {
        node: "n3".into(),
        reason: reason.into(),
    };
    assert_eq!(f.on_event(&event, t0), (Some(2), None));
    let line = f.node_line(2, t0);
    assert_eq!(
        (line.state.as_str(), line.bar, line.detail.as_str()),
        ("waiting", None, reason)
    );
    f.on_event(
        &finished("n3", NodeStatus::Failed("unreachable for 30s".into())),
        t0,
    );
    assert_eq!(f.node_line(2, t0).state, "failed");
    f.on_event(&event, t0);
    f.on_event(&planned("n3", 3000, false), t0);
    assert_eq!(f.node_line(2, t0).state, "fetching");
}

#[test]
fn events_for_unknown_nodes_change_nothing() {
    let mut f = fleet();
    assert_eq!(
        f.on_event(&planned("n9", 10, false), Instant::now()),
        (None, None)
    );
}

#[test]
fn lines_render_with_aligned_bars() {
    let line = |state: &str, bar, detail: &str| LineText {
        label: "n1".into(),
        state: state.into(),
        bar,
        detail: detail.into(),
    };
    assert_eq!(line("queued", None, "").render(5), "n1     queued");
    assert_eq!(
        line("fetching", Some((0, 100)), "0 B / 100 B").render(5),
        "n1     fetching  [                        ] 0 B / 100 B"
    );
    assert_eq!(
        line("fetching", Some((50, 100)), "50 B / 100 B").render(5),
        "n1     fetching  [============>           ] 50 B / 100 B"
    );
    assert_eq!(
        line("done", Some((100, 100)), "100 B fetched, loaded").render(2),
        "n1  done      [========================] 100 B fetched, loaded"
    );
    // A node that needed no chunk (every layer present) is full at once.
    assert_eq!(bar(0, 0), "=".repeat(BAR_WIDTH));
}

#[test]
fn durations_for_people() {
    assert_eq!(duration(0.2), "1s");
    assert_eq!(duration(42.0), "42s");
    assert_eq!(duration(185.0), "3m05s");
    assert_eq!(duration(7620.0), "2h07m");
}
