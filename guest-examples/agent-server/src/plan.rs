//! What the executor decides, without WebAssembly or HTTP: configuration,
//! the run's paths on the agent-server, the environment file, the shell
//! command, the handle, and how the agent-server's answers map to a status.

use serde_json::{Map, Value, json};

/// Where run directories go on the agent-server machine by default.
pub const DEFAULT_WORKSPACE_BASE: &str = "/tmp/automation-runs";

/// How much of stdout and of stderr a finished run keeps (the end of each).
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// How many older output chunks `poll` fetches, at most, to fill
/// [`OUTPUT_LIMIT`] when the final chunk is short. The agent-server splits
/// output into chunks of 1 Mi characters, so one chunk of a stream is enough;
/// the rest allows for the other stream's chunks in between.
pub const MAX_EXTRA_CHUNKS: usize = 4;

/// The timeout (seconds) of the clean-up command that removes a run directory.
pub const CLEANUP_TIMEOUT_SECS: u64 = 120;

/// JSON Schema of the executor configuration.
pub const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "required": ["url"],
  "properties": {
    "url": {"type": "string", "pattern": "^https?://", "description": "Base URL of the OpenHands agent-server, such as http://127.0.0.1:8000. Its host must be granted to the plugin (http capability)."},
    "session_api_key": {"type": "string", "writeOnly": true, "description": "Sent as X-Session-API-Key when the agent-server requires one. Write-only: the host never shows it back."},
    "workspace_base": {"type": "string", "default": "/tmp/automation-runs", "description": "Absolute directory on the agent-server machine under which each run gets <workspace_base>/<run id>/."},
    "keep_workspace": {"type": "boolean", "default": false, "description": "Keep the run directory on the agent-server after the run ends (for debugging)."}
  }
}"#;

/// The agent-server's base URL, split the way `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `https` rather than `http`.
    pub https: bool,
    /// `host[:port]`.
    pub authority: String,
    /// A path prefix without a trailing slash (`""` for none).
    pub prefix: String,
}

impl ServerUrl {
    /// Parses `http(s)://host[:port][/prefix]`. User info, queries and
    /// fragments are refused.
    pub fn parse(url: &str) -> Result<ServerUrl, String> {
        let url = url.trim();
        let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("url must start with http:// or https://, got {url:?}"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("url has no host: {url:?}"));
        }
        if authority.contains('@') {
            return Err("url must not carry user info; use session_api_key".to_owned());
        }
        if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("url must be a plain base URL without query, fragment or spaces: {url:?}"));
        }
        if let Some((_, port)) = authority.rsplit_once(':')
            && !authority.ends_with(']')
            && (port.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(format!("url has a bad port: {url:?}"));
        }
        Ok(ServerUrl { https, authority: authority.to_owned(), prefix: path.trim_end_matches('/').to_owned() })
    }

    /// The path and query to request for an API path such as `/api/...`.
    pub fn path(&self, api_path: &str) -> String {
        format!("{}{api_path}", self.prefix)
    }
}

/// The executor configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The agent-server.
    pub url: ServerUrl,
    /// Its session key, if it needs one.
    pub session_api_key: Option<String>,
    /// Absolute directory holding the run directories, normalised.
    pub workspace_base: String,
    /// Keep the run directory after the run.
    pub keep_workspace: bool,
}

impl Config {
    /// Parses the configuration JSON, refusing unknown fields.
    pub fn parse(json: &str) -> Result<Config, String> {
        let value: Value = serde_json::from_str(if json.trim().is_empty() { "{}" } else { json })
            .map_err(|e| format!("executor config is not JSON: {e}"))?;
        let obj = value.as_object().ok_or("executor config must be a JSON object")?;
        let mut url = None;
        let mut session_api_key = None;
        let mut workspace_base = DEFAULT_WORKSPACE_BASE.to_owned();
        let mut keep_workspace = false;
        for (k, v) in obj {
            match k.as_str() {
                "url" => url = Some(ServerUrl::parse(v.as_str().ok_or("url must be a string")?)?),
                "session_api_key" => match v {
                    Value::Null => {}
                    Value::String(s) if s.is_empty() => {}
                    Value::String(s) => {
                        if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
                            return Err("session_api_key must not contain control characters".to_owned());
                        }
                        session_api_key = Some(s.clone());
                    }
                    _ => return Err("session_api_key must be a string".to_owned()),
                },
                "workspace_base" => {
                    workspace_base = normalise_base(v.as_str().ok_or("workspace_base must be a string")?)?;
                }
                "keep_workspace" => keep_workspace = v.as_bool().ok_or("keep_workspace must be true or false")?,
                other => {
                    return Err(format!(
                        "unknown executor config field {other:?} (known: url, session_api_key, workspace_base, keep_workspace)"
                    ));
                }
            }
        }
        let url =
            url.ok_or("executor config needs \"url\", the agent-server's base URL (such as http://127.0.0.1:8000)")?;
        Ok(Config { url, session_api_key, workspace_base, keep_workspace })
    }
}

/// Checks that a workspace base is absolute and plain, and drops trailing slashes.
fn normalise_base(base: &str) -> Result<String, String> {
    if !base.starts_with('/') {
        return Err(format!("workspace_base must be an absolute path, got {base:?}"));
    }
    if base.chars().any(|c| c.is_control()) {
        return Err("workspace_base must not contain control characters".to_owned());
    }
    if base.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("workspace_base must not contain . or .. components, got {base:?}"));
    }
    let trimmed = base.trim_end_matches('/');
    Ok(if trimmed.is_empty() { String::new() } else { trimmed.to_owned() })
}

