//! Threads for the host's work on runs, at a lower scheduling priority.
//!
//! Driving a run (rendering its preset, the executor's `start`, `poll` and
//! `cancel`, and for the local sandbox the workspace and the process spawn
//! those calls make) costs the host about as much CPU as acknowledging and
//! matching the delivery that caused it. On a host whose CPU is short, that
//! work waits: it runs on these threads, at the niceness the runs' own
//! processes get (`AUTOMATION_SANDBOX_NICE`), so the kernel gives the CPU to
//! acknowledgements and matching first and to runs when it is free. A run
//! is delayed, never dropped: at nice 10 a thread still gets about a tenth
//! of a contended core, and all of an idle one.

/// A tokio runtime whose blocking threads (the only ones given work) run at
/// a lower priority. Dropping it does not wait for calls in flight.
pub(crate) struct LowPriorityPool {
    runtime: Option<tokio::runtime::Runtime>,
}

impl LowPriorityPool {
    /// A pool whose threads run at `nice` (0-19; 0 makes no pool worth
    /// having, so the caller does not build one then).
    pub(crate) fn new(nice: i32) -> std::io::Result<LowPriorityPool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("run-work")
            .on_thread_start(move || {
                if let Err(e) = crate::sandbox::lower_thread_priority(nice) {
                    tracing::warn!(error = %e, "a run-work thread keeps the host's priority");
                }
            })
            .enable_time()
            .build()?;
        Ok(LowPriorityPool { runtime: Some(runtime) })
    }

    /// Runs `f` on one of the pool's threads; its panic is the caller's.
    pub(crate) async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let runtime = self.runtime.as_ref().expect("the pool lives until it is dropped");
        match runtime.spawn_blocking(f).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Drop for LowPriorityPool {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a runtime's own thread (where the
        // host may drop its registry) must not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's niceness, as the kernel reports it (field 19 of
    /// `/proc/thread-self/stat`, the 17th after the command's `)`).
    fn own_niceness() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        after.split_whitespace().nth(16).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn work_runs_at_the_pools_niceness_and_the_caller_keeps_its_own() {
        let before = own_niceness();
        let pool = LowPriorityPool::new(12).unwrap();
        let inside = pool.run(own_niceness).await;
        assert_eq!(inside, 12.max(before), "a pool thread runs at the pool's niceness");
        assert_eq!(own_niceness(), before, "only the pool's threads are lowered");
        // Many calls at once each get a lowered thread.
        let all = futures::future::join_all((0..8).map(|_| pool.run(own_niceness))).await;
        assert!(all.iter().all(|n| *n == 12.max(before)), "{all:?}");
        drop(pool);
    }

    #[tokio::test]
    async fn a_panic_in_the_pool_reaches_the_caller() {
        let pool = LowPriorityPool::new(5).unwrap();
        let caught = tokio::spawn(async move { pool.run(|| panic!("the call failed")).await }).await;
        assert!(caught.is_err_and(|e| e.is_panic()));
    }
}
