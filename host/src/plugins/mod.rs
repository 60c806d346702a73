//! The plugin runtime: trigger filters, presets and executors are
//! WebAssembly components behind the WIT interfaces in `wit/`.
//!
//! - `engine`: the one `Engine` (pooling allocator, epoch deadlines) and the
//!   on-disk compile cache;
//! - `bindings`: host bindings generated from the WIT worlds;
//! - `host`: per-call state and the host side of every import;
//! - `inspect`: a component's outline (imports, exports, core instances)
//!   read from its bytes before it is compiled;
//! - `imports`: which imports are live, denied or refused ("provide, then
//!   deny");
//! - `manifest`: what a plugin asks for and what the operator grants;
//! - `registry`: loaded plugins by name, replaced atomically.
//!
//! WIT types stop here: callers use the plain Rust types in this module
//! (`Bundle`, `RunContext`, `ExecStatus`, `GuestError`).

pub mod bindings;
pub mod bundled;
pub mod engine;
pub mod host;
pub mod http_policy;
pub mod imports;
pub mod inspect;
pub mod manifest;
mod outbound;
pub mod registry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;
use wasmtime::component::{Linker, types::ComponentItem};
use wasmtime::{Engine, Store, Trap};

use self::bindings::types;
use self::engine::{CacheOutcome, CompileCache};
use self::host::{HostState, LogLine, Services};
use self::imports::ImportStatus;
use self::manifest::{Grant, Grants, Kind, Manifest};
use crate::model::RunOutput;

pub use registry::Registry;

/// The fuel a metered store starts with: effectively unlimited (deadlines
/// come from epochs); what is left tells what the call used.
const FUEL: u64 = u64::MAX / 2;

/// Most calls one kept filter instance serves before it is replaced by a
/// fresh one, so whatever a filter accumulates is bounded in time too.
const WARM_CALLS: u32 = 10_000;

/// Most idle instances kept per filter plugin. The matcher calls one at a
/// time; the rest serve `POST /v1/filters/evaluate` and validation.
const WARM_PER_PLUGIN: usize = 2;

/// Most instances kept across all filter plugins: kept instances hold slots
/// of the pooling allocator, which every other call needs too.
const WARM_BUDGET: usize = 32;

/// A filter instance kept between calls, with its store.
struct WarmFilter {
    store: Store<HostState>,
    instance: bindings::filter::FilterPlugin,
    calls: u32,
    /// Its share of [`WARM_BUDGET`]; `None` until it is first kept.
    slot: Option<WarmSlot>,
}

/// One unit of [`WARM_BUDGET`], given back when dropped.
struct WarmSlot(Arc<std::sync::atomic::AtomicUsize>);

impl WarmSlot {
    fn take(budget: &Arc<std::sync::atomic::AtomicUsize>) -> Option<WarmSlot> {
        use std::sync::atomic::Ordering::SeqCst;
        budget.fetch_update(SeqCst, SeqCst, |used| (used < WARM_BUDGET).then_some(used + 1)).ok()?;
        Some(WarmSlot(budget.clone()))
    }
}

