//! The QUIC endpoint with mutual TLS against the cluster CA: one endpoint per process that both
//! accepts and dials, and the identity (name, role) of the peer at the other end.
//!
//! Trust: the cluster CA is the only root on both sides. A server demands a client certificate
//! chaining to it (rustls `WebPkiClientVerifier`); a client checks the server's chain against it
//! for the fixed name [`SERVER_NAME`], since peers are addressed by IP. Name and role come from
//! the verified certificate's CommonName and OrganizationalUnit (see [`crate::net::identity`]).
//!
//! In TLS 1.3 a client finishes its handshake before the server has judged the client's
//! certificate, so [`connect`] also waits for the server's HANDSHAKE_DONE: a node that refuses
//! our certificate makes `connect` fail, not the first request after it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, IdleTimeout, TransportConfig, TransportErrorCode, VarInt};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::time::Instant;

pub mod identity;
mod timeouts;

pub use timeouts::{Timeouts, TEST_ENV};

use crate::wire;
use identity::{Identity, Role};

/// TLS server name of every connection; every leaf certificate carries it as a DNS SAN.
pub const SERVER_NAME: &str = identity::CERT_DNS_NAME;
/// Per-stream receive window: 16 MiB holds several multi-MB chunks in flight, covering the
/// bandwidth-delay product of a 1 Gbit/s link at ~100 ms RTT (12.5 MB) on a single stream.
const STREAM_RECEIVE_WINDOW: u32 = 16 << 20;
/// Per-connection receive window: 64 MiB lets several chunk streams from one peer run at full
/// speed at once, instead of sharing one stream's worth of window.
const CONNECTION_RECEIVE_WINDOW: u32 = 64 << 20;
/// Send buffer per connection, matched to the peer's connection receive window so the sender
/// is never the bottleneck of a fast, long link.
const SEND_WINDOW: u64 = 64 << 20;
/// Concurrent request streams a peer may open: chunk requests in flight are bounded by the
/// swarm scheduler well below this, so the limit only stops abuse.
const MAX_CONCURRENT_BIDI_STREAMS: u32 = 256;
/// How often [`connect`] looks for the server's HANDSHAKE_DONE: quinn 0.11 has no event for
/// handshake confirmation, and 2 ms adds nothing noticeable to a dial that takes an RTT anyway.
const CONFIRM_POLL: Duration = Duration::from_millis(2);
/// QUIC application close code for "you are not the peer I wanted to reach".
const CLOSE_UNEXPECTED_PEER: VarInt = VarInt::from_u32(1);
/// TLS alerts that mean "your certificate is not acceptable": bad_certificate (42),
/// unsupported_certificate (43), certificate_revoked (44), certificate_expired (45),
/// certificate_unknown (46), unknown_ca (48), access_denied (49), decrypt_error (51),
/// certificate_required (116). decrypt_error is the usual one here: every cluster CA has the
/// same subject, so a foreign leaf finds "its" issuer by name and fails the signature check.
const CERTIFICATE_ALERTS: [u8; 9] = [42, 43, 44, 45, 46, 48, 49, 51, 116];
/// The TLS alert for "no protocol version (ALPN) in common" (RFC 7301).
const NO_APPLICATION_PROTOCOL: u8 = 120;

/// Errors from building the endpoint and from connecting to peers.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The identity could not be turned into a TLS configuration.
    #[error("cannot build the TLS configuration from this identity: {source} (check the certificate and key files)")]
    Tls { source: rustls::Error },
    /// The cluster CA could not be used as a trust anchor.
    #[error("cannot use the cluster CA certificate as a trust anchor: {detail} (check ca.crt)")]
    Ca { detail: String },
    /// The TLS configuration cannot carry QUIC (no TLS 1.3 initial cipher suite).
    #[error("the TLS configuration cannot be used for QUIC: {source}")]
    Quic { source: NoInitialCipherSuite },
    /// The UDP socket could not be bound.
    #[error("cannot listen on UDP {addr}: {source} (is another agent already using it? choose another listen address)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The endpoint refused to start a connection (for example an unusable address).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    /// No handshake completed within the connect timeout (`after`).
    #[error("no answer from {addr} within {after:?}: check that the p2pimg agent is running there and that the address, UDP port and firewall allow it")]
    Timeout { addr: SocketAddr, after: Duration },
    /// The peer rejected our certificate, or presented one not signed by the cluster CA.
    #[error("{addr} refused the connection or presented a certificate not signed by this cluster's CA: {detail} (both sides need certificates from the same `p2pimg init`)")]
    Untrusted { addr: SocketAddr, detail: String },
    /// The peer speaks no protocol version this build speaks.
    #[error("{addr} speaks another version of the p2pimg protocol (this build speaks {}): run the same p2pimg version on every node and on the pusher", String::from_utf8_lossy(wire::ALPN))]
    OtherVersion { addr: SocketAddr },
    /// The connection failed or was closed for another reason.
    #[error("connection to {addr} failed: {source}")]
    Connection {
        addr: SocketAddr,
        source: ConnectionError,
    },
    /// The peer's verified certificate does not name a p2pimg node or pusher.
    #[error("peer {addr} presented an unusable certificate: {detail} (issue it with `p2pimg cert issue`)")]
    PeerCertificate { addr: SocketAddr, detail: String },
    /// The peer is a valid cluster member, but not the one we meant to reach.
    #[error("node at {addr} presented certificate for {found}, expected {expected} (check the address in nodes.toml)")]
    UnexpectedPeer {
        addr: SocketAddr,
        found: String,
        expected: String,
    },
}

