//! `/v1/automations`: create, list, read, change, delete and dispatch.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::parse_json;
use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller, Error, ErrorBody, Page, PageQuery};
use crate::model::{
    Automation, BundleRef, ConcurrencyPolicy, ExecutorRef, NotifyTarget, PresetRef, Run, RunTrigger, SecretEnv, Trigger,
};
use crate::plugins::manifest::Kind;
use crate::plugins::registry::LookupError;
use crate::plugins::{CallError, Plugin};
use crate::scheduler::cron::{CronError, Schedule};
use crate::scheduler::next_fire_for;
use crate::store::AutomationFilter;
use crate::store::SlotRecord;

/// Default run time budget, in seconds.
const DEFAULT_TIMEOUT_SECONDS: u32 = 600;
/// Longest allowed run time budget: one day.
const MAX_TIMEOUT_SECONDS: u32 = 86_400;
/// Default number of simultaneous runs per automation.
const DEFAULT_CONCURRENCY: u32 = 1;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(automations_create, automations_list))
        .routes(routes!(automations_get, automations_update, automations_delete))
        .routes(routes!(automations_dispatch))
        .routes(routes!(automations_test))
        .routes(routes!(automations_schedule))
        .routes(routes!(schedule_preview))
        .routes(routes!(automations_slots))
        .routes(routes!(tags_list))
}

/// The body of `POST /v1/automations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AutomationCreate {
    /// A name, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// What it is for, up to 2,000 characters.
    #[serde(default)]
    pub description: String,
    /// Short labels (at most 20, each 1 to 40 of `a-z0-9-_.:/`; lowered and sorted).
    #[serde(default)]
    pub tags: Vec<String>,
    /// What fires it.
    pub trigger: Trigger,
    /// An uploaded bundle to run.
    #[serde(default)]
    pub bundle: Option<BundleRef>,
    /// A preset that renders the bundle.
    #[serde(default)]
    pub preset: Option<PresetRef>,
    /// The command to run from the bundle root; required with `bundle` alone.
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// Environment variables for every run.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret environment variables for every run: stored sealed, never
    /// shown again (reads give each name with `********`).
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
    /// The executor (default: the host's `AUTOMATION_DEFAULT_EXECUTOR`).
    #[serde(default)]
    pub executor: Option<ExecutorRef>,
    /// Run time budget in seconds, 1 to 86400 (default 600).
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// Whether triggers fire it (default true, false for a draft).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A draft: tried with `POST /v1/automations/{id}/test`, never fired by
    /// its trigger until it is enabled (default false; not with `"enabled": true`).
    #[serde(default)]
    pub draft: bool,
    /// Most simultaneous runs, 1 to 1000 (default 1).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// What a run over the limit does: `queue` (default) or `skip`.
    #[serde(default)]
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// Where to send a signed message when a run ends in one of `on`.
    #[serde(default)]
    pub notify: Option<NotifyTarget>,
}

/// The body of `PATCH /v1/automations/{id}`: any subset of the fields;
/// `null` clears `bundle`, `preset` and `entrypoint`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AutomationPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New tags (replace the old ones).
    pub tags: Option<Vec<String>>,
    /// New trigger.
    pub trigger: Option<Trigger>,
    /// New bundle, or null to remove it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<BundleRef>)]
    pub bundle: Option<Option<BundleRef>>,
    /// New preset, or null to remove it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<PresetRef>)]
    pub preset: Option<Option<PresetRef>>,
    /// New entrypoint, or null to remove it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub entrypoint: Option<Option<String>>,
    /// New environment (replaces the old one).
    pub env: Option<BTreeMap<String, String>>,
    /// Changes to the secret environment, merged by name: a string sets
    /// that variable, `null` removes it, names not given are kept.
    #[schema(value_type = Option<Object>)]
    pub secret_env: Option<BTreeMap<String, Option<String>>>,
    /// New executor.
    pub executor: Option<ExecutorRef>,
    /// New time budget.
    pub timeout_seconds: Option<u32>,
    /// Enable (which also ends a draft and clears `disabled_reason`) or disable.
    pub enabled: Option<bool>,
    /// Make it a draft again (disabled, fired by nothing but a test), or,
    /// with `false`, leave draft without enabling it.
    pub draft: Option<bool>,
    /// New concurrency limit.
    pub concurrency: Option<u32>,
    /// New concurrency policy.
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// New notification target, or null to remove it; a `secret` sent back
    /// as `********` keeps the stored one.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<NotifyTarget>)]
    pub notify: Option<Option<NotifyTarget>>,
}

/// Distinguishes an absent field (outer `None`) from `null` (`Some(None)`).
fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The body of `POST /v1/automations/{id}/dispatch` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DispatchBody {
    /// A payload handed to the run as its trigger payload.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// Filters for listing automations.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Page size, 1 to 100 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only enabled (true) or disabled (false) automations.
    pub enabled: Option<bool>,
    /// Only this trigger type: `cron`, `event` or `manual`.
    pub trigger: Option<String>,
    /// Only automations with this tag.
    pub tag: Option<String>,
    /// Only event automations of this source.
    pub source: Option<String>,
    /// Only automations whose name contains this (case-insensitive).
    pub q: Option<String>,
    /// Only drafts (true) or only the others (false).
    pub draft: Option<bool>,
}

