//! The content store: streaming a blob in with Content.Write (stat, write, commit
//! with the expected digest and size, so containerd checks both), labels, reads.
//!
//! A write is one bidirectional stream. The feeder sends the blob in pieces while the
//! drainer reads containerd's answer to each (one per request: left unread, they would
//! fill the HTTP/2 window and stall the write); the first failure of either ends both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, ReadContentRequest, ReadContentResponse, UpdateRequest, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use containerd_client::tonic::codec::Streaming;
use containerd_client::tonic::{Code, Status};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::{Containerd, ContainerdError, Descriptor, API_TIMEOUT};
use crate::content::manifest::sha256_digest;

/// Largest piece of a blob sent in one write request: containerd accepts messages
/// up to 16 MiB; 1 MiB pieces keep memory low and match its own read size.
const MAX_PIECE: usize = 1 << 20;
/// Write requests queued for the stream: a few pieces in flight hide round trips.
const WRITE_QUEUE: usize = 4;
/// Largest blob read whole into memory (configs, manifests, indexes): real ones are
/// a few KiB; this bounds what a damaged store can make us allocate.
const MAX_SMALL_BLOB: i64 = 16 << 20;
/// How long a write waits for another write of the same blob (containerd locks an
/// ingest ref while a write holds it): that write may stream a large layer from the
/// network, as fast as the swarm delivers it.
const LOCKED_WAIT: Duration = Duration::from_secs(3600);
/// First and longest pause between two tries at a locked ingest.
const LOCKED_POLL: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// An open Content.Write: where requests go, where answers come from.
type OpenWrite = (mpsc::Sender<WriteContentRequest>, Streaming<WriteContentResponse>);

/// How a write ended, short of an error.
enum Written {
    /// Committed by this write.
    New,
    /// The store already had the blob (before or during the write).
    Present,
}

/// Why a write stream failed: containerd's status, or ours.
enum Fail {
    Status(Status),
    Ours(ContainerdError),
}

