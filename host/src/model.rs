//! Domain types shared by the API, the store and the run loop.
//!
//! These are what the REST API returns and what the store reads and writes;
//! request bodies (with their validation) live in `api/`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// What fires an automation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// A cron schedule in an IANA time zone.
    Cron {
        /// Cron expression: 5 fields, 6 with seconds first, or a macro such as `@hourly`.
        schedule: String,
        /// IANA time zone the schedule is read in (default `UTC`).
        #[serde(default = "default_timezone")]
        timezone: String,
        /// What to do with slots missed while no host was running (default `run_once`).
        #[serde(default)]
        misfire: MisfirePolicy,
    },
    /// An incoming signed event.
    Event {
        /// The event source: `github` or a custom source's name.
        #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
        source: String,
        /// Event keys that fire the automation, exact or glob (`pull_request.*`).
        #[schema(min_items = 1, max_items = 50)]
        on: Vec<String>,
        /// Optional filter expression evaluated against the payload.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
        /// The filter plugin that evaluates `filter` (default `jmespath`).
        #[serde(default = "default_filter_plugin")]
        filter_plugin: String,
    },
    /// Only `POST /v1/automations/{id}/dispatch` fires it.
    Manual {},
}

fn default_timezone() -> String {
    "UTC".to_owned()
}

fn default_filter_plugin() -> String {
    "jmespath".to_owned()
}

impl Trigger {
    /// The trigger's type name as stored and filtered on: `cron`, `event` or `manual`.
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Cron { .. } => "cron",
            Trigger::Event { .. } => "event",
            Trigger::Manual {} => "manual",
        }
    }

    /// The event source for event triggers.
    pub fn event_source(&self) -> Option<&str> {
        match self {
            Trigger::Event { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What a cron automation does about slots missed while no host ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// Missed slots are recorded as `missed`; none fires.
    Skip,
    /// The latest missed slot fires once (the reference service's behaviour).
    #[default]
    RunOnce,
    /// Every missed slot fires, up to a cap.
    RunAll,
}

/// What a run does when the automation already has `concurrency` runs going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyPolicy {
    /// The run waits (stays `pending`) until a slot frees up.
    #[default]
    Queue,
    /// The run is marked `skipped`.
    Skip,
}

impl ConcurrencyPolicy {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyPolicy::Queue => "queue",
            ConcurrencyPolicy::Skip => "skip",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queue" => Some(ConcurrencyPolicy::Queue),
            "skip" => Some(ConcurrencyPolicy::Skip),
            _ => None,
        }
    }
}

/// An uploaded bundle an automation runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleRef {
    /// The upload's id (from `POST /v1/uploads`).
    pub upload_id: Uuid,
}

/// A preset plugin that renders the automation's bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresetRef {
    /// The preset plugin's name, such as `script`.
    pub name: String,
    /// The preset's configuration (checked against the preset's JSON Schema when saved).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub config: Value,
}

/// The executor plugin that carries out the automation's runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutorRef {
    /// The executor plugin's name, such as `local-sandbox`.
    pub plugin: String,
    /// The executor's configuration.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub config: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Filter evaluation errors seen for an automation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilterErrors {
    /// How many evaluations failed since the automation was created.
    pub count: i64,
    /// The latest error message.
    pub last_error: Option<String>,
    /// When the latest error happened.
    pub last_error_at: Option<DateTime<Utc>>,
}

/// How much of the key-value store one plugin may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Most keys.
    pub max_keys: i64,
    /// Most bytes, keys and values counted.
    pub max_bytes: i64,
}

impl Default for KvQuota {
    fn default() -> KvQuota {
        KvQuota { max_keys: 10_000, max_bytes: 64 << 20 }
    }
}

impl KvQuota {
    /// Whether a plugin holding `keys` keys and `bytes` bytes besides the
    /// key being set may store `new_bytes` (key and value) under it; the
    /// refusal says which quota and how much is used.
    pub fn allows(&self, keys: i64, bytes: i64, new_bytes: i64) -> Result<(), String> {
        if keys + 1 > self.max_keys {
            return Err(format!(
                "over the key-value quota: {keys} keys of {} (AUTOMATION_PLUGIN_KV_MAX_KEYS)",
                self.max_keys
            ));
        }
        if bytes + new_bytes > self.max_bytes {
            return Err(format!(
                "over the key-value quota: {bytes} + {new_bytes} bytes of {} (AUTOMATION_PLUGIN_KV_MAX_MB)",
                self.max_bytes
            ));
        }
        Ok(())
    }
}

