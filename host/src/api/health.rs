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
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health)).routes(routes!(ready))
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = Status)))]
async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// The process can serve: the database answers.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses((status = 200, body = Status), (status = 503, body = ErrorBody))
)]
async fn ready(State(state): State<AppState>) -> Result<Json<Status>, Error> {
    if state.store.ping().await {
        Ok(Json(Status { status: "ready" }))
    } else {
        Err(Error::Unavailable("the database does not answer".into()))
    }
}
