//! Group commit: callers hand items to one writer task, which takes every
//! item that queued while its previous write ran, writes them together (one
//! transaction) and answers each caller. Many callers share one commit, so
//! the rate is not capped at one commit latency per caller, and the
//! database sees one writer where there were many.
//!
//! Used for the deliveries a sender waits for (`events::Ingest`) and for
//! the ends of runs (`dispatch`).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::supervise::Supervisor;

type Item<T, R> = (T, oneshot::Sender<R>);

/// The front of a group committer. Cheap to share.
pub struct GroupCommit<T, R> {
    tx: mpsc::Sender<Item<T, R>>,
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// Starts the committer under `sup` as `name`. `write` stores up to
    /// `max` items at once and returns one answer per item, in their
    /// order. A committer restarted after a panic takes the same queue; the
    /// callers of the batch it panicked on get `None`.
    pub fn start<F, Fut>(name: &'static str, max: usize, sup: &Supervisor, write: F) -> GroupCommit<T, R>
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Item<T, R>>(8192);
        let rx = Arc::new(Mutex::new(rx));
        let write = Arc::new(write);
        sup.spawn(name, move |stop| commit_loop(rx.clone(), write.clone(), max.max(1), stop));
        GroupCommit { tx }
    }

    /// Hands `item` to the committer and waits for its answer; `None` when
    /// the committer is gone (the host is stopping) or failed on this batch.
    pub async fn submit(&self, item: T) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).await.ok()?;
        answer.await.ok()
    }
}

async fn commit_loop<T, R, F, Fut>(
    rx: Arc<Mutex<mpsc::Receiver<Item<T, R>>>>,
    write: Arc<F>,
    max: usize,
    stop: CancellationToken,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<R>>,
{
    let mut rx = rx.lock().await;
    let mut batch: Vec<Item<T, R>> = Vec::with_capacity(max);
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.drain(..).unzip();
        let answers = write(items).await;
        // A write that answered too few leaves the rest with `None`.
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_that_queue_together_share_one_write() {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let sup = Supervisor::new(CancellationToken::new(), metrics);
        let writes = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
        let seen = writes.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let open = gate.clone();
        let commit = Arc::new(GroupCommit::start("test", 100, &sup, move |items: Vec<u32>| {
            let (seen, gate) = (seen.clone(), gate.clone());
            async move {
                // The first write waits until every other item has queued.
                if seen.lock().unwrap().is_empty() {
                    gate.acquire().await.unwrap().forget();
                }
                seen.lock().unwrap().push(items.len());
                items.into_iter().map(|i| i * 2).collect()
            }
        }));
        let first = tokio::spawn({
            let c = commit.clone();
            async move { c.submit(1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let rest: Vec<_> = (2..=10)
            .map(|i| {
                let c = commit.clone();
                tokio::spawn(async move { c.submit(i).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        open.add_permits(1);
        assert_eq!(first.await.unwrap(), Some(2));
        for (i, t) in (2..=10).zip(rest) {
            assert_eq!(t.await.unwrap(), Some(i * 2), "each caller gets its own answer");
        }
        assert_eq!(*writes.lock().unwrap(), vec![1, 9], "the nine that queued during the first write went in one");
    }

    #[tokio::test]
    async fn a_write_that_answers_too_few_leaves_the_rest_without_an_answer() {
        let sup = Supervisor::new(CancellationToken::new(), Arc::new(crate::metrics::Metrics::default()));
        let commit = GroupCommit::start("test", 10, &sup, |_items: Vec<u32>| async { Vec::<u32>::new() });
        assert_eq!(commit.submit(1).await, None);
    }
}
