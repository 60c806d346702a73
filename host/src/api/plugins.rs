//! `/v1/plugins`: list, inspect, upload (replace) and delete plugins.

use std::collections::BTreeSet;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller, Error, ErrorBody};
use crate::config::PluginReplace;
use crate::plugins::manifest::{Capability, Grant, GrantOrigin, Kind, Manifest, WIT_VERSION};
use crate::plugins::{Plugin, Source};
use crate::store::{RecordedGrant, StoredPlugin};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(plugins_list))
        .routes(routes!(plugins_get, plugins_put, plugins_delete))
        .routes(routes!(grants_list, grants_post))
        .routes(routes!(grants_delete))
}

/// A loaded plugin as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PluginView {
    /// Its name.
    name: String,
    /// `filter`, `preset`, `executor` or `source`.
    kind: Kind,
    /// The WIT world it targets.
    world: String,
    /// The `automation:plugin` release the component was built against, as
    /// its interface names say.
    wit: String,
    /// True when that is an older release this host serves through an
    /// adapter (it still loads and behaves as before; rebuild to use what
    /// is new).
    wit_adapted: bool,
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
    /// What it is actually granted (what it asks for and what is granted to
    /// this component, both).
    granted: Grant,
    /// Where the grant in force comes from: `bundled_default`,
    /// `operator_by_name` (bundled and plugins-dir plugins only),
    /// `operator_pinned` (`name@sha256:...` in `AUTOMATION_PLUGIN_GRANTS`),
    /// `api` (recorded through `POST /v1/plugins/{name}/grants`).
    grant_origins: Vec<GrantOrigin>,
    /// The grant recorded through the API for this component's digest, with
    /// who gave it and when (`GET /v1/plugins/{name}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded_grant: Option<RecordedGrant>,
    /// What the component imports, each `live` or `denied` with what that
    /// means on this host (WASI 0.2 is linked whole; see the README).
    imports: Vec<crate::plugins::imports::ImportStatus>,
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
            world: format!("automation:plugin/{}@{}", p.kind().world(), p.wit_version),
            wit: p.wit_version.clone(),
            wit_adapted: p.wit_version != WIT_VERSION,
            version: d.map_or_else(|| p.manifest.version.clone(), |d| d.version.clone()),
            description: d.map_or_else(|| p.manifest.description.clone(), |d| d.description.clone()),
            sha256: p.sha256.clone(),
            size_bytes: p.size,
            source: p.source,
            requested: p.manifest.capabilities.clone(),
            granted: (*p.grant).clone(),
            grant_origins: p.grant_origins.clone(),
            recorded_grant: None,
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
    let mut view = PluginView::of(&p, &state);
    if p.source == Source::Uploaded {
        view.recorded_grant = state.store.get_plugin_grant(&name, &p.sha256).await?;
    }
    Ok(Json(view))
}

/// Uploads a plugin (the body is the `.wasm` component) or replaces an
/// uploaded one of the same name. It is validated, checked against its kind's
/// world and its grants, and compiled before it replaces the old one; calls
/// already running finish on the old one. An upload is granted only what is
/// granted to its digest (`name@sha256:...` in `AUTOMATION_PLUGIN_GRANTS`, or
/// `POST /v1/plugins/{name}/grants`), never what its name was granted. A
/// bundled or plugins-dir plugin cannot be replaced (409 `plugin_protected`)
/// unless the operator set `AUTOMATION_PLUGIN_REPLACE=allow`.
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
        (status = 409, description = "a bundled or plugins-dir plugin has that name", body = ErrorBody),
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
    let wasm = super::extract::read_limited(body, limit, "the plugin", "AUTOMATION_MAX_PLUGIN_BYTES").await?;
    if state.plugins.is_base(&name) && state.config.plugin_replace != PluginReplace::Allow {
        return Err(Error::Conflict(
            "plugin_protected",
            format!(
                "plugin {name} is bundled or from the plugins directory and cannot be replaced over the API \
                 (the operator can allow it with AUTOMATION_PLUGIN_REPLACE=allow); upload under another name"
            ),
        ));
    }
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
    let sha256 = crate::plugins::digest(&wasm);
    let recorded = recorded_grant(&state, &name, &sha256).await?;
    let plugin = state
        .plugins
        .load_blocking(manifest.clone(), wasm.to_vec(), Source::Uploaded, recorded)
        .await
        .map_err(|e| Error::invalid("invalid_plugin", e.to_string()))?;
    let stored = StoredPlugin {
        name: manifest.name.clone(),
        kind: manifest.kind.as_str().to_owned(),
        manifest: serde_json::to_value(&manifest).map_err(|e| Error::Internal(e.into()))?,
        sha256: plugin.sha256.clone(),
        wasm: wasm.to_vec(),
    };
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
    if plugin.kind() == Kind::Source {
        let users: Vec<String> = state
            .store
            .list_sources()
            .await?
            .into_iter()
            .filter(|s| s.plugin.as_deref() == Some(name.as_str()))
            .map(|s| s.name)
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(
                "plugin_in_use",
                format!("plugin {name} reads the deliveries of source(s) {}", users.join(", ")),
            ));
        }
    }
    state.store.delete_plugin(&name).await?;
    state.plugins.remove_uploaded(&name);
    tracing::info!(plugin = %name, "plugin deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The grant recorded for `name` at `sha256`, as a [`Grant`].
async fn recorded_grant(state: &AppState, name: &str, sha256: &str) -> Result<Option<Grant>, Error> {
    let Some(r) = state.store.get_plugin_grant(name, sha256).await? else { return Ok(None) };
    // Recorded grants were checked on the way in; a name this host no
    // longer knows grants nothing rather than failing the upload.
    Ok(Grant::from_names(&r.capabilities, &r.allowed_hosts).ok())
}

/// A grant to record for one component.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantRequest {
    /// The SHA-256 of the component it is for (`sha256` in the plugin's view,
    /// or in the 422 that refused its upload).
    sha256: String,
    /// Capabilities: `kv`, `http`, `sandbox`.
    #[serde(default)]
    capabilities: Vec<String>,
    /// Hosts `http` may reach (`*` for whatever its manifest asks).
    #[serde(default)]
    allowed_hosts: Vec<String>,
}

