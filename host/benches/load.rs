//! Macro benchmarks: the real `automation-host` binary on loopback, driven
//! over HTTP. Bounded in requests and time. At the end it rewrites
//! BENCHMARKS.md with these figures and the micro benchmarks' (run `cargo
//! bench --bench micro` first; `just bench` does both).
//!
//! Scenarios (set `LOAD_ONLY=ingest,mixed,e2e,sandbox,scheduler,dispatch,startup,retention,wakeup,scale` to pick):
//! - ingest: signed 14 KB GitHub deliveries, 100 filtered automations, 1/16/64
//!   senders, SQLite and Postgres: throughput, p50/p99 acknowledgement, non-2xx,
//!   and how fast matching drains (the warm-up's backlog is matched before the
//!   measured window); `LOAD_INGEST=sqlite:16,...` picks cases;
//! - e2e: event -> run `succeeded` through the local-sandbox executor, with the
//!   sandbox's full isolation and unconfined (`AUTOMATION_SANDBOX_ISOLATION=none`);
//! - sandbox: runs per second through the local sandbox with a no-op bundle;
//! - scheduler: 10,000 automations due in the same second; steady fire lag;
//! - dispatch: runs per second with a no-op executor, one and two hosts;
//! - startup: time to /ready with cached plugins, idle RSS;
//! - retention: acknowledgement latency while the sweep deletes 90,000 old runs;
//! - wakeup: a run made on one host, claimed by another (Postgres LISTEN/NOTIFY);
//! - mixed: acknowledgements while the runs they make execute through the
//!   isolated local sandbox (SQLite and Postgres, 16 and 64 senders);
//! - scale: matching cost with 100 / 1,000 / 10,000 automations and 1 KB / 14 KB / 1 MB payloads.
//!
//! `LOAD_HOST_BINARY=/path/to/automation-host` runs the scenarios against
//! another build (an interleaved A/B against older code, for example); copy
//! that build's `automation-sandbox` next to it, or the sandbox falls back to
//! re-executing the whole host per run (the driver refuses to start then).

#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automation_host::events::signature::sign;
use serde_json::{Value, json};

const KEY: &str = "bench-admin-key-0123456789";
const SECRET: &str = "bench-webhook-secret";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Sqlite => "SQLite",
            Db::Postgres => "Postgres",
        }
    }
}

