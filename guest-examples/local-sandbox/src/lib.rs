//! The `local-sandbox` executor: carries out a run on the host machine
//! through the host's `sandbox` capability.
//!
//! `start` creates the run's workspace, unpacks the bundle there and starts
//! `sh -c 'run setup.sh if present, then exec the entrypoint'` with the run's
//! variables; the handle is the sandbox's process id. `poll` maps the
//! process state to a run status (exit 0 succeeds, anything else fails, the
//! time limit is `timed-out`) and removes the workspace once the run is over.
//! `cancel` kills the process group. What does not depend on WebAssembly
//! lives in [`plan`], which the native tests cover.

pub mod plan;

use automation_plugin::executor::sandbox::{self, ProcessOutput, ProcessState};
use automation_plugin::executor::{Executor, Output, RunContext, RunStatus};
use automation_plugin::preset::Bundle;
use automation_plugin::{Error, Info, log};

/// The exported `executor` interface.
pub struct LocalSandbox;

impl Executor for LocalSandbox {
    fn describe() -> Info {
        Info::new(
            "local-sandbox",
            env!("CARGO_PKG_VERSION"),
            "Runs the bundle on this machine in a fresh per-run workspace, confined by the host's sandbox \
             (namespaces, Landlock, seccomp, limits): optional setup.sh, then the entrypoint, with a \
             scrubbed environment, the run's time limit and bounded output.",
        )
        .with_config_schema(plan::CONFIG_SCHEMA)
    }

    fn start(ctx: &RunContext, bundle: Bundle) -> Result<String, Error> {
        let config = plan::Config::parse(&ctx.config).map_err(Error::InvalidInput)?;
        let words = plan::entrypoint_words(&bundle.entrypoint).map_err(Error::InvalidInput)?;
        let workspace = sandbox::create_workspace()?;
        // The payload goes as a file (no size limit), beside the bundle.
        let bundle = bundle.file(plan::PAYLOAD_FILE, 0o600, ctx.trigger.payload.as_bytes());
        let bundle_env = bundle.env.clone();
        sandbox::unpack(bundle)?;
        let payload_file = format!("{}/{}", workspace.trim_end_matches('/'), plan::PAYLOAD_FILE);
        let progress_file = format!("{}/{}", workspace.trim_end_matches('/'), plan::PROGRESS_FILE);
        let vars = plan::RunVars {
            run_id: &ctx.run_id,
            automation_id: &ctx.automation_id,
            automation_name: &ctx.automation_name,
            attempt: ctx.attempt,
            trigger_kind: ctx.trigger.kind.as_str(),
            trigger_payload: &ctx.trigger.payload,
            payload_file: &payload_file,
            progress_file: &progress_file,
            event_key: ctx.trigger.event_key.as_deref(),
            callback_url: &ctx.callback_url,
            callback_token: &ctx.callback_token,
        };
        let env = plan::environment(&bundle_env, &config.env, &vars);
        let (program, args) = plan::command(&words);
        let time_limit_ms = u64::try_from(ctx.timeout.as_millis()).unwrap_or(u64::MAX);
        let process = sandbox::spawn(&sandbox::Command { program, args, env, cwd: None, time_limit_ms })?;
        log::info(&format!("run {} started in {workspace} as process {process}", ctx.run_id));
        Ok(process)
    }

    fn poll(ctx: &RunContext, handle: &str) -> Result<RunStatus, Error> {
        let config = plan::Config::parse(&ctx.config).map_err(Error::InvalidInput)?;
        let snapshot = match sandbox::wait(handle, plan::POLL_WAIT_MS) {
            Ok(s) => s,
            Err(Error::NotFound(msg)) => {
                // Lost to a host restart: the host kills what is left of it
                // when the workspace goes.
                if !config.keep_workspace {
                    let _ = sandbox::remove_workspace();
                }
                return Ok(RunStatus::Failed(format!("the run's process is gone: {msg}"), Output::default()));
            }
            Err(e) => return Err(e),
        };
        let status = status_of(snapshot);
        if !matches!(status, RunStatus::Running)
            && !config.keep_workspace
            && let Err(e) = sandbox::remove_workspace()
        {
            log::warn(&format!("cannot remove the workspace of run {}: {e}", ctx.run_id));
        }
        Ok(status)
    }

    fn cancel(ctx: &RunContext, handle: &str) -> Result<(), Error> {
        let config = plan::Config::parse(&ctx.config).unwrap_or_default();
        match sandbox::kill(handle) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        // Give the group a moment to go, so the workspace can be removed.
        let _ = sandbox::wait(handle, 3_000);
        if !config.keep_workspace {
            let _ = sandbox::remove_workspace();
        }
        Ok(())
    }
}

fn status_of(p: ProcessOutput) -> RunStatus {
    let output =
        |exit_code| Output { exit_code, stdout: p.stdout.clone(), stderr: p.stderr.clone(), truncated: p.truncated };
    match p.state {
        ProcessState::Running => RunStatus::Running,
        ProcessState::Exited(0) => RunStatus::Succeeded(output(Some(0))),
        ProcessState::Exited(code) => RunStatus::Failed(format!("exit code {code}"), output(Some(code))),
        ProcessState::Signaled(sig) => RunStatus::Failed(format!("killed by signal {sig}"), output(None)),
        ProcessState::TimedOut => RunStatus::TimedOut(output(None)),
    }
}

automation_plugin::export_executor!(LocalSandbox);
