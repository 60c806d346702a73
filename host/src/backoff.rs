//! Retry delays for background loops: exponential with full jitter (the
//! `backon` crate), so hosts that failed together do not retry together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays between attempts, from `min` doubling up to `max`, each drawn at
/// random below the current bound; `reset` after a success.
pub struct Backoff {
    builder: ExponentialBuilder,
    current: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays from `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let builder =
            ExponentialBuilder::default().with_min_delay(min).with_max_delay(max).with_jitter().without_max_times();
        Backoff { current: builder.build(), builder, max }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // With jitter, backon adds up to one current delay on top of it;
        // stay within the bound the caller asked for.
        self.current.next().unwrap_or(self.max).min(self.max)
    }

    /// Starts again from the shortest delay.
    pub fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_bounded_jitter_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_secs(2)), "{delays:?}");
        assert!(delays[8..].iter().any(|d| *d > Duration::from_millis(500)), "they grow: {delays:?}");
        let mut other = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let theirs: Vec<Duration> = (0..12).map(|_| other.next_delay()).collect();
        assert_ne!(delays, theirs, "two backoffs do not retry in lockstep");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
    }
}
