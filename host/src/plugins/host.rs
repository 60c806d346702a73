//! The per-call host state and the host side of every WIT import.
//!
//! A fresh [`HostState`] (and `Store`) serves each call: whatever a plugin
//! did to its memory, tables or WASI resources is gone after the call, and a
//! trap poisons only a store nobody will use again.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::bindings::{clock, kv, log, sandbox, types};
use super::manifest::{Capability, Grant};
use crate::sandbox::{CommandSpec, Network, ProcessOutput, ProcessState, Sandbox, SandboxError};
use crate::store::Store;

/// Most log lines kept per call.
const MAX_LOG_LINES: usize = 1000;
/// Most log bytes kept per call.
const MAX_LOG_BYTES: usize = 256 << 10;
/// Outbound HTTP requests give up after this long.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Services shared by every call.
pub struct Services {
    /// The database, for `kv` (absent in the `plugin call` command).
    pub store: Option<Store>,
    /// The local sandbox.
    pub sandbox: Arc<Sandbox>,
    /// The async runtime host functions block on.
    pub runtime: tokio::runtime::Handle,
    /// How much of the key-value store each plugin may hold.
    pub kv_quota: crate::model::KvQuota,
}

/// One log line a plugin wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The message.
    pub message: String,
}

/// Caps a store's memory and records what the plugin asked for.
pub struct Limiter {
    /// Most bytes all of the store's linear memories together may hold (a
    /// component may have several: the limit is the store's, not each one's).
    pub memory_limit: usize,
    /// The largest total reached.
    pub peak_memory: usize,
    /// Set when a growth was refused: the total it asked for.
    pub refused: Option<usize>,
    /// The bytes the store's memories hold now.
    pub total: usize,
}

impl Limiter {
    /// A limiter allowing `memory_limit` bytes across the store's memories.
    pub fn new(memory_limit: usize) -> Limiter {
        Limiter { memory_limit, peak_memory: 0, refused: None, total: 0 }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let after = self.total.saturating_sub(current).saturating_add(desired);
        if after > self.memory_limit {
            self.refused = Some(after);
            return Ok(false);
        }
        self.total = after;
        self.peak_memory = self.peak_memory.max(after);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        8
    }
}

/// Everything one call's `Store` holds.
pub struct HostState {
    plugin: Arc<str>,
    grant: Arc<Grant>,
    run_id: Option<Uuid>,
    /// The network the run's automation asks its sandbox for
    /// (`executor.config.network`), if any.
    run_network: Option<Network>,
    services: Arc<Services>,
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: AllowList,
    /// The memory limiter (public so the call can report its figures).
    pub limiter: Limiter,
    /// Log lines so far.
    pub logs: Vec<LogLine>,
    log_bytes: usize,
    /// Captured standard output.
    pub stdout: CappedOutput,
    /// Captured standard error.
    pub stderr: CappedOutput,
}

impl HostState {
    /// State for one call of `plugin`, optionally on behalf of a run.
    pub fn new(
        plugin: Arc<str>,
        grant: Arc<Grant>,
        run_id: Option<Uuid>,
        services: Arc<Services>,
        memory_limit: usize,
        output_limit: usize,
    ) -> HostState {
        let stdout = CappedOutput::new(output_limit);
        let stderr = CappedOutput::new(output_limit);
        // No arguments, environment, preopened directories, stdin, sockets
        // or name lookup: every WASI 0.2 interface is linked (see
        // `imports`), and these are the ones that must do nothing. Said
        // explicitly, not left to wasmtime-wasi's defaults.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let hooks =
            AllowList { hosts: grant.allowed_hosts.clone(), enabled: grant.capabilities.contains(&Capability::Http) };
        HostState {
            plugin,
            grant,
            run_id,
            run_network: None,
            services,
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks,
            limiter: Limiter::new(memory_limit),
            logs: Vec::new(),
            log_bytes: 0,
            stdout,
            stderr,
        }
    }

    /// Notes the network the run's executor configuration asks for: its
    /// `network` field (`none` or `host`), which the sandbox grants only as
    /// the operator allows.
    pub fn with_run_config(mut self, config: &str) -> HostState {
        self.run_network = serde_json::from_str::<serde_json::Value>(config)
            .ok()
            .and_then(|v| v.get("network").and_then(|n| n.as_str()).and_then(Network::parse));
        self
    }

    /// Readies a kept store for its next call: the log and output caps and
    /// the memory-refusal flag are per call.
    pub fn begin_call(&mut self) {
        self.logs.clear();
        self.log_bytes = 0;
        self.limiter.refused = None;
        self.stdout.take();
        self.stderr.take();
    }

    fn has(&self, cap: Capability) -> bool {
        self.grant.capabilities.contains(&cap)
    }

    fn denied(&self, cap: Capability) -> types::Error {
        types::Error::Denied(format!("plugin {} is not granted `{}`", self.plugin, cap.as_str()))
    }

