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
    by_source: HashMap<String, Arc<SourceIndex>>,
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

    /// The live, enabled event automations of a source, indexed by event
    /// key, cached.
    async fn candidates(&self, source: &str) -> Result<Arc<SourceIndex>, crate::store::Error> {
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
        let index = Arc::new(SourceIndex::new(self.store.event_automations(source).await?));
        self.cache.lock().expect("matcher cache").by_source.insert(source.to_owned(), index.clone());
        Ok(index)
    }

    /// Decides a delivery against its source's automations: a verdict for
    /// each automation whose `on` matches the key (the index finds them;
    /// the others are not looked at), with one filter call per plugin.
    /// `count` records the filter verdicts in the metrics (matching does,
    /// an explanation read later does not).
    async fn decide(&self, delivery: &Delivery, count: bool) -> Result<Decision, crate::store::Error> {
        let key = delivery.event_key.clone().unwrap_or_default();
        let index = self.candidates(&delivery.source).await?;
        let mut verdicts: Vec<(usize, Verdict)> = Vec::new();
        // plugin -> (automation's place in the index, expression)
        let mut to_filter: BTreeMap<&str, Vec<(usize, &str)>> = BTreeMap::new();
        for i in index.for_key(&key) {
            let Trigger::Event { filter, filter_plugin, .. } = &index.automations[i].trigger else { continue };
            match filter.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
                None => verdicts.push((i, Verdict::Matched)),
                Some(f) => to_filter.entry(filter_plugin.as_str()).or_default().push((i, f)),
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
                let mut exprs: Vec<&str> = items.iter().map(|(_, e)| *e).collect();
                exprs.sort_unstable();
                exprs.dedup();
                let owned: Arc<Vec<String>> = Arc::new(exprs.iter().map(|e| (*e).to_owned()).collect());
                let results: Result<Vec<Result<bool, String>>, String> =
                    match self.plugins.require(plugin_name, Kind::Filter) {
                        Err(e) => Err(e.to_string()),
                        Ok(plugin) => {
                            let (ev, ex) = (event.clone(), owned.clone());
                            let (result, _) =
                                self.plugins.blocking(move |rt| rt.filter_matches(&plugin, &ev, &ex)).await;
                            result
                                .map(|v| v.into_iter().map(|r| r.map_err(|e| e.message)).collect())
                                .map_err(|e| e.to_string())
                        }
                    };
                let (mut yes, mut no, mut failed) = (0u64, 0u64, 0u64);
                for (i, expr) in items {
                    let verdict = match &results {
                        // The plugin edge checked there is one verdict per
                        // expression; a miss is an error, never a panic.
                        Ok(v) => exprs
                            .binary_search(&expr)
                            .ok()
                            .and_then(|n| v.get(n).cloned())
                            .unwrap_or_else(|| Err(format!("{plugin_name} gave no verdict for this expression"))),
                        Err(e) => Err(e.clone()),
                    };
                    verdicts.push((
                        i,
                        match verdict {
                            Ok(true) => {
                                yes += 1;
                                Verdict::Matched
                            }
                            Ok(false) => {
                                no += 1;
                                Verdict::FilterFalse
                            }
                            Err(e) => {
                                failed += 1;
                                Verdict::FilterError(e)
                            }
                        },
                    ));
                }
                if count {
                    for (label, n) in [("match", yes), ("no_match", no), ("error", failed)] {
                        if n > 0 {
                            self.metrics.filter_evaluations.add(label, n);
                        }
                    }
                }
            }
        }
        verdicts.sort_by_key(|(i, _)| *i);
        Ok(Decision { key, index, verdicts })
    }

    /// Matches one delivery: which automations it fires (with their runs)
    /// and which filters failed. Nothing is written here. The record keeps
    /// no entry per automation that did not match (at 10,000 automations
    /// that was a megabyte per delivery): `explain` gives those reasons
    /// when someone asks.
    async fn evaluate(&self, delivery: &Delivery) -> Result<MatchRecord, crate::store::Error> {
        let Decision { key, index, verdicts } = self.decide(delivery, true).await?;
        let mut matched: Vec<&Automation> = Vec::new();
        let mut filter_errors: Vec<(Uuid, String)> = Vec::new();
        for (i, v) in &verdicts {
            let a = &index.automations[*i];
            match v {
                Verdict::Matched => matched.push(a),
                Verdict::FilterError(e) => filter_errors.push((a.id, e.clone())),
                Verdict::FilterFalse => {}
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
            "candidates": index.automations.len(),
            "matched": runs.iter().map(|r| json!({"automation_id": r.automation_id, "run_id": r.id})).collect::<Vec<_>>(),
            "filter_errors": filter_errors.iter().map(|(id, e)| json!({"automation_id": id, "error": e})).collect::<Vec<_>>(),
            "not_matched_count": index.automations.len() - runs.len(),
        });
        Ok(MatchRecord { delivery: delivery.id, runs, filter_errors, result })
    }

    /// The full explanation of a matched delivery, for `GET /v1/events/{id}`:
    /// its stored record (what it matched, with the runs) plus, for every
    /// other automation of its source, why it did not match, decided now
    /// against the automations as they are (`explained_at`). Records stored
    /// before explanations were made on demand carry their own and are
    /// returned as they are.
    pub async fn explain(&self, delivery: &Delivery) -> Result<Option<Value>, crate::store::Error> {
        let Some(mut result) = delivery.result.clone() else { return Ok(None) };
        if result.get("not_matched").is_some() {
            return Ok(Some(result));
        }
        let matched: std::collections::HashSet<String> = result["matched"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["automation_id"].as_str().map(str::to_owned))
            .collect();
        let Decision { key, index, verdicts } = self.decide(delivery, false).await?;
        let mut verdict_of = verdicts.into_iter().peekable();
        let mut not_matched = Vec::new();
        for (i, a) in index.automations.iter().enumerate() {
            let verdict = match verdict_of.peek() {
                Some((j, _)) if *j == i => verdict_of.next().map(|(_, v)| v),
                _ => None,
            };
            if matched.contains(&a.id.to_string()) {
                continue;
            }
            let reason = match verdict {
                None => {
                    let on = match &a.trigger {
                        Trigger::Event { on, .. } => on.clone(),
                        _ => Vec::new(),
                    };
                    format!("event key {key:?} matches none of {on:?}")
                }
                Some(Verdict::FilterFalse) => "the filter is false for this payload".to_owned(),
                Some(Verdict::FilterError(e)) => format!("the filter failed: {e}"),
                Some(Verdict::Matched) => "it matches now, but did not when the delivery was matched".to_owned(),
            };
            not_matched.push(json!({"automation_id": a.id, "reason": reason}));
        }
        result["not_matched"] = Value::Array(not_matched);
        result["explained_at"] = json!(crate::model::now());
        Ok(Some(result))
    }
}

