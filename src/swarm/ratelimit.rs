//! `RateLimit`: paces the bytes a process uploads to a configured rate, so
//! a push does not saturate a production network.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A pacing limiter: each send reserves its share of time on a shared
/// timeline and waits for its slot. Bursts are at most one chunk.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
}

impl RateLimit {
    /// A limit of `mbit` megabits (10^6 bits) per second.
    pub fn mbit(mbit: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec: mbit.max(1) as f64 * 125_000.0,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let slot = {
            let mut next = self.next.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            start
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate() {
        let limit = RateLimit::mbit(8); // 1 MB/s
        let start = Instant::now();
        for _ in 0..4 {
            limit.acquire(500_000).await;
        }
        // The first send goes at once; three more half-megabytes take 1.5 s.
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
    }
}