impl Containerd {
    /// Streams one blob into the content store, checked by containerd against
    /// `blob`'s digest and size, committed with `labels`. A blob already present is
    /// a no-op success (its labels are added). A body that fails, ends short or runs
    /// long leaves nothing committed: the ingest is aborted. A write of the same blob
    /// already running (containerd locks its ingest) is waited for.
    pub async fn write_blob(
        &self,
        blob: &Descriptor,
        labels: HashMap<String, String>,
        body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<(), ContainerdError> {
        let ingest = format!("p2pimg-{}", blob.digest);
        // No abort before the write is open: the ingest may be another writer's.
        let Some(open) = self.open_write(&ingest, blob).await? else {
            return self.add_labels(&blob.digest, labels).await;
        };
        match self.finish_write(open, &ingest, blob, &labels, body).await {
            Ok(Written::New) => Ok(()),
            Ok(Written::Present) => self.add_labels(&blob.digest, labels).await,
            Err(e) => {
                self.abort(&ingest).await;
                Err(e)
            }
        }
    }

    /// Writes bytes held in memory (a config, a manifest) as a blob of `media_type`.
    pub async fn write_bytes(
        &self,
        media_type: &str,
        bytes: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<Descriptor, ContainerdError> {
        let desc = Descriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(&bytes),
            size: bytes.len() as i64,
        };
        let body = futures::stream::once(async move { Ok(Bytes::from(bytes)) });
        self.write_blob(&desc, labels, body).await?;
        Ok(desc)
    }

    /// Sets `labels` on a blob already in the store, keeping its other labels.
    pub(super) async fn add_labels(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = Info {
            digest: digest.to_string(),
            labels,
            ..Default::default()
        };
        let req = self.request(UpdateRequest {
            info: Some(info),
            update_mask: Some(prost_types::FieldMask { paths }),
        });
        let action = format!("label blob {digest}");
        self.call(&action, self.content_client().update(req))
            .await
            .map(|_| ())
    }

    /// The size of blob `digest`, `None` if the store does not have it.
    pub(super) async fn blob_size(&self, digest: &str) -> Result<Option<i64>, ContainerdError> {
        let req = self.request(InfoRequest {
            digest: digest.to_string(),
        });
        match self
            .call(&format!("look up blob {digest}"), self.content_client().info(req))
            .await
        {
            Ok(found) => Ok(found.info.map(|i| i.size)),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A small blob (config, manifest, index) read whole and checked against its digest.
    pub(super) async fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>, ContainerdError> {
        let action = format!("read blob {}", desc.digest);
        if desc.size > MAX_SMALL_BLOB {
            let detail = format!("it is {} bytes, more than any image metadata", desc.size);
            return Err(self.malformed(&action, detail));
        }
        let mut stream = self.open_read(&desc.digest).await?;
        let mut out = Vec::with_capacity(desc.size.max(0) as usize);
        while let Some(piece) = stream.message().await.map_err(|s| self.api(&action, s))? {
            out.extend_from_slice(&piece.data);
            if out.len() as i64 > MAX_SMALL_BLOB {
                return Err(self.malformed(&action, "the blob is larger than its descriptor says"));
            }
        }
        if sha256_digest(&out) != desc.digest {
            return Err(self.malformed(&action, "the bytes read do not match the digest"));
        }
        Ok(out)
    }

    /// Opens a Content.Read of the whole blob `digest`.
    pub(super) async fn open_read(
        &self,
        digest: &str,
    ) -> Result<Streaming<ReadContentResponse>, ContainerdError> {
        let req = self.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        });
        let action = format!("read blob {digest}");
        self.call(&action, self.content_client().read(req)).await
    }

    /// Opens a Content.Write stream for `blob` under the ingest ref `ingest` and
    /// reads containerd's answer to the stat; `None` if the store has the blob.
    /// While another write holds the ingest, retries for up to [`LOCKED_WAIT`].
    async fn open_write(
        &self,
        ingest: &str,
        blob: &Descriptor,
    ) -> Result<Option<OpenWrite>, ContainerdError> {
        let action = format!("write blob {}", blob.digest);
        let deadline = Instant::now() + LOCKED_WAIT;
        let mut pause = LOCKED_POLL.0;
        loop {
            match self.try_open_write(ingest, blob).await {
                Err(s) if s.code() == Code::AlreadyExists => return Ok(None),
                Err(s) if is_locked(&s) && Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LOCKED_POLL.1);
                }
                Err(s) => return Err(self.api(&action, s)),
                Ok(open) => return Ok(Some(open)),
            }
        }
    }

    /// One try of [`Containerd::open_write`].
    async fn try_open_write(&self, ingest: &str, blob: &Descriptor) -> Result<OpenWrite, Status> {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        // Queued before the call: containerd answers (and the call returns) only once
        // it has a first request. A stat with the expected digest makes it refuse
        // (AlreadyExists) a blob it has.
        let _ = tx.send(write_request(WriteAction::Stat, ingest, blob)).await;
        let mut client = self.content_client();
        let call = client.write(self.request(outbound));
        let mut inbound = match tokio::time::timeout(API_TIMEOUT, call).await {
            Ok(answer) => answer?.into_inner(),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no answer within {API_TIMEOUT:?}"
                )))
            }
        };
        match tokio::time::timeout(API_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(_stat))) => Ok((tx, inbound)),
            Ok(Ok(None)) => Err(Status::internal("the write ended before its stat was answered")),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {API_TIMEOUT:?}"
            ))),
        }
    }

    /// Sends `body` and the commit on an open write while reading the answers.
    async fn finish_write(
        &self,
        (tx, inbound): OpenWrite,
        ingest: &str,
        blob: &Descriptor,
        labels: &HashMap<String, String>,
        body: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<Written, ContainerdError> {
        let action = format!("write blob {}", blob.digest);
        let feed = feed(tx, ingest, blob, labels, body, &self.host);
        match futures::future::try_join(feed, drain(inbound)).await {
            Ok(((), true)) => Ok(Written::New),
            Ok(((), false)) => Err(self.malformed(&action, "the write ended without a commit")),
            Err(Fail::Status(s)) if s.code() == Code::AlreadyExists => Ok(Written::Present),
            Err(Fail::Status(s)) => Err(self.api(&action, s)),
            Err(Fail::Ours(e)) => Err(e),
        }
    }

    /// Drops the ingest `ingest` (a failed write's partial data). Failures are only
    /// logged: what is left is an ingest, never a committed blob.
    async fn abort(&self, ingest: &str) {
        let req = self.request(AbortRequest {
            r#ref: ingest.to_string(),
        });
        match self.call("abort a write", self.content_client().abort(req)).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(Code::NotFound) => {}
            Err(e) => tracing::warn!(host = %self.host, ingest, error = %e, "cannot abort a failed write"),
        }
    }

    fn content_client(&self) -> ContentClient<containerd_client::tonic::transport::Channel> {
        ContentClient::new(self.channel.clone())
    }
}