/// What a filter or key decided for one automation.
enum Verdict {
    Matched,
    FilterFalse,
    FilterError(String),
}

/// The verdicts for a delivery's candidates (by their place in the index).
struct Decision {
    key: String,
    index: Arc<SourceIndex>,
    verdicts: Vec<(usize, Verdict)>,
}

/// A source's automations, with the ones each exact event key fires
/// listed, so a delivery looks only at the automations its key can fire.
pub(crate) struct SourceIndex {
    automations: Vec<Automation>,
    /// Exact `on` key -> automations (places in `automations`).
    exact: HashMap<String, Vec<usize>>,
    /// Automations with a glob among their `on` patterns: checked one by one.
    globs: Vec<usize>,
}

impl SourceIndex {
    fn new(automations: Vec<Automation>) -> SourceIndex {
        let (mut exact, mut globs): (HashMap<String, Vec<usize>>, Vec<usize>) = Default::default();
        for (i, a) in automations.iter().enumerate() {
            let Trigger::Event { on, .. } = &a.trigger else { continue };
            if on.iter().any(|p| p.contains(['*', '?', '['])) {
                globs.push(i);
            } else {
                for p in on {
                    let list = exact.entry(p.clone()).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                }
            }
        }
        SourceIndex { automations, exact, globs }
    }

    /// The automations whose `on` matches `key`, in index order.
    fn for_key(&self, key: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.exact.get(key).cloned().unwrap_or_default();
        out.extend(self.globs.iter().copied().filter(|&i| match &self.automations[i].trigger {
            Trigger::Event { on, .. } => on.iter().any(|p| key_matches(p, key)),
            _ => false,
        }));
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    fn automation(n: u128, on: &[&str]) -> Automation {
        let mut a: Automation = serde_json::from_value(json!({
            "id": Uuid::from_u128(n), "name": "a", "description": "", "tags": [],
            "trigger": {"type": "event", "source": "github", "on": on},
            "bundle": null, "preset": null, "entrypoint": null, "env": {}, "secret_env": {},
            "executor": {"plugin": "x", "config": {}}, "timeout_seconds": 1, "enabled": true,
            "concurrency": 1, "concurrency_policy": "queue", "filter_errors": {"count": 0, "last_error": null, "last_error_at": null},
            "last_triggered_at": null, "next_fire_at": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        a.enabled = true;
        a
    }

    #[test]
    fn a_key_finds_its_exact_and_glob_automations_only() {
        let idx = SourceIndex::new(vec![
            automation(0, &["push"]),
            automation(1, &["issues.opened", "issues.closed"]),
            automation(2, &["issues.*"]),
            automation(3, &["pull_request.opened", "pull_request.?eopened"]),
            automation(4, &["issues.opened"]),
        ]);
        assert_eq!(idx.for_key("issues.opened"), vec![1, 2, 4]);
        assert_eq!(idx.for_key("issues.closed"), vec![1, 2]);
        assert_eq!(idx.for_key("push"), vec![0]);
        assert_eq!(idx.for_key("pull_request.reopened"), vec![3]);
        assert_eq!(idx.for_key("pull_request.opened"), vec![3]);
        assert!(idx.for_key("release.published").is_empty());
    }
}