/// Creates an automation.
#[utoipa::path(
    post,
    path = "/v1/automations",
    tag = "automations",
    request_body = AutomationCreate,
    security(("api_key" = [])),
    responses(
        (status = 201, body = Automation),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 422, description = "invalid automation", body = ErrorBody),
    )
)]
async fn automations_create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AutomationCreate>,
) -> Result<(StatusCode, Json<Automation>), Error> {
    let now = crate::model::now();
    let automation = Automation {
        id: Uuid::now_v7(),
        name: body.name,
        description: body.description,
        tags: tags(&body.tags)?,
        trigger: body.trigger,
        bundle: body.bundle,
        preset: body.preset,
        entrypoint: body.entrypoint,
        env: body.env,
        secret_env: SecretEnv(body.secret_env),
        executor: body.executor.unwrap_or_else(|| ExecutorRef {
            plugin: state.config.default_executor.clone(),
            config: Value::Object(Default::default()),
        }),
        timeout_seconds: body.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
        // Made from nothing: `set_state` below decides what it is.
        enabled: false,
        draft: true,
        disabled_reason: None,
        disabled_detail: None,
        disabled_at: None,
        enabled_at: None,
        notify: body.notify,
        concurrency: body.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
        concurrency_policy: body.concurrency_policy.unwrap_or_default(),
        filter_errors: Default::default(),
        last_triggered_at: None,
        next_fire_at: None,
        created_at: now,
        updated_at: now,
    };
    let mut automation = automation;
    automation
        .set_state(Some(body.enabled.unwrap_or(!body.draft)), Some(body.draft), now)
        .map_err(|e| Error::invalid("invalid_state", e))?;
    validate(&state, &automation).await?;
    automation.next_fire_at = next_fire_for(&automation.trigger, automation.enabled, None);
    state.store.insert_automation(&automation).await?;
    state.scheduler.wake();
    state.matcher.invalidate();
    tracing::info!(automation.id = %automation.id, name = %automation.name, trigger = automation.trigger.kind(), "automation created");
    Ok((StatusCode::CREATED, Json(present(&state, automation))))
}

/// Lists automations, newest first.
#[utoipa::path(
    get,
    path = "/v1/automations",
    tag = "automations",
    params(ListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<Automation>), (status = 400, body = ErrorBody))
)]
async fn automations_list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<Automation>>, Error> {
    let (limit, before) = PageQuery { limit: q.limit, cursor: q.cursor }.resolve()?;
    if let Some(t) = &q.trigger
        && !["cron", "event", "manual"].contains(&t.as_str())
    {
        return Err(Error::BadRequest("invalid_query", format!("trigger must be cron, event or manual (got {t:?})")));
    }
    if q.q.as_ref().is_some_and(|q| q.chars().count() > 200) {
        return Err(Error::BadRequest("invalid_query", "q is longer than 200 characters".into()));
    }
    let filter = AutomationFilter {
        enabled: q.enabled,
        trigger_type: q.trigger,
        tag: q.tag,
        source: q.source,
        name_contains: q.q.filter(|q| !q.is_empty()),
        draft: q.draft,
    };
    let page = state.store.list_automations(&filter, limit + 1, before).await?;
    let items = page.items.into_iter().map(|a| present(&state, a)).collect();
    Ok(Json(Page::new(items, page.total, limit, |a| a.id)))
}

/// Reads an automation.
#[utoipa::path(
    get,
    path = "/v1/automations/{id}",
    tag = "automations",
    params(("id" = Uuid, Path, description = "Automation id")),
    security(("api_key" = [])),
    responses((status = 200, body = Automation), (status = 404, body = ErrorBody))
)]
async fn automations_get(State(state): State<AppState>, ApiPath(id): ApiPath<Uuid>) -> Result<Json<Automation>, Error> {
    Ok(Json(present(&state, load(&state, id).await?)))
}