impl Drop for WarmSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A call's epoch deadline in ticks from now (a tick more than the limit, so
/// a call is never cut short by the tick already under way).
fn deadline_ticks(limits: CallLimits) -> u64 {
    (limits.deadline.as_millis() / engine::EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

/// A `matches` call's limits: a filter's, plus 5 ms per expression.
fn filter_matches_limits(expressions: &[String]) -> CallLimits {
    let mut limits = CallLimits::for_kind(Kind::Filter);
    limits.deadline += Duration::from_millis(5) * expressions.len().min(2000) as u32;
    limits
}

/// Limits for one kind of call.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Most bytes a linear memory may grow to.
    pub memory: usize,
    /// Wall-clock deadline, enforced by epochs.
    pub deadline: Duration,
    /// Bytes of stdout and of stderr kept.
    pub output: usize,
}

impl CallLimits {
    /// The defaults for a kind of plugin.
    pub fn for_kind(kind: Kind) -> CallLimits {
        match kind {
            Kind::Filter => CallLimits { memory: 64 << 20, deadline: Duration::from_secs(1), output: 16 << 10 },
            Kind::Preset => CallLimits { memory: 64 << 20, deadline: Duration::from_secs(5), output: 64 << 10 },
            Kind::Executor => CallLimits { memory: 128 << 20, deadline: Duration::from_secs(30), output: 64 << 10 },
        }
    }
}

/// Why a plugin could not be loaded. The message says what to fix.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("plugin {name}: {reason}")]
pub struct LoadError {
    /// The plugin's name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

/// An expected failure a plugin reported (a WIT `error` value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct GuestError {
    /// `invalid_input`, `denied`, `unavailable`, `not_found` or `internal`.
    pub kind: &'static str,
    /// The plugin's message.
    pub message: String,
}

impl GuestError {
    /// True for failures worth retrying later.
    pub fn is_transient(&self) -> bool {
        self.kind == "unavailable"
    }
}

impl From<types::Error> for GuestError {
    fn from(e: types::Error) -> GuestError {
        let (kind, message) = match e {
            types::Error::InvalidInput(m) => ("invalid_input", m),
            types::Error::Denied(m) => ("denied", m),
            types::Error::Unavailable(m) => ("unavailable", m),
            types::Error::NotFound(m) => ("not_found", m),
            types::Error::Internal(m) => ("internal", m),
        };
        GuestError { kind, message }
    }
}

/// Why a call failed without the plugin returning a value: it trapped, ran
/// out of time or memory, or returned an error value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// Ran past its deadline and was stopped.
    #[error("plugin {plugin} ran past its {limit_ms} ms deadline and was stopped")]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The deadline in milliseconds.
        limit_ms: u128,
    },
    /// Tried to grow its memory past the limit, then failed.
    #[error("plugin {plugin} exceeded its memory limit: asked for {asked} bytes, the limit is {limit}")]
    Memory {
        /// The plugin.
        plugin: String,
        /// The size it asked for.
        asked: usize,
        /// The limit.
        limit: usize,
    },
    /// Trapped (a panic, `unreachable`, a bad memory access).
    #[error("plugin {plugin} crashed: {message}")]
    Trap {
        /// The plugin.
        plugin: String,
        /// The trap, and what the plugin wrote to stderr.
        message: String,
    },
    /// Returned a WIT `error`.
    #[error("plugin {plugin} returned an error: {error}")]
    Guest {
        /// The plugin.
        plugin: String,
        /// The error.
        error: GuestError,
    },
    /// Returned something its interface rules out (a filter answering a
    /// different number of verdicts than it was given expressions).
    #[error("plugin {plugin} broke its interface: {message}")]
    Contract {
        /// The plugin.
        plugin: String,
        /// What it got wrong.
        message: String,
    },
}

impl CallError {
    /// True for failures worth retrying (the plugin said `unavailable`).
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Guest { error, .. } if error.is_transient())
    }
}

/// What a call did besides its result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallReport {
    /// Log lines.
    pub logs: Vec<LogLine>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Wall time, including instantiation.
    pub elapsed: Duration,
    /// Largest linear memory reached, in bytes.
    pub peak_memory: usize,
    /// Fuel consumed, when the engine meters fuel.
    pub fuel: Option<u64>,
    /// Whether the call ran on an instance kept from an earlier call
    /// (filters only; see `Runtime::filter_call`).
    pub reused: bool,
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