/// Sends `body` in pieces of at most [`MAX_PIECE`], then the commit. Stops quietly if
/// the stream has ended (the drainer reports why); fails if `body` fails or its length
/// is not `blob.size`, which drops the stream uncommitted.
async fn feed(
    tx: mpsc::Sender<WriteContentRequest>,
    ingest: &str,
    blob: &Descriptor,
    labels: &HashMap<String, String>,
    body: impl Stream<Item = Result<Bytes, std::io::Error>>,
    host: &str,
) -> Result<(), Fail> {
    let fail = |detail: String| {
        Fail::Ours(ContainerdError::Blob {
            host: host.to_string(),
            digest: blob.digest.clone(),
            detail,
        })
    };
    let mut body = std::pin::pin!(body);
    let mut offset = 0i64;
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| fail(format!("its bytes failed after {offset} of {}: {e}", blob.size)))?;
        if offset + chunk.len() as i64 > blob.size {
            return Err(fail(format!("its bytes run past its size, {}", blob.size)));
        }
        for piece in chunk.chunks(MAX_PIECE) {
            let mut req = write_request(WriteAction::Write, ingest, blob);
            (req.offset, req.data) = (offset, piece.to_vec());
            offset += piece.len() as i64;
            if tx.send(req).await.is_err() {
                return Ok(());
            }
        }
    }
    if offset != blob.size {
        return Err(fail(format!("its bytes ended after {offset} of {}", blob.size)));
    }
    let mut commit = write_request(WriteAction::Commit, ingest, blob);
    (commit.offset, commit.labels) = (offset, labels.clone());
    let _ = tx.send(commit).await;
    Ok(())
}

/// Reads containerd's answers until it ends the stream; true if it committed. No time
/// limit: containerd answers each piece as it gets it, and the body may be a fetch
/// that is slow for good reasons and has limits of its own.
async fn drain(mut inbound: Streaming<WriteContentResponse>) -> Result<bool, Fail> {
    let mut committed = false;
    while let Some(answer) = inbound.message().await.map_err(Fail::Status)? {
        committed |= answer.action == WriteAction::Commit as i32;
    }
    Ok(committed)
}

/// True for containerd's answer to a write whose ingest ref another write holds
/// (`ErrUnavailable` "ref … locked"); gRPC's own Unavailable means no connection.
fn is_locked(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.message().contains("locked")
}

/// A write request for `blob` carrying its size, and its expected digest on a stat or
/// a commit (containerd looks the digest up on each request that carries it).
fn write_request(action: WriteAction, ingest: &str, blob: &Descriptor) -> WriteContentRequest {
    let expected = match action {
        WriteAction::Write => String::new(),
        WriteAction::Stat | WriteAction::Commit => blob.digest.clone(),
    };
    WriteContentRequest {
        action: action as i32,
        r#ref: ingest.to_string(),
        total: blob.size,
        expected,
        ..Default::default()
    }
}
