//! Loading images into a node's engine: the minimal `docker load` archive
//! built from verified chunks, streamed into `POST /images/load`, then
//! checked and tagged.
//!
//! ```text
//!  blocking thread                         async task (load_images)
//!  write_load_tar ─► FrameWriter ─► mpsc (bounded, LOAD_QUEUE_FRAMES × 1 MiB)
//!                                     └─► body stream ─► DockerApi::load ─► dockerd
//! ```
//!
//! The archive is the legacy layout dockerd 20.10 reads: `manifest.json`,
//! one `<image-id-hex>.json` config per image, and `<diffid-hex>/layer.tar`
//! only for the layers the engine lacks; the loader skips opening a layer
//! whose chain ID it already holds. Names come only from validated digests.
//!
//! The load can start while the node still fetches: the writer waits for
//! each chunk in [`Arrivals`] before reading it, so dockerd unpacks the
//! archive as the chunks come in (in the image's order, which is how the
//! seed hands them out) and only its own import is left once the last one
//! is in.
//!
//! Nothing partial is loaded: if the archive cannot be completed (a damaged
//! chunk, fetching failed), the body never ends cleanly; the upload is cut
//! mid-stream, dockerd fails its untar before reading `manifest.json`, and
//! nothing is tagged.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::docker::{split_reference, DockerApi, EngineError};
use crate::content::arrivals::{Arrivals, WaitError};
use crate::content::manifest::{digest_hex, ChunkEntry, Manifest, ManifestError};
use crate::content::store::{ChunkStore, StoreError};

/// Bytes per frame sent to the engine: dockerd reads the body in 32 KiB
/// reads, but each frame costs a channel hop and an HTTP chunk header, so
/// 1 MiB frames keep that overhead negligible.
pub const LOAD_FRAME_SIZE: usize = 1 << 20;
/// Frames queued between the archive writer and the upload: enough to keep
/// the socket busy while the next chunk is read and verified, and the bound
/// (4 MiB) on what a load holds in memory.
const LOAD_QUEUE_FRAMES: usize = 4;
/// Permissions of files in the archive; dockerd ignores them.
const FILE_MODE: u32 = 0o644;

/// Why the load archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LoadTarError {
    /// The manifest does not validate, so its digests cannot name files.
    #[error("refusing to build a load archive from an invalid manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// An image or layer index is outside the manifest.
    #[error("{what} index {index} is not in the manifest")]
    OutOfRange { what: &'static str, index: usize },
    /// A chunk of a layer is missing or damaged in the store.
    #[error("layer {diff_id}: {source}")]
    Chunk { diff_id: String, source: StoreError },
    /// The node stopped fetching before a chunk of a layer arrived.
    #[error("layer {diff_id}: {reason}")]
    Fetch { diff_id: String, reason: String },
    /// Writing the archive failed (the engine stopped reading it).
    #[error("writing the load archive: {0}")]
    Write(#[from] io::Error),
}

/// Why images could not be loaded into the engine.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The archive could not be built; the upload was aborted, nothing loaded.
    #[error("{0}; the load was aborted and nothing was tagged")]
    Tar(LoadTarError),
    /// The engine refused the archive or a follow-up call failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine reported success but does not hold an image it should.
    #[error(
        "the Docker Engine at {host} accepted the archive but has no image {id} \
         (check dockerd's log for the load)"
    )]
    NotLoaded { host: String, id: String },
    /// The archive writer thread panicked or was cancelled.
    #[error("the load archive writer stopped: {0}")]
    Writer(String),
}

impl LoadError {
    /// True when the engine stopped answering (stopped or restarted
    /// mid-load): the load may be tried again once it is back.
    pub fn is_engine_gone(&self) -> bool {
        matches!(self, LoadError::Engine(e) if e.is_unreachable())
    }
}

/// One line of the load archive's `manifest.json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LoadEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// How the load archive is laid out, by what the engine reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `docker save`'s legacy layout (`manifest.json`, `<diffid>/layer.tar`):
    /// Docker Engine's classic store loads it with layers left out.
    #[default]
    DockerSave,
    /// An OCI image layout (`index.json`, `blobs/sha256/…`): podman loads
    /// it with layers left out (a legacy archive must be complete there).
    Oci,
}

