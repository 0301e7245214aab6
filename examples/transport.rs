//! Transport benchmark: p2pimg's QUIC path against one plain TCP connection on the same link,
//! with quinn's congestion controller selectable. `scripts/bench-transport.sh` runs it between
//! two shaped network namespaces and prints the table.
//!
//! The QUIC modes use what the agents use: [`net::endpoint_with`] (mutual TLS against a cluster
//! CA made by `identity::init_cluster`, as `p2pimg init` does) with [`net::transport_config`],
//! and the frame code of [`p2pimg::wire`]. The client fetches the way the swarm does: one
//! bidirectional stream per chunk carrying a `Request`, answered with one `Message::Chunk` of
//! 1 MiB, `--in-flight` requests at once; the server answers at most `--slots` at a time, each
//! holding its slot until the client has acknowledged every byte (as `serve.rs` does). The TCP
//! modes send the same `Message::Chunk` frames back to back on one connection, unencrypted.
//!
//! ```text
//! transport init DIR
//! transport quic-server --dir DIR --listen 10.78.0.1:7790 --cc bbr
//! transport quic-client --dir DIR --connect 10.78.0.1:7790 --cc bbr --mb 200
//! transport tcp-server --listen 10.78.0.1:7791 --tcp-cc cubic
//! transport tcp-client --connect 10.78.0.1:7791 --mb 200
//! ```
//!
//! The server sends and the client receives. Each prints one line of `key=value` fields: the
//! client `bytes= secs= mb_per_s= cpu_s=` when the transfer is over, the server `cpu_s=` when
//! the client has gone. `cpu_s` is user + system time (getrusage) from the connection's start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use p2pimg::content::hash::Hash;
use p2pimg::content::pack::DEFAULT_CHUNK_SIZE;
use p2pimg::net;
use p2pimg::net::identity::{self, Identity, Role};
use p2pimg::swarm::{CONTROL_PRIORITY, DEFAULT_MAX_IN_FLIGHT};
use p2pimg::wire::{self, read_frame, write_frame, Message};
use quinn::congestion::{BbrConfig, ControllerFactory, CubicConfig, NewRenoConfig};
use rand::RngCore;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Certificate name of the sending side.
const SERVER: &str = "bench-server";
/// Certificate name of the receiving side.
const CLIENT: &str = "bench-client";
/// Answers a server sends one peer at once: `serve.rs`'s `SLOTS_PER_PEER`.
const DEFAULT_SLOTS: usize = 2;
/// Validity of the benchmark's certificates: they live for one run.
const CERT_DAYS: u32 = 1;

#[derive(Parser)]
#[command(about = "p2pimg's QUIC chunk path vs plain TCP, one transfer per run")]
enum Cli {
    /// Make a cluster CA and the two identities in DIR.
    Init { dir: PathBuf },
    /// Serve 1 MiB chunk answers over QUIC to one client, then exit.
    QuicServer {
        #[command(flatten)]
        quic: QuicArgs,
        #[arg(long)]
        listen: SocketAddr,
        /// Chunk answers on the wire at once.
        #[arg(long, default_value_t = DEFAULT_SLOTS)]
        slots: usize,
    },
    /// Fetch `--mb` MB of chunks over QUIC, a request stream per chunk.
    QuicClient {
        #[command(flatten)]
        quic: QuicArgs,
        #[arg(long)]
        connect: SocketAddr,
        #[command(flatten)]
        size: SizeArg,
        /// Requests in flight.
        #[arg(long, default_value_t = DEFAULT_MAX_IN_FLIGHT)]
        in_flight: usize,
    },
    /// Send the chunks one client asks for over one TCP connection, then exit.
    TcpServer {
        #[arg(long)]
        listen: SocketAddr,
        /// The kernel's congestion controller for the connection (cubic, reno, bbr…);
        /// default: the system's (`net.ipv4.tcp_congestion_control`).
        #[arg(long)]
        tcp_cc: Option<String>,
    },
    /// Receive `--mb` MB of chunk frames over one TCP connection.
    TcpClient {
        #[arg(long)]
        connect: SocketAddr,
        #[command(flatten)]
        size: SizeArg,
    },
}

