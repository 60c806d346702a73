//! The REST API: one module per resource, one error type, one auth layer.
//!
//! Routes are declared through `utoipa-axum`, so the OpenAPI description at
//! `/openapi.json` is generated from the same declarations that route
//! requests and cannot drift from them.

mod automations;
mod callback;
mod error;
mod events;
mod extract;
mod filters;
mod health;
mod limits;
mod plugins;
mod runs;
pub mod server;
mod sources;
mod uploads;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
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

use crate::auth;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::events::Ingest;
use crate::events::matcher::Matcher;
use crate::metrics::Metrics;
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
        description = "A WebAssembly-extensible automation host. Every `/v1` route needs \
                       `Authorization: Bearer <api key>`; errors are `{\"code\", \"detail\"}`."
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
        .split_for_parts();
    let v1 = v1.route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    let (public, public_spec) =
        OpenApiRouter::new().merge(health::router()).merge(callback::router()).split_for_parts();
    spec.merge(public_spec);
    let spec = Arc::new(spec);

    Router::new()
        .merge(public)
        .merge(v1)
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

/// Lets a request through only with a valid `Authorization: Bearer <key>`.
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
        Caller { key_id: None, name: "AUTOMATION_API_KEY".to_owned() }
    } else {
        let key =
            state.store.find_api_key(&hash).await?.ok_or_else(|| Error::Unauthorized("invalid API key".into()))?;
        Caller { key_id: Some(key.id), name: key.name }
    };
    let mut req = req;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Who made a request: the API key it authenticated with (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's id; `None` for the operator's `AUTOMATION_API_KEY`.
    pub key_id: Option<Uuid>,
    /// The key's name.
    pub name: String,
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
