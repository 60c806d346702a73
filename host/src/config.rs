//! Command line and configuration: every setting is a flag and an
//! `AUTOMATION_*` environment variable, checked at start-up into one message.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::sandbox::{CgroupSetting, IsolationSetting, Network};

/// A WebAssembly-extensible automation host: cron, signed events and manual
/// triggers, runs carried out by sandboxed executor plugins.
#[derive(Debug, Parser)]
#[command(name = "automation-host", version, about, long_about = None)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub config: Config,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default command).
    Serve,
    /// Apply database migrations, then exit. `serve` also migrates on start
    /// unless --no-migrate is given.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Work on plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Load a component and call one export with JSON input; prints the
    /// result, logs, output, time, peak memory and fuel.
    Call(crate::plugin_cli::CallArgs),
    /// Make a new plugin from a template in a directory of its own: source,
    /// the host's WIT, a README from build to upload, a sample input.
    New(crate::plugin_new::NewArgs),
}

/// API key commands.
#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it once; only its hash is stored.
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// What the key may do: read, operate, write, plugins, admin (repeat
        /// or separate with commas).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<crate::model::Scope>,
        /// Days until the key stops working (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List the stored keys (never their secrets).
    List,
    /// Revoke a key: it is refused from its next request on.
    Revoke {
        /// The key's id (from `api-key list`).
        id: uuid::Uuid,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether the API may replace a bundled or plugins-dir plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PluginReplace {
    /// Such plugins are protected: uploads under their names are refused.
    Deny,
    /// Uploads may replace them (the upload gets none of their grants).
    Allow,
}

/// Settings. Each is a flag and an environment variable.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Database URL: `sqlite://PATH` or `postgres://...`. Unset: the SQLite
    /// file `automation.db` in the data directory, created on first start.
    #[arg(long, env = "AUTOMATION_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Directory for the SQLite database, the plugin compile cache and run
    /// workspaces. Created if missing.
    #[arg(long, env = "AUTOMATION_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "AUTOMATION_LISTEN", default_value = "127.0.0.1:8080", global = true)]
    pub listen: String,

    /// Connections served at once; past it, new connections wait.
    #[arg(long, env = "AUTOMATION_MAX_CONNECTIONS", default_value_t = 1024, global = true)]
    pub max_connections: u64,

    /// Seconds a request's headers may take to arrive (the connection is
    /// closed after that), and the longest pause while its body arrives.
    #[arg(long, env = "AUTOMATION_HEADER_TIMEOUT_SECONDS", default_value_t = 10, global = true)]
    pub header_timeout_seconds: u64,

    /// Seconds a whole request (body included) may take before it is
    /// answered 408.
    #[arg(long, env = "AUTOMATION_REQUEST_TIMEOUT_SECONDS", default_value_t = 60, global = true)]
    pub request_timeout_seconds: u64,

    /// MiB of event bodies held in memory at once, for bodies over 1 MiB
    /// (smaller ones have a pool of their own, a quarter of this): past it,
    /// big deliveries wait, then get 503 with Retry-After.
    #[arg(long, env = "AUTOMATION_EVENT_BODY_BUDGET_MB", default_value_t = 128, global = true)]
    pub event_body_budget_mb: u64,

    /// Deliveries per second accepted from each event source (`github`, or a
    /// custom source's name), with bursts of up to this many; more get 429
    /// with Retry-After before their body is read. Unset: no limit.
    #[arg(long, env = "AUTOMATION_EVENT_RATE_PER_SOURCE", global = true)]
    pub event_rate_per_source: Option<std::num::NonZeroU32>,

    /// An API key accepted as admin, for simple self-hosting (at least 16
    /// characters). Keys made with `api-key create` work alongside it.
    #[arg(long, env = "AUTOMATION_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,

    /// A file holding the admin key (instead of AUTOMATION_API_KEY, so the
    /// key is in no process environment).
    #[arg(long, env = "AUTOMATION_API_KEY_FILE", global = true, conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,

    /// The key that seals secrets at rest (source secrets, the callback-token
    /// key, secret env): 32 bytes as 64 hex digits or base64. Every replica
    /// of one database needs the same one. Default: `secret.key` in the data
    /// directory, made on first start (mode 0600).
    #[arg(long, env = "AUTOMATION_SECRET_KEY", global = true, hide_env_values = true)]
    pub secret_key: Option<String>,

    /// A file holding that key (made, 0600, if missing).
    #[arg(long, env = "AUTOMATION_SECRET_KEY_FILE", global = true, conflicts_with = "secret_key")]
    pub secret_key_file: Option<PathBuf>,

    /// Most keys each plugin may keep in its key-value store.
    #[arg(long, env = "AUTOMATION_PLUGIN_KV_MAX_KEYS", default_value_t = 10_000, global = true)]
    pub plugin_kv_max_keys: u32,

    /// Most MiB (keys and values) each plugin may keep in its key-value store.
    #[arg(long, env = "AUTOMATION_PLUGIN_KV_MAX_MB", default_value_t = 64, global = true)]
    pub plugin_kv_max_mb: u32,

    /// Largest JSON request body, in bytes.
    #[arg(long, env = "AUTOMATION_MAX_BODY_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Largest bundle upload (the gzip archive), in bytes.
    #[arg(long, env = "AUTOMATION_MAX_UPLOAD_BYTES", default_value_t = 10 * 1024 * 1024, global = true)]
    pub max_upload_bytes: usize,

    /// Largest total size of a bundle's files once unpacked, in bytes.
    #[arg(long, env = "AUTOMATION_MAX_UNPACKED_BYTES", default_value_t = 100 * 1024 * 1024, global = true)]
    pub max_unpacked_bytes: u64,

    /// Most entries (files, directories, links) a bundle may hold.
    #[arg(long, env = "AUTOMATION_MAX_UPLOAD_ENTRIES", default_value_t = 10_000, global = true)]
    pub max_upload_entries: u64,

    /// Largest plugin component accepted by `PUT /v1/plugins/{name}`, in bytes.
    #[arg(long, env = "AUTOMATION_MAX_PLUGIN_BYTES", default_value_t = 32 * 1024 * 1024, global = true)]
    pub max_plugin_bytes: usize,

    /// Directory of operator plugins (`NAME.wasm` + `NAME.toml` manifest).
    /// Default: `plugins` in the data directory.
    #[arg(long, env = "AUTOMATION_PLUGINS_DIR", global = true)]
    pub plugins_dir: Option<PathBuf>,

    /// Directory of precompiled plugins (safe to share between hosts of the
    /// same version). Default: `plugin-cache` in the data directory.
    #[arg(long, env = "AUTOMATION_PLUGIN_CACHE_DIR", global = true)]
    pub plugin_cache_dir: Option<PathBuf>,

    /// Key authenticating compile cache entries (64 hex digits, mode 0600;
    /// made on first start). Hosts sharing a cache directory share this
    /// file. Default: `<cache dir>.key`, beside the cache directory. It must
    /// not be inside the cache directory.
    #[arg(long, env = "AUTOMATION_PLUGIN_CACHE_KEY_FILE", global = true)]
    pub plugin_cache_key_file: Option<PathBuf>,

    /// Capabilities granted to plugins, deny by default:
    /// `name=cap,cap;name2@sha256:HEX=http:host1|host2`. Capabilities: `kv`,
    /// `sandbox`, `http:HOSTS`. A bare name grants bundled and plugins-dir
    /// plugins of that name; an uploaded component is granted only by an
    /// entry naming its digest (or by a grant recorded through the API).
    /// Entries replace the bundled defaults (`local-sandbox=sandbox;
    /// agent-server=http:127.0.0.1|localhost`).
    #[arg(long, env = "AUTOMATION_PLUGIN_GRANTS", default_value = "", global = true)]
    pub plugin_grants: String,

    /// Whether `PUT /v1/plugins/{name}` may replace a bundled or plugins-dir
    /// plugin: `deny` (409 `plugin_protected`) or `allow`.
    #[arg(long, env = "AUTOMATION_PLUGIN_REPLACE", value_enum, default_value_t = PluginReplace::Deny, global = true)]
    pub plugin_replace: PluginReplace,

    /// Secret for GitHub webhook signatures (`X-Hub-Signature-256`). Unset:
    /// `POST /v1/events/github` answers 404.
    #[arg(long, env = "AUTOMATION_GITHUB_WEBHOOK_SECRET", global = true, hide_env_values = true)]
    pub github_webhook_secret: Option<String>,

    /// Largest event delivery, in bytes (GitHub sends up to 25 MB).
    #[arg(long, env = "AUTOMATION_MAX_EVENT_BYTES", default_value_t = 25 * 1024 * 1024, global = true)]
    pub max_event_bytes: usize,

    /// Hours deliveries are kept; a redelivery within this window is
    /// recognised as a duplicate (at least 72).
    #[arg(long, env = "AUTOMATION_DELIVERY_RETENTION_HOURS", default_value_t = 168, global = true)]
    pub delivery_retention_hours: u64,

    /// Days final runs (with their output and log) and cron slots are kept;
    /// 0 keeps them forever. Each automation's newest
    /// `AUTOMATION_RUN_RETENTION_KEEP` stay whatever their age.
    #[arg(long, env = "AUTOMATION_RUN_RETENTION_DAYS", default_value_t = 30, global = true)]
    pub run_retention_days: u32,

    /// Newest runs (and cron slots) of each automation kept past the retention.
    #[arg(long, env = "AUTOMATION_RUN_RETENTION_KEEP", default_value_t = 100, global = true)]
    pub run_retention_keep: u32,

    /// Hours a kept run workspace (`keep_workspace`) stays on disk once its
    /// run is final; 0 keeps them forever.
    #[arg(long, env = "AUTOMATION_WORKSPACE_RETENTION_HOURS", default_value_t = 168, global = true)]
    pub workspace_retention_hours: u64,

    /// Seconds between two retention sweeps.
    #[arg(long, env = "AUTOMATION_RETENTION_SWEEP_SECONDS", default_value_t = 3600, global = true)]
    pub retention_sweep_seconds: u64,

    /// This host's name in run leases (default: a random id per process).
    #[arg(long, env = "AUTOMATION_HOST_ID", global = true)]
    pub host_id: Option<String>,

    /// Do not carry out runs on this host (an API-only replica; runs stay
    /// `pending` until a host that dispatches claims them).
    #[arg(long, env = "AUTOMATION_NO_DISPATCH", global = true)]
    pub no_dispatch: bool,

    /// Most runs this host carries out at once (others wait, `pending`).
    #[arg(long, env = "AUTOMATION_MAX_CONCURRENT_RUNS", default_value_t = 32, global = true)]
    pub max_concurrent_runs: usize,

    /// Seconds a run's lease lasts without a heartbeat; a run whose host
    /// stopped heartbeating this long is taken over by another host.
    #[arg(long, env = "AUTOMATION_LEASE_SECONDS", default_value_t = 30, global = true)]
    pub lease_seconds: u64,

    /// Seconds late a cron slot may be and still fire as on time; later, it is
    /// a misfire and the automation's misfire policy decides.
    #[arg(long, env = "AUTOMATION_MISFIRE_GRACE_SECONDS", default_value_t = 60, global = true)]
    pub misfire_grace_seconds: u64,

    /// Most missed slots a `run_all` automation fires after downtime.
    #[arg(long, env = "AUTOMATION_RUN_ALL_CAP", default_value_t = 100, global = true)]
    pub run_all_cap: usize,

    /// Runs of an automation that must fail in a row (timed out counts as
    /// failed) for the host to disable it (`disabled_reason: failures`); 0
    /// never disables.
    #[arg(long, env = "AUTOMATION_FAILURE_DISABLE_THRESHOLD", default_value_t = 5, global = true)]
    pub failure_disable_threshold: u32,

    /// Attempts to deliver a run notification before it is given up
    /// (retried after 1 s, doubling, at most an hour apart).
    #[arg(long, env = "AUTOMATION_NOTIFY_ATTEMPTS", default_value_t = 10, global = true)]
    pub notify_attempts: u32,

    /// Internal addresses run notifications may reach, comma-separated,
    /// each optionally with a port (`127.0.0.1:9000`); by default only
    /// public addresses are reached.
    #[arg(long, env = "AUTOMATION_NOTIFY_ALLOWED_HOSTS", global = true)]
    pub notify_allowed_hosts: Option<String>,

    /// Executor start attempts before a transient failure fails the run.
    #[arg(long, env = "AUTOMATION_START_ATTEMPTS", default_value_t = 5, global = true)]
    pub start_attempts: u32,

    /// Base URL runs use to reach this host (completion callback). Default:
    /// `http://` + the address it listens on.
    #[arg(long, env = "AUTOMATION_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// Bytes of stdout and of stderr kept per run.
    #[arg(long, env = "AUTOMATION_RUN_OUTPUT_BYTES", default_value_t = 256 * 1024, global = true)]
    pub run_output_bytes: usize,

    /// Database connections (Postgres pool size; SQLite reader count, at most 8).
    #[arg(long, env = "AUTOMATION_DB_CONNECTIONS", default_value_t = 10, global = true)]
    pub db_connections: u32,

    /// Largest size the SQLite database may grow to, MiB (unset: no cap but
    /// the disk). Past it, writes fail as on a full disk: deliveries get 503,
    /// `/ready` says why, and nothing acknowledged is lost.
    #[arg(long, env = "AUTOMATION_SQLITE_MAX_SIZE_MB", global = true)]
    pub sqlite_max_size_mb: Option<u64>,

    /// Do not apply migrations at start-up (run `migrate` separately).
    #[arg(long, env = "AUTOMATION_NO_MIGRATE", global = true)]
    pub no_migrate: bool,

    /// The executor plugin used by automations that name none.
    #[arg(long, env = "AUTOMATION_DEFAULT_EXECUTOR", default_value = "local-sandbox", global = true)]
    pub default_executor: String,

    /// Log filter, in `tracing` syntax (`info`, `debug,sqlx=warn`, ...).
    #[arg(long, env = "AUTOMATION_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format.
    #[arg(long, env = "AUTOMATION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Seconds to let in-flight requests and local runs finish after SIGTERM
    /// or Ctrl-C; local runs still going then are cancelled.
    #[arg(long, env = "AUTOMATION_SHUTDOWN_GRACE_SECONDS", default_value_t = 10, global = true)]
    pub shutdown_grace_seconds: u64,

    /// How the local sandbox confines runs: `auto` (the strongest level this
    /// machine allows: `full`, else `restricted`; runs are refused if neither
    /// works), `full` (namespaces, Landlock, seccomp, or refuse), `restricted`
    /// (Landlock and seccomp without namespaces, or refuse), `none`
    /// (unconfined; every run's status says so).
    #[arg(long, env = "AUTOMATION_SANDBOX_ISOLATION", value_enum, default_value_t = IsolationSetting::Auto, global = true)]
    pub sandbox_isolation: IsolationSetting,

    /// Network of sandboxed runs: `none` (an empty network namespace) or
    /// `host` (the host's network, loopback and local services included).
    #[arg(long, env = "AUTOMATION_SANDBOX_NETWORK", value_enum, default_value_t = Network::None, global = true)]
    pub sandbox_network: Network,

    /// Let an automation choose its sandbox network (`executor.config.network`).
    #[arg(long, env = "AUTOMATION_SANDBOX_NETWORK_PER_AUTOMATION", global = true)]
    pub sandbox_network_per_automation: bool,

    /// Memory of one sandboxed run, MiB.
    #[arg(long, env = "AUTOMATION_SANDBOX_MEMORY_MB", default_value_t = 1024, global = true)]
    pub sandbox_memory_mb: u64,

    /// Scheduling niceness of the host's background threads (matching,
    /// driving runs, schedules), 0-19: acknowledging deliveries and the API
    /// keep niceness 0 and come first when the CPU is short.
    #[arg(long, env = "AUTOMATION_BACKGROUND_NICE", default_value_t = 10,
          value_parser = clap::value_parser!(i32).range(0..=19), global = true)]
    pub background_nice: i32,

    /// Milliseconds a delivery may wait to be matched before matching
    /// catches up at the acknowledgements' priority: a burst is stored
    /// first and matched in the background, while a stream the background
    /// cannot keep up with slows the acknowledgements a little instead of
    /// building a backlog without bound. 0 never catches up (matching always
    /// yields). 250: with 500 a steady stream kept a backlog of about half a
    /// second of deliveries, which alone cost 0.05-0.08 of the matched rate
    /// in the 8 s benchmark window; 250 halved it and cost the mixed case
    /// nothing measurable (BENCHMARKS.md, "2026-12-08 (third)").
    #[arg(long, env = "AUTOMATION_MATCH_CATCH_UP_MS", default_value_t = 250, global = true)]
    pub match_catch_up_ms: u64,

    /// Scheduling niceness of sandboxed runs, 0-19 (higher yields more CPU
    /// to the host: acknowledgements come first when the CPU is short).
    #[arg(long, env = "AUTOMATION_SANDBOX_NICE", default_value_t = crate::sandbox::DEFAULT_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19), global = true)]
    pub sandbox_nice: i32,

    /// Processes and threads of one sandboxed run.
    #[arg(long, env = "AUTOMATION_SANDBOX_PROCESSES", default_value_t = 256, global = true)]
    pub sandbox_processes: u64,

    /// Open files per sandboxed process.
    #[arg(long, env = "AUTOMATION_SANDBOX_OPEN_FILES", default_value_t = 1024, global = true)]
    pub sandbox_open_files: u64,

    /// Largest file a sandboxed process may write, MiB.
    #[arg(long, env = "AUTOMATION_SANDBOX_FILE_SIZE_MB", default_value_t = 1024, global = true)]
    pub sandbox_file_size_mb: u64,

    /// CPU seconds per sandboxed process (on top of the run's wall-clock timeout).
    #[arg(long, env = "AUTOMATION_SANDBOX_CPU_SECONDS", default_value_t = 3600, global = true)]
    pub sandbox_cpu_seconds: u64,

    /// Disk a run's workspace may use, MiB; a run past it is stopped.
    #[arg(long, env = "AUTOMATION_SANDBOX_WORKSPACE_MB", default_value_t = 1024, global = true)]
    pub sandbox_workspace_mb: u64,

    /// Size of a sandboxed run's private /tmp (and /dev/shm), MiB.
    #[arg(long, env = "AUTOMATION_SANDBOX_TMP_MB", default_value_t = 256, global = true)]
    pub sandbox_tmp_mb: u64,

    /// Extra host paths sandboxed runs may read and execute (`:`-separated,
    /// absolute), such as `/opt/tools`.
    #[arg(long, env = "AUTOMATION_SANDBOX_READ_ONLY_PATHS", value_delimiter = ':', global = true)]
    pub sandbox_read_only_paths: Vec<PathBuf>,

    /// Host user id sandboxed runs become when the host runs as root.
    #[arg(long, env = "AUTOMATION_SANDBOX_UID", default_value_t = 65534, global = true)]
    pub sandbox_uid: u32,

    /// Host group id sandboxed runs become when the host runs as root.
    #[arg(long, env = "AUTOMATION_SANDBOX_GID", default_value_t = 65534, global = true)]
    pub sandbox_gid: u32,

    /// Cgroups for runs' memory and process limits: `auto` (cgroup v2
    /// delegated to the host, else v1 where writable), `off`, or a cgroup v2
    /// directory that delegates `memory` and `pids`.
    #[arg(long, env = "AUTOMATION_SANDBOX_CGROUP", default_value = "auto", global = true)]
    pub sandbox_cgroup: String,
}

