//! `/v1/events`: signed deliveries in (no API key: the signature is the
//! credential), and what became of them out (API key).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ApiPath, ApiQuery, AppState, Error, ErrorBody, Page, PageQuery};
use crate::events::{keys, signature};
use crate::store::{Delivery, NewDelivery, Stored};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events_github))
        .routes(routes!(events_custom, events_get))
        .routes(routes!(events_list))
}

/// The answer to a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Ack {
    /// The delivery's id (for a duplicate: the first delivery's).
    id: Uuid,
    /// `accepted` (stored; matching follows), `duplicate` (seen before;
    /// nothing created) or `unrecognized` (stored, but no event key).
    status: &'static str,
    /// The event key, when one was derived.
    event_key: Option<String>,
}

/// Receives a GitHub webhook delivery. The body is verified against
/// `X-Hub-Signature-256` (HMAC-SHA256 with `AUTOMATION_GITHUB_WEBHOOK_SECRET`),
/// stored durably, and acknowledged with 202 before matching. A redelivery
/// (same `X-GitHub-Delivery`) is acknowledged with 200 and creates nothing.
/// The body is the payload as GitHub sends it, or `{"payload": ...}`.
#[utoipa::path(
    post,
    path = "/v1/events/github",
    tag = "events",
    request_body(content = Object, description = "the webhook payload"),
    responses(
        (status = 202, body = Ack),
        (status = 200, description = "a duplicate delivery", body = Ack),
        (status = 400, body = ErrorBody),
        (status = 401, description = "missing or wrong signature", body = ErrorBody),
        (status = 404, description = "GitHub events are not configured", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 429, description = "over AUTOMATION_EVENT_RATE_PER_SOURCE; nothing stored", body = ErrorBody),
        (status = 503, description = "cannot store it now (database, or too many big bodies at once); nothing stored", body = ErrorBody),
    )
)]
async fn events_github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Ack>), Error> {
    // Everything that can be refused without the body is refused first.
    let secret = state.config.github_webhook_secret.as_deref().ok_or_else(|| {
        Error::NotFound("GitHub events are not configured: set AUTOMATION_GITHUB_WEBHOOK_SECRET".into())
    })?;
    require_signature_header(&state, "X-Hub-Signature-256", &headers)?;
    limit_rate(&state, "github")?;
    let (body, _reserved) = read_body(&state, &headers, body).await?;
    check_signature(&state, secret.as_bytes(), &body, "X-Hub-Signature-256", &headers)?;
    let (payload, text) = parse_payload(&state, &body)?;
    let key = keys::github_key(header(&headers, "X-GitHub-Event"), &payload);
    let delivery_id = header(&headers, "X-GitHub-Delivery").map(str::to_owned);
    ingest(&state, "github", delivery_id, key, text).await
}

/// Receives a delivery for a custom source (see `POST /v1/sources`): the
/// body is verified against the source's signature header and secret, its
/// event key extracted with the source's JMESPath expression; or, for a
/// source with a plugin, the plugin verifies and reads the request (and
/// may answer a handshake instead, storing nothing).
#[utoipa::path(
    post,
    path = "/v1/events/{id}",
    tag = "events",
    params(("id" = String, Path, description = "The custom source's name")),
    request_body(content = Object, description = "the event payload"),
    responses(
        (status = 202, body = Ack),
        (status = 200, description = "a duplicate delivery, or a source plugin's handshake answer", body = Ack),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 429, description = "over AUTOMATION_EVENT_RATE_PER_SOURCE; nothing stored", body = ErrorBody),
        (status = 503, description = "cannot store it now, or the source plugin failed; nothing stored", body = ErrorBody),
    )
)]
async fn events_custom(
    State(state): State<AppState>,
    ApiPath(source): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let src = state.store.get_source(&source).await?.ok_or_else(|| Error::not_found("event source", &source))?;
    if let Some(plugin) = src.plugin.clone() {
        return from_source_plugin(&state, src, &plugin, headers, body).await;
    }
    require_signature_header(&state, &src.signature_header, &headers)?;
    limit_rate(&state, &source)?;
    let (body, _reserved) = read_body(&state, &headers, body).await?;
    let scheme = signature::Scheme::parse(&src.signature_scheme).ok_or_else(|| {
        Error::Internal(anyhow::anyhow!("source {source} has an unknown signature scheme {:?}", src.signature_scheme))
    })?;
    let read = |name: &str| header(&headers, name).map(str::to_owned);
    let now = crate::model::now().timestamp();
    let checked =
        signature::check(scheme, &src.secret, &body, &src.signature_header, &read, now, TIMESTAMP_TOLERANCE_SECS)
            .map_err(|e| {
                state.metrics.deliveries.add("bad_signature", 1);
                Error::Unauthorized(e.to_string())
            })?;
    let (payload, text) = parse_payload(&state, &body)?;
    let preset = src.preset.as_deref().and_then(crate::events::presets::Preset::parse);
    if let Some(answer) = preset.and_then(|p| p.handshake(&payload)) {
        // A handshake (Slack's url_verification), signed like any delivery:
        // answered, not stored.
        return Ok((StatusCode::OK, Json(answer)).into_response());
    }
    let key = keys::custom_key(&src.event_key_expr, &payload).unwrap_or(None);
    let configured = src.delivery_id_header.as_deref().and_then(|h| header(&headers, h)).map(str::to_owned);
    let in_payload = preset.and_then(|p| p.payload_delivery_id(&payload));
    ingest(&state, &source, configured.or(checked.delivery_id).or(in_payload), key, text)
        .await
        .map(IntoResponse::into_response)
}

