//! Hostile peers: a cluster member that lies and misbehaves, built from the
//! project's own protocol code with fault switches. Whatever it does, the
//! honest agent stays up, drops it (or routes around it), fetches its chunks
//! elsewhere and loads the right image.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::bin;
use crate::common::{build_test_image, Cluster};
use p2pimg::content::manifest::Manifest;
use p2pimg::net;
use p2pimg::net::identity::{self, Identity, Role};
use p2pimg::wire::{self, read_frame, write_frame, Bitfield, Message, Outcome, Plan};
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::Mutex;

/// The bad peer's name sorts after the honest nodes', so they dial it.
const BAD: &str = "zz-bad";

/// How the bad peer misbehaves when asked for a chunk.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Bytes of the right length that are not the chunk.
    CorruptChunk,
    /// A length prefix, a few bytes, then the end of the stream.
    TruncatedFrame,
    /// A length prefix of 4 GiB.
    OversizeLength,
    /// A message that is not an answer to a request.
    WrongMessage,
    /// Never answers.
    Stall,
    /// Ends every request's stream without a byte of answer, as a peer whose
    /// distribution ended does: not a fault, so not dropped.
    EndsWithoutAnswer,
    /// Answers nothing and opens hundreds of requests it never reads.
    FloodRequests,
}

/// A cluster member that claims every chunk and misbehaves as told.
struct BadPeer {
    addr: SocketAddr,
    state: Arc<BadState>,
    runtime: tokio::runtime::Runtime,
}

/// What the bad peer knows and counts.
struct BadState {
    fault: Fault,
    manifest: Mutex<Option<Manifest>>,
    /// Chunk requests it received: proof the honest node did ask it.
    requests: AtomicUsize,
}

impl BadPeer {
    fn start(ca_dir: &Path, fault: Fault) -> BadPeer {
        identity::issue(ca_dir, BAD, Role::Node, 30).expect("issue the bad peer's certificate");
        let id = Identity::load_from_dir(ca_dir, BAD).expect("load the bad peer's identity");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let bind = "127.0.0.1:0".parse().unwrap();
        let endpoint = runtime.block_on(async { net::endpoint(&id, bind) }).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let state = Arc::new(BadState {
            fault,
            manifest: Mutex::new(None),
            requests: AtomicUsize::new(0),
        });
        let shared = state.clone();
        runtime.spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        serve(conn, state).await;
                    }
                });
            }
        });
        BadPeer { addr, state, runtime }
    }
}

async fn serve(conn: Connection, state: Arc<BadState>) {
    while let Ok((send, mut recv)) = conn.accept_bi().await {
        let Ok(first) = read_frame(&mut recv, wire::MAX_ANNOUNCE_FRAME).await else {
            continue;
        };
        let (conn, state) = (conn.clone(), state.clone());
        tokio::spawn(async move {
            match first {
                Message::Announce { manifest: m } => {
                    let n = m.images.len();
                    *state.manifest.lock().await = Some(m);
                    lie_to_pusher(send, recv, n).await;
                }
                Message::Hello { dist, .. } => {
                    let chunks = state.manifest.lock().await.as_ref().map_or(0, |m| m.chunks.len());
                    if matches!(state.fault, Fault::FloodRequests) {
                        tokio::spawn(flood(conn.clone(), dist, chunks));
                    }
                    claim_everything(send, recv, dist, chunks).await;
                }
                Message::Request { .. } => {
                    state.requests.fetch_add(1, Ordering::SeqCst);
                    misbehave(send, &state).await;
                }
                _ => {}
            }
        });
    }
}

/// Plans to fetch everything, then reports success at once.
async fn lie_to_pusher(mut send: SendStream, mut recv: RecvStream, images: usize) {
    let plan = Plan {
        present: vec![false; images],
        need_chunks: 0,
        need_bytes: 0,
        stored_chunks: 0,
        engine: "hostile".into(),
    };
    let _ = write_frame(&mut send, &Message::Plan(plan)).await;
    let _ = read_frame(&mut recv, wire::MAX_FRAME).await; // Start
    let _ = write_frame(&mut send, &Message::Done(Outcome::Loaded { received: vec![] })).await;
    while read_frame(&mut recv, wire::MAX_FRAME).await.is_ok() {}
}

/// Says it holds every chunk, then reads HAVEs forever.
async fn claim_everything(
    mut send: SendStream,
    mut recv: RecvStream,
    dist: p2pimg::content::hash::Hash,
    chunks: usize,
) {
    let mut all = Bitfield::new(chunks);
    (0..chunks).for_each(|i| all.set(i));
    let hello = Message::Hello {
        dist,
        have: all,
        want: Bitfield::new(chunks),
    };
    let _ = write_frame(&mut send, &hello).await;
    while read_frame(&mut recv, wire::MAX_LINK_FRAME).await.is_ok() {}
}

