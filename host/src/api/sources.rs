//! `/v1/sources`: custom event sources with their own secret, signature
//! header, event-key expression and delivery-id header.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiJson, ApiPath, AppState, Error, ErrorBody};
use crate::events::presets::Preset;
use crate::events::signature::Scheme;
use crate::store::Source;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sources_create, sources_list)).routes(routes!(
        sources_get,
        sources_patch,
        sources_delete
    ))
}

/// The body of `POST /v1/sources`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceCreate {
    /// The source name: `POST /v1/events/{name}`.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    name: String,
    /// The secret, 16 to 255 characters; generated (and returned once) if
    /// absent (for `standard-webhooks`, a `whsec_` base64 secret).
    secret: Option<String>,
    /// How deliveries are signed: `hmac-sha256` (the default: HMAC of the
    /// body, hex), `standard-webhooks` (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), `slack-v0` (`X-Slack-Signature` over
    /// `v0:{X-Slack-Request-Timestamp}:{body}`) or `token` (a shared token,
    /// GitLab's `X-Gitlab-Token`). Timestamped schemes refuse deliveries
    /// more than 5 minutes off.
    signature_scheme: Option<String>,
    /// The header with the signature or token (default: the scheme's,
    /// `X-Signature-256`, `webhook-signature`, `X-Slack-Signature`, `X-Gitlab-Token`).
    signature_header: Option<String>,
    /// JMESPath expression extracting the event key (default `type`).
    event_key_expr: Option<String>,
    /// The header with the sender's delivery id, for dedup (default: none).
    delivery_id_header: Option<String>,
    /// A source plugin (kind `source`, such as the bundled `linear`) that
    /// verifies and reads this source's deliveries with its secret, instead
    /// of the HMAC check and the three fields above (which must then be absent).
    plugin: Option<String>,
    /// A built-in provider that sets the scheme, headers and event key
    /// (which must then be absent): `gitlab` (`X-Gitlab-Token`, key
    /// `merge_request.open`/`push`, dedup on `X-Gitlab-Event-UUID`),
    /// `slack` (`X-Slack-Signature`, key `event.type`, dedup on `event_id`,
    /// answers `url_verification`), `standard-webhooks` (key `type`, dedup
    /// on `webhook-id`).
    preset: Option<String>,
}

/// A created source; `secret` only when the host generated it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SourceCreated {
    #[serde(flatten)]
    source: Source,
    /// The generated secret, shown only now.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// Where senders post.
    url_path: String,
}

fn check_header_name(field: &str, h: &str) -> Result<(), Error> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.starts_with(|c: char| c.is_ascii_alphabetic())
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_header",
            format!("{field} {h:?} must be letters, digits and '-', starting with a letter"),
        ))
    }
}

/// Creates a custom event source.
#[utoipa::path(
    post,
    path = "/v1/sources",
    tag = "sources",
    request_body = SourceCreate,
    security(("api_key" = [])),
    responses((status = 201, body = SourceCreated), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody))
)]
async fn sources_create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SourceCreate>,
) -> Result<(StatusCode, Json<SourceCreated>), Error> {
    crate::model::check_name(&body.name).map_err(|e| Error::invalid("invalid_name", format!("name {e}")))?;
    if body.name == "github" {
        return Err(Error::Conflict("source_reserved", "the github source is built in".into()));
    }
    if let Some(plugin) = &body.plugin {
        if body.signature_header.is_some()
            || body.signature_scheme.is_some()
            || body.event_key_expr.is_some()
            || body.delivery_id_header.is_some()
        {
            return Err(Error::invalid(
                "plugin_reads_requests",
                "a source with a plugin takes no signature_scheme, signature_header, event_key_expr or \
                 delivery_id_header: the plugin verifies and reads its deliveries",
            ));
        }
        super::automations::check_plugin(&state, "plugin", plugin, crate::plugins::manifest::Kind::Source)?;
    }
    let preset = match body.preset.as_deref() {
        None => None,
        Some(p) => Some(Preset::parse(p).ok_or_else(|| {
            let all: Vec<&str> = Preset::ALL.iter().map(|p| p.as_str()).collect();
            Error::invalid("invalid_preset", format!("preset must be one of {} (got {p:?})", all.join(", ")))
        })?),
    };
    let mut body = body;
    if let Some(p) = preset {
        if body.plugin.is_some()
            || body.signature_header.is_some()
            || body.signature_scheme.is_some()
            || body.event_key_expr.is_some()
            || body.delivery_id_header.is_some()
        {
            return Err(Error::invalid(
                "preset_sets_fields",
                format!(
                    "preset {} sets signature_scheme, signature_header, event_key_expr and delivery_id_header; \
                     give none of them (nor a plugin)",
                    p.as_str()
                ),
            ));
        }
        let set = p.settings();
        body.signature_scheme = Some(set.scheme.as_str().to_owned());
        body.signature_header = Some(set.signature_header.to_owned());
        body.event_key_expr = Some(set.event_key_expr.to_owned());
        body.delivery_id_header = set.delivery_id_header.map(str::to_owned);
    }
    let scheme = match body.signature_scheme.as_deref() {
        None => Scheme::HmacSha256,
        Some(s) => Scheme::parse(s).ok_or_else(|| {
            let all: Vec<&str> = Scheme::ALL.iter().map(|s| s.as_str()).collect();
            Error::invalid(
                "invalid_signature_scheme",
                format!("signature_scheme must be one of {} (got {s:?})", all.join(", ")),
            )
        })?,
    };
    // A plugin source keeps none of these: its plugin reads the request.
    let default = |v: &str| if body.plugin.is_some() { String::new() } else { v.to_owned() };
    let signature_scheme = default(scheme.as_str());
    let signature_header = body.signature_header.unwrap_or_else(|| default(scheme.default_header()));
    if body.plugin.is_none() {
        check_header_name("signature_header", &signature_header)?;
    }
    if let Some(h) = &body.delivery_id_header {
        check_header_name("delivery_id_header", h)?;
    }
    let event_key_expr = body.event_key_expr.unwrap_or_else(|| default("type"));
    if event_key_expr.len() > 1024 {
        return Err(Error::invalid("too_long", "event_key_expr is longer than 1024 bytes"));
    }
    if body.plugin.is_none() {
        crate::events::keys::compile_key_expr(&event_key_expr)
            .map_err(|e| Error::invalid("invalid_event_key_expr", format!("event_key_expr: {e}")))?;
    }
    let (secret, generated) = choose_secret(body.secret, scheme)?;
    let source = Source {
        name: body.name,
        signature_scheme,
        signature_header,
        event_key_expr,
        delivery_id_header: body.delivery_id_header,
        plugin: body.plugin,
        preset: preset.map(|p| p.as_str().to_owned()),
        created_at: crate::model::now(),
        secret: secret.clone(),
    };
    if !state.store.insert_source(&source).await? {
        return Err(Error::Conflict("source_exists", format!("source {} already exists", source.name)));
    }
    tracing::info!(source = %source.name, "event source created");
    let url_path = format!("/v1/events/{}", source.name);
    Ok((StatusCode::CREATED, Json(SourceCreated { source, secret: generated.then_some(secret), url_path })))
}