/// What the API shows in place of a secret value.
pub const MASK: &str = "********";

/// Environment values the API takes but never gives back: they serialize
/// (and print with `{:?}`) as their names with masked values, so neither a
/// response nor a log line can hold one.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[schema(value_type = Object)]
pub struct SecretEnv(pub std::collections::BTreeMap<String, String>);

impl Serialize for SecretEnv {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for name in self.0.keys() {
            map.serialize_entry(name, MASK)?;
        }
        map.end()
    }
}

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, MASK))).finish()
    }
}

/// A value the API takes but never gives back: it serializes (and prints
/// with `{:?}`) as the mask.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[schema(value_type = String)]
pub struct WriteOnly(pub String);

impl Serialize for WriteOnly {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

impl std::fmt::Debug for WriteOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

/// Where an automation's run endings are sent: a Standard Webhooks
/// message (`webhook-id`, `webhook-timestamp`, `webhook-signature`) POSTed
/// to `url`, retried with backoff until the receiver answers 2xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// An `http` or `https` URL. Names must resolve to public addresses;
    /// internal ones need `AUTOMATION_NOTIFY_ALLOWED_HOSTS`.
    pub url: String,
    /// The final statuses that send a message (default `failed`, `timed_out`).
    #[serde(default = "default_notify_on")]
    pub on: Vec<RunStatus>,
    /// The signing secret (write-only): `whsec_` and base64, as Standard
    /// Webhooks libraries take it, or any 16 to 200 characters (used as bytes).
    pub secret: WriteOnly,
}

fn default_notify_on() -> Vec<RunStatus> {
    vec![RunStatus::Failed, RunStatus::TimedOut]
}

impl NotifyTarget {
    /// The key the signatures are made with: the base64 after `whsec_`, or
    /// the secret's bytes.
    pub fn key(&self) -> Vec<u8> {
        use base64::Engine as _;
        self.secret
            .0
            .strip_prefix("whsec_")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_else(|| self.secret.0.as_bytes().to_vec())
    }
}

/// One notification of a run's end and how its delivery went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotificationRecord {
    /// Its id (the message's `webhook-id`).
    pub id: Uuid,
    /// `pending` (waiting or retrying), `delivered` or `failed` (given up).
    pub status: String,
    /// POSTs tried so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The receiver's last HTTP status.
    pub last_status_code: Option<u16>,
    /// When the receiver took it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: DateTime<Utc>,
    /// When the run's end queued it.
    pub created_at: DateTime<Utc>,
}

/// An automation: a trigger, what to run and which executor runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Automation {
    /// Its id.
    pub id: Uuid,
    /// A human-readable name.
    pub name: String,
    /// What it is for, in a sentence or two (may be empty).
    pub description: String,
    /// Short labels to find it by (`GET /v1/automations?tag=`), sorted.
    pub tags: Vec<String>,
    /// What fires it.
    pub trigger: Trigger,
    /// The uploaded bundle it runs, if any.
    pub bundle: Option<BundleRef>,
    /// The preset that renders its bundle, if any.
    pub preset: Option<PresetRef>,
    /// The command to run from the bundle root (a preset may supply it).
    pub entrypoint: Option<String>,
    /// Environment variables given to every run.
    #[schema(value_type = Object)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Secret environment variables given to every run: stored sealed,
    /// shown only by name (each value as `********`).
    pub secret_env: SecretEnv,
    /// The executor plugin and its configuration.
    pub executor: ExecutorRef,
    /// The time budget of one run, in seconds.
    pub timeout_seconds: u32,
    /// Whether triggers fire it. Manual dispatch works either way.
    pub enabled: bool,
    /// A draft: made to be tried (`POST /v1/automations/{id}/test`) and
    /// never enabled since; it never fires on its trigger. Enabling it
    /// makes it live.
    #[serde(default)]
    pub draft: bool,
    /// Why it is disabled (none while enabled, and for a draft).
    #[serde(default)]
    pub disabled_reason: Option<DisabledReason>,
    /// What disabled it, in words (for `failures`, the failed runs).
    #[serde(default)]
    pub disabled_detail: Option<String>,
    /// When it was disabled.
    #[serde(default)]
    pub disabled_at: Option<DateTime<Utc>>,
    /// When it was last enabled: only runs that finished since count
    /// towards disabling it after failures.
    #[serde(default)]
    pub enabled_at: Option<DateTime<Utc>>,
    /// Where the host sends a signed message when a run ends in one of the
    /// listed statuses.
    #[serde(default)]
    pub notify: Option<NotifyTarget>,
    /// The most runs of this automation that may be `running` at once.
    pub concurrency: u32,
    /// What a run over the concurrency limit does.
    pub concurrency_policy: ConcurrencyPolicy,
    /// Filter evaluation errors.
    pub filter_errors: FilterErrors,
    /// When a trigger last created a run.
    pub last_triggered_at: Option<DateTime<Utc>>,
    /// The next cron slot, for enabled cron automations.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

