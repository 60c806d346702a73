//! Executors: carry out runs.
//!
//! No instance lives between calls: `start` returns a handle (stored on the
//! run, in plain text), and `poll` and `cancel` get it back, possibly from
//! a host process that restarted in between, with the run's context.

use std::time::Duration;

use crate::preset::Bundle;
use crate::{Datetime, Error, Info};

/// What started a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerKind {
    /// A cron slot.
    Cron,
    /// An incoming event.
    Event,
    /// A manual dispatch.
    Manual,
    /// A kind this SDK does not know yet.
    Other(String),
}

impl TriggerKind {
    /// The name the host uses (`cron`, `event`, `manual`...).
    pub fn as_str(&self) -> &str {
        match self {
            TriggerKind::Cron => "cron",
            TriggerKind::Event => "event",
            TriggerKind::Manual => "manual",
            TriggerKind::Other(s) => s,
        }
    }

    fn parse(s: String) -> TriggerKind {
        match s.as_str() {
            "cron" => TriggerKind::Cron,
            "event" => TriggerKind::Event,
            "manual" => TriggerKind::Manual,
            _ => TriggerKind::Other(s),
        }
    }
}

/// The trigger of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// What fired it.
    pub kind: TriggerKind,
    /// The trigger payload as JSON text (the event payload, the cron slot,
    /// the dispatch body).
    pub payload: String,
    /// The event key, for event triggers.
    pub event_key: Option<String>,
    /// The scheduled time, for cron triggers.
    pub scheduled_for: Option<Datetime>,
}

/// Everything an executor knows about the run it carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunContext {
    /// The run id (a UUID).
    pub run_id: String,
    /// The automation id (a UUID).
    pub automation_id: String,
    /// The automation's name.
    pub automation_name: String,
    /// 1 for the first try; higher when the host retries.
    pub attempt: u32,
    /// What fired the run.
    pub trigger: Trigger,
    /// The automation's executor configuration, JSON text.
    pub config: String,
    /// The run's time budget (the host enforces it too).
    pub timeout: Duration,
    /// Where the run may report its own completion (POST)...
    pub callback_url: String,
    /// ...with this per-run bearer token.
    pub callback_token: String,
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// The process exit code, when there was a process.
    pub exit_code: Option<i32>,
    /// Standard output (possibly truncated).
    pub stdout: String,
    /// Standard error (possibly truncated).
    pub stderr: String,
    /// True if either was cut short.
    pub truncated: bool,
}

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// Still going; the host polls again.
    Running,
    /// Finished successfully.
    Succeeded(Output),
    /// Finished with a failure, and why.
    Failed(String, Output),
    /// The executor's own time limit stopped it.
    TimedOut(Output),
    /// It was cancelled.
    Cancelled(Output),
}

/// An executor plugin.
pub trait Executor {
    /// Name, version, description and configuration schema.
    fn describe() -> Info;
    /// Starts a run and returns its handle without waiting for it to end.
    /// `Error::Unavailable` is retried by the host with backoff.
    fn start(ctx: &RunContext, bundle: Bundle) -> Result<String, Error>;
    /// Where a started run is; called until the status is final.
    fn poll(ctx: &RunContext, handle: &str) -> Result<RunStatus, Error>;
    /// Stops a run; cancelling one that already ended is not an error.
    fn cancel(ctx: &RunContext, handle: &str) -> Result<(), Error>;
}

mod wit {
    pub(super) use crate::__wit::executor::automation::plugin::types::{
        Bundle, Error, PluginInfo, RunContext, RunOutput, RunStatus,
    };
}

fn context(c: wit::RunContext) -> RunContext {
    RunContext {
        run_id: c.run_id,
        automation_id: c.automation_id,
        automation_name: c.automation_name,
        attempt: c.attempt,
        trigger: Trigger {
            kind: TriggerKind::parse(c.trigger.kind),
            payload: c.trigger.payload,
            event_key: c.trigger.event_key,
            scheduled_for: c.trigger.scheduled_for.map(Into::into),
        },
        config: c.config,
        timeout: Duration::from_millis(c.timeout_ms),
        callback_url: c.callback_url,
        callback_token: c.callback_token,
    }
}

fn output(o: Output) -> wit::RunOutput {
    wit::RunOutput { exit_code: o.exit_code, stdout: o.stdout, stderr: o.stderr, truncated: o.truncated }
}

