//! automation-host: keeps automations and turns each firing into a run that
//! an executor plugin carries out.
//!
//! How the parts fit:
//!
//! - `api/`: the REST API (axum). Requests are validated there, then go to
//!   the store. One error type turns every failure into `{code, detail}`.
//! - `store/`: the only module that speaks SQL, over SQLite (the default) or
//!   Postgres (for teams and several replicas).
//! - `scheduler/`: cron maths (pure) and, later, the loop that turns due slots
//!   into runs.
//! - `sandbox`: the local sandbox: per-run workspaces and processes confined
//!   by namespaces, Landlock, seccomp and limits (a launcher re-executes this
//!   binary in a helper mode).
//! - `archive`: checks bundle archives before they are accepted.
//! - `auth`: API key generation and hashing.
//!
//! Flow: request → `api` → `store`; a firing (cron slot, event, dispatch)
//! → a `pending` run in the store → dispatch → executor plugin.

pub mod api;
pub mod archive;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod dispatch;
pub mod events;
pub mod group_commit;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod plugin_cli;
pub mod plugin_new;
pub mod plugins;
pub mod retention;
pub mod sandbox;
pub mod scheduler;
pub mod secrets;
pub mod store;
pub mod supervise;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::store::Store;

/// Opens the configured database (creating the data directory and the SQLite
/// file if needed) and applies migrations unless told not to.
pub async fn open_store(config: &Config, migrate: bool) -> anyhow::Result<Store> {
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    }
    let url = config.effective_database_url();
    let store = Store::connect_with(&url, config.db_connections, config.sqlite_max_size_mb.map(|mb| mb << 20))
        .await
        .with_context(|| format!("cannot open the database {}", redact(&url)))?;
    if migrate {
        store.migrate().await.context("cannot apply database migrations")?;
    }
    let key = secrets::SecretKey::load(&config.secret_key_source()).context("cannot load the secret key")?;
    let store = store.with_secret_key(key);
    let report = store.seal_at_rest().await.context("cannot seal secrets at rest")?;
    if report.sealed > 0 {
        tracing::info!(sealed = report.sealed, "secrets stored in plain text by an older version are now sealed");
    }
    Ok(store)
}

/// Builds the plugin runtime and loads every plugin: bundled, from the
/// plugins directory, and uploaded (from the database).
pub async fn start_plugins(
    config: &Config,
    store: Option<&Store>,
    background: tokio::runtime::Handle,
) -> anyhow::Result<Arc<plugins::Registry>> {
    let started = std::time::Instant::now();
    let sandbox = Arc::new(sandbox::Sandbox::new(
        config.data_dir.join("workspaces"),
        config.sandbox_settings(),
        background.clone(),
    ));
    // Probe the machine's isolation once (it starts a few sandboxed `true`
    // processes) and end whatever an earlier process of this host left.
    let probe = {
        let sandbox = sandbox.clone();
        tokio::task::spawn_blocking(move || {
            let summary = sandbox.isolation().summary();
            let leftovers = sandbox.sweep_leftovers();
            (summary, leftovers, sandbox.isolation().level.is_none())
        })
    };
    let services = Arc::new(plugins::host::Services {
        store: store.cloned(),
        sandbox,
        runtime: background,
        kv_quota: config.kv_quota(),
    });
    let cache_dir = config.cache_dir();
    let runtime = Arc::new(plugins::Runtime::new(
        cache_dir,
        config.plugin_cache_key_file.as_deref(),
        services,
        config.grants(),
        false,
    )?);
    let registry = Arc::new(plugins::Registry::new(runtime));
    registry.load_all(Some(&config.effective_plugins_dir()), store).await?;
    let (summary, _, refused) = probe.await.context("the sandbox probe failed")?;
    if refused {
        tracing::error!(
            "{summary}; local-sandbox runs will fail until this is fixed or AUTOMATION_SANDBOX_ISOLATION=none"
        );
    } else {
        tracing::info!("{summary}");
    }
    let loaded = registry.list();
    let cached = loaded.iter().filter(|p| p.load.1 == plugins::engine::CacheOutcome::Hit).count();
    tracing::info!(
        plugins = loaded.len(),
        from_cache = cached,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "plugins loaded: {}",
        loaded.iter().map(|p| format!("{} ({})", p.name(), p.kind().as_str())).collect::<Vec<_>>().join(", ")
    );
    Ok(registry)
}

