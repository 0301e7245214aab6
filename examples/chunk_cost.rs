//! CPU cost per byte of the chunk stages an agent runs, on real data: how
//! much each would save if relays verified chunks without decompressing them
//! (issue #20). Single-threaded, so the figures are CPU-seconds.
//!
//! ```text
//! cargo run --release --example chunk_cost -- FILE [--level 3]
//! ```
//!
//! FILE is cut into chunks of [`DEFAULT_CHUNK_SIZE`] and compressed at
//! `--level` (the packer's default), as a push does. Then, over every chunk,
//! it times:
//! - `encode`: compress + hash the content (the seed, once per byte);
//! - `verify_today`: [`decode_chunk`], decompress and hash the content (what
//!   every agent does to every chunk it receives, before passing it on);
//! - `decompress`: decompress alone (what a load needs in any scheme);
//! - `hash_compressed`: BLAKE3 of the compressed bytes (a relay's check if
//!   chunks were addressed by their compressed bytes);
//! - `hash_content`: BLAKE3 of the content.
//!
//! Times are this thread's CPU time. Each prints CPU-seconds per GB of compressed bytes moved (what crosses the
//! network and what the swarm benchmark counts) and per GB of content.

use anyhow::Context;
use p2pimg::content::chunk::{decode_chunk, encode_chunk};
use p2pimg::content::hash::Hash;
use p2pimg::content::pack::{DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().context("usage: chunk_cost FILE [--level N]")?;
    let level = match (args.next().as_deref(), args.next()) {
        (Some("--level"), Some(n)) => n.parse().context("--level takes a number")?,
        _ => DEFAULT_ZSTD_LEVEL,
    };
    let data = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let raw: Vec<&[u8]> = data.chunks(DEFAULT_CHUNK_SIZE as usize).collect();
    let started = thread_cpu();
    let chunks: Vec<_> = raw.iter().map(|c| encode_chunk(c, level)).collect();
    let encode = thread_cpu() - started;
    let content = data.len() as f64 / 1e9;
    let moved = chunks.iter().map(|(_, z)| z.len()).sum::<usize>() as f64 / 1e9;
    println!(
        "{path}: {:.0} MB content, {:.0} MB compressed at level {level} ({:.2}×), {} chunks",
        content * 1e3,
        moved * 1e3,
        content / moved,
        chunks.len()
    );
    println!(
        "{:<16} {:>10} {:>16} {:>16}",
        "stage", "seconds", "s / GB moved", "s / GB content"
    );
    let row = |name: &str, secs: f64| {
        println!(
            "{name:<16} {secs:>10.3} {:>16.3} {:>16.3}",
            secs / moved,
            secs / content
        );
    };
    row("encode", encode);
    row(
        "verify_today",
        time(|| {
            chunks.iter().for_each(|(e, z)| {
                std::hint::black_box(decode_chunk(e, z).expect("valid"));
            })
        }),
    );
    row(
        "decompress",
        time(|| {
            chunks.iter().for_each(|(e, z)| {
                std::hint::black_box(zstd::bulk::decompress(z, e.size as usize).expect("valid"));
            })
        }),
    );
    row(
        "hash_compressed",
        time(|| {
            chunks.iter().for_each(|(_, z)| {
                std::hint::black_box(Hash::of(z));
            })
        }),
    );
    row(
        "hash_content",
        time(|| {
            raw.iter().for_each(|c| {
                std::hint::black_box(Hash::of(c));
            })
        }),
    );
    Ok(())
}

/// CPU-seconds of this thread `f` took, best of three: CPU time rather than
/// the clock, since the machine is shared.
fn time(f: impl Fn()) -> f64 {
    (0..3)
        .map(|_| {
            let started = thread_cpu();
            f();
            thread_cpu() - started
        })
        .fold(f64::MAX, f64::min)
}

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct it is given, owned here.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}
