//! `bundle create`: export images (from an engine or a `docker save`
//! archive) into a scratch store, then write them as one bundle file (its
//! format is [`crate::content::bundle`]'s).
//!
//! The output is checked before any work (a new path or a regular file,
//! never the input archive) and written to a hidden temporary file beside
//! it, `.NAME.tmp-PID-RANDOM`, renamed over it only at the end. A failure or
//! a stop signal removes the temporary file and the scratch directory.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::scratch::{Scratch, ScratchError, BUNDLE_PREFIX};
use crate::content::bundle::{kind_of, open_nonblocking, write_bundle, BundleError};
use crate::content::manifest::Manifest;
use crate::content::pack::PackOptions;
use crate::engine::EngineSpec;
use crate::ops::signal::Stop;

/// How long a stopped `bundle create` waits for its export to end once the
/// scratch directory is gone: the export fails at its next chunk, well under
/// a second; an engine that stopped sending must not hold the exit up.
const STOP_DRAIN: Duration = Duration::from_secs(5);

/// A bundle just written.
#[derive(Debug)]
pub struct Made {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Where the images of a bundle come from.
#[derive(Clone, Debug)]
pub enum Input {
    /// Exported from the Docker Engine at this address.
    Engine { engine: EngineSpec, images: Vec<String> },
    /// A `docker save` archive: a file, or a pipe (`/dev/stdin`).
    Tar(PathBuf),
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
    /// The output path cannot be (or must not be) written.
    #[error("-o {path}: {detail}")]
    Output { path: PathBuf, detail: String },
    /// Writing the bundle failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The scratch store failed.
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    /// SIGINT or SIGTERM arrived; the partial bundle and the scratch
    /// directory are removed.
    #[error("stopped by {}: the partial bundle and the scratch data are removed", .0.name())]
    Stopped(Stop),
}

/// Packs `input` into a bundle at `out`. If `stop` resolves first, removes
/// everything written and returns [`CreateError::Stopped`].
pub async fn create(
    input: Input,
    pack: &PackOptions,
    out: &Path,
    stop: impl std::future::Future<Output = Stop>,
) -> Result<Made, CreateError> {
    let source = match input {
        Input::Tar(path) => {
            let (file, meta) = open_tar(&path)?;
            Source::Tar { path, file, meta }
        }
        Input::Engine { engine, images } => Source::Engine { engine, images },
    };
    let input_meta = match &source {
        Source::Tar { meta, .. } => Some(meta),
        Source::Engine { .. } => None,
    };
    let output = Output::prepare(out, input_meta)?;
    let scratch = Scratch::create(output.dir(), BUNDLE_PREFIX)?;
    let outcome = {
        let work = pack_and_write(source, pack, &scratch, &output);
        tokio::pin!(work);
        tokio::select! {
            made = &mut work => Ok(made),
            stopped = stop => {
                // Gone now, so the export stops at its next chunk; removed
                // again (when dropped) once it has.
                scratch.remove();
                output.remove();
                let _ = tokio::time::timeout(STOP_DRAIN, work).await;
                Err(stopped)
            }
        }
    };
    match outcome {
        Ok(made) => output.commit(made?),
        Err(stopped) => Err(CreateError::Stopped(stopped)),
    }
}

/// An [`Input`] ready to read.
enum Source {
    Engine {
        engine: EngineSpec,
        images: Vec<String>,
    },
    Tar {
        path: PathBuf,
        file: File,
        meta: Metadata,
    },
}

/// Packs the images into `scratch`, then writes the bundle into the
/// output's temporary file.
async fn pack_and_write(
    source: Source,
    pack: &PackOptions,
    scratch: &Scratch,
    output: &Output,
) -> Result<Made, CreateError> {
    let manifest = match source {
        Source::Engine { engine, images } => super::export(&engine, &images, pack, scratch.store()).await?,
        Source::Tar { path, file, meta } => parse_tar(&path, file, &meta, pack, scratch).await?,
    };
    let (store, file, tmp) = (scratch.store().clone(), output.file()?, output.tmp.clone());
    tokio::task::spawn_blocking(move || {
        let bytes = write_bundle(&manifest, &store, file, &tmp)?;
        Ok(Made { manifest, bytes })
    })
    .await
    .expect("bundle task does not panic")
}

/// Opens the `docker save` archive: a regular file or a pipe, never
/// blocking in `open` on a FIFO nothing writes to.
fn open_tar(path: &Path) -> Result<(File, Metadata), CreateError> {
    let err = |detail: String| CreateError::Tar {
        path: path.into(),
        detail,
    };
    let refuse = |meta: &Metadata| {
        err(format!(
            "is {}, not a `docker save` archive: give the archive's file, or /dev/stdin with \
             `docker save IMAGE | p2pimg bundle create --from-tar /dev/stdin -o FILE`",
            kind_of(meta)
        ))
    };
    let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !(meta.is_file() || meta.file_type().is_fifo()) {
        return Err(refuse(&meta));
    }
    let file = open_nonblocking(path).map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !(meta.is_file() || meta.file_type().is_fifo()) {
        return Err(refuse(&meta));
    }
    Ok((file, meta))
}

/// Parses the archive into the scratch store, on a blocking thread.
async fn parse_tar(
    path: &Path,
    file: File,
    meta: &Metadata,
    pack: &PackOptions,
    scratch: &Scratch,
) -> Result<Manifest, CreateError> {
    let (store, pack, is_pipe) = (scratch.store().clone(), *pack, meta.file_type().is_fifo());
    let mut file = file;
    if !is_pipe {
        // References are checked before any layer is packed, where the file
        // can be read twice; a pipe's are checked once it is parsed.
        let path = path.to_path_buf();
        file = tokio::task::spawn_blocking(move || {
            let err = |detail: String| CreateError::Tar {
                path: path.clone(),
                detail,
            };
            crate::engine::check_repo_tags(&mut file).map_err(|e| err(e.to_string()))?;
            file.rewind().map_err(|e| err(e.to_string()))?;
            Ok::<_, CreateError>(file)
        })
        .await
        .expect("bundle task does not panic")?;
    }
    let read = Arc::new(AtomicU64::new(0));
    let reader = Counted {
        inner: BufReader::new(file),
        read: read.clone(),
    };
    let parsed = tokio::task::spawn_blocking(move || crate::engine::parse_save(reader, &store, &pack))
        .await
        .expect("bundle task does not panic");
    parsed.map_err(|e| {
        let detail = if is_pipe && read.load(Ordering::Relaxed) == 0 {
            "the pipe gave no data (nothing was writing to it): start the writer first, as in \
             `docker save IMAGE | p2pimg bundle create --from-tar /dev/stdin -o FILE`"
                .to_string()
        } else {
            e.to_string()
        };
        CreateError::Tar {
            path: path.into(),
            detail,
        }
    })
}

/// A reader that counts what it read.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The bundle being written: a hidden temporary file beside the output,
/// removed when dropped unless renamed over the output.
struct Output {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    done: bool,
}

impl Output {
    /// Checks `path` (a new path, or a regular file that is not the input
    /// archive `input`) and creates the temporary file, so a directory that
    /// cannot be written is found before any work.
    fn prepare(path: &Path, input: Option<&Metadata>) -> Result<Output, CreateError> {
        let refuse = |detail: String| CreateError::Output {
            path: path.into(),
            detail,
        };
        match fs::metadata(path) {
            Ok(meta) if !meta.is_file() => {
                let kind = kind_of(&meta);
                return Err(refuse(format!(
                    "is {kind}, not a file; give a new path or an existing regular file"
                )));
            }
            Ok(meta) if input.is_some_and(|i| (i.dev(), i.ino()) == (meta.dev(), meta.ino())) => {
                return Err(refuse(
                    "is the input archive (--from-tar); give the bundle another path".into(),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(refuse(e.to_string())),
        }
        let name = path
            .file_name()
            .ok_or_else(|| refuse("names no file; give a file path".into()))?;
        let dir = parent(path);
        let prefix = format!(".{}.tmp-", name.to_string_lossy());
        remove_stale_tmp(&dir, &prefix);
        let tmp = dir.join(format!(
            "{prefix}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| refuse(format!("cannot create a file in {}: {e}", dir.display())))?;
        Ok(Output {
            path: path.into(),
            tmp,
            file,
            done: false,
        })
    }

    /// The directory the bundle goes to.
    fn dir(&self) -> &Path {
        self.tmp.parent().expect("a file in a directory")
    }

    /// The temporary file, to write the bundle into.
    fn file(&self) -> Result<File, CreateError> {
        self.file.try_clone().map_err(|e| CreateError::Output {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    /// Renames the written temporary file over the output.
    fn commit(mut self, made: Made) -> Result<Made, CreateError> {
        fs::rename(&self.tmp, &self.path).map_err(|e| CreateError::Output {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        self.done = true;
        Ok(made)
    }

    /// Removes the temporary file now (dropping removes it too).
    fn remove(&self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.done {
            self.remove();
        }
    }
}

/// The directory holding `path` ("." for a bare file name).
fn parent(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Removes temporary bundle files `PREFIX-PID-RANDOM` in `dir` whose
/// process no longer runs (a `bundle create` killed outright). Only
/// regular files: links are not followed.
fn remove_stale_tmp(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix)?.split_once('-')?.0.parse::<u32>().ok());
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if let Some(pid) = pid.filter(|&p| is_file && !super::scratch::process_runs(p)) {
            tracing::info!(file = %entry.path().display(), pid, "removing the partial bundle of a process that is gone");
            let _ = fs::remove_file(entry.path());
        }
    }
}