fn status(s: RunStatus) -> wit::RunStatus {
    match s {
        RunStatus::Running => wit::RunStatus::Running,
        RunStatus::Succeeded(o) => wit::RunStatus::Succeeded(output(o)),
        RunStatus::Failed(why, o) => wit::RunStatus::Failed((why, output(o))),
        RunStatus::TimedOut(o) => wit::RunStatus::TimedOut(output(o)),
        RunStatus::Cancelled(o) => wit::RunStatus::Cancelled(output(o)),
    }
}

#[doc(hidden)]
pub fn __describe<E: Executor>() -> wit::PluginInfo {
    E::describe().into()
}

#[doc(hidden)]
pub fn __start<E: Executor>(ctx: wit::RunContext, bundle: wit::Bundle) -> Result<String, wit::Error> {
    E::start(&context(ctx), bundle.into()).map_err(Into::into)
}

#[doc(hidden)]
pub fn __poll<E: Executor>(ctx: wit::RunContext, handle: String) -> Result<wit::RunStatus, wit::Error> {
    E::poll(&context(ctx), &handle).map(status).map_err(Into::into)
}

#[doc(hidden)]
pub fn __cancel<E: Executor>(ctx: wit::RunContext, handle: String) -> Result<(), wit::Error> {
    E::cancel(&context(ctx), &handle).map_err(Into::into)
}

/// Processes on the host machine, confined by the host's sandbox
/// (executors granted `sandbox`; see the host's README).
pub mod sandbox {
    use crate::__wit::executor::automation::plugin::sandbox as wit;
    use crate::Error;
    use crate::preset::Bundle;

    pub use wit::{Command, ProcessOutput, ProcessState};

    /// Creates this run's workspace and returns its path.
    pub fn create_workspace() -> Result<String, Error> {
        wit::create_workspace().map_err(Into::into)
    }
    /// Unpacks a bundle into the run's workspace.
    pub fn unpack(bundle: Bundle) -> Result<(), Error> {
        wit::unpack(&bundle.into()).map_err(Into::into)
    }
    /// Starts a process; returns its handle.
    pub fn spawn(command: &Command) -> Result<String, Error> {
        wit::spawn(command).map_err(Into::into)
    }
    /// A process's state and output so far.
    pub fn status(process: &str) -> Result<ProcessOutput, Error> {
        wit::status(process).map_err(Into::into)
    }
    /// Waits up to `timeout_ms` for a process to end.
    pub fn wait(process: &str, timeout_ms: u64) -> Result<ProcessOutput, Error> {
        wit::wait(process, timeout_ms).map_err(Into::into)
    }
    /// Kills a process's group.
    pub fn kill(process: &str) -> Result<(), Error> {
        wit::kill(process).map_err(Into::into)
    }
    /// Removes the run's workspace.
    pub fn remove_workspace() -> Result<(), Error> {
        wit::remove_workspace().map_err(Into::into)
    }
}

/// Exports an [`Executor`]: `automation_plugin::export_executor!(MyExecutor);`.
#[macro_export]
macro_rules! export_executor {
    ($executor:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__wit::executor::automation::plugin::types as __t;
            struct __AutomationPluginExecutor;
            impl $crate::__wit::executor::exports::automation::plugin::executor::Guest for __AutomationPluginExecutor {
                fn describe() -> __t::PluginInfo {
                    $crate::executor::__describe::<$executor>()
                }
                fn start(ctx: __t::RunContext, bundle: __t::Bundle) -> ::core::result::Result<::std::string::String, __t::Error> {
                    $crate::executor::__start::<$executor>(ctx, bundle)
                }
                fn poll(ctx: __t::RunContext, handle: ::std::string::String) -> ::core::result::Result<__t::RunStatus, __t::Error> {
                    $crate::executor::__poll::<$executor>(ctx, handle)
                }
                fn cancel(ctx: __t::RunContext, handle: ::std::string::String) -> ::core::result::Result<(), __t::Error> {
                    $crate::executor::__cancel::<$executor>(ctx, handle)
                }
            }
            $crate::__wit::executor::__export_executor_world!(__AutomationPluginExecutor with_types_in $crate::__wit::executor);
        };
    };
}
