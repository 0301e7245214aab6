//! `Arrivals`: which chunks of a distribution are verified in the store, for
//! a reader on a blocking thread that takes them in order while the swarm
//! still fetches the rest: the node's `docker load` streams the archive as
//! its chunks arrive instead of starting once the last one is in.
//!
//! The swarm marks each chunk as it is verified and closes the arrivals when
//! fetching fails; the reader waits for one chunk at a time, and gives up
//! when they close or when its own load is cancelled.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How often a waiting reader looks at its cancellation: a cancelled load
/// releases its thread within this time.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Why a chunk will not arrive for the reader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// Fetching stopped before the chunk arrived.
    #[error("fetching stopped before every chunk arrived: {0}")]
    Closed(String),
    /// The reader's own work was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Held chunks of one distribution, waited on one at a time.
#[derive(Debug)]
pub struct Arrivals {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    held: Vec<bool>,
    closed: Option<String>,
}

impl Arrivals {
    /// `held[i]`: chunk `i` is already in the store (or will never come and
    /// need not be waited for).
    pub fn new(held: Vec<bool>) -> Self {
        Arrivals {
            state: Mutex::new(State { held, closed: None }),
            changed: Condvar::new(),
        }
    }

    /// Every chunk of a distribution of `len` chunks is in the store.
    pub fn all(len: usize) -> Self {
        Self::new(vec![true; len])
    }

    /// Chunk `i` is verified in the store.
    pub fn mark(&self, i: u32) {
        let mut state = self.state.lock().expect("arrivals lock");
        if let Some(slot) = state.held.get_mut(i as usize) {
            *slot = true;
            self.changed.notify_all();
        }
    }

    /// No more chunks will arrive, because of `reason`; chunks already held
    /// can still be read.
    pub fn close(&self, reason: &str) {
        let mut state = self.state.lock().expect("arrivals lock");
        if state.closed.is_none() {
            state.closed = Some(reason.to_string());
        }
        self.changed.notify_all();
    }

    /// Blocks until chunk `i` is held, the arrivals close, or `cancelled()`
    /// turns true. An index outside the distribution does not wait: reading
    /// it fails on its own.
    pub fn wait(&self, i: u32, cancelled: &dyn Fn() -> bool) -> Result<(), WaitError> {
        let mut state = self.state.lock().expect("arrivals lock");
        loop {
            if state.held.get(i as usize).copied().unwrap_or(true) {
                return Ok(());
            }
            if let Some(reason) = &state.closed {
                return Err(WaitError::Closed(reason.clone()));
            }
            if cancelled() {
                return Err(WaitError::Cancelled);
            }
            state = self
                .changed
                .wait_timeout(state, CANCEL_POLL)
                .expect("arrivals lock")
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn held_chunks_and_out_of_range_indices_do_not_wait() {
        let arrivals = Arrivals::new(vec![true, false]);
        assert_eq!(arrivals.wait(0, &|| false), Ok(()));
        assert_eq!(arrivals.wait(7, &|| false), Ok(()));
    }

    #[test]
    fn a_reader_waits_for_chunks_marked_from_another_thread() {
        let arrivals = Arc::new(Arrivals::new(vec![false; 3]));
        let reader = {
            let arrivals = arrivals.clone();
            std::thread::spawn(move || (0..3).map(|i| arrivals.wait(i, &|| false)).collect::<Vec<_>>())
        };
        for i in [2, 0, 1] {
            std::thread::sleep(Duration::from_millis(20));
            arrivals.mark(i);
        }
        assert_eq!(reader.join().unwrap(), vec![Ok(()); 3]);
    }

    #[test]
    fn closing_releases_a_waiting_reader_with_the_reason_but_keeps_held_chunks() {
        let arrivals = Arc::new(Arrivals::new(vec![true, false]));
        let reader = {
            let arrivals = arrivals.clone();
            std::thread::spawn(move || arrivals.wait(1, &|| false))
        };
        std::thread::sleep(Duration::from_millis(20));
        arrivals.close("the chunk store failed");
        arrivals.close("a later reason is not kept");
        let closed = WaitError::Closed("the chunk store failed".into());
        assert_eq!(reader.join().unwrap(), Err(closed));
        assert_eq!(arrivals.wait(0, &|| false), Ok(()));
    }

    #[test]
    fn a_cancelled_reader_stops_waiting() {
        let arrivals = Arc::new(Arrivals::new(vec![false]));
        let cancelled = Arc::new(AtomicBool::new(false));
        let reader = {
            let (arrivals, cancelled) = (arrivals.clone(), cancelled.clone());
            std::thread::spawn(move || arrivals.wait(0, &|| cancelled.load(Ordering::Relaxed)))
        };
        std::thread::sleep(Duration::from_millis(20));
        cancelled.store(true, Ordering::Relaxed);
        assert_eq!(reader.join().unwrap(), Err(WaitError::Cancelled));
    }
}
