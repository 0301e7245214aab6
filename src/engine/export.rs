//! Export for `push`: the engine's `docker save` stream parsed into chunks
//! and a manifest as it arrives, without ever holding the archive.
//!
//! ```text
//!  Engine::export    (async Stream<Bytes>) ─► StreamReader ─► SyncIoBridge
//!                                            └─► parse_save (blocking thread)
//! ```

use std::io;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::docker::EngineError;
use super::node::Engine;
use super::save::{parse_save, SaveError};
use crate::content::manifest::Manifest;
use crate::content::pack::PackOptions;
use crate::content::store::ChunkStore;

/// Why images could not be exported from the engine into the store.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The engine failed to produce the archive (or stopped midway).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The archive could not be parsed or packed.
    #[error(transparent)]
    Save(#[from] SaveError),
    /// The parsing thread panicked or was cancelled.
    #[error("the export parser stopped: {0}")]
    Worker(String),
}

/// Exports `refs` from `engine` and packs them into `store`, returning the
/// validated manifest. Memory use is one chunk plus the small JSON files,
/// whatever the image size.
pub async fn export_to_manifest(
    engine: &Engine,
    refs: &[String],
    store: &ChunkStore,
    opts: &PackOptions,
) -> Result<Manifest, ExportError> {
    // The engine's own error, kept aside: through `Read` it is only an io::Error.
    let engine_error: Arc<Mutex<Option<EngineError>>> = Arc::default();
    let slot = engine_error.clone();
    let stream = Box::pin(engine.export(refs).map_err(move |e| {
        let message = e.to_string();
        slot.lock().expect("export error slot").get_or_insert(e);
        io::Error::other(message)
    }));
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let (store, opts) = (store.clone(), *opts);
    let parsed = tokio::task::spawn_blocking(move || parse_save(reader, &store, &opts))
        .await
        .map_err(|e| ExportError::Worker(e.to_string()))?;
    let failed = engine_error.lock().expect("export error slot").take();
    match (parsed, failed) {
        (Ok(manifest), _) => Ok(manifest),
        (Err(_), Some(engine_error)) => Err(ExportError::Engine(engine_error)),
        (Err(save_error), None) => Err(ExportError::Save(save_error)),
    }
}
