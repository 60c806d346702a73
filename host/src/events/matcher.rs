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
use crate::store::{Delivery, MatchRecord, PendingDelivery, Store};

/// Deliveries claimed at once.
const BATCH: u32 = 64;
/// Deliveries claimed at once while catching up: fewer, longer turns on
/// the database writer for the claim and the record of a backlog.
const CATCH_UP_BATCH: u32 = 256;
/// How often the automation cache checks the database for changes made by
/// other replicas.
const CACHE_CHECK: Duration = Duration::from_secs(1);

/// How far before the latest change seen a refresh reads again: a change
/// committed late (another replica's, with an earlier `updated_at`) is
/// still found if it is no older than this. Rows read twice change nothing.
const REFRESH_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// (number of event automations, latest `updated_at` among them)
type Version = (i64, Option<chrono::DateTime<chrono::Utc>>);

#[derive(Default)]
struct Cache {
    version: Option<Version>,
    checked: Option<Instant>,
    /// Changes made on this host, counted, and how many of them the last
    /// refresh had seen: a refresh is due when they differ, even if the
    /// version looks the same (two changes in one clock tick).
    local_changes: u64,
    local_seen: u64,
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
    /// Where a batch that waited too long is matched (the acknowledgements'
    /// runtime, whose threads are not niced), and after how long.
    catch_up: Option<(tokio::runtime::Handle, Duration)>,
    /// How many parts a catching-up batch's filter calls are split into:
    /// the cores, at most the two kept instances a filter has.
    cores: usize,
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
        Matcher {
            store,
            plugins,
            dispatcher,
            metrics,
            host,
            stale_after,
            wake: Notify::new(),
            cache: Mutex::default(),
            catch_up: None,
            cores: std::thread::available_parallelism().map_or(1, usize::from).min(crate::plugins::WARM_PER_PLUGIN),
        }
    }

    /// This matcher, matching a batch on `front` (the runtime that
    /// acknowledges deliveries, at its priority) instead of with idle CPU
    /// when its oldest delivery has waited longer than `after`: a burst is
    /// acknowledged first and matched when the CPU is free, but a stream
    /// that leaves no CPU idle does not build a backlog without bound (it
    /// slows the acknowledgements instead). A zero `after` never catches up.
    pub fn catching_up_on(mut self, front: tokio::runtime::Handle, after: Duration) -> Matcher {
        self.catch_up = (!after.is_zero()).then_some((front, after));
        self
    }

    /// Asks the loop to look for deliveries now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Refreshes the cached automations before the next delivery is
    /// matched (one changed on this host): the changed ones are read again,
    /// not all of them.
    pub fn invalidate(&self) {
        let mut cache = self.cache.lock().expect("matcher cache");
        cache.local_changes += 1;
    }

    /// Runs the loop until `stop`.
    pub fn spawn(self: &Arc<Self>, sup: &crate::supervise::Supervisor) {
        let this = self.clone();
        sup.spawn("matcher", move |stop| {
            let this = this.clone();
            async move { this.run(stop).await }
        });
    }

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        // On SQLite there is one host: deliveries left `matching` at start-up
        // belong to a previous process of this host, so retake them at once.
        let mut first = self.store.dialect() == crate::store::Dialect::Sqlite;
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        // Whether the last batch was matched catching up.
        let mut catching_up = false;
        loop {
            let stale =
                if std::mem::take(&mut first) { crate::model::now() } else { crate::model::now() - self.stale_after };
            let mut failed = false;
            let limit = if catching_up { CATCH_UP_BATCH } else { BATCH };
            let claimed = match self.store.claim_deliveries(&self.host, limit, stale).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming deliveries failed; backing off");
                    failed = true;
                    Vec::new()
                }
            };
            let full = claimed.len() == limit as usize;
            // Evaluate one delivery at a time, then record the whole batch in
            // one commit. Evaluating two at a time drained the backlog ~30%
            // faster but took the second core from acknowledgements (16
            // senders on SQLite: 3,160/s -> 1,890/s, p99 15 -> 32 ms; see
            // BENCHMARKS.md): the 202 is what senders wait for, so a batch's
            // filter calls get only idle CPU unless it waited too long.
            let oldest = claimed.iter().map(|d| d.received_at).min();
            let front = self
                .catch_up
                .as_ref()
                .filter(|(_, after)| behind(oldest, crate::model::now(), *after))
                .map(|(front, _)| front);
            catching_up = front.is_some();
            let priority = if catching_up { "catch_up" } else { "background" };
            let outcomes = match front {
                None => self.clone().evaluate_all(claimed, Lane::Idle).await,
                Some(front) => match front.spawn(self.clone().evaluate_all(claimed, Lane::Blocking)).await {
                    Ok(outcomes) => outcomes,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    // The host is stopping; the batch stays claimed.
                    Err(_) => return,
                },
            };
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
                        self.metrics.matched.add(priority, records.len() as u64);
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

    /// Evaluates a batch on the runtime it is called on (the filter calls
    /// on one of that runtime's blocking threads).
    async fn evaluate_all(
        self: Arc<Self>,
        claimed: Vec<PendingDelivery>,
        lane: Lane,
    ) -> Vec<(PendingDelivery, Result<MatchRecord, crate::store::Error>)> {
        let decisions = self.decide_all(&claimed, true, lane).await;
        claimed
            .into_iter()
            .zip(decisions)
            .map(|(d, decision)| {
                let outcome = decision.map(|decision| Self::record(&d, decision));
                (d, outcome)
            })
            .collect()
    }

    /// The live, enabled event automations of a source, indexed by event
    /// key, cached. Once a second (and after a change on this host) the
    /// cache compares a fingerprint of the automations with the database's;
    /// when they differ it reads the automations changed since its latest
    /// and patches the sources they touch. It reads everything again only
    /// when automations went away without a trace (fewer rows than before).
    async fn candidates(&self, source: &str) -> Result<Arc<SourceIndex>, crate::store::Error> {
        let (check, local, forced, known) = {
            let cache = self.cache.lock().expect("matcher cache");
            let forced = cache.local_changes != cache.local_seen;
            (
                forced || cache.checked.is_none_or(|t| t.elapsed() > CACHE_CHECK),
                cache.local_changes,
                forced,
                cache.version,
            )
        };
        if check {
            let version = self.store.event_automations_version().await?;
            match known {
                Some(old) if old == version && !forced => {}
                Some((count, Some(latest))) if version.0 >= count => {
                    let changed = self.store.automations_changed_since(latest - REFRESH_OVERLAP).await?;
                    let mut cache = self.cache.lock().expect("matcher cache");
                    let patched: Vec<(String, Arc<SourceIndex>)> = cache
                        .by_source
                        .iter()
                        .filter_map(|(name, index)| {
                            index.patched(name, &changed).map(|new| (name.clone(), Arc::new(new)))
                        })
                        .collect();
                    cache.by_source.extend(patched);
                    cache.version = Some(version);
                }
                _ => {
                    let mut cache = self.cache.lock().expect("matcher cache");
                    cache.by_source.clear();
                    cache.version = Some(version);
                }
            }
            let mut cache = self.cache.lock().expect("matcher cache");
            cache.checked = Some(Instant::now());
            // Changes counted after `local` was read wait for the next refresh.
            cache.local_seen = local;
        }
        if let Some(hit) = self.cache.lock().expect("matcher cache").by_source.get(source) {
            return Ok(hit.clone());
        }
        let index = Arc::new(SourceIndex::new(self.store.event_automations(source).await?));
        self.cache.lock().expect("matcher cache").by_source.insert(source.to_owned(), index.clone());
        Ok(index)
    }

    /// Decides deliveries against their sources' automations: for each, a
    /// verdict for every automation whose `on` matches its key (the index
    /// finds them; the others are not looked at), with one filter call per
    /// plugin. Every filter call of the batch is made in one trip to the
    /// `lane`'s thread: a trip per delivery waited for a thread of a busy
    /// runtime each time, which was most of the matching time while
    /// deliveries were being acknowledged. `count` records the filter
    /// verdicts in the metrics (matching does, an explanation read later
    /// does not).
    async fn decide_all(
        &self,
        deliveries: &[PendingDelivery],
        count: bool,
        lane: Lane,
    ) -> Vec<Result<Decision, crate::store::Error>> {
        // What each delivery is decided by, and the plugin of each call.
        let mut prepared = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let key = delivery.event_key.clone().unwrap_or_default();
            prepared.push(match self.candidates(&delivery.source).await {
                Err(e) => Err(e),
                Ok(index) => {
                    let plan = index.plan(&key);
                    let calls: Vec<_> = plan
                        .calls
                        .iter()
                        .map(|call| {
                            self.plugins
                                .require(&call.plugin, Kind::Filter)
                                .map(|plugin| (plugin, call.expressions.clone()))
                                .map_err(|e| e.to_string())
                        })
                        .collect();
                    // The payload is copied once here and once into each
                    // call's WIT event, not once more per plugin.
                    let event = (!calls.is_empty()).then(|| FilterEvent {
                        id: delivery.id,
                        source: delivery.source.clone(),
                        key: key.clone(),
                        payload: delivery.payload.clone(),
                        received_at: delivery.received_at,
                    });
                    Ok((key, index, plan, event, calls))
                }
            });
        }
        // Every filter call of the batch: a result per call of each plan.
        let work: Vec<_> = prepared
            .iter_mut()
            .filter_map(|p| p.as_mut().ok())
            .filter_map(|(.., event, calls)| event.take().map(|e| (e, std::mem::take(calls))))
            .collect();
        let mut answers = match lane {
            _ if work.is_empty() => Vec::new(),
            Lane::Idle => self.plugins.idle(move |rt| filter_calls(rt, &work)).await,
            // Catching up, the batch is split across the cores: each part
            // takes a kept instance of its own (filters keep two).
            Lane::Blocking => {
                let parts = split_evenly(work, self.cores);
                let answered = futures::future::join_all(
                    parts.into_iter().map(|part| self.plugins.blocking(move |rt| filter_calls(rt, &part))),
                )
                .await;
                answered.into_iter().flatten().collect()
            }
        }
        .into_iter();
        prepared
            .into_iter()
            .map(|p| {
                let (key, index, plan, _, _) = p?;
                let results = if plan.calls.is_empty() { Vec::new() } else { answers.next().unwrap_or_default() };
                Ok(Decision { verdicts: self.verdicts(&plan, &results, count), key, index })
            })
            .collect()
    }

    /// The verdicts of a plan's automations, given its calls' answers (in
    /// call order; a missing answer is an error, never a panic).
    fn verdicts(&self, plan: &Plan, results: &[FilterAnswer], count: bool) -> Vec<(usize, Verdict)> {
        let mut verdicts: Vec<(usize, Verdict)> = plan.unfiltered.iter().map(|&i| (i, Verdict::Matched)).collect();
        for (n_call, call) in plan.calls.iter().enumerate() {
            let results =
                results.get(n_call).cloned().unwrap_or_else(|| Err(format!("{} was not called", call.plugin)));
            let (mut yes, mut no, mut failed) = (0u64, 0u64, 0u64);
            for &(i, n) in &call.members {
                let verdict = match &results {
                    // The plugin edge checked there is one verdict per
                    // expression; a miss is an error, never a panic.
                    Ok(v) => v
                        .get(n)
                        .cloned()
                        .unwrap_or_else(|| Err(format!("{} gave no verdict for this expression", call.plugin))),
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
        verdicts.sort_by_key(|(i, _)| *i);
        verdicts
    }

    /// What a delivery's decision records: which automations it fires
    /// (with their runs) and which filters failed. Nothing is written here. The record keeps
    /// no entry per automation that did not match (at 10,000 automations
    /// that was a megabyte per delivery): `explain` gives those reasons
    /// when someone asks.
    fn record(delivery: &PendingDelivery, decision: Decision) -> MatchRecord {
        let Decision { key, index, verdicts } = decision;
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
        MatchRecord { delivery: delivery.id, runs, filter_errors, result }
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
        let decided = self.decide_all(&[PendingDelivery::from(delivery)], false, Lane::Blocking).await.pop();
        let Decision { key, index, verdicts } = decided.expect("one decision for one delivery")?;
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

/// Whether a batch whose oldest delivery was received at `oldest` is
/// matched at the acknowledgements' priority: that delivery has waited
/// longer than `after`.
fn behind(oldest: Option<chrono::DateTime<chrono::Utc>>, now: chrono::DateTime<chrono::Utc>, after: Duration) -> bool {
    let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
    oldest.is_some_and(|t| now - t > after)
}

/// Each delivery's filter calls, in order, on the calling thread.
fn filter_calls(rt: &crate::plugins::Runtime, work: &[(FilterEvent, Vec<PreparedCall>)]) -> Vec<Vec<FilterAnswer>> {
    work.iter()
        .map(|(event, calls)| {
            calls
                .iter()
                .map(|call| {
                    let (plugin, expressions) = call.as_ref().map_err(Clone::clone)?;
                    let (result, _) = rt.filter_matches(plugin, event, expressions);
                    result.map(|v| v.into_iter().map(|r| r.map_err(|e| e.message)).collect()).map_err(|e| e.to_string())
                })
                .collect()
        })
        .collect()
}

/// `items` in at most `parts` consecutive runs of nearly equal length (none
/// empty), so that concatenating them gives `items` back in order.
fn split_evenly<T>(items: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let parts = parts.clamp(1, items.len().max(1));
    let (size, extra) = (items.len() / parts, items.len() % parts);
    let mut items = items.into_iter();
    (0..parts)
        .map(|i| items.by_ref().take(size + usize::from(i < extra)).collect())
        .filter(|p: &Vec<T>| !p.is_empty())
        .collect()
}

/// A filter call ready to make: the plugin and the expressions, or why the
/// plugin cannot be called.
type PreparedCall = Result<(Arc<crate::plugins::Plugin>, Arc<Vec<String>>), String>;

/// Where a batch's filter calls run.
#[derive(Clone, Copy)]
enum Lane {
    /// On the thread that gets only idle CPU: matching in the background.
    Idle,
    /// On a blocking thread of the calling runtime: catching up (on the
    /// front runtime), or an explanation someone asked for.
    Blocking,
}

/// One filter call's answers (a verdict per expression), or why the call
/// failed.
type FilterAnswer = Result<Vec<Result<bool, String>>, String>;

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

/// Most event keys whose [`Plan`] a source keeps (GitHub has about 300
/// type and action pairs); past it the plans are made again as needed.
const MAX_PLANS: usize = 1024;

/// A source's automations, with the ones each exact event key fires
/// listed, so a delivery looks only at the automations its key can fire.
pub(crate) struct SourceIndex {
    automations: Vec<Automation>,
    /// Exact `on` key -> automations (places in `automations`).
    exact: HashMap<String, Vec<usize>>,
    /// Automations with a glob among their `on` patterns: checked one by one.
    globs: Vec<usize>,
    /// Event key -> what a delivery with it is decided by, made on first use.
    plans: Mutex<HashMap<String, Arc<Plan>>>,
}

/// How a delivery with one event key is decided: the automations it fires
/// without a filter, and one filter call per plugin. Made once per key and
/// automation set, not per delivery: at 10,000 automations, gathering,
/// sorting and looking up the expressions for each delivery took a third of
/// its matching time.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Automations (places in the index) whose `on` matches and that have
    /// no filter.
    unfiltered: Vec<usize>,
    /// One call per filter plugin, in plugin name order.
    calls: Vec<PluginCall>,
}

/// One plugin's share of a [`Plan`].
#[derive(Debug, PartialEq)]
pub(crate) struct PluginCall {
    plugin: String,
    /// Each distinct expression once, as the call takes them.
    expressions: Arc<Vec<String>>,
    /// (automation's place in the index, its expression's place in
    /// `expressions`).
    members: Vec<(usize, usize)>,
}

impl Plan {
    /// The plan for `candidates` (places in `automations`, ascending).
    fn new(automations: &[Automation], candidates: &[usize]) -> Plan {
        let mut plan = Plan::default();
        // plugin -> (automation's place, expression)
        let mut by_plugin: BTreeMap<&str, Vec<(usize, &str)>> = BTreeMap::new();
        for &i in candidates {
            let Trigger::Event { filter, filter_plugin, .. } = &automations[i].trigger else { continue };
            match filter.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
                None => plan.unfiltered.push(i),
                Some(f) => by_plugin.entry(filter_plugin.as_str()).or_default().push((i, f)),
            }
        }
        for (plugin, items) in by_plugin {
            let mut place: HashMap<&str, usize> = HashMap::with_capacity(items.len());
            let mut expressions = Vec::new();
            let members = items
                .iter()
                .map(|&(i, expr)| {
                    let n = *place.entry(expr).or_insert_with(|| {
                        expressions.push(expr.to_owned());
                        expressions.len() - 1
                    });
                    (i, n)
                })
                .collect();
            plan.calls.push(PluginCall { plugin: plugin.to_owned(), expressions: Arc::new(expressions), members });
        }
        plan
    }
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
        SourceIndex { automations, exact, globs, plans: Mutex::default() }
    }

    /// This index with `changed` applied (each either live in `source`,
    /// replacing or joining, or gone from it), or `None` if none of them
    /// touches it. Kept in id order, as the database lists them.
    fn patched(&self, source: &str, changed: &[(Automation, bool)]) -> Option<SourceIndex> {
        let live = |(a, deleted): &&(Automation, bool)| {
            !deleted && a.enabled && matches!(&a.trigger, Trigger::Event { source: s, .. } if s == source)
        };
        let ids: std::collections::HashSet<Uuid> = changed.iter().map(|(a, _)| a.id).collect();
        let touched = changed.iter().any(|c| live(&c)) || self.automations.iter().any(|a| ids.contains(&a.id));
        if !touched {
            return None;
        }
        let mut automations: Vec<Automation> =
            self.automations.iter().filter(|a| !ids.contains(&a.id)).cloned().collect();
        automations.extend(changed.iter().filter(live).map(|(a, _)| a.clone()));
        automations.sort_by_key(|a| a.id);
        Some(SourceIndex::new(automations))
    }

    /// How a delivery with `key` is decided (kept per key).
    fn plan(&self, key: &str) -> Arc<Plan> {
        if let Some(plan) = self.plans.lock().expect("matcher plans").get(key) {
            return plan.clone();
        }
        let plan = Arc::new(Plan::new(&self.automations, &self.for_key(key)));
        let mut plans = self.plans.lock().expect("matcher plans");
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(key.to_owned(), plan.clone());
        plan
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

    #[test]
    fn a_batch_splits_into_even_ordered_parts() {
        let cases: [(usize, usize, &[usize]); 6] =
            [(0, 2, &[]), (1, 2, &[1]), (5, 2, &[3, 2]), (6, 2, &[3, 3]), (7, 3, &[3, 2, 2]), (4, 0, &[4])];
        for (n, parts, sizes) in cases {
            let items: Vec<usize> = (0..n).collect();
            let split = split_evenly(items.clone(), parts);
            assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), sizes, "{n} in {parts}");
            assert_eq!(split.concat(), items, "{n} in {parts}: order kept");
        }
    }

    #[test]
    fn a_batch_catches_up_only_once_its_oldest_delivery_waited_too_long() {
        let now = crate::model::now();
        let after = Duration::from_millis(500);
        let ago = |ms| Some(now - chrono::Duration::milliseconds(ms));
        assert!(!behind(None, now, after), "an empty batch");
        assert!(!behind(ago(0), now, after));
        assert!(!behind(ago(500), now, after), "exactly the bound is still on time");
        assert!(behind(ago(501), now, after));
        assert!(behind(ago(60_000), now, after));
        // A clock that went back (another replica's) is not behind.
        assert!(!behind(Some(now + chrono::Duration::seconds(5)), now, after));
    }

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

    fn filtered(n: u128, on: &[&str], filter: Option<&str>, plugin: &str) -> Automation {
        let mut a = automation(n, on);
        a.trigger = Trigger::Event {
            source: "github".into(),
            on: on.iter().map(|s| (*s).to_owned()).collect(),
            filter: filter.map(str::to_owned),
            filter_plugin: plugin.into(),
        };
        a
    }

    #[test]
    fn a_patch_replaces_adds_and_removes_only_what_changed() {
        let idx = SourceIndex::new(vec![
            automation(1, &["push"]),
            automation(2, &["issues.opened"]),
            automation(3, &["issues.*"]),
        ]);
        // Untouched: a change to another source's automation.
        let mut elsewhere = automation(9, &["push"]);
        elsewhere.trigger = Trigger::Event {
            source: "linear".into(),
            on: vec!["push".into()],
            filter: None,
            filter_plugin: "jmespath".into(),
        };
        assert!(idx.patched("github", &[(elsewhere.clone(), false)]).is_none());
        // 2 now fires on push, 3 was deleted, 4 is new, 5 is new but disabled,
        // 1 moved to another source.
        let mut moved = elsewhere;
        moved.id = Uuid::from_u128(1);
        let mut disabled = automation(5, &["push"]);
        disabled.enabled = false;
        let changed = vec![
            (moved, false),
            (automation(2, &["push"]), false),
            (automation(3, &["issues.*"]), true),
            (automation(4, &["issues.opened"]), false),
            (disabled, false),
        ];
        let new = idx.patched("github", &changed).expect("touched");
        let ids: Vec<u128> = new.automations.iter().map(|a| a.id.as_u128()).collect();
        assert_eq!(ids, vec![2, 4]);
        assert_eq!(new.for_key("push"), vec![0]);
        assert_eq!(new.for_key("issues.opened"), vec![1]);
        assert!(new.for_key("issues.closed").is_empty());
    }

    #[test]
    fn a_plan_calls_each_plugin_once_with_each_expression_once() {
        let idx = SourceIndex::new(vec![
            filtered(0, &["issues.opened"], None, "jmespath"),
            filtered(1, &["issues.*"], Some("action == 'opened'"), "jmespath"),
            filtered(2, &["issues.opened"], Some("  "), "jmespath"),
            filtered(3, &["issues.opened"], Some("action == 'opened'"), "jmespath"),
            filtered(4, &["issues.opened"], Some("sender.login == 'a'"), "jmespath"),
            filtered(5, &["issues.opened"], Some("x"), "js"),
            filtered(6, &["push"], Some("action == 'opened'"), "jmespath"),
        ]);
        let plan = idx.plan("issues.opened");
        let expected = Plan {
            // A blank filter is no filter.
            unfiltered: vec![0, 2],
            calls: vec![
                PluginCall {
                    plugin: "jmespath".into(),
                    expressions: Arc::new(vec!["action == 'opened'".into(), "sender.login == 'a'".into()]),
                    members: vec![(1, 0), (3, 0), (4, 1)],
                },
                PluginCall { plugin: "js".into(), expressions: Arc::new(vec!["x".into()]), members: vec![(5, 0)] },
            ],
        };
        assert_eq!(*plan, expected);
        // Kept: the same plan, not made again.
        assert!(Arc::ptr_eq(&plan, &idx.plan("issues.opened")));
        assert_eq!(*idx.plan("release.published"), Plan::default());
        assert_eq!(idx.plan("push").calls[0].members, vec![(6, 0)]);
    }
}
