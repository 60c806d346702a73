//! `/v1/runs` and `/v1/automations/{id}/runs`: read, list (with status
//! counts), cancel, re-run and delete runs.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ApiPath, ApiQuery, AppState, Caller, Error, ErrorBody, Page, PageQuery};
use crate::model::{Run, RunStatus, StatusDetail};
use crate::store::{DeleteRun, RunChanges, RunFilter};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(runs_list))
        .routes(routes!(runs_list_for_automation))
        .routes(routes!(runs_get, runs_delete))
        .routes(routes!(runs_cancel))
        .routes(routes!(runs_rerun))
        .routes(routes!(runs_logs))
}

/// A run's output so far.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct RunLogs {
    /// The run.
    run_id: Uuid,
    /// Its status when this was read.
    status: RunStatus,
    /// Where the output comes from: `stored` (kept with the run, which is
    /// final, or which its executor already reported), `live` (the local
    /// sandbox's capture on this host, so far) or `none` (not started yet,
    /// or going where this host cannot read it: another host, or a remote
    /// executor, whose output arrives when it ends).
    source: &'static str,
    /// Standard output (bounded).
    stdout: String,
    /// Standard error (bounded).
    stderr: String,
    /// The exit code, once there is one.
    exit_code: Option<i32>,
    /// True if output was cut short at the host's limit.
    truncated: bool,
    /// The latest progress it reported.
    progress: Option<crate::model::RunProgress>,
}

/// Options for reading logs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogsQuery {
    /// Stream the output as server-sent events (`logs` each time it
    /// changes, then `end` once the run is final) instead of answering once.
    #[serde(default)]
    follow: bool,
}

/// How often a followed run's output is looked at.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

async fn read_logs(state: &AppState, id: Uuid) -> Result<Option<RunLogs>, Error> {
    let Some(run) = state.store.get_run(id).await? else { return Ok(None) };
    let mut logs = RunLogs {
        run_id: id,
        status: run.status,
        source: "none",
        stdout: String::new(),
        stderr: String::new(),
        exit_code: None,
        truncated: false,
        progress: run.progress,
    };
    if let Some(out) = run.output {
        (logs.source, logs.stdout, logs.stderr, logs.exit_code, logs.truncated) =
            ("stored", out.stdout, out.stderr, out.exit_code, out.truncated);
    } else if run.status == RunStatus::Running
        && let Some(live) = state.plugins.runtime().sandbox().live_output(id)
    {
        (logs.source, logs.stdout, logs.stderr, logs.truncated) = ("live", live.stdout, live.stderr, live.truncated);
    }
    Ok(Some(logs))
}

/// A run's output so far: what the local sandbox captured while it goes
/// (on the host running it), what was kept once it ended. With
/// `?follow=true`, server-sent events: `logs` (a [`RunLogs`] as JSON) each
/// time something changed, then `end` once the run is final.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/logs",
    tag = "runs",
    params(("id" = Uuid, Path, description = "Run id"), LogsQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, body = RunLogs, description = "the output; with follow=true a text/event-stream of them"),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn runs_logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<axum::response::Response, Error> {
    use axum::response::IntoResponse;
    use axum::response::sse::{Event, KeepAlive, Sse};
    let first = read_logs(&state, id).await?.ok_or_else(|| Error::not_found("run", id))?;
    if !q.follow {
        return Ok(Json(first).into_response());
    }
    // (state, the last logs sent, done): each step waits, reads, and sends
    // what changed; a read that fails ends the stream (the client retries).
    let stream = futures::stream::unfold((state, None::<RunLogs>, false), move |(state, last, done)| async move {
        if done {
            return None;
        }
        loop {
            if last.is_some() {
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
            let logs = match read_logs(&state, id).await {
                Ok(Some(l)) => l,
                _ => return None,
            };
            if logs.status.is_final() {
                let data = serde_json::to_string(&logs).unwrap_or_default();
                let events = vec![
                    Ok::<_, std::convert::Infallible>(Event::default().event("logs").data(data)),
                    Ok(Event::default().event("end").data(logs.status.as_str())),
                ];
                return Some((futures::stream::iter(events), (state, Some(logs), true)));
            }
            if last.as_ref() != Some(&logs) {
                let data = serde_json::to_string(&logs).unwrap_or_default();
                let events = vec![Ok(Event::default().event("logs").data(data))];
                return Some((futures::stream::iter(events), (state, Some(logs), false)));
            }
        }
    });
    use futures::StreamExt;
    let sse = Sse::new(stream.flatten()).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(5)));
    Ok(sse.into_response())
}

