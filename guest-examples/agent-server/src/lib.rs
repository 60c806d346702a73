//! The `agent-server` executor: carries out a run on an OpenHands
//! agent-server over outbound HTTP (`wasi:http/outgoing-handler`), the way
//! the reference automation service's local mode does.
//!
//! `start` creates `<workspace_base>/<run id>/` (mode 700) on the
//! agent-server, uploads the bundle's archive as is, a tar.gz of its
//! rendered files, and an environment file there, then starts one bash command there (`POST
//! /api/bash/start_bash_command`) that sources and deletes the environment
//! file, unpacks both archives into `work/`, runs `setup.sh` if present and
//! `exec`s the entrypoint. The handle is `{"v":1,"command_id":...,"run_dir":...}`.
//! `poll` reads the command's newest output event (`GET
//! /api/bash/bash_events/search`) and maps its exit code to a status;
//! `cancel` asks the agent-server to stop the command (`POST
//! /api/bash/bash_commands/{id}/stop`). Both remove the run directory at the
//! end unless the config says `keep_workspace`. What does not depend on
//! WebAssembly lives in [`plan`] and [`archive`], which the native tests cover.

pub mod archive;
pub mod http;
pub mod plan;

use automation_plugin::executor::{Executor, Output, RunContext, RunStatus};
use automation_plugin::preset::Bundle;
use automation_plugin::{Error, Info, clock, log};
use http::{Client, status_error};
use plan::{Config, Handle, Status};

/// The exported `executor` interface.
pub struct AgentServer;

impl Executor for AgentServer {
    fn describe() -> Info {
        Info::new(
            "agent-server",
            env!("CARGO_PKG_VERSION"),
            "Runs the bundle on an OpenHands agent-server over HTTP: uploads it to a per-run directory, runs \
             setup.sh and the entrypoint as one bash command with the run's variables and time limit, and \
             reads back its exit code and output.",
        )
        .with_config_schema(plan::CONFIG_SCHEMA)
    }

    fn start(ctx: &RunContext, bundle: Bundle) -> Result<String, Error> {
        let config = Config::parse(&ctx.config).map_err(Error::InvalidInput)?;
        let words = plan::entrypoint_words(&bundle.entrypoint).map_err(Error::InvalidInput)?;
        let paths = plan::run_paths(&config.workspace_base, &ctx.run_id).map_err(Error::InvalidInput)?;
        let vars = plan::RunVars {
            run_id: &ctx.run_id,
            automation_id: &ctx.automation_id,
            automation_name: &ctx.automation_name,
            attempt: ctx.attempt,
            trigger_kind: ctx.trigger.kind.as_str(),
            trigger_payload: &ctx.trigger.payload,
            event_key: ctx.trigger.event_key.as_deref(),
            callback_url: &ctx.callback_url,
            callback_token: &ctx.callback_token,
        };
        let env_text = plan::env_file(&plan::environment(&bundle.env, &vars)).map_err(Error::InvalidInput)?;
        let files = if bundle.files.is_empty() {
            None
        } else {
            let entries: Vec<archive::FileEntry<'_>> = bundle
                .files
                .iter()
                .map(|f| archive::FileEntry { path: &f.path, mode: f.mode, contents: &f.contents })
                .collect();
            let mtime = u64::try_from(clock::now().seconds).unwrap_or(0);
            Some(archive::files_tarball(&entries, mtime).map_err(Error::InvalidInput)?)
        };

        let client = Client::new(&config.url, config.session_api_key.as_deref());
        prepare_run_dir(&client, &paths.run_dir)?;
        let uploaded = (|| {
            if let Some(bytes) = &bundle.archive {
                upload(&client, &paths.archive, "bundle.tar.gz", bytes)?;
            }
            if let Some(bytes) = &files {
                upload(&client, &paths.files, "files.tar.gz", bytes)?;
            }
            upload(&client, &paths.env, "env", env_text.as_bytes())
        })();
        if let Err(e) = uploaded {
            remove_run_dir(&client, &paths.run_dir);
            return Err(e);
        }

        let command = plan::run_command(&paths, bundle.archive.is_some(), files.is_some(), &words);
        let timeout_ms = u64::try_from(ctx.timeout.as_millis()).unwrap_or(u64::MAX);
        let body = plan::start_request(&command, None, plan::timeout_secs(timeout_ms));
        let response = client.post_json(plan::START_PATH, &body)?;
        if !response.ok() {
            // The agent-server answered, so nothing started: take the files back.
            remove_run_dir(&client, &paths.run_dir);
            return Err(status_error("start_bash_command", response.status, &response.text()));
        }
        let command_id = plan::parse_started(&response.text()).map_err(Error::Internal)?;
        log::info(&format!(
            "run {} started on {} as command {command_id} in {}",
            ctx.run_id, config.url.authority, paths.work
        ));
        Ok(Handle { command_id, run_dir: paths.run_dir }.encode())
    }

    fn poll(ctx: &RunContext, handle: &str) -> Result<RunStatus, Error> {
        let handle = Handle::decode(handle).map_err(Error::NotFound)?;
        let config = Config::parse(&ctx.config).map_err(Error::InvalidInput)?;
        let client = Client::new(&config.url, config.session_api_key.as_deref());
        let status = status_of(&client, &handle.command_id)?;
        if !matches!(status, Status::Running) && !config.keep_workspace {
            remove_run_dir(&client, &handle.run_dir);
        }
        Ok(run_status(status))
    }

