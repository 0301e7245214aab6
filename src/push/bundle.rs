//! `bundle create`: export images (from an engine or a `docker save`
//! archive) into a scratch store, then write them as one bundle file (its
//! format is [`crate::content::bundle`]'s).

use std::fs::{self, File};
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};

use crate::content::bundle::{write_bundle, BundleError};
use crate::content::manifest::Manifest;
use crate::content::pack::PackOptions;
use crate::content::store::{ChunkStore, StoreError};

/// A bundle just written.
#[derive(Debug)]
pub struct Made {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Why a bundle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Exporting from the engine failed.
    #[error(transparent)]
    Export(#[from] super::PushError),
    /// The `docker save` archive could not be read or parsed.
    #[error("{path}: {detail}")]
    Tar { path: PathBuf, detail: String },
    /// Writing the bundle failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The scratch store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A scratch chunk store in a temporary directory, removed when dropped.
struct Scratch {
    dir: PathBuf,
    store: ChunkStore,
}

impl Scratch {
    fn new(near: &Path) -> Result<Scratch, CreateError> {
        let parent = near
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = parent.join(format!(".p2pimg-bundle-{}", std::process::id()));
        let store = ChunkStore::open(&dir)?;
        Ok(Scratch { dir, store })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Exports `images` from the engine at `docker_host` into a bundle at `out`.
pub async fn create_from_engine(
    docker_host: &str,
    images: &[String],
    pack: &PackOptions,
    out: &Path,
) -> Result<Made, CreateError> {
    let scratch = Scratch::new(out)?;
    let manifest = super::export(docker_host, images, pack, &scratch.store).await?;
    finish(manifest, scratch, out.to_path_buf()).await
}

/// Packs an existing `docker save` archive (either layout) into a bundle.
pub async fn create_from_tar(tar: &Path, pack: &PackOptions, out: &Path) -> Result<Made, CreateError> {
    let scratch = Scratch::new(out)?;
    let (tar, pack, store) = (tar.to_path_buf(), *pack, scratch.store.clone());
    let manifest = tokio::task::spawn_blocking(move || {
        let err = |detail: String| CreateError::Tar {
            path: tar.clone(),
            detail,
        };
        let mut file = File::open(&tar).map_err(|e| err(e.to_string()))?;
        // References are checked before any layer is packed, where the file can be read twice.
        if file.metadata().is_ok_and(|m| m.is_file()) {
            crate::engine::check_repo_tags(&mut file).map_err(|e| err(e.to_string()))?;
            file.rewind().map_err(|e| err(e.to_string()))?;
        }
        crate::engine::parse_save(BufReader::new(file), &store, &pack).map_err(|e| err(e.to_string()))
    })
    .await
    .expect("bundle task does not panic")?;
    finish(manifest, scratch, out.to_path_buf()).await
}

async fn finish(manifest: Manifest, scratch: Scratch, out: PathBuf) -> Result<Made, CreateError> {
    tokio::task::spawn_blocking(move || {
        let bytes = write_bundle(&manifest, &scratch.store, &out)?;
        Ok(Made { manifest, bytes })
    })
    .await
    .expect("bundle task does not panic")
}
