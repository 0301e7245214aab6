//! The swarm actor's inbox and the cheap handle callers hold: add peers,
//! follow progress, read arrivals.

use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::content::arrivals::Arrivals;
use crate::swarm::policy::picker::PeerId;
use crate::wire::PeerBytes;

/// Progress of the local node on a distribution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmProgress {
    /// Chunks fetched and verified.
    pub chunks: u32,
    /// Their compressed bytes.
    pub bytes: u64,
    /// Every needed chunk is held.
    pub complete: bool,
    /// Fetching stopped for a local reason (the chunk store failed).
    pub failed: Option<String>,
    /// Chunk requests in flight (waiting for another distribution's
    /// fetch of the chunk included). None while chunks are missing means
    /// no peer offers any of them.
    pub in_flight: usize,
    /// Peers that answered `Busy` and are left alone for a moment: chunks
    /// they hold are on their way, only later.
    pub busy_peers: usize,
    /// Peers whose `Hello` arrived.
    pub peers: usize,
    /// Needed chunks not held yet.
    pub missing: usize,
}

/// Tuning of a swarm.
#[derive(Clone, Copy, Debug)]
pub struct SwarmOptions {
    /// Requests in flight per peer.
    pub max_in_flight: usize,
    /// Requests in flight across all peers.
    pub max_total_in_flight: usize,
    /// Seed mode: hold everything, fetch nothing, and offer chunks a window
    /// at a time so each is uploaded about once ([`Seeder`]).
    pub seeding: bool,
    /// In seed mode, how long a peer goes without progress before it is
    /// offered chunks others hold ([`crate::net::Timeouts::seed_stall`]).
    pub seed_stall: std::time::Duration,
}

impl Default for SwarmOptions {
    fn default() -> Self {
        SwarmOptions {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_total_in_flight: DEFAULT_MAX_TOTAL_IN_FLIGHT,
            seeding: false,
            seed_stall: crate::net::Timeouts::default().seed_stall,
        }
    }
}

pub(super) enum Cmd {
    AddPeer {
        name: String,
        conn: Connection,
        send: SendStream,
        recv: RecvStream,
        their: Option<Holdings>,
        seed: bool,
    },
    Hello {
        id: PeerId,
        their: Holdings,
    },
    Have {
        id: PeerId,
        index: u32,
    },
    Gone {
        id: PeerId,
    },
    Received {
        reply: tokio::sync::oneshot::Sender<Vec<PeerBytes>>,
    },
}

/// Cheap handle to a distribution's swarm actor.
#[derive(Clone, Debug)]
pub struct SwarmHandle {
    pub(super) tx: mpsc::Sender<Cmd>,
    /// The distribution's shared state.
    pub shared: Arc<DistShared>,
    pub(super) progress: watch::Receiver<SwarmProgress>,
    pub(super) arrivals: Arc<Arrivals>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl SwarmHandle {
    /// Hands a swarm stream to the actor. `their` is the peer's bitfield
    /// when it already arrived (we accepted the stream), `None` when we
    /// opened it and still wait for the peer's `Hello`.
    pub async fn add_peer(
        &self,
        name: String,
        conn: Connection,
        (send, recv): (SendStream, RecvStream),
        their: Option<Holdings>,
    ) {
        self.add_link(name, conn, (send, recv), their, false).await
    }

    async fn add_link(
        &self,
        name: String,
        conn: Connection,
        (send, recv): (SendStream, RecvStream),
        their: Option<Holdings>,
        seed: bool,
    ) {
        let _ = self
            .tx
            .send(Cmd::AddPeer {
                name,
                conn,
                send,
                recv,
                their,
                seed,
            })
            .await;
    }

    /// Opens a swarm stream to a peer on `conn` and adds it.
    pub async fn connect_peer(&self, name: String, conn: Connection) -> Result<(), quinn::ConnectionError> {
        let streams = conn.open_bi().await?;
        self.add_link(name, conn, streams, None, false).await;
        Ok(())
    }

    /// Opens a swarm stream to the seed (the pusher) on `conn` and adds it:
    /// up to [`SEED_IN_FLIGHT`] requests to it, besides those to peers.
    pub async fn connect_seed(&self, name: String, conn: Connection) -> Result<(), quinn::ConnectionError> {
        let streams = conn.open_bi().await?;
        self.add_link(name, conn, streams, None, true).await;
        Ok(())
    }

    /// Follows the local node's progress.
    pub fn progress(&self) -> watch::Receiver<SwarmProgress> {
        self.progress.clone()
    }

    /// The chunks held so far, to read in order while the rest arrive.
    /// Chunks held at the start and chunks not needed count as arrived.
    pub fn arrivals(&self) -> Arc<Arrivals> {
        self.arrivals.clone()
    }

    /// Verified chunks and bytes received so far, per sending peer.
    pub async fn received(&self) -> Vec<PeerBytes> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Cmd::Received { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}
