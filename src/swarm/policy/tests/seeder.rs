//! Seeder rules: fresh chunks once each, more as peers progress, fallbacks.

use super::*;

fn bits(len: usize, set: impl IntoIterator<Item = usize>) -> Bitfield {
    let mut b = Bitfield::new(len);
    set.into_iter().for_each(|i| b.set(i));
    b
}

fn seeder(chunks: usize, window: usize) -> Seeder {
    Seeder::new(chunks, window)
}

#[test]
fn peers_are_offered_disjoint_fresh_chunks() {
    let now = Instant::now();
    let mut s = seeder(10, 3);
    let a = s.add_peer(1, &bits(10, []), &bits(10, 0..10), now);
    let b = s.add_peer(2, &bits(10, []), &bits(10, 0..10), now);
    assert_eq!((a.len(), b.len()), (3, 3));
    assert!(a.iter().all(|i| !b.contains(i)), "{a:?} and {b:?} overlap");
}

#[test]
fn fresh_chunks_go_out_in_image_order_so_loads_can_stream() {
    let now = Instant::now();
    let mut s = seeder(10, 3);
    // The peer already holds chunk 1 and does not want chunk 2.
    let a = s.add_peer(1, &bits(10, [1]), &bits(10, (0..10).filter(|&i| i != 2)), now);
    assert_eq!(a, vec![0, 3, 4]);
    assert_eq!(s.add_peer(2, &bits(10, []), &bits(10, 0..10), now), vec![2, 5, 6]);
    assert_eq!(s.on_have(1, 0, now), vec![7]);
}

#[test]
fn each_chunk_is_offered_once_while_fresh_ones_last() {
    let now = Instant::now();
    let mut s = seeder(12, 2);
    let mut offered: Vec<u32> = Vec::new();
    let mut queue: Vec<(PeerId, u32)> = Vec::new();
    for id in 1..=3 {
        let offers = s.add_peer(id, &bits(12, []), &bits(12, 0..12), now);
        offered.extend(&offers);
        queue.extend(offers.iter().map(|&i| (id, i)));
    }
    // Each peer fetches what it was offered; offers follow until all 12 are
    // out, then extra ones, at most 12 / EXTRA_SHARE.
    while let Some((id, i)) = queue.pop() {
        let more = s.on_have(id, i, now);
        offered.extend(&more);
        queue.extend(more.into_iter().map(|j| (id, j)));
    }
    let mut first = offered[..12].to_vec();
    first.sort();
    assert_eq!(
        first,
        (0..12).collect::<Vec<_>>(),
        "every chunk exactly once first"
    );
    assert!(offered.len() > 12, "the seed helps at the end");
    assert!(offered.len() <= 12 + 12 / EXTRA_SHARE, "{} offers", offered.len());
}

#[test]
fn at_the_end_the_seed_offers_what_fewest_hold() {
    let now = Instant::now();
    let (none, all) = (bits(4, []), bits(4, 0..4));
    let mut s = seeder(4, 2);
    assert_eq!(s.add_peer(1, &none, &all, now), [0, 1]);
    assert_eq!(s.add_peer(2, &none, &all, now), [2, 3]);
    assert!(s.on_have(2, 2, now).is_empty(), "three offers outstanding");
    assert!(s.on_have(1, 0, now).is_empty(), "two offers outstanding");
    // One offer left on its way, fewer than the peers: the seed's uplink is
    // about to idle. Peer 1 is offered what no peer holds (3) before what
    // peer 2 holds (2), once: 4 / EXTRA_SHARE extra offers.
    assert_eq!(s.on_have(1, 1, now), [3]);
    assert!(s.on_have(2, 3, now).is_empty(), "no extra offers left");
}

#[test]
fn the_seeds_queue_runs_dry_with_fewer_offers_outstanding_than_peers() {
    let now = Instant::now();
    let (none, all) = (bits(4, []), bits(4, 0..4));
    let mut s = seeder(4, 8);
    assert_eq!(s.add_peer(1, &none, &all, now), [0, 1, 2, 3]);
    assert!(
        s.add_peer(2, &none, &all, now).is_empty(),
        "nothing fresh, 4 outstanding"
    );
    assert!(s.on_have(1, 0, now).is_empty());
    assert!(s.on_have(1, 1, now).is_empty());
    assert!(s.on_have(2, 0, now).is_empty(), "two outstanding, one per peer");
    assert!(
        s.on_have(1, 2, now).is_empty(),
        "peer 1 lacks nothing it was not offered"
    );
    // One outstanding for two peers: peer 2 is offered 3 (no holder) before
    // 2 (held by peer 1), once (4 / EXTRA_SHARE).
    assert_eq!(s.on_have(2, 1, now), [3]);
}