impl Automation {
    /// Applies a request's `enabled` and `draft` at `now`: enabling makes
    /// it live (no longer a draft, the reason it was disabled cleared, its
    /// failure count starting again); disabling records `manual`; `draft`
    /// makes it a draft again (disabled, no reason). A draft that is also
    /// enabled is refused.
    pub fn set_state(&mut self, enabled: Option<bool>, draft: Option<bool>, now: DateTime<Utc>) -> Result<(), String> {
        if draft == Some(true) && enabled == Some(true) {
            return Err("a draft is never enabled: send \"enabled\": true alone to make it live".into());
        }
        if draft == Some(true) {
            self.enabled = false;
            self.draft = true;
            self.clear_disabled();
        } else if enabled == Some(true) {
            if !self.enabled {
                self.enabled = true;
                self.draft = false;
                self.enabled_at = Some(now);
                self.clear_disabled();
            }
        } else if (enabled == Some(false) || (draft == Some(false) && self.draft)) && (self.enabled || self.draft) {
            self.enabled = false;
            self.draft = false;
            self.disabled_reason = Some(DisabledReason::Manual);
            self.disabled_detail = None;
            self.disabled_at = Some(now);
        }
        Ok(())
    }

    fn clear_disabled(&mut self) {
        self.disabled_reason = None;
        self.disabled_detail = None;
        self.disabled_at = None;
    }
}

/// Why an automation is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    /// Someone disabled it (or made it disabled).
    Manual,
    /// Its last runs failed, `AUTOMATION_FAILURE_DISABLE_THRESHOLD` in a row.
    Failures,
    /// Its bundle can no longer be made: the preset refuses its
    /// configuration, or the uploaded bundle is gone.
    BadBundle,
    /// Its executor or preset plugin is no longer loaded.
    PluginMissing,
}

impl DisabledReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::Manual => "manual",
            DisabledReason::Failures => "failures",
            DisabledReason::BadBundle => "bad_bundle",
            DisabledReason::PluginMissing => "plugin_missing",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [DisabledReason::Manual, DisabledReason::Failures, DisabledReason::BadBundle, DisabledReason::PluginMissing]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created, waiting for a dispatcher to claim it.
    Pending,
    /// Claimed and started on its executor.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped because it ran past its timeout.
    TimedOut,
    /// Cancelled on request.
    Cancelled,
    /// Never started (for example, over the concurrency limit).
    Skipped,
}

impl RunStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::TimedOut,
        RunStatus::Cancelled,
        RunStatus::Skipped,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Skipped => "skipped",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True once nothing can move the run any more.
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Pending | RunStatus::Running)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who moved a run to its current status, why and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusDetail {
    /// The status it came from (none for a new run).
    pub from: Option<RunStatus>,
    /// Who moved it: `api`, `scheduler`, `events`, `dispatcher`, `executor`, `callback`, `rescue`.
    pub by: String,
    /// Why, in words.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// What fired a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunTrigger {
    /// `cron`, `event` or `manual`.
    pub kind: String,
    /// The trigger payload: the event payload, the cron slot, or the dispatch body.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// The event delivery that fired it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    /// The event key that fired it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_key: Option<String>,
    /// The cron slot that fired it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
}

/// What a run's process produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunOutput {
    /// The exit code, when there was a process.
    pub exit_code: Option<i32>,
    /// Standard output (bounded).
    pub stdout: String,
    /// Standard error (bounded).
    pub stderr: String,
    /// True if output was cut short.
    pub truncated: bool,
}

/// One line an executor plugin logged while carrying out a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PluginLogLine {
    /// The executor call: `start`, `poll` or `cancel`.
    pub call: String,
    /// `trace`, `debug`, `info`, `warn`, `error`, or `stderr` for what the
    /// plugin itself wrote to standard error.
    pub level: String,
    /// The message.
    pub message: String,
}

