//! Prometheus metrics: counters and histograms kept in atomics, rendered as
//! text at `GET /metrics`. Hand-written because the set is small and fixed;
//! a registry crate would add more than it saves.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed buckets (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Buckets for latencies from a millisecond to a minute.
pub const LATENCY_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Buckets for commits, which take from a fraction of a millisecond (one
/// `fsync`) to tens of milliseconds when they queue.
pub const COMMIT_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0];

impl Histogram {
    /// An empty histogram.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation in seconds.
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", count.load(Ordering::Relaxed));
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// Counters keyed by one label value.
#[derive(Default)]
pub struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    /// Adds `n` to the counter for `label`.
    pub fn add(&self, label: &str, n: u64) {
        let mut map = self.0.lock().expect("metrics lock");
        // The label is copied only the first time it is seen, not on every
        // increment (the matcher adds per filter verdict).
        match map.get_mut(label) {
            Some(v) => *v += n,
            None => {
                map.insert(label.to_owned(), n);
            }
        }
    }

    /// The current value for `label`.
    pub fn get(&self, label: &str) -> u64 {
        self.0.lock().expect("metrics lock").get(label).copied().unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (value, n) in self.0.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    }
}

/// Every metric the host keeps.
pub struct Metrics {
    /// Cron slots by outcome (`fired`, `missed`, `skipped_overlap`, ...).
    pub slots: LabeledCounter,
    /// Seconds between a slot's scheduled time and its run's creation.
    pub fire_lag: Histogram,
    /// Event deliveries by outcome (`accepted`, `duplicate`, `bad_signature`, ...).
    pub deliveries: LabeledCounter,
    /// Filter evaluations by result (`match`, `no_match`, `error`).
    pub filter_evaluations: LabeledCounter,
    /// Seconds a run waited between creation and start.
    pub queue_wait: Histogram,
    /// Runs by final status.
    pub runs_finished: LabeledCounter,
    /// Runs taken over from hosts that stopped heartbeating.
    pub rescues: AtomicU64,
    /// Executor start attempts retried after a transient failure.
    pub start_retries: AtomicU64,
    /// Seconds from delivery acknowledgement to matching done.
    pub match_lag: Histogram,
    /// Deliveries matched, by the priority they were matched at
    /// (`background`, or `catch_up` when they had waited too long).
    pub matched: LabeledCounter,
    /// Iterations of background loops that failed and were retried later,
    /// by loop (`ingest`, `matcher`, `dispatcher`, `scheduler`, ...).
    pub background_errors: LabeledCounter,
    /// Background loops restarted after a panic, by loop.
    pub background_restarts: LabeledCounter,
    /// Automations the host disabled by itself, by reason (`failures`,
    /// `bad_bundle`, `plugin_missing`).
    pub automations_disabled: LabeledCounter,
    /// Records the retention sweep removed, by kind (`runs`, `slots`,
    /// `dispatch_keys`, `deliveries`, `workspaces`).
    pub retention_removed: LabeledCounter,
    /// Run notification attempts by outcome (`delivered`, `retried`, `failed`).
    pub notifications: LabeledCounter,
    /// Claim-loop wake-ups that came from another host (`notify`: Postgres LISTEN).
    pub dispatch_wakeups: LabeledCounter,
    /// Seconds each group commit of deliveries took (the transaction every
    /// sender of the group waits for).
    pub delivery_commit: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            slots: LabeledCounter::default(),
            fire_lag: Histogram::new(LATENCY_BUCKETS),
            deliveries: LabeledCounter::default(),
            filter_evaluations: LabeledCounter::default(),
            queue_wait: Histogram::new(LATENCY_BUCKETS),
            runs_finished: LabeledCounter::default(),
            rescues: AtomicU64::new(0),
            start_retries: AtomicU64::new(0),
            match_lag: Histogram::new(LATENCY_BUCKETS),
            matched: LabeledCounter::default(),
            background_errors: LabeledCounter::default(),
            background_restarts: LabeledCounter::default(),
            automations_disabled: LabeledCounter::default(),
            retention_removed: LabeledCounter::default(),
            notifications: LabeledCounter::default(),
            dispatch_wakeups: LabeledCounter::default(),
            delivery_commit: Histogram::new(COMMIT_BUCKETS),
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.slots.render(&mut out, "automation_cron_slots_total", "outcome", "Cron slots by outcome.");
        self.fire_lag.render(
            &mut out,
            "automation_cron_fire_lag_seconds",
            "Delay between a slot's time and its run's creation.",
        );
        self.deliveries.render(
            &mut out,
            "automation_event_deliveries_total",
            "outcome",
            "Event deliveries by outcome.",
        );
        self.match_lag.render(
            &mut out,
            "automation_event_match_lag_seconds",
            "Delay between accepting a delivery and matching it.",
        );
        self.matched.render(
            &mut out,
            "automation_event_matched_total",
            "priority",
            "Deliveries matched, by priority: background, or catch_up (they had waited longer than AUTOMATION_MATCH_CATCH_UP_MS).",
        );
        self.delivery_commit.render(
            &mut out,
            "automation_event_delivery_commit_seconds",
            "Time each group commit of deliveries took (what their senders wait for before the 202).",
        );
        self.filter_evaluations.render(
            &mut out,
            "automation_filter_evaluations_total",
            "result",
            "Filter evaluations by result.",
        );
        self.queue_wait.render(
            &mut out,
            "automation_run_queue_wait_seconds",
            "Time runs waited between creation and start.",
        );
        self.runs_finished.render(&mut out, "automation_runs_finished_total", "status", "Runs by final status.");
        self.background_errors.render(
            &mut out,
            "automation_background_errors_total",
            "loop",
            "Background loop iterations that failed (mostly storage errors) and were retried after a backoff.",
        );
        self.background_restarts.render(
            &mut out,
            "automation_background_restarts_total",
            "loop",
            "Background loops that panicked and were started again.",
        );
        self.automations_disabled.render(
            &mut out,
            "automation_automations_disabled_total",
            "reason",
            "Automations the host disabled by itself (failed runs in a row, a bundle that cannot be made, a missing plugin).",
        );
        self.retention_removed.render(
            &mut out,
            "automation_retention_removed_total",
            "kind",
            "Records the retention sweep removed (runs, slots, dispatch_keys, deliveries, workspaces).",
        );
        self.dispatch_wakeups.render(
            &mut out,
            "automation_dispatch_wakeups_total",
            "source",
            "Claim-loop wake-ups sent by another host (notify: Postgres LISTEN/NOTIFY).",
        );
        self.notifications.render(
            &mut out,
            "automation_notifications_total",
            "outcome",
            "Run notification attempts: delivered, retried (failed, tried again later), failed (given up).",
        );
        let _ = writeln!(
            out,
            "# HELP automation_run_rescues_total Runs taken over from hosts that stopped heartbeating.\n\
             # TYPE automation_run_rescues_total counter\nautomation_run_rescues_total {}",
            self.rescues.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP automation_executor_start_retries_total Executor starts retried after a transient failure.\n\
             # TYPE automation_executor_start_retries_total counter\nautomation_executor_start_retries_total {}",
            self.start_retries.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.runs_finished.add("succeeded", 2);
        m.queue_wait.observe(0.2);
        m.queue_wait.observe(3.0);
        let text = m.render();
        assert!(text.contains("automation_runs_finished_total{status=\"succeeded\"} 2"));
        assert!(text.contains("automation_run_queue_wait_seconds_bucket{le=\"0.25\"} 1"));
        assert!(text.contains("automation_run_queue_wait_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("automation_run_queue_wait_seconds_count 2"));
    }
}
