//! The scheduler: turns due cron slots into runs.
//!
//! `cron` is the pure maths (expression + time zone → next fire time) and
//! `plan` decides what happens to due slots (misfire and overlap policies).
//! The loop sleeps until the earliest `next_fire_at` of any enabled cron
//! automation (or until woken by a change), then materialises every due slot
//! as a row unique on `(automation_id, scheduled_for)`, creating a run for
//! each slot that fires, in one transaction per batch. Several hosts may run
//! the loop: the automations are locked while a host fires them, and the
//! unique slot row stops a slot from ever firing twice.

pub mod cron;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::model::Trigger;
use crate::store::{DueAutomation, Store};

/// Automations fired per transaction.
const BATCH: u32 = 500;
/// Longest sleep, so changes made by other replicas are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How late the latest due slot may be and still fire as on time.
    pub misfire_grace: chrono::Duration,
    /// Most missed slots `run_all` fires at once.
    pub run_all_cap: usize,
}

/// The cron loop of one host.
pub struct Scheduler {
    store: Store,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    settings: Settings,
    wake: Notify,
}

impl Scheduler {
    /// A scheduler.
    pub fn new(store: Store, dispatcher: Arc<Dispatcher>, metrics: Arc<Metrics>, settings: Settings) -> Scheduler {
        Scheduler { store, dispatcher, metrics, settings, wake: Notify::new() }
    }

    /// Re-reads the schedules now (an automation changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the loop until `stop`.
    pub fn spawn(self: &Arc<Self>, sup: &crate::supervise::Supervisor) {
        let this = self.clone();
        sup.spawn("scheduler", move |stop| {
            let this = this.clone();
            async move { this.run(stop).await }
        });
    }

    async fn run(&self, stop: CancellationToken) {
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let fired = match self.fire_due().await {
                Ok(n) => {
                    backoff.reset();
                    n
                }
                Err(e) => {
                    // Slots stay due; they fire (or follow their misfire
                    // policy) once the database takes writes again.
                    self.metrics.background_errors.add("scheduler", 1);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, "firing cron slots failed; backing off");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            if fired > 0 {
                self.dispatcher.wake();
            }
            let sleep = match self.store.next_cron_due().await {
                Ok(Some(next)) => (next - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(MAX_SLEEP),
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the next cron slot failed");
                    Duration::from_secs(1)
                }
            };
            if sleep.is_zero() {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Fires every due slot; returns how many runs were created.
    async fn fire_due(&self) -> Result<usize, crate::store::Error> {
        let mut created = 0;
        loop {
            let now = crate::model::now();
            let settings = self.settings.clone();
            let report = self
                .store
                .fire_due_slots(now, BATCH, |due| plan::plan_batch(due, |d: &DueAutomation| decide(d, now, &settings)))
                .await?;
            for (outcome, n) in &report.outcomes {
                self.metrics.slots.add(outcome, *n);
            }
            for fired in &report.fired {
                let lag = (fired.created_at - fired.scheduled_for).num_microseconds().unwrap_or(0) as f64 / 1e6;
                self.metrics.fire_lag.observe(lag);
            }
            created += report.fired.len();
            if report.automations < BATCH as usize {
                return Ok(created);
            }
        }
    }
}

fn decide(due: &DueAutomation, now: chrono::DateTime<Utc>, settings: &Settings) -> Option<plan::Decision> {
    let Trigger::Cron { schedule, timezone, misfire } = &due.trigger else { return None };
    let schedule = match cron::Schedule::parse(schedule, timezone) {
        Ok(s) => s,
        Err(e) => {
            // Validated at save time; only a newer, stricter parser could get here.
            tracing::error!(automation.id = %due.id, error = %e, "unparseable schedule; not firing it");
            return None;
        }
    };
    let inputs = plan::Inputs {
        schedule: &schedule,
        next_fire_at: due.next_fire_at,
        misfire: *misfire,
        concurrency: (due.concurrency, due.concurrency_policy, due.active_runs),
    };
    let decision = plan::decide(inputs, now, settings.misfire_grace, settings.run_all_cap);
    if decision.unrecorded > 0 {
        tracing::warn!(automation.id = %due.id, missed = decision.unrecorded, "more missed slots than are recorded individually");
    }
    Some(decision)
}

/// The next fire time of an automation saved now: `old` keeps its place in
/// the schedule if neither its trigger nor its enabled state changed.
pub fn next_fire_for(
    trigger: &Trigger,
    enabled: bool,
    old: Option<(&Trigger, bool, Option<chrono::DateTime<Utc>>)>,
) -> Option<chrono::DateTime<Utc>> {
    let Trigger::Cron { schedule, timezone, .. } = trigger else { return None };
    if !enabled {
        return None;
    }
    if let Some((old_trigger, old_enabled, old_next)) = old
        && old_trigger == trigger
        && old_enabled
        && old_next.is_some()
    {
        return old_next;
    }
    cron::Schedule::parse(schedule, timezone).ok()?.next_after(crate::model::now())
}