/// What both QUIC sides need.
#[derive(clap::Args)]
struct QuicArgs {
    /// The directory `init` wrote.
    #[arg(long)]
    dir: PathBuf,
    /// quinn's congestion controller (both sides; the server's is the one that paces data).
    #[arg(long, value_enum, default_value_t = Cc::Cubic)]
    cc: Cc,
}

/// How much to transfer.
#[derive(clap::Args)]
struct SizeArg {
    /// Megabytes (10^6 bytes), rounded up to whole 1 MiB chunks.
    #[arg(long, default_value_t = 200)]
    mb: u64,
}

impl SizeArg {
    fn chunks(&self) -> u32 {
        (self.mb * 1_000_000).div_ceil(u64::from(DEFAULT_CHUNK_SIZE)) as u32
    }
}

/// quinn's congestion controllers.
#[derive(Clone, Copy, ValueEnum)]
enum Cc {
    /// quinn's default.
    Cubic,
    #[value(name = "newreno")]
    NewReno,
    /// Marked experimental by quinn.
    Bbr,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match Cli::parse() {
        Cli::Init { dir } => init(&dir),
        Cli::QuicServer { quic, listen, slots } => runtime.block_on(quic_server(quic, listen, slots)),
        Cli::QuicClient {
            quic,
            connect,
            size,
            in_flight,
        } => runtime.block_on(quic_client(quic, connect, size.chunks(), in_flight)),
        Cli::TcpServer { listen, tcp_cc } => runtime.block_on(tcp_server(listen, tcp_cc)),
        Cli::TcpClient { connect, size } => runtime.block_on(tcp_client(connect, size.chunks())),
    }
}

/// A cluster CA and the server's and client's node identities, as `p2pimg init` and
/// `p2pimg cert issue` make them.
fn init(dir: &Path) -> anyhow::Result<()> {
    identity::init_cluster(dir)?;
    for name in [SERVER, CLIENT] {
        identity::issue(dir, name, Role::Node, CERT_DAYS)?;
    }
    Ok(())
}

/// p2pimg's transport configuration with congestion controller `cc`.
fn transport(cc: Cc) -> quinn::TransportConfig {
    let factory: Arc<dyn ControllerFactory + Send + Sync> = match cc {
        Cc::Cubic => Arc::new(CubicConfig::default()),
        Cc::NewReno => Arc::new(NewRenoConfig::default()),
        Cc::Bbr => Arc::new(BbrConfig::default()),
    };
    let mut transport = net::transport_config();
    transport.congestion_controller_factory(factory);
    transport
}

/// One chunk's worth of random bytes: incompressible, like the zstd chunks the swarm carries.
fn chunk_data() -> Vec<u8> {
    let mut data = vec![0u8; DEFAULT_CHUNK_SIZE as usize];
    rand::thread_rng().fill_bytes(&mut data);
    data
}

async fn quic_server(args: QuicArgs, listen: SocketAddr, slots: usize) -> anyhow::Result<()> {
    let identity = Identity::load_from_dir(&args.dir, SERVER)?;
    let endpoint = net::endpoint_with(&identity, listen, transport(args.cc))?;
    println!("listening on {}", endpoint.local_addr()?);
    let incoming = endpoint.accept().await.context("endpoint closed")?;
    let (conn, _peer) = net::accept(incoming).await?;
    let meter = Meter::start();
    let data = Arc::new(chunk_data());
    let slots = Arc::new(Semaphore::new(slots));
    let mut answers = JoinSet::new();
    while let Ok((send, recv)) = conn.accept_bi().await {
        answers.spawn(answer(send, recv, data.clone(), slots.clone()));
        while answers.try_join_next().is_some() {}
    }
    answers.join_all().await;
    println!("cpu_s={:.3}", meter.cpu_seconds());
    endpoint.wait_idle().await;
    Ok(())
}