const _: () = crate::ops::assert_error_is_send_sync::<NetError>();

/// Who is at the other end of a connection, from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's CommonName.
    pub name: String,
    /// The role in the certificate's OrganizationalUnit.
    pub role: Role,
}

/// A QUIC endpoint bound to `bind` that accepts peers and dials them, both with `identity`.
/// Must be called inside a Tokio runtime.
pub fn endpoint(identity: &Identity, bind: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    endpoint_with(identity, bind, transport_config())
}

/// [`endpoint`] with another transport configuration, for experiments such as the congestion
/// controller comparison in `examples/transport.rs`: start from [`transport_config`].
pub fn endpoint_with(
    identity: &Identity,
    bind: SocketAddr,
    transport: TransportConfig,
) -> Result<quinn::Endpoint, NetError> {
    endpoint_speaking(identity, bind, transport, &wire::ALPNS)
}

/// [`endpoint_with`] offering only the protocol versions `alpns`, most preferred first: the
/// version tests stand in for an agent not upgraded yet with [`wire::EARLIER_ALPNS`].
pub fn endpoint_speaking(
    identity: &Identity,
    bind: SocketAddr,
    transport: TransportConfig,
    alpns: &[&[u8]],
) -> Result<quinn::Endpoint, NetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = trust_anchors(identity)?;
    let transport = Arc::new(transport);
    let alpns: Vec<Vec<u8>> = alpns.iter().map(|a| a.to_vec()).collect();
    let mut server = server_config(identity, &provider, &roots, alpns.clone())?;
    server.transport_config(transport.clone());
    let mut client = client_config(identity, &provider, &roots, alpns)?;
    client.transport_config(transport);
    let mut endpoint =
        quinn::Endpoint::server(server, bind).map_err(|source| NetError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// A root store holding the cluster CA alone.
fn trust_anchors(identity: &Identity) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    roots.add(identity.ca_cert().clone()).map_err(|e| NetError::Ca {
        detail: e.to_string(),
    })?;
    Ok(Arc::new(roots))
}

/// Server side: TLS 1.3, client certificate required and verified against the CA.
fn server_config(
    identity: &Identity,
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    alpns: Vec<Vec<u8>>,
) -> Result<quinn::ServerConfig, NetError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| NetError::Ca {
            detail: e.to_string(),
        })?;
    // max_early_data_size stays 0: no 0-RTT, whose data an attacker could replay.
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| NetError::Tls { source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain(), identity.private_key())
        .map_err(|source| NetError::Tls { source })?;
    tls.alpn_protocols = alpns;
    let quic = QuicServerConfig::try_from(tls).map_err(|source| NetError::Quic { source })?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// Client side: TLS 1.3, server chain verified against the CA, our certificate presented.
fn client_config(
    identity: &Identity,
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    alpns: Vec<Vec<u8>>,
) -> Result<quinn::ClientConfig, NetError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| NetError::Ca {
            detail: e.to_string(),
        })?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| NetError::Tls { source })?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(identity.cert_chain(), identity.private_key())
        .map_err(|source| NetError::Tls { source })?;
    tls.alpn_protocols = alpns;
    let quic = QuicClientConfig::try_from(tls).map_err(|source| NetError::Quic { source })?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// [`transport_config_with`] the default [`Timeouts`].
pub fn transport_config() -> TransportConfig {
    transport_config_with(&Timeouts::default())
}

/// Keep-alive and idle timeout from `timeouts`; flow-control windows and stream limits; shared
/// by both sides.
pub fn transport_config_with(timeouts: &Timeouts) -> TransportConfig {
    let idle = IdleTimeout::try_from(timeouts.idle).unwrap_or(IdleTimeout::from(VarInt::MAX));
    let mut transport = TransportConfig::default();
    transport
        .keep_alive_interval(Some(timeouts.keep_alive))
        .max_idle_timeout(Some(idle))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        // One chunk answer after another, not all of them interleaved: a chunk is of use
        // (verifiable, servable onwards) only once whole, so finishing the oldest first gets
        // every chunk to its requester soonest. Control streams go first by priority.
        .send_fairness(false)
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_BIDI_STREAMS));
    transport
}

