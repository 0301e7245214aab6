//! What must hold of anything the library accepts: a manifest that
//! validates can be indexed without panicking and is self-consistent; a
//! manifest `parse_save` returns names only chunks that are in the store
//! and reassemble to the layers it claims.

use p2pimg::content::manifest::{config_diff_ids, sha256_digest, Manifest};
use p2pimg::wire::{self, Message, MAX_ANNOUNCE_FRAME};
use p2pimg::content::store::ChunkStore;
use sha2::{Digest, Sha256};

use crate::save_gen::ExpectedImage;

/// Validates `manifest`; if it passes, uses it the way receivers do and
/// checks the promises `validate` makes. Returns whether it validated.
pub fn validated_manifest(manifest: &Manifest) -> bool {
    if manifest.validate().is_err() {
        return false;
    }
    indexable(manifest);
    identified(manifest);
    true
}

/// Every index in a valid manifest is in range.
fn indexable(m: &Manifest) {
    let mut next = 0u64;
    for (i, layer) in m.layers.iter().enumerate() {
        let chunks = m.layer_chunks(layer);
        assert_eq!(chunks.len(), layer.chunk_count as usize);
        assert_eq!(u64::from(layer.first_chunk), next, "chunk runs are contiguous");
        next += u64::from(layer.chunk_count);
        let sum: u64 = chunks.iter().map(|c| u64::from(c.size)).sum();
        assert_eq!(sum, layer.size);
        assert_eq!(m.layer_index(&layer.diff_id), Some(i), "diffIDs are unique");
    }
    assert_eq!(next, m.chunks.len() as u64, "every chunk belongs to a layer");
    for image in &m.images {
        let chain = image.chain_ids(m);
        assert_eq!(chain.len(), image.layers.len());
        if let (Some(first), Some(&bottom)) = (chain.first(), image.layers.first()) {
            assert_eq!(*first, m.layers[bottom as usize].diff_id);
        }
        assert_eq!(sha256_digest(&image.config), image.id);
        let diff_ids = config_diff_ids(&image.config).expect("a valid image's config parses");
        let layer_ids: Vec<&str> = image
            .layers
            .iter()
            .map(|&l| m.layers[l as usize].diff_id.as_str())
            .collect();
        assert_eq!(diff_ids, layer_ids);
    }
    let _ = m.compressed_size();
}

/// The content ID is stable and the manifest crosses the wire intact.
fn identified(m: &Manifest) {
    let id = m.id();
    assert_eq!(id, m.clone().id());
    let encoded = postcard::to_allocvec(m).expect("a manifest encodes");
    let back: Manifest = postcard::from_bytes(&encoded).expect("an encoded manifest decodes");
    assert_eq!(&back, m);
    assert_eq!(back.id(), id);
    let msg = Message::Announce { manifest: m.clone() };
    let frame = wire::encode(&msg);
    if frame.len() - 4 <= MAX_ANNOUNCE_FRAME as usize {
        let read = crate::block_on(wire::read_frame(&mut &frame[..], MAX_ANNOUNCE_FRAME))
            .expect("an announce frame within the limit reads back");
        assert_eq!(read, msg);
    }
}

/// A manifest from `parse_save`: valid, and every chunk is in the store,
/// verifies, and each layer's chunks reassemble to bytes that hash to its
/// diffID. Returns the reassembled layers.
pub fn stored_save(m: &Manifest, store: &ChunkStore) -> Vec<Vec<u8>> {
    assert!(validated_manifest(m), "parse_save returned an invalid manifest");
    m.layers
        .iter()
        .map(|layer| {
            let mut data = Vec::new();
            let mut sha = Sha256::new();
            for chunk in m.layer_chunks(layer) {
                let raw = store
                    .read_verified(chunk)
                    .expect("a chunk parse_save named is stored and verifies");
                sha.update(&raw);
                data.extend_from_slice(&raw);
            }
            assert_eq!(format!("sha256:{}", hex::encode(sha.finalize())), layer.diff_id);
            data
        })
        .collect()
}

/// The manifest `parse_save` returned for a well-formed archive holds
/// exactly the images it was built from, with their layers' content.
pub fn matches_expected(m: &Manifest, layers: &[Vec<u8>], expected: &[ExpectedImage]) {
    assert_eq!(m.images.len(), expected.len());
    for (image, want) in m.images.iter().zip(expected) {
        assert_eq!(image.id, want.id);
        assert_eq!(image.refs, want.refs);
        assert_eq!(image.layers.len(), want.layers.len());
        for (&index, (diff_id, content)) in image.layers.iter().zip(&want.layers) {
            assert_eq!(&m.layers[index as usize].diff_id, diff_id);
            assert!(
                layers[index as usize] == *content,
                "layer {diff_id} reassembles to other bytes"
            );
        }
    }
}