/// A loaded plugin, ready to call.
pub struct Plugin {
    /// Its manifest.
    pub manifest: Manifest,
    /// What it is actually granted.
    pub grant: Arc<Grant>,
    /// Where the grant came from.
    pub grant_origins: Vec<manifest::GrantOrigin>,
    /// The grant recorded through the API for this component, if any.
    pub recorded_grant: Option<Grant>,
    /// SHA-256 of its component.
    pub sha256: String,
    /// Size of its component in bytes.
    pub size: usize,
    /// Where it came from.
    pub source: Source,
    /// What it says about itself (presets and executors).
    pub description: Option<Description>,
    /// How long loading took, and whether the compile cache served it.
    pub load: (Duration, CacheOutcome),
    /// Its imports, as the component declares them, each live or denied.
    pub imports: Vec<ImportStatus>,
    name: Arc<str>,
    pre: Pre,
    /// Idle filter instances (see `Runtime::filter_call`); dropped with the
    /// plugin, so a replaced plugin's instances go with it.
    warm: std::sync::Mutex<Vec<WarmFilter>>,
}

enum Pre {
    Filter(bindings::filter::FilterPluginPre<HostState>),
    Preset(bindings::preset::PresetPluginPre<HostState>),
    Executor(bindings::executor::ExecutorPluginPre<HostState>),
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's kind.
    pub fn kind(&self) -> Kind {
        self.manifest.kind
    }
}

/// The engine, the linker and the services host functions use.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: CompileCache,
    services: Arc<Services>,
    grants: Grants,
    fuel: bool,
    /// Filter instances kept, out of [`WARM_BUDGET`].
    warm_budget: Arc<std::sync::atomic::AtomicUsize>,
}

impl Runtime {
    /// Builds the runtime: engine, epoch ticker, linker with every import.
    /// The compile cache is authenticated with the key in `cache_key_file`
    /// (default: beside `cache_dir`), made on first use.
    pub fn new(
        cache_dir: std::path::PathBuf,
        cache_key_file: Option<&std::path::Path>,
        services: Arc<Services>,
        grants: Grants,
        fuel: bool,
    ) -> anyhow::Result<Runtime> {
        let engine = engine::build(fuel, 256).map_err(|e| anyhow::anyhow!("cannot configure wasmtime: {e:#}"))?;
        engine::spawn_ticker(&engine);
        let linker = build_linker(&engine).map_err(|e| anyhow::anyhow!("cannot build the plugin linker: {e:#}"))?;
        let key = engine::open_key(&cache_dir, cache_key_file);
        let cache = CompileCache::new(&engine, cache_dir, key);
        Ok(Runtime { engine, linker, cache, services, grants, fuel, warm_budget: Default::default() })
    }