struct Server {
    child: Child,
    base: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

fn cache_dir() -> String {
    target_dir().join("bench-plugin-cache").display().to_string()
}

async fn new_pg_db() -> String {
    use sqlx::Connection;
    let admin = std::env::var("AUTOMATION_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("ah_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("Postgres for the benchmarks");
    sqlx::query(&format!("create database {name}")).execute(&mut conn).await.unwrap();
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

fn start(db_url: Option<&str>, env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_at(dir.path(), db_url, env);
    server._dir = Some(dir);
    server
}

/// The binary under test: this build's, or `LOAD_HOST_BINARY`.
///
/// The sandbox's launcher must be next to it: without it the host
/// re-executes itself for every sandboxed process, which once took 39% of
/// the machine's CPU in an A/B run of copied binaries and made the mixed
/// scenario measure that instead.
fn host_binary() -> String {
    let host = std::env::var("LOAD_HOST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_automation-host").to_owned());
    let launcher = Path::new(&host).with_file_name("automation-sandbox");
    assert!(
        launcher.is_file(),
        "{} is missing: copy the build's automation-sandbox next to {host}",
        launcher.display()
    );
    host
}

fn start_at(data_dir: &Path, db_url: Option<&str>, env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(host_binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("AUTOMATION_DATA_DIR", data_dir)
        .env("AUTOMATION_LISTEN", "127.0.0.1:0")
        .env("AUTOMATION_API_KEY", KEY)
        .env("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET)
        .env("AUTOMATION_PLUGIN_CACHE_DIR", cache_dir())
        .env("AUTOMATION_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(url) = db_url {
        cmd.env("AUTOMATION_DATABASE_URL", url);
    }
    // Passed through for profiling the hosts under load (`perf report`
    // then names plugins' compiled functions).
    if let Some(v) = std::env::var_os("AUTOMATION_WASM_PERF_MAP") {
        cmd.env("AUTOMATION_WASM_PERF_MAP", v);
    }
    // LOAD_HOST_ENV=NAME=VALUE,... sets more of the hosts' environment (to
    // compare settings A/B on one build).
    for pair in std::env::var("LOAD_HOST_ENV").unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').expect("LOAD_HOST_ENV is NAME=VALUE,...");
        cmd.env(name, value);
    }
    let mut child = cmd.spawn().expect("start automation-host");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("automation-host listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(120)).expect("the server did not start");
    Server { child, base, _dir: None }
}

/// A signed `issues` delivery of `payload` to the GitHub endpoint.
fn github_issues(c: &reqwest::Client, base: &str, id: String, payload: &str, sig: &str) -> reqwest::RequestBuilder {
    c.post(format!("{base}/v1/events/github"))
        .header("x-github-event", "issues")
        .header("x-github-delivery", id)
        .header("x-hub-signature-256", sig)
        .header("content-type", "application/json")
        .body(payload.as_bytes().to_vec())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(60)).build().unwrap()
}

async fn api(c: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> Value {
    let mut req = c.request(method, url).bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {v}");
    v
}

/// Percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[derive(Default)]
struct Report {
    rows: BTreeMap<String, Vec<String>>, // section -> markdown rows
}

impl Report {
    fn add(&mut self, section: &str, row: String) {
        println!("[{section}] {row}");
        self.rows.entry(section.to_owned()).or_default().push(row);
    }
}

// --- ingestion ---------------------------------------------------------------

/// Waits (up to 300 s) until every delivery of `ids` is matched; whether
/// they all were.
async fn wait_matched(c: &reqwest::Client, base: &str, ids: &[String]) -> bool {
    let wait_from = Instant::now();
    while wait_from.elapsed() < Duration::from_secs(300) {
        let mut all = true;
        for id in ids {
            let d = api(c, reqwest::Method::GET, format!("{base}/v1/events/{id}"), None).await;
            if d["status"] != "matched" {
                all = false;
                break;
            }
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn ingest(report: &mut Report, db: Db, senders: usize) {
    let url = if db == Db::Postgres { Some(new_pg_db().await) } else { None };
    let server = start(url.as_deref(), &[("AUTOMATION_NO_DISPATCH", "true")]);
    let c = client();
    let base = server.base.clone();
    for (i, expr) in common::expressions(100).into_iter().enumerate() {
        let body = json!({
            "name": format!("filtered {i}"),
            "trigger": {"type": "event", "source": "github", "on": ["issues.*"], "filter": expr},
            "preset": {"name": "script", "config": {"script": "true"}},
        });
        api(&c, reqwest::Method::POST, format!("{base}/v1/automations"), Some(body)).await;
    }
    let payload = Arc::new(common::delivery_14kb());
    let sig = Arc::new(sign(SECRET.as_bytes(), payload.as_bytes()));
    let duration = Duration::from_secs(8);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let run = |warmup: bool| {
        let mut tasks = Vec::new();
        let started = Instant::now();
        let limit = if warmup { Duration::from_secs(1) } else { duration };
        for _ in 0..senders {
            let (c, base, payload, sig, counter) =
                (c.clone(), base.clone(), payload.clone(), sig.clone(), counter.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut last = None;
                while started.elapsed() < limit {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let t = Instant::now();
                    let r = github_issues(&c, &base, format!("bench-{n}"), &payload, &sig).send().await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            last = v["id"].as_str().map(str::to_owned);
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors, last)
            }));
        }
        (tasks, started)
    };
    let (warm, _) = run(true);
    let mut warm_ids = Vec::new();
    for t in warm {
        warm_ids.extend(t.await.unwrap().2);
    }
    // The measured window starts with nothing left to match: the warm-up's
    // backlog is not charged to the matching rate measured below.
    wait_matched(&c, &base, &warm_ids).await;
    let matched_count = || async {
        let text = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        metric_sum(&text, "automation_event_match_lag_seconds_count")
    };
    let matched_before = matched_count().await;
    let (tasks, started) = run(false);
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut last_ids = Vec::new();
    for t in tasks {
        let (l, e, last) = t.await.unwrap();
        lat.extend(l);
        errors += e;
        last_ids.extend(last);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let matched = matched_count().await - matched_before;
    let ended = Instant::now();
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    // How long after the window until the last acknowledged delivery was matched.
    let drain = if wait_matched(&c, &base, &last_ids).await { ended.elapsed().as_secs_f64() } else { f64::NAN };
    report.add(
        "ingest",
        format!(
            "| {} | {senders} | {n} | {:.0} /s | {:.1} ms | {:.1} ms | {:.1} ms | {errors} | {:.0} /s ({:.2} x) | {:.0} | {:.2} s |",
            db.name(),
            n as f64 / elapsed,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            matched / elapsed,
            matched / n as f64,
            n as f64 - matched,
            drain
        ),
    );
}

// --- mixed: acknowledgements while runs execute ----------------------------------

/// CPU seconds of a process (its threads) and of the children it reaped.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    let tick = 100.0; // USER_HZ on Linux
    let at = |i: usize| f.get(i - 3).copied().unwrap_or(0.0) / tick;
    (at(14) + at(15), at(16) + at(17))
}

/// Bytes the process read through read/pread (SQLite pages, pipes; not sockets).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The value of an unlabelled counter, or the sum over a labelled one.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ') || r.starts_with('{')))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The next transaction id Postgres will hand out: the difference between
/// two readings is how many transactions wrote (read-only ones get none).
async fn pg_next_xid(url: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("select pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// The workload of a user's traffic: 100 event automations, each filter
/// matching one issue number, every run a one-line bash script through the
/// isolated local sandbox; `count` signed 14 KB deliveries from `senders`,
/// each matching one automation, spread over all 100. Acknowledgements are
/// measured while the runs execute.
async fn mixed(report: &mut Report, db: Db, senders: usize, count: usize) {
    let url = if db == Db::Postgres { Some(new_pg_db().await) } else { None };
    let server = start(url.as_deref(), &[]);
    let pid = server.child.id();
    let c = client();
    let base = server.base.clone();
    let level = isolation_level(&c, &base).await;
    let automations = 100;
    for i in 0..automations {
        let body = json!({
            "name": format!("mixed {i}"),
            "trigger": {"type": "event", "source": "github", "on": ["issues.*"],
                "filter": format!("issue.number == `{i}` && action == 'labeled'")},
            "preset": {"name": "script", "config": {"script": format!("echo issue {i}")}},
            "executor": {"plugin": "local-sandbox"},
        });
        api(&c, reqwest::Method::POST, format!("{base}/v1/automations"), Some(body)).await;
    }
    let template: Value = serde_json::from_str(&common::delivery_14kb()).unwrap();
    let bodies: Arc<Vec<(String, String)>> = Arc::new(
        (0..automations)
            .map(|i| {
                let mut v = template.clone();
                v["issue"]["number"] = json!(i);
                let body = v.to_string();
                let sig = sign(SECRET.as_bytes(), body.as_bytes());
                (body, sig)
            })
            .collect(),
    );
    let finished = |c: reqwest::Client, base: String| async move {
        let text = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        (metric_sum(&text, "automation_runs_finished_total"), metric_sum(&text, "automation_sqlite_writer_uses_total"))
    };
    let wait_finished = |n: f64| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(600) {
                if finished(c.clone(), base.clone()).await.0 >= n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    // Warm-up: one run per automation, finished.
    for (i, (body, sig)) in bodies.iter().enumerate() {
        let r = github_issues(&c, &base, format!("mixed-warm-{i}"), body, sig).send().await.unwrap();
        assert_eq!(r.status(), 202);
    }
    assert!(wait_finished(automations as f64).await, "the warm-up runs did not finish");

    let (cpu0, children0) = cpu_seconds(pid);
    let read0 = bytes_read(pid);
    let (_, writes0) = finished(c.clone(), base.clone()).await;
    let xid0 = match &url {
        Some(u) => pg_next_xid(u).await,
        None => 0,
    };
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let (c, base, bodies, next) = (c.clone(), base.clone(), bodies.clone(), next.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= count {
                        return (lat, errors);
                    }
                    let (body, sig) = &bodies[n % bodies.len()];
                    let t = Instant::now();
                    match github_issues(&c, &base, format!("mixed-{n}"), body, sig).send().await {
                        Ok(r) if r.status() == 202 => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                        _ => errors += 1,
                    }
                }
            })
        })
        .collect();
    let (mut lat, errors) = gather(tasks).await;
    let acked_in = started.elapsed().as_secs_f64();
    let (done_then, _) = finished(c.clone(), base.clone()).await;
    let backlog = (automations + count) as f64 - done_then;
    let all = wait_finished((automations + lat.len()) as f64).await;
    let drained = started.elapsed().as_secs_f64();
    let (cpu1, children1) = cpu_seconds(pid);
    let read1 = bytes_read(pid);
    let (_, writes1) = finished(c.clone(), base.clone()).await;
    let total = |status: &str| {
        let (c, base) = (c.clone(), base.clone());
        let status = status.to_owned();
        async move {
            api(&c, reqwest::Method::GET, format!("{base}/v1/runs?status={status}&limit=1"), None).await["total"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    let succeeded = total("succeeded").await as usize;
    let lost = (automations + lat.len()).saturating_sub(succeeded);
    let n = lat.len();
    lat.sort_by(f64::total_cmp);
    let runs = n.max(1) as f64;
    let writes = match &url {
        Some(u) => format!("{:.2} write transactions", (pg_next_xid(u).await - xid0) as f64 / runs),
        None => format!("{:.2} writer uses", (writes1 - writes0) / runs),
    };
    report.add(
        "mixed",
        format!(
            "| {} | {level} | {senders} | {n} | {:.0} /s | {:.1} ms | {:.1} ms | {errors} | {:.0} /s | {backlog:.0} | {} | {:.2} ms | {:.2} ms | {writes} | {:.0} KB |",
            db.name(),
            n as f64 / acked_in,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            n as f64 / drained,
            if all { lost.to_string() } else { format!("{lost} (runs still unfinished after 600 s)") },
            (cpu1 - cpu0) * 1000.0 / runs,
            (children1 - children0) * 1000.0 / runs,
            (read1 - read0) as f64 / runs / 1024.0,
        ),
    );
}

// --- scaling with the work -----------------------------------------------------

/// A payload of about `bytes`: the 14 KB delivery, its issue body cut or
/// padded (the rest of the payload and its shape stay).
fn payload_of(bytes: usize) -> String {
    let mut v: Value = serde_json::from_str(&common::delivery_14kb()).unwrap();
    let base = v.to_string().len() - v["issue"]["body"].as_str().map_or(0, str::len);
    let body = "x".repeat(bytes.saturating_sub(base));
    v["issue"]["body"] = Value::String(body);
    if bytes < base {
        // Small: keep only what the filters read.
        v = json!({"action": v["action"], "label": v["label"], "issue": {"number": 1, "title": "t", "labels": [],
            "comments": 0, "locked": false, "state": "open", "html_url": "https://github.com/o/r/issues/1", "body": ""},
            "repository": {"name": "r", "full_name": "o/r"}, "sender": {"login": "u"}});
    }
    v.to_string()
}

/// Matching cost as the work grows: `automations` event automations of one
/// source and key with distinct JMESPath filters, dispatch off, `count`
/// signed deliveries of about `bytes` from 8 senders; time from the first
/// send until the last was matched.
async fn scale(report: &mut Report, automations: usize, bytes: usize, count: usize) {
    let server = start(None, &[("AUTOMATION_NO_DISPATCH", "true")]);
    let c = client();
    let base = server.base.clone();
    let exprs = common::expressions(automations);
    let chunks: Vec<Vec<String>> = exprs.chunks(automations.div_ceil(8)).map(<[String]>::to_vec).collect();
    let creators: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let (c, base) = (c.clone(), base.clone());
            tokio::spawn(async move {
                for (i, expr) in chunk.into_iter().enumerate() {
                    let body = json!({"name": format!("scaled {i}"),
                        "trigger": {"type": "event", "source": "github", "on": ["issues.*"], "filter": expr},
                        "preset": {"name": "script", "config": {"script": "true"}}});
                    api(&c, reqwest::Method::POST, format!("{base}/v1/automations"), Some(body)).await;
                }
            })
        })
        .collect();
    for t in creators {
        t.await.unwrap();
    }
    let payload = Arc::new(payload_of(bytes));
    let sig = Arc::new(sign(SECRET.as_bytes(), payload.as_bytes()));
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (c, base, payload, sig, next) = (c.clone(), base.clone(), payload.clone(), sig.clone(), next.clone());
            tokio::spawn(async move {
                let mut last = None;
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= count {
                        return last;
                    }
                    let r = github_issues(&c, &base, format!("scale-{n}"), &payload, &sig).send().await.unwrap();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    last = v["id"].as_str().map(str::to_owned).or(last);
                }
            })
        })
        .collect();
    let mut last_ids = Vec::new();
    for t in senders {
        last_ids.extend(t.await.unwrap());
    }
    let acked = started.elapsed().as_secs_f64();
    let mut drained = f64::NAN;
    'wait: while started.elapsed() < Duration::from_secs(600) {
        for id in &last_ids {
            let d = api(&c, reqwest::Method::GET, format!("{base}/v1/events/{id}"), None).await;
            if d["status"] != "matched" {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'wait;
            }
        }
        drained = started.elapsed().as_secs_f64();
        break;
    }
    let metrics = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("automation_filter_evaluations_total{result=\"error\"} "))
        .unwrap_or("0")
        .to_owned();
    report.add(
        "scale",
        format!(
            "| {automations} | {} KB | {count} | {:.0} /s | {:.0} /s | {:.2} ms | {errors} |",
            payload.len() / 1024,
            count as f64 / acked,
            count as f64 / drained,
            drained * 1000.0 / count as f64
        ),
    );
}

