//! Planning a node's part in a distribution: which images its engine
//! already holds, which layers it lacks (by chain ID), which chunks it must
//! fetch, and which of those a previous run already verified (resume).

use std::collections::{BTreeSet, HashSet};

use crate::content::manifest::Manifest;
use crate::content::store::ChunkStore;
use crate::wire::Plan;

/// What one node will fetch and load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// Images the engine lacks, as indices into the manifest's images.
    pub images: Vec<usize>,
    /// Layers the engine lacks under those images.
    pub layers: BTreeSet<usize>,
    /// Per chunk: it belongs to a layer in `layers`.
    pub need: Vec<bool>,
    /// Per chunk: verified in the store already.
    pub have: Vec<bool>,
    /// The summary sent to the pusher.
    pub summary: Plan,
}

impl NodePlan {
    /// True when every image is already present: nothing to fetch or load.
    pub fn is_skip(&self) -> bool {
        self.images.is_empty()
    }
}

/// Plans against the engine's image IDs and chain IDs. Chunks already in
/// the store are re-verified (read and hashed) before they count as held.
pub fn plan(
    manifest: &Manifest,
    image_ids: &HashSet<String>,
    chain_ids: &HashSet<String>,
    store: &ChunkStore,
) -> NodePlan {
    let present: Vec<bool> = manifest
        .images
        .iter()
        .map(|i| image_ids.contains(&i.id))
        .collect();
    let images: Vec<usize> = (0..manifest.images.len()).filter(|&i| !present[i]).collect();
    let mut layers = BTreeSet::new();
    for &i in &images {
        let image = &manifest.images[i];
        for (pos, chain) in image.chain_ids(manifest).iter().enumerate() {
            if !chain_ids.contains(chain) {
                layers.insert(image.layers[pos] as usize);
            }
        }
    }
    let mut need = vec![false; manifest.chunks.len()];
    for &l in &layers {
        let layer = &manifest.layers[l];
        let start = layer.first_chunk as usize;
        need[start..start + layer.chunk_count as usize]
            .iter_mut()
            .for_each(|n| *n = true);
    }
    let have: Vec<bool> = manifest
        .chunks
        .iter()
        .zip(&need)
        .map(|(c, &n)| n && store.verify(c))
        .collect();
    let summary = summarize(manifest, present, &need, &have);
    NodePlan {
        images,
        layers,
        need,
        have,
        summary,
    }
}

fn summarize(manifest: &Manifest, present: Vec<bool>, need: &[bool], have: &[bool]) -> Plan {
    let missing = || {
        manifest
            .chunks
            .iter()
            .zip(need.iter().zip(have))
            .filter(|(_, (&n, &h))| n && !h)
    };
    Plan {
        present,
        need_chunks: missing().count() as u32,
        need_bytes: missing().map(|(c, _)| u64::from(c.zsize)).sum(),
        stored_chunks: need.iter().zip(have).filter(|(&n, &h)| n && h).count() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::chunk::encode_chunk;
    use crate::content::manifest::chain_ids;

    fn setup() -> (Manifest, tempfile::TempDir, ChunkStore) {
        let m = crate::content::manifest::tests::sample();
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        (m, dir, store)
    }

    #[test]
    fn empty_engine_needs_everything() {
        let (m, _d, store) = setup();
        let p = plan(&m, &HashSet::new(), &HashSet::new(), &store);
        assert_eq!(p.images, [0]);
        assert_eq!(p.layers.len(), 2);
        assert!(p.need.iter().all(|n| *n));
        assert_eq!(p.summary.need_chunks as usize, m.chunks.len());
        assert_eq!(p.summary.need_bytes, m.compressed_size());
    }

    #[test]
    fn image_present_is_a_skip() {
        let (m, _d, store) = setup();
        let ids = HashSet::from([m.images[0].id.clone()]);
        let p = plan(&m, &ids, &HashSet::new(), &store);
        assert!(p.is_skip());
        assert_eq!(p.summary.need_chunks, 0);
        assert_eq!(p.summary.present, [true]);
    }

    #[test]
    fn held_base_layer_is_not_fetched() {
        let (m, _d, store) = setup();
        let base_chain = chain_ids([m.layers[0].diff_id.as_str()]).remove(0);
        let p = plan(&m, &HashSet::new(), &HashSet::from([base_chain]), &store);
        assert_eq!(p.layers, BTreeSet::from([1]));
        let top = &m.layers[1];
        assert_eq!(p.summary.need_chunks, top.chunk_count);
    }

    #[test]
    fn same_diff_id_on_another_base_is_still_fetched() {
        // A chain ID, not a diffID, says a layer is present: the top layer's
        // diffID alone as a chain means "this layer at the bottom".
        let (m, _d, store) = setup();
        let p = plan(
            &m,
            &HashSet::new(),
            &HashSet::from([m.layers[1].diff_id.clone()]),
            &store,
        );
        assert_eq!(p.layers.len(), 2);
    }

    #[test]
    fn stored_chunks_count_only_if_they_verify() {
        let (m, _d, store) = setup();
        // Store chunk 0 genuinely and chunk 1 damaged.
        let raw0 = b"laye";
        let (e0, z0) = encode_chunk(raw0, 1);
        assert_eq!(e0.hash, m.chunks[0].hash);
        let mut m = m;
        m.chunks[0].zsize = e0.zsize;
        store.put(&e0.hash, &z0).unwrap();
        store.put(&m.chunks[1].hash, b"garbage").unwrap();
        let p = plan(&m, &HashSet::new(), &HashSet::new(), &store);
        assert!(p.have[0] && !p.have[1]);
        assert_eq!(p.summary.stored_chunks, 1);
        assert!(!store.contains(&m.chunks[1].hash), "damaged chunk removed");
    }
}
