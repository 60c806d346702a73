//! The one HTTP error type: every failure becomes `{"code", "detail"}`.
//!
//! Client errors carry a stable machine-readable `code` and a `detail` that
//! names the problem. Server errors hide their cause from the client (it may
//! hold internals) and log it instead, in the request's span.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The error body of every non-2xx response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `invalid_cron` or `not_found`.
    pub code: String,
    /// What went wrong, in words, naming the field or value at fault.
    pub detail: String,
}

/// An API error, named by its HTTP meaning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request could not be read (malformed JSON, bad query, bad id).
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// 401: no or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the key is valid but lacks the scope this needs.
    #[error("{0}")]
    Forbidden(String),
    /// 408: the request took too long to arrive or to answer.
    #[error("{0}")]
    Timeout(String),
    /// 404: nothing there.
    #[error("{0}")]
    NotFound(String),
    /// 409: the resource is in a state that forbids this.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// 413: the body is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429: the sender is over its rate.
    #[error("{0}")]
    TooManyRequests(String),
    /// 422: the request was read but its content is invalid.
    #[error("{1}")]
    Unprocessable(&'static str, String),
    /// 503: a dependency (the database) is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure; the cause is logged, not returned.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// A 422 with a code and detail.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Error {
        Error::Unprocessable(code, detail.into())
    }

    /// A 404 for a resource kind and id.
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Error {
        Error::NotFound(format!("{what} {id} not found"))
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(code, _) => (StatusCode::BAD_REQUEST, code),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Conflict(code, _) => (StatusCode::CONFLICT, code),
            Error::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::Unprocessable(code, _) => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Error::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Error {
        match e.unavailable() {
            // Nothing was changed; the client may simply retry. The database's
            // own text goes to the log, not to the client.
            Some(reason) => {
                tracing::warn!(error = %e, "a request could not use the database");
                Error::Unavailable(format!("the host cannot use its database right now ({reason}); retry shortly"))
            }
            None => Error::Internal(anyhow::Error::new(e)),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            match self {
                Error::Unavailable(d) => d,
                _ => "internal error; the server log has the details".to_owned(),
            }
        } else {
            self.to_string()
        };
        let mut response = (status, Json(ErrorBody { code: code.to_owned(), detail })).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_hidden_internals() {
        let cases = [
            (Error::BadRequest("malformed_json", "x".into()), 400, "malformed_json", "x"),
            (Error::Unauthorized("no key".into()), 401, "unauthorized", "no key"),
            (Error::not_found("run", 7), 404, "not_found", "run 7 not found"),
            (Error::Conflict("run_final", "done".into()), 409, "run_final", "done"),
            (Error::invalid("invalid_cron", "bad"), 422, "invalid_cron", "bad"),
            (
                Error::Internal(anyhow::anyhow!("secret path /etc")),
                500,
                "internal",
                "internal error; the server log has the details",
            ),
        ];
        for (err, status, code, detail) in cases {
            assert_eq!(err.status_and_code().0.as_u16(), status);
            assert_eq!(err.status_and_code().1, code);
            let shown = if status >= 500 {
                "internal error; the server log has the details".to_owned()
            } else {
                err.to_string()
            };
            assert_eq!(shown, detail);
        }
    }
}