/// How far a timestamped signature scheme's timestamp may be from now.
const TIMESTAMP_TOLERANCE_SECS: i64 = 300;

/// The most a source plugin's handshake answer may carry.
const MAX_REPLY_BYTES: usize = 64 << 10;

/// A delivery to a source whose plugin verifies and reads it. The plugin
/// runs after the rate limit and the body limit, on a fresh instance with
/// a filter's limits; whatever it does wrong fails this request (401, 400
/// or 503, nothing stored), never the host.
async fn from_source_plugin(
    state: &AppState,
    src: crate::store::Source,
    plugin_name: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    use crate::plugins::{CallError, GuestErrorKind, SourceOutcome, SourceRequest, manifest::Kind};
    limit_rate(state, &src.name)?;
    let plugin = state.plugins.require(plugin_name, Kind::Source).map_err(|e| {
        Error::Unavailable(format!("source {} cannot take deliveries now: {e}; nothing stored", src.name))
    })?;
    let (body, _reserved) = read_body(state, &headers, body).await?;
    let request = SourceRequest {
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        body: body.to_vec(),
    };
    let secret = src.secret;
    let (outcome, _) = state.plugins.blocking(move |rt| rt.source_verify(&plugin, request, &secret)).await;
    let outcome = outcome.map_err(|e| match e {
        CallError::Guest { error, .. } if error.kind == GuestErrorKind::Denied => {
            state.metrics.deliveries.add("bad_signature", 1);
            Error::Unauthorized(error.message)
        }
        CallError::Guest { error, .. } if error.kind == GuestErrorKind::InvalidInput => {
            state.metrics.deliveries.add("malformed", 1);
            Error::BadRequest("rejected_by_source", error.message)
        }
        other => {
            tracing::warn!(source = %src.name, error = %other, "source plugin failed");
            Error::Unavailable(format!("the source's plugin failed ({other}); nothing stored"))
        }
    })?;
    match outcome {
        SourceOutcome::Deliver { key, delivery_id, payload } => {
            if key.as_ref().is_some_and(|k| k.chars().count() > 200) {
                return Err(plugin_broke(&src.name, "an event key longer than 200 characters"));
            }
            let text = match payload {
                // The body as it came: the sender's JSON, checked as any delivery's.
                None => parse_payload(state, &body)?.1,
                // The plugin's own payload: if it is not an object, the plugin is at fault.
                Some(p) => match serde_json::from_str::<Value>(&p) {
                    Ok(v) if v.is_object() => p,
                    _ => return Err(plugin_broke(&src.name, "a payload that is not the JSON text of an object")),
                },
            };
            ingest(state, &src.name, delivery_id, key, text).await.map(IntoResponse::into_response)
        }
        SourceOutcome::Reply { status, content_type, body } => {
            let status = StatusCode::from_u16(status).ok().filter(StatusCode::is_success);
            let allowed = ["text/plain", "application/json"].contains(&content_type.as_str());
            let (Some(status), true, true) = (status, allowed, body.len() <= MAX_REPLY_BYTES) else {
                return Err(plugin_broke(
                    &src.name,
                    "a reply that is not a 2xx text/plain or application/json answer of at most 64 KiB",
                ));
            };
            Ok((status, [(CONTENT_TYPE, content_type)], body).into_response())
        }
    }
}

fn plugin_broke(source: &str, what: &str) -> Error {
    tracing::warn!(source, what, "source plugin answered out of bounds");
    Error::Unavailable(format!("the source's plugin answered with {what}; nothing stored"))
}

/// Reads a delivery's body within its size limit and its share of the
/// body budget (held until the returned guard is dropped).
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, super::limits::Reserved), Error> {
    let limit = state.config.max_event_bytes;
    let declared = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Error::PayloadTooLarge(format!(
            "the delivery is larger than {limit} bytes (AUTOMATION_MAX_EVENT_BYTES)"
        )));
    }
    let reserved = state.bodies.reserve(declared, limit).await.inspect_err(|_| {
        state.metrics.deliveries.add("over_budget", 1);
    })?;
    let bytes = super::extract::read_limited(body, limit, "the delivery", "AUTOMATION_MAX_EVENT_BYTES").await?;
    Ok((bytes, reserved))
}