    fn sandbox_run(&self) -> Result<Uuid, types::Error> {
        if !self.has(Capability::Sandbox) {
            return Err(self.denied(Capability::Sandbox));
        }
        self.run_id.ok_or_else(|| types::Error::Denied("the sandbox is only available while carrying out a run".into()))
    }

    fn kv_store(&self) -> Result<&Store, types::Error> {
        if !self.has(Capability::Kv) {
            return Err(self.denied(Capability::Kv));
        }
        self.services
            .store
            .as_ref()
            .ok_or_else(|| types::Error::Unavailable("no key-value store in this context".into()))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        match level {
            "error" => tracing::error!(plugin = %self.plugin, run.id = ?self.run_id, "{message}"),
            "warn" => tracing::warn!(plugin = %self.plugin, run.id = ?self.run_id, "{message}"),
            "info" => tracing::info!(plugin = %self.plugin, run.id = ?self.run_id, "{message}"),
            _ => tracing::debug!(plugin = %self.plugin, run.id = ?self.run_id, "{message}"),
        }
        if self.logs.len() < MAX_LOG_LINES && self.log_bytes + message.len() <= MAX_LOG_BYTES {
            self.log_bytes += message.len();
            self.logs.push(LogLine { level, message });
        }
        Ok(())
    }
}

impl clock::Host for HostState {
    fn now(&mut self) -> wasmtime::Result<types::Datetime> {
        let now = chrono::Utc::now();
        Ok(types::Datetime { seconds: now.timestamp(), nanoseconds: now.timestamp_subsec_nanos() })
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, types::Error>> {
        let store = match self.kv_store() {
            Ok(s) => s.clone(),
            Err(e) => return Ok(Err(e)),
        };
        let plugin = self.plugin.clone();
        Ok(self.services.runtime.block_on(store.kv_get(&plugin, &key)).map_err(kv_error))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), types::Error>> {
        let store = match self.kv_store() {
            Ok(s) => s.clone(),
            Err(e) => return Ok(Err(e)),
        };
        if key.is_empty() || key.len() > 255 {
            return Ok(Err(types::Error::InvalidInput("keys are 1 to 255 bytes".into())));
        }
        if value.len() > 64 << 10 {
            return Ok(Err(types::Error::InvalidInput("values are at most 64 KiB".into())));
        }
        let plugin = self.plugin.clone();
        let quota = self.services.kv_quota;
        Ok(match self.services.runtime.block_on(store.kv_set(&plugin, &key, &value, quota)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refusal)) => Err(types::Error::Denied(refusal)),
            Err(e) => Err(kv_error(e)),
        })
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, types::Error>> {
        let store = match self.kv_store() {
            Ok(s) => s.clone(),
            Err(e) => return Ok(Err(e)),
        };
        let plugin = self.plugin.clone();
        Ok(self.services.runtime.block_on(store.kv_delete(&plugin, &key)).map_err(kv_error))
    }

    fn list_keys(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, types::Error>> {
        let store = match self.kv_store() {
            Ok(s) => s.clone(),
            Err(e) => return Ok(Err(e)),
        };
        let plugin = self.plugin.clone();
        Ok(self.services.runtime.block_on(store.kv_list(&plugin, &prefix, 1000)).map_err(kv_error))
    }
}

fn kv_error(e: crate::store::Error) -> types::Error {
    tracing::warn!(error = %e, "plugin key-value store failed");
    types::Error::Unavailable("the key-value store is unavailable".into())
}

fn sandbox_error(e: SandboxError) -> types::Error {
    match e {
        SandboxError::Invalid(m) => types::Error::InvalidInput(m),
        SandboxError::NotFound(m) => types::Error::NotFound(m),
        SandboxError::Denied(m) => types::Error::Denied(m),
        SandboxError::Io(m) => types::Error::Internal(m),
    }
}

fn process_output(o: ProcessOutput) -> sandbox::ProcessOutput {
    sandbox::ProcessOutput {
        state: match o.state {
            ProcessState::Running => sandbox::ProcessState::Running,
            ProcessState::Exited(c) => sandbox::ProcessState::Exited(c),
            ProcessState::Signaled(s) => sandbox::ProcessState::Signaled(s),
            ProcessState::TimedOut => sandbox::ProcessState::TimedOut,
        },
        stdout: o.stdout,
        stderr: o.stderr,
        truncated: o.truncated,
    }
}

impl sandbox::Host for HostState {
    fn create_workspace(&mut self) -> wasmtime::Result<Result<String, types::Error>> {
        Ok(self.sandbox_run().and_then(|run| self.services.sandbox.create_workspace(run).map_err(sandbox_error)))
    }

