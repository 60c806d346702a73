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

use crate::group_commit::GroupCommit;
use crate::metrics::Metrics;
use crate::store::{NewDelivery, Store, Stored};

/// Most deliveries in one commit.
const MAX_GROUP: usize = 512;

/// Why a delivery was not stored; the text is what its sender is told
/// (what went wrong inside is logged, not sent to unauthenticated senders).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The commit failed: nothing of its group was stored.
    #[error("this host cannot store deliveries right now; nothing was stored, retry later")]
    Unstored,
    /// The committer has stopped.
    #[error("the host is shutting down")]
    ShuttingDown,
}

/// The ingestion front: hands deliveries to the group committer.
pub struct Ingest {
    commit: GroupCommit<NewDelivery, Result<Stored, IngestError>>,
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
        let commit = GroupCommit::start("ingest", MAX_GROUP, sup, move |batch: Vec<NewDelivery>| {
            let (store, matcher, metrics) = (store.clone(), matcher.clone(), metrics.clone());
            async move { commit(&store, &matcher, &metrics, &batch).await }
        });
        Ingest { commit }
    }

    /// Stores a delivery durably; returns once it is committed (or found to
    /// be a duplicate).
    pub async fn submit(&self, delivery: NewDelivery) -> Result<Stored, IngestError> {
        self.commit.submit(delivery).await.unwrap_or(Err(IngestError::ShuttingDown))
    }
}

/// One group commit of deliveries: all stored, or none (and each sender
/// told so).
async fn commit(
    store: &Store,
    matcher: &matcher::Matcher,
    metrics: &Metrics,
    batch: &[NewDelivery],
) -> Vec<Result<Stored, IngestError>> {
    let started = std::time::Instant::now();
    let result = store.insert_deliveries(batch).await;
    metrics.delivery_commit.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(stored) => {
            for s in &stored {
                metrics.deliveries.add(if matches!(s, Stored::New(_)) { "accepted" } else { "duplicate" }, 1);
            }
            matcher.wake();
            stored.into_iter().map(Ok).collect()
        }
        Err(e) => {
            // Nothing of the batch is acknowledged; senders retry (GitHub
            // and most providers do on a 5xx). What went wrong is logged,
            // not sent to unauthenticated senders.
            tracing::error!(error = %e, deliveries = batch.len(), "storing deliveries failed; answering 503");
            metrics.background_errors.add("ingest", 1);
            metrics.deliveries.add("store_failed", batch.len() as u64);
            batch.iter().map(|_| Err(IngestError::Unstored)).collect()
        }
    }
}
