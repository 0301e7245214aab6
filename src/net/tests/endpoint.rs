//! Tests of `net`.

use super::*;
use crate::net::identity::{init_cluster, issue};

/// A fresh cluster with identities `names` (role from the name's prefix).
fn cluster(names: &[&str]) -> (tempfile::TempDir, Vec<Identity>) {
    let dir = tempfile::tempdir().unwrap();
    init_cluster(dir.path()).unwrap();
    let ids = names
        .iter()
        .map(|name| {
            let role = if name.starts_with('p') {
                Role::Pusher
            } else {
                Role::Node
            };
            issue(dir.path(), name, role, 1).unwrap();
            Identity::load_from_dir(dir.path(), name).unwrap()
        })
        .collect();
    (dir, ids)
}

fn bind(identity: &Identity) -> (quinn::Endpoint, SocketAddr) {
    let ep = endpoint(identity, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
}

/// Accepts one connection on `ep` and reports how it went.
fn serve_one(ep: quinn::Endpoint) -> tokio::task::JoinHandle<Result<PeerIdentity, NetError>> {
    tokio::spawn(async move {
        let incoming = ep.accept().await.expect("endpoint open");
        let (conn, peer) = accept(incoming).await?;
        conn.closed().await;
        Ok(peer)
    })
}

#[tokio::test]
async fn same_ca_peers_see_each_others_name_and_role() {
    let (_dir, ids) = cluster(&["n1", "p1"]);
    let (server, addr) = bind(&ids[0]);
    let (client, _) = bind(&ids[1]);
    let served = serve_one(server);
    let (conn, peer) = connect(&client, addr, Some("n1")).await.unwrap();
    assert_eq!(
        peer,
        PeerIdentity {
            name: "n1".into(),
            role: Role::Node
        }
    );
    conn.close(VarInt::from_u32(0), b"done");
    let seen = served.await.unwrap().unwrap();
    assert_eq!(
        seen,
        PeerIdentity {
            name: "p1".into(),
            role: Role::Pusher
        }
    );
}

/// Current peers agree on the current version; a version 2 or 1 peer (an agent not upgraded
/// yet) still connects, and neither side then counts on what it lacks.
#[tokio::test]
async fn peers_agree_on_the_newest_version_both_speak() {
    let (_dir, ids) = cluster(&["n1", "n2", "n3", "n4"]);
    let (server, addr) = bind(&ids[0]);
    let served = tokio::spawn(async move {
        let mut conns = Vec::new();
        for _ in 0..3 {
            let (conn, _) = accept(server.accept().await.unwrap()).await.unwrap();
            conns.push(conn);
        }
        let seen: Vec<u8> = conns.iter().map(version).collect();
        for conn in conns {
            conn.closed().await;
        }
        seen
    });
    let (current, _) = bind(&ids[1]);
    let (conn, _) = connect(&current, addr, Some("n1")).await.unwrap();
    assert_eq!(version(&conn), 3);
    let mut older = Vec::new();
    for (id, alpn) in [(&ids[2], wire::ALPN_V2), (&ids[3], wire::ALPN_V1)] {
        let bind = "127.0.0.1:0".parse().unwrap();
        let old = endpoint_speaking(id, bind, transport_config(), &[alpn]).unwrap();
        let (old_conn, _) = connect(&old, addr, Some("n1")).await.unwrap();
        older.push((old, old_conn));
    }
    let versions: Vec<u8> = older.iter().map(|(_, c)| version(c)).collect();
    assert_eq!(versions, [2, 1]);
    for c in std::iter::once(&conn).chain(older.iter().map(|(_, c)| c)) {
        c.close(VarInt::from_u32(0), b"done");
    }
    let mut seen = served.await.unwrap();
    seen.sort();
    assert_eq!(seen, vec![1, 2, 3]);
}

#[tokio::test]
async fn client_from_foreign_ca_is_refused_by_server() {
    let (_a, ours) = cluster(&["n1"]);
    let (_b, theirs) = cluster(&["n2"]);
    let (server, addr) = bind(&ours[0]);
    // The intruder trusts our CA, so only the server's check of its certificate can fail;
    // its TLS 1.3 handshake completes first, so this also covers `await_confirmation`.
    let (mut client, _) = bind(&theirs[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = trust_anchors(&ours[0]).unwrap();
    client.set_default_client_config(
        client_config(&theirs[0], &provider, &roots, vec![wire::ALPN.to_vec()]).unwrap(),
    );
    let served = serve_one(server);
    let err = connect(&client, addr, None).await.unwrap_err();
    assert!(matches!(err, NetError::Untrusted { .. }), "{err}");
    let refused = served.await.unwrap().unwrap_err();
    assert!(matches!(refused, NetError::Untrusted { .. }), "{refused}");
}

#[tokio::test]
async fn server_from_foreign_ca_is_refused_by_client() {
    let (_a, ours) = cluster(&["n1"]);
    let (_b, theirs) = cluster(&["n2"]);
    let (server, addr) = bind(&theirs[0]);
    let (client, _) = bind(&ours[0]);
    let _served = serve_one(server);
    let err = connect(&client, addr, None).await.unwrap_err();
    assert!(matches!(err, NetError::Untrusted { .. }), "{err}");
    assert!(
        err.to_string().contains("not signed by this cluster's CA"),
        "{err}"
    );
}

#[tokio::test]
async fn unexpected_peer_name_is_an_error() {
    let (_dir, ids) = cluster(&["n1", "n2"]);
    let (server, addr) = bind(&ids[0]);
    let (client, _) = bind(&ids[1]);
    let _served = serve_one(server);
    let err = connect(&client, addr, Some("n3")).await.unwrap_err();
    let expected = format!("node at {addr} presented certificate for n1, expected n3");
    assert!(err.to_string().starts_with(&expected), "{err}");
}

/// Timeouts short enough for a unit test, in the product's proportions.
fn short() -> Timeouts {
    Timeouts::default()
        .with("connect=300,keep_alive=100,idle=600")
        .unwrap()
}

fn bind_with(identity: &Identity, timeouts: &Timeouts) -> (quinn::Endpoint, SocketAddr) {
    let bind = "127.0.0.1:0".parse().unwrap();
    let ep = endpoint_with(identity, bind, transport_config_with(timeouts)).unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
}

#[tokio::test]
async fn a_dial_nobody_answers_gives_up_after_the_connect_timeout_given() {
    let (_dir, ids) = cluster(&["p1"]);
    let (client, _) = bind_with(&ids[0], &short());
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let started = Instant::now();
    let err = connect_within(&client, addr, None, short().connect)
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::Timeout { after, .. } if after == short().connect),
        "{err}"
    );
    assert!(err.to_string().contains("within 300ms"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// Forwards UDP between one client and `server` until `cut` is set; then drops everything,
/// as a pulled cable would.
async fn relay(server: SocketAddr, cut: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut client, mut buf) = (None, vec![0u8; 65536]);
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if cut.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            let to = if from == server {
                client
            } else {
                client = Some(from);
                Some(server)
            };
            if let Some(to) = to {
                let _ = socket.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_peer_gone_silent_is_dropped_after_the_idle_timeout_given() {
    let (_dir, ids) = cluster(&["n1", "p1"]);
    let (server, addr) = bind_with(&ids[0], &short());
    let (client, _) = bind_with(&ids[1], &short());
    let _served = serve_one(server);
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let via = relay(addr, cut.clone()).await;
    let (conn, _) = connect_within(&client, via, Some("n1"), short().connect)
        .await
        .unwrap();
    // Quiet but healthy: keep-alives hold it open past the idle timeout.
    tokio::time::sleep(short().idle * 2).await;
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    cut.store(true, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the idle timeout closes it");
    assert!(matches!(reason, ConnectionError::TimedOut), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
