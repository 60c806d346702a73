//! `automation-host plugin call`: the plugin author's loop. Loads a
//! component, calls one export with JSON input, and prints the result with
//! the call's logs, output, time, peak memory and fuel.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::plugins::manifest::{Capability, Grant, Grants, Kind, Manifest};
use crate::plugins::{
    Bundle, CallReport, ExecStatus, FilterEvent, Plugin, RunContext, Runtime, Source, SourceOutcome, SourceRequest,
};

/// What to call.
#[derive(Debug, Clone, clap::Args)]
pub struct CallArgs {
    /// The component (`.wasm`).
    pub file: PathBuf,
    /// The export: validate, matches (filters); describe, render (presets);
    /// describe, start, poll, cancel (executors); describe, verify
    /// (sources). `start` then polls the run to its end.
    pub export: String,
    /// JSON input: a file, or `-` for stdin. The shapes are in the README of
    /// guest-examples/.
    #[arg(long, short)]
    pub input: Option<String>,
    /// The plugin kind (default: detected from the component's exports).
    #[arg(long)]
    pub kind: Option<String>,
    /// Capabilities to grant (kv, http, sandbox), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub grant: Vec<String>,
    /// Hosts `http` may reach, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub allow_host: Vec<String>,
}

/// Runs the command; returns the process exit code (0: the call succeeded).
pub async fn call(args: CallArgs, cache_dir: PathBuf) -> anyhow::Result<i32> {
    let wasm = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let input: Value = match args.input.as_deref() {
        None => Value::Null,
        Some("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            serde_json::from_str(&text).context("stdin is not JSON")?
        }
        Some(path) => {
            serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?)
                .with_context(|| format!("{path} is not JSON"))?
        }
    };
    let work = std::env::temp_dir().join(format!("automation-plugin-call-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let name = plugin_name(&args.file);
    let mut capabilities = std::collections::BTreeSet::new();
    for c in &args.grant {
        capabilities
            .insert(Capability::parse(c).ok_or_else(|| anyhow!("unknown capability {c:?} (kv, http, sandbox)"))?);
    }
    let hosts: std::collections::BTreeSet<String> = args.allow_host.iter().map(|h| h.to_ascii_lowercase()).collect();
    let mut grants = Grants::default();
    grants.grant_by_name(&name, Grant { capabilities: capabilities.clone(), allowed_hosts: hosts.clone() });
    let runtime = Runtime::standalone(&work, &cache_dir, grants, true)?;
    let kind = match args.kind.as_deref() {
        Some(k) => Kind::parse(k).ok_or_else(|| anyhow!("--kind must be filter, preset, executor or source"))?,
        None => detect_kind(&wasm)?,
    };
    let manifest = Manifest { capabilities, allowed_hosts: hosts, ..Manifest::new(name, kind) };
    let started = std::time::Instant::now();
    let plugin = tokio::task::block_in_place(|| runtime.load(manifest, &wasm, Source::Directory, None))
        .map_err(|e| anyhow!("{e}"))?;
    eprintln!(
        "loaded {} ({} plugin) in {:.1} ms",
        plugin.name(),
        kind.as_str(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    let code = tokio::task::block_in_place(|| invoke(&runtime, &plugin, &args.export, &input))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(code)
}

fn plugin_name(file: &Path) -> String {
    let stem = file.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let name: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() { "plugin".to_owned() } else { name }
}

/// The kind, from the component's exports, read without compiling it (the
/// load that follows compiles once).
fn detect_kind(wasm: &[u8]) -> anyhow::Result<Kind> {
    let inventory = crate::plugins::inspect::inventory(wasm, u32::MAX).map_err(|e| anyhow!("{e}"))?;
    for export in &inventory.exports {
        for kind in Kind::ALL {
            if export.split('@').next() == Some(kind.export()) {
                return Ok(kind);
            }
        }
    }
    bail!("the component exports none of automation:plugin/filter, preset, executor or source; pass --kind")
}

fn print(result: Value, report: &CallReport) {
    let out = json!({
        "result": result,
        "logs": report.logs,
        "stdout": report.stdout,
        "stderr": report.stderr,
        "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
        "peak_memory_bytes": report.peak_memory,
        "fuel": report.fuel,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}

fn outcome<T: serde::Serialize>(r: Result<T, crate::plugins::CallError>, report: &CallReport) -> i32 {
    match r {
        Ok(v) => {
            print(json!({"ok": v}), report);
            0
        }
        Err(e) => {
            print(json!({"error": e.to_string()}), report);
            1
        }
    }
}

fn invoke(rt: &Runtime, plugin: &Plugin, export: &str, input: &Value) -> anyhow::Result<i32> {
    let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    Ok(match export {
        "validate" => {
            let expr = input.get("expression").or(Some(input)).map(text).unwrap_or_default();
            let (r, report) = rt.filter_validate(plugin, &expr);
            outcome(r, &report)
        }
        "matches" => {
            let exprs: Vec<String> =
                input["expressions"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default();
            let event = FilterEvent {
                id: uuid::Uuid::now_v7(),
                source: input["source"].as_str().unwrap_or("cli").to_owned(),
                key: input["key"].as_str().unwrap_or("").to_owned(),
                payload: input.get("payload").cloned().unwrap_or(json!({})).to_string(),
                received_at: crate::model::now(),
            };
            let (r, report) = rt.filter_matches_fresh(plugin, &event, &exprs);
            let r = r.map(|v| {
                v.into_iter()
                    .map(|x| match x {
                        Ok(b) => json!({"matches": b}),
                        Err(e) => json!({"error": e.message}),
                    })
                    .collect::<Vec<_>>()
            });
            outcome(r, &report)
        }
        "describe" => {
            let (r, report) = match rt.describe(plugin) {
                Ok((d, report)) => (Ok(d), report),
                Err(e) => (Err(e), CallReport::default()),
            };
            outcome(r, &report)
        }
        "verify" => {
            // {"headers": {"name": "value"}, "body": "<text>" or {...}, "secret": "..."}
            let headers = input["headers"]
                .as_object()
                .map(|h| h.iter().map(|(k, v)| (k.to_ascii_lowercase(), text(v))).collect())
                .unwrap_or_default();
            let body = input.get("body").map(text).unwrap_or_default().into_bytes();
            let secret = input["secret"].as_str().unwrap_or_default();
            let (r, report) = rt.source_verify(plugin, SourceRequest { headers, body }, secret);
            let r = r.map(|o| match o {
                SourceOutcome::Deliver { key, delivery_id, payload } => {
                    json!({"deliver": {"key": key, "delivery_id": delivery_id, "payload": payload}})
                }
                SourceOutcome::Reply { status, content_type, body } => {
                    json!({"reply": {"status": status, "content_type": content_type, "body": body}})
                }
            });
            outcome(r, &report)
        }
        "render" => {
            let config = input.get("config").cloned().unwrap_or_else(|| input.clone());
            let (r, report) = rt.preset_render(plugin, &config.to_string());
            outcome(r.map(|b| bundle_json(&b)), &report)
        }
        "start" => {
            let ctx = context(&input["context"]);
            let bundle = bundle_from(&input["bundle"])?;
            let (r, report) = rt.executor_start(plugin, &ctx, &bundle);
            let handle = match r {
                Ok(h) => h,
                Err(e) => return Ok(outcome::<()>(Err(e), &report)),
            };
            eprintln!("started: handle {handle}; polling until the run ends");
            let deadline = std::time::Instant::now() + ctx.timeout + Duration::from_secs(5);
            loop {
                let (r, report) = rt.executor_poll(plugin, &ctx, &handle);
                match r {
                    Ok(ExecStatus::Running) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    other => break outcome(other.map(|s| status_json(&handle, &s)), &report),
                }
            }
        }
        "poll" | "cancel" => {
            let ctx = context(&input["context"]);
            let handle = input["handle"].as_str().ok_or_else(|| anyhow!("the input needs \"handle\""))?;
            if export == "poll" {
                let (r, report) = rt.executor_poll(plugin, &ctx, handle);
                outcome(r.map(|s| status_json(handle, &s)), &report)
            } else {
                let (r, report) = rt.executor_cancel(plugin, &ctx, handle);
                outcome(r, &report)
            }
        }
        other => bail!("unknown export {other:?}: validate, matches, describe, render, start, poll, cancel or verify"),
    })
}

fn context(v: &Value) -> RunContext {
    let s = |k: &str, d: &str| v[k].as_str().unwrap_or(d).to_owned();
    RunContext {
        run_id: v["run_id"].as_str().and_then(|r| r.parse().ok()).unwrap_or_else(uuid::Uuid::now_v7),
        automation_id: v["automation_id"].as_str().and_then(|r| r.parse().ok()).unwrap_or_else(uuid::Uuid::now_v7),
        automation_name: s("automation_name", "plugin call"),
        attempt: v["attempt"].as_u64().unwrap_or(1) as u32,
        trigger_kind: s("trigger_kind", "manual"),
        trigger_payload: v.get("trigger_payload").map(|p| p.to_string()).unwrap_or_else(|| "{}".to_owned()),
        event_key: v["event_key"].as_str().map(str::to_owned),
        scheduled_for: None,
        config: v.get("config").map(|c| c.to_string()).unwrap_or_else(|| "{}".to_owned()),
        timeout: Duration::from_secs(v["timeout_seconds"].as_u64().unwrap_or(60)),
        callback_url: s("callback_url", "http://127.0.0.1:9/unused"),
        callback_token: s("callback_token", "plugin-call"),
    }
}

fn bundle_from(v: &Value) -> anyhow::Result<Bundle> {
    let mut files = Vec::new();
    for f in v["files"].as_array().into_iter().flatten() {
        let path = f["path"].as_str().ok_or_else(|| anyhow!("bundle.files[].path is required"))?.to_owned();
        let mode = f["mode"].as_u64().unwrap_or(0o644) as u32;
        files.push((path, mode, f["contents"].as_str().unwrap_or("").as_bytes().to_vec()));
    }
    let archive = match v["archive_file"].as_str() {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {p}"))?),
        None => None,
    };
    let env = v["env"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned())).collect())
        .unwrap_or_default();
    Ok(Bundle { archive, files, entrypoint: v["entrypoint"].as_str().unwrap_or("").to_owned(), env })
}

fn bundle_json(b: &Bundle) -> Value {
    json!({
        "archive_bytes": b.archive.as_ref().map(Vec::len),
        "files": b.files.iter().map(|(p, m, c)| json!({"path": p, "mode": format!("{m:o}"), "contents": String::from_utf8_lossy(c)})).collect::<Vec<_>>(),
        "entrypoint": b.entrypoint,
        "env": b.env,
    })
}

fn status_json(handle: &str, s: &ExecStatus) -> Value {
    let (status, detail, output) = match s {
        ExecStatus::Running => ("running", None, None),
        ExecStatus::Succeeded(o) => ("succeeded", None, Some(o)),
        ExecStatus::Failed(why, o) => ("failed", Some(why.as_str()), Some(o)),
        ExecStatus::TimedOut(o) => ("timed_out", None, Some(o)),
        ExecStatus::Cancelled(o) => ("cancelled", None, Some(o)),
    };
    json!({"handle": handle, "status": status, "detail": detail, "output": output})
}
