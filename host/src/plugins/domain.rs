//! The plain Rust types callers of the plugin runtime use; `convert` turns
//! them into WIT types and back at the edge.

use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::RunOutput;

/// The event a filter decides on.
#[derive(Debug, Clone)]
pub struct FilterEvent {
    /// The delivery's id (nil when there is none, as for `POST /v1/filters/evaluate`).
    pub id: Uuid,
    /// Its source (`github`, a custom source's name).
    pub source: String,
    /// Its event key (`pull_request.opened`).
    pub key: String,
    /// The payload as JSON text.
    pub payload: String,
    /// When it was received.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

impl FilterEvent {
    /// An event with no delivery behind it (nil id), received now: what
    /// `POST /v1/filters/evaluate`, tests and benchmarks decide on.
    pub fn new(source: &str, key: &str, payload: &str) -> FilterEvent {
        FilterEvent {
            id: Uuid::nil(),
            source: source.to_owned(),
            key: key.to_owned(),
            payload: payload.to_owned(),
            received_at: crate::model::now(),
        }
    }
}

/// A bundle: the code a run executes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    /// A gzip tar archive, unpacked first.
    pub archive: Option<Vec<u8>>,
    /// Files written after the archive: (path, mode, contents).
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// The command to run.
    pub entrypoint: String,
    /// Environment variables.
    pub env: Vec<(String, String)>,
}

/// What an executor is told about the run it carries out.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The run.
    pub run_id: Uuid,
    /// The automation.
    pub automation_id: Uuid,
    /// The automation's name.
    pub automation_name: String,
    /// 1 on the first start, more on retries.
    pub attempt: u32,
    /// `cron`, `event` or `manual`.
    pub trigger_kind: String,
    /// The trigger payload as JSON text.
    pub trigger_payload: String,
    /// The event key, for event runs.
    pub event_key: Option<String>,
    /// The cron slot, for cron runs.
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    /// The executor configuration as JSON text.
    pub config: String,
    /// The time budget.
    pub timeout: Duration,
    /// Where the run may report completion.
    pub callback_url: String,
    /// The per-run token for the callback.
    pub callback_token: String,
}

/// Where an executor says a run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    /// Still going.
    Running,
    /// Finished well.
    Succeeded(RunOutput),
    /// Finished badly, with a reason.
    Failed(String, RunOutput),
    /// The executor's own time limit ended it.
    TimedOut(RunOutput),
    /// It was cancelled.
    Cancelled(RunOutput),
}

/// What a preset or executor says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Description {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its configuration.
    #[schema(value_type = Option<Object>)]
    pub config_schema: Option<serde_json::Value>,
}

/// Where a loaded plugin came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Built from `guest-examples/` into the binary.
    Bundled,
    /// A `.wasm` + `.toml` pair in the plugins directory.
    Directory,
    /// Uploaded with `PUT /v1/plugins/{name}`.
    Uploaded,
}

/// A webhook request for a source plugin to verify and read.
#[derive(Debug, Clone)]
pub struct SourceRequest {
    /// Header names in lower case with their values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
}

/// What a source plugin made of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceOutcome {
    /// Store a delivery.
    Deliver {
        /// Its event key; `None` stores it as unrecognized.
        key: Option<String>,
        /// The sender's delivery id, for dedup.
        delivery_id: Option<String>,
        /// The payload to store; `None` for the body as it came.
        payload: Option<String>,
    },
    /// Answer the sender with this; store nothing.
    Reply {
        /// 200 to 299.
        status: u16,
        /// `text/plain` or `application/json`.
        content_type: String,
        /// The body.
        body: String,
    },
}
