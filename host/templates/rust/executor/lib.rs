//! {{name}}: an executor plugin for automation-host.
//!
//! A dry run: `start` checks the bundle and answers at once with a handle
//! that says what would run; `poll` reports the run succeeded with that
//! description as its output. No instance lives between calls, so
//! everything `poll` needs is in the handle (stored on the run, in plain
//! text) or in the run's context. To really run something, ask for the
//! `sandbox` capability (processes on the host, see
//! `automation_plugin::executor::sandbox`) or `http` (a remote service,
//! through `wasi:http`) in `plugin.toml`, and have the operator grant it.

use automation_plugin::executor::{Executor, Output, RunContext, RunStatus};
use automation_plugin::preset::Bundle;
use automation_plugin::{Error, Info, log};

pub struct DryRun;

impl Executor for DryRun {
    fn describe() -> Info {
        Info::new("{{name}}", env!("CARGO_PKG_VERSION"), "Reports what a run would execute, and succeeds.")
    }

    fn start(ctx: &RunContext, bundle: Bundle) -> Result<String, Error> {
        if bundle.entrypoint.trim().is_empty() {
            return Err(Error::InvalidInput("the bundle has no entrypoint".into()));
        }
        log::info(&format!("run {} (attempt {}): dry run of {}", ctx.run_id, ctx.attempt, bundle.entrypoint));
        let files: Vec<&str> = bundle.files.iter().map(|f| f.path.as_str()).collect();
        Ok(format!(
            "would run `{}` ({} trigger) with files [{}]",
            bundle.entrypoint,
            ctx.trigger.kind.as_str(),
            files.join(", ")
        ))
    }

    fn poll(_ctx: &RunContext, handle: &str) -> Result<RunStatus, Error> {
        Ok(RunStatus::Succeeded(Output { exit_code: Some(0), stdout: format!("{handle}\n"), ..Output::default() }))
    }

    fn cancel(_ctx: &RunContext, _handle: &str) -> Result<(), Error> {
        Ok(())
    }
}

automation_plugin::export_executor!(DryRun);