/// Writes the archive that loads `images` into an engine that lacks exactly
/// the layers in `layers`; returns the bytes written. Every layer byte comes
/// from [`ChunkStore::read_verified`].
pub fn write_load_tar(
    manifest: &Manifest,
    images: &[usize],
    layers: &BTreeSet<usize>,
    store: &ChunkStore,
    out: impl Write,
) -> Result<u64, LoadTarError> {
    let chunks = Chunks {
        store,
        arrivals: &Arrivals::all(manifest.chunks.len()),
        cancelled: &|| false,
    };
    write_streaming_tar(manifest, images, layers, &chunks, out, Layout::DockerSave)
}

/// Where the layers' bytes come from: verified chunks in `store`, each
/// waited for in `arrivals` first, until `cancelled()`.
pub(super) struct Chunks<'a> {
    /// The node's chunk store.
    store: &'a ChunkStore,
    /// Which chunks are in the store yet.
    arrivals: &'a Arrivals,
    /// Whether the load was given up, so waiting is pointless.
    cancelled: &'a dyn Fn() -> bool,
}

/// [`write_load_tar`] for a node that may still be fetching: each chunk is
/// written as soon as it and those before it are in.
fn write_streaming_tar(
    manifest: &Manifest,
    images: &[usize],
    layers: &BTreeSet<usize>,
    chunks: &Chunks<'_>,
    out: impl Write,
    layout: Layout,
) -> Result<u64, LoadTarError> {
    manifest.validate()?;
    check_range("image", images.iter().copied(), manifest.images.len())?;
    check_range("layer", layers.iter().copied(), manifest.layers.len())?;
    let mut tar = tar::Builder::new(CountingWriter { inner: out, count: 0 });
    if layout == Layout::Oci {
        super::oci_layout::write(&mut tar, manifest, images, layers, chunks)?;
        tar.finish()?;
        return Ok(tar.get_ref().count);
    }
    append(&mut tar, "manifest.json", &load_manifest_json(manifest, images))?;
    for &i in images {
        let image = &manifest.images[i];
        append(&mut tar, &config_name(&image.id), &image.config)?;
    }
    for &i in layers {
        append_layer(&mut tar, manifest, i, chunks, Layout::DockerSave)?;
    }
    tar.finish()?;
    Ok(tar.get_ref().count)
}

/// The load archive's `manifest.json`: every image lists all its layers,
/// present in the archive or not.
fn load_manifest_json(manifest: &Manifest, images: &[usize]) -> Vec<u8> {
    let entries: Vec<LoadEntry> = images
        .iter()
        .map(|&i| {
            let image = &manifest.images[i];
            LoadEntry {
                config: config_name(&image.id),
                repo_tags: image.refs.iter().filter_map(|r| repo_tag(r)).collect(),
                layers: image
                    .layers
                    .iter()
                    .map(|&l| layer_name(&manifest.layers[l as usize].diff_id))
                    .collect(),
            }
        })
        .collect();
    serde_json::to_vec(&entries).expect("load manifest serialises")
}

/// A reference as the loader's `RepoTags` needs it: `repo:tag`, since
/// dockerd 20.10 refuses an entry without a tag; digest references are left
/// out here (and fail later, when tagged).
fn repo_tag(reference: &str) -> Option<String> {
    let (repo, tag) = split_reference(reference).ok()?;
    Some(format!("{repo}:{tag}"))
}

fn config_name(image_id: &str) -> String {
    format!("{}.json", digest_hex(image_id))
}

fn layer_name(diff_id: &str) -> String {
    format!("{}/layer.tar", digest_hex(diff_id))
}

fn check_range(
    what: &'static str,
    mut indices: impl Iterator<Item = usize>,
    len: usize,
) -> Result<(), LoadTarError> {
    match indices.find(|&i| i >= len) {
        Some(index) => Err(LoadTarError::OutOfRange { what, index }),
        None => Ok(()),
    }
}

fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(FILE_MODE);
    header.set_mtime(0);
    header.set_size(size);
    header
}

pub(super) fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> Result<(), LoadTarError> {
    let mut header = file_header(data.len() as u64);
    tar.append_data(&mut header, name, data)?;
    Ok(())
}

