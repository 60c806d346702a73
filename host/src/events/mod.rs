//! Event ingestion: signed deliveries are stored durably before they are
//! acknowledged, then matched against automations in the background.
//!
//! - `signature`: HMAC-SHA256 over the raw body, constant-time;
//! - `keys`: event keys (GitHub's type + action, custom JMESPath) and `on`
//!   pattern globs;
//! - `matcher`: claims stored deliveries, finds candidate automations by
//!   source and key, evaluates their filters in one batch call per filter
//!   plugin, and creates the runs.
//!
//! Acknowledging is a commit: one transaction per delivery would cap
//! throughput at one commit latency per request, so a single committer task
//! takes every delivery that queued while the previous commit ran and
//! stores them in one transaction (group commit). Nothing is acknowledged
//! before its transaction commits.

pub mod keys;
pub mod matcher;
pub mod presets;
pub mod signature;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{NewDelivery, Store, Stored};

/// Most deliveries in one commit.
const MAX_GROUP: usize = 512;

/// What a sender is told when its delivery could not be stored.
const UNSTORED: &str = "this host cannot store deliveries right now; nothing was stored, retry later";

type Pending = (NewDelivery, oneshot::Sender<Result<Stored, String>>);

/// The ingestion front: hands deliveries to the group committer.
pub struct Ingest {
    tx: mpsc::Sender<Pending>,
}

impl Ingest {
    /// Starts the committer under `sup`; it wakes `matcher` after each
    /// commit. A committer restarted after a panic takes the same queue.
    pub fn start(
        store: Store,
        matcher: Arc<matcher::Matcher>,
        metrics: Arc<Metrics>,
        sup: &crate::supervise::Supervisor,
    ) -> Ingest {
        let (tx, rx) = mpsc::channel::<Pending>(8192);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        sup.spawn("ingest", move |stop| commit_loop(store.clone(), matcher.clone(), metrics.clone(), rx.clone(), stop));
        Ingest { tx }
    }

    /// Stores a delivery durably; returns once it is committed (or found to
    /// be a duplicate).
    pub async fn submit(&self, delivery: NewDelivery) -> Result<Stored, String> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((delivery, reply)).await.map_err(|_| "the host is shutting down".to_owned())?;
        answer.await.map_err(|_| "the host is shutting down".to_owned())?
    }
}

async fn commit_loop(
    store: Store,
    matcher: Arc<matcher::Matcher>,
    metrics: Arc<Metrics>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut rx = rx.lock().await;
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let deliveries: Vec<NewDelivery> = batch.iter().map(|(d, _)| d.clone()).collect();
        match store.insert_deliveries(&deliveries).await {
            Ok(stored) => {
                for ((_, reply), s) in batch.drain(..).zip(stored) {
                    metrics.deliveries.add(if matches!(s, Stored::New(_)) { "accepted" } else { "duplicate" }, 1);
                    let _ = reply.send(Ok(s));
                }
                matcher.wake();
            }
            Err(e) => {
                // Nothing of the batch is acknowledged; senders retry (GitHub
                // and most providers do on a 5xx). What went wrong is logged,
                // not sent to unauthenticated senders.
                tracing::error!(error = %e, deliveries = batch.len(), "storing deliveries failed; answering 503");
                metrics.background_errors.add("ingest", 1);
                for (_, reply) in batch.drain(..) {
                    metrics.deliveries.add("store_failed", 1);
                    let _ = reply.send(Err(UNSTORED.to_owned()));
                }
            }
        }
    }
}
