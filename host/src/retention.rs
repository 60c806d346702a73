//! Retention: what the host deletes as it ages, so a self-hosted database
//! and disk do not grow forever. One supervised loop sweeps every
//! `AUTOMATION_RETENTION_SWEEP_SECONDS` (and once soon after start):
//!
//! - **runs** created more than `AUTOMATION_RUN_RETENTION_DAYS` ago and
//!   final, with their output and log, except each automation's newest
//!   `AUTOMATION_RUN_RETENTION_KEEP`;
//! - **cron slots** recorded that long ago, except each automation's newest
//!   as many;
//! - **idempotency keys** older than their 24 hours, and the notifications
//!   of runs that are gone;
//! - **deliveries** past `AUTOMATION_DELIVERY_RETENTION_HOURS` that no run
//!   refers to any more;
//! - **workspaces** left on disk (`keep_workspace`, or by a crash) unchanged
//!   for `AUTOMATION_WORKSPACE_RETENTION_HOURS`, once their run is final.
//!
//! Rows go in batches of [`BATCH`], one short statement each with a pause
//! between, so acknowledgements waiting for the SQLite writer never queue
//! behind a long delete. What went is counted in
//! `automation_retention_removed_total{kind}`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::plugins::Registry;
use crate::store::{Retained, Store};

/// Rows per delete statement.
pub const BATCH: u32 = 500;
/// Pause between two batches: the writer is free for others meanwhile.
const PAUSE: Duration = Duration::from_millis(5);

/// What the sweep keeps.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Days final runs and slots are kept (0: forever).
    pub run_days: u32,
    /// Newest runs (and slots) of each automation kept whatever their age.
    pub keep: u32,
    /// Hours a kept workspace stays on disk (0: forever).
    pub workspace_hours: u64,
    /// Hours deliveries are kept (the dedup window).
    pub delivery_hours: u64,
    /// Time between sweeps.
    pub every: Duration,
}

/// How many of each kind one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Runs.
    pub runs: u64,
    /// Cron slots.
    pub slots: u64,
    /// Idempotency keys.
    pub dispatch_keys: u64,
    /// Notifications of runs that are gone.
    pub notifications: u64,
    /// Deliveries.
    pub deliveries: u64,
    /// Workspaces.
    pub workspaces: u64,
}

/// The retention sweep of one host.
pub struct Sweeper {
    store: Store,
    plugins: Arc<Registry>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

impl Sweeper {
    /// A sweeper.
    pub fn new(store: Store, plugins: Arc<Registry>, metrics: Arc<Metrics>, settings: Settings) -> Sweeper {
        Sweeper { store, plugins, metrics, settings }
    }

    /// Runs the loop until `stop` (the first sweep a few seconds after start).
    pub async fn run(&self, stop: CancellationToken) {
        let mut wait = Duration::from_secs(2).min(self.settings.every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = self.settings.every;
            match self.sweep(&stop).await {
                Ok(r) if r == Removed::default() => {}
                Ok(r) => tracing::info!(
                    runs = r.runs,
                    slots = r.slots,
                    dispatch_keys = r.dispatch_keys,
                    notifications = r.notifications,
                    deliveries = r.deliveries,
                    workspaces = r.workspaces,
                    "retention sweep removed old records"
                ),
                Err(e) => {
                    self.metrics.background_errors.add("retention", 1);
                    tracing::warn!(error = %e, "the retention sweep failed; the next one retries");
                }
            }
        }
    }

    /// One sweep; stops early (with what it did) when `stop` is cancelled.
    pub async fn sweep(&self, stop: &CancellationToken) -> Result<Removed, crate::store::Error> {
        let now = crate::model::now();
        let mut removed = Removed::default();
        let s = &self.settings;
        if s.run_days > 0 {
            let before = now - chrono::Duration::days(i64::from(s.run_days));
            for automation in self.store.automations_over(Retained::Runs, s.keep).await? {
                removed.runs +=
                    self.batches(stop, "runs", || self.store.purge_runs_of(automation, s.keep, before, BATCH)).await?;
            }
            for automation in self.store.automations_over(Retained::Slots, s.keep).await? {
                removed.slots += self
                    .batches(stop, "slots", || self.store.purge_slots_of(automation, s.keep, before, BATCH))
                    .await?;
            }
        }
        removed.notifications +=
            self.batches(stop, "notifications", || self.store.purge_orphan_notifications(BATCH)).await?;
        let day_ago = now - chrono::Duration::hours(24);
        removed.dispatch_keys +=
            self.batches(stop, "dispatch_keys", || self.store.purge_dispatch_keys(day_ago, BATCH)).await?;
        let delivery_before = now - chrono::Duration::hours(i64::try_from(s.delivery_hours).unwrap_or(i64::MAX));
        removed.deliveries = self.store.purge_deliveries(delivery_before).await?;
        self.metrics.retention_removed.add("deliveries", removed.deliveries);
        if s.workspace_hours > 0 {
            removed.workspaces = self.sweep_workspaces(Duration::from_secs(s.workspace_hours * 3600)).await?;
        }
        Ok(removed)
    }

    /// Calls `batch` until it removes nothing (or `stop`), pausing between.
    async fn batches<F, Fut>(&self, stop: &CancellationToken, kind: &str, batch: F) -> Result<u64, crate::store::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<u64, crate::store::Error>>,
    {
        let mut total = 0;
        while !stop.is_cancelled() {
            let n = batch().await?;
            total += n;
            self.metrics.retention_removed.add(kind, n);
            if n < u64::from(BATCH) {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
        Ok(total)
    }

    /// Removes workspaces unchanged for `age` whose run is final (or gone).
    async fn sweep_workspaces(&self, age: Duration) -> Result<u64, crate::store::Error> {
        let before = std::time::SystemTime::now() - age;
        let candidates = self.plugins.runtime().sandbox().stale_workspaces(before);
        let mut n = 0;
        for run in candidates {
            if self.store.get_run_status(run).await?.is_some_and(|s| !s.is_final()) {
                continue;
            }
            let plugins = self.plugins.clone();
            let done = tokio::task::spawn_blocking(move || plugins.runtime().sandbox().remove_workspace(run)).await;
            match done {
                Ok(Ok(())) => {
                    n += 1;
                    self.metrics.retention_removed.add("workspaces", 1);
                }
                Ok(Err(e)) => tracing::warn!(run.id = %run, error = %e, "cannot remove an old workspace"),
                Err(e) => tracing::warn!(run.id = %run, error = %e, "removing an old workspace panicked"),
            }
        }
        Ok(n)
    }
}
