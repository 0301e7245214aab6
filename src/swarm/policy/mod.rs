//! The swarm's decisions, with no I/O: plain structs driven by the tokio
//! side, unit-tested without a runtime.
//!
//! - [`picker`]: which chunk to request from which peer (rarest-first).
//! - [`seeder`]: what the seed offers to whom, so it uploads each chunk
//!   about once.

pub mod picker;
pub mod seeder;