    /// A runtime outside the server (the `plugin call` command, tests and
    /// benchmarks): no database (so no `kv`), a sandbox under `work_dir`, a
    /// compile cache in `cache_dir`, the bundled default grants plus `grants`.
    pub fn standalone(
        work_dir: &std::path::Path,
        cache_dir: &std::path::Path,
        grants: Grants,
        fuel: bool,
    ) -> anyhow::Result<Runtime> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("a plugin runtime needs a tokio runtime"))?;
        let services = Arc::new(Services {
            store: None,
            sandbox: Arc::new(crate::sandbox::Sandbox::new(
                work_dir.join("workspaces"),
                crate::sandbox::Settings::new(
                    256 << 10,
                    crate::archive::Limits { max_unpacked_bytes: 100 << 20, max_entries: 10_000 },
                ),
                handle.clone(),
            )),
            runtime: handle,
            kv_quota: crate::model::KvQuota::default(),
        });
        Runtime::new(cache_dir.to_owned(), None, services, Grants::bundled_defaults().with_overrides(grants), fuel)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The operator's grants.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Loads, checks and prepares a component. Nothing is instantiated
    /// except to ask presets and executors to describe themselves.
    pub fn load(
        &self,
        manifest: Manifest,
        wasm: &[u8],
        source: Source,
        recorded: Option<&Grant>,
    ) -> Result<Plugin, LoadError> {
        let started = Instant::now();
        let name = manifest.name.clone();
        let fail = |reason: String| LoadError { name: name.clone(), reason };
        manifest.check().map_err(fail)?;
        let sha256 = digest(wasm);
        let (grant, grant_origins) = self.grants.effective(&manifest, source, &sha256, recorded);
        // Everything that can refuse the component runs before the compile,
        // which takes seconds for a language runtime's component.
        let inventory = inspect::inventory(wasm, engine::MAX_CORE_INSTANCES_PER_COMPONENT)
            .map_err(|e| fail(e.to_string()))?;
        let export = exported_world(&inventory.exports, &manifest).map_err(fail)?;
        let imports = imports::check(&inventory.imports, &manifest, &grant, &sha256).map_err(fail)?;
        let (component, outcome) = self.cache.load(&self.engine, wasm).map_err(|e| {
            let e = format!("{e:#}");
            fail(
                inspect::explain_pool_limit(&e, engine::MAX_CORE_INSTANCES_PER_COMPONENT)
                    .unwrap_or_else(|| format!("not a valid WebAssembly component: {e}")),
            )
        })?;
        let ty = component.component_type();
        if let Some((_, ext)) = ty.exports(&self.engine).find(|(n, _)| *n == export)
            && !matches!(ext.ty, ComponentItem::ComponentInstance(_))
        {
            return Err(fail(format!("`{export}` is not an interface instance")));
        }
        let instance_pre =
            self.linker.instantiate_pre(&component).map_err(|e| fail(format!("cannot be linked: {e:#}")))?;
        let pre = match manifest.kind {
            Kind::Filter => bindings::filter::FilterPluginPre::new(instance_pre).map(Pre::Filter),
            Kind::Preset => bindings::preset::PresetPluginPre::new(instance_pre).map(Pre::Preset),
            Kind::Executor => bindings::executor::ExecutorPluginPre::new(instance_pre).map(Pre::Executor),
        }
        .map_err(|e| fail(format!("does not match the {} world: {e:#}", manifest.kind.world())))?;
        let mut plugin = Plugin {
            sha256,
            size: wasm.len(),
            grant: Arc::new(grant),
            grant_origins,
            recorded_grant: recorded.cloned(),
            source,
            description: None,
            load: (Duration::ZERO, outcome),
            imports,
            name: Arc::from(name.as_str()),
            pre,
            warm: Default::default(),
            manifest,
        };
        if plugin.kind() != Kind::Filter {
            let (d, _) = self.describe(&plugin).map_err(|e| fail(format!("describe() failed: {e}")))?;
            plugin.description = Some(d);
        }
        plugin.load.0 = started.elapsed();
        Ok(plugin)
    }

    /// A fresh store for one call: its host state, memory limiter, an epoch
    /// deadline `ticks` away, and (when metering) a full fuel tank.
    fn new_store(&self, plugin: &Plugin, run: Option<&RunContext>, limits: CallLimits, ticks: u64) -> Store<HostState> {
        let mut state = HostState::new(
            plugin.name.clone(),
            plugin.grant.clone(),
            run.map(|r| r.run_id),
            self.services.clone(),
            limits.memory,
            limits.output,
        );
        if let Some(r) = run {
            state = state.with_run_config(&r.config);
        }
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks);
        if self.fuel {
            let _ = store.set_fuel(FUEL);
        }
        store
    }

    /// Runs one call on a fresh store. `f` instantiates and calls.
    fn call<R>(
        &self,
        plugin: &Plugin,
        run: Option<&RunContext>,
        limits: CallLimits,
        f: impl FnOnce(&mut Store<HostState>, &Pre) -> wasmtime::Result<R>,
    ) -> (Result<R, CallError>, CallReport) {
        let started = Instant::now();
        let mut store = self.new_store(plugin, run, limits, deadline_ticks(limits));
        let result = f(&mut store, &plugin.pre);
        self.finish(plugin, limits, started, result, &mut store)
    }

    /// Runs one filter call on a kept instance of `plugin` if one is idle,
    /// else on a new one, and keeps the instance afterwards unless the call
    /// trapped, ran out of time or memory, or the instance has served
    /// [`WARM_CALLS`] calls or grown past half its memory limit.
    ///
    /// Filters are pure functions of their input, and instantiating is cheap
    /// (4 µs), but what a filter builds on first use is not: the jmespath
    /// plugin spends most of a fresh call compiling expressions it compiled
    /// for the previous event (see BENCHMARKS.md). A kept instance keeps that
    /// work. A trap poisons a store, so a store that trapped is dropped.
    fn filter_call<R>(
        &self,
        plugin: &Plugin,
        limits: CallLimits,
        f: impl FnOnce(&mut Store<HostState>, &bindings::filter::FilterPlugin) -> wasmtime::Result<R>,
    ) -> (Result<R, CallError>, CallReport) {
        let Pre::Filter(pre) = &plugin.pre else {
            return self.call(plugin, None, limits, |_, _| wasmtime::bail!("{} is not a filter", plugin.name()));
        };
        let started = Instant::now();
        let ticks = deadline_ticks(limits);
        let kept = plugin.warm.lock().expect("warm filters").pop();
        let mut warm = match kept {
            Some(mut warm) => {
                warm.store.data_mut().begin_call();
                warm.store.set_epoch_deadline(ticks);
                if self.fuel {
                    let _ = warm.store.set_fuel(FUEL);
                }
                warm
            }
            None => {
                let mut store = self.new_store(plugin, None, limits, ticks);
                match pre.instantiate(&mut store) {
                    Ok(instance) => WarmFilter { store, instance, calls: 0, slot: None },
                    Err(e) => return self.finish(plugin, limits, started, Err(e), &mut store),
                }
            }
        };
        let result = f(&mut warm.store, &warm.instance);
        let (result, mut report) = self.finish(plugin, limits, started, result, &mut warm.store);
        report.reused = warm.calls > 0;
        warm.calls += 1;
        let healthy =
            result.is_ok() && warm.calls < WARM_CALLS && warm.store.data().limiter.peak_memory <= limits.memory / 2;
        if healthy {
            if warm.slot.is_none() {
                warm.slot = WarmSlot::take(&self.warm_budget);
            }
            let mut kept = plugin.warm.lock().expect("warm filters");
            if warm.slot.is_some() && kept.len() < WARM_PER_PLUGIN {
                kept.push(warm);
            }
        }
        (result, report)
    }

    /// Collects a call's logs, output and figures from its store, and names
    /// its failure.
    fn finish<R>(
        &self,
        plugin: &Plugin,
        limits: CallLimits,
        started: Instant,
        result: wasmtime::Result<R>,
        store: &mut Store<HostState>,
    ) -> (Result<R, CallError>, CallReport) {
        let fuel = if self.fuel { store.get_fuel().ok().map(|left| FUEL - left) } else { None };
        let state = store.data_mut();
        let (stdout, _) = state.stdout.take();
        let (stderr, _) = state.stderr.take();
        let report = CallReport {
            logs: std::mem::take(&mut state.logs),
            stdout,
            stderr: stderr.clone(),
            elapsed: started.elapsed(),
            peak_memory: state.limiter.peak_memory,
            fuel,
            reused: false,
        };
        let result = result.map_err(|e| {
            let name = plugin.name().to_owned();
            if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                CallError::Timeout { plugin: name, limit_ms: limits.deadline.as_millis() }
            } else if let Some(asked) = state.limiter.refused {
                CallError::Memory { plugin: name, asked, limit: limits.memory }
            } else {
                let tail: String =
                    stderr.trim().chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
                let message = if tail.is_empty() { format!("{e:#}") } else { format!("{e:#}; stderr: {tail}") };
                CallError::Trap { plugin: name, message }
            }
        });
        (result, report)
    }

    fn guest<T>(plugin: &Plugin, r: Result<T, types::Error>) -> Result<T, CallError> {
        r.map_err(|e| CallError::Guest { plugin: plugin.name().to_owned(), error: e.into() })
    }

    /// Asks a preset or executor to describe itself.
    pub fn describe(&self, plugin: &Plugin) -> Result<(Description, CallReport), CallError> {
        let (r, report) = self.call(plugin, None, CallLimits::for_kind(plugin.kind()), |store, pre| match pre {
            Pre::Preset(p) => p.instantiate(&mut *store)?.automation_plugin_preset().call_describe(&mut *store),
            Pre::Executor(p) => p.instantiate(&mut *store)?.automation_plugin_executor().call_describe(&mut *store),
            Pre::Filter(_) => wasmtime::bail!("filters have no describe()"),
        });
        let info = r?;
        let config_schema = info.config_schema.as_deref().and_then(|s| serde_json::from_str(s).ok());
        Ok((
            Description { name: info.name, version: info.version, description: info.description, config_schema },
            report,
        ))
    }

    /// Checks a filter expression's syntax.
    pub fn filter_validate(&self, plugin: &Plugin, expression: &str) -> (Result<(), CallError>, CallReport) {
        let (r, report) = self.filter_call(plugin, CallLimits::for_kind(Kind::Filter), |store, filter| {
            filter.automation_plugin_filter().call_validate(store, expression)
        });
        (r.and_then(|r| Self::guest(plugin, r)), report)
    }

    /// Evaluates expressions against one event in one call. The outer error
    /// is the call failing as a whole; inner errors are per expression.
    pub fn filter_matches(
        &self,
        plugin: &Plugin,
        event: &types::Event,
        expressions: &[String],
    ) -> (Result<Vec<Result<bool, GuestError>>, CallError>, CallReport) {
        let (r, report) = self.filter_call(plugin, filter_matches_limits(expressions), |store, filter| {
            filter.automation_plugin_filter().call_matches(store, event, expressions)
        });
        (r.and_then(|v| verdicts(plugin, v, expressions.len())), report)
    }

    /// [`Runtime::filter_matches`] on a new instance, dropped afterwards:
    /// a filter's first call, before anything it builds is kept. The
    /// `plugin call` command uses it, so its memory and fuel figures are
    /// those of one call.
    pub fn filter_matches_fresh(
        &self,
        plugin: &Plugin,
        event: &types::Event,
        expressions: &[String],
    ) -> (Result<Vec<Result<bool, GuestError>>, CallError>, CallReport) {
        let (r, report) = self.call(plugin, None, filter_matches_limits(expressions), |store, pre| match pre {
            Pre::Filter(p) => {
                p.instantiate(&mut *store)?.automation_plugin_filter().call_matches(&mut *store, event, expressions)
            }
            _ => wasmtime::bail!("{} is not a filter", plugin.name()),
        });
        (r.and_then(|v| verdicts(plugin, v, expressions.len())), report)
    }

    /// Renders a preset's bundle.
    pub fn preset_render(&self, plugin: &Plugin, config: &str) -> (Result<Bundle, CallError>, CallReport) {
        let (r, report) = self.call(plugin, None, CallLimits::for_kind(Kind::Preset), |store, pre| match pre {
            Pre::Preset(p) => p.instantiate(&mut *store)?.automation_plugin_preset().call_render(&mut *store, config),
            _ => wasmtime::bail!("{} is not a preset", plugin.name()),
        });
        (r.and_then(|r| Self::guest(plugin, r)).map(bundle_from_wit), report)
    }

    /// Starts a run on an executor; returns its handle.
    pub fn executor_start(
        &self,
        plugin: &Plugin,
        ctx: &RunContext,
        bundle: &Bundle,
    ) -> (Result<String, CallError>, CallReport) {
        let (wctx, wbundle) = (context_to_wit(ctx), bundle_to_wit(bundle));
        let (r, report) = self.call(plugin, Some(ctx), CallLimits::for_kind(Kind::Executor), |store, pre| match pre {
            Pre::Executor(p) => {
                p.instantiate(&mut *store)?.automation_plugin_executor().call_start(&mut *store, &wctx, &wbundle)
            }
            _ => wasmtime::bail!("{} is not an executor", plugin.name()),
        });
        (r.and_then(|r| Self::guest(plugin, r)), report)
    }

    /// Asks an executor where a run is.
    pub fn executor_poll(
        &self,
        plugin: &Plugin,
        ctx: &RunContext,
        handle: &str,
    ) -> (Result<ExecStatus, CallError>, CallReport) {
        let wctx = context_to_wit(ctx);
        let (r, report) = self.call(plugin, Some(ctx), CallLimits::for_kind(Kind::Executor), |store, pre| match pre {
            Pre::Executor(p) => {
                p.instantiate(&mut *store)?.automation_plugin_executor().call_poll(&mut *store, &wctx, handle)
            }
            _ => wasmtime::bail!("{} is not an executor", plugin.name()),
        });
        (r.and_then(|r| Self::guest(plugin, r)).map(status_from_wit), report)
    }

    /// Asks an executor to stop a run.
    pub fn executor_cancel(
        &self,
        plugin: &Plugin,
        ctx: &RunContext,
        handle: &str,
    ) -> (Result<(), CallError>, CallReport) {
        let wctx = context_to_wit(ctx);
        let (r, report) = self.call(plugin, Some(ctx), CallLimits::for_kind(Kind::Executor), |store, pre| match pre {
            Pre::Executor(p) => {
                p.instantiate(&mut *store)?.automation_plugin_executor().call_cancel(&mut *store, &wctx, handle)
            }
            _ => wasmtime::bail!("{} is not an executor", plugin.name()),
        });
        (r.and_then(|r| Self::guest(plugin, r)), report)
    }

    /// The local sandbox (for cleanup at shutdown).
    pub fn sandbox(&self) -> &crate::sandbox::Sandbox {
        &self.services.sandbox
    }
}

