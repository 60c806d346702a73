//! `/v1/api-keys` and `/v1/audit`: make, list and revoke API keys, and read
//! the record of changes made with them. Every route here needs `admin`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ApiJson, ApiPath, ApiQuery, AppState, Error, ErrorBody, Page};
use crate::auth;
use crate::model::{ApiKeyInfo, AuditEntry, Scope};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(keys_list, keys_create))
        .routes(routes!(keys_revoke))
        .routes(routes!(audit_list))
        .routes(routes!(me))
}

/// The key a request was made with.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Me {
    /// The key's id; absent for the operator's `AUTOMATION_API_KEY`.
    key_id: Option<Uuid>,
    /// The key's name.
    name: String,
    /// What it may do.
    scopes: Vec<Scope>,
}

/// Who is asking: the key's name and scopes (any valid key may ask), so a
/// client such as the console shows only what the key can do.
#[utoipa::path(get, path = "/v1/me", tag = "keys", security(("api_key" = [])), responses((status = 200, body = Me)))]
async fn me(axum::Extension(caller): axum::Extension<super::Caller>) -> Json<Me> {
    Json(Me { key_id: caller.key_id, name: caller.name, scopes: caller.scopes })
}

/// The body of `POST /v1/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyCreate {
    /// A name to recognise the key by (1 to 200 characters).
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    name: String,
    /// What it may do: `read`, `operate`, `write`, `plugins`, `admin`.
    scopes: Vec<Scope>,
    /// Days until it stops working (1 to 3650); absent: never.
    expires_in_days: Option<u32>,
    /// Or the time it stops working (RFC 3339, in the future).
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A created key: the secret, shown only in this answer, and its record.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyCreated {
    /// The key itself. Only its hash is stored: it cannot be shown again.
    key: String,
    #[serde(flatten)]
    info: ApiKeyInfo,
}

/// The expiry for `expires_in_days`, checked.
pub fn expiry(days: Option<u32>) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
    match days {
        None => Ok(None),
        Some(d @ 1..=3650) => Ok(Some(crate::model::now() + chrono::TimeDelta::days(i64::from(d)))),
        Some(d) => Err(format!("expires_in_days must be 1 to 3650 (got {d})")),
    }
}

/// Makes an API key with the scopes asked for.
#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "api-keys",
    request_body = KeyCreate,
    security(("api_key" = [])),
    responses((status = 201, body = KeyCreated), (status = 422, body = ErrorBody))
)]
async fn keys_create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<KeyCreate>,
) -> Result<(StatusCode, Json<KeyCreated>), Error> {
    let expires_at = match (req.expires_in_days, req.expires_at) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid("invalid_expiry", "give expires_in_days or expires_at, not both"));
        }
        (None, Some(at)) => Some(at),
        (days, None) => expiry(days).map_err(|e| Error::invalid("invalid_expiry", e))?,
    };
    let (key, info) =
        auth::mint(&req.name, &req.scopes, expires_at).map_err(|e| Error::invalid("invalid_key", e.to_string()))?;
    state.store.insert_api_key(&info, &auth::hash_key(&key)).await?;
    tracing::info!(key.id = %info.id, key.name = %info.name, scopes = ?info.scopes, "API key created");
    Ok((StatusCode::CREATED, Json(KeyCreated { key, info })))
}

/// Lists every stored key (never the secrets), revoked ones included.
#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "api-keys",
    security(("api_key" = [])),
    responses((status = 200, body = Vec<ApiKeyInfo>))
)]
async fn keys_list(State(state): State<AppState>) -> Result<Json<Vec<ApiKeyInfo>>, Error> {
    Ok(Json(state.store.list_api_keys().await?))
}

/// Revokes a key. From the next request on, on every replica, it gets 401.
#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    params(("id" = Uuid, Path, description = "Key id")),
    security(("api_key" = [])),
    responses((status = 200, body = ApiKeyInfo), (status = 404, body = ErrorBody))
)]
async fn keys_revoke(State(state): State<AppState>, ApiPath(id): ApiPath<Uuid>) -> Result<Json<ApiKeyInfo>, Error> {
    let info =
        state.store.revoke_api_key(id, crate::model::now()).await?.ok_or_else(|| Error::not_found("API key", id))?;
    tracing::info!(key.id = %info.id, key.name = %info.name, "API key revoked");
    Ok(Json(info))
}

/// Filters for the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Page size, 1 to 100 (default 50).
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only changes made with this key.
    key_id: Option<Uuid>,
}

/// The changes made through the API, newest first: who (the key's id and
/// name), what (method and route), which resource, and the answer's status.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "api-keys",
    params(AuditQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<AuditEntry>), (status = 400, body = ErrorBody))
)]
async fn audit_list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>, Error> {
    let (limit, before) = super::PageQuery { limit: q.limit, cursor: q.cursor }.resolve()?;
    let page = state.store.list_audit(limit + 1, before, q.key_id).await?;
    Ok(Json(Page::new(page.items, page.total, limit, |e| e.id)))
}
