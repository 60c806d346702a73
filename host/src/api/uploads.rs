//! `/v1/uploads`: bundle archives, checked before they are accepted.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ApiPath, ApiQuery, AppState, Error, ErrorBody, Page, PageQuery};
use crate::archive;
use crate::model::Upload;
use crate::store::DeleteUpload;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(uploads_create, uploads_list)).routes(routes!(uploads_get, uploads_delete))
}

/// Upload options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    /// An optional name, up to 200 characters.
    pub name: Option<String>,
}

/// Uploads a bundle: the body is a gzip-compressed tar archive. It is checked
/// (gzip + tar, relative paths without `..`, links that stay inside, size
/// and entry limits) before anything is stored.
#[utoipa::path(
    post,
    path = "/v1/uploads",
    tag = "uploads",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/gzip"),
    security(("api_key" = [])),
    responses(
        (status = 201, body = Upload),
        (status = 413, body = ErrorBody),
        (status = 422, description = "not a valid bundle archive", body = ErrorBody),
    )
)]
async fn uploads_create(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Body,
) -> Result<(StatusCode, Json<Upload>), Error> {
    // Read the body before answering anything (see plugins_put).
    let limit = state.config.max_upload_bytes;
    let bytes = super::extract::read_limited(body, limit, "the upload", "AUTOMATION_MAX_UPLOAD_BYTES").await?;
    if let Some(name) = &q.name
        && (name.chars().count() > 200 || name.chars().any(char::is_control))
    {
        return Err(Error::BadRequest(
            "invalid_query",
            "name must be at most 200 characters without control characters".into(),
        ));
    }
    let limits = archive::Limits {
        max_unpacked_bytes: state.config.max_unpacked_bytes,
        max_entries: state.config.max_upload_entries,
    };
    // Decompressing is CPU work; keep it off the async workers.
    let checked = bytes.clone();
    let summary = tokio::task::spawn_blocking(move || archive::check(&checked, limits))
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .map_err(|e| Error::invalid("invalid_archive", e.to_string()))?;
    let upload = Upload {
        id: Uuid::now_v7(),
        name: q.name,
        size_bytes: bytes.len() as i64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        entry_count: summary.entries as i64,
        unpacked_bytes: summary.unpacked_bytes as i64,
        created_at: crate::model::now(),
    };
    state.store.insert_upload(&upload, &bytes).await?;
    tracing::info!(upload.id = %upload.id, size = upload.size_bytes, entries = upload.entry_count, "bundle uploaded");
    Ok((StatusCode::CREATED, Json(upload)))
}

/// Lists uploads, newest first.
#[utoipa::path(
    get,
    path = "/v1/uploads",
    tag = "uploads",
    params(PageQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<Upload>), (status = 400, body = ErrorBody))
)]
async fn uploads_list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<Upload>>, Error> {
    let (limit, before) = q.resolve()?;
    let page = state.store.list_uploads(limit + 1, before).await?;
    Ok(Json(Page::new(page.items, page.total, limit, |u| u.id)))
}

/// Reads an upload's metadata.
#[utoipa::path(
    get,
    path = "/v1/uploads/{id}",
    tag = "uploads",
    params(("id" = Uuid, Path, description = "Upload id")),
    security(("api_key" = [])),
    responses((status = 200, body = Upload), (status = 404, body = ErrorBody))
)]
async fn uploads_get(State(state): State<AppState>, ApiPath(id): ApiPath<Uuid>) -> Result<Json<Upload>, Error> {
    state.store.get_upload(id).await?.map(Json).ok_or_else(|| Error::not_found("upload", id))
}

/// Deletes an upload. 409 while an enabled automation uses it.
#[utoipa::path(
    delete,
    path = "/v1/uploads/{id}",
    tag = "uploads",
    params(("id" = Uuid, Path, description = "Upload id")),
    security(("api_key" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
async fn uploads_delete(State(state): State<AppState>, ApiPath(id): ApiPath<Uuid>) -> Result<StatusCode, Error> {
    match state.store.delete_upload(id).await? {
        DeleteUpload::Deleted => Ok(StatusCode::NO_CONTENT),
        DeleteUpload::NotFound => Err(Error::not_found("upload", id)),
        DeleteUpload::InUse(ids) => {
            let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
            Err(Error::Conflict(
                "upload_in_use",
                format!(
                    "upload {id} is used by enabled automation(s) {}; disable or change them first",
                    ids.join(", ")
                ),
            ))
        }
    }
}
