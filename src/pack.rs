//! Packing: a layer's uncompressed tar → fixed-size chunks, each addressed
//! by BLAKE3 of its content and zstd-compressed; and the reverse check that
//! turns received bytes back into verified content.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::hash::Hash;
use crate::manifest::{ChunkEntry, MAX_CHUNK_SIZE};
use crate::store::{ChunkStore, StoreError};

/// Default chunk size: 1 MiB gives a 200 MB image 200 chunks, enough for
/// rarest-first to spread load over 16 peers, while per-chunk overhead
/// (a stream, a request, a HAVE) stays well under 0.1% of the bytes.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Default zstd level: level 3 compresses at several hundred MB/s per core,
/// faster than the links it feeds; higher levels cost the seed's CPU.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// How layers are cut and compressed.
#[derive(Clone, Copy, Debug)]
pub struct PackOptions {
    /// Uncompressed bytes per chunk (the last chunk of a layer may be shorter).
    pub chunk_size: u32,
    /// zstd compression level.
    pub zstd_level: i32,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// A layer cut into stored chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedLayer {
    /// `sha256:<hex>` of the uncompressed tar: the layer's diffID.
    pub diff_id: String,
    /// Uncompressed size.
    pub size: u64,
    /// Chunks in order.
    pub chunks: Vec<ChunkEntry>,
}

/// Why a layer could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading the layer failed.
    #[error("reading layer: {0}")]
    Read(#[from] io::Error),
    /// Storing a chunk failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why received or stored bytes are not the chunk they claim to be.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    /// The compressed length differs from the manifest's.
    #[error("compressed length {actual}, expected {expected}")]
    CompressedLength { expected: u32, actual: usize },
    /// The bytes are not a zstd frame of the announced size.
    #[error("does not decompress: {0}")]
    Decompress(String),
    /// The content hashes to something else.
    #[error("content hash mismatch")]
    HashMismatch,
}

/// Compresses one chunk's content; returns its entry and the compressed bytes.
pub fn encode_chunk(raw: &[u8], level: i32) -> (ChunkEntry, Vec<u8>) {
    let z = zstd::bulk::compress(raw, level).expect("zstd compresses in memory");
    let entry = ChunkEntry {
        hash: Hash::of(raw),
        size: raw.len() as u32,
        zsize: z.len() as u32,
    };
    (entry, z)
}

/// Decompresses and verifies bytes against `entry`, never allocating more
/// than the entry's (validated) size.
pub fn decode_chunk(entry: &ChunkEntry, zdata: &[u8]) -> Result<Vec<u8>, ChunkError> {
    if zdata.len() != entry.zsize as usize {
        return Err(ChunkError::CompressedLength {
            expected: entry.zsize,
            actual: zdata.len(),
        });
    }
    let cap = entry.size.min(MAX_CHUNK_SIZE) as usize;
    let raw = zstd::bulk::decompress(zdata, cap).map_err(|e| ChunkError::Decompress(e.to_string()))?;
    if raw.len() != entry.size as usize || Hash::of(&raw) != entry.hash {
        return Err(ChunkError::HashMismatch);
    }
    Ok(raw)
}

/// Cuts an uncompressed layer stream into chunks, stores each, and computes
/// the diffID on the way. Memory use is one chunk, whatever the layer size.
pub fn pack_layer(
    mut reader: impl Read,
    store: &ChunkStore,
    opts: &PackOptions,
) -> Result<PackedLayer, PackError> {
    let mut sha = Sha256::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; opts.chunk_size as usize];
    loop {
        let n = read_full(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        let raw = &buf[..n];
        sha.update(raw);
        size += n as u64;
        let (entry, z) = encode_chunk(raw, opts.zstd_level);
        store.put(&entry.hash, &z)?;
        chunks.push(entry);
    }
    let diff_id = format!("sha256:{}", hex::encode(sha.finalize()));
    Ok(PackedLayer {
        diff_id,
        size,
        chunks,
    })
}

/// Reads until `buf` is full or the stream ends; returns bytes read.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
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
        assert!(matches!(
            decode_chunk(&entry, &z[1..]),
            Err(ChunkError::CompressedLength { .. })
        ));
    }

    #[test]
    fn decode_refuses_more_than_announced() {
        // A zstd bomb claiming to be a small chunk is refused without inflating.
        let (mut entry, z) = encode_chunk(&vec![0u8; 1 << 20], 3);
        entry.size = 10;
        assert!(matches!(decode_chunk(&entry, &z), Err(ChunkError::Decompress(_))));
    }

    #[test]
    fn pack_layer_cuts_aligned_chunks_and_hashes_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let opts = PackOptions {
            chunk_size: 4096,
            zstd_level: 1,
        };
        let packed = pack_layer(&data[..], &store, &opts).unwrap();
        assert_eq!(packed.size, 10_000);
        assert_eq!(packed.diff_id, crate::manifest::sha256_digest(&data));
        let sizes: Vec<u32> = packed.chunks.iter().map(|c| c.size).collect();
        assert_eq!(sizes, [4096, 4096, 1808]);
        let back: Vec<u8> = packed
            .chunks
            .iter()
            .flat_map(|c| store.read_verified(c).unwrap())
            .collect();
        assert_eq!(back, data);
    }
}
