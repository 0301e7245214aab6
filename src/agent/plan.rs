//! Planning a node's part in a distribution: which images its engine
//! already holds, which layers it lacks (by chain ID), which chunks it must
//! fetch, and which of those a previous run already verified (resume).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::content::arrivals::Arrivals;
use crate::content::manifest::Manifest;
use crate::content::platform::Platform;
use crate::content::store::ChunkStore;
use crate::engine::{About, Engine, Held, LoadRequest};
use crate::wire::Plan;

/// What one node will fetch and load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// Images to load, as indices into the manifest's images: those the
    /// engine lacks, or every image with `force`.
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
    /// True when there is no image to load (every image is present and the
    /// push is not forced): nothing to fetch or load.
    pub fn is_skip(&self) -> bool {
        self.images.is_empty()
    }

    /// The load of this plan: its images, only its layers, from `store`;
    /// with `arrivals` while the node still fetches.
    pub fn load_request(
        &self,
        manifest: &Arc<Manifest>,
        store: &ChunkStore,
        arrivals: Option<Arc<Arrivals>>,
    ) -> LoadRequest {
        LoadRequest {
            manifest: manifest.clone(),
            images: self.images.clone(),
            layers: self.layers.clone(),
            store: store.clone(),
            arrivals,
        }
    }
}