    fn cancel(ctx: &RunContext, handle: &str) -> Result<(), Error> {
        let handle = Handle::decode(handle).map_err(Error::NotFound)?;
        let config = Config::parse(&ctx.config).map_err(Error::InvalidInput)?;
        let client = Client::new(&config.url, config.session_api_key.as_deref());
        // SIGTERM to the command's process group, SIGKILL a second later; the
        // agent-server answers once the process is gone (at most ~2 s).
        let response = client.post(&plan::stop_path(&handle.command_id), "application/json", b"")?;
        match response.status {
            200..=299 => log::info(&format!(
                "run {}: the agent-server stopped command {} (or it had ended)",
                ctx.run_id, handle.command_id
            )),
            // Unknown to this agent-server: nothing left to stop.
            404 => {
                log::warn(&format!("run {}: the agent-server does not know command {}", ctx.run_id, handle.command_id))
            }
            status => return Err(status_error("stop", status, &response.text())),
        }
        if !config.keep_workspace {
            remove_run_dir(&client, &handle.run_dir);
        }
        Ok(())
    }
}

/// Creates the run directory with mode 700 (and waits for it), so that
/// nothing uploaded into it is readable by other users of that machine.
fn prepare_run_dir(client: &Client<'_>, run_dir: &str) -> Result<(), Error> {
    let body = plan::start_request(&plan::prepare_command(run_dir), None, plan::PREPARE_TIMEOUT_SECS);
    let response = client.post_json(plan::EXECUTE_PATH, &body)?;
    if !response.ok() {
        return Err(status_error("execute_bash_command", response.status, &response.text()));
    }
    let output = plan::parse_output(&response.text()).map_err(Error::Internal)?;
    match output.exit_code {
        Some(0) => Ok(()),
        code => Err(Error::InvalidInput(format!(
            "cannot create the run directory {run_dir} on the agent-server (exit code {}): {}; check workspace_base",
            code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
            output.stderr.trim()
        ))),
    }
}

/// Uploads `bytes` to `path` on the agent-server.
fn upload(client: &Client<'_>, path: &str, filename: &str, bytes: &[u8]) -> Result<(), Error> {
    let (content_type, body) = archive::multipart("file", filename, bytes);
    let response = client.post(&plan::upload_path(path), &content_type, &body)?;
    if response.ok() {
        Ok(())
    } else {
        Err(status_error(&format!("upload of {path}"), response.status, &response.text()))
    }
}

/// Where a command is, from its newest output event (and older ones for the
/// end of its output once it is over).
fn status_of(client: &Client<'_>, command_id: &str) -> Result<Status, Error> {
    let page = search(client, command_id, None)?;
    let Some(newest) = page.items.first() else {
        // No output yet. Make sure the agent-server knows the command at all.
        let response = client.get(&plan::event_path(command_id))?;
        return match response.status {
            200..=299 => Ok(Status::Running),
            404 => Ok(Status::Failed(
                format!(
                    "the agent-server has no record of command {command_id} \
                     (restarted with fresh storage, or a different server?)"
                ),
                plan::Output { exit_code: None, stdout: String::new(), stderr: String::new(), truncated: false },
            )),
            status => Err(status_error("bash event", status, &response.text())),
        };
    };
    if newest.exit_code.is_none() {
        return Ok(Status::Running);
    }
    let mut tail = plan::OutputTail::new(newest.clone());
    let mut next = page.next_page_id;
    let mut fetched = 0;
    while tail.wants_more() && fetched < plan::MAX_EXTRA_CHUNKS {
        let Some(page_id) = next.take() else { break };
        let older = search(client, command_id, Some(&page_id))?;
        let Some(event) = older.items.first() else { break };
        tail.add_older(event);
        next = older.next_page_id;
        fetched += 1;
    }
    let (last, output) = tail.finish();
    Ok(plan::final_status(&last, output))
}

fn search(client: &Client<'_>, command_id: &str, page_id: Option<&str>) -> Result<plan::Page, Error> {
    let response = client.get(&plan::search_path(command_id, page_id))?;
    if !response.ok() {
        return Err(status_error("bash_events/search", response.status, &response.text()));
    }
    plan::parse_page(&response.text()).map_err(Error::Internal)
}

/// Best effort: removes the run directory with a short command of its own.
fn remove_run_dir(client: &Client<'_>, run_dir: &str) {
    let body = plan::start_request(&plan::cleanup_command(run_dir), None, plan::CLEANUP_TIMEOUT_SECS);
    match client.post_json(plan::START_PATH, &body) {
        Ok(r) if r.ok() => {}
        Ok(r) => log::warn(&format!("cannot remove {run_dir} on the agent-server: answer {}: {}", r.status, r.text())),
        Err(e) => log::warn(&format!("cannot remove {run_dir} on the agent-server: {e}")),
    }
}

fn run_status(status: Status) -> RunStatus {
    let out =
        |o: plan::Output| Output { exit_code: o.exit_code, stdout: o.stdout, stderr: o.stderr, truncated: o.truncated };
    match status {
        Status::Running => RunStatus::Running,
        Status::Succeeded(o) => RunStatus::Succeeded(out(o)),
        Status::Failed(why, o) => RunStatus::Failed(why, out(o)),
        Status::TimedOut(o) => RunStatus::TimedOut(out(o)),
    }
}

automation_plugin::export_executor!(AgentServer);
