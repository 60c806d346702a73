//! How much memory event bodies may hold at once, and how fast each event
//! source may send.
//!
//! Deliveries come from the internet, and their signature can only be
//! checked once the whole body is read: a flood of 25 MiB posts with a
//! made-up signature would otherwise have the host buffer 25 MiB per
//! connection. Bodies are reserved against a budget before they are read:
//! small ones (at most [`SMALL_BODY`], what nearly every real webhook is)
//! from a pool of their own, so big ones cannot starve them; big ones (and
//! bodies of unknown length, counted at the size limit) from the main pool.
//! A delivery that cannot get its share in time is answered 503 with
//! Retry-After, and nothing is stored.
//!
//! The optional per-source rate (`AUTOMATION_EVENT_RATE_PER_SOURCE`) is a
//! GCRA limiter from the `governor` crate, keyed by source name and checked
//! before the body is read.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Error;

/// Bodies up to this size use the small-body pool.
pub(super) const SMALL_BODY: usize = 1 << 20;

/// The two pools, in KiB.
pub(super) struct BodyBudget {
    small: Arc<Semaphore>,
    small_kib: u32,
    large: Arc<Semaphore>,
    large_kib: u32,
    wait: Duration,
}

/// A body's share of the budget, given back when dropped.
pub(super) struct Reserved(#[allow(dead_code)] OwnedSemaphorePermit);

impl BodyBudget {
    /// `large_mib` for big bodies, a quarter of it (at least 2 MiB) for small
    /// ones; a delivery waits at most `wait` for its share.
    pub(super) fn new(large_mib: u64, wait: Duration) -> BodyBudget {
        let large_kib = u32::try_from(large_mib.saturating_mul(1024)).unwrap_or(u32::MAX >> 4).max(1);
        let small_kib = (large_kib / 4).max(2048);
        BodyBudget {
            small: Arc::new(Semaphore::new(small_kib as usize)),
            small_kib,
            large: Arc::new(Semaphore::new(large_kib as usize)),
            large_kib,
            wait,
        }
    }

    /// Reserves room for a body of `declared` bytes (its Content-Length;
    /// `None`: unknown, counted as `limit`).
    pub(super) async fn reserve(&self, declared: Option<usize>, limit: usize) -> Result<Reserved, Error> {
        let (pool, cap) = match declared {
            Some(n) if n <= SMALL_BODY => (&self.small, self.small_kib),
            _ => (&self.large, self.large_kib),
        };
        let bytes = declared.unwrap_or(limit).min(limit);
        // A body bigger than the whole pool takes the whole pool.
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, cap);
        match tokio::time::timeout(self.wait, pool.clone().acquire_many_owned(kib)).await {
            Ok(Ok(permit)) => Ok(Reserved(permit)),
            _ => Err(Error::Unavailable(
                "too many large deliveries are being received at once; nothing was stored, retry later".into(),
            )),
        }
    }
}

/// Deliveries per second per source, if limited.
pub(super) struct SourceRate(Option<governor::DefaultKeyedRateLimiter<String>>);

impl SourceRate {
    /// `per_second` with bursts of as many; `None`: unlimited.
    pub(super) fn new(per_second: Option<std::num::NonZeroU32>) -> SourceRate {
        SourceRate(per_second.map(|n| governor::RateLimiter::keyed(governor::Quota::per_second(n))))
    }

    /// Takes one delivery's place for `source`, or 429. Only known sources
    /// are passed here, so the limiter holds a bounded set of keys.
    pub(super) fn check(&self, source: &str) -> Result<(), Error> {
        let Some(limiter) = &self.0 else { return Ok(()) };
        limiter.check_key(&source.to_owned()).map_err(|_| {
            Error::TooManyRequests(format!(
                "source {source} is sending faster than this host accepts (AUTOMATION_EVENT_RATE_PER_SOURCE); \
                 nothing was stored, retry later"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn big_bodies_wait_for_room_and_small_ones_do_not() {
        let budget = BodyBudget::new(4, Duration::from_millis(50));
        let big = budget.reserve(Some(3 << 20), 25 << 20).await.unwrap();
        // Another 3 MiB does not fit; unknown length counts as the limit.
        assert!(matches!(budget.reserve(Some(3 << 20), 25 << 20).await, Err(Error::Unavailable(_))));
        assert!(budget.reserve(None, 25 << 20).await.is_err());
        // Small bodies have their own pool.
        let smalls: Vec<_> = futures::future::join_all((0..2).map(|_| budget.reserve(Some(14_000), 25 << 20))).await;
        assert!(smalls.iter().all(Result::is_ok));
        drop(big);
        assert!(budget.reserve(Some(3 << 20), 25 << 20).await.is_ok(), "room comes back when a body is dropped");
        // Bigger than the pool: takes all of it, still possible.
        assert!(budget.reserve(Some(100 << 20), 200 << 20).await.is_ok());
    }

    #[test]
    fn each_source_has_its_own_rate() {
        let rate = SourceRate::new(std::num::NonZeroU32::new(3));
        assert!((0..3).all(|_| rate.check("github").is_ok()));
        assert!(matches!(rate.check("github"), Err(Error::TooManyRequests(_))));
        assert!(rate.check("other").is_ok(), "another source is not slowed down");
        assert!((0..100).all(|_| SourceRate::new(None).check("github").is_ok()));
    }
}
