//! Request extractors whose failures share the `{code, detail}` shape.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::Error;

/// A JSON body. The `Content-Type` is not checked (so `curl -d @file.json`
/// works); syntax errors are 400 `malformed_json`, well-formed JSON of the
/// wrong shape (unknown or missing fields, wrong types) is 422
/// `invalid_body`, and both name the place: line, column and field path.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON with the error mapping described on [`ApiJson`].
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(Error::BadRequest("malformed_json", format!("malformed JSON: {inner}")))
            } else if path == "." {
                Err(Error::invalid("invalid_body", format!("invalid request body: {inner}")))
            } else {
                Err(Error::invalid("invalid_body", format!("invalid request body at `{path}`: {inner}")))
            }
        }
    }
}

/// Maps a failure to read the body (most often: over the size limit).
pub(crate) fn body_error(e: BytesRejection) -> Error {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge(format!("request body is too large: {}", e.body_text()))
    } else {
        Error::BadRequest("unreadable_body", e.body_text())
    }
}

/// Reads a whole body of at most `limit` bytes; `what` and `setting` name
/// it in a 413. A body that stalls (see `AUTOMATION_HEADER_TIMEOUT_SECONDS`)
/// is a 408; one the client broke off, a 400. A body of known length is
/// read into one buffer of that size (so it is held once, not gathered
/// and then copied).
pub(crate) async fn read_limited(
    body: axum::body::Body,
    limit: usize,
    what: &str,
    setting: &str,
) -> Result<Bytes, Error> {
    use http_body_util::BodyExt;
    let too_large = || Error::PayloadTooLarge(format!("{what} is larger than {limit} bytes ({setting})"));
    let hint = axum::body::HttpBody::size_hint(&body);
    if usize::try_from(hint.lower()).map_or(true, |n| n > limit) {
        return Err(too_large());
    }
    let exact = hint.exact().and_then(|n| usize::try_from(n).ok());
    let mut buf = bytes::BytesMut::with_capacity(exact.unwrap_or(8 * 1024).min(limit));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<tower_http::timeout::TimeoutError>() {
                    return Error::Timeout(format!("{what} stopped arriving; the request timed out"));
                }
                source = s.source();
            }
            Error::BadRequest("unreadable_body", format!("{what} could not be read: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Query parameters, with a 400 `invalid_query` naming the bad parameter.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| Error::BadRequest("invalid_query", e.body_text()))
    }
}

/// Path parameters, with a 400 `invalid_path` for ids that do not parse.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| Error::BadRequest("invalid_path", e.body_text()))
    }
}
