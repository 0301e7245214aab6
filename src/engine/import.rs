//! Loading images into containerd from verified chunks: each missing layer
//! streamed into the content store as its chunks arrive (blob = the
//! uncompressed layer tar, digest = its diffID), then per image the config,
//! an OCI manifest, the unpack into the snapshotter and the names.
//!
//! ```text
//!  chunks (waited for in Arrivals) ─► Content.Write (one blob per layer)
//!  config + layers ─► Containerd::import_image ─► manifest, unpack, names
//! ```
//!
//! Nothing partial is named: a layer whose chunks do not all arrive is never
//! committed (containerd checks the size and digest of every blob), and an
//! image is named only once all of it is unpacked.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::containerd::{Containerd, ContainerdError, Descriptor, LayerBlob};
use super::docker::EngineError;
use super::load::{LoadError, LoadRequest, LoadTarError};
use super::node::{Heard, Naming};
use crate::content::arrivals::{Arrivals, WaitError};
use crate::content::manifest::{ImageEntry, Manifest};
use crate::content::oci;
use crate::content::store::ChunkStore;

/// How long an import's lease keeps its blobs from containerd's garbage
/// collector if the agent dies before releasing it: longer than any load.
const LEASE: Duration = Duration::from_secs(6 * 3600);

/// One load into one containerd namespace.
pub(super) struct Import<'a> {
    pub(super) containerd: &'a Containerd,
    pub(super) heard: &'a Heard,
    pub(super) naming: Naming,
}

impl Import<'_> {
    /// Writes `layers`, then imports `images`, then checks each is there.
    pub(super) async fn run(&self, request: LoadRequest) -> Result<(), LoadError> {
        // Blobs written before the manifest that names them would be garbage
        // to containerd's collector: hold them under a lease until named.
        let leased = self.containerd.leased(LEASE).await.map_err(engine_error)?;
        let import = Import {
            containerd: &leased,
            heard: self.heard,
            naming: self.naming,
        };
        let result = import.run_leased(request).await;
        if let Err(e) = leased.release().await {
            tracing::debug!("cannot release the import's lease (it expires by itself): {e}");
        }
        result
    }

    async fn run_leased(&self, request: LoadRequest) -> Result<(), LoadError> {
        let LoadRequest {
            manifest,
            images,
            layers,
            store,
            arrivals,
        } = request;
        self.heard.now();
        let arrivals = arrivals.unwrap_or_else(|| Arc::new(Arrivals::all(manifest.chunks.len())));
        let cancel = CancellationToken::new();
        let _cancel_on_exit = cancel.clone().drop_guard();
        for &l in &layers {
            let source = LayerSource {
                manifest: manifest.clone(),
                layer: l,
                store: store.clone(),
                arrivals: arrivals.clone(),
                cancel: cancel.clone(),
                failed: FailureSlot::default(),
            };
            self.write_layer(source).await?;
        }
        for &i in &images {
            self.import(&manifest, &manifest.images[i]).await?;
        }
        Ok(())
    }

    /// Streams one layer into the content store.
    async fn write_layer(&self, source: LayerSource) -> Result<(), LoadError> {
        let layer = &source.manifest.layers[source.layer];
        let blob = layer_blob(&layer.diff_id, layer.size);
        let failure = source.failed.clone();
        let heard = self.heard.clone();
        let body = source.stream().inspect(move |_| heard.now());
        let written = self.containerd.write_blob(&blob, Default::default(), body).await;
        self.heard.now();
        if let Some(failure) = failure.lock().expect("failure slot").take() {
            return Err(LoadError::Tar(failure));
        }
        written.map_err(engine_error)
    }

    /// Imports one image whose layer blobs are all in the store, names it,
    /// and checks the first name resolves to it.
    async fn import(&self, manifest: &Manifest, image: &ImageEntry) -> Result<(), LoadError> {
        let layers: Vec<LayerBlob> = image
            .layers
            .iter()
            .map(|&l| {
                let layer = &manifest.layers[l as usize];
                LayerBlob {
                    blob: layer_blob(&layer.diff_id, layer.size),
                    diff_id: layer.diff_id.clone(),
                }
            })
            .collect();
        let ctd = self.containerd;
        let engine = engine_error;
        let names = self.naming.names(&image.refs, &image.id, &placeholder());
        let named = match self.naming {
            // The dangling name needs the manifest digest: named after.
            Naming::Docker if image.refs.is_empty() => Vec::new(),
            _ => names,
        };
        let target = ctd
            .import_image(&named, image.config.clone(), &layers)
            .await
            .map_err(engine)?;
        self.heard.now();
        let names = self.naming.names(&image.refs, &image.id, &target);
        for name in names.iter().filter(|n| !named.contains(n)) {
            ctd.set_image(name, &target).await.map_err(engine)?;
        }
        let record = ctd.image(&names[0]).await.map_err(engine)?;
        match record {
            Some(r) if r.config_digest == image.id => Ok(()),
            _ => Err(LoadError::NotLoaded {
                host: ctd.host().to_string(),
                id: image.id.clone(),
            }),
        }
    }
}