/// Changes some of an automation's fields.
#[utoipa::path(
    patch,
    path = "/v1/automations/{id}",
    tag = "automations",
    params(("id" = Uuid, Path, description = "Automation id")),
    request_body = AutomationPatch,
    security(("api_key" = [])),
    responses((status = 200, body = Automation), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
async fn automations_update(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(patch): ApiJson<AutomationPatch>,
) -> Result<Json<Automation>, Error> {
    let mut a = load(&state, id).await?;
    let before = (a.trigger.clone(), a.enabled, a.next_fire_at);
    let AutomationPatch {
        name,
        description,
        tags: new_tags,
        trigger,
        bundle,
        preset,
        entrypoint,
        env,
        secret_env,
        executor,
        timeout_seconds,
        enabled,
        draft,
        concurrency,
        concurrency_policy,
        notify,
    } = patch;
    if let Some(v) = name {
        a.name = v;
    }
    if let Some(v) = description {
        a.description = v;
    }
    if let Some(v) = new_tags {
        a.tags = tags(&v)?;
    }
    if let Some(v) = trigger {
        a.trigger = v;
    }
    if let Some(v) = bundle {
        a.bundle = v;
    }
    if let Some(v) = preset {
        a.preset = v;
    }
    if let Some(v) = entrypoint {
        a.entrypoint = v;
    }
    if let Some(v) = env {
        a.env = v;
    }
    for (name, value) in secret_env.unwrap_or_default() {
        match value {
            Some(v) => a.secret_env.0.insert(name, v),
            None => a.secret_env.0.remove(&name),
        };
    }
    if let Some(mut v) = executor {
        // A write-only field sent back masked, as a read showed it, keeps
        // its stored value.
        if v.plugin == a.executor.plugin {
            keep_masked(&write_only_fields(&state, &v.plugin), &mut v.config, &a.executor.config);
        }
        a.executor = v;
    }
    if let Some(v) = timeout_seconds {
        a.timeout_seconds = v;
    }
    a.set_state(enabled, draft, crate::model::now()).map_err(|e| Error::invalid("invalid_state", e))?;
    if let Some(v) = concurrency {
        a.concurrency = v;
    }
    if let Some(v) = concurrency_policy {
        a.concurrency_policy = v;
    }
    if let Some(mut v) = notify {
        if let (Some(new), Some(old)) = (&mut v, &a.notify)
            && new.secret.0 == crate::model::MASK
        {
            new.secret = old.secret.clone();
        }
        a.notify = v;
    }
    a.updated_at = crate::model::now();
    validate(&state, &a).await?;
    a.next_fire_at = next_fire_for(&a.trigger, a.enabled, Some((&before.0, before.1, before.2)));
    if !state.store.update_automation(&a).await? {
        return Err(Error::not_found("automation", id));
    }
    state.scheduler.wake();
    state.matcher.invalidate();
    tracing::info!(automation.id = %id, "automation updated");
    Ok(Json(present(&state, a)))
}

/// Deletes an automation (soft: it stays readable in old runs, never fires
/// again, and its pending runs are cancelled).
#[utoipa::path(
    delete,
    path = "/v1/automations/{id}",
    tag = "automations",
    params(("id" = Uuid, Path, description = "Automation id")),
    security(("api_key" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody))
)]
async fn automations_delete(State(state): State<AppState>, ApiPath(id): ApiPath<Uuid>) -> Result<StatusCode, Error> {
    if state.store.soft_delete_automation(id).await? {
        state.matcher.invalidate();
        tracing::info!(automation.id = %id, "automation deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found("automation", id))
    }
}

/// The body of `POST /v1/automations/{id}/test`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestBody {
    /// A sample event for an event automation (default: the payload `{}`
    /// under the trigger's source and first `on` key).
    #[serde(default)]
    event: Option<SampleEvent>,
    /// Also create a real run, its trigger kind `test` (default false).
    #[serde(default)]
    run: bool,
}

/// A sample event.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SampleEvent {
    /// The source (default: the trigger's).
    source: Option<String>,
    /// The event key.
    key: String,
    /// The payload (a JSON object).
    #[schema(value_type = Object)]
    payload: Value,
}

/// What a trigger would do with the sample.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TestResult {
    /// Whether the automation would fire: the event's source and key match
    /// the trigger and the filter matches (always true for cron and manual).
    fires: bool,
    /// Why it would not fire, when it would not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The filter's verdict, for event automations with a filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<FilterVerdict>,
    /// The bundle a run would get.
    bundle: BundleSummary,
    /// The run created with `"run": true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<Run>,
}

/// A filter's verdict on the sample.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FilterVerdict {
    /// True if it matched.
    matches: bool,
    /// The evaluation error, if it failed (counts as no match).
    error: Option<String>,
}

/// The rendered bundle, without its contents.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BundleSummary {
    /// The command a run starts.
    entrypoint: String,
    /// The files the preset renders (an uploaded archive is not listed).
    files: Vec<String>,
    /// Whether an uploaded archive is unpacked first.
    archive: bool,
}

