//! Bundle files: a manifest and all its chunks in one self-verifying file,
//! for seeding where no Docker Engine (or no network to one) exists.
//!
//! Layout (all integers big-endian):
//! ```text
//! magic     8 bytes   "P2PIMGB\x01"
//! length    u64       length of the manifest encoding
//! manifest  length    postcard encoding of the Manifest (as on the wire)
//! chunks              each chunk's zstd bytes, in manifest order, back to back
//! ```
//! Chunk offsets follow from the manifest's `zsize`s, so the file's length
//! is known exactly and a truncated file is caught when opened. Every
//! chunk carries its BLAKE3 hash in the manifest: `verify` and `import`
//! decompress and check each one. The manifest ID printed by `bundle ls`
//! names the content; compare it with the one printed at creation.

use std::fs::{self, File, Metadata};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::content::chunk::{check_chunk, ChunkError};
use crate::content::manifest::{Manifest, ManifestError, MAX_ENCODED_LEN};
use crate::content::store::{ChunkStore, StoreError};

/// First bytes of every bundle; the last byte is the format version: 2
/// since chunks are addressed by the hash of their compressed bytes (format
/// 1 hashed their content).
const MAGIC: &[u8; 8] = b"P2PIMGB\x02";

/// Why a bundle could not be written, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file could not be created, read or written.
    #[error("bundle {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The path names a directory, a pipe, a device: a bundle is read in
    /// place (its length checked, its chunks found by offset).
    #[error("{path} is {kind}, not a bundle file: {}", not_a_file_hint(kind))]
    NotAFile { path: PathBuf, kind: &'static str },
    /// The file does not start like a bundle.
    #[error("{path} is not a p2pimg bundle (made by `p2pimg bundle create`)")]
    NotABundle { path: PathBuf },
    /// A bundle of another format than this version's.
    #[error("bundle {path} was made by another version of p2pimg (bundle format {version}; this one reads format {}): make it again with this version's `p2pimg bundle create`, or push it with the version that made it", MAGIC[7])]
    OtherFormat { path: PathBuf, version: u8 },
    /// The manifest inside does not decode or fails validation.
    #[error("bundle {path} has an invalid manifest: {detail}")]
    BadManifest { path: PathBuf, detail: String },
    /// The file is shorter or longer than its manifest says.
    #[error("bundle {path} is {actual} bytes but its manifest needs {expected}: the file is truncated or damaged (copy it again)")]
    WrongLength {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// A chunk does not match its hash.
    #[error("bundle {path}: chunk {index} is damaged ({cause}): copy the bundle again")]
    Damaged {
        path: PathBuf,
        index: usize,
        cause: ChunkError,
    },
    /// A chunk could not be stored while importing.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn not_a_file_hint(kind: &str) -> &'static str {
    if kind == "a pipe" {
        "a bundle is read in place, not as a stream; save it to a file first"
    } else {
        "give the path of the file `p2pimg bundle create` wrote"
    }
}

/// Writes `manifest` and its chunks from `store` into `file` (named `path`
/// in errors) and syncs it; returns the bytes written. The caller names the
/// file: `bundle create` writes a temporary one and renames it into place,
/// so a failed write leaves no bundle.
pub fn write_bundle(
    manifest: &Manifest,
    store: &ChunkStore,
    file: File,
    path: &Path,
) -> Result<u64, BundleError> {
    let io_err = |source| BundleError::Io {
        path: path.into(),
        source,
    };
    let mut out = BufWriter::new(file);
    let encoded = postcard::to_allocvec(manifest).expect("manifests encode");
    out.write_all(MAGIC).map_err(io_err)?;
    out.write_all(&(encoded.len() as u64).to_be_bytes())
        .map_err(io_err)?;
    out.write_all(&encoded).map_err(io_err)?;
    for chunk in &manifest.chunks {
        let data = store.read(&chunk.hash)?;
        out.write_all(&data).map_err(io_err)?;
    }
    let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(16 + encoded.len() as u64 + manifest.compressed_size())
}

/// What a path that is not a regular file is, for messages ("a directory").
pub fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a pipe"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading without ever blocking in `open` (a FIFO with no
/// writer would block there forever), then makes reads blocking again. The
/// caller checks what it opened with `file.metadata()`.
pub fn open_nonblocking(path: &Path) -> io::Result<File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor `file` owns; no memory is shared.
    let cleared = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Opens the bundle at `path`, refusing (without blocking) anything but a
/// regular file.
fn open_file(path: &Path) -> Result<File, BundleError> {
    let io_err = |source| BundleError::Io {
        path: path.into(),
        source,
    };
    // Checked before opening too: opening a device may do something.
    let meta = fs::metadata(path).map_err(io_err)?;
    let not_a_file = |meta: &Metadata| BundleError::NotAFile {
        path: path.into(),
        kind: kind_of(meta),
    };
    if !meta.is_file() {
        return Err(not_a_file(&meta));
    }
    let file = open_nonblocking(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(not_a_file(&meta));
    }
    Ok(file)
}

/// An opened bundle: its manifest read and validated, its length checked.
#[derive(Debug)]
pub struct Bundle {
    path: PathBuf,
    manifest: Manifest,
    data_offset: u64,
}

impl Bundle {
    /// Opens `path`, decodes and validates the manifest, and checks the
    /// file has exactly the bytes the manifest accounts for.
    pub fn open(path: &Path) -> Result<Bundle, BundleError> {
        let io_err = |source| BundleError::Io {
            path: path.into(),
            source,
        };
        let mut file = open_file(path)?;
        let mut head = [0u8; 16];
        if file.read_exact(&mut head).is_err() || head[..7] != MAGIC[..7] {
            return Err(BundleError::NotABundle { path: path.into() });
        }
        if head[7] != MAGIC[7] {
            let version = head[7];
            return Err(BundleError::OtherFormat {
                path: path.into(),
                version,
            });
        }
        let len = u64::from_be_bytes(head[8..].try_into().expect("8 bytes"));
        let bad = |detail: String| BundleError::BadManifest {
            path: path.into(),
            detail,
        };
        if len > u64::from(MAX_ENCODED_LEN) {
            return Err(bad(format!(
                "{len} bytes, more than the limit of {MAX_ENCODED_LEN}"
            )));
        }
        let mut encoded = vec![0u8; len as usize];
        file.read_exact(&mut encoded)
            .map_err(|_| bad("truncated".into()))?;
        let manifest: Manifest = postcard::from_bytes(&encoded).map_err(|e| bad(e.to_string()))?;
        manifest
            .validate()
            .map_err(|e: ManifestError| bad(e.to_string()))?;
        let data_offset = 16 + len;
        let expected = data_offset + manifest.compressed_size();
        let actual = file.metadata().map_err(io_err)?.len();
        if actual != expected {
            return Err(BundleError::WrongLength {
                path: path.into(),
                expected,
                actual,
            });
        }
        Ok(Bundle {
            path: path.into(),
            manifest,
            data_offset,
        })
    }

    /// The bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Reads every chunk, checks it, and hands it to `each` with its index;
    /// stops at the first damaged chunk.
    fn for_each_chunk(
        &self,
        mut each: impl FnMut(usize, &[u8]) -> Result<(), BundleError>,
    ) -> Result<(), BundleError> {
        let io_err = |source| BundleError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = BufReader::new(open_file(&self.path)?);
        file.seek(SeekFrom::Start(self.data_offset)).map_err(io_err)?;
        let mut buf = Vec::new();
        for (index, entry) in self.manifest.chunks.iter().enumerate() {
            buf.resize(entry.zsize as usize, 0);
            file.read_exact(&mut buf).map_err(io_err)?;
            check_chunk(entry, &buf).map_err(|cause| BundleError::Damaged {
                path: self.path.clone(),
                index,
                cause,
            })?;
            each(index, &buf)?;
        }
        Ok(())
    }

    /// Checks every chunk against its hash; `progress` gets (done, total).
    pub fn verify(&self, mut progress: impl FnMut(usize, usize)) -> Result<(), BundleError> {
        let total = self.manifest.chunks.len();
        self.for_each_chunk(|i, _| {
            progress(i + 1, total);
            Ok(())
        })
    }

    /// Checks every chunk and stores it in `store`.
    pub fn import(&self, store: &ChunkStore) -> Result<(), BundleError> {
        self.for_each_chunk(|i, data| Ok(store.put(&self.manifest.chunks[i].hash, data)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::pack::{pack_layer, PackOptions};

    fn write_to(manifest: &Manifest, store: &ChunkStore, path: &Path) -> u64 {
        write_bundle(manifest, store, File::create(path).unwrap(), path).unwrap()
    }

    /// A store holding the chunks of `manifest::tests::sample()`-like data
    /// built for real, and the manifest.
    fn packed(dir: &Path) -> (Manifest, ChunkStore) {
        let store = ChunkStore::open(&dir.join("store")).unwrap();
        let opts = PackOptions {
            chunk_size: 4096,
            zstd_level: 1,
        };
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let layer = pack_layer(&data[..], &store, &opts).unwrap();
        let config =
            serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}).to_string();
        let manifest = Manifest {
            images: vec![crate::content::manifest::ImageEntry {
                id: crate::content::manifest::sha256_digest(config.as_bytes()),
                refs: vec!["app:1".into()],
                config: config.into_bytes(),
                layers: vec![0],
            }],
            layers: vec![crate::content::manifest::LayerEntry {
                diff_id: layer.diff_id,
                size: layer.size,
                first_chunk: 0,
                chunk_count: layer.chunks.len() as u32,
            }],
            chunks: layer.chunks,
        };
        manifest.validate().unwrap();
        (manifest, store)
    }

    #[test]
    fn round_trip_verify_and_import() {
        let dir = tempfile::tempdir().unwrap();
        let (manifest, store) = packed(dir.path());
        let path = dir.path().join("b.p2pimg");
        let len = write_to(&manifest, &store, &path);
        assert_eq!(fs::metadata(&path).unwrap().len(), len);
        let bundle = Bundle::open(&path).unwrap();
        assert_eq!(bundle.manifest(), &manifest);
        let mut seen = 0;
        bundle
            .verify(|done, total| seen = done.max(seen).min(total))
            .unwrap();
        assert_eq!(seen, manifest.chunks.len());
        let other = ChunkStore::open(&dir.path().join("other")).unwrap();
        bundle.import(&other).unwrap();
        assert!(manifest.chunks.iter().all(|c| other.verify(c)));
    }

    #[test]
    fn damaged_chunk_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (manifest, store) = packed(dir.path());
        let path = dir.path().join("b.p2pimg");
        write_to(&manifest, &store, &path);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        let err = Bundle::open(&path).unwrap().verify(|_, _| {}).unwrap_err();
        assert!(
            matches!(err, BundleError::Damaged { index, .. } if index == manifest.chunks.len() - 1),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (manifest, store) = packed(dir.path());
        let path = dir.path().join("b.p2pimg");
        write_to(&manifest, &store, &path);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(matches!(
            Bundle::open(&path),
            Err(BundleError::WrongLength { .. })
        ));
        fs::write(&path, b"not a bundle at all").unwrap();
        assert!(matches!(Bundle::open(&path), Err(BundleError::NotABundle { .. })));
        let mut format_1 = bytes.clone();
        format_1[7] = 1;
        fs::write(&path, format_1).unwrap();
        let old = Bundle::open(&path).unwrap_err();
        assert!(
            matches!(old, BundleError::OtherFormat { version: 1, .. }),
            "{old}"
        );
        assert!(old.to_string().contains("bundle create"), "{old}");
        let mut huge = MAGIC.to_vec();
        huge.extend(u64::MAX.to_be_bytes());
        fs::write(&path, huge).unwrap();
        assert!(matches!(
            Bundle::open(&path),
            Err(BundleError::BadManifest { .. })
        ));
    }

    #[test]
    fn directories_and_pipes_are_named_not_called_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let err = Bundle::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                BundleError::NotAFile {
                    kind: "a directory",
                    ..
                }
            ),
            "{err}"
        );
        // A FIFO with no writer: refused at once, where opening it would block.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = Bundle::open(&fifo).unwrap_err();
        assert!(
            matches!(err, BundleError::NotAFile { kind: "a pipe", .. }),
            "{err}"
        );
        let err = Bundle::open(Path::new("/dev/null")).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a character device, not a bundle file"),
            "{err}"
        );
    }
}