    fn unpack(&mut self, bundle: types::Bundle) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.sandbox_run().and_then(|run| {
            let files: Vec<_> = bundle.files.into_iter().map(|f| (f.path, f.mode, f.contents)).collect();
            self.services.sandbox.unpack(run, bundle.archive.as_deref(), &files).map_err(sandbox_error)
        }))
    }

    fn spawn(&mut self, cmd: sandbox::Command) -> wasmtime::Result<Result<String, types::Error>> {
        Ok(self.sandbox_run().and_then(|run| {
            let spec = CommandSpec {
                program: cmd.program,
                args: cmd.args,
                env: cmd.env,
                cwd: cmd.cwd,
                time_limit: Duration::from_millis(cmd.time_limit_ms),
                network: self.run_network,
            };
            self.services.sandbox.spawn(run, spec).map_err(sandbox_error)
        }))
    }

    fn status(&mut self, process: String) -> wasmtime::Result<Result<sandbox::ProcessOutput, types::Error>> {
        Ok(self
            .sandbox_run()
            .and_then(|run| self.services.sandbox.status(run, &process).map(process_output).map_err(sandbox_error)))
    }

    fn wait(
        &mut self,
        process: String,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<sandbox::ProcessOutput, types::Error>> {
        // Waits are bounded so one executor call cannot hold a thread for long.
        let timeout = Duration::from_millis(timeout_ms.min(10_000));
        Ok(self.sandbox_run().and_then(|run| {
            self.services.sandbox.wait(run, &process, timeout).map(process_output).map_err(sandbox_error)
        }))
    }

    fn kill(&mut self, process: String) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.sandbox_run().and_then(|run| self.services.sandbox.kill(run, &process).map_err(sandbox_error)))
    }

    fn remove_workspace(&mut self) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.sandbox_run().and_then(|run| self.services.sandbox.remove_workspace(run).map_err(sandbox_error)))
    }
}

/// The `wasi:http` hooks: requests go out only to granted hosts.
pub struct AllowList {
    hosts: BTreeSet<String>,
    enabled: bool,
}

use super::outbound::IoFuture;

impl WasiHttpHooks for AllowList {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> Box<
        dyn Future<Output = Result<(http::Response<wasmtime_wasi_http::WasiBody>, IoFuture), wasmtime_wasi_http::Error>>
            + Send,
    > {
        let uri = request.uri();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri.host().map(str::to_ascii_lowercase);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let entry = if self.enabled {
            host.as_deref().and_then(|h| super::http_policy::permitting(&self.hosts, https, h, port))
        } else {
            None
        };
        let Some(entry) = entry else {
            tracing::warn!(host = ?host, port, https, "plugin HTTP request to a host it was not granted: denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        let _ = options; // the host's deadline applies, whatever the plugin asks
        Box::new(super::outbound::send(request, entry, HTTP_TIMEOUT))
    }
}

/// A stdout/stderr sink that keeps the first `cap` bytes and drops the rest,
/// so a chatty plugin loses output instead of trapping.
#[derive(Clone)]
pub struct CappedOutput {
    buf: Arc<Mutex<(Vec<u8>, bool)>>,
    cap: usize,
}

impl CappedOutput {
    /// A sink keeping up to `cap` bytes.
    pub fn new(cap: usize) -> CappedOutput {
        CappedOutput { buf: Arc::new(Mutex::new((Vec::new(), false))), cap }
    }

    fn push(&self, data: &[u8]) {
        let mut g = self.buf.lock().expect("output lock");
        let n = self.cap.saturating_sub(g.0.len()).min(data.len());
        g.0.extend_from_slice(&data[..n]);
        if n < data.len() {
            g.1 = true;
        }
    }

    /// What was written, emptying the sink (its cap starts again).
    pub fn take(&self) -> (String, bool) {
        let mut g = self.buf.lock().expect("output lock");
        let (bytes, truncated) = std::mem::take(&mut *g);
        (String::from_utf8_lossy(&bytes).into_owned(), truncated)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_holds_across_all_of_a_stores_memories() {
        let mut l = Limiter::new(100);
        assert!(l.memory_growing(0, 60, None).unwrap(), "first memory");
        // A second memory may not take the store past the limit...
        assert!(!l.memory_growing(0, 60, None).unwrap());
        assert_eq!(l.refused, Some(120));
        assert!(l.memory_growing(0, 40, None).unwrap());
        // ...nor may the first grow once the second holds the rest.
        assert!(!l.memory_growing(60, 61, None).unwrap());
        assert_eq!((l.total, l.peak_memory), (100, 100));
    }

    #[test]
    fn kv_quota_counts_keys_and_bytes() {
        let q = crate::model::KvQuota { max_keys: 2, max_bytes: 100 };
        assert!(q.allows(0, 0, 100).is_ok());
        assert!(q.allows(1, 50, 50).is_ok());
        assert!(q.allows(2, 0, 1).unwrap_err().contains("2 keys of 2"));
        assert!(q.allows(1, 60, 41).unwrap_err().contains("bytes of 100"));
    }
}
