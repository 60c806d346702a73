//! The REST API: one module per resource, one error type, one auth layer.
//!
//! Routes are declared through `utoipa-axum`, so the OpenAPI description at
//! `/openapi.json` is generated from the same declarations that route
//! requests and cannot drift from them.

mod automations;
mod callback;
mod describe;
mod error;
mod events;
mod extract;
mod filters;
mod health;
mod keys;
mod limits;
mod plugins;
mod runs;
pub mod server;
mod sources;
mod ui;
mod uploads;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

pub use error::{Error, ErrorBody};
pub use extract::{ApiJson, ApiPath, ApiQuery};
pub use keys::expiry as key_expiry;

use crate::auth;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::events::Ingest;
use crate::events::matcher::Matcher;
use crate::metrics::Metrics;
use crate::model::{AuditEntry, KeyRefusal, Scope};
use crate::plugins::Registry;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The configuration the host started with.
    pub config: Arc<Config>,
    /// The loaded plugins.
    pub plugins: Arc<Registry>,
    /// The dispatcher (woken when runs are created).
    pub dispatcher: Arc<Dispatcher>,
    /// The cron scheduler (woken when schedules change).
    pub scheduler: Arc<Scheduler>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Event ingestion (group commit).
    pub ingest: Arc<Ingest>,
    /// The event matcher (its cache is dropped when automations change).
    pub matcher: Arc<Matcher>,
    /// SHA-256 of `AUTOMATION_API_KEY`, if set.
    admin_key_hash: Option<String>,
    /// Memory event bodies may hold at once.
    bodies: Arc<limits::BodyBudget>,
    /// Deliveries per second per source.
    source_rate: Arc<limits::SourceRate>,
}

impl AppState {
    /// Builds the state from the host's parts.
    #[allow(clippy::too_many_arguments)] // one per shared part; a builder would only rename them
    pub fn new(
        store: Store,
        config: Arc<Config>,
        plugins: Arc<Registry>,
        dispatcher: Arc<Dispatcher>,
        scheduler: Arc<Scheduler>,
        metrics: Arc<Metrics>,
        ingest: Arc<Ingest>,
        matcher: Arc<Matcher>,
    ) -> AppState {
        let admin_key_hash = config.api_key.as_deref().map(|k| auth::hash_key(k.trim()));
        let bodies = Arc::new(limits::BodyBudget::new(config.event_body_budget_mb, Duration::from_secs(10)));
        let source_rate = Arc::new(limits::SourceRate::new(config.event_rate_per_source));
        AppState {
            store,
            config,
            plugins,
            dispatcher,
            scheduler,
            metrics,
            ingest,
            matcher,
            admin_key_hash,
            bodies,
            source_rate,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "automation-host",
        description = "A WebAssembly-extensible automation host. Every `/v1` route but event \
                       deliveries needs `Authorization: Bearer <api key>`; errors are \
                       `{\"code\", \"detail\"}`.\n\n\
                       **Keys and scopes.** A key holds a set of scopes. `read`: every GET (secret \
                       values stay masked) and filter evaluation. `operate`: dispatch automations, \
                       cancel runs. `write`: automations, uploads, sources (includes `operate`). \
                       `plugins`: upload, replace and remove plugin components; an uploaded component \
                       gets no capability until an `admin` grants one to its digest. `admin`: keys, \
                       grants and the audit log, and everything else. Every scope includes `read`. \
                       The scope each operation needs is listed in its `security` requirement \
                       (`api_key: [scope]`). A request without a valid key gets 401 (a revoked or \
                       expired key too, at once, on every replica); a valid key without the scope \
                       gets 403 naming the scope. Keys are made with `POST /v1/api-keys` or \
                       `automation-host api-key create --scope ...`; every change made with a key \
                       is recorded in `GET /v1/audit` with the key's id and name."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The whole HTTP application, with its OpenAPI description.
pub fn router(state: AppState) -> Router {
    let (v1, mut spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(automations::router())
        .merge(runs::router())
        .merge(uploads::router())
        .merge(plugins::router())
        .merge(filters::router())
        .merge(events::router())
        .merge(sources::router())
        .merge(keys::router())
        .split_for_parts();
    describe_scopes(&mut spec);
    let v1 = v1.route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    let (public, public_spec) =
        OpenApiRouter::new().merge(health::router()).merge(callback::router()).split_for_parts();
    spec.merge(public_spec);
    describe::describe_common(&mut spec);
    let spec = Arc::new(spec);

    Router::new()
        .merge(public)
        .merge(v1)
        .merge(ui::router())
        .route("/openapi.json", get(move || async move { axum::Json(spec.as_ref().clone()) }))
        .fallback(|| async { Error::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), request_timeout))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::DEBUG)),
        )
        .with_state(state)
}

/// Answers 408 when a request (its body included) takes longer than
/// `AUTOMATION_REQUEST_TIMEOUT_SECONDS`.
async fn request_timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = Duration::from_secs(state.config.request_timeout_seconds);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(Error::Timeout(format!(
            "the request took longer than {} s (AUTOMATION_REQUEST_TIMEOUT_SECONDS)",
            limit.as_secs()
        ))),
    }
}