/// Tries an automation's trigger without waiting for it: whether a sample
/// event would fire it (source, key, filter), and the bundle a run would
/// get (its preset rendered now). With `"run": true`, also creates a real
/// run (trigger kind `test`), even if the sample would not fire it or the
/// automation is disabled. Changes nothing else.
#[utoipa::path(
    post,
    path = "/v1/automations/{id}/test",
    tag = "automations",
    params(("id" = Uuid, Path, description = "Automation id")),
    request_body(content = Option<TestBody>, description = "optional; `{\"event\": {\"key\", \"payload\"}, \"run\": true}`"),
    security(("api_key" = [])),
    responses((status = 200, body = TestResult), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
async fn automations_test(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<Uuid>,
    body: Bytes,
) -> Result<Json<TestResult>, Error> {
    let body: TestBody = if no_body(&body) { TestBody::default() } else { parse_json(&body)? };
    let automation = load(&state, id).await?;
    let (mut fires, mut reason, mut filter_verdict) = (true, None, None);
    let mut payload = Value::Object(Default::default());
    let mut event_key = None;
    if let Trigger::Event { source, on, filter, filter_plugin } = &automation.trigger {
        let sample = body.event.unwrap_or(SampleEvent {
            source: None,
            key: on.first().cloned().unwrap_or_default(),
            payload: Value::Object(Default::default()),
        });
        check_json_object("event.payload", &sample.payload)?;
        let sample_source = sample.source.unwrap_or_else(|| source.clone());
        if &sample_source != source {
            (fires, reason) = (false, Some(format!("the trigger's source is {source}, not {sample_source}")));
        } else if !on.iter().any(|p| crate::events::keys::key_matches(p, &sample.key)) {
            (fires, reason) = (false, Some(format!("event key {:?} matches none of {on:?}", sample.key)));
        } else if let Some(expr) = filter {
            let plugin = check_plugin(&state, "trigger.filter_plugin", filter_plugin, Kind::Filter)?;
            let event = crate::plugins::FilterEvent::new(&sample_source, &sample.key, &sample.payload.to_string());
            let expr = expr.clone();
            let (result, _) =
                state.plugins.blocking(move |rt| rt.filter_matches(&plugin, &event, std::slice::from_ref(&expr))).await;
            let verdict = match result.map(|v| v.into_iter().next()) {
                Ok(Some(Ok(m))) => FilterVerdict { matches: m, error: None },
                Ok(Some(Err(e))) => FilterVerdict { matches: false, error: Some(e.message) },
                Ok(None) => FilterVerdict { matches: false, error: Some("the filter plugin gave no verdict".into()) },
                Err(e) => FilterVerdict { matches: false, error: Some(e.to_string()) },
            };
            if !verdict.matches {
                fires = false;
                reason = Some(match &verdict.error {
                    Some(e) => format!("the filter failed: {e}"),
                    None => "the filter is false for this payload".into(),
                });
            }
            filter_verdict = Some(verdict);
        }
        payload = sample.payload;
        event_key = Some(sample.key);
    }
    let mut summary = BundleSummary {
        entrypoint: automation.entrypoint.clone().unwrap_or_default(),
        files: Vec::new(),
        archive: automation.bundle.is_some(),
    };
    if let Some(preset) = &automation.preset {
        let bundle = render_preset(&state, preset).await?;
        summary.files = bundle.files.iter().map(|(path, _, _)| path.clone()).collect();
        if automation.entrypoint.is_none() {
            summary.entrypoint = bundle.entrypoint;
        }
    }
    let run = if body.run {
        let trigger = RunTrigger { kind: "test".into(), payload, event_id: None, event_key, scheduled_for: None };
        let run = Run::pending(automation.id, trigger, &caller.to_string(), "test run".into());
        state.store.insert_run(&run, None).await?;
        state.dispatcher.wake();
        tracing::info!(automation.id = %id, run.id = %run.id, "test run created");
        Some(run)
    } else {
        None
    };
    Ok(Json(TestResult { fires, reason, filter: filter_verdict, bundle: summary, run }))
}

/// How long an `Idempotency-Key` keeps its run.
const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;

/// Fires an automation now: creates a `pending` run. Works on disabled
/// automations too (a manual dispatch is an explicit request). With an
/// `Idempotency-Key` header (1 to 255 visible ASCII characters), the same
/// key for the same automation within 24 hours answers 200 with the first
/// run and creates none.
#[utoipa::path(
    post,
    path = "/v1/automations/{id}/dispatch",
    tag = "automations",
    params(
        ("id" = Uuid, Path, description = "Automation id"),
        ("Idempotency-Key" = Option<String>, Header, description = "retry-safe dispatch: one run per key within 24 h"),
    ),
    request_body(content = Option<DispatchBody>, description = "optional; `{\"payload\": ...}`"),
    security(("api_key" = [])),
    responses(
        (status = 201, body = Run),
        (status = 200, description = "the key was used within 24 h: the first run", body = Run),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn automations_dispatch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<Uuid>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Run>), Error> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().ok().filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
            Some(k.ok_or_else(|| {
                Error::BadRequest(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                )
            })?)
        }
    };
    let body: DispatchBody = if no_body(&body) { DispatchBody::default() } else { parse_json(&body)? };
    let automation = load(&state, id).await?;
    let trigger = RunTrigger {
        kind: "manual".into(),
        payload: body.payload,
        event_id: None,
        event_key: None,
        scheduled_for: None,
    };
    let run = Run::pending(automation.id, trigger, &caller.to_string(), "dispatched manually".into());
    if let Some(key) = key {
        let since = run.created_at - chrono::Duration::hours(IDEMPOTENCY_WINDOW_HOURS);
        if let crate::store::Dispatched::Replayed(first) = state.store.insert_run_once(&run, key, since).await? {
            tracing::info!(automation.id = %id, run.id = %first, "dispatch replayed (same Idempotency-Key)");
            let first_run = state.store.get_run(first).await?.ok_or_else(|| {
                Error::Conflict(
                    "idempotency_key_used",
                    format!("Idempotency-Key {key:?} was used for run {first}, which has since been deleted"),
                )
            })?;
            return Ok((StatusCode::OK, Json(first_run)));
        }
    } else {
        state.store.insert_run(&run, None).await?;
    }
    state.dispatcher.wake();
    tracing::info!(automation.id = %id, run.id = %run.id, "run dispatched manually");
    Ok((StatusCode::CREATED, Json(run)))
}

/// Options for the next fire times.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ScheduleQuery {
    /// How many fire times, 1 to 100 (default 10).
    count: Option<usize>,
    /// Start after this time (RFC 3339; default now).
    after: Option<String>,
}

/// One upcoming fire time.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FireTime {
    /// In UTC.
    utc: chrono::DateTime<chrono::Utc>,
    /// In the schedule's time zone, with its offset.
    local: String,
}

