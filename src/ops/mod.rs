//! What an operator sees of a running process, shared by every layer: the
//! [`metrics`] counters (a handle passed to whoever counts) and sizes
//! written for people ([`human`]), and the stop [`signal`]s a process
//! handles.

pub mod metrics;
pub mod signal;

/// Compiles only for an error that `anyhow` (and so the command line) can
/// carry across threads: `const _: () = assert_error_is_send_sync::<E>();`
/// beside an error type fails the build, not a test, when it stops being so.
pub(crate) const fn assert_error_is_send_sync<E: std::error::Error + Send + Sync + 'static>() {}

/// Bytes for people: 1.5 MB, 820 kB, 12 B (decimal units, as `docker images`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
