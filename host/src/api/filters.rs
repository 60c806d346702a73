//! `POST /v1/filters/evaluate`: try a filter against a payload before saving it.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiJson, AppState, Error, ErrorBody};
use crate::plugins::manifest::Kind;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(filters_evaluate))
}

/// A filter to try.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvaluateRequest {
    /// The filter expression.
    #[schema(min_length = 1, pattern = "\\S")]
    filter: String,
    /// The event payload to evaluate it against.
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    /// The filter plugin (default `jmespath`).
    #[serde(default = "default_plugin")]
    plugin: String,
    /// The event key, if the filter looks at it (default empty).
    #[serde(default)]
    key: String,
}

fn default_plugin() -> String {
    "jmespath".to_owned()
}

/// The verdict.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EvaluateResponse {
    /// True if the filter matches the payload.
    matches: bool,
}

/// Evaluates a filter against a payload with a filter plugin. A syntax or
/// evaluation error is a 422 quoting the plugin's message.
#[utoipa::path(
    post,
    path = "/v1/filters/evaluate",
    tag = "filters",
    request_body = EvaluateRequest,
    security(("api_key" = [])),
    responses((status = 200, body = EvaluateResponse), (status = 422, body = ErrorBody))
)]
async fn filters_evaluate(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EvaluateRequest>,
) -> Result<Json<EvaluateResponse>, Error> {
    let plugin = state
        .plugins
        .require(&req.plugin, Kind::Filter)
        .map_err(|e| Error::invalid("unknown_plugin", e.to_string()))?;
    super::automations::validate_filter(&state, &req.plugin, &req.filter).await?;
    let event = crate::plugins::FilterEvent::new("evaluate", &req.key, &req.payload.to_string());
    let filter = req.filter;
    let (result, _) =
        state.plugins.blocking(move |rt| rt.filter_matches(&plugin, &event, std::slice::from_ref(&filter))).await;
    let verdicts = result.map_err(|e| Error::invalid("filter_failed", e.to_string()))?;
    match verdicts.into_iter().next() {
        Some(Ok(matches)) => Ok(Json(EvaluateResponse { matches })),
        Some(Err(e)) => {
            Err(Error::invalid("filter_error", format!("the filter failed on this payload: {}", e.message)))
        }
        None => Err(Error::invalid("filter_failed", "the filter plugin returned no verdict")),
    }
}
