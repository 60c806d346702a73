//! Filter instances kept between calls, and the budget of pool slots they
//! may hold (see `Runtime::filter_call`).

use std::sync::Arc;

use wasmtime::Store;

use super::bindings;
use super::host::HostState;

/// Most calls one kept filter instance serves before it is replaced by a
/// fresh one, so whatever a filter accumulates is bounded in time too.
pub(super) const WARM_CALLS: u32 = 10_000;

/// Most idle instances kept per filter plugin. The matcher uses one, or two
/// at once when it catches up on two cores; the rest serve `POST
/// /v1/filters/evaluate` and validation.
pub(crate) const WARM_PER_PLUGIN: usize = 2;

/// Most instances kept across all filter plugins: kept instances hold slots
/// of the pooling allocator, which every other call needs too.
pub(super) const WARM_BUDGET: usize = 32;

/// A filter instance kept between calls, with its store.
pub(super) struct WarmFilter {
    pub(super) store: Store<HostState>,
    pub(super) instance: bindings::filter::FilterPlugin,
    pub(super) calls: u32,
    /// Its share of [`WARM_BUDGET`]; `None` until it is first kept.
    pub(super) slot: Option<WarmSlot>,
}

/// One unit of [`WARM_BUDGET`], given back when dropped.
pub(super) struct WarmSlot(Arc<std::sync::atomic::AtomicUsize>);

impl WarmSlot {
    pub(super) fn take(budget: &Arc<std::sync::atomic::AtomicUsize>) -> Option<WarmSlot> {
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
