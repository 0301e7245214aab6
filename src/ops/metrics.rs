//! Agent metrics in the Prometheus text format, served over plain HTTP on
//! an address of the operator's choosing (off by default; bind it to
//! localhost unless a scraper elsewhere needs it).
//!
//! The counters are a cheap [`Metrics`] handle: the agent makes one and
//! hands it to what counts (the swarm registry, each distribution, the
//! retention keeper); a scrape renders them. A pusher's swarm counts into
//! a handle nobody renders.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A handle to the counters of one process; clones count into the same.
#[derive(Clone, Debug, Default)]
pub struct Metrics(Arc<Counters>);

/// The counters behind a [`Metrics`] handle.
#[derive(Debug, Default)]
struct Counters {
    received: Mutex<BTreeMap<String, u64>>,
    sent: Mutex<BTreeMap<String, u64>>,
    verified: AtomicU64,
    rejected: AtomicU64,
    busy_sent: AtomicU64,
    busy_received: AtomicU64,
    loads_ok: AtomicU64,
    loads_failed: AtomicU64,
    load_micros: AtomicU64,
    connections: AtomicU64,
    connections_peak: AtomicU64,
    evicted_dists: AtomicU64,
    evicted_chunks: AtomicU64,
    evicted_bytes: AtomicU64,
}

