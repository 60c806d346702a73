//! Dispatch: claims pending runs, has executor plugins carry them out, and
//! drives each to a final status.
//!
//! For each claimed run a task renders the bundle (preset and/or upload),
//! calls the executor's `start` (retrying transient failures with backoff),
//! stores the handle, then polls until the executor reports a final status,
//! the timeout passes (the executor is told to cancel; the run is
//! `timed_out`), or someone cancels the run (the executor is told to
//! cancel). A lease on every running run is renewed by a heartbeat; runs
//! whose host stopped heartbeating are taken over by another host (or by
//! this one after a restart) and polled again from their stored handle.

pub mod plan;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::group_commit::GroupCommit;
use crate::metrics::Metrics;
use crate::model::{Automation, DisabledReason, PluginLogLine, Run, RunOutput, RunStatus, StatusDetail};
use crate::plugins::manifest::{Capability, Kind};
use crate::plugins::registry::LookupError;
use crate::plugins::{Bundle, CallError, CallReport, ExecStatus, Registry, RunContext};
use crate::store::{Dialect, RunChanges, RunEnd, RunStart, RunWrite, Store};

/// Most run ends written in one transaction.
const MAX_RUN_WRITES: usize = 256;

/// What the run-write committer answers: whether the write applied (the
/// run was still `running`, and for a start still ours).
type WriteAnswer = Result<bool, Arc<crate::store::Error>>;

/// Most plugin log lines kept per run, and most bytes.
const RUN_LOG_LINES: usize = 200;
const RUN_LOG_BYTES: usize = 64 << 10;

/// The executor plugin's log for one run, collected across its calls and
/// stored with the run when it ends.
#[derive(Default)]
struct RunLog {
    lines: Mutex<(Vec<PluginLogLine>, usize)>,
}

impl RunLog {
    fn add(&self, call: &str, report: &CallReport) {
        let mut guard = self.lines.lock().expect("run log");
        let (lines, bytes) = &mut *guard;
        let stderr = report.stderr.lines().filter(|l| !l.trim().is_empty()).map(|l| ("stderr", l.to_owned()));
        for (level, message) in report.logs.iter().map(|l| (l.level, l.message.clone())).chain(stderr) {
            if lines.len() >= RUN_LOG_LINES || *bytes + message.len() > RUN_LOG_BYTES {
                return;
            }
            *bytes += message.len();
            lines.push(PluginLogLine { call: call.to_owned(), level: level.to_owned(), message });
        }
    }

    fn take(&self) -> Vec<PluginLogLine> {
        std::mem::take(&mut self.lines.lock().expect("run log").0)
    }
}

/// Dispatcher settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This host's name in leases and status details.
    pub host_id: String,
    /// Most runs this host carries out at once.
    pub max_concurrent_runs: usize,
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// The base URL runs use to reach this host (completion callback).
    pub public_url: String,
    /// Executor `start` attempts before a transient failure becomes final.
    pub start_attempts: u32,
    /// First retry delay (doubles each time, capped at 30 s).
    pub retry_base: Duration,
    /// Failed runs in a row that disable an automation (0: never).
    pub failure_disable_threshold: u32,
}

/// Why a run's bundle could not be made, and whether that disables the
/// automation (it will not work again until someone changes it).
struct BundleError {
    message: String,
    disable: Option<DisabledReason>,
}

/// The dispatcher of one host.
pub struct Dispatcher {
    store: Store,
    plugins: Arc<Registry>,
    settings: Settings,
    metrics: Arc<Metrics>,
    wake: Notify,
    permits: Arc<Semaphore>,
    /// Runs this host drives, with a token that stops their task.
    active: Mutex<HashMap<Uuid, Active>>,
    /// Wakes whoever waits for the active runs to finish.
    finished: Notify,
    /// Set at shutdown: no more claims or rescues.
    draining: std::sync::atomic::AtomicBool,
    callback_secret: Vec<u8>,
    /// Set while a wake-up for the other hosts is on its way.
    notifying: Arc<std::sync::atomic::AtomicBool>,
    /// Writes the ends of runs that end together in one transaction; set
    /// by [`Dispatcher::spawn`] (without it each end is its own).
    run_writes: std::sync::OnceLock<GroupCommit<RunWrite, WriteAnswer>>,
}