/// The next fire times of a cron automation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ScheduleView {
    /// The cron expression.
    schedule: String,
    /// Its time zone.
    timezone: String,
    /// The next fire times after `after`.
    items: Vec<FireTime>,
}

/// A cron schedule to try before saving it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PreviewQuery {
    /// The cron expression.
    schedule: String,
    /// Its IANA time zone (default `UTC`).
    timezone: Option<String>,
    /// How many fire times, 1 to 100 (default 5).
    count: Option<usize>,
}

/// The next fire times of a cron schedule not saved yet (what a form shows
/// as its user types), or a 422 naming the field that is wrong.
#[utoipa::path(
    get,
    path = "/v1/schedule",
    tag = "automations",
    params(PreviewQuery),
    security(("api_key" = [])),
    responses((status = 200, body = ScheduleView), (status = 422, body = ErrorBody))
)]
async fn schedule_preview(ApiQuery(q): ApiQuery<PreviewQuery>) -> Result<Json<ScheduleView>, Error> {
    let timezone = q.timezone.unwrap_or_else(|| "UTC".to_owned());
    let count = q.count.unwrap_or(5);
    if !(1..=100).contains(&count) {
        return Err(Error::BadRequest("invalid_query", format!("count must be 1 to 100 (got {count})")));
    }
    check_len("trigger.schedule", &q.schedule, 256)?;
    check_len("trigger.timezone", &timezone, 64)?;
    let parsed = Schedule::parse(&q.schedule, &timezone).map_err(|e| match e {
        CronError::TimeZone(_) => Error::invalid("invalid_timezone", format!("trigger.timezone: {e}")),
        _ => Error::invalid("invalid_cron", format!("trigger.schedule: {e}")),
    })?;
    let tz = parsed.timezone();
    let items = parsed
        .upcoming(crate::model::now(), count)
        .into_iter()
        .map(|utc| FireTime { utc, local: utc.with_timezone(&tz).to_rfc3339() })
        .collect();
    Ok(Json(ScheduleView { schedule: q.schedule, timezone, items }))
}

/// Lists the next fire times of a cron automation, in UTC and local time.
#[utoipa::path(
    get,
    path = "/v1/automations/{id}/schedule",
    tag = "automations",
    params(("id" = Uuid, Path, description = "Automation id"), ScheduleQuery),
    security(("api_key" = [])),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
async fn automations_schedule(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<ScheduleQuery>,
) -> Result<Json<ScheduleView>, Error> {
    let a = load(&state, id).await?;
    let Trigger::Cron { schedule, timezone, .. } = &a.trigger else {
        return Err(Error::invalid(
            "not_cron",
            format!("automation {id} has a {} trigger, not a cron schedule", a.trigger.kind()),
        ));
    };
    let count = q.count.unwrap_or(10);
    if !(1..=100).contains(&count) {
        return Err(Error::BadRequest("invalid_query", format!("count must be 1 to 100 (got {count})")));
    }
    let after = match &q.after {
        None => crate::model::now(),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| Error::BadRequest("invalid_query", format!("after must be an RFC 3339 time ({e}): {t:?}")))?
            .with_timezone(&chrono::Utc),
    };
    let parsed = Schedule::parse(schedule, timezone).map_err(|e| Error::invalid("invalid_cron", e.to_string()))?;
    let tz = parsed.timezone();
    let items = parsed
        .upcoming(after, count)
        .into_iter()
        .map(|utc| FireTime { utc, local: utc.with_timezone(&tz).to_rfc3339() })
        .collect();
    Ok(Json(ScheduleView { schedule: schedule.clone(), timezone: timezone.clone(), items }))
}

/// Lists a cron automation's recorded slots and their outcomes, newest first.
#[utoipa::path(
    get,
    path = "/v1/automations/{id}/slots",
    tag = "automations",
    params(("id" = Uuid, Path, description = "Automation id"), ("limit" = Option<u32>, Query, description = "1 to 1000, default 100")),
    security(("api_key" = [])),
    responses((status = 200, body = Vec<SlotRecord>), (status = 404, body = ErrorBody))
)]
async fn automations_slots(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<SlotsQuery>,
) -> Result<Json<Vec<SlotRecord>>, Error> {
    load(&state, id).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::BadRequest("invalid_query", format!("limit must be 1 to 1000 (got {limit})")));
    }
    Ok(Json(state.store.list_slots(id, limit).await?))
}

/// Options for listing slots.
#[derive(Debug, Deserialize)]
pub(crate) struct SlotsQuery {
    limit: Option<u32>,
}

/// An optional body that is absent: empty, blank, or JSON `null`.
fn no_body(body: &[u8]) -> bool {
    let text = body.trim_ascii();
    text.is_empty() || text == b"null"
}

async fn load(state: &AppState, id: Uuid) -> Result<Automation, Error> {
    state.store.get_automation(id).await?.ok_or_else(|| Error::not_found("automation", id))
}