/// One open QUIC connection, counted from creation until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<Counters>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// A verified chunk of `bytes` arrived from `peer`.
    pub fn on_received(&self, peer: &str, bytes: u64) {
        *self
            .0
            .received
            .lock()
            .expect("metrics lock")
            .entry(peer.into())
            .or_default() += bytes;
        self.0.verified.fetch_add(1, Ordering::Relaxed);
    }

    /// A chunk from a peer failed verification.
    pub fn on_rejected(&self) {
        self.0.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A chunk request was answered `Busy` here: this node's upload queue
    /// was full.
    pub fn on_busy_sent(&self) {
        self.0.busy_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A peer answered one of this node's chunk requests `Busy`.
    pub fn on_busy_received(&self) {
        self.0.busy_received.fetch_add(1, Ordering::Relaxed);
    }

    /// `bytes` of a chunk were sent to `peer`.
    pub fn on_sent(&self, peer: &str, bytes: u64) {
        *self
            .0
            .sent
            .lock()
            .expect("metrics lock")
            .entry(peer.into())
            .or_default() += bytes;
    }

    /// A connection (to the pusher or a peer, either side opened it) is
    /// served until the returned guard drops.
    pub fn on_connection(&self) -> OpenConnection {
        let open = self.0.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.0.connections_peak.fetch_max(open, Ordering::Relaxed);
        OpenConnection(self.0.clone())
    }

    /// A `docker load` finished, well or not, `took` after the node's last
    /// chunk arrived (the load streams while it fetches; a load tried again
    /// counts from its own start).
    pub fn on_load(&self, ok: bool, took: Duration) {
        let count = if ok {
            &self.0.loads_ok
        } else {
            &self.0.loads_failed
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.0
            .load_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Retention removed `dists` distribution records and `chunks` chunk
    /// files, freeing `bytes`.
    pub fn on_evicted(&self, dists: u64, chunks: u64, bytes: u64) {
        self.0.evicted_dists.fetch_add(dists, Ordering::Relaxed);
        self.0.evicted_chunks.fetch_add(chunks, Ordering::Relaxed);
        self.0.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter, and of the size
    /// of the chunk store under `store_dir`.
    pub fn render(&self, store_dir: &Path) -> String {
        let c = &self.0;
        let mut out = String::new();
        per_peer(
            &mut out,
            "p2pimg_received_bytes_total",
            "Verified chunk bytes received",
            &c.received,
        );
        per_peer(&mut out, "p2pimg_sent_bytes_total", "Chunk bytes sent", &c.sent);
        for (name, help, value) in self.counters() {
            metric(&mut out, name, help, "counter", load(value));
        }
        let _ = writeln!(
            out,
            "# HELP p2pimg_loads_total docker load runs, by result.\n# TYPE p2pimg_loads_total counter\n\
             p2pimg_loads_total{{result=\"ok\"}} {}\np2pimg_loads_total{{result=\"failed\"}} {}",
            load(&c.loads_ok),
            load(&c.loads_failed)
        );
        let load_secs = load(&c.load_micros) as f64 / 1e6;
        let gauges = [
            (
                "p2pimg_connections",
                "Open QUIC connections to the pusher and peers",
                load(&c.connections),
            ),
            (
                "p2pimg_connections_peak",
                "Most QUIC connections open at once since the start",
                load(&c.connections_peak),
            ),
            (
                "p2pimg_store_bytes",
                "Bytes in the chunk store",
                dir_size(&store_dir.join("chunks")),
            ),
        ];
        metric(
            &mut out,
            "p2pimg_load_seconds_total",
            "Time docker load took after the last chunk arrived",
            "counter",
            load_secs,
        );
        for (name, help, value) in gauges {
            metric(&mut out, name, help, "gauge", value);
        }
        out
    }

    /// The plain counters: name, help text, value.
    fn counters(&self) -> [(&'static str, &'static str, &AtomicU64); 7] {
        let c = &self.0;
        [
            (
                "p2pimg_chunks_verified_total",
                "Chunks received and verified",
                &c.verified,
            ),
            (
                "p2pimg_chunks_rejected_total",
                "Chunks that failed verification",
                &c.rejected,
            ),
            (
                "p2pimg_busy_answers_sent_total",
                "Chunk requests answered Busy because this node's upload queue was full",
                &c.busy_sent,
            ),
            (
                "p2pimg_busy_answers_received_total",
                "Chunk requests of this node that a peer answered Busy (the peer is asked again later)",
                &c.busy_received,
            ),
            (
                "p2pimg_store_evicted_distributions_total",
                "Finished distributions forgotten by retention",
                &c.evicted_dists,
            ),
            (
                "p2pimg_store_evicted_chunks_total",
                "Chunk files deleted by retention",
                &c.evicted_chunks,
            ),
            (
                "p2pimg_store_evicted_bytes_total",
                "Bytes freed by retention",
                &c.evicted_bytes,
            ),
        ]
    }
}

/// One metric without labels: its HELP and TYPE lines and its value.
fn metric(out: &mut String, name: &str, help: &str, kind: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {value}");
}

fn load(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

fn per_peer(out: &mut String, name: &str, help: &str, map: &Mutex<BTreeMap<String, u64>>) {
    let _ = writeln!(out, "# HELP {name} {help}, per peer.\n# TYPE {name} counter");
    for (peer, bytes) in map.lock().expect("metrics lock").iter() {
        let peer = peer.replace(['\\', '"', '\n'], "_");
        let _ = writeln!(out, "{name}{{peer=\"{peer}\"}} {bytes}");
    }
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Longest a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the metrics listener; the caller runs [`serve`] on it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Answers every HTTP request on `listener` with the metrics, until dropped.
pub async fn serve(listener: TcpListener, store_dir: PathBuf, metrics: Metrics) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let (store_dir, metrics) = (store_dir.clone(), metrics.clone());
        tokio::spawn(async move {
            // Read the request head (ignored beyond its arrival), then answer.
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut buf)).await;
            let body = tokio::task::spawn_blocking(move || metrics.render(&store_dir))
                .await
                .unwrap_or_default();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_in_prometheus_text() {
        let m = Metrics::default();
        m.on_received("n2", 100);
        m.on_received("n2", 50);
        m.on_sent("n3", 7);
        m.on_rejected();
        m.on_busy_sent();
        m.on_busy_received();
        m.on_busy_received();
        m.on_load(true, Duration::from_millis(1500));
        m.on_evicted(1, 3, 3000);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("chunks/ab")).unwrap();
        std::fs::write(dir.path().join("chunks/ab/x"), [0u8; 10]).unwrap();
        let text = m.render(dir.path());
        for line in [
            "p2pimg_received_bytes_total{peer=\"n2\"} 150",
            "p2pimg_sent_bytes_total{peer=\"n3\"} 7",
            "p2pimg_chunks_verified_total 2",
            "p2pimg_chunks_rejected_total 1",
            "p2pimg_busy_answers_sent_total 1",
            "p2pimg_busy_answers_received_total 2",
            "p2pimg_loads_total{result=\"ok\"} 1",
            "p2pimg_load_seconds_total 1.5",
            "p2pimg_store_bytes 10",
            "p2pimg_store_evicted_distributions_total 1",
            "p2pimg_store_evicted_chunks_total 3",
            "p2pimg_store_evicted_bytes_total 3000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
    }
}