/// Hides the password in a database URL for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &creds[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Serves the API on `listener` until `shutdown` completes, then lets
/// in-flight requests finish (up to the configured grace period).
pub async fn serve(
    config: Arc<Config>,
    store: Store,
    plugins: Arc<plugins::Registry>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    background: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    // The acknowledgement path (the API and the delivery commits) runs on
    // this runtime; everything else on `background`, whose threads yield
    // the CPU to it.
    let sup = supervise::Supervisor::new(tokio_util::sync::CancellationToken::new(), metrics.clone());
    let bg = sup.on(background);
    let secret = store
        .secret_setting_or_create("callback_secret", || {
            use rand::RngCore;
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            hex::encode(bytes)
        })
        .await
        .context("cannot read the host secret")?;
    let local = listener.local_addr()?;
    let host_id = config.host_id.clone().unwrap_or_else(default_host_id);
    let settings = dispatch::Settings {
        host_id: host_id.clone(),
        max_concurrent_runs: config.max_concurrent_runs,
        lease: Duration::from_secs(config.lease_seconds),
        public_url: config.public_url.clone().unwrap_or_else(|| format!("http://{local}")),
        start_attempts: config.start_attempts,
        failure_disable_threshold: config.failure_disable_threshold,
        retry_base: Duration::from_secs(1),
    };
    tracing::info!(host_id = %settings.host_id, max_concurrent_runs = settings.max_concurrent_runs, "dispatcher starting");
    let dispatcher = Arc::new(dispatch::Dispatcher::new(
        store.clone(),
        plugins.clone(),
        settings,
        metrics.clone(),
        secret.into_bytes(),
    ));
    let scheduler = Arc::new(scheduler::Scheduler::new(
        store.clone(),
        dispatcher.clone(),
        metrics.clone(),
        scheduler::Settings {
            misfire_grace: chrono::Duration::seconds(config.misfire_grace_seconds as i64),
            run_all_cap: config.run_all_cap,
        },
    ));
    scheduler.spawn(&bg);
    if config.no_dispatch {
        tracing::info!("AUTOMATION_NO_DISPATCH: this host does not carry out runs");
    } else {
        dispatcher.spawn(&bg);
    }
    let matcher = Arc::new(
        events::matcher::Matcher::new(
            store.clone(),
            plugins.clone(),
            dispatcher.clone(),
            metrics.clone(),
            host_id.clone(),
            Duration::from_secs(config.lease_seconds),
        )
        .catching_up_on(tokio::runtime::Handle::current(), Duration::from_millis(config.match_catch_up_ms)),
    );
    matcher.spawn(&bg);
    let ingest = Arc::new(events::Ingest::start(store.clone(), matcher.clone(), metrics.clone(), &sup));
    {
        let store = store.clone();
        bg.spawn("storage-probe", move |stop| probe_storage(store.clone(), stop));
    }

    {
        let sweeper = Arc::new(retention::Sweeper::new(
            store.clone(),
            plugins.clone(),
            metrics.clone(),
            retention::Settings {
                run_days: config.run_retention_days,
                keep: config.run_retention_keep,
                workspace_hours: config.workspace_retention_hours,
                delivery_hours: config.delivery_retention_hours,
                every: Duration::from_secs(config.retention_sweep_seconds),
            },
        ));
        bg.spawn("retention", move |stop| {
            let sweeper = sweeper.clone();
            async move { sweeper.run(stop).await }
        });
    }
    {
        let settings = notify::Settings {
            attempts: config.notify_attempts,
            allowed: notify::parse_allowed(config.notify_allowed_hosts.as_deref().unwrap_or_default())
                .map_err(anyhow::Error::msg)?,
            retry_base: Duration::from_secs(1),
            public_url: config.public_url.clone().unwrap_or_else(|| format!("http://{local}")),
        };
        let notifier = Arc::new(notify::Notifier::new(store.clone(), metrics.clone(), settings));
        bg.spawn("notifier", move |stop| {
            let notifier = notifier.clone();
            async move { notifier.run(stop).await }
        });
    }
    let state = api::AppState::new(
        store.clone(),
        config.clone(),
        plugins.clone(),
        dispatcher.clone(),
        scheduler,
        metrics,
        ingest,
        matcher,
    );
    {
        let (store, plugins) = (store.clone(), plugins.clone());
        bg.spawn("plugin-follow", move |stop| follow_uploaded_plugins(store.clone(), plugins.clone(), stop));
    }
    let app = api::router(state);
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let stopping = tokio_util::sync::CancellationToken::new();
    let limits = api::server::Limits {
        max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        header_timeout: Duration::from_secs(config.header_timeout_seconds),
    };
    let server = api::server::serve(listener, app, limits, {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            tracing::info!(
                grace_seconds = grace.as_secs(),
                "shutting down: no new connections or runs; letting requests and local runs finish"
            );
            stopping.cancel();
        }
    });
    let mut server = tokio::spawn(server);
    tokio::select! {
        res = &mut server => {
            res.context("the HTTP server task failed")?.context("the HTTP server failed")?;
        }
        () = stopping.cancelled() => {}
    }
    // In-flight requests and this host's runs share the grace period.
    let deadline = tokio::time::Instant::now() + grace;
    let requests = async {
        if !server.is_finished() && tokio::time::timeout_at(deadline, &mut server).await.is_err() {
            tracing::warn!(grace_seconds = grace.as_secs(), "in-flight requests did not finish in time; closing");
            server.abort();
        }
    };
    tokio::join!(requests, dispatcher.shutdown(deadline));
    plugins.runtime().sandbox().kill_all();
    // The background loops finish the query they are in before the pool
    // closes under them.
    sup.shutdown(tokio::time::Instant::now() + Duration::from_secs(5)).await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Probes whether the database takes writes: every second while it does
/// not (so readiness and ingestion come back by themselves), every 5 s
/// otherwise (to notice a problem no write has met yet, such as a deleted
/// database file).
async fn probe_storage(store: Store, stop: tokio_util::sync::CancellationToken) {
    loop {
        let every = if store.health().failing().is_some() { 1 } else { 5 };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
        if let Err(e) = store.probe_write().await {
            tracing::debug!(error = %e, "the storage probe failed");
        }
    }
}

/// A host id unique to this process: the machine's name and a random suffix.
fn default_host_id() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Reloads uploaded plugins when another replica changed them (the
/// database is the source of truth for uploads).
async fn follow_uploaded_plugins(
    store: Store,
    plugins: Arc<plugins::Registry>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut seen = store.plugins_version().await.ok();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let Ok(now) = store.plugins_version().await else { continue };
        if seen.as_ref() != Some(&now) {
            if let Err(e) = plugins.reload_uploaded(&store).await {
                tracing::warn!(error = %e, "cannot reload uploaded plugins");
            }
            seen = Some(now);
        }
    }
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://./data/a.db"), "sqlite://./data/a.db");
    }
}
