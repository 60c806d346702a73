//! `/v1/plugins`: list, inspect, upload (replace) and delete plugins.

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiPath, ApiQuery, AppState, Error, ErrorBody};
use crate::plugins::manifest::{Capability, Grant, Kind, Manifest, WIT_VERSION};
use crate::plugins::{Plugin, Source};
use crate::store::StoredPlugin;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(plugins_list)).routes(routes!(plugins_get, plugins_put, plugins_delete))
}

/// A loaded plugin as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PluginView {
    /// Its name.
    name: String,
    /// `filter`, `preset` or `executor`.
    kind: Kind,
    /// The WIT world it targets.
    world: String,
    /// The `automation:plugin` version it was built against.
    wit: String,
    /// Its own version.
    version: String,
    /// What it does.
    description: String,
    /// SHA-256 of the component.
    sha256: String,
    /// Size of the component in bytes.
    size_bytes: usize,
    /// `bundled`, `directory` or `uploaded`.
    source: Source,
    /// Capabilities its manifest asks for.
    requested: BTreeSet<Capability>,
    /// What it is actually granted.
    granted: Grant,
    /// What the component imports.
    imports: Vec<String>,
    /// JSON Schema of its configuration (presets and executors).
    #[schema(value_type = Option<Object>)]
    config_schema: Option<serde_json::Value>,
    /// How long loading took, in milliseconds.
    load_ms: f64,
    /// True if loading was served by the compile cache.
    from_cache: bool,
    /// For plugins granted `sandbox`: how this machine confines their runs
    /// (`level`: `full`, `restricted`, `none` or `unavailable`; the layers a
    /// probe process got; network; limits; problems found).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    isolation: Option<crate::sandbox::Isolation>,
}

impl PluginView {
    /// The view of `p`, with the sandbox's isolation when `p` may use it.
    fn of(p: &Plugin, state: &AppState) -> PluginView {
        let mut view = PluginView::from(p);
        if p.grant.capabilities.contains(&Capability::Sandbox) {
            view.isolation = Some(state.plugins.runtime().sandbox().isolation().clone());
        }
        view
    }
}

impl From<&Plugin> for PluginView {
    fn from(p: &Plugin) -> PluginView {
        let d = p.description.as_ref();
        PluginView {
            name: p.name().to_owned(),
            kind: p.kind(),
            world: format!("automation:plugin/{}@{}", p.kind().world(), p.manifest.wit),
            wit: p.manifest.wit.clone(),
            version: d.map_or_else(|| p.manifest.version.clone(), |d| d.version.clone()),
            description: d.map_or_else(|| p.manifest.description.clone(), |d| d.description.clone()),
            sha256: p.sha256.clone(),
            size_bytes: p.size,
            source: p.source,
            requested: p.manifest.capabilities.clone(),
            granted: (*p.grant).clone(),
            imports: p.imports.clone(),
            config_schema: d.and_then(|d| d.config_schema.clone()),
            load_ms: p.load.0.as_secs_f64() * 1000.0,
            from_cache: p.load.1 == crate::plugins::engine::CacheOutcome::Hit,
            isolation: None,
        }
    }
}

/// The manifest of an uploaded plugin, as query parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PutQuery {
    /// `filter`, `preset` or `executor` (required).
    kind: Option<String>,
    /// The plugin's version (default 0.0.0).
    version: Option<String>,
    /// What it does.
    description: Option<String>,
    /// Comma-separated capabilities it asks for: `kv`, `http`, `sandbox`.
    capabilities: Option<String>,
    /// Comma-separated hosts it asks to reach with `http`.
    allowed_hosts: Option<String>,
    /// The `automation:plugin` version it targets (default: the host's).
    wit: Option<String>,
}

/// Lists the loaded plugins.
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", security(("api_key" = [])), responses((status = 200, body = Vec<PluginView>)))]
async fn plugins_list(State(state): State<AppState>) -> Json<Vec<PluginView>> {
    Json(state.plugins.list().iter().map(|p| PluginView::of(p, &state)).collect())
}

