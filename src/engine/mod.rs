//! The Docker Engine side of p2pimg: export images into chunks on the seed,
//! load them from verified chunks on each node.
//!
//! - [`docker`]: [`Engine`], the bollard client: connect, resolve, what the
//!   engine holds, export, load, tag.
//! - [`save`]: a `docker save` stream (legacy or OCI layout) → stored chunks
//!   and a [`Manifest`](crate::content::manifest::Manifest).
//! - [`export`]: [`export_to_manifest`], the engine's export stream fed to
//!   [`save`] on a blocking thread.
//! - [`load`]: the minimal `docker load` archive from verified chunks (as
//!   they arrive, while the node still fetches), and [`load_images`], which
//!   streams it into the engine and tags the result.
//! - [`progress`]: which `POST /images/load` progress messages are failures.

pub mod containerd;
pub mod docker;
pub mod export;
pub mod load;
pub mod progress;
pub mod save;

pub use docker::{split_reference, Engine, EngineError, Held, ResolvedImage, LOAD_TIMEOUT};
pub use export::{export_to_manifest, ExportError};
pub use load::{load_images, write_load_tar, LoadError, LoadTarError};
pub use save::{check_repo_tags, parse_save, SaveError};