/// Benchmark hooks: the bare costs `host/benches` measures. Not an API.
#[doc(hidden)]
impl Runtime {
    fn bench_store(&self, plugin: &Plugin) -> Store<HostState> {
        self.new_store(plugin, None, CallLimits::for_kind(plugin.kind()), u64::MAX / 2)
    }

    /// Total time of `n` instantiations from the `InstancePre`; each store
    /// (with its WASI context) is built outside the timed part.
    pub fn bench_instantiate(&self, plugin: &Plugin, n: u64) -> wasmtime::Result<Duration> {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            let mut store = self.bench_store(plugin);
            let started = Instant::now();
            match &plugin.pre {
                Pre::Filter(p) => {
                    let _instance = p.instantiate(&mut store)?;
                }
                Pre::Preset(p) => {
                    let _instance = p.instantiate(&mut store)?;
                }
                Pre::Executor(p) => {
                    let _instance = p.instantiate(&mut store)?;
                }
            }
            total += started.elapsed();
        }
        Ok(total)
    }

    /// Total time of `n` calls of a filter's `validate(expr)` on one warm
    /// instance: the host-to-guest call cost plus whatever `validate` does.
    pub fn bench_warm_validate(&self, plugin: &Plugin, expr: &str, n: u64) -> wasmtime::Result<Duration> {
        let mut store = self.bench_store(plugin);
        let Pre::Filter(pre) = &plugin.pre else { wasmtime::bail!("not a filter") };
        let instance = pre.instantiate(&mut store)?;
        let filter = instance.automation_plugin_filter();
        let started = Instant::now();
        for _ in 0..n {
            let _ = filter.call_validate(&mut store, expr)?;
        }
        Ok(started.elapsed())
    }
}