/// A run this host is driving.
struct Active {
    /// Stops its task.
    token: CancellationToken,
    /// True once its executor is known to run it on this machine (it is
    /// granted `sandbox`): such a run cannot outlive this host process.
    local: Arc<std::sync::atomic::AtomicBool>,
}

impl Dispatcher {
    /// A dispatcher; `callback_secret` derives each run's callback token.
    pub fn new(
        store: Store,
        plugins: Arc<Registry>,
        settings: Settings,
        metrics: Arc<Metrics>,
        callback_secret: Vec<u8>,
    ) -> Dispatcher {
        let permits = Arc::new(Semaphore::new(settings.max_concurrent_runs));
        Dispatcher {
            store,
            plugins,
            settings,
            metrics,
            wake: Notify::new(),
            permits,
            active: Mutex::default(),
            finished: Notify::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            callback_secret,
            notifying: Arc::default(),
            run_writes: std::sync::OnceLock::new(),
        }
    }

    /// Asks the claim loop to look for pending runs now (runs were made on
    /// this host), and, on Postgres, the other hosts' too.
    pub fn wake(&self) {
        self.wake.notify_one();
        if self.store.dialect() == Dialect::Postgres && !self.notifying.swap(true, Ordering::AcqRel) {
            let (store, notifying) = (self.store.clone(), self.notifying.clone());
            tokio::spawn(async move {
                // Cleared first: a wake while this one is sent sends another,
                // so no commit goes unannounced.
                notifying.store(false, Ordering::Release);
                if let Err(e) = store.notify_runs().await {
                    tracing::debug!(error = %e, "cannot tell the other hosts about new runs; they will poll");
                }
            });
        }
    }

