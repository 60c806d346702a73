//! The plugin runtime: trigger filters, presets and executors are
//! WebAssembly components behind the WIT interfaces in `wit/`.
//!
//! - `engine`: the one `Engine` (pooling allocator, epoch deadlines) and the
//!   on-disk compile cache;
//! - `bindings`: host bindings generated from the WIT worlds;
//! - `host`: per-call state and the host side of every import;
//! - `adapt`: guests of an older WIT release, served by the current bindings;
//! - `inspect`: a component's outline (imports, exports, core instances)
//!   read from its bytes before it is compiled;
//! - `imports`: which imports are live, denied or refused ("provide, then
//!   deny");
//! - `manifest`: what a plugin asks for and what the operator grants;
//! - `registry`: loaded plugins by name, replaced atomically.
//!
//! - `domain`, `errors`, `limits`: the plain types callers use (`Bundle`,
//!   `RunContext`, `FilterEvent`, `ExecStatus`, `CallError`, `CallLimits`);
//! - `convert`: WIT types to and from those, the only place they meet;
//! - `warm`: filter instances kept between calls.
//!
//! WIT types stop here: callers never see a `bindings` type.

mod adapt;
pub mod bindings;
pub mod bundled;
mod convert;
mod domain;
pub mod engine;
mod errors;
pub mod host;
pub mod http_policy;
pub mod imports;
pub mod inspect;
mod limits;
pub mod manifest;
mod outbound;
pub mod registry;
mod warm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, types::ComponentItem};
use wasmtime::{Engine, Store, Trap};

use self::bindings::types;
use self::engine::{CacheOutcome, CompileCache};
use self::host::{HostState, Services};
use self::imports::ImportStatus;
use self::manifest::{Grant, Grants, Kind, Manifest};

pub use domain::{Bundle, Description, ExecStatus, FilterEvent, RunContext, Source, SourceOutcome, SourceRequest};
pub use errors::{CallError, CallReport, GuestError, GuestErrorKind, LoadError};
pub use limits::CallLimits;
pub use registry::Registry;

use self::convert::{
    bundle_from_wit, bundle_to_wit, context_to_wit, event_to_wit, source_outcome_from_wit, source_request_to_wit,
    status_from_wit, verdicts,
};
use self::limits::{deadline_ticks, filter_matches_limits};
pub(crate) use self::warm::WARM_PER_PLUGIN;
use self::warm::{WARM_CALLS, WarmFilter, WarmSlot};

/// The fuel a metered store starts with: effectively unlimited (deadlines
/// come from epochs); what is left tells what the call used.
const FUEL: u64 = u64::MAX / 2;

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
    /// The `automation:plugin` release the component was built against
    /// (older ones are adapted, see `adapt`).
    pub wit_version: String,
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
    Source(bindings::source::SourcePluginPre<HostState>),
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
        let inventory =
            inspect::inventory(wasm, engine::MAX_CORE_INSTANCES_PER_COMPONENT).map_err(|e| fail(e.to_string()))?;
        let export = exported_world(&inventory.exports, &manifest).map_err(fail)?;
        let imports = imports::check(&inventory.imports, &manifest, &grant, &sha256).map_err(fail)?;
        let wit_version = adapt::wit_version(wasm, &inventory).map_err(fail)?.unwrap_or_default().to_owned();
        let wasm = adapt::to_current(wasm, &inventory).map_err(fail)?;
        let (component, outcome) = self.cache.load(&self.engine, &wasm).map_err(|e| {
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
            Kind::Source => bindings::source::SourcePluginPre::new(instance_pre).map(Pre::Source),
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
            wit_version,
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
            Pre::Source(p) => p.instantiate(&mut *store)?.automation_plugin_source().call_describe(&mut *store),
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
        event: &FilterEvent,
        expressions: &[String],
    ) -> (Result<Vec<Result<bool, GuestError>>, CallError>, CallReport) {
        let event = event_to_wit(event);
        let (r, report) = self.filter_call(plugin, filter_matches_limits(expressions), |store, filter| {
            filter.automation_plugin_filter().call_matches(store, &event, expressions)
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
        event: &FilterEvent,
        expressions: &[String],
    ) -> (Result<Vec<Result<bool, GuestError>>, CallError>, CallReport) {
        let event = event_to_wit(event);
        let (r, report) = self.call(plugin, None, filter_matches_limits(expressions), |store, pre| match pre {
            Pre::Filter(p) => {
                p.instantiate(&mut *store)?.automation_plugin_filter().call_matches(&mut *store, &event, expressions)
            }
            _ => wasmtime::bail!("{} is not a filter", plugin.name()),
        });
        (r.and_then(|v| verdicts(plugin, v, expressions.len())), report)
    }

    /// Has a source plugin verify and read a webhook request with the
    /// source's secret, on a fresh instance.
    pub fn source_verify(
        &self,
        plugin: &Plugin,
        request: SourceRequest,
        secret: &str,
    ) -> (Result<SourceOutcome, CallError>, CallReport) {
        let request = source_request_to_wit(request);
        let (r, report) = self.call(plugin, None, CallLimits::for_kind(Kind::Source), |store, pre| match pre {
            Pre::Source(p) => {
                p.instantiate(&mut *store)?.automation_plugin_source().call_verify(&mut *store, &request, secret)
            }
            _ => wasmtime::bail!("{} is not a source plugin", plugin.name()),
        });
        (r.and_then(|r| Self::guest(plugin, r)).map(source_outcome_from_wit), report)
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
                Pre::Source(p) => {
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
        if manifest.kind == Kind::Source && manifest::OLDER_WIT_VERSIONS.contains(&version) {
            return Err(format!("source plugins came with automation:plugin@0.2.0; this one claims @{version}"));
        }
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

/// The SHA-256 of a component, lowercase hex: the identity grants name.
pub fn digest(wasm: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(wasm))
}
