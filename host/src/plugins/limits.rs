//! How long a call may run, how much memory and output it may have.

use std::time::Duration;

use super::engine;
use super::manifest::Kind;

/// A call's epoch deadline in ticks from now (a tick more than the limit, so
/// a call is never cut short by the tick already under way).
pub(super) fn deadline_ticks(limits: CallLimits) -> u64 {
    (limits.deadline.as_millis() / engine::EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

/// A `matches` call's limits: a filter's, plus 5 ms per expression.
pub(super) fn filter_matches_limits(expressions: &[String]) -> CallLimits {
    let mut limits = CallLimits::for_kind(Kind::Filter);
    limits.deadline += Duration::from_millis(5) * expressions.len().min(2000) as u32;
    limits
}

/// Limits for one kind of call.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Most bytes a linear memory may grow to.
    pub memory: usize,
    /// Wall-clock deadline, enforced by epochs.
    pub deadline: Duration,
    /// Bytes of stdout and of stderr kept.
    pub output: usize,
}

impl CallLimits {
    /// The defaults for a kind of plugin.
    pub fn for_kind(kind: Kind) -> CallLimits {
        match kind {
            Kind::Filter | Kind::Source => {
                CallLimits { memory: 64 << 20, deadline: Duration::from_secs(1), output: 16 << 10 }
            }
            Kind::Preset => CallLimits { memory: 64 << 20, deadline: Duration::from_secs(5), output: 64 << 10 },
            Kind::Executor => CallLimits { memory: 128 << 20, deadline: Duration::from_secs(30), output: 64 << 10 },
        }
    }
}
