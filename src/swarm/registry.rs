//! What the tasks of a distribution share, and the process's registry of
//! running distributions that serving a peer's request looks up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::content::hash::Hash;
use crate::content::manifest::Manifest;
use crate::content::store::ChunkStore;
use crate::ops::metrics::Metrics;
use crate::swarm::Uploads;
use crate::wire::{Bitfield, PeerBytes};

/// What every task of a distribution shares, immutable but for counters.
#[derive(Debug)]
pub struct DistShared {
    /// The manifest's ID.
    pub id: Hash,
    /// The validated manifest.
    pub manifest: Arc<Manifest>,
    /// Where verified chunks live.
    pub store: ChunkStore,
    served: Mutex<HashMap<String, PeerBytes>>,
    meter: UploadMeter,
    /// The process's counters.
    pub metrics: Metrics,
}

impl DistShared {
    /// Shared state for a validated manifest, counting into `metrics`.
    pub fn new(manifest: Arc<Manifest>, store: ChunkStore, metrics: Metrics) -> Arc<Self> {
        Arc::new(DistShared {
            id: manifest.id(),
            manifest,
            store,
            served: Mutex::default(),
            meter: UploadMeter::default(),
            metrics,
        })
    }

    /// The seed's shared state: its served bytes also add up in `meter`.
    pub fn with_meter(manifest: Arc<Manifest>, store: ChunkStore, meter: UploadMeter) -> Arc<Self> {
        Arc::new(DistShared {
            id: manifest.id(),
            manifest,
            store,
            served: Mutex::default(),
            meter,
            metrics: Metrics::default(),
        })
    }

    /// Bytes served to each peer so far, by peer name.
    pub fn served(&self) -> Vec<PeerBytes> {
        let mut v: Vec<PeerBytes> = self
            .served
            .lock()
            .expect("stats lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.peer.cmp(&b.peer));
        v
    }

    pub(crate) fn count_served(&self, peer: &str, bytes: u64) {
        let mut map = self.served.lock().expect("stats lock");
        let e = map.entry(peer.to_string()).or_insert_with(|| PeerBytes {
            peer: peer.into(),
            chunks: 0,
            bytes: 0,
        });
        e.chunks += 1;
        e.bytes += bytes;
        self.meter.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A running total of the bytes a distribution has served, readable while
/// it runs: the pusher's live view shows the seed's upload from it.
#[derive(Clone, Debug, Default)]
pub struct UploadMeter(Arc<AtomicU64>);

impl UploadMeter {
    /// Bytes served so far.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The distributions this process takes part in, by manifest ID, and the
/// limits on what it uploads serving them.
#[derive(Clone, Debug, Default)]
pub struct Registry(Arc<Mutex<HashMap<Hash, SwarmHandle>>>, Arc<Uploads>, Metrics);

impl Registry {
    /// A registry whose serving uploads at most `mbit` Mbit/s, counting
    /// into `metrics`.
    pub fn with_upload_limit(mbit: Option<u64>, metrics: Metrics) -> Registry {
        Registry(Arc::default(), Arc::new(Uploads::new(mbit)), metrics)
    }

    /// The seed's registry: requests queue per node ([`Uploads::seed`]),
    /// serving uploads at most `mbit` Mbit/s.
    pub fn for_seed(mbit: Option<u64>) -> Registry {
        Registry(Arc::default(), Arc::new(Uploads::seed(mbit)), Metrics::default())
    }

    /// The process's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.2
    }

    /// What bounds this process's chunk answers.
    pub fn uploads(&self) -> &Arc<Uploads> {
        &self.1
    }

    /// Makes `handle` reachable for incoming swarm and request streams
    /// until the returned guard is dropped, which also happens when the
    /// task holding it is aborted.
    pub fn register(&self, handle: SwarmHandle) -> Registered {
        let previous = self
            .0
            .lock()
            .expect("registry lock")
            .insert(handle.shared.id, handle.clone());
        if previous.is_some() {
            tracing::warn!(dist = %handle.shared.id.short(), "distribution announced again while running");
        }
        Registered {
            registry: self.clone(),
            handle,
        }
    }

    /// Removes `handle`, unless a newer registration of the same
    /// distribution replaced it.
    fn unregister(&self, handle: &SwarmHandle) {
        let mut map = self.0.lock().expect("registry lock");
        if map
            .get(&handle.shared.id)
            .is_some_and(|h| Arc::ptr_eq(&h.shared, &handle.shared))
        {
            map.remove(&handle.shared.id);
        }
    }

    pub(crate) fn get(&self, id: &Hash) -> Option<SwarmHandle> {
        self.0.lock().expect("registry lock").get(id).cloned()
    }
}

/// What a peer holds and still wants, from its `Hello`.
#[derive(Clone, Debug, Default)]
pub struct Holdings {
    /// Chunks it holds, verified.
    pub have: Bitfield,
    /// Chunks it will fetch.
    pub want: Bitfield,
}

/// A registration in a [`Registry`]; dropping it unregisters.
#[derive(Debug)]
pub struct Registered {
    registry: Registry,
    handle: SwarmHandle,
}

impl Registered {
    /// The registered swarm.
    pub fn handle(&self) -> &SwarmHandle {
        &self.handle
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.unregister(&self.handle);
    }
}