/// Checks an automation before it is stored; the first problem is a 422 that
/// names the field.
async fn validate(state: &AppState, a: &Automation) -> Result<(), Error> {
    check_text("name", &a.name, 200)?;
    check_len("description", &a.description, 2000)?;
    match &a.trigger {
        Trigger::Cron { schedule, timezone, .. } => {
            check_len("trigger.schedule", schedule, 256)?;
            check_len("trigger.timezone", timezone, 64)?;
            Schedule::parse(schedule, timezone).map_err(|e| match e {
                CronError::TimeZone(_) => Error::invalid("invalid_timezone", format!("trigger.timezone: {e}")),
                _ => Error::invalid("invalid_cron", format!("trigger.schedule: {e}")),
            })?;
        }
        Trigger::Event { source, on, filter, filter_plugin } => {
            check_name("trigger.source", source)?;
            if on.is_empty() || on.len() > 50 {
                return Err(Error::invalid("invalid_trigger", "trigger.on must list 1 to 50 event keys or patterns"));
            }
            for pattern in on {
                check_len("trigger.on", pattern, 200)?;
                if pattern.is_empty() || pattern.chars().any(char::is_whitespace) {
                    return Err(Error::invalid(
                        "invalid_trigger",
                        format!("trigger.on: {pattern:?} must be non-empty without spaces"),
                    ));
                }
            }
            check_name("trigger.filter_plugin", filter_plugin)?;
            match filter.as_deref().map(str::trim) {
                Some(f) if !f.is_empty() => {
                    check_len("trigger.filter", f, 8192)?;
                    validate_filter(state, filter_plugin, f).await?;
                }
                _ => {
                    check_plugin(state, "trigger.filter_plugin", filter_plugin, Kind::Filter)?;
                }
            }
        }
        Trigger::Manual {} => {}
    }
    if a.bundle.is_none() && a.preset.is_none() {
        return Err(Error::invalid("nothing_to_run", "give a bundle (an upload), a preset, or both"));
    }
    if let Some(b) = &a.bundle {
        if state.store.get_upload(b.upload_id).await?.is_none() {
            return Err(Error::invalid(
                "unknown_upload",
                format!("bundle.upload_id: upload {} does not exist", b.upload_id),
            ));
        }
        if a.preset.is_none() && a.entrypoint.is_none() {
            return Err(Error::invalid(
                "missing_entrypoint",
                "entrypoint is required to run a bundle without a preset",
            ));
        }
    }
    if let Some(e) = &a.entrypoint {
        check_entrypoint(e)?;
    }
    if let Some(p) = &a.preset {
        check_name("preset.name", &p.name)?;
        check_json_object("preset.config", &p.config)?;
        check_config(state, "invalid_preset_config", "preset.config", &p.name, &p.config)?;
        let bundle = render_preset(state, p).await?;
        if bundle.entrypoint.trim().is_empty() && a.entrypoint.is_none() {
            return Err(Error::invalid(
                "missing_entrypoint",
                format!("preset {} gives no entrypoint; set one", p.name),
            ));
        }
    }
    check_name("executor.plugin", &a.executor.plugin)?;
    check_json_object("executor.config", &a.executor.config)?;
    check_plugin(state, "executor.plugin", &a.executor.plugin, Kind::Executor)?;
    check_config(state, "invalid_executor_config", "executor.config", &a.executor.plugin, &a.executor.config)?;
    check_env(&a.env)?;
    check_env(&a.secret_env.0)?;
    if let Some(name) = a.secret_env.0.keys().find(|k| a.env.contains_key(*k)) {
        return Err(Error::invalid("invalid_env", format!("{name} is in both env and secret_env; keep it in one")));
    }
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&a.timeout_seconds) {
        return Err(Error::invalid(
            "invalid_timeout",
            format!("timeout_seconds must be 1 to {MAX_TIMEOUT_SECONDS} (got {})", a.timeout_seconds),
        ));
    }
    if let Some(n) = &a.notify {
        crate::notify::check_target(n).map_err(|e| Error::invalid("invalid_notify", e.0))?;
    }
    if !(1..=1000).contains(&a.concurrency) {
        return Err(Error::invalid(
            "invalid_concurrency",
            format!("concurrency must be 1 to 1000 (got {})", a.concurrency),
        ));
    }
    Ok(())
}

/// Checks a plugin configuration against the JSON Schema the plugin
/// describes, so a bad configuration is a 422 naming the field when the
/// automation is saved, not a failed run later. The first problem is
/// reported (`executor.config.network: "wifi" is not one of ...`), with
/// the value masked where the schema marks the field `writeOnly`. A
/// plugin without a schema takes any object; one whose schema this host
/// cannot compile too, with a warning (the plugin's own check still runs).
fn check_config(state: &AppState, code: &'static str, field: &str, plugin: &str, config: &Value) -> Result<(), Error> {
    let Some(schema) = state.plugins.get(plugin).and_then(|p| p.description.as_ref()?.config_schema.clone()) else {
        return Ok(());
    };
    let validator = match jsonschema::validator_for(&schema) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(plugin, error = %e.masked(), "the plugin's configuration schema does not compile; not checked");
            return Ok(());
        }
    };
    let Some(error) = validator.iter_errors(config).next() else { return Ok(()) };
    let pointer = error.instance_path().to_string();
    let path: Vec<&str> = pointer.split('/').filter(|p| !p.is_empty()).collect();
    let secret = path.first().is_some_and(|top| write_only_in(&schema).iter().any(|f| f == top));
    let message = if secret { error.masked().to_string() } else { error.to_string() };
    let at = if path.is_empty() { field.to_owned() } else { format!("{field}.{}", path.join(".")) };
    Err(Error::invalid(code, format!("{at}: {message} (the schema of plugin {plugin})")))
}