// --- cross-host wake-ups ------------------------------------------------------

/// Time from a run's creation on one host (which dispatches nothing) to its
/// claim by another, idle host on the same Postgres: 200 manual runs, one
/// every 100 ms, a no-op executor. The claim loop polls every second; a
/// `NOTIFY` from the creating host wakes it at once.
async fn wakeup(report: &mut Report) {
    let url = new_pg_db().await;
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(format!("{}/test_noop_executor.wasm", env!("GUEST_WASM_DIR")), plugins.path().join("noop.wasm"))
        .unwrap();
    std::fs::write(plugins.path().join("noop.toml"), "name = \"noop\"\nkind = \"executor\"\n").unwrap();
    let plugins_dir = plugins.path().display().to_string();
    // Replicas of one database share its secret key.
    let key = "ab".repeat(32);
    let api_host = start(
        Some(&url),
        &[
            ("AUTOMATION_NO_DISPATCH", "true"),
            ("AUTOMATION_PLUGINS_DIR", &plugins_dir),
            ("AUTOMATION_SECRET_KEY", &key),
        ],
    );
    let worker = start(Some(&url), &[("AUTOMATION_PLUGINS_DIR", &plugins_dir), ("AUTOMATION_SECRET_KEY", &key)]);
    let c = client();
    let body = json!({"name": "woken", "trigger": {"type": "manual"},
        "preset": {"name": "script", "config": {"script": "true"}}, "executor": {"plugin": "noop"}, "concurrency": 1000});
    let a = api(&c, reqwest::Method::POST, format!("{}/v1/automations", api_host.base), Some(body)).await;
    let a = a["id"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for _ in 0..200 {
        let r = api(&c, reqwest::Method::POST, format!("{}/v1/automations/{a}/dispatch", api_host.base), None).await;
        ids.push(r["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut waits = Vec::new();
    for id in &ids {
        let run = loop {
            let r = api(&c, reqwest::Method::GET, format!("{}/v1/runs/{id}", worker.base), None).await;
            if r["started_at"].is_string() {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let t = |k: &str| chrono::DateTime::parse_from_rfc3339(run[k].as_str().unwrap()).unwrap();
        waits.push((t("started_at") - t("created_at")).num_microseconds().unwrap() as f64 / 1000.0);
    }
    waits.sort_by(f64::total_cmp);
    report.add(
        "wakeup",
        format!(
            "| Postgres | 2 (one creates, one claims) | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            waits.len(),
            pct(&waits, 0.5),
            pct(&waits, 0.99),
            waits.last().copied().unwrap_or(f64::NAN)
        ),
    );
}

// --- retention ---------------------------------------------------------------

/// The senders' acknowledgement latencies (ms), unsorted, and their
/// non-2xx count, once all have finished.
async fn gather(tasks: Vec<tokio::task::JoinHandle<(Vec<f64>, u64)>>) -> (Vec<f64>, u64) {
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    (lat, errors)
}

/// Sends signed 14 KB deliveries from `senders` for `limit`; the
/// acknowledgement latencies (ms) and the count of non-2xx answers.
async fn send_for(c: &reqwest::Client, base: &str, senders: usize, limit: Duration) -> (Vec<f64>, u64) {
    let payload = Arc::new(common::delivery_14kb());
    let sig = Arc::new(sign(SECRET.as_bytes(), payload.as_bytes()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|i| {
            let (c, base, payload, sig) = (c.clone(), base.to_owned(), payload.clone(), sig.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors, mut n) = (Vec::new(), 0u64, 0u64);
                while started.elapsed() < limit {
                    n += 1;
                    let t = Instant::now();
                    let r = github_issues(&c, &base, format!("ret-{i}-{n}-{}", uuid::Uuid::now_v7()), &payload, &sig)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, errors) = gather(tasks).await;
    lat.sort_by(f64::total_cmp);
    (lat, errors)
}

/// Seeds `per` finished runs, created 60 days ago, for each automation.
async fn seed_old_runs(db_url: &str, automations: &[String], per: usize) {
    let at = chrono::Utc::now() - chrono::Duration::days(60);
    let text = at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let detail = json!({"from": "running", "by": "bench", "reason": "seeded", "at": at}).to_string();
    let trigger = json!({"kind": "manual", "payload": {}}).to_string();
    let sql = "insert into runs (id, automation_id, status, status_detail, trigger, attempt, created_at, updated_at, finished_at) \
               values ($1, $2, 'succeeded', $3, $4, 1, $5, $5, $5)";
    if db_url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(db_url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        for a in automations {
            for _ in 0..per {
                sqlx::query(sql)
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(a)
                    .bind(&detail)
                    .bind(&trigger)
                    .bind(&text)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
    } else {
        let pool = sqlx::PgPool::connect(db_url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        let (detail, trigger): (Value, Value) =
            (serde_json::from_str(&detail).unwrap(), serde_json::from_str(&trigger).unwrap());
        for a in automations {
            let a: uuid::Uuid = a.parse().unwrap();
            for _ in 0..per {
                sqlx::query(sql)
                    .bind(uuid::Uuid::now_v7())
                    .bind(a)
                    .bind(&detail)
                    .bind(&trigger)
                    .bind(at)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
    }
}

/// Acknowledgement latency while the retention sweep deletes 90,000 of
/// 100,000 old runs, against the same database with the sweep off.
async fn retention(report: &mut Report, db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let pg = if db == Db::Postgres { Some(new_pg_db().await) } else { None };
    let db_url = pg.clone().unwrap_or_else(|| format!("sqlite://{}", dir.path().join("automation.db").display()));
    let c = client();
    let senders = 16;
    let window = Duration::from_secs(8);
    let off = [("AUTOMATION_NO_DISPATCH", "true"), ("AUTOMATION_RUN_RETENTION_DAYS", "0")];
    let (base_lat, base_err) = {
        let server = start_at(dir.path(), pg.as_deref(), &off);
        let base = server.base.clone();
        let mut ids = Vec::new();
        for i in 0..100 {
            let body = json!({"name": format!("kept {i}"), "trigger": {"type": "manual"},
                "preset": {"name": "script", "config": {"script": "true"}}});
            ids.push(
                api(&c, reqwest::Method::POST, format!("{base}/v1/automations"), Some(body)).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        seed_old_runs(&db_url, &ids, 1000).await;
        send_for(&c, &base, senders, Duration::from_secs(1)).await;
        send_for(&c, &base, senders, window).await
    };
    let on = [
        ("AUTOMATION_NO_DISPATCH", "true"),
        ("AUTOMATION_RUN_RETENTION_DAYS", "30"),
        ("AUTOMATION_RUN_RETENTION_KEEP", "100"),
    ];
    let server = start_at(dir.path(), pg.as_deref(), &on);
    let base = server.base.clone();
    let started = Instant::now();
    // The sweep starts 2 s after start-up; note when it has removed them all.
    let watch = {
        let (c, base) = (c.clone(), base.clone());
        tokio::spawn(async move {
            while started.elapsed() < Duration::from_secs(120) {
                let text = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
                if text.contains("automation_retention_removed_total{kind=\"runs\"} 90000") {
                    return started.elapsed().as_secs_f64();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            f64::NAN
        })
    };
    let (lat, err) = send_for(&c, &base, senders, window).await;
    let swept = watch.await.unwrap();
    report.add(
        "retention",
        format!(
            "| {} | {senders} | {} | {:.1} ms | {:.1} ms | {base_err} | {} | {:.1} ms | {:.1} ms | {err} | {:.1} s after start |",
            db.name(),
            base_lat.len(),
            pct(&base_lat, 0.5),
            pct(&base_lat, 0.99),
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            swept
        ),
    );
    drop(server);
}

// --- end to end --------------------------------------------------------------

/// The sandbox's isolation level as the server reports it.
async fn isolation_level(c: &reqwest::Client, base: &str) -> String {
    api(c, reqwest::Method::GET, format!("{base}/v1/plugins/local-sandbox"), None).await["isolation"]["level"]
        .as_str()
        .unwrap_or("(not reported: an older build)")
        .to_owned()
}

async fn e2e(report: &mut Report, isolation: &str) {
    let server = start(None, &[("AUTOMATION_SANDBOX_ISOLATION", isolation)]);
    let c = client();
    let base = server.base.clone();
    let level = isolation_level(&c, &base).await;
    let a = api(
        &c,
        reqwest::Method::POST,
        format!("{base}/v1/automations"),
        Some(json!({
            "name": "e2e",
            "trigger": {"type": "event", "source": "github", "on": ["push"], "filter": "ref == 'refs/heads/main'"},
            "preset": {"name": "script", "config": {"interpreter": "sh", "script": "echo done"}},
            "executor": {"plugin": "local-sandbox"},
        })),
    )
    .await;
    let id = a["id"].as_str().unwrap().to_owned();
    let mut lat = Vec::new();
    for i in 0..65 {
        let body = json!({"ref": "refs/heads/main", "commits": [], "n": i}).to_string();
        let t = Instant::now();
        let r = c
            .post(format!("{base}/v1/events/github"))
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("e2e-{i}"))
            .header("x-hub-signature-256", sign(SECRET.as_bytes(), body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        loop {
            let runs = api(
                &c,
                reqwest::Method::GET,
                format!("{base}/v1/automations/{id}/runs?limit=1&status=succeeded"),
                None,
            )
            .await;
            if runs["total"].as_u64().unwrap() as usize > i {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if i >= 5 {
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    report.add(
        "e2e",
        format!(
            "| SQLite | local-sandbox | {level} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().unwrap()
        ),
    );
}

// --- sandbox throughput ----------------------------------------------------------

async fn sandbox(report: &mut Report, isolation: &str) {
    let server = start(None, &[("AUTOMATION_SANDBOX_ISOLATION", isolation), ("AUTOMATION_MAX_CONCURRENT_RUNS", "32")]);
    let c = client();
    let base = server.base.clone();
    let level = isolation_level(&c, &base).await;
    let body = json!({
        "name": "noop",
        "trigger": {"type": "manual"},
        "preset": {"name": "script", "config": {"interpreter": "sh", "script": "true"}},
        "executor": {"plugin": "local-sandbox"},
        "concurrency": 1000,
    });
    let id = api(&c, reqwest::Method::POST, format!("{base}/v1/automations"), Some(body)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let n = 1000;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let (c, base, id) = (c.clone(), base.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            for _ in (chunk..n).step_by(8) {
                api(&c, reqwest::Method::POST, format!("{base}/v1/automations/{id}/dispatch"), None).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let done_at = loop {
        let runs = api(&c, reqwest::Method::GET, format!("{base}/v1/runs?status=succeeded&limit=1"), None).await;
        if runs["total"].as_u64().unwrap() >= n as u64 {
            break t.elapsed().as_secs_f64();
        }
        let failed = api(&c, reqwest::Method::GET, format!("{base}/v1/runs?status=failed&limit=1"), None).await;
        assert_eq!(failed["total"], 0, "a no-op run failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    report.add(
        "sandbox",
        format!("| SQLite | {level} | {n} | {:.0} runs/s | {done_at:.2} s | failed: 0 |", n as f64 / done_at),
    );
}

// --- scheduler ---------------------------------------------------------------

async fn scheduler(report: &mut Report, db: Db) {
    let url = if db == Db::Postgres { Some(new_pg_db().await) } else { None };
    let server = start(url.as_deref(), &[("AUTOMATION_NO_DISPATCH", "true")]);
    let c = client();
    let base = server.base.clone();
    // One upload serves every automation (no preset call per create).
    let tgz = {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o755);
        b.append_data(&mut h, "run.sh", &b"true\n"[..]).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    };
    let up: Value =
        c.post(format!("{base}/v1/uploads")).bearer_auth(KEY).body(tgz).send().await.unwrap().json().await.unwrap();
    let upload = up["id"].as_str().unwrap().to_owned();
    // All 10,000 due at the same second, about 75 s from now.
    let fire_at = chrono::Utc::now() + chrono::Duration::seconds(75);
    use chrono::Timelike;
    let schedule = format!("{} {} {} * * *", fire_at.second(), fire_at.minute(), fire_at.hour());
    let fire_at = fire_at.with_nanosecond(0).unwrap();
    let n = 10_000;
    let created = Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let (c, base, upload, schedule) = (c.clone(), base.clone(), upload.clone(), schedule.clone());
        tasks.push(tokio::spawn(async move {
            for i in (chunk..n).step_by(8) {
                let body = json!({
                    "name": format!("burst {i}"),
                    "trigger": {"type": "cron", "schedule": schedule, "timezone": "UTC"},
                    "bundle": {"upload_id": upload},
                    "entrypoint": "sh run.sh",
                });
                api(&c, reqwest::Method::POST, format!("{base}/v1/automations"), Some(body)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let creating = created.elapsed().as_secs_f64();
    assert!(chrono::Utc::now() < fire_at, "creating 10,000 automations took too long ({creating:.0} s)");
    let all_at = loop {
        let runs = api(&c, reqwest::Method::GET, format!("{base}/v1/runs?status=pending&limit=1"), None).await;
        if runs["total"].as_u64().unwrap() >= n as u64 {
            break chrono::Utc::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let burst = (all_at - fire_at).num_milliseconds() as f64 / 1000.0;
    report.add(
        "scheduler",
        format!("| {} | 10,000 due at the same second | all runs created {burst:.2} s after the slot |", db.name()),
    );

    // Steady state: 50 automations every second for 20 s; lag = run created - slot.
    let mut ids = Vec::new();
    for i in 0..50 {
        let body = json!({
            "name": format!("steady {i}"),
            "trigger": {"type": "cron", "schedule": "* * * * * *", "timezone": "UTC"},
            "bundle": {"upload_id": upload},
            "entrypoint": "sh run.sh",
        });
        ids.push(
            api(&c, reqwest::Method::POST, format!("{base}/v1/automations"), Some(body)).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut lags = Vec::new();
    for id in &ids {
        api(&c, reqwest::Method::PATCH, format!("{base}/v1/automations/{id}"), Some(json!({"enabled": false}))).await;
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(cur) => format!("{base}/v1/automations/{id}/runs?limit=100&cursor={cur}"),
                None => format!("{base}/v1/automations/{id}/runs?limit=100"),
            };
            let page = api(&c, reqwest::Method::GET, url, None).await;
            for r in page["items"].as_array().unwrap() {
                let slot =
                    chrono::DateTime::parse_from_rfc3339(r["trigger"]["scheduled_for"].as_str().unwrap()).unwrap();
                let created = chrono::DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap()).unwrap();
                lags.push((created - slot).num_microseconds().unwrap() as f64 / 1000.0);
            }
            match page["next_cursor"].as_str() {
                Some(cur) => cursor = Some(cur.to_owned()),
                None => break,
            }
        }
    }
    lags.sort_by(f64::total_cmp);
    report.add(
        "scheduler",
        format!(
            "| {} | steady: 50 automations every second, 20 s ({} slots) | fire lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
            db.name(),
            lags.len(),
            pct(&lags, 0.5),
            pct(&lags, 0.99),
            lags.last().copied().unwrap_or(f64::NAN)
        ),
    );
    println!("(creating 10,000 automations took {creating:.1} s)");
}

// --- dispatch ----------------------------------------------------------------

async fn dispatch(report: &mut Report, db: Db, hosts: usize) {
    let url = if db == Db::Postgres { Some(new_pg_db().await) } else { None };
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(format!("{}/test_noop_executor.wasm", env!("GUEST_WASM_DIR")), plugins.path().join("noop.wasm"))
        .unwrap();
    std::fs::write(plugins.path().join("noop.toml"), "name = \"noop\"\nkind = \"executor\"\n").unwrap();
    let plugins_dir = plugins.path().display().to_string();
    let data = tempfile::tempdir().unwrap();
    // Replicas of one database share its secret key (each host here has a
    // data directory of its own on Postgres).
    let key = "cd".repeat(32);
    let creator = start_at(
        data.path(),
        url.as_deref(),
        &[
            ("AUTOMATION_NO_DISPATCH", "true"),
            ("AUTOMATION_PLUGINS_DIR", &plugins_dir),
            ("AUTOMATION_SECRET_KEY", &key),
        ],
    );
    let c = client();
    let base = creator.base.clone();
    let mut autos = Vec::new();
    for i in 0..20 {
        let body = json!({
            "name": format!("noop {i}"),
            "trigger": {"type": "manual"},
            "preset": {"name": "script", "config": {"script": "true"}},
            "executor": {"plugin": "noop"},
            "concurrency": 1000,
        });
        autos.push(
            api(&c, reqwest::Method::POST, format!("{base}/v1/automations"), Some(body)).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let n = 3000;
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let (c, base, autos) = (c.clone(), base.clone(), autos.clone());
        tasks.push(tokio::spawn(async move {
            for i in (chunk..n).step_by(8) {
                api(
                    &c,
                    reqwest::Method::POST,
                    format!("{base}/v1/automations/{}/dispatch", autos[i % autos.len()]),
                    None,
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(creator);
    // The dispatching hosts (SQLite: the same data directory; Postgres: the same database).
    let env = [
        ("AUTOMATION_PLUGINS_DIR", plugins_dir.as_str()),
        ("AUTOMATION_MAX_CONCURRENT_RUNS", "64"),
        ("AUTOMATION_SECRET_KEY", key.as_str()),
    ];
    let t = Instant::now();
    let mut servers = Vec::new();
    for _ in 0..hosts {
        servers.push(match db {
            // SQLite: the same data directory (and so the same database file).
            Db::Sqlite => start_at(data.path(), None, &env),
            Db::Postgres => start(url.as_deref(), &env),
        });
    }
    let base = servers[0].base.clone();
    let done_at = loop {
        let runs = api(&c, reqwest::Method::GET, format!("{base}/v1/runs?status=succeeded&limit=1"), None).await;
        if runs["total"].as_u64().unwrap() >= n as u64 {
            break t.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let failed =
        api(&c, reqwest::Method::GET, format!("{base}/v1/runs?status=failed&limit=1"), None).await["total"].clone();
    report.add(
        "dispatch",
        format!(
            "| {} | {hosts} | {n} | {:.0} runs/s | {done_at:.2} s (includes host start) | failed: {failed} |",
            db.name(),
            n as f64 / done_at
        ),
    );
}

// --- start-up -----------------------------------------------------------------

async fn startup(report: &mut Report) {
    // Warm the compile cache once.
    drop(start(None, &[]));
    let c = client();
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let server = start(None, &[]);
        loop {
            if let Ok(r) = c.get(format!("{}/ready", server.base)).send().await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        {
            rss.push(kb / 1024.0);
        }
    }
    times.sort_by(f64::total_cmp);
    rss.sort_by(f64::total_cmp);
    report.add(
        "startup",
        format!(
            "| SQLite, 4 bundled plugins from the compile cache | {:.0} ms | {:.0} ms | {:.1} MB | {:.1} MB |",
            pct(&times, 0.5),
            times.last().unwrap(),
            pct(&rss, 0.5),
            rss.last().unwrap()
        ),
    );
}

// --- BENCHMARKS.md ---------------------------------------------------------------

fn criterion_estimate(path: &str) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(target_dir().join("criterion").join(path).join("new/estimates.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Some((v["median"]["point_estimate"].as_f64()?, v["median_abs_dev"]["point_estimate"].as_f64()?))
}

fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// The table rows under a heading of an earlier BENCHMARKS.md.
fn previous_rows(md: &str, heading: &str) -> Option<String> {
    let start = md.find(heading)?;
    let rest = &md[start..];
    let table = rest.find("|---")?;
    let after_sep = &rest[table..];
    let first_row = after_sep.find('\n')? + 1;
    let rows: Vec<&str> = after_sep[first_row..].lines().take_while(|l| l.starts_with('|')).collect();
    (!rows.is_empty()).then(|| rows.join("\n"))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}); load average at the start: {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

fn write_markdown(report: &Report, machine: &str, ran: &str) {
    let date = chrono::Utc::now().format("%Y-%m-%d");
    // Scenarios not run this time keep the rows BENCHMARKS.md already has.
    let old =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md")).unwrap_or_default();
    let micro =
        |path: &str, what: &str, target: &str| -> String {
            match criterion_estimate(path) {
                Some((median, mad)) => format!("| {what} | {} | ±{} | {target} |", fmt_ns(median), fmt_ns(mad)),
                // Not measured in this checkout: the figure of the earlier run stays.
                None => old.lines().find(|l| l.starts_with(&format!("| {what} |"))).map(str::to_owned).unwrap_or_else(
                    || format!("| {what} | not measured (run `cargo bench --bench micro`) | | {target} |"),
                ),
            }
        };
    let headings = [
        ("ingest", "## Event ingestion"),
        ("mixed", "## Acknowledgements while runs execute"),
        ("e2e", "## Event to run"),
        ("sandbox", "## Local sandbox throughput"),
        ("scheduler", "## Scheduler"),
        ("dispatch", "## Dispatch"),
        ("startup", "## Start-up"),
        ("retention", "## Retention"),
        ("wakeup", "## Cross-host wake-up"),
        ("scale", "## Scaling with the work"),
    ];
    let rows = |s: &str| {
        report.rows.get(s).map(|r| r.join("\n")).unwrap_or_else(|| {
            let heading = headings.iter().find(|(k, _)| *k == s).map(|(_, h)| *h).unwrap_or("");
            previous_rows(&old, heading).unwrap_or_else(|| "| not run | | | | |".into())
        })
    };
    let md = format!(
        "<!-- Written by `cargo bench --bench load` (host/benches/load.rs); `just bench` runs it after the micro benchmarks. -->\n\
# Benchmarks\n\n\
Measured {date} on {machine}. Debug assertions off (`cargo bench`, release profile).\n\
{ran}\n\
Every figure below was produced by the command in its section, in one run; nothing is copied from elsewhere.\n\n\
## Micro (criterion): `cargo bench --bench micro`\n\n\
Median of the samples and the median absolute deviation.\n\n\
| path | median | spread (MAD) | target |\n|---|---|---|---|\n\
{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n\n\
## Event ingestion: `cargo bench --bench load` (LOAD_ONLY=ingest)\n\n\
Signed 14 KB GitHub deliveries (`issues.labeled`) against 100 event automations with JMESPath filters, for 8 s after 1 s of warm-up, \
each sender sending its next request as soon as the previous is acknowledged. Latency is to the 202, which comes after the delivery is \
committed; matching runs at the same time on the same 2 cores. The warm-up's deliveries are matched before the window opens. *Matched* is \
deliveries matched per second in the window (the host's count), and its ratio to the acknowledged; *backlog* is how many acknowledged \
deliveries were still unmatched when the window closed, *drained* how long after that the last was matched.\n\n\
| database | senders | deliveries | acknowledged | p50 | p99 | max | non-2xx | matched | backlog | drained |\n|---|---|---|---|---|---|---|---|---|---|---|\n{}\n\n\
## Acknowledgements while runs execute: (LOAD_ONLY=mixed)\n\n\
100 event automations, each filter matching one issue number, each run a one-line bash script (`echo issue N`) through local-sandbox with its \
isolation as probed, at most 32 runs at once (the default), one run at a time per automation (the default, queued). After one warm-up run per \
automation, 3,000 signed 14 KB deliveries from the senders, each matching one automation, spread over all 100. *Acknowledged* is over the sending \
window, *runs finished* from the first send until the last run succeeded, *backlog* the runs not yet finished when the last 202 came back, \
*lost* the acknowledged deliveries without a succeeded run at the end. CPU is the host process's (all its threads) and its reaped children's (the \
sandboxed runs), per delivery; *writes* the SQLite writer connection's uses (transactions and single statements) or the Postgres transactions \
that wrote (transaction ids handed out), per run, ingestion and matching included; *read* what the host read through `read`/`pread` \
(database pages, pipes; not sockets), per run.\n\n\
| database | isolation | senders | deliveries | acknowledged | p50 | p99 | non-2xx | runs finished | backlog | lost | host CPU | runs' CPU | writes per run | read per run |\n\
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n{}\n\n\
## Event to run `succeeded`: (LOAD_ONLY=e2e)\n\n\
One delivery at a time (60 measured after 5 warm-up), time from sending it to its run being `succeeded` through the local-sandbox executor (`echo done`), \
with the sandbox's isolation as probed (`full` here: namespaces, Landlock, seccomp, cgroup) and unconfined (`AUTOMATION_SANDBOX_ISOLATION=none`).\n\n\
| database | executor | isolation | samples | p50 | p99 | max |\n|---|---|---|---|---|---|---|\n{}\n\n\
## Local sandbox throughput: (LOAD_ONLY=sandbox)\n\n\
1,000 manual runs of a no-op bundle (`true`) through local-sandbox, dispatched by 8 clients, up to 32 runs at once; time from the first dispatch until all succeeded.\n\n\
| database | isolation | runs | throughput | time | |\n|---|---|---|---|---|---|\n{}\n\n\
## Scheduler: (LOAD_ONLY=scheduler)\n\n\
| database | what | result |\n|---|---|---|\n{}\n\n\
## Dispatch: (LOAD_ONLY=dispatch)\n\n\
3,000 pending runs over 20 automations, a no-op executor plugin (`start` returns at once, `poll` says succeeded), up to 64 runs at once per host; \
time from starting the dispatching host(s) until all succeeded.\n\n\
| database | hosts | runs | throughput | time | |\n|---|---|---|---|---|---|\n{}\n\n\
## Start-up: (LOAD_ONLY=startup)\n\n\
Ten starts, time from spawning the process to `GET /ready` answering 200, and resident memory 3 s later, idle.\n\n\
| setup | p50 to ready | max | idle RSS p50 | max |\n|---|---|---|---|---|\n{}\n\n\
## Retention: (LOAD_ONLY=retention)\n\n\
100 automations with 1,000 finished runs each, created 60 days ago. 16 senders post signed 14 KB deliveries for 8 s, first with the sweep off \
(`AUTOMATION_RUN_RETENTION_DAYS=0`), then after a restart with it on (30 days, keep 100), so the sweep deletes 90,000 runs, 500 per statement, \
while the deliveries are acknowledged. *Swept* is when the last of them was gone.\n\n\
| database | senders | acks (sweep off) | p50 | p99 | non-2xx | acks (sweeping) | p50 | p99 | non-2xx | swept |\n|---|---|---|---|---|---|---|---|---|---|---|\n{}\n\n\
## Cross-host wake-up: (LOAD_ONLY=wakeup)\n\n\
200 manual runs made one every 100 ms on a host that dispatches nothing; another host on the same Postgres claims them (a no-op executor). \
Time from a run's creation to its claim (`started_at - created_at`). The claim loop polls every second; `LISTEN/NOTIFY` wakes it.\n\n\
| database | hosts | runs | p50 | p99 | max |\n|---|---|---|---|---|---|\n{}\n\n\
## Scaling with the work: (LOAD_ONLY=scale)\n\n\
SQLite, dispatch off. N event automations of one source, all on `issues.*`, each with its own JMESPath filter (a few match); signed deliveries of \
the given size from 8 senders; *matched* is deliveries per second from the first send until the last was matched, *per delivery* its inverse.\n\n\
| automations | payload | deliveries | acknowledged | matched | per delivery | filter errors |\n|---|---|---|---|---|---|---|\n{}\n",
        micro("plugin/instantiate", "instantiation from `InstancePre` (pooling, copy-on-write)", "p50 ≤ 10 µs"),
        micro("plugin/warm_call_noop", "warm host-to-guest call (a no-op `validate`)", "hundreds of ns"),
        micro(
            "plugin/fresh_instance_filter_call",
            "fresh-instance filter call, small event, 1 expression",
            "p50 ≤ 75 µs"
        ),
        micro(
            "plugin/warm_instance_filter_call",
            "the same on a kept instance (what the server does after the first call)",
            ""
        ),
        micro("filters_14kb/10", "one 14 KB delivery × 10 filters, new instance (one batch call)", ""),
        micro("filters_14kb/100", "one 14 KB delivery × 100 filters, new instance", ""),
        micro("filters_14kb/1000", "one 14 KB delivery × 1,000 filters, new instance", "≤ 10 ms"),
        micro("filters_14kb_warm/10", "one 14 KB delivery × 10 filters, kept instance (expressions compiled)", ""),
        micro("filters_14kb_warm/100", "one 14 KB delivery × 100 filters, kept instance", ""),
        micro("filters_14kb_warm/1000", "one 14 KB delivery × 1,000 filters, kept instance", "≤ 10 ms"),
        micro("filters_14kb_fuel/1000", "the same with fuel metering on (as `plugin call` runs)", ""),
        micro("component_load/from_cache", "component load from the compile cache (jmespath, 0.9 MB)", ""),
        micro("component_load/cold_compile", "component load, cold compile", ""),
        micro("cron_next_fire/every_5_minutes_utc", "cron next fire: `*/5 * * * *` UTC", ""),
        micro("cron_next_fire/weekdays_paris", "cron next fire: `30 9 * * MON-FRI` Europe/Paris", ""),
        micro("cron_next_fire/every_15_minutes_across_dst", "cron next fire across a DST change (slow path)", ""),
        rows("ingest"),
        rows("mixed"),
        rows("e2e"),
        rows("sandbox"),
        rows("scheduler"),
        rows("dispatch"),
        rows("startup"),
        rows("retention"),
        rows("wakeup"),
        rows("scale"),
    );
    // Only the generated part is replaced; the notes below it are kept.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let (start, end) = ("<!-- generated:start -->", "<!-- generated:end -->");
    let notes = match (old.find(start), old.find(end)) {
        (Some(_), Some(e)) => old[e + end.len()..].to_owned(),
        _ => "\n\n## Notes\n\n(Findings and analysis, written by hand, go here.)\n".to_owned(),
    };
    std::fs::write(&path, format!("{start}\n{md}{end}{notes}")).unwrap();
    println!("wrote {}", path.display());
}

fn main() {
    let only = std::env::var("LOAD_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|o| o.trim() == s);
    let machine = machine();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut report = Report::default();
        if want("startup") {
            startup(&mut report).await;
        }
        if want("ingest") {
            // LOAD_INGEST=sqlite:16,postgres:16 picks cases.
            let pick = std::env::var("LOAD_INGEST").unwrap_or_default();
            for db in [Db::Sqlite, Db::Postgres] {
                for senders in [1, 16, 64] {
                    let case = format!("{}:{senders}", db.name().to_lowercase());
                    if pick.is_empty() || pick.split(',').any(|p| p.trim() == case) {
                        ingest(&mut report, db, senders).await;
                    }
                }
            }
        }
        if want("mixed") {
            // LOAD_MIXED=sqlite:16,postgres:64 picks cases.
            let pick = std::env::var("LOAD_MIXED").unwrap_or_default();
            // LOAD_MIXED_COUNT=N sends N deliveries instead of 3,000 (a longer
            // window to profile, say).
            let count = std::env::var("LOAD_MIXED_COUNT").map_or(3000, |n| n.parse().expect("LOAD_MIXED_COUNT"));
            for db in [Db::Sqlite, Db::Postgres] {
                for senders in [16, 64] {
                    let case = format!("{}:{senders}", db.name().to_lowercase());
                    if pick.is_empty() || pick.split(',').any(|p| p.trim() == case) {
                        mixed(&mut report, db, senders, count).await;
                    }
                }
            }
        }
        if want("e2e") {
            e2e(&mut report, "auto").await;
            e2e(&mut report, "none").await;
        }
        if want("sandbox") {
            sandbox(&mut report, "auto").await;
            sandbox(&mut report, "none").await;
        }
        if want("dispatch") {
            dispatch(&mut report, Db::Sqlite, 1).await;
            dispatch(&mut report, Db::Postgres, 1).await;
            dispatch(&mut report, Db::Postgres, 2).await;
        }
        if want("scheduler") {
            scheduler(&mut report, Db::Sqlite).await;
            scheduler(&mut report, Db::Postgres).await;
        }
        if want("scale") {
            // LOAD_SCALE=AUTOMATIONSxBYTESxCOUNT,... picks cases (to profile one, say).
            let cases: Vec<(usize, usize, usize)> = match std::env::var("LOAD_SCALE") {
                Ok(v) => v
                    .split(',')
                    .map(|c| {
                        let n: Vec<usize> = c.split('x').map(|x| x.trim().parse().expect("LOAD_SCALE")).collect();
                        (n[0], n[1], n[2])
                    })
                    .collect(),
                Err(_) => vec![
                    (100, 14_000, 2000),
                    (1000, 14_000, 1000),
                    (10_000, 14_000, 200),
                    (100, 1_000, 2000),
                    (100, 1_000_000, 200),
                ],
            };
            for (automations, bytes, count) in cases {
                scale(&mut report, automations, bytes, count).await;
            }
        }
        if want("wakeup") {
            wakeup(&mut report).await;
        }
        if want("retention") {
            retention(&mut report, Db::Sqlite).await;
            retention(&mut report, Db::Postgres).await;
        }
        let ran = if only.is_empty() {
            "This run measured every load scenario.".to_owned()
        } else {
            format!("This run measured LOAD_ONLY={only}; the other load tables keep the figures of an earlier run.")
        };
        write_markdown(&report, &machine, &ran);
    });
}