/// The export a plugin of `manifest.kind` must have, found among the
/// component's exports; refuses the wrong world or a newer WIT.
fn exported_world(exports: &[String], manifest: &Manifest) -> Result<String, String> {
    let want = manifest.kind.export();
    let Some(export) = exports.iter().find(|n| n.split('@').next() == Some(want)) else {
        let ours: Vec<&String> = exports.iter().filter(|e| e.starts_with("automation:plugin/")).collect();
        return Err(format!(
            "wrong world: a {} plugin must export `{want}` (world `{}`), but this component exports {}",
            manifest.kind.as_str(),
            manifest.kind.world(),
            if ours.is_empty() { format!("{exports:?}") } else { format!("{ours:?}") }
        ));
    };
    if let Some((_, version)) = export.split_once('@') {
        manifest::check_wit_version(version)?;
    }
    Ok(export.clone())
}

fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    use wasmtime::component::HasSelf;
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    bindings::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    bindings::clock::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    bindings::kv::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    bindings::sandbox::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Builds a WIT event.
pub fn event_to_wit(
    id: Uuid,
    source: &str,
    key: &str,
    payload: &str,
    received_at: chrono::DateTime<chrono::Utc>,
) -> types::Event {
    types::Event {
        id: id.to_string(),
        source: source.to_owned(),
        key: key.to_owned(),
        payload: payload.to_owned(),
        received_at: datetime_to_wit(received_at),
    }
}

