//! Picker rules, checked without any I/O.

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;

fn bits(len: usize, set: &[usize]) -> Bitfield {
    let mut b = Bitfield::new(len);
    set.iter().for_each(|&i| b.set(i));
    b
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn picks_rarest_first() {
    let mut p = Picker::new(&[true; 3], &[false; 3], 8);
    p.add_peer(1, &bits(3, &[0, 1, 2]));
    p.add_peer(2, &bits(3, &[0, 1]));
    p.add_peer(3, &bits(3, &[0]));
    // Chunk 2 has one holder, 1 has two, 0 has three.
    assert_eq!(p.pick(1, &mut rng()), Some(2));
    assert_eq!(p.pick(1, &mut rng()), Some(1));
    assert_eq!(p.pick(1, &mut rng()), Some(0));
}

#[test]
fn ties_break_randomly() {
    let mut seen = std::collections::HashSet::new();
    for seed in 0..40 {
        let mut p = Picker::new(&[true; 4], &[false; 4], 8);
        p.add_peer(1, &bits(4, &[0, 1, 2, 3]));
        seen.insert(p.pick(1, &mut StdRng::seed_from_u64(seed)).unwrap());
    }
    assert!(seen.len() > 1, "always picked {seen:?}");
}

#[test]
fn only_asks_a_peer_for_what_it_has() {
    let mut p = Picker::new(&[true; 3], &[false; 3], 8);
    p.add_peer(1, &bits(3, &[1]));
    assert_eq!(p.pick(1, &mut rng()), Some(1));
    assert_eq!(p.pick(1, &mut rng()), None);
    assert!(p.peer_has(1, 2));
    assert_eq!(p.pick(1, &mut rng()), Some(2));
}

#[test]
fn bounds_requests_per_peer() {
    let mut p = Picker::new(&[true; 10], &[false; 10], 2);
    p.add_peer(1, &bits(10, &(0..10).collect::<Vec<_>>()));
    assert!(p.pick(1, &mut rng()).is_some());
    assert!(p.pick(1, &mut rng()).is_some());
    assert_eq!(p.pick(1, &mut rng()), None);
    assert_eq!(p.in_flight(1), 2);
}

#[test]
fn skips_chunks_not_needed_or_held() {
    let mut p = Picker::new(&[true, false, true], &[true, false, false], 8);
    p.add_peer(1, &bits(3, &[0, 1, 2]));
    assert_eq!(p.pick(1, &mut rng()), Some(2));
    assert_eq!(p.pick(1, &mut rng()), None);
    assert_eq!(p.missing(), 1);
    assert!(p.bitfield().get(0) && !p.bitfield().get(2));
    assert!(p.wanted().get(2) && !p.wanted().get(0) && !p.wanted().get(1));
}

#[test]
fn failed_request_goes_back_to_needed_and_to_another_peer() {
    let mut p = Picker::new(&[true], &[false], 8);
    p.add_peer(1, &bits(1, &[0]));
    p.add_peer(2, &bits(1, &[0]));
    let i = p.pick(1, &mut rng()).unwrap();
    p.on_failed(1, i);
    p.remove_peer(1);
    assert_eq!(p.pick(2, &mut rng()), Some(0));
}

#[test]
fn departed_peer_releases_its_requests() {
    let mut p = Picker::new(&[true, true], &[false, false], 8);
    p.add_peer(1, &bits(2, &[0, 1]));
    p.pick(1, &mut rng());
    p.pick(1, &mut rng());
    p.remove_peer(1);
    p.add_peer(2, &bits(2, &[0, 1]));
    assert!(p.pick(2, &mut rng()).is_some());
    assert!(p.pick(2, &mut rng()).is_some());
}

#[test]
fn endgame_duplicates_the_last_chunk_once() {
    let mut p = Picker::new(&[true], &[false], 8);
    p.add_peer(1, &bits(1, &[0]));
    p.add_peer(2, &bits(1, &[0]));
    p.add_peer(3, &bits(1, &[0]));
    assert_eq!(p.pick(1, &mut rng()), Some(0));
    assert_eq!(p.pick(1, &mut rng()), None, "never twice from the same peer");
    assert_eq!(p.pick(2, &mut rng()), Some(0), "endgame copy");
    assert_eq!(p.pick(3, &mut rng()), None, "at most ENDGAME_COPIES");
    assert_eq!(p.on_received(2, 0), Some(vec![1]));
    assert!(p.is_complete());
    assert_eq!(p.in_flight(1), 0);
    assert_eq!(p.on_received(1, 0), None, "late duplicate is ignored");
}

#[test]
fn availability_counts_holders() {
    let mut p = Picker::new(&[true, true], &[false, false], 8);
    p.add_peer(1, &bits(2, &[]));
    p.add_peer(2, &bits(2, &[1]));
    p.peer_has(1, 1);
    p.peer_has(1, 1); // repeated HAVE does not count twice
    p.add_peer(3, &bits(2, &[0]));
    assert_eq!(p.pick(3, &mut rng()), Some(0));
    assert!(!p.peer_has(1, 99));
    assert!(!p.peer_has(42, 0));
}

#[test]
fn completes_after_all_received() {
    let mut p = Picker::new(&[true; 5], &[false; 5], 3);
    p.add_peer(1, &bits(5, &[0, 1, 2, 3, 4]));
    let mut r = rng();
    while !p.is_complete() {
        let i = p.pick(1, &mut r).expect("something to pick");
        assert!(p.on_received(1, i).is_some());
    }
    assert_eq!(p.pick(1, &mut r), None);
}

#[test]
fn a_peer_that_lacks_a_chunk_is_not_asked_again() {
    let mut p = Picker::new(&[true], &[false], 8);
    p.add_peer(1, &bits(1, &[0]));
    assert_eq!(p.pick(1, &mut rng()), Some(0));
    p.on_failed(1, 0);
    p.peer_lacks(1, 0);
    assert_eq!(p.pick(1, &mut rng()), None);
    p.peer_has(1, 0);
    assert_eq!(
        p.pick(1, &mut rng()),
        Some(0),
        "asked again once it announces the chunk"
    );
}

#[test]
fn an_endgame_copy_that_finds_the_chunk_stored_completes_it() {
    let mut p = Picker::new(&[true], &[false], 8);
    p.add_peer(1, &bits(1, &[0]));
    p.add_peer(2, &bits(1, &[0]));
    assert_eq!(p.pick(1, &mut rng()), Some(0));
    assert!(!p.requested_elsewhere(1, 0), "only peer 1 asked so far");
    assert_eq!(p.pick(2, &mut rng()), Some(0), "endgame copy");
    assert!(p.requested_elsewhere(2, 0));
    // Peer 1's answer stored the chunk, and peer 2's copy found it stored
    // before the swarm processed that answer: the copy completes the chunk,
    // and peer 1's answer, processed next, is a late duplicate.
    assert_eq!(p.on_received(2, 0), Some(vec![1]));
    assert!(p.is_complete());
    assert_eq!(p.on_received(1, 0), None);
    assert_eq!((p.in_flight(1), p.in_flight(2)), (0, 0));
    assert_eq!(p.pick(1, &mut rng()), None, "nothing left to ask");
}

#[test]
fn the_total_limit_caps_requests_across_peers() {
    let need = [true; 6];
    let mut p = Picker::new(&need, &[false; 6], 2).with_total_limit(3);
    for id in 1..=3 {
        p.add_peer(id, &bits(6, &[0, 1, 2, 3, 4, 5]));
    }
    let first = p.pick(1, &mut rng()).unwrap();
    assert!(p.pick(1, &mut rng()).is_some());
    assert_eq!(p.pick(1, &mut rng()), None, "per-peer limit");
    assert!(p.pick(2, &mut rng()).is_some());
    assert!(p.at_total_limit());
    assert_eq!(p.pick(3, &mut rng()), None, "total limit");
    p.on_received(1, first);
    assert_eq!(p.total_in_flight(), 2);
    assert!(p.pick(3, &mut rng()).is_some(), "a freed slot is any peer's");
}

#[test]
fn the_seed_has_its_own_limit_outside_the_total() {
    let mut p = Picker::new(&[true; 8], &[false; 8], 4).with_total_limit(2);
    p.add_peer(1, &bits(8, &[0, 1, 2, 3]));
    p.add_seed(9, &bits(8, &[4, 5, 6, 7]), 3);
    assert!(p.pick(1, &mut rng()).is_some());
    assert!(p.pick(1, &mut rng()).is_some());
    assert_eq!(p.pick(1, &mut rng()), None, "the total limit holds for peers");
    // Requests to the seed wait there in turn: three, whatever the others.
    for _ in 0..3 {
        assert!(p.pick(9, &mut rng()).is_some());
    }
    assert_eq!(p.pick(9, &mut rng()), None, "the seed's own limit");
    assert_eq!((p.total_in_flight(), p.in_flight(9)), (2, 3));
}

#[test]
fn endgame_copies_from_the_seed_go_one_at_a_time() {
    let mut p = Picker::new(&[true; 3], &[false; 3], 4);
    p.add_peer(1, &bits(3, &[0, 1, 2]));
    p.add_seed(9, &bits(3, &[0, 1, 2]), 3);
    for _ in 0..3 {
        assert!(p.pick(1, &mut rng()).is_some());
    }
    // Everything is in flight at peer 1: the seed may be asked for a copy,
    // one at a time (a stalled peer's chunks still come, in turn).
    assert!(p.pick(9, &mut rng()).is_some());
    assert_eq!(p.pick(9, &mut rng()), None);
    assert_eq!(p.in_flight(9), 1);
}