async fn misbehave(mut send: SendStream, state: &BadState) {
    match state.fault {
        Fault::CorruptChunk => {
            let zsize = state
                .manifest
                .lock()
                .await
                .as_ref()
                .map_or(16, |m| m.chunks[0].zsize as usize);
            let _ = write_frame(
                &mut send,
                &Message::Chunk {
                    data: vec![0xab; zsize],
                },
            )
            .await;
            let _ = send.finish();
        }
        Fault::TruncatedFrame => {
            let _ = send.write_all(&(1u32 << 20).to_be_bytes()).await;
            let _ = send.write_all(&[9, 1, 2, 3]).await;
            let _ = send.finish();
        }
        Fault::OversizeLength => {
            let _ = send.write_all(&u32::MAX.to_be_bytes()).await;
            let _ = send.finish();
        }
        Fault::WrongMessage => {
            let _ = write_frame(&mut send, &Message::Have { index: 0 }).await;
            let _ = send.finish();
        }
        Fault::EndsWithoutAnswer => {
            let _ = send.finish();
        }
        Fault::Stall | Fault::FloodRequests => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}

/// Opens many request streams to the honest node and never reads them.
async fn flood(conn: Connection, dist: p2pimg::content::hash::Hash, chunks: usize) {
    let mut held = Vec::new();
    for i in 0..2000u32 {
        let Ok((mut send, recv)) = conn.open_bi().await else {
            break;
        };
        let index = i % chunks.max(1) as u32;
        if write_frame(&mut send, &Message::Request { dist, index })
            .await
            .is_err()
        {
            break;
        }
        held.push((send, recv));
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

/// Peak resident memory of a process, from /proc, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// One honest node, one bad peer; the push must load the right image on
/// the honest node and nothing may come from the bad peer.
fn survive(fault: Fault) {
    let cluster = Cluster::start(bin(), 1);
    let image = build_test_image(&cluster.seed, "app:1");
    let bad = BadPeer::start(&cluster.ca_dir(), fault);
    let mut nodes = OpenOptions::new()
        .append(true)
        .open(cluster.nodes_toml())
        .unwrap();
    writeln!(nodes, "[[node]]\nname = \"{BAD}\"\naddr = \"{}\"", bad.addr).unwrap();

    let push = cluster.push(&["app:1"], &[]);
    let honest = &cluster.nodes[0];
    assert_eq!(
        push.status("n1"),
        "loaded",
        "{fault:?}: {}\n{}",
        push.reason("n1"),
        cluster.logs()
    );
    assert_eq!(
        honest.engine.image_id("app:1").as_deref(),
        Some(image.id.as_str()),
        "{fault:?}"
    );
    assert_eq!(
        push.received("n1", BAD),
        0,
        "{fault:?}: a chunk from the bad peer was used"
    );
    let asked = bad.state.requests.load(Ordering::SeqCst);
    assert!(asked > 0, "{fault:?}: the honest node never asked the bad peer");
    let mut agent = cluster.nodes.into_iter().next().unwrap().agent;
    assert!(
        agent.try_exit_status().is_none(),
        "{fault:?}: the agent died:\n{}",
        agent.log()
    );
    let log = agent.log();
    match fault {
        Fault::Stall | Fault::FloodRequests => {}
        // Ending a stream unanswered is what a peer that stops serving does: it is left
        // alone (not closed on, not banned for 10 minutes), its chunks fetched elsewhere.
        Fault::EndsWithoutAnswer => assert!(
            !log.contains("dropping peer"),
            "{fault:?}: a peer that stopped serving was dropped as a bad one:\n{log}"
        ),
        _ => assert!(
            log.contains("dropping peer"),
            "{fault:?}: the bad peer was not dropped:\n{log}"
        ),
    }
    // Serving is bounded (32 answers in flight), whatever the requests.
    let rss = peak_rss(agent.pid());
    assert!(rss < 256 << 20, "{fault:?}: agent peak RSS {rss} bytes");
    drop(bad.runtime);
}

#[test]
fn corrupt_chunk() {
    survive(Fault::CorruptChunk);
}

#[test]
fn truncated_frame() {
    survive(Fault::TruncatedFrame);
}

#[test]
fn oversize_length_prefix() {
    survive(Fault::OversizeLength);
}

#[test]
fn message_out_of_order() {
    survive(Fault::WrongMessage);
}

#[test]
fn peer_that_stops_serving_is_not_banned() {
    survive(Fault::EndsWithoutAnswer);
}

#[test]
fn peer_that_stalls_mid_request() {
    survive(Fault::Stall);
}

#[test]
fn flood_of_requests() {
    survive(Fault::FloodRequests);
}