/// The top-level configuration fields a plugin's JSON Schema marks
/// `writeOnly`: secrets the API takes but never shows.
fn write_only_fields(state: &AppState, plugin: &str) -> Vec<String> {
    let schema = state.plugins.get(plugin).and_then(|p| p.description.as_ref().and_then(|d| d.config_schema.clone()));
    schema.map(|s| write_only_in(&s)).unwrap_or_default()
}

/// The `writeOnly` properties of an object schema.
pub(crate) fn write_only_in(schema: &Value) -> Vec<String> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return Vec::new() };
    props.iter().filter(|(_, p)| p.get("writeOnly") == Some(&Value::Bool(true))).map(|(k, _)| k.clone()).collect()
}

/// Replaces the values of `fields` in `config` with the mask.
pub(crate) fn mask_fields(fields: &[String], config: &mut Value) {
    if let Some(obj) = config.as_object_mut() {
        for f in fields {
            if let Some(v) = obj.get_mut(f) {
                *v = Value::String(crate::model::MASK.to_owned());
            }
        }
    }
}

/// Where `new` holds the mask for one of `fields`, puts back `old`'s value.
pub(crate) fn keep_masked(fields: &[String], new: &mut Value, old: &Value) {
    let (Some(new), Some(old)) = (new.as_object_mut(), old.as_object()) else { return };
    for f in fields {
        if new.get(f).and_then(Value::as_str) == Some(crate::model::MASK)
            && let Some(v) = old.get(f)
        {
            new.insert(f.clone(), v.clone());
        }
    }
}

/// An automation as the API shows it: write-only configuration masked
/// (secret env masks itself).
fn present(state: &AppState, mut a: Automation) -> Automation {
    let fields = write_only_fields(state, &a.executor.plugin);
    mask_fields(&fields, &mut a.executor.config);
    if let Some(p) = &mut a.preset {
        let fields = write_only_fields(state, &p.name);
        mask_fields(&fields, &mut p.config);
    }
    a
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::invalid("too_long", format!("{field} is longer than {max} bytes")));
    }
    Ok(())
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Error> {
    check_len(field, value, max)?;
    if value.trim().is_empty() {
        return Err(Error::invalid("invalid_field", format!("{field} must not be blank")));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid("invalid_field", format!("{field} must not contain control characters")));
    }
    Ok(())
}

/// Tags, checked and normalised (lowered, sorted, deduplicated).
fn tags(given: &[String]) -> Result<Vec<String>, Error> {
    crate::model::check_tags(given).map_err(|e| Error::invalid("invalid_tags", format!("tags: {e}")))
}

/// One tag and how many live automations have it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TagCount {
    /// The tag.
    tag: String,
    /// Live automations with it.
    count: i64,
}

/// Every tag in use, with how many automations have it, by name.
#[utoipa::path(get, path = "/v1/tags", tag = "automations", security(("api_key" = [])), responses((status = 200, body = Vec<TagCount>)))]
async fn tags_list(State(state): State<AppState>) -> Result<Json<Vec<TagCount>>, Error> {
    let counts = state.store.tag_counts().await?;
    Ok(Json(counts.into_iter().map(|(tag, count)| TagCount { tag, count }).collect()))
}

/// Plugin and source names: lowercase letters, digits, `-` and `_`, 1 to 64.
pub(crate) fn check_name(field: &str, value: &str) -> Result<(), Error> {
    crate::model::check_name(value).map_err(|e| Error::invalid("invalid_name", format!("{field} {e}")))
}

/// Checks that `name` is a loaded plugin of `kind`.
pub(super) fn check_plugin(state: &AppState, field: &str, name: &str, kind: Kind) -> Result<Arc<Plugin>, Error> {
    state.plugins.require(name, kind).map_err(|e| match e {
        LookupError::Unknown { .. } => Error::invalid("unknown_plugin", format!("{field}: {e}")),
        LookupError::WrongKind { .. } => Error::invalid("wrong_plugin_kind", format!("{field}: {e}")),
    })
}

/// Asks the filter plugin whether an expression is valid; a syntax error is a
/// 422 quoting the plugin's message.
pub(crate) async fn validate_filter(state: &AppState, plugin_name: &str, filter: &str) -> Result<(), Error> {
    let plugin = check_plugin(state, "trigger.filter_plugin", plugin_name, Kind::Filter)?;
    let expr = filter.to_owned();
    let (result, _) = state.plugins.blocking(move |rt| rt.filter_validate(&plugin, &expr)).await;
    result.map_err(|e| match e {
        CallError::Guest { error, .. } => {
            Error::invalid("invalid_filter", format!("trigger.filter: {}", error.message))
        }
        other => Error::invalid("filter_plugin_failed", format!("trigger.filter could not be checked: {other}")),
    })
}

