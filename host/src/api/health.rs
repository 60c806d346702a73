//! Liveness and readiness probes (no authentication).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppState, Error, ErrorBody};

/// A probe's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Status {
    /// `ok` or `ready`.
    pub status: &'static str,
    /// On `/ready`: how the local sandbox confines runs here (`full`,
    /// `restricted`, `none`, or `unavailable` when it refuses to run them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health)).routes(routes!(ready))
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = Status)))]
async fn health() -> Json<Status> {
    Json(Status { status: "ok", sandbox: None })
}

/// The process can serve: the database answers and takes writes (a write
/// probe runs in the background, so this turns 200 again by itself once
/// writes work). 503 names what is wrong, without the database's own text.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses((status = 200, body = Status), (status = 503, body = ErrorBody))
)]
async fn ready(State(state): State<AppState>) -> Result<Json<Status>, Error> {
    if let Some(f) = state.store.health().failing() {
        return Err(Error::Unavailable(format!(
            "the host cannot write to its database: {} (since {}); deliveries get 503 until it can",
            f.reason,
            f.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    if !state.store.ping().await {
        return Err(Error::Unavailable("the database does not answer".into()));
    }
    let sandbox = state.plugins.runtime().sandbox().isolation().summary();
    Ok(Json(Status { status: "ready", sandbox: Some(sandbox) }))
}