/// Appends one layer, its content read chunk by chunk and verified.
pub(super) fn append_layer<W: Write>(
    tar: &mut tar::Builder<W>,
    manifest: &Manifest,
    index: usize,
    chunks: &Chunks<'_>,
    layout: Layout,
) -> Result<(), LoadTarError> {
    let layer = &manifest.layers[index];
    let name = match layout {
        Layout::DockerSave => layer_name(&layer.diff_id),
        Layout::Oci => super::oci_layout::blob_name(&layer.diff_id),
    };
    let mut header = file_header(layer.size);
    let first = layer.first_chunk as usize;
    let mut reader = LayerReader {
        entries: &manifest.chunks,
        next: first..first + layer.chunk_count as usize,
        chunks,
        current: io::Cursor::new(Vec::new()),
        failed: None,
    };
    let written = tar.append_data(&mut header, name, &mut reader);
    let diff_id = layer.diff_id.clone();
    match reader.failed {
        Some(ReadFailure::Store(source)) => Err(LoadTarError::Chunk { diff_id, source }),
        Some(ReadFailure::Wait(WaitError::Closed(reason))) => Err(LoadTarError::Fetch { diff_id, reason }),
        Some(ReadFailure::Wait(WaitError::Cancelled)) => Err(LoadTarError::Write(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the load was cancelled",
        ))),
        None => Ok(written?),
    }
}

/// Why a layer's next chunk could not be read.
enum ReadFailure {
    Store(StoreError),
    Wait(WaitError),
}

/// A layer's content, one verified chunk in memory at a time, each waited
/// for until it arrives. A failure is kept aside so the caller can report
/// it as such.
struct LayerReader<'a> {
    entries: &'a [ChunkEntry],
    next: std::ops::Range<usize>,
    chunks: &'a Chunks<'a>,
    current: io::Cursor<Vec<u8>>,
    failed: Option<ReadFailure>,
}

impl LayerReader<'_> {
    fn read_chunk(&self, i: usize) -> Result<Vec<u8>, ReadFailure> {
        let chunks = self.chunks;
        chunks
            .arrivals
            .wait(i as u32, chunks.cancelled)
            .map_err(ReadFailure::Wait)?;
        chunks
            .store
            .read_verified(&self.entries[i])
            .map_err(ReadFailure::Store)
    }
}

impl Read for LayerReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(i) = self.next.next() else {
                return Ok(0);
            };
            match self.read_chunk(i) {
                Ok(raw) => self.current = io::Cursor::new(raw),
                Err(e) => {
                    self.failed = Some(e);
                    return Err(io::Error::other("a chunk could not be read"));
                }
            }
        }
    }
}

/// Counts the bytes written through it.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Loads `images` into `engine` from verified chunks, sending only `layers`
/// (the ones the engine lacks), then checks each image ID is present and
/// applies every reference as a tag. Nothing is tagged unless the whole
/// archive was written and the engine accepted it.
///
/// With `arrivals`, the load starts while chunks are still arriving and
/// waits for each in turn; closing the arrivals aborts it. Such a load is
/// not timed out while the node fetches: the caller bounds the rest, from
/// the last chunk on, with [`super::LOAD_TIMEOUT`].
pub async fn load_images(
    engine: &DockerApi,
    manifest: Arc<Manifest>,
    images: Vec<usize>,
    layers: BTreeSet<usize>,
    store: ChunkStore,
    arrivals: Option<Arc<Arrivals>>,
) -> Result<(), LoadError> {
    let request = LoadRequest {
        manifest,
        images,
        layers,
        store,
        arrivals,
    };
    load_as(engine, Layout::DockerSave, request).await
}

/// What a node loads: `images` of `manifest`, sending only `layers` (the
/// ones its engine lacks), read from verified chunks in `store`; with
/// `arrivals`, waited for as they arrive while the node still fetches.
#[derive(Clone)]
pub struct LoadRequest {
    /// The distribution's manifest.
    pub manifest: Arc<Manifest>,
    /// The images to load, as indices into the manifest's.
    pub images: Vec<usize>,
    /// The layers the engine lacks.
    pub layers: BTreeSet<usize>,
    /// Where the chunks are.
    pub store: ChunkStore,
    /// Which chunks are in yet, for a load that starts while fetching.
    pub arrivals: Option<Arc<Arrivals>>,
}

/// [`load_images`] in the layout the engine reads.
pub(super) async fn load_as(
    engine: &DockerApi,
    layout: Layout,
    request: LoadRequest,
) -> Result<(), LoadError> {
    let (manifest, images) = (request.manifest.clone(), request.images.clone());
    check_range("image", images.iter().copied(), manifest.images.len()).map_err(LoadError::Tar)?;
    upload(engine, layout, request).await?;
    for &i in &images {
        let image = &manifest.images[i];
        if engine.image_id(&image.id).await?.as_deref() != Some(image.id.as_str()) {
            return Err(LoadError::NotLoaded {
                host: engine.host().to_string(),
                id: image.id.clone(),
            });
        }
        for reference in &image.refs {
            engine.tag(&image.id, reference).await?;
        }
    }
    Ok(())
}