/// A page of runs, with how many runs (of the automation, or all) are in
/// each status, whatever the page's filters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunList {
    /// The runs on this page, newest first.
    items: Vec<Run>,
    /// How many runs match the filters in all.
    total: i64,
    /// Pass as `cursor` to get the next page; absent on the last page.
    next_cursor: Option<String>,
    /// Runs by status (`pending`, `succeeded`...), one grouped count.
    status_counts: BTreeMap<String, i64>,
}

/// Filters for listing runs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RunListQuery {
    /// Page size, 1 to 100 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only runs in this status.
    pub status: Option<String>,
    /// Only runs created at or after this time (RFC 3339).
    pub created_after: Option<String>,
    /// Only runs created before this time (RFC 3339).
    pub created_before: Option<String>,
}

impl RunListQuery {
    fn resolve(&self, automation_id: Option<Uuid>) -> Result<(u32, Option<Uuid>, RunFilter), Error> {
        let (limit, before) = PageQuery { limit: self.limit, cursor: self.cursor.clone() }.resolve()?;
        let status = match &self.status {
            None => None,
            Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
                let all: Vec<_> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                Error::BadRequest("invalid_query", format!("status must be one of {} (got {s:?})", all.join(", ")))
            })?),
        };
        let time = |field: &str, v: &Option<String>| -> Result<Option<DateTime<Utc>>, Error> {
            v.as_deref()
                .map(|t| {
                    DateTime::parse_from_rfc3339(t).map(|t| t.with_timezone(&Utc)).map_err(|e| {
                        Error::BadRequest("invalid_query", format!("{field} must be an RFC 3339 time ({t:?}: {e})"))
                    })
                })
                .transpose()
        };
        let filter = RunFilter {
            automation_id,
            status,
            created_after: time("created_after", &self.created_after)?,
            created_before: time("created_before", &self.created_before)?,
        };
        Ok((limit, before, filter))
    }
}

async fn list(state: &AppState, q: &RunListQuery, automation_id: Option<Uuid>) -> Result<Json<RunList>, Error> {
    let (limit, before, filter) = q.resolve(automation_id)?;
    let page = state.store.list_runs(&filter, limit + 1, before).await?;
    let status_counts = state.store.run_status_counts(automation_id).await?;
    let Page { items, total, next_cursor } = Page::new(page.items, page.total, limit, |r| r.id);
    Ok(Json(RunList { items, total, next_cursor, status_counts }))
}

/// Lists all runs, newest first.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    params(RunListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = RunList), (status = 400, body = ErrorBody))
)]
async fn runs_list(State(state): State<AppState>, ApiQuery(q): ApiQuery<RunListQuery>) -> Result<Json<RunList>, Error> {
    list(&state, &q, None).await
}

/// Lists an automation's runs, newest first.
#[utoipa::path(
    get,
    path = "/v1/automations/{id}/runs",
    tag = "runs",
    params(("id" = Uuid, Path, description = "Automation id"), RunListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = RunList), (status = 404, body = ErrorBody))
)]
async fn runs_list_for_automation(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<RunListQuery>,
) -> Result<Json<RunList>, Error> {
    if state.store.get_automation(id).await?.is_none() {
        return Err(Error::not_found("automation", id));
    }
    list(&state, &q, Some(id)).await
}