impl Config {
    /// The database URL in effect: the configured one, or the SQLite file in
    /// the data directory.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => crate::store::Store::default_sqlite_url(&self.data_dir),
        }
    }

    /// The key-value quota of each plugin.
    pub fn kv_quota(&self) -> crate::model::KvQuota {
        crate::model::KvQuota {
            max_keys: i64::from(self.plugin_kv_max_keys),
            max_bytes: i64::from(self.plugin_kv_max_mb) << 20,
        }
    }

    /// Where the secret key comes from.
    pub fn secret_key_source(&self) -> crate::secrets::KeySource {
        match (&self.secret_key, &self.secret_key_file) {
            (Some(v), _) => crate::secrets::KeySource::Value(v.clone()),
            (None, Some(path)) => crate::secrets::KeySource::File { path: path.clone(), create: true },
            (None, None) => crate::secrets::KeySource::File { path: self.data_dir.join("secret.key"), create: true },
        }
    }

    /// The compile cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.plugin_cache_dir.clone().unwrap_or_else(|| self.data_dir.join("plugin-cache"))
    }

    /// Checks every setting and reports all problems in one message.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Some(url) = &self.database_url {
            let ok = ["sqlite:", "postgres://", "postgresql://"].iter().any(|p| url.starts_with(p));
            if !ok {
                problems
                    .push(format!("AUTOMATION_DATABASE_URL must start with sqlite:// or postgres:// (got {url:?})"));
            }
        }
        if let Some(key) = &self.plugin_cache_key_file {
            let cache: PathBuf = self.cache_dir().components().collect();
            let key: PathBuf = key.components().collect();
            if key.starts_with(&cache) {
                problems.push(format!(
                    "AUTOMATION_PLUGIN_CACHE_KEY_FILE ({}) must not be inside the cache directory ({}): whoever can \
                     plant a cache entry could then sign it",
                    key.display(),
                    cache.display()
                ));
            }
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "AUTOMATION_LISTEN must be an address with a port, such as 127.0.0.1:8080 (got {:?})",
                self.listen
            ));
        }
        if let Some(key) = &self.secret_key
            && crate::secrets::SecretKey::parse(key, "AUTOMATION_SECRET_KEY").is_err()
        {
            problems.push(
                "AUTOMATION_SECRET_KEY must be 32 bytes, as 64 hex digits or base64 (try `openssl rand -hex 32`)"
                    .to_owned(),
            );
        }
        if let Some(key) = &self.api_key
            && key.trim().len() < 16
        {
            problems.push("AUTOMATION_API_KEY must be at least 16 characters (try `openssl rand -hex 24`)".to_owned());
        }
        for (name, value) in [
            ("AUTOMATION_MAX_BODY_BYTES", self.max_body_bytes as u64),
            ("AUTOMATION_MAX_UPLOAD_BYTES", self.max_upload_bytes as u64),
            ("AUTOMATION_MAX_UNPACKED_BYTES", self.max_unpacked_bytes),
            ("AUTOMATION_MAX_UPLOAD_ENTRIES", self.max_upload_entries),
            ("AUTOMATION_DB_CONNECTIONS", u64::from(self.db_connections)),
            ("AUTOMATION_MAX_PLUGIN_BYTES", self.max_plugin_bytes as u64),
            ("AUTOMATION_MAX_CONNECTIONS", self.max_connections),
            ("AUTOMATION_HEADER_TIMEOUT_SECONDS", self.header_timeout_seconds),
            ("AUTOMATION_REQUEST_TIMEOUT_SECONDS", self.request_timeout_seconds),
            ("AUTOMATION_EVENT_BODY_BUDGET_MB", self.event_body_budget_mb),
            ("AUTOMATION_RUN_OUTPUT_BYTES", self.run_output_bytes as u64),
            ("AUTOMATION_MAX_CONCURRENT_RUNS", self.max_concurrent_runs as u64),
            ("AUTOMATION_LEASE_SECONDS", self.lease_seconds),
            ("AUTOMATION_START_ATTEMPTS", u64::from(self.start_attempts)),
            ("AUTOMATION_RETENTION_SWEEP_SECONDS", self.retention_sweep_seconds),
            ("AUTOMATION_NOTIFY_ATTEMPTS", u64::from(self.notify_attempts)),
            ("AUTOMATION_SANDBOX_MEMORY_MB", self.sandbox_memory_mb),
            ("AUTOMATION_SANDBOX_PROCESSES", self.sandbox_processes),
            ("AUTOMATION_SANDBOX_OPEN_FILES", self.sandbox_open_files),
            ("AUTOMATION_SANDBOX_FILE_SIZE_MB", self.sandbox_file_size_mb),
            ("AUTOMATION_SANDBOX_CPU_SECONDS", self.sandbox_cpu_seconds),
            ("AUTOMATION_SANDBOX_WORKSPACE_MB", self.sandbox_workspace_mb),
            ("AUTOMATION_SANDBOX_TMP_MB", self.sandbox_tmp_mb),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
        if let Some(hosts) = &self.notify_allowed_hosts
            && let Err(e) = crate::notify::parse_allowed(hosts)
        {
            problems.push(e);
        }
        if self.delivery_retention_hours < 72 {
            problems.push("AUTOMATION_DELIVERY_RETENTION_HOURS must be at least 72 (the dedup window)".to_owned());
        }
        if self.github_webhook_secret.as_deref().is_some_and(|s| s.trim().is_empty()) {
            problems.push("AUTOMATION_GITHUB_WEBHOOK_SECRET is set but empty".to_owned());
        }
        if let Err(e) = crate::plugins::manifest::Grants::parse(&self.plugin_grants) {
            problems.push(format!("AUTOMATION_PLUGIN_GRANTS: {e}"));
        }
        for p in &self.sandbox_read_only_paths {
            if !p.is_absolute() {
                problems
                    .push(format!("AUTOMATION_SANDBOX_READ_ONLY_PATHS must hold absolute paths (got {})", p.display()));
            }
        }
        if let CgroupSetting::Dir(d) = self.sandbox_cgroup()
            && !d.is_absolute()
        {
            problems.push(format!(
                "AUTOMATION_SANDBOX_CGROUP must be auto, off or an absolute cgroup v2 directory (got {})",
                d.display()
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            problems.push(format!("AUTOMATION_LOG is not a valid filter: {:?}", self.log));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("invalid configuration:\n  - {}", problems.join("\n  - ")))
        }
    }

    /// The plugins directory in effect.
    pub fn effective_plugins_dir(&self) -> PathBuf {
        self.plugins_dir.clone().unwrap_or_else(|| self.data_dir.join("plugins"))
    }

    /// The operator's grants over the bundled defaults (call after `validate`).
    pub fn grants(&self) -> crate::plugins::manifest::Grants {
        let overrides = crate::plugins::manifest::Grants::parse(&self.plugin_grants).unwrap_or_default();
        crate::plugins::manifest::Grants::bundled_defaults().with_overrides(overrides)
    }

    /// The cgroup setting.
    pub fn sandbox_cgroup(&self) -> CgroupSetting {
        match self.sandbox_cgroup.trim() {
            "" | "auto" => CgroupSetting::Auto,
            "off" => CgroupSetting::Off,
            dir => CgroupSetting::Dir(PathBuf::from(dir)),
        }
    }

    /// The local sandbox's settings.
    pub fn sandbox_settings(&self) -> crate::sandbox::Settings {
        let mb = |v: u64| v.saturating_mul(1 << 20);
        crate::sandbox::Settings {
            isolation: self.sandbox_isolation,
            network: self.sandbox_network,
            network_per_automation: self.sandbox_network_per_automation,
            limits: crate::sandbox::Limits {
                memory_bytes: mb(self.sandbox_memory_mb),
                processes: self.sandbox_processes,
                open_files: self.sandbox_open_files,
                file_size_bytes: mb(self.sandbox_file_size_mb),
                cpu_seconds: self.sandbox_cpu_seconds,
                workspace_bytes: mb(self.sandbox_workspace_mb),
                tmp_bytes: mb(self.sandbox_tmp_mb),
                nice: self.sandbox_nice,
            },
            read_only: self.sandbox_read_only_paths.clone(),
            identity: crate::sandbox::Identity { uid: self.sandbox_uid, gid: self.sandbox_gid },
            cgroup: self.sandbox_cgroup(),
            output_limit: self.run_output_bytes,
            archive_limits: crate::archive::Limits {
                max_unpacked_bytes: self.max_unpacked_bytes,
                max_entries: self.max_upload_entries,
            },
        }
    }

    /// The listen address (call after `validate`).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("automation-host").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_serve_sqlite_in_data_dir() {
        let cli = parse(&[]);
        assert!(cli.command.is_none());
        cli.config.validate().unwrap();
        assert_eq!(cli.config.effective_database_url(), "sqlite://./data/automation.db");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let cli = parse(&[
            "--database-url",
            "mysql://x",
            "--listen",
            "nowhere",
            "--api-key",
            "short",
            "--max-body-bytes",
            "0",
        ]);
        let err = cli.config.validate().unwrap_err();
        for needle in
            ["AUTOMATION_DATABASE_URL", "AUTOMATION_LISTEN", "AUTOMATION_API_KEY", "AUTOMATION_MAX_BODY_BYTES"]
        {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }
}