/// Streams the archive into the engine, waiting for `arrivals` if the node
/// still fetches. On a writer failure this returns before the body ends,
/// dropping the request: the connection closes mid-body and dockerd
/// abandons the load.
async fn upload(engine: &DockerApi, layout: Layout, request: LoadRequest) -> Result<(), LoadError> {
    let LoadRequest {
        manifest,
        images,
        layers,
        store,
        arrivals,
    } = request;
    let streaming = arrivals.is_some();
    let arrivals = arrivals.unwrap_or_else(|| Arc::new(Arrivals::all(manifest.chunks.len())));
    let (tx, rx) = mpsc::channel(LOAD_QUEUE_FRAMES);
    let (done_tx, done_rx) = oneshot::channel();
    let cancel = CancellationToken::new();
    // Whatever way this function exits, the body stops waiting and releases
    // the writer, so no thread outlives the call.
    let _cancel_on_exit = cancel.clone().drop_guard();
    let writer_cancel = cancel.clone();
    let mut writer = tokio::task::spawn_blocking(move || {
        let chunks = Chunks {
            store: &store,
            arrivals: &arrivals,
            cancelled: &|| writer_cancel.is_cancelled(),
        };
        let mut frames = FrameWriter::new(tx, writer_cancel.clone());
        write_streaming_tar(&manifest, &images, &layers, &chunks, &mut frames, layout)?;
        frames.finish()?;
        let _ = done_tx.send(());
        Ok::<(), LoadTarError>(())
    });
    let load = engine.load(body(rx, done_rx, cancel.clone()), streaming);
    tokio::pin!(load);
    tokio::select! {
        written = &mut writer => {
            writer_result(written)?;
            Ok(load.await?)
        }
        loaded = &mut load => {
            // The engine answered before the archive was complete: it failed.
            // Release the writer and wait for it, so no thread outlives this.
            cancel.cancel();
            let written = writer.await;
            loaded?;
            writer_result(written)
        }
    }
}

fn writer_result(joined: Result<Result<(), LoadTarError>, tokio::task::JoinError>) -> Result<(), LoadError> {
    match joined {
        Ok(written) => written.map_err(LoadError::Tar),
        Err(e) => Err(LoadError::Writer(e.to_string())),
    }
}

/// The request body: frames as the writer produces them. It ends only when
/// the writer has finished the archive; if the writer fails or the load is
/// cancelled it never ends, so a partial archive is never a complete upload.
fn body(
    rx: mpsc::Receiver<Bytes>,
    done: oneshot::Receiver<()>,
    cancel: CancellationToken,
) -> impl Stream<Item = Bytes> + Send + 'static {
    futures::stream::unfold((rx, done), move |(mut rx, done)| {
        let cancel = cancel.clone();
        async move {
            let next = tokio::select! {
                frame = rx.recv() => frame,
                _ = cancel.cancelled() => None,
            };
            if let Some(frame) = next {
                return Some((frame, (rx, done)));
            }
            drop(rx);
            if cancel.is_cancelled() || done.await.is_err() {
                std::future::pending::<()>().await;
            }
            None
        }
    })
}

/// A `Write` that sends [`LOAD_FRAME_SIZE`] frames into a bounded channel,
/// blocking its (blocking-pool) thread while the channel is full, until the
/// load is cancelled.
struct FrameWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    cancel: CancellationToken,
    runtime: tokio::runtime::Handle,
}

impl FrameWriter {
    /// Must be created on a thread of the runtime's blocking pool.
    fn new(tx: mpsc::Sender<Bytes>, cancel: CancellationToken) -> Self {
        FrameWriter {
            tx,
            buf: Vec::with_capacity(LOAD_FRAME_SIZE),
            cancel,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let frame = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(LOAD_FRAME_SIZE),
        ));
        let sent = self.runtime.block_on(async {
            tokio::select! {
                sent = self.tx.send(frame) => sent.is_ok(),
                _ = self.cancel.cancelled() => false,
            }
        });
        if sent {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the Docker Engine stopped reading",
            ))
        }
    }

    /// Sends what is left. Only a finished archive reaches the engine whole.
    fn finish(mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

impl Write for FrameWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(LOAD_FRAME_SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == LOAD_FRAME_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    /// Frames go out when full; flushing early would only make small ones.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "tests/load.rs"]
mod tests;
