//! Bandwidth limits (`--limit-upload`, `--limit-download`, and per job):
//! each transfer reserves its share of a timeline at the set rate and waits
//! for its turn, so the long-run rate is the limit whatever the number of
//! transfers in flight. A transfer is a whole chunk, so over a few seconds
//! the rate is exact to within one chunk's worth.

use std::time::Duration;

use tokio::time::Instant;

/// One direction's limit, shared by every transfer of a run.
#[derive(Debug)]
pub struct Limiter {
    bytes_per_sec: f64,
    next: tokio::sync::Mutex<Option<Instant>>,
}

impl Limiter {
    /// A limit of `kib_per_sec` KiB/s (at least 1).
    pub fn kib_per_sec(kib_per_sec: u64) -> Self {
        Self { bytes_per_sec: kib_per_sec.max(1) as f64 * 1024.0, next: tokio::sync::Mutex::new(None) }
    }

    /// Waits until `bytes` may be sent (or have been received) at the limit.
    pub async fn take(&self, bytes: usize) {
        let start = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec));
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// The limits a run observes; `None` is unlimited.
#[derive(Debug, Default, Clone)]
pub struct Limits {
    pub upload: Option<std::sync::Arc<Limiter>>,
    pub download: Option<std::sync::Arc<Limiter>>,
}

impl Limits {
    pub fn new(upload_kib: Option<u64>, download_kib: Option<u64>) -> Self {
        let make = |k: Option<u64>| k.map(|k| std::sync::Arc::new(Limiter::kib_per_sec(k)));
        Self { upload: make(upload_kib), download: make(download_kib) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On tokio's paused clock: 10 transfers of 64 KiB at 128 KiB/s take
    /// 4.5 s of virtual time before the last may start, however many ask at
    /// once.
    #[tokio::test(start_paused = true)]
    async fn transfers_wait_their_turn_at_the_rate() {
        let limit = std::sync::Arc::new(Limiter::kib_per_sec(128));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let l = limit.clone();
                tokio::spawn(async move {
                    l.take(64 * 1024).await;
                    Instant::now()
                })
            })
            .collect();
        let mut starts = Vec::new();
        for t in tasks {
            starts.push(t.await.unwrap() - t0);
        }
        starts.sort();
        assert_eq!(starts[0], Duration::ZERO);
        assert_eq!(starts[9], Duration::from_millis(4500));
        // An idle limiter does not bank credit for a later burst.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let t1 = Instant::now();
        limit.take(64 * 1024).await;
        limit.take(64 * 1024).await;
        assert_eq!(Instant::now() - t1, Duration::from_millis(500));
    }
}
