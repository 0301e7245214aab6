//! One chunk's encoding: content → zstd bytes and its manifest entry, the
//! check of received or stored bytes against that entry, and the reverse
//! that turns them back into content.
//!
//! A chunk is addressed by the BLAKE3 of its compressed bytes, the bytes
//! that cross the network and sit on disk. So a node passing a chunk on
//! checks it with [`check_chunk`] (a hash of what it received, no
//! decompression), and only the load decompresses it, once, with
//! [`decode_chunk`], which checks the hash again (disk damage) and the
//! content length. Nothing is "have" until [`check_chunk`] passed. Issue
//! #20 measured the two schemes (`examples/chunk_cost.rs`): decompressing
//! and hashing the content cost 3.7 CPU-seconds per GB moved, hashing the
//! compressed bytes 0.36, and each node did the first twice (on arrival and
//! at the load).

use std::cell::RefCell;

use crate::content::hash::Hash;
use crate::content::manifest::{ChunkEntry, MAX_CHUNK_SIZE};

/// Why received or stored bytes are not the chunk they claim to be.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    /// The compressed length differs from the manifest's.
    #[error("compressed length {actual}, expected {expected}")]
    CompressedLength { expected: u32, actual: usize },
    /// The bytes are not a zstd frame of the announced size.
    #[error("does not decompress: {0}")]
    Decompress(String),
    /// The compressed bytes hash to something else.
    #[error("hash mismatch")]
    HashMismatch,
    /// The content is not as long as the manifest says.
    #[error("decompressed to {actual} bytes, expected {expected}")]
    ContentLength { expected: u32, actual: usize },
}

thread_local! {
    /// This thread's compression context and its level. Making a context
    /// costs about as much as compressing a few KiB, and a push compresses
    /// hundreds of chunks per thread: one context each, kept.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    /// This thread's decompression context (2% of an agent's CPU went to
    /// making one per chunk).
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses one chunk's content; returns its entry and the compressed bytes.
pub fn encode_chunk(raw: &[u8], level: i32) -> (ChunkEntry, Vec<u8>) {
    let z = COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let fresh = zstd::bulk::Compressor::new(level).expect("zstd context");
            *slot = Some((level, fresh));
        }
        let (_, compressor) = slot.as_mut().expect("set above");
        compressor.compress(raw).expect("zstd compresses in memory")
    });
    let entry = ChunkEntry {
        hash: Hash::of(&z),
        size: raw.len() as u32,
        zsize: z.len() as u32,
    };
    (entry, z)
}

/// Checks received or stored bytes against `entry`: their length and their
/// hash. What a relay needs before it passes a chunk on.
pub fn check_chunk(entry: &ChunkEntry, zdata: &[u8]) -> Result<(), ChunkError> {
    if zdata.len() != entry.zsize as usize {
        return Err(ChunkError::CompressedLength {
            expected: entry.zsize,
            actual: zdata.len(),
        });
    }
    if Hash::of(zdata) != entry.hash {
        return Err(ChunkError::HashMismatch);
    }
    Ok(())
}

/// Checks bytes against `entry` and decompresses them, never allocating
/// more than the entry's (validated) size.
pub fn decode_chunk(entry: &ChunkEntry, zdata: &[u8]) -> Result<Vec<u8>, ChunkError> {
    check_chunk(entry, zdata)?;
    let cap = entry.size.min(MAX_CHUNK_SIZE) as usize;
    let raw = DECOMPRESSOR
        .with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new()?);
            }
            slot.as_mut().expect("set above").decompress(zdata, cap)
        })
        .map_err(|e| ChunkError::Decompress(e.to_string()))?;
    if raw.len() != entry.size as usize {
        return Err(ChunkError::ContentLength {
            expected: entry.size,
            actual: raw.len(),
        });
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_round_trip_and_tamper() {
        let (entry, z) = encode_chunk(b"some layer bytes", 3);
        assert_eq!(decode_chunk(&entry, &z).unwrap(), b"some layer bytes");
        let mut lying = entry;
        lying.hash = Hash::of(b"other");
        assert_eq!(decode_chunk(&lying, &z), Err(ChunkError::HashMismatch));
        assert_eq!(check_chunk(&lying, &z), Err(ChunkError::HashMismatch));
        assert_eq!(check_chunk(&entry, &z), Ok(()));
        let mut flipped = z.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(check_chunk(&entry, &flipped), Err(ChunkError::HashMismatch));
        assert!(matches!(
            decode_chunk(&entry, &z[1..]),
            Err(ChunkError::CompressedLength { .. })
        ));
    }

    #[test]
    fn reused_contexts_follow_the_level_and_survive_bad_input() {
        let raw: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
        let (fast, z_fast) = encode_chunk(&raw, 1);
        let (small, z_small) = encode_chunk(&raw, 19);
        assert_eq!(fast.size, small.size);
        assert_ne!(fast.hash, small.hash, "the hash covers the compressed bytes");
        assert_ne!(
            z_fast, z_small,
            "the level changes with the argument, not the first call's"
        );
        // Garbage, then a good frame, on the same thread's context.
        let garbage = vec![0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff];
        let lying = ChunkEntry {
            hash: Hash::of(&garbage),
            zsize: garbage.len() as u32,
            ..fast
        };
        assert!(matches!(
            decode_chunk(&lying, &garbage),
            Err(ChunkError::Decompress(_))
        ));
        assert_eq!(decode_chunk(&fast, &z_fast).unwrap(), raw);
        assert_eq!(decode_chunk(&small, &z_small).unwrap(), raw);
    }

    #[test]
    fn decode_refuses_more_than_announced() {
        // A zstd bomb claiming to be a small chunk is refused without inflating.
        let (mut entry, z) = encode_chunk(&vec![0u8; 1 << 20], 3);
        entry.size = 10;
        assert!(matches!(decode_chunk(&entry, &z), Err(ChunkError::Decompress(_))));
    }

    #[test]
    fn decode_refuses_less_than_announced() {
        let (mut entry, z) = encode_chunk(b"short", 3);
        entry.size = 6;
        assert_eq!(
            decode_chunk(&entry, &z),
            Err(ChunkError::ContentLength {
                expected: 6,
                actual: 5
            })
        );
    }
}