/// Where a run's files go on the agent-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    /// `<workspace_base>/<run id>`: everything of the run, removed at the end.
    pub run_dir: String,
    /// `<run_dir>/work`: the bundle root and the process's working directory.
    pub work: String,
    /// `<run_dir>/bundle.tar.gz`: the uploaded archive, as uploaded.
    pub archive: String,
    /// `<run_dir>/files.tar.gz`: the rendered files.
    pub files: String,
    /// `<run_dir>/env`: the environment file (sourced, then deleted).
    pub env: String,
}

/// The run's paths under `base` (as normalised by [`Config::parse`]).
pub fn run_paths(base: &str, run_id: &str) -> Result<RunPaths, String> {
    if run_id.is_empty()
        || run_id.len() > 128
        || !run_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("run id {run_id:?} is not usable as a directory name"));
    }
    let run_dir = format!("{base}/{run_id}");
    Ok(RunPaths {
        work: format!("{run_dir}/work"),
        archive: format!("{run_dir}/bundle.tar.gz"),
        files: format!("{run_dir}/files.tar.gz"),
        env: format!("{run_dir}/env"),
        run_dir,
    })
}

/// Quotes a word for a POSIX shell: `'...'`, with each `'` written `'\''`.
pub fn shell_quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// True for names a shell accepts as variables: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The environment file: one `export NAME='value'` line per variable.
/// Refuses names a shell cannot take and values with NUL bytes.
pub fn env_file(vars: &[(String, String)]) -> Result<String, String> {
    let mut out = String::new();
    for (name, value) in vars {
        if !valid_env_name(name) {
            return Err(format!(
                "environment variable name {name:?} is not valid (letters, digits and _, not starting with a digit)"
            ));
        }
        if value.contains('\0') {
            return Err(format!("environment variable {name} contains a NUL byte"));
        }
        out.push_str("export ");
        out.push_str(name);
        out.push('=');
        out.push_str(&shell_quote(value));
        out.push('\n');
    }
    Ok(out)
}

/// The run's identity, handed to the process as environment variables.
pub struct RunVars<'a> {
    /// Run id.
    pub run_id: &'a str,
    /// Automation id.
    pub automation_id: &'a str,
    /// Automation name.
    pub automation_name: &'a str,
    /// Attempt number.
    pub attempt: u32,
    /// `cron`, `event` or `manual`.
    pub trigger_kind: &'a str,
    /// Trigger payload JSON.
    pub trigger_payload: &'a str,
    /// Event key, for events.
    pub event_key: Option<&'a str>,
    /// Completion callback URL.
    pub callback_url: &'a str,
    /// Completion callback token.
    pub callback_token: &'a str,
}

/// The process environment: the bundle's variables, then the run's own
/// `AUTOMATION_*` variables (which win).
pub fn environment(bundle: &[(String, String)], run: &RunVars<'_>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        env.retain(|(name, _)| name != k);
        env.push((k.to_owned(), v.to_owned()));
    };
    for (k, v) in bundle {
        set(k, v);
    }
    set("AUTOMATION_RUN_ID", run.run_id);
    set("AUTOMATION_AUTOMATION_ID", run.automation_id);
    set("AUTOMATION_AUTOMATION_NAME", run.automation_name);
    set("AUTOMATION_ATTEMPT", &run.attempt.to_string());
    set("AUTOMATION_TRIGGER", run.trigger_kind);
    set("AUTOMATION_EVENT_PAYLOAD", run.trigger_payload);
    set("AUTOMATION_EVENT_KEY", run.event_key.unwrap_or(""));
    set("AUTOMATION_CALLBACK_URL", run.callback_url);
    set("AUTOMATION_CALLBACK_TOKEN", run.callback_token);
    env
}

/// Splits an entrypoint into words. No shell syntax is interpreted: each
/// word is quoted on its own.
pub fn entrypoint_words(entrypoint: &str) -> Result<Vec<String>, String> {
    let words: Vec<String> = entrypoint.split_whitespace().map(str::to_owned).collect();
    if words.is_empty() {
        return Err("the bundle has no entrypoint".to_owned());
    }
    if words.iter().any(|w| w.contains('\0')) {
        return Err("the entrypoint contains a NUL byte".to_owned());
    }
    Ok(words)
}

/// Exit code of the command when the environment file cannot be read.
pub const EXIT_ENV_FAILED: i32 = 96;
/// Exit code of the command when `setup.sh` fails.
pub const EXIT_SETUP_FAILED: i32 = 97;
/// Exit code of the command when the bundle cannot be unpacked.
pub const EXIT_UNPACK_FAILED: i32 = 98;