/// Answers one request stream with a chunk, holding a slot until it is acknowledged.
async fn answer(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    data: Arc<Vec<u8>>,
    slots: Arc<Semaphore>,
) {
    let Ok(Message::Request { .. }) = read_frame(&mut recv, wire::MAX_FIRST_FRAME).await else {
        return;
    };
    let Ok(_slot) = slots.acquire().await else {
        return;
    };
    // A copy per answer, as the agent reads each answer from its store into a fresh buffer.
    let chunk = Message::Chunk {
        data: data.as_ref().clone(),
    };
    if write_frame(&mut send, &chunk).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

async fn quic_client(
    args: QuicArgs,
    server: SocketAddr,
    chunks: u32,
    in_flight: usize,
) -> anyhow::Result<()> {
    let identity = Identity::load_from_dir(&args.dir, CLIENT)?;
    let bind = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
    let endpoint = net::endpoint_with(&identity, bind, transport(args.cc))?;
    let (conn, _peer) = net::connect(&endpoint, server, Some(SERVER)).await?;
    let meter = Meter::start();
    let dist = Hash::of(b"transport benchmark");
    let mut fetches = JoinSet::new();
    let (mut next, mut bytes) = (0, 0);
    loop {
        while fetches.len() < in_flight && next < chunks {
            fetches.spawn(fetch(conn.clone(), dist, next));
            next += 1;
        }
        match fetches.join_next().await {
            Some(fetched) => bytes += fetched??,
            None => break,
        }
    }
    meter.report(bytes);
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(())
}

/// Requests chunk `index` on a fresh stream, as the swarm's `fetch` does, and returns its size.
async fn fetch(conn: quinn::Connection, dist: Hash, index: u32) -> anyhow::Result<u64> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let _ = send.set_priority(CONTROL_PRIORITY);
    write_frame(&mut send, &Message::Request { dist, index }).await?;
    let _ = send.finish();
    chunk_len(read_frame(&mut recv, wire::MAX_FRAME).await?)
}

/// The size of a `Chunk` answer's data; anything else is an error.
fn chunk_len(msg: Message) -> anyhow::Result<u64> {
    match msg {
        Message::Chunk { data } => Ok(data.len() as u64),
        other => bail!("expected a Chunk, got {}", other.kind()),
    }
}

async fn tcp_server(listen: SocketAddr, cc: Option<String>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on TCP {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    let (mut stream, _) = listener.accept().await?;
    if let Some(cc) = cc {
        set_tcp_congestion(&stream, &cc)?;
    }
    let meter = Meter::start();
    let chunks = tokio::io::AsyncReadExt::read_u32(&mut stream).await?;
    let data = chunk_data();
    for _ in 0..chunks {
        let chunk = Message::Chunk { data: data.clone() };
        write_frame(&mut stream, &chunk).await?;
    }
    stream.shutdown().await?;
    // Wait for the client to close, so that the CPU of the whole transfer is counted.
    let _ = tokio::io::AsyncReadExt::read_u8(&mut stream).await;
    println!("cpu_s={:.3}", meter.cpu_seconds());
    Ok(())
}

async fn tcp_client(server: SocketAddr, chunks: u32) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(server)
        .await
        .with_context(|| format!("cannot connect to TCP {server}"))?;
    let meter = Meter::start();
    stream.write_u32(chunks).await?;
    let mut bytes = 0;
    for _ in 0..chunks {
        bytes += chunk_len(read_frame(&mut stream, wire::MAX_FRAME).await?)?;
    }
    meter.report(bytes);
    Ok(())
}

/// Sets the kernel congestion controller of `stream` (TCP_CONGESTION).
fn set_tcp_congestion(stream: &TcpStream, cc: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the name is a valid buffer of the given length for the call's duration, and the
    // descriptor is owned by `stream`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            cc.as_ptr().cast(),
            cc.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "cannot use TCP congestion control {cc:?}: {err} (see net.ipv4.tcp_available_congestion_control)"
        );
    }
    Ok(())
}

/// Wall-clock and CPU time since a transfer started.
struct Meter {
    wall: Instant,
    cpu: f64,
}

impl Meter {
    fn start() -> Self {
        Meter {
            wall: Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }

    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds() - self.cpu
    }

    /// Prints the receiving side's line for `bytes` received.
    fn report(&self, bytes: u64) {
        let secs = self.wall.elapsed().as_secs_f64();
        let mb_per_s = bytes as f64 / 1e6 / secs;
        let cpu = self.cpu_seconds();
        println!("bytes={bytes} secs={secs:.3} mb_per_s={mb_per_s:.1} cpu_s={cpu:.3}");
    }
}

/// User + system CPU time of this process so far, every thread included.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which is zeroed and owned here.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