/// Renders a preset once to check its configuration; returns the bundle.
async fn render_preset(state: &AppState, preset: &PresetRef) -> Result<crate::plugins::Bundle, Error> {
    let plugin = check_plugin(state, "preset.name", &preset.name, Kind::Preset)?;
    let config = preset.config.to_string();
    let (result, _) = state.plugins.blocking(move |rt| rt.preset_render(&plugin, &config)).await;
    result.map_err(|e| match e {
        CallError::Guest { error, .. } => {
            Error::invalid("invalid_preset_config", format!("preset.config: {}", error.message))
        }
        other => Error::invalid("preset_failed", format!("preset {} failed: {other}", preset.name)),
    })
}

fn check_json_object(field: &str, value: &Value) -> Result<(), Error> {
    if !value.is_object() {
        return Err(Error::invalid("invalid_field", format!("{field} must be a JSON object")));
    }
    if value.to_string().len() > 64 * 1024 {
        return Err(Error::invalid("too_long", format!("{field} is larger than 64 KiB")));
    }
    Ok(())
}

/// The entrypoint is split on whitespace and run without a shell, but it is
/// also shown to operators and executors that may use a shell, so shell
/// syntax and paths that leave the bundle are refused outright.
fn check_entrypoint(e: &str) -> Result<(), Error> {
    check_len("entrypoint", e, 1024)?;
    let problem = if e.trim().is_empty() {
        Some("must not be blank")
    } else if e.trim_start().starts_with('/') {
        Some("must be relative to the bundle root, not an absolute path")
    } else if e.split(|c: char| c == '/' || c.is_whitespace()).any(|part| part == "..") {
        Some("must not contain '..'")
    } else if e.chars().any(|c| ";&|`$(){}<>!\\\n\r".contains(c)) {
        Some("must not contain shell syntax (; & | ` $ ( ) { } < > ! \\ or newlines)")
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::invalid("invalid_entrypoint", format!("entrypoint {e:?} {p}"))),
        None => Ok(()),
    }
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), Error> {
    if env.len() > 100 {
        return Err(Error::invalid("invalid_env", "env may hold at most 100 variables"));
    }
    for (k, v) in env {
        let valid = !k.is_empty()
            && k.len() <= 128
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::invalid(
                "invalid_env",
                format!("env name {k:?} must match [A-Za-z_][A-Za-z0-9_]* (at most 128)"),
            ));
        }
        if k.starts_with("AUTOMATION_") {
            return Err(Error::invalid(
                "invalid_env",
                format!("env name {k:?}: the AUTOMATION_ prefix is reserved for the host"),
            ));
        }
        check_len(&format!("env.{k}"), v, 32 * 1024)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoints() {
        for ok in ["./run.sh", "python3 main.py --flag", "bin/tool x=y"] {
            check_entrypoint(ok).unwrap();
        }
        for bad in ["", "/bin/sh", "../x", "a/../../b", "run.sh; rm -rf /", "echo $HOME", "a | b", "x\ny"] {
            assert!(check_entrypoint(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn names_and_env() {
        check_name("f", "local-sandbox").unwrap();
        for bad in ["", "Upper", "-lead", "has space", &"x".repeat(65)] {
            assert!(check_name("f", bad).is_err(), "{bad:?}");
        }
        let mut env = BTreeMap::new();
        env.insert("GOOD_1".to_owned(), "v".to_owned());
        check_env(&env).unwrap();
        for bad in ["1X", "A-B", "A B", "", "AUTOMATION_RUN_ID"] {
            let mut env = BTreeMap::new();
            env.insert(bad.to_owned(), "v".to_owned());
            assert!(check_env(&env).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn write_only_config_is_masked_and_kept_when_sent_back_masked() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "url": {"type": "string"},
            "session_api_key": {"type": "string", "writeOnly": true},
            "other": {"type": "string", "writeOnly": false}
        }});
        let fields = write_only_in(&schema);
        assert_eq!(fields, vec!["session_api_key".to_owned()]);
        let stored = serde_json::json!({"url": "http://x", "session_api_key": "sk-real", "other": "o"});
        let mut shown = stored.clone();
        mask_fields(&fields, &mut shown);
        assert_eq!(shown, serde_json::json!({"url": "http://x", "session_api_key": "********", "other": "o"}));
        // Sent back as read: the stored value stays.
        let mut back = shown.clone();
        keep_masked(&fields, &mut back, &stored);
        assert_eq!(back, stored);
        // A new value replaces it; a field left out is dropped.
        let mut new = serde_json::json!({"url": "http://y", "session_api_key": "sk-new"});
        keep_masked(&fields, &mut new, &stored);
        assert_eq!(new["session_api_key"], "sk-new");
        assert!(write_only_in(&serde_json::json!({"type": "object"})).is_empty());
    }

    #[test]
    fn secret_env_never_serializes_or_prints_its_values() {
        let mut m = BTreeMap::new();
        m.insert("TOKEN".to_owned(), "ghp_supersecret".to_owned());
        let s = SecretEnv(m);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"TOKEN":"********"}"#);
        assert!(!format!("{s:?}").contains("supersecret"));
    }

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let p: AutomationPatch = serde_json::from_str(r#"{"bundle": null}"#).unwrap();
        assert_eq!(p.bundle, Some(None));
        assert!(p.preset.is_none());
        assert!(serde_json::from_str::<AutomationPatch>(r#"{"nope": 1}"#).is_err());
    }
}