/// The given secret, checked, or a generated one (`true`).
fn choose_secret(given: Option<String>, scheme: Scheme) -> Result<(String, bool), Error> {
    use base64::Engine as _;
    match given {
        Some(s) if scheme == Scheme::StandardWebhooks && s.starts_with("whsec_") => {
            match base64::engine::general_purpose::STANDARD.decode(&s["whsec_".len()..]) {
                Ok(key) if (16..=64).contains(&key.len()) => Ok((s, false)),
                _ => {
                    Err(Error::invalid("invalid_secret", "a whsec_ secret must be whsec_ and 16 to 64 bytes in base64"))
                }
            }
        }
        Some(s) if (16..=255).contains(&s.len()) => Ok((s, false)),
        Some(_) => Err(Error::invalid("invalid_secret", "secret must be 16 to 255 characters")),
        None => {
            let mut bytes = [0u8; 24];
            rand::rng().fill_bytes(&mut bytes);
            let encoded = if scheme == Scheme::StandardWebhooks {
                base64::engine::general_purpose::STANDARD.encode(bytes)
            } else {
                hex::encode(bytes)
            };
            Ok((format!("whsec_{encoded}"), true))
        }
    }
}

/// The body of `PATCH /v1/sources/{name}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourcePatch {
    /// The new HMAC secret, 16 to 255 characters; generated (and returned
    /// once) if absent.
    secret: Option<String>,
}

/// Rotates a custom source's secret. From the next delivery on, on every
/// replica, only signatures made with the new secret are accepted.
#[utoipa::path(
    patch,
    path = "/v1/sources/{name}",
    tag = "sources",
    params(("name" = String, Path, description = "Source name")),
    request_body = SourcePatch,
    security(("api_key" = [])),
    responses((status = 200, body = SourceCreated), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
async fn sources_patch(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<SourcePatch>,
) -> Result<Json<SourceCreated>, Error> {
    let current = state.store.get_source(&name).await?.ok_or_else(|| Error::not_found("event source", &name))?;
    let scheme = Scheme::parse(&current.signature_scheme).unwrap_or(Scheme::HmacSha256);
    let (secret, generated) = choose_secret(body.secret, scheme)?;
    if !state.store.set_source_secret(&name, &secret).await? {
        return Err(Error::not_found("event source", &name));
    }
    let source = state.store.get_source(&name).await?.ok_or_else(|| Error::not_found("event source", &name))?;
    tracing::info!(source = %name, "event source secret rotated");
    let url_path = format!("/v1/events/{name}");
    Ok(Json(SourceCreated { source, secret: generated.then_some(secret), url_path }))
}

/// Lists the custom sources (without secrets).
#[utoipa::path(get, path = "/v1/sources", tag = "sources", security(("api_key" = [])), responses((status = 200, body = Vec<Source>)))]
async fn sources_list(State(state): State<AppState>) -> Result<Json<Vec<Source>>, Error> {
    Ok(Json(state.store.list_sources().await?))
}

/// Shows a custom source (without its secret).
#[utoipa::path(
    get,
    path = "/v1/sources/{name}",
    tag = "sources",
    params(("name" = String, Path, description = "Source name")),
    security(("api_key" = [])),
    responses((status = 200, body = Source), (status = 404, body = ErrorBody))
)]
async fn sources_get(State(state): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<Json<Source>, Error> {
    state.store.get_source(&name).await?.map(Json).ok_or_else(|| Error::not_found("event source", &name))
}

/// Deletes a custom source; its automations stop receiving events.
#[utoipa::path(
    delete,
    path = "/v1/sources/{name}",
    tag = "sources",
    params(("name" = String, Path, description = "Source name")),
    security(("api_key" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody))
)]
async fn sources_delete(State(state): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<StatusCode, Error> {
    if state.store.delete_source(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found("event source", &name))
    }
}
