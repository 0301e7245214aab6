//! Harness for the integration tests: real Docker Engines, registry-free images, real
//! agent processes. `tests/it/main.rs` declares it once for every test module. It uses
//! std, tempfile and serde_json only, never the p2pimg library: it drives the program
//! from the outside.
//!
//! - [`process`]: `run_with_timeout`, signals, finding and killing leftover processes.
//! - [`dockerd`]: [`Dockerd`], a private dockerd per simulated node (20.10, or Docker 26
//!   with either image store: [`DockerdKind`]), under
//!   `/tmp/p2pimg-test-*`, removed on drop (and reaped by the next run if a test process
//!   died without dropping it).
//! - [`image`]: [`build_test_image`], a multi-layer image from `docker import` of a
//!   generated busybox rootfs and a legacy `docker build` with two `COPY` layers.
//! - [`agent`]: [`Agent`], a `p2pimg agent` process, and [`AgentConfig`], its agent.toml.
//! - [`cluster`]: [`Cluster`], a seed engine and N nodes with agents and a CA; [`Push`], a parsed `push --json`.
//! - [`netns`]: [`Net`], hosts in network namespaces on a bridge, for cut, slow and lossy links.
//! - [`podman`]: [`Podman`], a private podman serving the Docker-compatible API,
//!   under `/tmp/p2pimg-test-*` like a [`Dockerd`].
//!
//! Everything that fails panics with a message naming what failed and showing the
//! daemon's or agent's log: this is a test harness.

pub mod agent;
pub mod cluster;
pub mod containerd;
pub mod dockerd;
pub mod image;
pub mod netns;
pub mod podman;
pub mod process;

pub use agent::{chunk_files, Agent, AgentConfig};
pub use cluster::{Cluster, ClusterOptions, Push};
pub use dockerd::{Dockerd, DockerdKind, DockerdOptions};
pub use image::{build_test_image, build_test_image_with, ImageOptions, TestImage, HELLO_PATH};
pub use netns::Net;
pub use podman::Podman;
pub use process::{run_ok, run_with_timeout};

/// The p2pimg binary under test.
pub fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_p2pimg"))
}

/// Runs p2pimg with `args` (two minutes at most); returns (exit code, stdout, stderr).
pub fn p2pimg(args: &[&str]) -> (i32, String, String) {
    let out = run_with_timeout(std::process::Command::new(bin()).args(args), 120);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}
