//! Tests of the retention policy.

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn h(n: u8) -> Hash {
    Hash([n; 32])
}

fn at(hours_ago: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + 1000 * HOUR - HOUR * hours_ago as u32
}

fn now() -> SystemTime {
    at(0)
}

/// A distribution of chunks `chunks`, ended `hours_ago` (live if `None`).
fn dist(chunks: &[u8], hours_ago: Option<u64>) -> Known {
    Known {
        chunks: chunks.iter().map(|&c| h(c)).collect(),
        ended: hours_ago.map(at),
    }
}

/// Chunks 1..=n on disk, 100 bytes each, written long ago.
fn stored(n: u8) -> Vec<StoredChunk> {
    (1..=n)
        .map(|c| StoredChunk {
            hash: h(c),
            bytes: 100,
            written: at(500),
        })
        .collect()
}

fn sorted(mut v: Vec<Hash>) -> Vec<Hash> {
    v.sort();
    v
}

fn hashes(ns: &[u8]) -> Vec<Hash> {
    sorted(ns.iter().map(|&n| h(n)).collect())
}

#[test]
fn expired_distribution_goes_with_its_chunks_and_a_recent_one_stays() {
    let known = HashMap::from([(h(100), dist(&[1, 2], Some(25))), (h(101), dist(&[3], Some(1)))]);
    let e = select(&known, &stored(3), now(), 24 * HOUR, 0);
    assert_eq!(e.dists, [h(100)]);
    assert_eq!(sorted(e.chunks), hashes(&[1, 2]));
    assert_eq!((e.bytes, e.short), (200, 0));
}

#[test]
fn chunk_shared_with_a_live_distribution_stays() {
    // 100 ended long ago; 101 is running and also needs chunk 2.
    let known = HashMap::from([(h(100), dist(&[1, 2], Some(48))), (h(101), dist(&[2, 3], None))]);
    let e = select(&known, &stored(3), now(), 24 * HOUR, 0);
    assert_eq!(e.dists, [h(100)], "the record goes");
    assert_eq!(e.chunks, [h(1)], "chunk 2 is live, chunk 3 too");
    // Not even pressure touches live chunks.
    let e = select(&known, &stored(3), now(), 24 * HOUR, 10_000);
    assert_eq!(e.chunks, [h(1)]);
    assert_eq!(e.short, 10_000 - 100);
}

#[test]
fn chunk_shared_by_two_ended_distributions_stays_until_both_go() {
    let known = HashMap::from([
        (h(100), dist(&[1, 2], Some(30))),
        (h(101), dist(&[2, 3], Some(2))),
    ]);
    let e = select(&known, &stored(3), now(), 24 * HOUR, 0);
    assert_eq!(e.chunks, [h(1)]);
    let e = select(&known, &stored(3), now(), HOUR, 0);
    assert_eq!(sorted(e.dists), hashes(&[100, 101]));
    assert_eq!(sorted(e.chunks), hashes(&[1, 2, 3]));
}

#[test]
fn pressure_evicts_oldest_first_until_enough_is_freed() {
    let known = HashMap::from([
        (h(100), dist(&[1], Some(3))),
        (h(101), dist(&[2], Some(5))),
        (h(102), dist(&[3], Some(1))),
        (h(103), dist(&[4], None)),
    ]);
    let e = select(&known, &stored(4), now(), 24 * HOUR, 150);
    assert_eq!(e.dists, [h(101), h(100)], "oldest first, and no more than needed");
    assert_eq!(e.bytes, 200);
    let e = select(&known, &stored(4), now(), 24 * HOUR, 0);
    assert_eq!(e, Eviction::default(), "no pressure, nothing expired");
}

#[test]
fn chunks_no_record_names_go_after_retain_or_under_pressure() {
    let mut chunks = stored(2);
    chunks[1].written = at(1);
    let e = select(&HashMap::new(), &chunks, now(), 24 * HOUR, 0);
    assert_eq!(e.chunks, [h(1)]);
    let e = select(&HashMap::new(), &chunks, now(), 24 * HOUR, 150);
    assert_eq!(e.chunks, [h(1), h(2)]);
}

#[test]
fn chunks_not_on_disk_count_for_nothing() {
    let known = HashMap::from([(h(100), dist(&[1, 9], Some(30)))]);
    let e = select(&known, &stored(1), now(), 24 * HOUR, 0);
    assert_eq!((e.chunks, e.bytes), (vec![h(1)], 100));
}

#[test]
fn must_free_covers_budget_and_disk() {
    assert_eq!(must_free(1000, 500, None, 0), 0);
    assert_eq!(must_free(1000, 500, Some(1200), 0), 300);
    assert_eq!(must_free(1000, 500, None, 400), 400);
    assert_eq!(must_free(1000, 500, Some(1200), 500), 500);
    assert_eq!(must_free(1000, 0, Some(5000), 0), 0);
}
