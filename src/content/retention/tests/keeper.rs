//! Tests of the keeper thread on a real store.

use super::*;
use crate::content::chunk::encode_chunk;
use crate::ops::metrics::Metrics;

fn opts(retain: Duration, budget: Option<u64>) -> RetentionOptions {
    RetentionOptions { retain, budget }
}

/// Stores one chunk of `n` incompressible bytes per tag; returns their hashes.
fn put(store: &ChunkStore, tags: &[u8], n: usize) -> Vec<Hash> {
    chunks(tags, n)
        .into_iter()
        .map(|(hash, z)| {
            store.put(&hash, &z).unwrap();
            hash
        })
        .collect()
}

/// One compressed chunk of `n` incompressible bytes per tag, with its hash.
fn chunks(tags: &[u8], n: usize) -> Vec<(Hash, Vec<u8>)> {
    tags.iter()
        .map(|&t| {
            let mut x = u64::from(t) + 1;
            let raw: Vec<u8> = (0..n)
                .map(|_| {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (x >> 56) as u8
                })
                .collect();
            let (entry, z) = encode_chunk(&raw, 1);
            (entry.hash, z)
        })
        .collect()
}

fn id(n: u8) -> Hash {
    Hash([n; 32])
}

#[tokio::test]
async fn ended_distribution_goes_but_chunks_a_live_one_shares_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (keeper, thread) =
        Keeper::spawn(store.clone(), opts(Duration::ZERO, None), Metrics::default()).unwrap();
    let made = chunks(&[1, 2, 3], 4000);
    let [a, b, c] = [made[0].0, made[1].0, made[2].0];
    // Recorded before they are stored, as an agent does: with no retention,
    // a chunk no record names may go at any sweep.
    let first = keeper.begin(id(1), [a, b]).await.unwrap();
    let second = keeper.begin(id(2), [b, c]).await.unwrap();
    for (hash, z) in &made {
        store.put(hash, z).unwrap();
    }
    drop(first);
    // A reply means every earlier message, and its sweep, was handled.
    keeper.make_room(0).await.unwrap();
    assert!(!store.contains(&a), "only the ended distribution held a");
    assert!(
        store.contains(&b) && store.contains(&c),
        "the live one holds b and c"
    );
    assert!(!dir.path().join("dists").join(id(1).to_hex()).exists());

    // Restarted with the second one still recorded as live: it counts as
    // ended at the restart, and with no retention its chunks go.
    keeper.stop();
    thread.join().unwrap();
    drop(second); // the old thread is gone: this end is never seen
    let (keeper, thread) = Keeper::spawn(
        store.clone(),
        opts(Duration::from_secs(3600), None),
        Metrics::default(),
    )
    .unwrap();
    keeper.make_room(0).await.unwrap();
    assert!(store.contains(&b), "kept for an hour after the restart");
    keeper.stop();
    thread.join().unwrap();
    let (keeper, _thread) =
        Keeper::spawn(store.clone(), opts(Duration::ZERO, None), Metrics::default()).unwrap();
    keeper.make_room(0).await.unwrap();
    assert!(store.scan().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("dists")).unwrap().count(), 0);
}

#[tokio::test]
async fn budget_evicts_oldest_ended_first_and_refuses_what_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let hour = Duration::from_secs(3600);
    let (keeper, _thread) =
        Keeper::spawn(store.clone(), opts(hour, Some(30_000)), Metrics::default()).unwrap();
    let chunks = put(&store, &[1, 2, 3], 8000);
    for (i, h) in chunks.iter().enumerate() {
        drop(keeper.begin(id(i as u8), [*h]).await.unwrap());
        // Distinct end times, in order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let size = |h: &Hash| store.read(h).unwrap().len() as u64;
    assert!(chunks.iter().all(|h| (8000..8100).contains(&size(h))));
    // Room for 15 000 more bytes: the two oldest go, the newest fits.
    keeper.make_room(15_000).await.unwrap();
    assert!(!store.contains(&chunks[0]) && !store.contains(&chunks[1]));
    assert!(store.contains(&chunks[2]));
    let err = keeper.make_room(30_001).await.unwrap_err();
    assert!(matches!(err, RoomError::Budget { .. }), "{err}");
    assert!(
        err.to_string().contains("raise store_budget in agent.toml"),
        "{err}"
    );
    assert!(
        store.scan().unwrap().is_empty(),
        "everything ended was evicted trying"
    );
    let live = put(&store, &[9], 8000)[0];
    let _lease = keeper.begin(id(9), [live]).await.unwrap();
    keeper.make_room(25_000).await.unwrap_err();
    assert!(store.contains(&live), "a live chunk is never evicted");
}