/// One firing of an automation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Run {
    /// Its id.
    pub id: Uuid,
    /// The automation it belongs to.
    pub automation_id: Uuid,
    /// Where it is.
    pub status: RunStatus,
    /// Who moved it there, why and when.
    pub status_detail: StatusDetail,
    /// What fired it.
    pub trigger: RunTrigger,
    /// How many times an executor was asked to start it.
    pub attempt: u32,
    /// The executor plugin that runs it, once started.
    pub executor: Option<String>,
    /// The executor's handle, once started.
    pub executor_handle: Option<String>,
    /// What it produced.
    pub output: Option<RunOutput>,
    /// Why it failed, for failed, timed-out and skipped runs.
    pub error: Option<String>,
    /// What the executor plugin logged while carrying it out (bounded).
    pub plugin_log: Vec<PluginLogLine>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When an executor started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final status.
    pub finished_at: Option<DateTime<Utc>>,
    /// When it times out (set when it starts).
    pub timeout_at: Option<DateTime<Utc>>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The run this one repeats (`POST /v1/runs/{id}/rerun`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<Uuid>,
    /// The latest progress it reported while going.
    #[serde(default)]
    pub progress: Option<RunProgress>,
    /// The messages its end sent to the automation's `notify` target
    /// (shown by `GET /v1/runs/{id}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationRecord>,
}

/// A phase (and optionally how far along) a run reported: through
/// `POST /v1/runs/{id}/progress` with its callback token, or, under the
/// local sandbox, by writing a line to `$AUTOMATION_PROGRESS_FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunProgress {
    /// What it is doing, 1 to 200 characters.
    pub phase: String,
    /// How far along, 0 to 100, if it said.
    pub percent: Option<u8>,
    /// When it was reported.
    pub at: DateTime<Utc>,
    /// `callback` or `sandbox`.
    pub by: String,
}

/// Most characters of a progress phase.
pub const MAX_PHASE_CHARS: usize = 200;

impl RunProgress {
    /// Checks a reported phase and percent; the phase is trimmed.
    pub fn new(phase: &str, percent: Option<u8>, by: &str) -> Result<RunProgress, String> {
        let phase = phase.trim();
        if phase.is_empty() || phase.chars().count() > MAX_PHASE_CHARS || phase.chars().any(char::is_control) {
            return Err(format!("phase must be 1 to {MAX_PHASE_CHARS} characters without control characters"));
        }
        if percent.is_some_and(|p| p > 100) {
            return Err("percent must be 0 to 100".into());
        }
        Ok(RunProgress { phase: phase.to_owned(), percent, at: now(), by: by.to_owned() })
    }

    /// Reads what a run wrote to its progress file: the last non-empty
    /// line, an optional leading `NN%` setting the percent (`40% building`).
    /// Control characters are dropped and the phase cut to its limit, so
    /// whatever a run writes gives a valid phase or nothing.
    pub fn from_file(text: &str) -> Option<RunProgress> {
        let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
        let percent = line
            .split_once('%')
            .filter(|(n, _)| (1..=3).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(n, rest)| Some((n.parse::<u8>().ok().filter(|p| *p <= 100)?, rest)));
        let (percent, rest) = match percent {
            Some((p, rest)) => (Some(p), rest),
            None => (None, line),
        };
        let phase: String = rest.chars().filter(|c| !c.is_control()).take(MAX_PHASE_CHARS).collect();
        let phase = if phase.trim().is_empty() { "working".to_owned() } else { phase };
        RunProgress::new(&phase, percent, "sandbox").ok()
    }
}

impl Run {
    /// A new `pending` run of an automation, created by `by` for `reason`.
    pub fn pending(automation_id: Uuid, trigger: RunTrigger, by: &str, reason: String) -> Run {
        let now = now();
        Run {
            id: Uuid::now_v7(),
            automation_id,
            status: RunStatus::Pending,
            status_detail: StatusDetail { from: None, by: by.to_owned(), reason, at: now },
            trigger,
            attempt: 0,
            executor: None,
            executor_handle: None,
            output: None,
            error: None,
            plugin_log: Vec::new(),
            rerun_of: None,
            progress: None,
            notifications: Vec::new(),
            created_at: now,
            started_at: None,
            finished_at: None,
            timeout_at: None,
            updated_at: now,
        }
    }
}

