//! The HTTP server: hyper with the limits `axum::serve` does not offer.
//!
//! `axum::serve` has no header-read timeout and no connection limit, so a
//! client sending one header byte a second holds a connection (and a task)
//! for as long as it likes, and a few thousand of them hold the host. This
//! accept loop serves the same router through hyper-util with:
//! - a connection limit (accepting waits while it is reached);
//! - a header-read timeout (the connection is closed when a request's
//!   headers have not all arrived in time);
//! - HTTP/1.1 only (what webhook senders, API clients and reverse proxies
//!   speak; it also means no protocol sniffing phase without a timeout);
//! - graceful shutdown: stop accepting, let requests in flight finish.
//!
//! - a body-read timeout (the longest pause while a body arrives; the whole
//!   request's time is bounded by a layer on the router, see
//!   [`super::router`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a request's headers may take to arrive, and the longest pause
    /// while its body arrives.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and waits for the connections in flight (the caller bounds
/// that wait). Open connections count against the limit until they close.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // The header timer also runs while a kept-alive connection waits for its
    // next request, so an idle connection is closed after the same time.
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    // A body that stalls is cut off; the whole request's time is bounded by
    // the router's own timeout.
    let service = TowerToHyperService::new(
        tower::ServiceBuilder::new().layer(RequestBodyTimeoutLayer::new(limits.header_timeout)).service(app),
    );
    tokio::pin!(shutdown);
    let mut full_logged = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                if !full_logged {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached (AUTOMATION_MAX_CONNECTIONS); new connections wait"
                    );
                    full_logged = true;
                }
                tokio::select! {
                    s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        full_logged = false;
        let _ = stream.set_nodelay(true);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