fn datetime_to_wit(t: chrono::DateTime<chrono::Utc>) -> types::Datetime {
    types::Datetime { seconds: t.timestamp(), nanoseconds: t.timestamp_subsec_nanos() }
}

fn bundle_from_wit(b: types::Bundle) -> Bundle {
    Bundle {
        archive: b.archive,
        files: b.files.into_iter().map(|f| (f.path, f.mode, f.contents)).collect(),
        entrypoint: b.entrypoint,
        env: b.env,
    }
}

fn bundle_to_wit(b: &Bundle) -> types::Bundle {
    types::Bundle {
        archive: b.archive.clone(),
        files: b
            .files
            .iter()
            .map(|(path, mode, contents)| types::File { path: path.clone(), mode: *mode, contents: contents.clone() })
            .collect(),
        entrypoint: b.entrypoint.clone(),
        env: b.env.clone(),
    }
}

fn context_to_wit(c: &RunContext) -> types::RunContext {
    types::RunContext {
        run_id: c.run_id.to_string(),
        automation_id: c.automation_id.to_string(),
        automation_name: c.automation_name.clone(),
        attempt: c.attempt,
        trigger: types::TriggerInfo {
            kind: c.trigger_kind.clone(),
            payload: c.trigger_payload.clone(),
            event_key: c.event_key.clone(),
            scheduled_for: c.scheduled_for.map(datetime_to_wit),
        },
        config: c.config.clone(),
        timeout_ms: c.timeout.as_millis() as u64,
        callback_url: c.callback_url.clone(),
        callback_token: c.callback_token.clone(),
    }
}