/// Writes the scope each operation needs into its security requirement,
/// from the same table the auth layer enforces.
fn describe_scopes(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::SecurityRequirement;
    for (route, item) in spec.paths.paths.iter_mut() {
        let ops = [
            (axum::http::Method::GET, &mut item.get),
            (axum::http::Method::PUT, &mut item.put),
            (axum::http::Method::POST, &mut item.post),
            (axum::http::Method::DELETE, &mut item.delete),
            (axum::http::Method::PATCH, &mut item.patch),
        ];
        for (method, op) in ops {
            let Some(op) = op.as_mut() else { continue };
            if op.security.is_none() {
                continue; // public, or signed instead of keyed
            }
            let scope = auth::required_scope(&method, route);
            op.security = Some(vec![SecurityRequirement::new("api_key", [scope.as_str()])]);
        }
    }
}

/// Lets a request through only with a valid, live `Authorization: Bearer
/// <key>` that holds the scope the route needs; records every change made.
async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Result<Response, Error> {
    // Event deliveries authenticate with their signature instead.
    if req.method() == axum::http::Method::POST && req.uri().path().starts_with("/v1/events/") {
        return Ok(next.run(req).await);
    }
    let header = req.headers().get(AUTHORIZATION).ok_or_else(|| {
        Error::Unauthorized("missing Authorization header; send `Authorization: Bearer <api key>`".into())
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| Error::Unauthorized("the Authorization header must be `Bearer <api key>`".into()))?;
    if token.is_empty() {
        return Err(Error::Unauthorized("empty API key".into()));
    }
    let hash = auth::hash_key(token);
    let is_admin =
        state.admin_key_hash.as_deref().is_some_and(|admin| auth::constant_time_eq(admin.as_bytes(), hash.as_bytes()));
    let caller = if is_admin {
        Caller { key_id: None, name: "AUTOMATION_API_KEY".to_owned(), scopes: vec![Scope::Admin] }
    } else {
        // Read on every request, not cached: a revocation holds at once on
        // every replica.
        let key =
            state.store.find_api_key(&hash).await?.ok_or_else(|| Error::Unauthorized("invalid API key".into()))?;
        let now = crate::model::now();
        match key.refusal(now) {
            Some(KeyRefusal::Revoked(at)) => {
                return Err(Error::Unauthorized(format!("this API key was revoked at {}", at.to_rfc3339())));
            }
            Some(KeyRefusal::Expired(at)) => {
                return Err(Error::Unauthorized(format!("this API key expired at {}", at.to_rfc3339())));
            }
            None => {}
        }
        if auth::should_record_use(key.last_used_at, now) {
            let store = state.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch_api_key(key.id, now).await {
                    tracing::debug!(error = %e, key.id = %key.id, "cannot record the key's last use");
                }
            });
        }
        Caller { key_id: Some(key.id), name: key.name, scopes: key.scopes }
    };
    let route = match req.extensions().get::<MatchedPath>() {
        Some(m) => m.as_str().to_owned(),
        None => req.uri().path().to_owned(),
    };
    let method = req.method().clone();
    let needed = auth::required_scope(&method, &route);
    if !Scope::any_includes(&caller.scopes, needed) {
        let held: Vec<&str> = caller.scopes.iter().map(|s| s.as_str()).collect();
        return Err(Error::Forbidden(format!(
            "{method} {route} needs the `{needed}` scope; this key ({caller}) has {}",
            held.join(", ")
        )));
    }
    let changes = needed != Scope::Read && !matches!(method, axum::http::Method::GET | axum::http::Method::HEAD);
    let target = req.uri().path().to_owned();
    let mut req = req;
    req.extensions_mut().insert(caller.clone());
    let response = next.run(req).await;
    if changes && response.status().is_success() {
        let entry = AuditEntry {
            id: Uuid::now_v7(),
            at: crate::model::now(),
            key_id: caller.key_id,
            key_name: caller.name.clone(),
            action: format!("{method} {route}"),
            target,
            status: response.status().as_u16(),
        };
        // The change is made and answered; a lost record is logged loudly.
        if let Err(e) = state.store.insert_audit(&entry).await {
            tracing::error!(error = %e, action = %entry.action, target = %entry.target, by = %caller, "cannot record the audit entry");
        }
    }
    Ok(response)
}

/// Who made a request: the API key it authenticated with (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's id; `None` for the operator's `AUTOMATION_API_KEY`.
    pub key_id: Option<Uuid>,
    /// The key's name.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key_id {
            Some(id) => write!(f, "api-key:{} ({id})", self.name),
            None => f.write_str("AUTOMATION_API_KEY"),
        }
    }
}

/// Paging parameters shared by every list endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 100 (default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The validated page size and the id to continue below.
    pub fn resolve(&self) -> Result<(u32, Option<Uuid>), Error> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=100).contains(&limit) {
            return Err(Error::BadRequest("invalid_query", format!("limit must be 1 to 100 (got {limit})")));
        }
        let cursor = match &self.cursor {
            None => None,
            Some(c) => Some(Uuid::parse_str(c).map_err(|_| {
                Error::BadRequest("invalid_query", format!("cursor {c:?} is not one this API returned"))
            })?),
        };
        Ok((limit, cursor))
    }
}

/// One page of a listing, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    /// The items.
    pub items: Vec<T>,
    /// How many items match in all.
    pub total: i64,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> Page<T> {
    /// Builds a page from up to `limit + 1` fetched items (the extra one only
    /// tells that there is a next page).
    pub fn new(mut items: Vec<T>, total: i64, limit: u32, id_of: impl Fn(&T) -> Uuid) -> Page<T> {
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|i| id_of(i).to_string())
        } else {
            None
        };
        Page { items, total, next_cursor }
    }
}