/// Refuses a delivery over its source's rate before reading it.
fn limit_rate(state: &AppState, source: &str) -> Result<(), Error> {
    state.source_rate.check(source).inspect_err(|_| state.metrics.deliveries.add("rate_limited", 1))
}

/// Refuses a delivery without its signature header before reading it.
fn require_signature_header(state: &AppState, name: &str, headers: &HeaderMap) -> Result<(), Error> {
    if header(headers, name).is_none() {
        state.metrics.deliveries.add("bad_signature", 1);
        return Err(Error::Unauthorized(format!("missing signature header {name}")));
    }
    Ok(())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn check_signature(state: &AppState, secret: &[u8], body: &[u8], name: &str, headers: &HeaderMap) -> Result<(), Error> {
    signature::verify(secret, body, name, header(headers, name)).map_err(|e| {
        state.metrics.deliveries.add("bad_signature", 1);
        Error::Unauthorized(e.to_string())
    })
}

/// The parsed payload and its JSON text: the body as received (no second
/// serialization on the hot path), or the unwrapped envelope's content.
fn parse_payload(state: &AppState, body: &[u8]) -> Result<(Value, String), Error> {
    let mut payload: Value = serde_json::from_slice(body).map_err(|e| {
        state.metrics.deliveries.add("malformed", 1);
        Error::BadRequest("malformed_json", format!("the delivery is not JSON: {e}"))
    })?;
    if !payload.is_object() {
        return Err(Error::BadRequest("malformed_json", "the delivery must be a JSON object".into()));
    }
    // The reference service's forwarders wrap the payload: {"payload": {...}}.
    if payload.get("payload").is_some_and(Value::is_object) && payload_is_envelope(&payload) {
        payload = payload["payload"].take();
        let text = payload.to_string();
        return Ok((payload, text));
    }
    // serde_json accepted the bytes, so they are UTF-8.
    Ok((payload, String::from_utf8_lossy(body).into_owned()))
}

/// An envelope has `payload` and nothing GitHub puts at the top level.
fn payload_is_envelope(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.keys().all(|k| ["payload", "event_type", "organization", "source"].contains(&k.as_str())))
}

async fn ingest(
    state: &AppState,
    source: &str,
    delivery_id: Option<String>,
    event_key: Option<String>,
    payload: String,
) -> Result<(StatusCode, Json<Ack>), Error> {
    if delivery_id.as_ref().is_some_and(|d| d.len() > 200) {
        return Err(Error::BadRequest("invalid_delivery_id", "the delivery id is longer than 200 characters".into()));
    }
    let delivery = NewDelivery {
        id: Uuid::now_v7(),
        source: source.to_owned(),
        delivery_id,
        event_key: event_key.clone(),
        payload,
        received_at: crate::model::now(),
    };
    match state.ingest.submit(delivery).await.map_err(|e| Error::Unavailable(e.to_string()))? {
        Stored::New(id) => {
            let status = if event_key.is_some() { "accepted" } else { "unrecognized" };
            Ok((StatusCode::ACCEPTED, Json(Ack { id, status, event_key })))
        }
        Stored::Duplicate(id) => Ok((StatusCode::OK, Json(Ack { id, status: "duplicate", event_key }))),
    }
}

/// Filters for listing deliveries.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Page size, 1 to 100 (default 50).
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only this source.
    source: Option<String>,
}

/// Shows a delivery: its payload, key, status, and which automations it
/// matched (with their runs) and why the others did not.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "events",
    params(("id" = Uuid, Path, description = "Delivery id")),
    security(("api_key" = [])),
    responses((status = 200, body = Delivery), (status = 404, body = ErrorBody))
)]
async fn events_get(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Json<Delivery>, Error> {
    let id =
        Uuid::parse_str(&id).map_err(|_| Error::BadRequest("invalid_path", format!("{id:?} is not a delivery id")))?;
    let mut delivery = state.store.get_delivery(id).await?.ok_or_else(|| Error::not_found("delivery", id))?;
    // Why each other automation did not match is decided now, on demand.
    delivery.result = state.matcher.explain(&delivery).await?;
    Ok(Json(delivery))
}

/// Lists deliveries, newest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(EventsQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Page<Delivery>))
)]
async fn events_list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<Page<Delivery>>, Error> {
    let (limit, before) = PageQuery { limit: q.limit, cursor: q.cursor }.resolve()?;
    let (items, total) = state.store.list_deliveries(q.source.as_deref(), limit + 1, before).await?;
    Ok(Json(Page::new(items, total, limit, |d| d.id)))
}
