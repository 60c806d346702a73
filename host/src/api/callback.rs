//! `POST /v1/runs/{id}/complete`: a run (or its executor) reports its own
//! completion, authenticated by the run's token rather than an API key.
//! And `GET /metrics`, the Prometheus exposition.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ApiJson, ApiPath, AppState, Error, ErrorBody};
use crate::model::{Run, RunOutput, RunProgress, RunStatus, StatusDetail};
use crate::store::RunChanges;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(runs_complete)).routes(routes!(runs_progress)).routes(routes!(metrics))
}

/// Checks `Authorization: Bearer <the run's callback token>`.
fn check_run_token(state: &AppState, id: Uuid, headers: &HeaderMap) -> Result<(), Error> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| Error::Unauthorized("send `Authorization: Bearer <the run's callback token>`".into()))?;
    let expected = state.dispatcher.callback_token(id);
    if !crate::auth::constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) {
        return Err(Error::Unauthorized("invalid callback token for this run".into()));
    }
    Ok(())
}

/// A phase a run reports while it goes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProgressReport {
    /// What it is doing now, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    phase: String,
    /// How far along, 0 to 100.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    percent: Option<u8>,
}

/// Records a run's progress (shown as the run's `progress`). Authenticate
/// with `Authorization: Bearer $AUTOMATION_CALLBACK_TOKEN`. 409 once the
/// run is final.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/progress",
    tag = "runs",
    params(("id" = Uuid, Path, description = "Run id")),
    request_body = ProgressReport,
    responses(
        (status = 204, description = "recorded"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn runs_progress(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ProgressReport>,
) -> Result<axum::http::StatusCode, Error> {
    check_run_token(&state, id, &headers)?;
    let progress =
        RunProgress::new(&body.phase, body.percent, "callback").map_err(|e| Error::invalid("invalid_progress", e))?;
    if state.store.set_progress(id, &progress).await? {
        return Ok(axum::http::StatusCode::NO_CONTENT);
    }
    match state.store.get_run_status(id).await? {
        None => Err(Error::not_found("run", id)),
        Some(s) => Err(Error::Conflict("run_final", format!("run {id} is {s}; progress is for runs still going"))),
    }
}

/// What a run reports about itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Completion {
    /// `succeeded` or `failed`.
    status: String,
    /// Why it failed.
    #[serde(default)]
    error: Option<String>,
    /// Output to store with the run.
    #[serde(default)]
    output: Option<RunOutput>,
}

/// Records a run's completion. Authenticate with
/// `Authorization: Bearer $AUTOMATION_CALLBACK_TOKEN` (given to the run).
/// 409 unless the run is `running`.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/complete",
    tag = "runs",
    params(("id" = Uuid, Path, description = "Run id")),
    request_body = Completion,
    responses(
        (status = 200, body = Run),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn runs_complete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Completion>,
) -> Result<Json<Run>, Error> {
    check_run_token(&state, id, &headers)?;
    let to = match body.status.as_str() {
        "succeeded" => RunStatus::Succeeded,
        "failed" => RunStatus::Failed,
        other => {
            return Err(Error::invalid(
                "invalid_status",
                format!("status must be succeeded or failed (got {other:?})"),
            ));
        }
    };
    let error = match to {
        RunStatus::Failed => Some(body.error.unwrap_or_else(|| "the run reported failure".into())),
        _ => None,
    };
    let detail = StatusDetail {
        from: Some(RunStatus::Running),
        by: "callback".into(),
        reason: format!("the run reported {}", to.as_str()),
        at: crate::model::now(),
    };
    let changes = RunChanges { error, output: body.output, plugin_log: None };
    match state.store.transition_run(id, &[RunStatus::Running], to, &detail, changes).await? {
        Some(run) => {
            state.metrics.runs_finished.add(to.as_str(), 1);
            tracing::info!(run.id = %id, status = %to, "run reported its completion");
            state.dispatcher.run_ended(run.automation_id, to).await;
            Ok(Json(run))
        }
        None => match state.store.get_run(id).await? {
            None => Err(Error::not_found("run", id)),
            Some(run) => Err(Error::Conflict("run_not_running", format!("run {id} is {}, not running", run.status))),
        },
    }
}

/// Prometheus metrics (no authentication).
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let mut text = state.metrics.render();
    if let Some(uses) = state.store.sqlite_writer_uses() {
        text.push_str(
            "# HELP automation_sqlite_writer_uses_total Uses of the SQLite writer connection (transactions and single statements).\n\
             # TYPE automation_sqlite_writer_uses_total counter\n",
        );
        text.push_str(&format!("automation_sqlite_writer_uses_total {uses}\n"));
    }
    if let Ok(counts) = state.store.count_runs_by_status().await {
        text.push_str("# HELP automation_runs Runs in the database by status.\n# TYPE automation_runs gauge\n");
        for (status, n) in counts {
            text.push_str(&format!("automation_runs{{status=\"{status}\"}} {n}\n"));
        }
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