fn engine_error(e: ContainerdError) -> LoadError {
    LoadError::Engine(EngineError::from(e))
}

fn placeholder() -> Descriptor {
    Descriptor {
        media_type: String::new(),
        digest: String::new(),
        size: 0,
    }
}

/// The content-store descriptor of a layer as p2pimg carries it.
pub(super) fn layer_blob(diff_id: &str, size: u64) -> Descriptor {
    Descriptor {
        media_type: oci::LAYER_TAR_TYPE.to_string(),
        digest: diff_id.to_string(),
        size: size as i64,
    }
}

/// One layer's bytes, read from verified chunks as they arrive.
struct LayerSource {
    manifest: Arc<Manifest>,
    layer: usize,
    store: ChunkStore,
    arrivals: Arc<Arrivals>,
    cancel: CancellationToken,
    /// The first failure to read a chunk, as the caller reports it.
    failed: FailureSlot,
}

/// Where a reading failure is kept for the caller: through the stream it is
/// only an `io::Error`.
type FailureSlot = Arc<Mutex<Option<LoadTarError>>>;

impl LayerSource {
    /// The layer's chunks in order, each waited for and read verified on a
    /// blocking thread.
    fn stream(self) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        let layer = &self.manifest.layers[self.layer];
        let first = layer.first_chunk as usize;
        let range = first..first + layer.chunk_count as usize;
        let source = Arc::new(self);
        futures::stream::iter(range).then(move |i| {
            let source = source.clone();
            async move {
                let read = tokio::task::spawn_blocking(move || source.read(i)).await;
                read.unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
            }
        })
    }

    fn read(&self, i: usize) -> Result<Bytes, io::Error> {
        self.read_chunk(i).map_err(|failure| {
            let message = failure.to_string();
            self.failed.lock().expect("failure slot").get_or_insert(failure);
            io::Error::other(message)
        })
    }

    fn read_chunk(&self, i: usize) -> Result<Bytes, LoadTarError> {
        let diff_id = self.manifest.layers[self.layer].diff_id.clone();
        let cancelled = || self.cancel.is_cancelled();
        match self.arrivals.wait(i as u32, &cancelled) {
            Ok(()) => {}
            Err(WaitError::Closed(reason)) => return Err(LoadTarError::Fetch { diff_id, reason }),
            Err(WaitError::Cancelled) => {
                let cancelled = io::Error::new(io::ErrorKind::BrokenPipe, "the load was cancelled");
                return Err(LoadTarError::Write(cancelled));
            }
        }
        let raw = self.store.read_verified(&self.manifest.chunks[i]);
        raw.map(Bytes::from)
            .map_err(|source| LoadTarError::Chunk { diff_id, source })
    }
}