/// The one shell command (run by the agent-server with `/bin/sh -c`) that
/// carries out the run: source and delete the environment file, unpack the
/// archive and then the files into a fresh work directory, run `setup.sh` if
/// there is one, and `exec` the entrypoint. Every path and every entrypoint
/// word is single-quoted; no variable of the run's environment is used by
/// the command itself.
pub fn run_command(paths: &RunPaths, has_archive: bool, has_files: bool, words: &[String]) -> String {
    let q = shell_quote;
    let env = q(&paths.env);
    let work = q(&paths.work);
    let mut parts = vec![format!(
        "if chmod 600 {env} && . {env}; then rm -f {env}; else rm -f {env}; \
         echo 'agent-server executor: cannot read the environment file' >&2; exit {EXIT_ENV_FAILED}; fi"
    )];
    let mut unpack = vec![format!("rm -rf {work}"), format!("mkdir -p {work}")];
    let mut remove = Vec::new();
    if has_archive {
        unpack.push(format!("tar xzf {} -C {work}", q(&paths.archive)));
        remove.push(q(&paths.archive));
    }
    if has_files {
        unpack.push(format!("tar xzf {} -C {work}", q(&paths.files)));
        remove.push(q(&paths.files));
    }
    if !remove.is_empty() {
        unpack.push(format!("rm -f {}", remove.join(" ")));
    }
    unpack.push(format!("cd {work}"));
    parts.push(format!(
        "{} || {{ echo 'agent-server executor: cannot unpack the bundle' >&2; exit {EXIT_UNPACK_FAILED}; }}",
        unpack.join(" && ")
    ));
    parts.push(format!(
        "if [ -f setup.sh ]; then bash setup.sh || {{ echo \"setup.sh failed with exit code $?\" >&2; exit {EXIT_SETUP_FAILED}; }}; fi"
    ));
    let words: Vec<String> = words.iter().map(|w| q(w)).collect();
    parts.push(format!("exec {}", words.join(" ")));
    parts.join("; ")
}

/// The command that creates the run directory, readable by the
/// agent-server's user only, before anything is uploaded into it (the
/// agent-server writes uploads with its umask, and the environment file
/// holds secrets). Run with `execute_bash_command`, which waits for it.
pub fn prepare_command(run_dir: &str) -> String {
    let dir = shell_quote(run_dir);
    format!("mkdir -p -- {dir} && chmod 700 -- {dir}")
}

/// `POST` path that runs a short command and answers with its output.
pub const EXECUTE_PATH: &str = "/api/bash/execute_bash_command";

/// The timeout (seconds) of the command that prepares the run directory.
pub const PREPARE_TIMEOUT_SECS: u64 = 30;

/// The command that removes a run directory.
pub fn cleanup_command(run_dir: &str) -> String {
    format!("rm -rf -- {}", shell_quote(run_dir))
}

/// The run's timeout in whole seconds for the agent-server (rounded up, at least 1).
pub fn timeout_secs(timeout_ms: u64) -> u64 {
    timeout_ms.div_ceil(1000).max(1)
}

/// The JSON body of `POST /api/bash/start_bash_command`.
pub fn start_request(command: &str, cwd: Option<&str>, timeout_secs: u64) -> String {
    let mut body = Map::new();
    body.insert("command".to_owned(), json!(command));
    if let Some(cwd) = cwd {
        body.insert("cwd".to_owned(), json!(cwd));
    }
    body.insert("timeout".to_owned(), json!(timeout_secs));
    Value::Object(body).to_string()
}

/// What `poll` and `cancel` need to find a run again. Stored by the host in
/// plain text: it holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    /// The agent-server's command id (32 hex digits as it returns them).
    pub command_id: String,
    /// The run directory on the agent-server.
    pub run_dir: String,
}

impl Handle {
    /// `{"v":1,"command_id":"...","run_dir":"..."}`.
    pub fn encode(&self) -> String {
        json!({"v": 1, "command_id": self.command_id, "run_dir": self.run_dir}).to_string()
    }

    /// Reads a handle back, checking what goes into URLs and commands.
    pub fn decode(text: &str) -> Result<Handle, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not an agent-server handle: {e}"))?;
        if value.get("v").and_then(Value::as_u64) != Some(1) {
            return Err("not an agent-server handle (version 1)".to_owned());
        }
        let field =
            |k: &str| value.get(k).and_then(Value::as_str).ok_or_else(|| format!("agent-server handle lacks {k}"));
        let command_id = field("command_id")?.to_owned();
        let run_dir = field("run_dir")?.to_owned();
        if !valid_command_id(&command_id) {
            return Err(format!("bad command id in handle: {command_id:?}"));
        }
        if !run_dir.starts_with('/') || run_dir.split('/').any(|c| c == "..") || run_dir.chars().any(|c| c.is_control())
        {
            return Err(format!("bad run directory in handle: {run_dir:?}"));
        }
        Ok(Handle { command_id, run_dir })
    }
}

/// A command id as the agent-server writes it: a UUID, usually as 32 hex digits.
pub fn valid_command_id(id: &str) -> bool {
    let hex = id.bytes().filter(|b| b.is_ascii_hexdigit()).count();
    hex == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') && id.len() <= 36
}