/// An uploaded bundle archive (its bytes are fetched separately).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Upload {
    /// Its id.
    pub id: Uuid,
    /// An optional name given at upload.
    pub name: Option<String>,
    /// Size of the gzip archive in bytes.
    pub size_bytes: i64,
    /// SHA-256 of the gzip archive, lowercase hex.
    pub sha256: String,
    /// Number of entries in the archive.
    pub entry_count: i64,
    /// Total size of the files once unpacked, in bytes.
    pub unpacked_bytes: i64,
    /// When it was uploaded.
    pub created_at: DateTime<Utc>,
}

/// What an API key may do. Scopes nest: `admin` includes every other one,
/// `write` includes `operate`, and every scope includes `read`. `plugins`
/// (upload, replace and remove plugin components) is separate from `write`
/// because a component is code the host runs; an uploaded one still gets no
/// grant until an `admin` key gives it one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every GET (secrets stay masked) and filter evaluation.
    Read,
    /// Dispatch automations and cancel runs.
    Operate,
    /// Create, change and delete automations, uploads and sources.
    Write,
    /// Upload, replace and remove plugin components (never their grants).
    Plugins,
    /// Keys, grants, the audit log: everything.
    Admin,
}

impl Scope {
    /// Every scope, weakest first.
    pub const ALL: [Scope; 5] = [Scope::Read, Scope::Operate, Scope::Write, Scope::Plugins, Scope::Admin];

    /// Its name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Write => "write",
            Scope::Plugins => "plugins",
            Scope::Admin => "admin",
        }
    }

    /// Whether holding `self` allows what needs `needed`.
    pub fn includes(self, needed: Scope) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Write => matches!(needed, Scope::Write | Scope::Operate | Scope::Read),
            Scope::Plugins => matches!(needed, Scope::Plugins | Scope::Read),
            Scope::Operate => matches!(needed, Scope::Operate | Scope::Read),
            Scope::Read => needed == Scope::Read,
        }
    }

    /// Whether any of `held` allows what needs `needed`.
    pub fn any_includes(held: &[Scope], needed: Scope) -> bool {
        held.iter().any(|s| s.includes(needed))
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown scope {s:?}; scopes are read, operate, write, plugins and admin"))
    }
}

/// An API key's public part (the key itself is shown once, at creation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyInfo {
    /// Its id.
    pub id: Uuid,
    /// A name to recognise it by.
    pub name: String,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used (kept to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; a revoked key is refused at once.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Why a key is refused, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// It was revoked at this time.
    Revoked(DateTime<Utc>),
    /// It expired at this time.
    Expired(DateTime<Utc>),
}

impl ApiKeyInfo {
    /// Whether the key may be used at `now`.
    pub fn refusal(&self, now: DateTime<Utc>) -> Option<KeyRefusal> {
        if let Some(at) = self.revoked_at {
            return Some(KeyRefusal::Revoked(at));
        }
        match self.expires_at {
            Some(at) if at <= now => Some(KeyRefusal::Expired(at)),
            _ => None,
        }
    }
}

/// One change made through the API, and who made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Its id (time-ordered).
    pub id: Uuid,
    /// When the change was answered.
    pub at: DateTime<Utc>,
    /// The key's id; absent for the operator's `AUTOMATION_API_KEY`.
    pub key_id: Option<Uuid>,
    /// The key's name.
    pub key_name: String,
    /// The method and route, such as `DELETE /v1/automations/{id}`.
    pub action: String,
    /// The path as requested, naming the resource.
    pub target: String,
    /// The HTTP status of the answer.
    pub status: u16,
}

/// The current time, truncated to the microseconds both databases keep, so
/// what the API returns at creation equals what it reads back later.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// Checks a plugin or source name: 1 to 64 lowercase letters, digits, `-`
/// and `_`, starting with a letter or digit.
pub fn check_name(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("{value:?} must be 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit"))
    }
}

/// What happened to one cron slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotOutcome {
    /// A run was created for it.
    Fired,
    /// It passed while no host ran, and the misfire policy did not fire it.
    Missed,
    /// The automation already had `concurrency` runs going (policy `skip`).
    SkippedOverlap,
}

impl SlotOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotOutcome::Fired => "fired",
            SlotOutcome::Missed => "missed",
            SlotOutcome::SkippedOverlap => "skipped_overlap",
        }
    }
}