/// Plans against the engine's image IDs and chain IDs. Chunks already in
/// the store are re-verified (read and hashed) before they count as held.
///
/// With `force` (`push --force`) every image is loaded again, also those
/// the engine holds (`present` still says which it held), but only the
/// layers it lacks are fetched and sent: every engine keeps a layer it
/// holds whatever comes with the load (Docker's classic store by chain ID,
/// containerd by blob digest, podman by diffID), so sending it again would
/// repair nothing and cost its every byte.
pub fn plan(manifest: &Manifest, held: &Held, store: &ChunkStore, force: bool) -> NodePlan {
    let present: Vec<bool> = manifest
        .images
        .iter()
        .map(|i| held.image_ids.contains(&i.id))
        .collect();
    let images: Vec<usize> = (0..manifest.images.len())
        .filter(|&i| force || !present[i])
        .collect();
    let layers = lacking_layers(manifest, held, &images);
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

/// The layers of `images` the engine lacks: by chain ID, or by blob where
/// the engine keeps blobs.
fn lacking_layers(manifest: &Manifest, held: &Held, images: &[usize]) -> BTreeSet<usize> {
    let mut layers = BTreeSet::new();
    for &i in images {
        let image = &manifest.images[i];
        for (pos, chain) in image.chain_ids(manifest).iter().enumerate() {
            let layer = image.layers[pos] as usize;
            if !held.has_layer(chain, &manifest.layers[layer].diff_id) {
                layers.insert(layer);
            }
        }
    }
    layers
}

/// A push's plan on `engine`, which holds `held` ([`plan`], `force` for
/// `push --force`): what to fetch (stored chunks re-verified, on a blocking
/// thread), refused if an image is for another platform, with the engine
/// named in its summary.
pub async fn plan_on(
    engine: &Engine,
    held: Held,
    manifest: &Arc<Manifest>,
    store: &ChunkStore,
    force: bool,
) -> Result<NodePlan, String> {
    let (m, store) = (manifest.clone(), store.clone());
    let mut plan = tokio::task::spawn_blocking(move || plan(&m, &held, &store, force))
        .await
        .map_err(|e| format!("planning failed: {e}"))?;
    check_platform(manifest, &plan, engine.about())?;
    plan.summary.engine = engine.about().to_string();
    Ok(plan)
}

/// Refuses images built for another platform than the node's, before
/// anything is fetched: the engine would take them, and every container
/// from them would fail at its first exec.
pub fn check_platform(manifest: &Manifest, plan: &NodePlan, engine: &About) -> Result<(), String> {
    for &i in &plan.images {
        let image = &manifest.images[i];
        let Some(built) = Platform::of_config(&image.config) else {
            continue;
        };
        if !engine.platform.runs(&built) {
            let name = image.refs.first().unwrap_or(&image.id);
            return Err(format!(
                "image {name} is built for {built} but this node is {node} ({kind}); nothing was loaded \
                 (push an image built for {node}; multi-platform images are not supported yet)",
                node = engine.platform,
                kind = engine.kind,
            ));
        }
    }
    Ok(())
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
        engine: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::chunk::encode_chunk;
    use crate::content::manifest::chain_ids;
    use crate::engine::HeldLayers;
    use std::collections::HashSet;

    fn held<const I: usize, const C: usize>(ids: [String; I], chains: [String; C]) -> Held {
        Held {
            image_ids: HashSet::from(ids),
            layers: HeldLayers::Chains(HashSet::from(chains)),
        }
    }

    fn setup() -> (Manifest, tempfile::TempDir, ChunkStore) {
        let m = crate::content::manifest::tests::sample();
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        (m, dir, store)
    }

    #[test]
    fn empty_engine_needs_everything() {
        let (m, _d, store) = setup();
        let p = plan(&m, &held([], []), &store, false);
        assert_eq!(p.images, [0]);
        assert_eq!(p.layers.len(), 2);
        assert!(p.need.iter().all(|n| *n));
        assert_eq!(p.summary.need_chunks as usize, m.chunks.len());
        assert_eq!(p.summary.need_bytes, m.compressed_size());
    }

    #[test]
    fn image_present_is_a_skip() {
        let (m, _d, store) = setup();
        let p = plan(&m, &held([m.images[0].id.clone()], []), &store, false);
        assert!(p.is_skip());
        assert_eq!(p.summary.need_chunks, 0);
        assert_eq!(p.summary.present, [true]);
    }

    #[test]
    fn held_base_layer_is_not_fetched() {
        let (m, _d, store) = setup();
        let base_chain = chain_ids([m.layers[0].diff_id.as_str()]).remove(0);
        let p = plan(&m, &held([], [base_chain]), &store, false);
        assert_eq!(p.layers, BTreeSet::from([1]));
        let top = &m.layers[1];
        assert_eq!(p.summary.need_chunks, top.chunk_count);
    }

    #[test]
    fn same_diff_id_on_another_base_is_still_fetched() {
        // A chain ID, not a diffID, says a layer is present: the top layer's
        // diffID alone as a chain means "this layer at the bottom".
        let (m, _d, store) = setup();
        let p = plan(&m, &held([], [m.layers[1].diff_id.clone()]), &store, false);
        assert_eq!(p.layers.len(), 2);
    }

    #[test]
    fn containerd_holds_layers_by_blob_whatever_the_base() {
        // In a content store the blob named by the diffID is the layer,
        // wherever the image that brought it had it.
        let (m, _d, store) = setup();
        let held = Held {
            image_ids: HashSet::new(),
            layers: HeldLayers::Blobs(HashSet::from([m.layers[1].diff_id.clone()])),
        };
        assert_eq!(plan(&m, &held, &store, false).layers, BTreeSet::from([0]));
    }

    #[test]
    fn a_forced_plan_loads_a_held_image_again_without_fetching_its_layers() {
        let (m, _d, store) = setup();
        let diff_ids = m.layers.iter().map(|l| l.diff_id.as_str());
        let [base, top] = <[String; 2]>::try_from(chain_ids(diff_ids)).unwrap();
        let held = held([m.images[0].id.clone()], [base, top]);
        assert!(plan(&m, &held, &store, false).is_skip());
        let p = plan(&m, &held, &store, true);
        assert!(!p.is_skip(), "forced: the image is loaded again");
        assert_eq!(p.images, [0]);
        assert_eq!(
            p.summary.present,
            [true],
            "the plan still says the engine held it"
        );
        assert!(p.layers.is_empty(), "the engine keeps the layers it holds");
        assert_eq!((p.summary.need_chunks, p.summary.need_bytes), (0, 0));
    }

    #[test]
    fn a_forced_plan_fetches_the_blobs_a_held_image_lost() {
        // containerd lists an image whose layer blob was removed (`ctr
        // content rm`, discard_unpacked_layers): a push skips it, a forced
        // push writes the blob again.
        let (m, _d, store) = setup();
        let held = Held {
            image_ids: HashSet::from([m.images[0].id.clone()]),
            layers: HeldLayers::Blobs(HashSet::from([m.layers[0].diff_id.clone()])),
        };
        assert!(plan(&m, &held, &store, false).is_skip());
        let p = plan(&m, &held, &store, true);
        assert_eq!(p.layers, BTreeSet::from([1]));
        assert_eq!(p.summary.need_chunks, m.layers[1].chunk_count);
    }

    #[test]
    fn forcing_changes_nothing_where_the_engine_lacks_the_image() {
        let (m, _d, store) = setup();
        let base_chain = chain_ids([m.layers[0].diff_id.as_str()]).remove(0);
        for held in [held([], []), held([], [base_chain])] {
            assert_eq!(plan(&m, &held, &store, true), plan(&m, &held, &store, false));
        }
    }

    #[test]
    fn an_image_for_another_platform_is_refused_with_both_named() {
        use crate::engine::{About, Kind};
        let (mut m, _d, store) = setup();
        let p = plan(&m, &held([], []), &store, false);
        let node = About {
            kind: Kind::Containerd,
            version: String::new(),
            store: "namespace k8s.io".into(),
            platform: Platform::from_uname("linux", "x86_64"),
        };
        assert_eq!(
            check_platform(&m, &p, &node),
            Ok(()),
            "the sample declares no platform"
        );
        m.images[0].config = br#"{"architecture":"arm64","os":"linux","rootfs":{}}"#.to_vec();
        let err = check_platform(&m, &p, &node).unwrap_err();
        assert!(
            err.contains("built for linux/arm64") && err.contains("this node is linux/amd64"),
            "{err}"
        );
        let skip = NodePlan::default();
        assert_eq!(
            check_platform(&m, &skip, &node),
            Ok(()),
            "an image held is not checked"
        );
    }

    #[test]
    fn stored_chunks_count_only_if_they_verify() {
        let (m, _d, store) = setup();
        // Store chunk 0 genuinely and chunk 1 damaged.
        let raw0 = b"laye";
        let (e0, z0) = encode_chunk(raw0, 1);
        assert_eq!(e0.size, m.chunks[0].size);
        let mut m = m;
        m.chunks[0] = e0;
        store.put(&e0.hash, &z0).unwrap();
        store.put(&m.chunks[1].hash, b"garbage").unwrap();
        let p = plan(&m, &held([], []), &store, false);
        assert!(p.have[0] && !p.have[1]);
        assert_eq!(p.summary.stored_chunks, 1);
        assert!(!store.contains(&m.chunks[1].hash), "damaged chunk removed");
    }
}
