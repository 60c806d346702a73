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

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({
        path: "../../wit",
        world: "executor-plugin",
    });
}

use bindings::automation::plugin::log::{Level, log};
use bindings::automation::plugin::sandbox::{self, ProcessOutput, ProcessState};
use bindings::automation::plugin::types::{Bundle, Error, File, PluginInfo, RunContext, RunOutput, RunStatus};
use bindings::exports::automation::plugin::executor::Guest;

/// The exported `executor` interface.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct LocalSandbox;

impl Guest for LocalSandbox {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "local-sandbox".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Runs the bundle on this machine in a fresh per-run workspace, confined \
                          by the host's sandbox (namespaces, Landlock, seccomp, limits): optional \
                          setup.sh, then the entrypoint, with a scrubbed environment, the run's \
                          time limit and bounded output."
                .to_owned(),
            config_schema: Some(plan::CONFIG_SCHEMA.to_owned()),
        }
    }

    fn start(ctx: RunContext, bundle: Bundle) -> Result<String, Error> {
        let config = plan::Config::parse(&ctx.config).map_err(Error::InvalidInput)?;
        let words = plan::entrypoint_words(&bundle.entrypoint).map_err(Error::InvalidInput)?;
        let workspace = sandbox::create_workspace()?;
        // The payload goes as a file (no size limit), beside the bundle.
        let mut bundle = bundle;
        bundle.files.push(File {
            path: plan::PAYLOAD_FILE.to_owned(),
            mode: 0o600,
            contents: ctx.trigger.payload.as_bytes().to_vec(),
        });
        sandbox::unpack(&bundle)?;
        let payload_file = format!("{}/{}", workspace.trim_end_matches('/'), plan::PAYLOAD_FILE);
        let vars = plan::RunVars {
            run_id: &ctx.run_id,
            automation_id: &ctx.automation_id,
            automation_name: &ctx.automation_name,
            attempt: ctx.attempt,
            trigger_kind: &ctx.trigger.kind,
            trigger_payload: &ctx.trigger.payload,
            payload_file: &payload_file,
            event_key: ctx.trigger.event_key.as_deref(),
            callback_url: &ctx.callback_url,
            callback_token: &ctx.callback_token,
        };
        let env = plan::environment(&bundle.env, &config.env, &vars);
        let (program, args) = plan::command(&words);
        let process =
            sandbox::spawn(&sandbox::Command { program, args, env, cwd: None, time_limit_ms: ctx.timeout_ms })?;
        log(Level::Info, &format!("run {} started in {workspace} as process {process}", ctx.run_id));
        Ok(process)
    }

    fn poll(ctx: RunContext, handle: String) -> Result<RunStatus, Error> {
        let config = plan::Config::parse(&ctx.config).map_err(Error::InvalidInput)?;
        let snapshot = match sandbox::wait(&handle, plan::POLL_WAIT_MS) {
            Ok(s) => s,
            Err(Error::NotFound(msg)) => {
                // Lost to a host restart: the host kills what is left of it
                // when the workspace goes.
                if !config.keep_workspace {
                    let _ = sandbox::remove_workspace();
                }
                return Ok(RunStatus::Failed((
                    format!("the run's process is gone: {msg}"),
                    RunOutput { exit_code: None, stdout: String::new(), stderr: String::new(), truncated: false },
                )));
            }
            Err(e) => return Err(e),
        };
        let status = status_of(snapshot);
        if !matches!(status, RunStatus::Running)
            && !config.keep_workspace
            && let Err(e) = sandbox::remove_workspace()
        {
            log(Level::Warn, &format!("cannot remove the workspace of run {}: {e:?}", ctx.run_id));
        }
        Ok(status)
    }

    fn cancel(ctx: RunContext, handle: String) -> Result<(), Error> {
        let config = plan::Config::parse(&ctx.config).unwrap_or_default();
        match sandbox::kill(&handle) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        // Give the group a moment to go, so the workspace can be removed.
        let _ = sandbox::wait(&handle, 3_000);
        if !config.keep_workspace {
            let _ = sandbox::remove_workspace();
        }
        Ok(())
    }
}

fn status_of(p: ProcessOutput) -> RunStatus {
    let output =
        |exit_code| RunOutput { exit_code, stdout: p.stdout.clone(), stderr: p.stderr.clone(), truncated: p.truncated };
    match p.state {
        ProcessState::Running => RunStatus::Running,
        ProcessState::Exited(0) => RunStatus::Succeeded(output(Some(0))),
        ProcessState::Exited(code) => RunStatus::Failed((format!("exit code {code}"), output(Some(code)))),
        ProcessState::Signaled(sig) => RunStatus::Failed((format!("killed by signal {sig}"), output(None))),
        ProcessState::TimedOut => RunStatus::TimedOut(output(None)),
    }
}

// Only the WebAssembly build exports the functions: their symbol names are
// not valid in a native linker's version script.
#[cfg(target_arch = "wasm32")]
bindings::export!(LocalSandbox with_types_in bindings);
