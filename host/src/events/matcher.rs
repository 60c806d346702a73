//! Matching stored deliveries to automations and creating their runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::keys::key_matches;
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::model::{Automation, Run, RunTrigger, Trigger};
use crate::plugins::manifest::Kind;
use crate::plugins::{FilterEvent, Registry};
use crate::store::{Delivery, MatchRecord, Store};
use futures::StreamExt;

/// Deliveries claimed at once.
const BATCH: u32 = 64;
/// How often the automation cache checks the database for changes made by
/// other replicas.
const CACHE_CHECK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Cache {
    version: Option<(i64, Option<String>)>,
    checked: Option<Instant>,
    by_source: HashMap<String, Arc<Vec<Automation>>>,
}

/// The matcher of one host.
pub struct Matcher {
    store: Store,
    plugins: Arc<Registry>,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    host: String,
    /// A delivery claimed by a host that did not finish it in this long is
    /// matched again (that host died): the run lease time.
    stale_after: chrono::Duration,
    wake: Notify,
    cache: Mutex<Cache>,
}

impl Matcher {
    /// A matcher for `host`.
    pub fn new(
        store: Store,
        plugins: Arc<Registry>,
        dispatcher: Arc<Dispatcher>,
        metrics: Arc<Metrics>,
        host: String,
        stale_after: Duration,
    ) -> Matcher {
        let stale_after = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::seconds(30));
        Matcher { store, plugins, dispatcher, metrics, host, stale_after, wake: Notify::new(), cache: Mutex::default() }
    }

    /// Asks the loop to look for deliveries now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Forgets cached automations (one changed on this host).
    pub fn invalidate(&self) {
        let mut cache = self.cache.lock().expect("matcher cache");
        cache.by_source.clear();
        cache.checked = None;
    }

    /// Runs the loop until `stop`.
    pub fn spawn(self: &Arc<Self>, sup: &crate::supervise::Supervisor) {
        let this = self.clone();
        sup.spawn("matcher", move |stop| {
            let this = this.clone();
            async move { this.run(stop).await }
        });
    }

    async fn run(&self, stop: CancellationToken) {
        // On SQLite there is one host: deliveries left `matching` at start-up
        // belong to a previous process of this host, so retake them at once.
        let mut first = self.store.dialect() == crate::store::Dialect::Sqlite;
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let stale =
                if std::mem::take(&mut first) { crate::model::now() } else { crate::model::now() - self.stale_after };
            let mut failed = false;
            let claimed = match self.store.claim_deliveries(&self.host, BATCH, stale).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming deliveries failed; backing off");
                    failed = true;
                    Vec::new()
                }
            };
            let full = claimed.len() == BATCH as usize;
            // Evaluate one delivery at a time, then record the whole batch in
            // one commit. Evaluating two at a time drained the backlog ~30%
            // faster but took the second core from acknowledgements (16
            // senders on SQLite: 3,160/s -> 1,890/s, p99 15 -> 32 ms; see
            // BENCHMARKS.md): the 202 is what senders wait for.
            let outcomes: Vec<(Delivery, _)> = futures::stream::iter(claimed)
                .map(|d| async move {
                    let outcome = self.evaluate(&d).await;
                    (d, outcome)
                })
                .buffered(1)
                .collect()
                .await;
            let mut records = Vec::with_capacity(outcomes.len());
            for (delivery, outcome) in outcomes {
                match outcome {
                    Ok(r) => records.push((delivery.received_at, r)),
                    Err(e) => {
                        tracing::warn!(delivery.id = %delivery.id, error = %e, "matching failed; it will be retried")
                    }
                }
            }
            if !records.is_empty() {
                let batch: Vec<MatchRecord> = records.iter().map(|(_, r)| r.clone()).collect();
                match self.store.record_matches(&self.host, &batch).await {
                    Ok(_) => {
                        let now = crate::model::now();
                        for (received, _) in &records {
                            self.metrics
                                .match_lag
                                .observe((now - *received).num_microseconds().unwrap_or(0) as f64 / 1e6);
                        }
                        if batch.iter().any(|r| !r.runs.is_empty()) {
                            self.dispatcher.wake();
                        }
                    }
                    Err(e) => {
                        if stop.is_cancelled() {
                            return;
                        }
                        // The deliveries stay claimed by this host, which
                        // takes them again on its next claim.
                        tracing::warn!(error = %e, "recording matches failed; they will be retried");
                        failed = true;
                    }
                }
            }
            if failed {
                self.metrics.background_errors.add("matcher", 1);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue;
            }
            backoff.reset();
            if full {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The live, enabled event automations of a source, cached.
    async fn candidates(&self, source: &str) -> Result<Arc<Vec<Automation>>, crate::store::Error> {
        let check = {
            let cache = self.cache.lock().expect("matcher cache");
            cache.checked.is_none_or(|t| t.elapsed() > CACHE_CHECK)
        };
        if check {
            let version = self.store.event_automations_version().await?;
            let mut cache = self.cache.lock().expect("matcher cache");
            if cache.version.as_ref() != Some(&version) {
                cache.by_source.clear();
                cache.version = Some(version);
            }
            cache.checked = Some(Instant::now());
        }
        if let Some(hit) = self.cache.lock().expect("matcher cache").by_source.get(source) {
            return Ok(hit.clone());
        }
        let list = Arc::new(self.store.event_automations(source).await?);
        self.cache.lock().expect("matcher cache").by_source.insert(source.to_owned(), list.clone());
        Ok(list)
    }

    /// Matches one delivery: which automations it fires (with their runs)
    /// and why the others do not. Nothing is written here.
    async fn evaluate(&self, delivery: &Delivery) -> Result<MatchRecord, crate::store::Error> {
        let key = delivery.event_key.clone().unwrap_or_default();
        let candidates = self.candidates(&delivery.source).await?;
        let mut matched: Vec<&Automation> = Vec::new();
        let mut not_matched: Vec<Value> = Vec::new();
        let mut filter_errors: Vec<(Uuid, String)> = Vec::new();
        // plugin -> (automation, expression)
        let mut to_filter: BTreeMap<String, Vec<(&Automation, String)>> = BTreeMap::new();
        for a in candidates.iter() {
            let Trigger::Event { on, filter, filter_plugin, .. } = &a.trigger else { continue };
            if !on.iter().any(|p| key_matches(p, &key)) {
                not_matched.push(
                    json!({"automation_id": a.id, "reason": format!("event key {key:?} matches none of {on:?}")}),
                );
                continue;
            }
            match filter.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
                None => matched.push(a),
                Some(f) => to_filter.entry(filter_plugin.clone()).or_default().push((a, f.to_owned())),
            }
        }
        if !to_filter.is_empty() {
            // Shared by every plugin's call: the payload is copied once here
            // and once into each call's WIT event, not once more per plugin.
            let event = Arc::new(FilterEvent {
                id: delivery.id,
                source: delivery.source.clone(),
                key: key.clone(),
                payload: delivery.payload_text.clone(),
                received_at: delivery.received_at,
            });
            for (plugin_name, items) in to_filter {
                // One call per plugin, each distinct expression once.
                let mut exprs: Vec<String> = items.iter().map(|(_, e)| e.clone()).collect();
                exprs.sort();
                exprs.dedup();
                let verdicts: Result<Vec<Result<bool, String>>, String> =
                    match self.plugins.require(&plugin_name, Kind::Filter) {
                        Err(e) => Err(e.to_string()),
                        Ok(plugin) => {
                            let (ev, ex) = (event.clone(), exprs.clone());
                            let (result, _) =
                                self.plugins.blocking(move |rt| rt.filter_matches(&plugin, &ev, &ex)).await;
                            result
                                .map(|v| v.into_iter().map(|r| r.map_err(|e| e.message)).collect())
                                .map_err(|e| e.to_string())
                        }
                    };
                for (a, expr) in items {
                    let verdict = match &verdicts {
                        // The plugin edge checked there is one verdict per
                        // expression; a miss is an error, never a panic.
                        Ok(v) => exprs
                            .binary_search(&expr)
                            .ok()
                            .and_then(|i| v.get(i).cloned())
                            .unwrap_or_else(|| Err(format!("{plugin_name} gave no verdict for this expression"))),
                        Err(e) => Err(e.clone()),
                    };
                    match verdict {
                        Ok(true) => {
                            self.metrics.filter_evaluations.add("match", 1);
                            matched.push(a);
                        }
                        Ok(false) => {
                            self.metrics.filter_evaluations.add("no_match", 1);
                            not_matched
                                .push(json!({"automation_id": a.id, "reason": "the filter is false for this payload"}));
                        }
                        Err(e) => {
                            self.metrics.filter_evaluations.add("error", 1);
                            not_matched
                                .push(json!({"automation_id": a.id, "reason": format!("the filter failed: {e}")}));
                            filter_errors.push((a.id, e));
                        }
                    }
                }
            }
        }
        let runs: Vec<Run> = matched
            .iter()
            .map(|a| {
                let trigger = RunTrigger {
                    kind: "event".into(),
                    // Not copied: the run reads it from the delivery (one
                    // stored payload, however many runs it starts).
                    payload: serde_json::Value::Null,
                    event_id: Some(delivery.id),
                    event_key: Some(key.clone()),
                    scheduled_for: None,
                };
                let reason = format!("{} event {key} (delivery {}) matched", delivery.source, delivery.id);
                Run::pending(a.id, trigger, "events", reason)
            })
            .collect();
        let result = json!({
            "event_key": key,
            "candidates": candidates.len(),
            "matched": runs.iter().map(|r| json!({"automation_id": r.automation_id, "run_id": r.id})).collect::<Vec<_>>(),
            "not_matched": not_matched,
        });
        Ok(MatchRecord { delivery: delivery.id, runs, filter_errors, result })
    }
}