/// Shows one plugin.
#[utoipa::path(
    get,
    path = "/v1/plugins/{name}",
    tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    security(("api_key" = [])),
    responses((status = 200, body = PluginView), (status = 404, body = ErrorBody))
)]
async fn plugins_get(State(state): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<Json<PluginView>, Error> {
    let p = state.plugins.get(&name).ok_or_else(|| Error::not_found("plugin", &name))?;
    Ok(Json(PluginView::of(&p, &state)))
}

/// Uploads a plugin (the body is the `.wasm` component) or replaces one of
/// the same name. It is validated, checked against its kind's world and its
/// grants, and compiled before it replaces the old one; calls already running
/// finish on the old one.
#[utoipa::path(
    put,
    path = "/v1/plugins/{name}",
    tag = "plugins",
    params(("name" = String, Path, description = "Plugin name"), PutQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "replaced", body = PluginView),
        (status = 201, description = "added", body = PluginView),
        (status = 413, body = ErrorBody),
        (status = 422, description = "not a valid plugin of that kind, or not granted what it imports", body = ErrorBody),
    )
)]
async fn plugins_put(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<PutQuery>,
    body: Body,
) -> Result<(StatusCode, Json<PluginView>), Error> {
    // Read the whole body first: answering before it is read makes the
    // server close the connection under a client still sending.
    let limit = state.config.max_plugin_bytes;
    let wasm = axum::body::to_bytes(body, limit).await.map_err(|_| {
        Error::PayloadTooLarge(format!("the plugin is larger than {limit} bytes (AUTOMATION_MAX_PLUGIN_BYTES)"))
    })?;
    let kind_name = q.kind.as_deref().unwrap_or_default();
    let kind = Kind::parse(kind_name).ok_or_else(|| {
        Error::BadRequest("invalid_query", format!("kind must be filter, preset or executor (got {kind_name:?})"))
    })?;
    let mut capabilities = BTreeSet::new();
    for c in q.capabilities.iter().flat_map(|c| c.split(',')).map(str::trim).filter(|c| !c.is_empty()) {
        capabilities.insert(Capability::parse(c).ok_or_else(|| {
            Error::BadRequest("invalid_query", format!("unknown capability {c:?} (kv, http, sandbox)"))
        })?);
    }
    let manifest = Manifest {
        name: name.clone(),
        kind,
        wit: q.wit.unwrap_or_else(|| WIT_VERSION.to_owned()),
        version: q.version.unwrap_or_else(|| "0.0.0".to_owned()),
        description: q.description.unwrap_or_default(),
        capabilities,
        allowed_hosts: q
            .allowed_hosts
            .iter()
            .flat_map(|h| h.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect(),
    };
    manifest.check().map_err(|e| Error::invalid("invalid_manifest", e))?;
    let plugin = state
        .plugins
        .load_blocking(manifest.clone(), wasm.to_vec(), Source::Uploaded)
        .await
        .map_err(|e| Error::invalid("invalid_plugin", e.to_string()))?;
    let stored = StoredPlugin { manifest, sha256: plugin.sha256.clone(), wasm: wasm.to_vec() };
    state.store.upsert_plugin(&stored).await?;
    let view = PluginView::from(&plugin);
    let replaced = state.plugins.insert(plugin);
    let status = if replaced.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(view)))
}

/// Deletes an uploaded plugin. 409 while automations use it, and for
/// bundled or directory plugins (deleting an upload that replaced one of
/// those brings the original back).
#[utoipa::path(
    delete,
    path = "/v1/plugins/{name}",
    tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    security(("api_key" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
async fn plugins_delete(State(state): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<StatusCode, Error> {
    let plugin = state.plugins.get(&name).ok_or_else(|| Error::not_found("plugin", &name))?;
    if plugin.source != Source::Uploaded {
        return Err(Error::Conflict(
            "plugin_not_deletable",
            format!("plugin {name} is {:?}, not uploaded; it cannot be deleted", plugin.source).to_lowercase(),
        ));
    }
    if !state.plugins.is_base(&name) {
        let users = state.store.automations_using_plugin(&name).await?;
        if !users.is_empty() {
            let ids: Vec<String> = users.iter().map(ToString::to_string).collect();
            return Err(Error::Conflict(
                "plugin_in_use",
                format!("plugin {name} is used by automation(s) {}", ids.join(", ")),
            ));
        }
    }
    state.store.delete_plugin(&name).await?;
    state.plugins.remove_uploaded(&name);
    tracing::info!(plugin = %name, "plugin deleted");
    Ok(StatusCode::NO_CONTENT)
}