/// Percent-encodes a query value (everything but unreserved characters and `/`).
pub fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST` path that uploads a file to `path` on the agent-server.
pub fn upload_path(path: &str) -> String {
    format!("/api/file/upload?path={}", encode_query(path))
}

/// `POST` path that starts a command.
pub const START_PATH: &str = "/api/bash/start_bash_command";

/// `POST` path that stops a command (agent-server 1.58: SIGTERM to its
/// process group, SIGKILL a second later; 200 for a finished one, 404 for an
/// unknown id).
pub fn stop_path(command_id: &str) -> String {
    format!("/api/bash/bash_commands/{command_id}/stop")
}

/// `GET` path of one bash event (the command itself when given its id).
pub fn event_path(command_id: &str) -> String {
    format!("/api/bash/bash_events/{command_id}")
}

/// `GET` path that returns the newest output event of a command (then,
/// with `page_id`, the next older one).
pub fn search_path(command_id: &str, page_id: Option<&str>) -> String {
    let mut path = format!(
        "/api/bash/bash_events/search?kind__eq=BashOutput&command_id__eq={command_id}&sort_order=TIMESTAMP_DESC&limit=1"
    );
    if let Some(page) = page_id {
        path.push_str("&page_id=");
        path.push_str(&encode_query(page));
    }
    path
}

/// Reads the command id from the answer to `start_bash_command`.
pub fn parse_started(body: &str) -> Result<String, String> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| format!("start_bash_command answered with something else than JSON: {e}"))?;
    let id = value.get("id").and_then(Value::as_str).ok_or("start_bash_command's answer has no id")?;
    if !valid_command_id(id) {
        return Err(format!("start_bash_command returned a strange id {id:?}"));
    }
    Ok(id.to_owned())
}

/// One `BashOutput` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BashOutput {
    /// Position among the command's output events, from 0.
    pub order: u64,
    /// `None` while the command runs; set on its last event only.
    pub exit_code: Option<i64>,
    /// Standard output in this event.
    pub stdout: String,
    /// Standard error in this event.
    pub stderr: String,
}

/// One page of `bash_events/search`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The events.
    pub items: Vec<BashOutput>,
    /// The cursor of the next page, if any.
    pub next_page_id: Option<String>,
}

/// Parses an answer of `bash_events/search` (events other than `BashOutput` are skipped).
pub fn parse_page(body: &str) -> Result<Page, String> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| format!("bash_events/search answered with something else than JSON: {e}"))?;
    let items = value.get("items").and_then(Value::as_array).ok_or("bash_events/search's answer has no items")?;
    let items = items
        .iter()
        .filter(|item| item.get("kind").and_then(Value::as_str).is_none_or(|k| k == "BashOutput"))
        .map(bash_output)
        .collect();
    let next_page_id = value.get("next_page_id").and_then(Value::as_str).map(str::to_owned);
    Ok(Page { items, next_page_id })
}

/// Parses the answer of `execute_bash_command`: one `BashOutput`, all of it.
pub fn parse_output(body: &str) -> Result<BashOutput, String> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| format!("execute_bash_command answered with something else than JSON: {e}"))?;
    if value.get("kind").and_then(Value::as_str) != Some("BashOutput") {
        return Err("execute_bash_command's answer is not a BashOutput".to_owned());
    }
    Ok(bash_output(&value))
}

fn bash_output(item: &Value) -> BashOutput {
    let text = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    BashOutput {
        order: item.get("order").and_then(Value::as_u64).unwrap_or(0),
        exit_code: item.get("exit_code").and_then(Value::as_i64),
        stdout: text("stdout"),
        stderr: text("stderr"),
    }
}

/// Keeps the last `limit` bytes of `s` (at a character boundary); true if it cut.
pub fn keep_end(s: &str, limit: usize) -> (String, bool) {
    if s.len() <= limit {
        return (s.to_owned(), false);
    }
    let mut start = s.len() - limit;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    (s[start..].to_owned(), true)
}

/// Gathers the end of a finished command's output, from its last event
/// backwards.
#[derive(Debug)]
pub struct OutputTail {
    /// Pieces of stdout, newest first.
    stdout: Vec<String>,
    stdout_len: usize,
    /// Pieces of stderr, newest first.
    stderr: Vec<String>,
    stderr_len: usize,
    /// Older events not read yet.
    older: u64,
    /// The final event.
    last: BashOutput,
}

impl OutputTail {
    /// Starts from the command's final event.
    pub fn new(last: BashOutput) -> OutputTail {
        let mut tail = OutputTail {
            stdout: Vec::new(),
            stdout_len: 0,
            stderr: Vec::new(),
            stderr_len: 0,
            older: last.order,
            last: last.clone(),
        };
        tail.push(&last);
        tail
    }

    fn push(&mut self, event: &BashOutput) {
        if self.stdout_len < OUTPUT_LIMIT && !event.stdout.is_empty() {
            self.stdout_len += event.stdout.len();
            self.stdout.push(event.stdout.clone());
        }
        if self.stderr_len < OUTPUT_LIMIT && !event.stderr.is_empty() {
            self.stderr_len += event.stderr.len();
            self.stderr.push(event.stderr.clone());
        }
    }

    /// True if older events exist and a stream is still short of the limit.
    pub fn wants_more(&self) -> bool {
        self.older > 0 && (self.stdout_len < OUTPUT_LIMIT || self.stderr_len < OUTPUT_LIMIT)
    }

    /// Adds the next older event.
    pub fn add_older(&mut self, event: &BashOutput) {
        self.older = self.older.saturating_sub(1).min(event.order);
        self.push(event);
    }

    /// The kept output; `truncated` if anything was cut or left unread.
    pub fn finish(self) -> (BashOutput, Output) {
        let join = |parts: &[String]| parts.iter().rev().map(String::as_str).collect::<String>();
        let (stdout, cut_out) = keep_end(&join(&self.stdout), OUTPUT_LIMIT);
        let (stderr, cut_err) = keep_end(&join(&self.stderr), OUTPUT_LIMIT);
        let truncated = cut_out || cut_err || self.older > 0;
        (self.last, Output { exit_code: None, stdout, stderr, truncated })
    }
}

/// A run's output, as the host's `run-output` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit code, when the process exited.
    pub exit_code: Option<i32>,
    /// The end of stdout.
    pub stdout: String,
    /// The end of stderr.
    pub stderr: String,
    /// True if stdout or stderr was cut.
    pub truncated: bool,
}

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Still running.
    Running,
    /// Exit code 0.
    Succeeded(Output),
    /// Any other end, and why.
    Failed(String, Output),
    /// The agent-server's timeout (the run's) stopped it.
    TimedOut(Output),
}

/// The text the agent-server puts on stderr when it could not start a command.
const START_ERROR_PREFIX: &str = "Error executing command:";

/// Maps a command's final event (and its gathered output) to a status.
///
/// Agent-server 1.58 reports: the exit code; `-1` when its timeout killed the
/// command, or when the command could not start (then stderr begins with
/// "Error executing command:"); `-N` when signal N killed the shell (a stop
/// request sends SIGTERM: `-15`).
pub fn final_status(last: &BashOutput, mut output: Output) -> Status {
    let Some(code) = last.exit_code else {
        return Status::Running;
    };
    let code32 = i32::try_from(code).unwrap_or(i32::MIN);
    match code {
        0 => {
            output.exit_code = Some(0);
            Status::Succeeded(output)
        }
        -1 if last.stderr.starts_with(START_ERROR_PREFIX) => {
            Status::Failed(format!("the agent-server could not start the command: {}", last.stderr.trim()), output)
        }
        -1 => Status::TimedOut(output),
        c if c < 0 => Status::Failed(format!("killed by signal {}", -c), output),
        c => {
            output.exit_code = Some(code32);
            let why = match code32 {
                EXIT_ENV_FAILED => format!("exit code {c} (the environment file could not be read)"),
                EXIT_UNPACK_FAILED => format!("exit code {c} (the bundle could not be unpacked)"),
                EXIT_SETUP_FAILED => format!("exit code {c} (setup.sh failed)"),
                _ => format!("exit code {c}"),
            };
            Status::Failed(why, output)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn status_of_fixture(name: &str) -> Status {
        let page = parse_page(&fixture(name)).unwrap();
        match page.items.first() {
            None => Status::Running,
            Some(last) => {
                let (last, output) = OutputTail::new(last.clone()).finish();
                final_status(&last, output)
            }
        }
    }

    #[test]
    fn config_parses_and_refuses_unknown_fields() {
        let c = Config::parse(r#"{"url": "http://127.0.0.1:8000"}"#).unwrap();
        assert_eq!(c.url, ServerUrl { https: false, authority: "127.0.0.1:8000".into(), prefix: String::new() });
        assert_eq!(c.workspace_base, DEFAULT_WORKSPACE_BASE);
        assert_eq!(c.session_api_key, None);
        assert!(!c.keep_workspace);
        let c = Config::parse(
            r#"{"url": "https://agents.example/base/", "session_api_key": "k", "workspace_base": "/srv/runs//", "keep_workspace": true}"#,
        )
        .unwrap();
        assert!(c.url.https);
        assert_eq!(c.url.authority, "agents.example");
        assert_eq!(c.url.path("/api/x"), "/base/api/x");
        assert_eq!(c.session_api_key.as_deref(), Some("k"));
        assert_eq!(c.workspace_base, "/srv/runs");
        assert!(c.keep_workspace);
        assert!(Config::parse("{}").unwrap_err().contains("url"));
        assert!(Config::parse("").unwrap_err().contains("url"));
        assert!(Config::parse(r#"{"url": "http://h", "env": {}}"#).unwrap_err().contains("env"));
        assert!(Config::parse(r#"{"url": "ftp://h"}"#).is_err());
        assert!(Config::parse(r#"{"url": "http://u:p@h"}"#).is_err());
        assert!(Config::parse(r#"{"url": "http://h:99999"}"#).is_err());
        assert!(Config::parse(r#"{"url": "http://h?x=1"}"#).is_err());
        assert!(Config::parse(r#"{"url": "http://"}"#).is_err());
        assert!(Config::parse(r#"{"url": "http://h", "workspace_base": "rel"}"#).is_err());
        assert!(Config::parse(r#"{"url": "http://h", "workspace_base": "/a/../b"}"#).is_err());
        assert!(Config::parse(r#"{"url": "http://h", "keep_workspace": "yes"}"#).is_err());
        assert!(Config::parse(r#"{"url": "http://h", "session_api_key": "a\nb"}"#).is_err());
        assert_eq!(Config::parse(r#"{"url": "http://h", "session_api_key": ""}"#).unwrap().session_api_key, None);
        assert!(Config::parse("[]").is_err());
        assert_eq!(Config::parse(r#"{"url": "http://[::1]:8000"}"#).unwrap().url.authority, "[::1]:8000");
    }

    #[test]
    fn the_schema_is_json_and_names_every_field() {
        let schema: Value = serde_json::from_str(CONFIG_SCHEMA).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for k in ["url", "session_api_key", "workspace_base", "keep_workspace"] {
            assert!(props.contains_key(k), "{k}");
        }
        assert_eq!(schema["additionalProperties"], json!(false));
    }

    #[test]
    fn run_paths_refuse_strange_run_ids() {
        let p = run_paths("/tmp/automation-runs", "0b6c2d1e-aaaa-4bbb-8ccc-123456789abc").unwrap();
        assert_eq!(p.run_dir, "/tmp/automation-runs/0b6c2d1e-aaaa-4bbb-8ccc-123456789abc");
        assert_eq!(p.work, format!("{}/work", p.run_dir));
        assert_eq!(p.env, format!("{}/env", p.run_dir));
        assert_eq!(run_paths("", "r1").unwrap().run_dir, "/r1");
        for bad in ["", "..", "a/b", "a b", "x'y"] {
            assert!(run_paths("/t", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quoting_survives_every_shell_character() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("''"), r"''\'''\'''");
        assert_eq!(shell_quote("$(rm -rf /) `x` \"y\" \\ ; & | \n"), "'$(rm -rf /) `x` \"y\" \\ ; & | \n'");
    }

    #[test]
    fn env_file_quotes_values_and_checks_names() {
        let vars = vec![("A".to_owned(), "1".to_owned()), ("_B2".to_owned(), "it's $HOME\nline 2".to_owned())];
        assert_eq!(env_file(&vars).unwrap(), "export A='1'\nexport _B2='it'\\''s $HOME\nline 2'\n");
        for bad in ["", "1A", "A-B", "A B", "É", "A=B"] {
            assert!(env_file(&[(bad.to_owned(), "v".to_owned())]).is_err(), "{bad:?}");
        }
        assert!(env_file(&[("A".to_owned(), "a\0b".to_owned())]).is_err());
        assert!(valid_env_name("_") && valid_env_name("a1_B") && !valid_env_name("9"));
    }

    #[test]
    fn run_variables_win_over_the_bundle() {
        let vars = RunVars {
            run_id: "r",
            automation_id: "a",
            automation_name: "n",
            attempt: 2,
            trigger_kind: "event",
            trigger_payload: "{\"x\":1}",
            event_key: None,
            callback_url: "http://cb",
            callback_token: "t",
        };
        let bundle = vec![("X".to_owned(), "b".to_owned()), ("AUTOMATION_RUN_ID".to_owned(), "spoof".to_owned())];
        let env = environment(&bundle, &vars);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("X"), Some("b"));
        assert_eq!(get("AUTOMATION_RUN_ID"), Some("r"));
        assert_eq!(get("AUTOMATION_EVENT_KEY"), Some(""));
        assert_eq!(get("AUTOMATION_ATTEMPT"), Some("2"));
        assert_eq!(get("AUTOMATION_EVENT_PAYLOAD"), Some("{\"x\":1}"));
        assert_eq!(get("AUTOMATION_CALLBACK_TOKEN"), Some("t"));
        assert_eq!(env.iter().filter(|(n, _)| n == "AUTOMATION_RUN_ID").count(), 1);
    }

    #[test]
    fn the_command_quotes_paths_and_entrypoint_words() {
        let p = run_paths("/tmp/it's", "r1").unwrap();
        let words = entrypoint_words("python3  main.py $(id) ;x").unwrap();
        let cmd = run_command(&p, true, true, &words);
        assert_eq!(
            cmd,
            "if chmod 600 '/tmp/it'\\''s/r1/env' && . '/tmp/it'\\''s/r1/env'; then rm -f '/tmp/it'\\''s/r1/env'; \
             else rm -f '/tmp/it'\\''s/r1/env'; echo 'agent-server executor: cannot read the environment file' >&2; exit 96; fi; \
             rm -rf '/tmp/it'\\''s/r1/work' && mkdir -p '/tmp/it'\\''s/r1/work' \
             && tar xzf '/tmp/it'\\''s/r1/bundle.tar.gz' -C '/tmp/it'\\''s/r1/work' \
             && tar xzf '/tmp/it'\\''s/r1/files.tar.gz' -C '/tmp/it'\\''s/r1/work' \
             && rm -f '/tmp/it'\\''s/r1/bundle.tar.gz' '/tmp/it'\\''s/r1/files.tar.gz' \
             && cd '/tmp/it'\\''s/r1/work' || { echo 'agent-server executor: cannot unpack the bundle' >&2; exit 98; }; \
             if [ -f setup.sh ]; then bash setup.sh || { echo \"setup.sh failed with exit code $?\" >&2; exit 97; }; fi; \
             exec 'python3' 'main.py' '$(id)' ';x'"
        );
        let only_files = run_command(&p, false, true, &["./main.sh".to_owned()]);
        assert!(!only_files.contains("bundle.tar.gz"));
        assert!(only_files.contains("rm -f '/tmp/it'\\''s/r1/files.tar.gz' && cd"));
        let neither = run_command(&p, false, false, &["true".to_owned()]);
        assert!(neither.contains("mkdir -p '/tmp/it'\\''s/r1/work' && cd '/tmp/it'\\''s/r1/work' ||"));
        assert!(entrypoint_words("  ").is_err());
        assert_eq!(cleanup_command("/t/r"), "rm -rf -- '/t/r'");
        assert_eq!(prepare_command("/t/it's"), "mkdir -p -- '/t/it'\\''s' && chmod 700 -- '/t/it'\\''s'");
    }

    /// Runs the command with a real `/bin/sh` against a fake run directory:
    /// the environment file is sourced and deleted, setup.sh runs, and the
    /// entrypoint's words reach the program unparsed.
    #[cfg(unix)]
    #[test]
    fn the_command_runs_under_sh() {
        let dir = std::env::temp_dir().join(format!("agent-server-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.to_str().unwrap();
        let p = run_paths(base, "run-1").unwrap();
        std::fs::create_dir_all(&p.run_dir).unwrap();
        let env = vec![("GREETING".to_owned(), "it's $(not run)".to_owned())];
        std::fs::write(&p.env, env_file(&env).unwrap()).unwrap();
        let files = vec![
            crate::archive::FileEntry { path: "setup.sh", mode: 0o644, contents: b"echo setup ran > setup.out\n" },
            crate::archive::FileEntry {
                path: "bin/show.sh",
                mode: 0o755,
                contents: b"#!/bin/sh\ncat setup.out; printf '%s|' \"$GREETING\" \"$@\"\n",
            },
        ];
        std::fs::write(&p.files, crate::archive::files_tarball(&files, 1_700_000_000).unwrap()).unwrap();
        let words = entrypoint_words("./bin/show.sh $(x) 'q'").unwrap();
        let out =
            std::process::Command::new("/bin/sh").arg("-c").arg(run_command(&p, false, true, &words)).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(stdout, "setup ran\nit's $(not run)|$(x)|'q'|");
        assert!(!std::path::Path::new(&p.env).exists());
        assert!(!std::path::Path::new(&p.files).exists());
        // A failing setup.sh is reported with exit code 97.
        std::fs::write(&p.env, "").unwrap();
        let files = vec![crate::archive::FileEntry { path: "setup.sh", mode: 0o644, contents: b"exit 4\n" }];
        std::fs::write(&p.files, crate::archive::files_tarball(&files, 0).unwrap()).unwrap();
        let out =
            std::process::Command::new("/bin/sh").arg("-c").arg(run_command(&p, false, true, &words)).output().unwrap();
        assert_eq!(out.status.code(), Some(97));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "setup.sh failed with exit code 4\n");
        // A missing environment file: 96.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(run_command(&p, false, false, &words))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(96));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn timeouts_round_up_to_seconds() {
        assert_eq!(timeout_secs(0), 1);
        assert_eq!(timeout_secs(1), 1);
        assert_eq!(timeout_secs(1000), 1);
        assert_eq!(timeout_secs(1001), 2);
        assert_eq!(timeout_secs(600_000), 600);
        let body: Value = serde_json::from_str(&start_request("echo 'x'", None, 600)).unwrap();
        assert_eq!(body, json!({"command": "echo 'x'", "timeout": 600}));
        let body: Value = serde_json::from_str(&start_request("c", Some("/w"), 1)).unwrap();
        assert_eq!(body["cwd"], json!("/w"));
    }

    #[test]
    fn handles_round_trip_and_are_checked() {
        let h =
            Handle { command_id: "e5e917ec1b48423b86d24024b593a443".into(), run_dir: "/tmp/automation-runs/r".into() };
        let text = h.encode();
        assert_eq!(
            text,
            r#"{"command_id":"e5e917ec1b48423b86d24024b593a443","run_dir":"/tmp/automation-runs/r","v":1}"#
        );
        assert_eq!(Handle::decode(&text).unwrap(), h);
        assert!(!text.contains("key"));
        assert!(Handle::decode("proc-1").is_err());
        assert!(Handle::decode(r#"{"v":2,"command_id":"e5e917ec1b48423b86d24024b593a443","run_dir":"/r"}"#).is_err());
        assert!(Handle::decode(r#"{"v":1,"command_id":"../../x","run_dir":"/r"}"#).is_err());
        assert!(Handle::decode(r#"{"v":1,"command_id":"e5e917ec1b48423b86d24024b593a443","run_dir":"r"}"#).is_err());
        assert!(
            Handle::decode(r#"{"v":1,"command_id":"e5e917ec1b48423b86d24024b593a443","run_dir":"/a/../b"}"#).is_err()
        );
        assert!(valid_command_id("e5e917ec-1b48-423b-86d2-4024b593a443"));
        assert!(!valid_command_id("e5e917ec1b48423b86d24024b593a44"));
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(upload_path("/tmp/a b/x&y=z.tar.gz"), "/api/file/upload?path=/tmp/a%20b/x%26y%3Dz.tar.gz");
        assert_eq!(
            search_path("abc", None),
            "/api/bash/bash_events/search?kind__eq=BashOutput&command_id__eq=abc&sort_order=TIMESTAMP_DESC&limit=1"
        );
        assert!(search_path("abc", Some("2026_BashOutput_x_y")).ends_with("&limit=1&page_id=2026_BashOutput_x_y"));
        assert_eq!(stop_path("abc"), "/api/bash/bash_commands/abc/stop");
        assert_eq!(event_path("abc"), "/api/bash/bash_events/abc");
    }

    #[test]
    fn recorded_start_answer() {
        let recorded: Value = serde_json::from_str(&fixture("start-response.json")).unwrap();
        let id = parse_started(&fixture("start-response.json")).unwrap();
        assert_eq!(id, recorded["id"].as_str().unwrap());
        assert_eq!(id.len(), 32);
        assert!(parse_started(&fixture("upload-ok.json")).is_err());
        assert!(parse_started("<html>").is_err());
    }

    #[test]
    fn recorded_statuses() {
        assert_eq!(status_of_fixture("search-running-empty.json"), Status::Running);
        // An older chunk of a still-running command has no exit code.
        assert_eq!(status_of_fixture("search-chunked-2.shortened.json"), Status::Running);
        assert_eq!(
            status_of_fixture("search-succeeded.json"),
            Status::Succeeded(Output {
                exit_code: Some(0),
                stdout: "out\n".into(),
                stderr: "err\n".into(),
                truncated: false
            })
        );
        assert_eq!(
            status_of_fixture("search-exit-3.json"),
            Status::Failed(
                "exit code 3".into(),
                Output { exit_code: Some(3), stdout: "partial\n".into(), stderr: "boom\n".into(), truncated: false }
            )
        );
        assert_eq!(
            status_of_fixture("search-timed-out.json"),
            Status::TimedOut(Output {
                exit_code: None,
                stdout: "before\n".into(),
                stderr: String::new(),
                truncated: false
            })
        );
        match status_of_fixture("search-start-error.json") {
            Status::Failed(why, out) => {
                assert!(
                    why.starts_with("the agent-server could not start the command: Error executing command:"),
                    "{why}"
                );
                assert_eq!(out.exit_code, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            status_of_fixture("search-stopped.json"),
            Status::Failed(
                "killed by signal 15".into(),
                Output { exit_code: None, stdout: String::new(), stderr: String::new(), truncated: false }
            )
        );
        match status_of_fixture("search-stopped-trap.json") {
            Status::Failed(why, out) => {
                assert_eq!(why, "exit code 143");
                assert_eq!(out.stdout, "started\ngot term\n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn our_own_exit_codes_are_explained() {
        let last = BashOutput { order: 0, exit_code: Some(97), stdout: String::new(), stderr: String::new() };
        let out = Output { exit_code: None, stdout: String::new(), stderr: String::new(), truncated: false };
        assert_eq!(
            final_status(&last, out.clone()),
            Status::Failed("exit code 97 (setup.sh failed)".into(), Output { exit_code: Some(97), ..out })
        );
    }

    #[test]
    fn chunked_output_is_gathered_from_the_end() {
        // The recorded pages, newest first: order 2 (final), 1, 0.
        let pages: Vec<Page> = [
            "search-chunked-1-final.shortened.json",
            "search-chunked-2.shortened.json",
            "search-chunked-3.shortened.json",
        ]
        .iter()
        .map(|f| parse_page(&fixture(f)).unwrap())
        .collect();
        assert_eq!(pages[0].items[0].order, 2);
        assert!(pages[0].next_page_id.as_deref().unwrap().contains("_BashOutput_"));
        assert_eq!(pages[2].next_page_id, None);
        let mut tail = OutputTail::new(pages[0].items[0].clone());
        let mut next = 1;
        while tail.wants_more() {
            tail.add_older(&pages[next].items[0]);
            next += 1;
        }
        // The shortened fixtures are small, so every chunk is read.
        assert_eq!(next, 3);
        let (last, out) = tail.finish();
        assert!(!out.truncated);
        assert!(out.stdout.ends_with("aaaa\ntail-of-stdout\n"));
        assert!(out.stdout.starts_with("[1048576 chars shortened"));
        assert_eq!(out.stderr, "some-err\n");
        assert!(matches!(final_status(&last, out), Status::Succeeded(_)));
        // The ascending listing holds the same three events.
        let all = parse_page(&fixture("search-chunked-all-asc.shortened.json")).unwrap();
        assert_eq!(all.items.iter().map(|i| i.order).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(all.items.iter().map(|i| i.exit_code).collect::<Vec<_>>(), [None, None, Some(0)]);
    }

    #[test]
    fn long_output_keeps_its_end() {
        let big = "x".repeat(OUTPUT_LIMIT) + "END";
        let last = BashOutput { order: 1, exit_code: Some(1), stdout: "tail\n".into(), stderr: "e".into() };
        let mut tail = OutputTail::new(last);
        assert!(tail.wants_more());
        tail.add_older(&BashOutput { order: 0, exit_code: None, stdout: big, stderr: String::new() });
        assert!(!tail.wants_more());
        let (_, out) = tail.finish();
        assert!(out.truncated);
        assert_eq!(out.stdout.len(), OUTPUT_LIMIT);
        assert!(out.stdout.ends_with("xxENDtail\n"));
        assert_eq!(out.stderr, "e");
        // Unread older chunks count as truncation too.
        let (_, out) =
            OutputTail::new(BashOutput { order: 3, exit_code: Some(0), stdout: "s".into(), stderr: String::new() })
                .finish();
        assert!(out.truncated);
        // Cuts land on character boundaries.
        assert_eq!(keep_end("ééé", 3), ("é".to_owned(), true));
        assert_eq!(keep_end("abc", 3), ("abc".to_owned(), false));
    }

    #[test]
    fn recorded_execute_answers() {
        let ok = parse_output(&fixture("execute-ok.json")).unwrap();
        assert_eq!((ok.exit_code, ok.stdout.as_str(), ok.stderr.as_str()), (Some(0), "", ""));
        let failed = parse_output(&fixture("execute-failed.json")).unwrap();
        assert_eq!(failed.exit_code, Some(1));
        assert!(failed.stderr.starts_with("mkdir: cannot create directory"));
        assert!(parse_output(&fixture("search-succeeded.json")).is_err());
    }

    #[test]
    fn other_recorded_answers_parse() {
        assert!(parse_page(&fixture("search-bad-uuid-422.json")).is_err());
        let info: Value = serde_json::from_str(&fixture("server-info.json")).unwrap();
        assert_eq!(info["version"], json!("1.58.2"));
        let cmd: Value = serde_json::from_str(&fixture("command-event.json")).unwrap();
        assert_eq!(cmd["kind"], json!("BashCommand"));
        assert_eq!(serde_json::from_str::<Value>(&fixture("stop-ok.json")).unwrap(), json!({"success": true}));
    }
}