    /// Wakes the claim loop whenever another host made runs (Postgres
    /// `LISTEN`); ends at once on SQLite. A hint: the claim loop also polls.
    async fn listen_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let mut listener = match self.store.listen_runs().await {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => {
                    self.metrics.background_errors.add("run-wakeups", 1);
                    tracing::warn!(error = %e, "cannot listen for other hosts' runs; polling meanwhile");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff.reset();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    got = listener.next() => match got {
                        Ok(()) => {
                            self.metrics.dispatch_wakeups.add("notify", 1);
                            self.wake.notify_one();
                        }
                        Err(e) => {
                            self.metrics.background_errors.add("run-wakeups", 1);
                            tracing::warn!(error = %e, "lost the wake-up listener; listening again");
                            break;
                        }
                    },
                }
            }
        }
    }

    /// The completion-callback token of a run: an HMAC of its id under a
    /// secret shared by the replicas, so any host can check it and a host
    /// that takes a run over hands out the same token.
    pub fn callback_token(&self, run_id: Uuid) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.callback_secret).expect("any key length works");
        mac.update(b"run-callback:");
        mac.update(run_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Starts the claim, heartbeat and rescue loops and the run-write
    /// committer under `sup`.
    pub fn spawn(self: &Arc<Self>, sup: &crate::supervise::Supervisor) {
        let store = self.store.clone();
        let commit = GroupCommit::start("run-writes", MAX_RUN_WRITES, sup, move |writes: Vec<RunWrite>| {
            let store = store.clone();
            async move { write_runs(&store, &writes).await }
        });
        let _ = self.run_writes.set(commit);
        let this = self.clone();
        sup.spawn("dispatcher", move |stop| this.clone().claim_loop(stop));
        let this = self.clone();
        sup.spawn("heartbeat", move |stop| this.clone().heartbeat_loop(stop));
        let this = self.clone();
        sup.spawn("run-wakeups", move |stop| this.clone().listen_loop(stop));
        let this = self.clone();
        sup.spawn("rescue", move |stop| this.clone().rescue_loop(stop));
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    async fn claim_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let budget = if self.draining() { 0 } else { self.permits.available_permits() };
            let mut claimed_all = false;
            if budget > 0 {
                let lease_until = Utc::now() + self.settings.lease;
                let claim =
                    self.store.claim_runs(&self.settings.host_id, lease_until, move |c| plan::choose_claims(c, budget));
                match claim.await {
                    Ok(claim) => {
                        backoff.reset();
                        for _ in &claim.skipped {
                            self.metrics.runs_finished.add("skipped", 1);
                        }
                        for _ in &claim.cancelled {
                            self.metrics.runs_finished.add("cancelled", 1);
                        }
                        claimed_all = claim.claimed.len() == budget;
                        for run in claim.claimed {
                            let wait = (run.started_at.unwrap_or_else(Utc::now) - run.created_at)
                                .num_microseconds()
                                .unwrap_or(0);
                            self.metrics.queue_wait.observe(wait as f64 / 1e6);
                            self.start_task(run);
                        }
                    }
                    Err(e) => {
                        // Nothing was claimed (the claim is one transaction):
                        // the runs stay pending for the next attempt.
                        self.metrics.background_errors.add("dispatcher", 1);
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, "claiming runs failed; backing off");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                }
            }
            if claimed_all {
                continue; // more may be waiting
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn start_task(self: &Arc<Self>, run: Run) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // Should not happen (we claim at most the free permits); the
            // lease will expire and the run will be rescued.
            tracing::error!(run.id = %run.id, "claimed a run without a free slot");
            return;
        };
        let token = CancellationToken::new();
        let local = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.active.lock().expect("active runs").insert(run.id, Active { token: token.clone(), local: local.clone() });
        let this = self.clone();
        tokio::spawn(async move {
            let id = run.id;
            this.drive(run, token, local, permit).await;
            this.plugins.runtime().sandbox().release_run(id);
            this.active.lock().expect("active runs").remove(&id);
            this.finished.notify_waiters();
            this.wake();
        });
    }

    async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = self.settings.lease / 3;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let ids: Vec<Uuid> = self.active.lock().expect("active runs").keys().copied().collect();
            if ids.is_empty() {
                continue;
            }
            match self.store.renew_leases(&self.settings.host_id, &ids, Utc::now() + self.settings.lease).await {
                Ok(held) => {
                    // A run we no longer hold was cancelled, finished by a
                    // callback or taken over: its task checks and stops.
                    let active = self.active.lock().expect("active runs");
                    for id in ids.iter().filter(|id| !held.contains(id)) {
                        if let Some(a) = active.get(id) {
                            a.token.cancel();
                        }
                    }
                }
                Err(e) => {
                    self.metrics.background_errors.add("heartbeat", 1);
                    tracing::warn!(error = %e, "renewing run leases failed");
                }
            }
        }
    }

    async fn rescue_loop(self: Arc<Self>, stop: CancellationToken) {
        // On SQLite there is one host: whatever is running at start-up was
        // left by a previous process of this host, so take it all over now.
        let mut first = self.store.dialect() == Dialect::Sqlite;
        loop {
            let budget = if self.draining() { 0 } else { self.permits.available_permits().min(100) as u32 };
            if budget > 0 {
                match self
                    .store
                    .take_over_runs(&self.settings.host_id, Utc::now() + self.settings.lease, first, budget)
                    .await
                {
                    Ok(runs) => {
                        for run in runs {
                            tracing::warn!(run.id = %run.id, reason = %run.status_detail.reason, "rescuing a run");
                            self.metrics.rescues.fetch_add(1, Ordering::Relaxed);
                            self.start_task(run);
                        }
                        first = false;
                    }
                    Err(e) => {
                        self.metrics.background_errors.add("rescue", 1);
                        tracing::warn!(error = %e, "rescuing runs failed");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.settings.lease / 2) => {}
            }
        }
    }

    /// Shuts dispatch down: no more claims or rescues; runs on this machine
    /// (local sandbox) get until `deadline` to finish, then are cancelled
    /// with `shutdown` as the reason and their processes ended; runs on
    /// remote executors are left running and their leases released, so the
    /// next host to look takes them over at once. Returns once this host
    /// drives no run any more (or 10 s after the deadline).
    pub async fn shutdown(&self, deadline: tokio::time::Instant) {
        self.draining.store(true, Ordering::Relaxed);
        let local_left =
            || self.active.lock().expect("active runs").values().filter(|a| a.local.load(Ordering::Relaxed)).count();
        loop {
            let notified = self.finished.notified();
            if local_left() == 0 {
                break;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let (local, remote): (Vec<_>, Vec<_>) = {
            let active = self.active.lock().expect("active runs");
            active
                .iter()
                .map(|(id, a)| (*id, a.token.clone(), a.local.load(Ordering::Relaxed)))
                .partition(|(_, _, local)| *local)
        };
        if !local.is_empty() {
            tracing::warn!(runs = local.len(), "shutting down: cancelling the local runs that did not finish in time");
        }
        let detail = StatusDetail {
            from: Some(RunStatus::Running),
            by: "shutdown".into(),
            reason: format!(
                "the host ({}) shut down before the run finished within the shutdown grace period",
                self.settings.host_id
            ),
            at: crate::model::now(),
        };
        for (id, token, _) in &local {
            let changes =
                RunChanges { error: Some("cancelled: the host shut down".into()), output: None, plugin_log: None };
            match self.store.transition_run(*id, &[RunStatus::Running], RunStatus::Cancelled, &detail, changes).await {
                Ok(Some(_)) => self.metrics.runs_finished.add("cancelled", 1),
                Ok(None) => {}
                Err(e) => tracing::error!(run.id = %id, error = %e, "cannot record the cancel of a run at shutdown"),
            }
            // Its task sees the run is no longer running and stops it on
            // the executor (which ends its processes).
            token.cancel();
        }
        if !remote.is_empty() {
            let ids: Vec<Uuid> = remote.iter().map(|(id, _, _)| *id).collect();
            if let Err(e) = self.store.renew_leases(&self.settings.host_id, &ids, Utc::now()).await {
                tracing::warn!(error = %e, "cannot release run leases at shutdown");
            }
            for (_, token, _) in &remote {
                token.cancel();
            }
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.finished.notified();
            if self.active.lock().expect("active runs").is_empty() {
                return;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until) => return,
            }
        }
    }

    fn detail(&self, from: RunStatus, reason: impl Into<String>) -> StatusDetail {
        StatusDetail {
            from: Some(from),
            by: format!("dispatcher:{}", self.settings.host_id),
            reason: reason.into(),
            at: crate::model::now(),
        }
    }

    /// Moves a running run to a final status; false if someone else moved it.
    async fn finish(
        &self,
        run: &Run,
        log: &RunLog,
        to: RunStatus,
        reason: &str,
        output: Option<RunOutput>,
        error: Option<String>,
    ) -> bool {
        // What the sandbox saw (a limit the run hit, how it was confined)
        // belongs in the run's own account of how it ended.
        let notes = self.plugins.runtime().sandbox().settled_notes(run.id, Duration::from_secs(5)).await;
        let (reason, error) = if notes.is_empty() {
            (reason.to_owned(), error)
        } else {
            let notes = notes.join("; ");
            (format!("{reason}; {notes}"), error.map(|e| format!("{e}; {notes}")))
        };
        let reason = reason.as_str();
        let detail = self.detail(RunStatus::Running, reason);
        let lines = log.take();
        let changes = RunChanges { error, output, plugin_log: (!lines.is_empty()).then_some(lines) };
        let end = RunWrite::End(RunEnd { id: run.id, to, detail, changes });
        // The end of a run is retried until it is written: a run reported
        // done must not stay `running`, nor be forgotten.
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut attempts = 0u32;
        loop {
            match self.commit_run_write(&end).await {
                Ok(true) => {
                    self.metrics.runs_finished.add(to.as_str(), 1);
                    tracing::info!(run.id = %run.id, automation.id = %run.automation_id, status = %to, reason, attempts, "run finished");
                    self.run_ended(run.automation_id, to).await;
                    return true;
                }
                Ok(false) => return false,
                Err(e) => {
                    attempts += 1;
                    self.metrics.background_errors.add("run_finish", 1);
                    let delay = backoff.next_delay();
                    if attempts == 1 {
                        tracing::error!(run.id = %run.id, error = %e, status = %to, "cannot record the end of a run; retrying until it is");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Writes a run's end with the others that end meanwhile (one commit),
    /// or on its own when there is no committer (dispatch not started, or
    /// stopped).
    async fn commit_run_write(&self, write: &RunWrite) -> WriteAnswer {
        if let Some(commit) = self.run_writes.get()
            && let Some(answer) = commit.submit(write.clone()).await
        {
            return answer;
        }
        Ok(self
            .store
            .write_runs(std::slice::from_ref(write))
            .await
            .map_err(Arc::new)?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// After a run of `automation_id` ended `status`: a failure may be the
    /// last of `failure_disable_threshold` in a row since the automation
    /// was enabled, which disables it (see [`plan::failure_streak`]).
    pub async fn run_ended(&self, automation_id: Uuid, status: RunStatus) {
        let threshold = self.settings.failure_disable_threshold;
        if threshold == 0 || !matches!(status, RunStatus::Failed | RunStatus::TimedOut) {
            return;
        }
        let streak = async {
            let Some(a) = self.store.get_automation(automation_id).await? else { return Ok(None) };
            if !a.enabled {
                return Ok(None);
            }
            let since = a.enabled_at.unwrap_or(a.created_at);
            let recent = self.store.recent_outcomes(automation_id, since, threshold).await?;
            Ok::<_, crate::store::Error>(plan::failure_streak(threshold, &recent))
        };
        match streak.await {
            Ok(Some(runs)) => {
                let names = runs.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ");
                let detail = format!("its last {threshold} runs failed: {names}");
                self.disable(automation_id, DisabledReason::Failures, &detail).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(automation.id = %automation_id, error = %e, "cannot check the automation's failures")
            }
        }
    }

    /// Disables an enabled automation for `reason` (once: the first reason stays).
    async fn disable(&self, automation_id: Uuid, reason: DisabledReason, detail: &str) {
        match self.store.disable_automation(automation_id, reason, detail).await {
            Ok(true) => {
                self.metrics.automations_disabled.add(reason.as_str(), 1);
                tracing::warn!(automation.id = %automation_id, reason = reason.as_str(), detail, "automation disabled");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(automation.id = %automation_id, error = %e, "cannot disable the automation"),
        }
    }

    async fn drive(
        self: &Arc<Self>,
        run: Run,
        stop: CancellationToken,
        local: Arc<std::sync::atomic::AtomicBool>,
        _permit: OwnedSemaphorePermit,
    ) {
        let log = RunLog::default();
        let automation = match self.store.get_automation_any(run.automation_id).await {
            Ok(Some((a, _deleted))) => a,
            Ok(None) => {
                self.finish(
                    &run,
                    &log,
                    RunStatus::Failed,
                    "its automation does not exist",
                    None,
                    Some("automation not found".into()),
                )
                .await;
                return;
            }
            Err(e) => {
                tracing::warn!(run.id = %run.id, error = %e, "cannot load the automation; the run will be rescued");
                return;
            }
        };
        let plugin_name = run.executor.clone().unwrap_or_else(|| automation.executor.plugin.clone());
        let executor = match self.plugins.require(&plugin_name, Kind::Executor) {
            Ok(p) => {
                local.store(p.grant.capabilities.contains(&Capability::Sandbox), Ordering::Relaxed);
                p
            }
            Err(e) => {
                let msg = format!("executor: {e}");
                if matches!(e, LookupError::Unknown { .. }) {
                    self.disable(automation.id, DisabledReason::PluginMissing, &msg).await;
                }
                self.finish(&run, &log, RunStatus::Failed, &msg, None, Some(msg.clone())).await;
                return;
            }
        };
        let started = run.started_at.unwrap_or_else(Utc::now);
        let timeout = Duration::from_secs(u64::from(automation.timeout_seconds));
        let deadline = run.timeout_at.unwrap_or(started + timeout);
        // An event run's payload is its delivery's: read here as text,
        // through a reader (not in the claim's transaction), and passed on
        // as it came.
        let payload = match run.trigger.event_id {
            Some(event) if run.trigger.payload.is_null() => match self.store.delivery_payload(event).await {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(run.id = %run.id, error = %e, "cannot read the run's event; the run will be rescued");
                    return;
                }
            },
            _ => None,
        };
        let ctx = self.context(&run, &automation, timeout, payload);

        // A run started here was just seen `running` and ours (the start
        // was recorded on that condition); a rescued one is checked first.
        let (handle, known_running) = match run.executor_handle.clone() {
            Some(h) => (h, false),
            None => match self.start(&run, &log, &automation, &executor, &ctx, deadline, &stop).await {
                Some(h) => (h, true),
                None => return,
            },
        };
        self.poll_until_final(&run, &log, &executor, &ctx, &handle, deadline, &stop, known_running).await;
    }

    fn context(&self, run: &Run, automation: &Automation, timeout: Duration, payload: Option<String>) -> RunContext {
        RunContext {
            run_id: run.id,
            automation_id: automation.id,
            automation_name: automation.name.clone(),
            attempt: run.attempt,
            trigger_kind: run.trigger.kind.clone(),
            trigger_payload: payload.unwrap_or_else(|| run.trigger.payload.to_string()),
            event_key: run.trigger.event_key.clone(),
            scheduled_for: run.trigger.scheduled_for,
            config: automation.executor.config.to_string(),
            timeout,
            callback_url: format!("{}/v1/runs/{}/complete", self.settings.public_url.trim_end_matches('/'), run.id),
            callback_token: self.callback_token(run.id),
        }
    }

    /// Renders the bundle and starts the run; returns the handle, or `None`
    /// when the run ended (failed, cancelled) or is no longer ours.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        run: &Run,
        log: &RunLog,
        automation: &Automation,
        executor: &Arc<crate::plugins::Plugin>,
        ctx: &RunContext,
        deadline: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> Option<String> {
        let bundle = match self.bundle(automation).await {
            Ok(b) => b,
            Err(BundleError { message, disable }) => {
                if let Some(reason) = disable {
                    self.disable(automation.id, reason, &message).await;
                }
                self.finish(run, log, RunStatus::Failed, &message, None, Some(message.clone())).await;
                return None;
            }
        };
        let mut attempt = 0u32;
        let handle = loop {
            attempt += 1;
            let (plugin, c, b) = (executor.clone(), ctx.clone(), bundle.clone());
            let (result, report) = self.plugins.blocking(move |rt| rt.executor_start(&plugin, &c, &b)).await;
            log_report(run.id, executor.name(), "start", &report);
            log.add("start", &report);
            match result {
                Ok(h) => break h,
                Err(e) if e.is_transient() && attempt < self.settings.start_attempts && Utc::now() < deadline => {
                    // Doubling from the base, with up to a quarter of jitter
                    // so runs that failed together do not retry together.
                    let base = (self.settings.retry_base * 2u32.pow(attempt - 1)).min(Duration::from_secs(30));
                    let delay = base + base.mul_f64(rand::random::<f64>() / 4.0);
                    tracing::warn!(run.id = %run.id, attempt, delay_ms = delay.as_millis() as u64, error = %e, "executor start failed; retrying");
                    self.metrics.start_retries.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => {
                    let msg = format!("the executor could not start the run: {e}");
                    self.finish(run, log, RunStatus::Failed, &msg, None, Some(msg.clone())).await;
                    return None;
                }
            }
        };
        let start = RunWrite::Start(RunStart {
            id: run.id,
            host: self.settings.host_id.clone(),
            executor: executor.name().to_owned(),
            handle: handle.clone(),
            timeout_at: deadline,
        });
        // Written on its own, not through the run-write committer: sharing
        // the ends' commits made them longer, and acknowledgements waited
        // behind them (mixed benchmark, SQLite, 16 senders: 1,098 and 823
        // acknowledged/s on their own against 443 and 368 batched).
        let written = self.store.write_runs(std::slice::from_ref(&start)).await;
        match written.map(|applied| applied.first().copied().unwrap_or(false)) {
            Ok(true) => Some(handle),
            Ok(false) => {
                // Cancelled (or taken) while starting: stop what we started.
                self.cancel_on_executor(run, log, executor, ctx, &handle).await;
                None
            }
            Err(e) => {
                tracing::error!(run.id = %run.id, error = %e, "cannot record the start; polling anyway");
                Some(handle)
            }
        }
    }

    /// The bundle a run executes: the upload's archive and/or the preset's files.
    async fn bundle(&self, automation: &Automation) -> Result<Bundle, BundleError> {
        let mut bundle = Bundle::default();
        if let Some(preset) = &automation.preset {
            let plugin = self.plugins.require(&preset.name, Kind::Preset).map_err(|e| BundleError {
                disable: matches!(e, LookupError::Unknown { .. }).then_some(DisabledReason::PluginMissing),
                message: format!("preset: {e}"),
            })?;
            let config = preset.config.to_string();
            let (result, _) = self.plugins.blocking(move |rt| rt.preset_render(&plugin, &config)).await;
            bundle = result.map_err(|e| BundleError {
                disable: (!e.is_transient()).then_some(DisabledReason::BadBundle),
                message: format!("the preset could not render the bundle: {e}"),
            })?;
        }
        if let Some(b) = &automation.bundle {
            let bytes = self
                .store
                .get_upload_content(b.upload_id)
                .await
                .map_err(|e| BundleError { message: format!("cannot read the bundle: {e}"), disable: None })?;
            bundle.archive = Some(bytes.ok_or_else(|| BundleError {
                message: format!("the bundle upload {} no longer exists", b.upload_id),
                disable: Some(DisabledReason::BadBundle),
            })?);
        }
        if let Some(e) = &automation.entrypoint {
            bundle.entrypoint = e.clone();
        }
        bundle.env.extend(automation.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        bundle.env.extend(automation.secret_env.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        if bundle.entrypoint.trim().is_empty() {
            return Err(BundleError {
                message: "the run has no entrypoint".into(),
                disable: Some(DisabledReason::BadBundle),
            });
        }
        Ok(bundle)
    }

    #[allow(clippy::too_many_arguments)]
    async fn poll_until_final(
        &self,
        run: &Run,
        log: &RunLog,
        executor: &Arc<crate::plugins::Plugin>,
        ctx: &RunContext,
        handle: &str,
        deadline: DateTime<Utc>,
        stop: &CancellationToken,
        known_running: bool,
    ) {
        let mut interval = Duration::from_millis(50);
        // Whether the next turn may skip reading the run's status: right
        // after the start, and when the wake-up came from the run's process
        // ending (its end is then written only if it is still `running`, so
        // a cancel or callback meanwhile is not overwritten).
        let mut skip_check = known_running;
        let mut errors = 0u32;
        // A local process of this run ending wakes the loop at once (the
        // executor is polled early); remote executors keep the interval.
        let ended = self.plugins.runtime().sandbox().ended_signal(run.id);
        let mut last_progress: Option<String> = None;
        loop {
            // Someone else may have ended the run: a cancel, a callback.
            if !std::mem::take(&mut skip_check) {
                match self.store.get_run_status(run.id).await {
                    Ok(Some(status)) if status != RunStatus::Running => {
                        tracing::info!(run.id = %run.id, %status, "run ended elsewhere; stopping it on the executor");
                        self.cancel_on_executor(run, log, executor, ctx, handle).await;
                        return;
                    }
                    Ok(None) => return,
                    _ => {}
                }
            }
            if stop.is_cancelled() {
                // Our lease is gone; check once more above next time.
                let still_ours = matches!(self.store.get_run_status(run.id).await, Ok(Some(RunStatus::Running)));
                if !still_ours {
                    self.cancel_on_executor(run, log, executor, ctx, handle).await;
                }
                return;
            }
            if Utc::now() > deadline + chrono::Duration::seconds(2) {
                self.cancel_on_executor(run, log, executor, ctx, handle).await;
                let msg = format!("timed out after {} s", ctx.timeout.as_secs());
                self.finish(run, log, RunStatus::TimedOut, &msg, None, Some(msg.clone())).await;
                return;
            }
            let (plugin, c, h) = (executor.clone(), ctx.clone(), handle.to_owned());
            let (result, report) = self.plugins.blocking(move |rt| rt.executor_poll(&plugin, &c, &h)).await;
            log_report(run.id, executor.name(), "poll", &report);
            log.add("poll", &report);
            match result {
                Ok(ExecStatus::Running) => {
                    errors = 0;
                    self.note_progress(run.id, &mut last_progress).await;
                }
                Ok(ExecStatus::Succeeded(out)) => {
                    self.finish(run, log, RunStatus::Succeeded, "the executor reported success", Some(out), None).await;
                    return;
                }
                Ok(ExecStatus::Failed(why, out)) => {
                    self.finish(
                        run,
                        log,
                        RunStatus::Failed,
                        &format!("the executor reported failure: {why}"),
                        Some(out),
                        Some(why),
                    )
                    .await;
                    return;
                }
                Ok(ExecStatus::TimedOut(out)) => {
                    let msg = format!("timed out after {} s", ctx.timeout.as_secs());
                    self.finish(run, log, RunStatus::TimedOut, &msg, Some(out), Some(msg.clone())).await;
                    return;
                }
                Ok(ExecStatus::Cancelled(out)) => {
                    self.finish(run, log, RunStatus::Cancelled, "the executor reported it cancelled", Some(out), None)
                        .await;
                    return;
                }
                Err(e) if e.is_transient() || matches!(e, CallError::Timeout { .. }) => {
                    errors += 1;
                    tracing::warn!(run.id = %run.id, errors, error = %e, "polling the executor failed; will retry");
                }
                Err(e) => {
                    let msg = format!("polling the executor failed: {e}");
                    self.finish(run, log, RunStatus::Failed, &msg, None, Some(msg.clone())).await;
                    return;
                }
            }
            interval = if errors > 0 {
                (Duration::from_millis(500) * 2u32.pow(errors.min(6))).min(Duration::from_secs(30))
            } else {
                (interval * 3 / 2).min(Duration::from_secs(2))
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(interval) => {}
                () = ended.notified(), if errors == 0 => skip_check = true,
            }
        }
    }

    /// Records what a local run last wrote to its progress file, when it
    /// changed (the file is read on this host, where the run's workspace is).
    async fn note_progress(&self, run_id: Uuid, last: &mut Option<String>) {
        let Some(text) = self.plugins.runtime().sandbox().read_progress(run_id) else { return };
        if last.as_deref() == Some(text.as_str()) {
            return;
        }
        if let Some(progress) = crate::model::RunProgress::from_file(&text)
            && let Err(e) = self.store.set_progress(run_id, &progress).await
        {
            tracing::warn!(run.id = %run_id, error = %e, "cannot record the run's progress");
            return;
        }
        *last = Some(text);
    }

    async fn cancel_on_executor(
        &self,
        run: &Run,
        log: &RunLog,
        executor: &Arc<crate::plugins::Plugin>,
        ctx: &RunContext,
        handle: &str,
    ) {
        let (plugin, c, h) = (executor.clone(), ctx.clone(), handle.to_owned());
        let (result, report) = self.plugins.blocking(move |rt| rt.executor_cancel(&plugin, &c, &h)).await;
        log_report(run.id, executor.name(), "cancel", &report);
        log.add("cancel", &report);
        if let Err(e) = result {
            tracing::warn!(run.id = %run.id, error = %e, "the executor could not cancel the run");
        }
    }
}

/// The run-write committer's write: every start and end in one
/// transaction; if that fails, each on its own, so one write the database
/// refuses does not hold back the others that happened to come with it.
async fn write_runs(store: &Store, writes: &[RunWrite]) -> Vec<WriteAnswer> {
    match store.write_runs(writes).await {
        Ok(applied) => applied.into_iter().map(Ok).collect(),
        Err(e) if writes.len() == 1 => vec![Err(Arc::new(e))],
        Err(_) => {
            let mut answers = Vec::with_capacity(writes.len());
            for write in writes {
                answers.push(match store.write_runs(std::slice::from_ref(write)).await {
                    Ok(moved) => Ok(moved.first().copied().unwrap_or(false)),
                    Err(e) => Err(Arc::new(e)),
                });
            }
            answers
        }
    }
}

fn log_report(run: Uuid, plugin: &str, call: &str, report: &crate::plugins::CallReport) {
    tracing::debug!(run.id = %run, plugin, call, elapsed_us = report.elapsed.as_micros() as u64, logs = report.logs.len(), "executor call");
}
