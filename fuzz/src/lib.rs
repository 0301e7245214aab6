//! Helpers shared by the fuzz targets and the seed generator.
//!
//! - [`Trickle`]: an in-memory async stream that delivers bytes a few at a
//!   time and is sometimes not ready, like a QUIC receive stream.
//! - [`save_gen`]: builds `docker save` archives (legacy and OCI layouts)
//!   from a fuzzer-chosen description, with optional faults.
//! - [`manifest_gen`]: builds manifests that are valid unless the fuzzer
//!   chooses tweaks that break them.
//! - [`checks`]: what must hold of anything the library accepts.
//! - [`scratch`]: a temporary chunk store reused across runs.
//! - [`seeds`]: small valid inputs for the seed corpora and the tests.
//! - [`block_on`]: runs a future over in-memory streams to completion.

pub mod checks;
pub mod manifest_gen;
pub mod save_gen;
pub mod scratch;
pub mod seeds;
mod trickle;

pub use trickle::Trickle;

/// Polls `future` until it is ready. The streams the targets read are in
/// memory and never wait on anything, so busy polling with a no-op waker is
/// enough, and unlike an executor it may be nested.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}