#[test]
fn no_extra_offers_while_the_seeds_queue_is_long() {
    let now = Instant::now();
    let (none, all) = (bits(20, []), bits(20, 0..20));
    let mut s = seeder(20, 8);
    assert_eq!(s.add_peer(1, &none, &all, now).len(), 8);
    assert_eq!(s.add_peer(2, &none, &all, now).len(), 8);
    // The last four fresh chunks.
    assert_eq!(s.add_peer(3, &none, &all, now).len(), 4);
    // 19 offers outstanding, more than a window: the seed has work enough
    // without extras.
    assert!(s.on_have(3, 16, now).is_empty());
}

#[test]
fn offers_only_what_a_peer_wants_and_lacks() {
    let now = Instant::now();
    let mut s = seeder(6, 10);
    // The peer holds 0, does not want 4 and 5 (its engine has those layers).
    let offers = s.add_peer(1, &bits(6, [0]), &bits(6, [1, 2, 3]), now);
    let mut sorted = offers.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3]);
}

#[test]
fn chunks_held_by_a_peer_are_not_offered() {
    let now = Instant::now();
    // A window of 2: room for the fresh chunks only.
    let mut s = seeder(4, 2);
    s.add_peer(1, &bits(4, [0, 1]), &bits(4, []), now);
    let offers = s.add_peer(2, &bits(4, []), &bits(4, 0..4), now);
    let mut sorted = offers.clone();
    sorted.sort();
    assert_eq!(sorted, [2, 3], "0 and 1 come from peer 1");
}

#[test]
fn a_departed_peers_offers_become_fresh_again() {
    let now = Instant::now();
    let mut s = seeder(2, 2);
    let first = s.add_peer(1, &bits(2, []), &bits(2, 0..2), now);
    assert_eq!(first.len(), 2);
    assert!(s.add_peer(2, &bits(2, []), &bits(2, 0..2), now).is_empty());
    let again = s.remove_peer(1);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, 2);
    assert_eq!(again[0].1.len(), 2);
}

#[test]
fn a_stalled_peer_is_offered_what_others_hold() {
    let t0 = Instant::now();
    let mut s = seeder(3, 3);
    s.add_peer(1, &bits(3, [0, 1, 2]), &bits(3, []), t0);
    assert!(s.add_peer(2, &bits(3, []), &bits(3, 0..3), t0).is_empty());
    assert!(s.tick(t0 + STALL_AFTER / 2).is_empty(), "not yet stalled");
    let offers = s.tick(t0 + STALL_AFTER);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].0, 2);
    assert_eq!(offers[0].1.len(), 3);
    assert!(s.tick(t0 + STALL_AFTER).is_empty(), "offered once per stall");
}

#[test]
fn a_shorter_stall_limit_offers_sooner() {
    let t0 = Instant::now();
    let short = Duration::from_millis(500);
    let mut s = seeder(3, 3).with_stall_after(short);
    s.add_peer(1, &bits(3, [0, 1, 2]), &bits(3, []), t0);
    assert!(s.add_peer(2, &bits(3, []), &bits(3, 0..3), t0).is_empty());
    assert!(s.tick(t0 + short / 2).is_empty(), "not yet stalled");
    assert_eq!(s.tick(t0 + short).len(), 1);
}

#[test]
fn the_default_stall_limit_is_the_seeds_timeout() {
    assert_eq!(crate::net::Timeouts::default().seed_stall, STALL_AFTER);
}

#[test]
fn out_of_range_have_is_ignored() {
    let mut s = seeder(2, 2);
    s.add_peer(1, &bits(2, []), &bits(2, 0..2), Instant::now());
    assert!(s.on_have(1, 99, Instant::now()).is_empty());
    assert!(s.on_have(42, 0, Instant::now()).is_empty());
}

#[test]
fn extra_offers_skip_chunks_several_peers_hold() {
    let now = Instant::now();
    let (none, all) = (bits(4, []), bits(4, 0..4));
    let mut s = seeder(4, 8);
    // Peers 1 and 2 hold chunk 0, peer 2 also chunk 1, and want nothing
    // more; peer 3 lags and lacks everything.
    s.add_peer(1, &bits(4, [0]), &bits(4, [0]), now);
    s.add_peer(2, &bits(4, [0, 1]), &bits(4, [0, 1]), now);
    // The fresh chunks, then, with every chunk offered and fewer offers
    // outstanding than peers, an extra one: the chunk one peer holds (1),
    // not the one two hold (0), which peer 3 fetches from them.
    assert_eq!(s.add_peer(3, &none, &all, now), [2, 3, 1]);
    assert!(s.on_have(3, 2, now).is_empty(), "nothing else one peer holds");
}
