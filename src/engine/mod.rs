//! A node's container engine: export images into chunks on the seed, load
//! them from verified chunks on each node, whatever the engine's kind.
//!
//! - [`node`]: [`Engine`], the one interface: connect by [`EngineSpec`]
//!   (Docker, with its classic or containerd image store; containerd;
//!   podman), what it holds, load, tag, identify, export.
//! - [`kinds`]: what that interface talks about: [`Kind`], [`EngineSpec`],
//!   [`About`], [`Held`], [`Identity`].
//! - [`docker`]: [`DockerApi`], the bollard client for the Docker API
//!   (Docker Engine and podman): inspect, list, `docker save`, `docker
//!   load`, tag.
//! - [`containerd`]: [`Containerd`](containerd::Containerd), the gRPC client
//!   for containerd: images, content, snapshots, unpack, export.
//! - [`save`]: a `docker save` stream (legacy or OCI layout) → stored chunks
//!   and a [`Manifest`](crate::content::manifest::Manifest).
//! - [`export`]: [`export_to_manifest`], an engine's export stream fed to
//!   [`save`] on a blocking thread.
//! - [`load`]: the minimal `docker load` archive from verified chunks (as
//!   they arrive, while the node still fetches), streamed into the Docker
//!   API and tagged.
//! - [`oci_layout`]: the same archive as an OCI layout, which podman loads
//!   with layers left out.
//! - [`import`]: the same into containerd: layer blobs streamed into its
//!   content store, then config, manifest, unpack, names.
//! - [`progress`]: which `POST /images/load` progress messages are failures.

pub mod containerd;
pub mod docker;
pub mod export;
pub mod import;
pub mod kinds;
pub mod load;
pub mod node;
pub mod oci_layout;
pub mod progress;
pub mod save;

pub use docker::{split_reference, DockerApi, EngineError, ResolvedImage, LOAD_TIMEOUT};
pub use export::{export_to_manifest, ExportError};
pub use kinds::{About, EngineSpec, Held, HeldLayers, Identity, Kind};
pub use load::{load_images, write_load_tar, Layout, LoadError, LoadRequest, LoadTarError};
pub use node::Engine;
pub use save::{check_repo_tags, parse_save, SaveError};
