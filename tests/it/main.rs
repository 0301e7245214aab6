//! The integration tests, in one binary (as ripgrep keeps its own): each
//! module was once a `tests/*.rs` file of its own, and the harness in [`common`] is
//! compiled once for all of them. Test names carry the module: `cargo test --release
//! --test it push::` runs the push tests only.

mod common;

mod bundle;
mod cli;
mod concurrent;
mod containerd;
mod diskfull;
mod dryrun;
mod engine;
mod engine_restart;
mod engines;
mod fleet;
mod habits;
mod harness;
mod hostile;
mod load;
mod netns;
mod push;
mod resilience;
mod resume;
mod retention;
mod targeting;
mod trust;
mod view;
