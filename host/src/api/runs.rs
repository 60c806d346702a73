//! `/v1/runs` and `/v1/automations/{id}/runs`: read, list and cancel runs.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ApiPath, ApiQuery, AppState, Caller, Error, ErrorBody, Page, PageQuery};
use crate::model::{Run, RunStatus, StatusDetail};
use crate::store::RunChanges;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(runs_list))
        .routes(routes!(runs_list_for_automation))
        .routes(routes!(runs_get))
        .routes(routes!(runs_cancel))
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
}

impl RunListQuery {
    fn resolve(&self) -> Result<(u32, Option<Uuid>, Option<RunStatus>), Error> {
        let (limit, before) = PageQuery { limit: self.limit, cursor: self.cursor.clone() }.resolve()?;
        let status = match &self.status {
            None => None,
            Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
                let all: Vec<_> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                Error::BadRequest("invalid_query", format!("status must be one of {} (got {s:?})", all.join(", ")))
            })?),
        };
        Ok((limit, before, status))
    }
}

/// Lists all runs, newest first.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    params(RunListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<Run>), (status = 400, body = ErrorBody))
)]
async fn runs_list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RunListQuery>,
) -> Result<Json<Page<Run>>, Error> {
    let (limit, before, status) = q.resolve()?;
    let page = state.store.list_runs(None, status, limit + 1, before).await?;
    Ok(Json(Page::new(page.items, page.total, limit, |r| r.id)))
}

/// Lists an automation's runs, newest first.
#[utoipa::path(
    get,
    path = "/v1/automations/{id}/runs",
    tag = "runs",
    params(("id" = Uuid, Path, description = "Automation id"), RunListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<Run>), (status = 404, body = ErrorBody))
)]
async fn runs_list_for_automation(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<RunListQuery>,
) -> Result<Json<Page<Run>>, Error> {
    let (limit, before, status) = q.resolve()?;
    if state.store.get_automation(id).await?.is_none() {
        return Err(Error::not_found("automation", id));
    }
    let page = state.store.list_runs(Some(id), status, limit + 1, before).await?;
    Ok(Json(Page::new(page.items, page.total, limit, |r| r.id)))
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
    state.store.get_run(id).await?.map(Json).ok_or_else(|| Error::not_found("run", id))
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