/// Records a grant for one uploaded component: the plugin name *and* its
/// digest, so another component uploaded under the name later gets nothing.
/// It may be given before the upload. Who gave it, and when, is recorded.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/grants",
    tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    request_body = GrantRequest,
    security(("api_key" = [])),
    responses((status = 201, body = RecordedGrant), (status = 422, body = ErrorBody))
)]
async fn grants_post(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<GrantRequest>,
) -> Result<(StatusCode, Json<RecordedGrant>), Error> {
    crate::model::check_name(&name).map_err(|e| Error::invalid("invalid_name", e))?;
    let sha256 = req.sha256.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid("invalid_grant", "sha256 must be 64 hex digits"));
    }
    let grant =
        Grant::from_names(&req.capabilities, &req.allowed_hosts).map_err(|e| Error::invalid("invalid_grant", e))?;
    let recorded = RecordedGrant {
        name: name.clone(),
        sha256,
        capabilities: grant.capabilities.iter().map(|c| c.as_str().to_owned()).collect(),
        allowed_hosts: grant.allowed_hosts.iter().cloned().collect(),
        granted_by: caller.to_string(),
        granted_at: crate::model::now(),
    };
    state.store.upsert_plugin_grant(&recorded).await?;
    tracing::info!(plugin = %name, sha256 = %recorded.sha256, by = %recorded.granted_by, capabilities = ?recorded.capabilities, "plugin grant recorded");
    reload(&state).await;
    Ok((StatusCode::CREATED, Json(recorded)))
}

/// Lists the grants recorded for a plugin name, newest first.
#[utoipa::path(
    get,
    path = "/v1/plugins/{name}/grants",
    tag = "plugins",
    params(("name" = String, Path, description = "Plugin name")),
    security(("api_key" = [])),
    responses((status = 200, body = Vec<RecordedGrant>))
)]
async fn grants_list(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<RecordedGrant>>, Error> {
    Ok(Json(state.store.list_plugin_grants(&name).await?))
}

/// Withdraws the grant of one component. If that component is loaded and
/// imports what the grant gave, it is unloaded at once.
#[utoipa::path(
    delete,
    path = "/v1/plugins/{name}/grants/{sha256}",
    tag = "plugins",
    params(("name" = String, Path, description = "Plugin name"), ("sha256" = String, Path, description = "Component digest")),
    security(("api_key" = [])),
    responses((status = 204, description = "withdrawn"), (status = 404, body = ErrorBody))
)]
async fn grants_delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((name, sha256)): ApiPath<(String, String)>,
) -> Result<StatusCode, Error> {
    let sha256 = sha256.trim_start_matches("sha256:").to_ascii_lowercase();
    if !state.store.delete_plugin_grant(&name, &sha256).await? {
        return Err(Error::not_found("grant", format!("{name}@sha256:{sha256}")));
    }
    tracing::info!(plugin = %name, sha256 = %sha256, by = %caller, "plugin grant withdrawn");
    reload(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Brings the loaded uploads in line with the database after a grant change.
async fn reload(state: &AppState) {
    if let Err(e) = state.plugins.reload_uploaded(&state.store).await {
        tracing::warn!(error = %e, "cannot reload uploaded plugins after a grant change; the next poll retries");
    }
}
