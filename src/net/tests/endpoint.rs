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

/// Version 2 peers agree on version 2; a version 1 peer (an agent not upgraded yet) still
/// connects, and neither side then counts on version 2.
#[tokio::test]
async fn peers_agree_on_the_newest_version_both_speak() {
    let (_dir, ids) = cluster(&["n1", "n2", "n3"]);
    let (server, addr) = bind(&ids[0]);
    let served = tokio::spawn(async move {
        let mut conns = Vec::new();
        for _ in 0..2 {
            let (conn, _) = accept(server.accept().await.unwrap()).await.unwrap();
            conns.push(conn);
        }
        let seen: Vec<bool> = conns.iter().map(speaks_current).collect();
        for conn in conns {
            conn.closed().await;
        }
        seen
    });
    let (current, _) = bind(&ids[1]);
    let (conn, _) = connect(&current, addr, Some("n1")).await.unwrap();
    assert!(speaks_current(&conn));
    let old = endpoint_speaking(
        &ids[2],
        "127.0.0.1:0".parse().unwrap(),
        transport_config(),
        &[wire::ALPN_V1],
    )
    .unwrap();
    let (old_conn, _) = connect(&old, addr, Some("n1")).await.unwrap();
    assert!(!speaks_current(&old_conn));
    conn.close(VarInt::from_u32(0), b"done");
    old_conn.close(VarInt::from_u32(0), b"done");
    assert_eq!(served.await.unwrap(), vec![true, false]);
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