/// Most tags an automation may have.
pub const MAX_TAGS: usize = 20;

/// Checks and normalises tags: each 1 to 40 characters of lowercase
/// letters, digits and `-_.:/` (upper case is lowered), at most
/// [`MAX_TAGS`]; returns them sorted without duplicates.
pub fn check_tags(tags: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        let t = t.trim().to_lowercase();
        let ok = (1..=40).contains(&t.chars().count())
            && t.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.:/".contains(c));
        if !ok {
            return Err(format!("tag {t:?} must be 1 to 40 characters of letters, digits and -_.:/"));
        }
        out.push(t);
    }
    out.sort();
    out.dedup();
    if out.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags (got {})", out.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tag_tests {
    use super::*;

    #[test]
    fn progress_files_give_a_valid_phase_or_nothing() {
        let p = |t: &str| RunProgress::from_file(t).map(|p| (p.percent, p.phase));
        assert_eq!(p("cloning\n40% building\n\n"), Some((Some(40), "building".into())));
        assert_eq!(p("tests"), Some((None, "tests".into())));
        assert_eq!(p("100%"), Some((Some(100), "working".into())));
        assert_eq!(p("250% over"), Some((None, "250% over".into())));
        assert_eq!(p("\n  \n"), None);
        assert_eq!(p("a\u{7}b"), Some((None, "ab".into())));
        assert_eq!(p(&"x".repeat(500)).unwrap().1.len(), MAX_PHASE_CHARS);
        assert!(RunProgress::new("", None, "callback").is_err());
        assert!(RunProgress::new("ok", Some(101), "callback").is_err());
    }

    #[test]
    fn enabling_clears_the_reason_and_drafts_never_fire() {
        let t0 = now();
        let mut a = Automation {
            id: Uuid::nil(),
            name: "a".into(),
            description: String::new(),
            tags: vec![],
            trigger: Trigger::Manual {},
            bundle: None,
            preset: None,
            entrypoint: None,
            env: Default::default(),
            secret_env: SecretEnv::default(),
            executor: ExecutorRef { plugin: "x".into(), config: empty_object() },
            timeout_seconds: 1,
            enabled: false,
            draft: false,
            disabled_reason: Some(DisabledReason::Failures),
            disabled_detail: Some("its last 5 runs failed".into()),
            disabled_at: Some(t0),
            enabled_at: None,
            notify: None,
            concurrency: 1,
            concurrency_policy: ConcurrencyPolicy::Queue,
            filter_errors: FilterErrors::default(),
            last_triggered_at: None,
            next_fire_at: None,
            created_at: t0,
            updated_at: t0,
        };
        assert!(a.set_state(Some(true), Some(true), t0).unwrap_err().contains("never enabled"));
        let t1 = t0 + chrono::Duration::seconds(1);
        a.set_state(Some(true), None, t1).unwrap();
        assert!(a.enabled && a.disabled_reason.is_none() && a.disabled_detail.is_none() && a.disabled_at.is_none());
        assert_eq!(a.enabled_at, Some(t1));
        // Enabling what is enabled changes nothing (the failure count keeps its start).
        a.set_state(Some(true), None, t1 + chrono::Duration::seconds(5)).unwrap();
        assert_eq!(a.enabled_at, Some(t1));
        a.set_state(Some(false), None, t1).unwrap();
        assert_eq!((a.enabled, a.disabled_reason, a.disabled_at), (false, Some(DisabledReason::Manual), Some(t1)));
        a.set_state(None, Some(true), t1).unwrap();
        assert!(a.draft && !a.enabled && a.disabled_reason.is_none());
        // Leaving draft without enabling: disabled, by hand.
        a.set_state(None, Some(false), t1).unwrap();
        assert!(!a.draft && !a.enabled && a.disabled_reason == Some(DisabledReason::Manual));
        a.set_state(None, None, t1).unwrap();
        assert!(!a.draft && !a.enabled);
    }

    #[test]
    fn tags_are_lowered_sorted_deduped_and_bounded() {
        let t = |v: &[&str]| check_tags(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(t(&["Ops", "ci", "ops", " team:web "]).unwrap(), ["ci", "ops", "team:web"]);
        assert!(t(&["a,b"]).unwrap_err().contains("letters, digits"));
        assert!(t(&[""]).is_err());
        assert!(t(&["ü"]).is_err());
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        assert!(check_tags(&many).unwrap_err().contains("at most 20"));
    }
}