/// [`connect_within`] the default connect timeout.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    expected_name: Option<&str>,
) -> Result<(quinn::Connection, PeerIdentity), NetError> {
    connect_within(endpoint, addr, expected_name, Timeouts::default().connect).await
}

/// Dials `addr`, waits until the peer has accepted our certificate, and returns the connection
/// with the peer's identity; fails with [`NetError::Timeout`] after `limit` (the
/// [`Timeouts::connect`] of the caller). With `expected_name`, a peer by any other name is an
/// error.
pub async fn connect_within(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    expected_name: Option<&str>,
    limit: Duration,
) -> Result<(quinn::Connection, PeerIdentity), NetError> {
    let deadline = Instant::now() + limit;
    let timeout = NetError::Timeout { addr, after: limit };
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|source| NetError::Connect { addr, source })?;
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Err(_) => return Err(timeout),
        Ok(Err(ConnectionError::TimedOut)) => return Err(timeout),
        Ok(result) => result.map_err(|e| connection_error(addr, e))?,
    };
    await_confirmation(&conn, deadline, limit).await?;
    let peer = peer_identity(&conn)?;
    match expected_name {
        Some(expected) if expected != peer.name => {
            conn.close(CLOSE_UNEXPECTED_PEER, b"unexpected peer name");
            Err(NetError::UnexpectedPeer {
                addr,
                found: peer.name,
                expected: expected.into(),
            })
        }
        _ => Ok((conn, peer)),
    }
}

/// Completes an incoming connection and returns it with the peer's identity. A peer whose
/// certificate the CA did not sign fails here, before any stream is opened.
pub async fn accept(incoming: quinn::Incoming) -> Result<(quinn::Connection, PeerIdentity), NetError> {
    let addr = incoming.remote_address();
    let conn = incoming.await.map_err(|e| connection_error(addr, e))?;
    let peer = peer_identity(&conn)?;
    Ok((conn, peer))
}

/// Waits for the server's HANDSHAKE_DONE, which it sends only after accepting our certificate,
/// so that a refusal surfaces here rather than on the first stream.
async fn await_confirmation(
    conn: &quinn::Connection,
    deadline: Instant,
    limit: Duration,
) -> Result<(), NetError> {
    let addr = conn.remote_address();
    while conn.stats().frame_rx.handshake_done == 0 {
        tokio::select! {
            err = conn.closed() => return Err(connection_error(addr, err)),
            _ = tokio::time::sleep_until(deadline) => return Err(NetError::Timeout { addr, after: limit }),
            _ = tokio::time::sleep(CONFIRM_POLL) => {}
        }
    }
    Ok(())
}

/// Maps a quinn connection error to a [`NetError`], singling out certificate rejections
/// (ours by the peer, or the peer's by us) and timeouts.
pub fn connection_error(addr: SocketAddr, err: ConnectionError) -> NetError {
    let alert = match &err {
        ConnectionError::TransportError(e) => Some(e.code),
        ConnectionError::ConnectionClosed(close) => Some(close.error_code),
        _ => None,
    };
    let rejected = alert.is_some_and(is_certificate_alert);
    if alert == Some(TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL)) {
        return NetError::OtherVersion { addr };
    }
    match err {
        // Reported as a dial that got no answer, as before the connect timeout was a setting.
        ConnectionError::TimedOut => NetError::Timeout {
            addr,
            after: Timeouts::default().connect,
        },
        err if rejected => NetError::Untrusted {
            addr,
            detail: err.to_string(),
        },
        source => NetError::Connection { addr, source },
    }
}

/// Whether a QUIC error code carries a TLS alert about certificates (code = 0x100 + alert).
fn is_certificate_alert(code: TransportErrorCode) -> bool {
    CERTIFICATE_ALERTS
        .iter()
        .any(|&alert| code == TransportErrorCode::crypto(alert))
}

/// The name and role in the peer's certificate (already verified against the CA by TLS).
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, NetError> {
    let addr = conn.remote_address();
    let unusable = |detail: &str| NetError::PeerCertificate {
        addr,
        detail: detail.into(),
    };
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| unusable("it presented no certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| unusable("it presented an empty chain"))?;
    let (name, role) = identity::cert_subject(leaf).map_err(unusable)?;
    Ok(PeerIdentity { name, role })
}

#[cfg(test)]
#[path = "tests/endpoint.rs"]
mod tests;