fn output_from_wit(o: types::RunOutput) -> RunOutput {
    RunOutput { exit_code: o.exit_code, stdout: o.stdout, stderr: o.stderr, truncated: o.truncated }
}

fn status_from_wit(s: types::RunStatus) -> ExecStatus {
    match s {
        types::RunStatus::Running => ExecStatus::Running,
        types::RunStatus::Succeeded(o) => ExecStatus::Succeeded(output_from_wit(o)),
        types::RunStatus::Failed((why, o)) => ExecStatus::Failed(why, output_from_wit(o)),
        types::RunStatus::TimedOut(o) => ExecStatus::TimedOut(output_from_wit(o)),
        types::RunStatus::Cancelled(o) => ExecStatus::Cancelled(output_from_wit(o)),
    }
}

/// The SHA-256 of a component, lowercase hex: the identity grants name.
pub fn digest(wasm: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(wasm))
}

/// A filter's answer to `matches`, checked: one verdict per expression, in
/// order, or the whole call fails.
fn verdicts(
    plugin: &Plugin,
    answer: Vec<Result<bool, types::Error>>,
    expressions: usize,
) -> Result<Vec<Result<bool, GuestError>>, CallError> {
    if answer.len() != expressions {
        return Err(CallError::Contract {
            plugin: plugin.name().to_owned(),
            message: format!("`matches` returned {} verdicts for {expressions} expressions", answer.len()),
        });
    }
    Ok(answer.into_iter().map(|x| x.map_err(GuestError::from)).collect())
}