/// Deletes a run that reached a final status (with its output and log).
#[utoipa::path(
    delete,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = Uuid, Path, description = "Run id")),
    security(("api_key" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
async fn runs_delete(State(state): State<AppState>, ApiPath(id): ApiPath<Uuid>) -> Result<StatusCode, Error> {
    match state.store.delete_run(id).await? {
        DeleteRun::Deleted => {
            tracing::info!(run.id = %id, "run deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteRun::NotFound => Err(Error::not_found("run", id)),
        DeleteRun::NotFinal(status) => Err(Error::Conflict(
            "run_not_final",
            format!("run {id} is {status}; cancel it first (only final runs can be deleted)"),
        )),
    }
}

/// Runs an automation again with a run's trigger and payload: a new
/// `pending` run, `rerun_of` naming the original. The original may be in
/// any status; the automation must still exist.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/rerun",
    tag = "runs",
    params(("id" = Uuid, Path, description = "The run to repeat")),
    security(("api_key" = [])),
    responses((status = 201, body = Run), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
async fn runs_rerun(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<(StatusCode, Json<Run>), Error> {
    let original = state.store.get_run(id).await?.ok_or_else(|| Error::not_found("run", id))?;
    if state.store.get_automation(original.automation_id).await?.is_none() {
        return Err(Error::Conflict(
            "automation_deleted",
            format!("run {id}'s automation {} was deleted; nothing to re-run", original.automation_id),
        ));
    }
    // The trigger as read (an event run's payload included): the new run
    // keeps its own copy, so it outlives the delivery.
    let mut run =
        Run::pending(original.automation_id, original.trigger, &caller.to_string(), format!("re-run of {id}"));
    run.rerun_of = Some(id);
    state.store.insert_run(&run, None).await?;
    state.dispatcher.wake();
    tracing::info!(run.id = %run.id, rerun_of = %id, "run re-run");
    Ok((StatusCode::CREATED, Json(run)))
}

/// Reads a run.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = Uuid, Path, description = "Run id")),
    security(("api_key" = [])),
    responses((status = 200, body = Run), (status = 404, body = ErrorBody))
)]
async fn runs_get(State(state): State<AppState>, ApiPath(id): ApiPath<Uuid>) -> Result<Json<Run>, Error> {
    let mut run = state.store.get_run(id).await?.ok_or_else(|| Error::not_found("run", id))?;
    if run.status.is_final() {
        run.notifications = state.store.run_notifications(id).await?;
    }
    Ok(Json(run))
}

/// Cancels a pending or running run. A running run's executor is told to
/// stop it. 409 if the run already reached a final status.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    params(("id" = Uuid, Path, description = "Run id")),
    security(("api_key" = [])),
    responses((status = 200, body = Run), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
async fn runs_cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Run>, Error> {
    let detail = StatusDetail {
        from: None,
        by: caller.to_string(),
        reason: "cancelled on request".into(),
        at: crate::model::now(),
    };
    for from in [RunStatus::Pending, RunStatus::Running] {
        let detail = StatusDetail { from: Some(from), ..detail.clone() };
        if let Some(run) =
            state.store.transition_run(id, &[from], RunStatus::Cancelled, &detail, RunChanges::default()).await?
        {
            tracing::info!(run.id = %id, from = %from, "run cancelled");
            return Ok(Json(run));
        }
    }
    match state.store.get_run(id).await? {
        None => Err(Error::not_found("run", id)),
        Some(run) if run.status.is_final() => Err(Error::Conflict(
            "run_final",
            format!("run {id} is already {}; only pending or running runs can be cancelled", run.status),
        )),
        // It moved between our two attempts (pending -> running); one more try.
        Some(run) => state
            .store
            .transition_run(
                id,
                &[run.status],
                RunStatus::Cancelled,
                &StatusDetail { from: Some(run.status), ..detail },
                RunChanges::default(),
            )
            .await?
            .map(Json)
            .ok_or_else(|| Error::Conflict("run_final", format!("run {id} finished while being cancelled"))),
    }
}
