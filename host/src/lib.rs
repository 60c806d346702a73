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
//! - `archive`: checks bundle archives before they are accepted.
//! - `auth`: API key generation and hashing.
//!
//! Flow: request → `api` → `store`; a firing (cron slot, event, dispatch)
//! → a `pending` run in the store → dispatch → executor plugin.

pub mod api;
pub mod archive;
pub mod auth;
pub mod config;
pub mod model;
pub mod scheduler;
pub mod store;

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
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
    }
    let url = config.effective_database_url();
    let store = Store::connect(&url, config.db_connections)
        .await
        .with_context(|| format!("cannot open the database {}", redact(&url)))?;
    if migrate {
        store
            .migrate()
            .await
            .context("cannot apply database migrations")?;
    }
    Ok(store)
}

/// Hides the password in a database URL for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
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
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = api::AppState::new(store.clone(), config.clone());
    let app = api::router(state);
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; letting in-flight requests finish");
        let _ = stopping_tx.send(());
    });
    let drained = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "in-flight requests did not finish in time; closing"
            );
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        res = server => res.context("the HTTP server failed")?,
        () = drained => {}
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
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
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            super::redact("sqlite://./data/a.db"),
            "sqlite://./data/a.db"
        );
    }
}
