//! Supervision of the host's background loops.
//!
//! Every loop (scheduler, matcher, group commit, dispatcher, probes) runs
//! under a [`Supervisor`]: a panic inside one is caught, logged with its
//! message, counted in `/metrics` (`automation_background_restarts_total`)
//! and the loop is started again after a jittered backoff, so one bad input
//! cannot leave a host that acknowledges deliveries but never matches them.
//! Shutting down cancels every loop and waits for them through a
//! [`TaskTracker`], up to a deadline, instead of sleeping and hoping.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// Runs background loops, restarts them after a panic, and stops them.
#[derive(Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    /// Where its loops run: the current runtime, or this one.
    runtime: Option<tokio::runtime::Handle>,
}

impl Supervisor {
    /// A supervisor whose loops stop when `stop` is cancelled.
    pub fn new(stop: CancellationToken, metrics: Arc<Metrics>) -> Supervisor {
        Supervisor { tracker: TaskTracker::new(), stop, metrics, runtime: None }
    }

    /// The same supervisor (same stop, same shutdown), starting the loops
    /// it is given from now on on `runtime`.
    pub fn on(&self, runtime: tokio::runtime::Handle) -> Supervisor {
        Supervisor { runtime: Some(runtime), ..self.clone() }
    }

    /// Runs the loop `make(stop)` builds until it returns (it should return
    /// once `stop` is cancelled). If it panics, it is built and started
    /// again, after a backoff that grows while it keeps panicking.
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        let metrics = self.metrics.clone();
        let supervised = async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
            loop {
                let outcome = AssertUnwindSafe(make(stop.clone())).catch_unwind().await;
                let Err(panic) = outcome else { return };
                metrics.background_restarts.add(name, 1);
                if stop.is_cancelled() {
                    tracing::error!(task = name, panic = %panic_message(&*panic), "background loop panicked while stopping");
                    return;
                }
                let delay = backoff.next_delay();
                tracing::error!(
                    task = name,
                    panic = %panic_message(&*panic),
                    restart_ms = delay.as_millis() as u64,
                    "background loop panicked; restarting it"
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        };
        match &self.runtime {
            Some(runtime) => drop(self.tracker.spawn_on(supervised, runtime)),
            None => drop(self.tracker.spawn(supervised)),
        }
    }

    /// Cancels every loop and waits until they have returned, or until
    /// `deadline`; true if they all did.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) -> bool {
        self.stop.cancel();
        self.tracker.close();
        let done = tokio::time::timeout_at(deadline, self.tracker.wait()).await.is_ok();
        if !done {
            tracing::warn!(left = self.tracker.len(), "background loops did not stop in time");
        }
        done
    }
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_panicking_loop_is_counted_restarted_and_stopped() {
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let sup = Supervisor::new(stop.clone(), metrics.clone());
        let starts = Arc::new(AtomicUsize::new(0));
        let counter = starts.clone();
        sup.spawn("flaky", move |stop| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                assert!(n >= 2, "deliberate panic number {n}");
                stop.cancelled().await;
            }
        });
        // Two backoffs of at most 200 ms and 400 ms.
        for _ in 0..100 {
            if starts.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 3, "two panics, two restarts");
        assert!(
            metrics.render().contains("automation_background_restarts_total{loop=\"flaky\"} 2"),
            "{}",
            metrics.render()
        );
        assert!(sup.shutdown(tokio::time::Instant::now() + Duration::from_secs(1)).await);
        assert_eq!(starts.load(Ordering::SeqCst), 3, "not restarted after a clean stop");
    }

    #[tokio::test]
    async fn shutdown_reports_a_loop_that_ignores_its_stop() {
        let sup = Supervisor::new(CancellationToken::new(), Arc::new(Metrics::default()));
        sup.spawn("stubborn", |_stop| async { tokio::time::sleep(Duration::from_secs(3600)).await });
        assert!(!sup.shutdown(tokio::time::Instant::now() + Duration::from_millis(100)).await);
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(panic_message(&42_u8), "(a panic without a message)");
    }
}
