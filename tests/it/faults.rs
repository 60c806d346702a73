//! The fault suite: a storage fault under load, through the real binary.
//! Each test drives signed 14 KB GitHub deliveries (and the runs they start)
//! through the fault and asserts what a webhook receiver must keep:
//!
//! - every acknowledged (202) delivery is stored, exactly once, and matched;
//! - every run it created reaches one final status;
//! - while the host cannot store, it answers 503 with `Retry-After` and no
//!   database text, and `/ready` says why;
//! - it recovers without a restart once the fault is gone.
//!
//! SQLite faults: a database size cap (`AUTOMATION_SQLITE_MAX_SIZE_MB`) filled
//! by a ballast table (no root needed); a real small filesystem filled by a
//! ballast file, where the test may mount one (root); the database file
//! deleted, and replaced, under the host. (A read-only data directory is not
//! here: a tmpfs refuses to be remounted read-only while the database is
//! open for writing, and the kernel's forced read-only remount after disk
//! errors is not something a test can cause; its EROFS takes the same path
//! as the I/O errors above.) Postgres faults
//! run against a private Postgres cluster the test starts on its own port
//! and stops: the server stopped for 10 s and started, restarted, and its
//! tables locked until the host's connections are all waiting.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automation_host::events::signature::sign;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Backend, TestServer, wait_final};

const SECRET: &str = "fault-webhook-secret-1";

/// What a sender saw.
#[derive(Default, Debug)]
struct Seen {
    /// Our delivery ids, by GitHub delivery id, of every 202.
    acked: HashMap<String, String>,
    /// 503s (with `Retry-After`, without database text).
    unavailable: u64,
    /// Anything else: must stay empty.
    other: Vec<String>,
    /// Sent while the test said the fault was on, and acknowledged.
    acked_during_fault: u64,
}

/// A sender of signed 14 KB deliveries, one after another, until stopped.
struct Load {
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
    fault: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn payload(n: u64, sample: bool) -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/github-webhooks/issues/labeled.payload.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["n"] = json!(n);
    v["sample"] = json!(sample);
    serde_json::to_vec(&v).unwrap()
}

impl Load {
    /// Starts sending to `base`; every `sample_every`th delivery starts a run.
    fn start(base: &str, prefix: &str, sample_every: u64) -> Load {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = tokio_util::sync::CancellationToken::new();
        let fault = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (base, prefix) = (base.to_owned(), prefix.to_owned());
        let task = tokio::spawn({
            let (seen, stop, fault) = (seen.clone(), stop.clone(), fault.clone());
            async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    n += 1;
                    let body = payload(n, n.is_multiple_of(sample_every));
                    let delivery = format!("{prefix}-{n}");
                    let during_fault = fault.load(std::sync::atomic::Ordering::SeqCst);
                    let sent = client
                        .post(format!("{base}/v1/events/github"))
                        .header("x-github-event", "issues")
                        .header("x-github-delivery", &delivery)
                        .header("x-hub-signature-256", sign(SECRET.as_bytes(), &body))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let seen = match sent {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let retry_after = r.headers().get("retry-after").is_some();
                            let text = r.text().await.unwrap_or_default();
                            let mut seen = seen.lock().unwrap();
                            match status {
                                202 => {
                                    let v: Value = serde_json::from_str(&text).unwrap();
                                    seen.acked.insert(delivery, v["id"].as_str().unwrap().to_owned());
                                    if during_fault {
                                        seen.acked_during_fault += 1;
                                    }
                                }
                                503 if retry_after
                                    && !text.contains("code: ")
                                    && !text.contains("database or disk") =>
                                {
                                    seen.unavailable += 1
                                }
                                _ => seen.other.push(format!("{status}: {text}")),
                            }
                            seen
                        }
                        Err(e) => {
                            let mut seen = seen.lock().unwrap();
                            seen.other.push(format!("request failed: {e}"));
                            seen
                        }
                    };
                    drop(seen);
                }
            }
        });
        Load { seen, stop, fault, task }
    }

    fn acked(&self) -> usize {
        self.seen.lock().unwrap().acked.len()
    }

    /// Waits until `f` holds of what was seen (or panics after `secs`).
    async fn until(&self, secs: u64, what: &str, f: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f(&self.seen.lock().unwrap()) {
            assert!(Instant::now() < deadline, "{what} did not happen within {secs} s: {:?}", self.summary());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn summary(&self) -> String {
        let s = self.seen.lock().unwrap();
        format!(
            "acked {}, 503 {}, other {:?}",
            s.acked.len(),
            s.unavailable,
            s.other.iter().take(3).collect::<Vec<_>>()
        )
    }

    async fn finish(self) -> Seen {
        self.stop.cancel();
        self.task.await.unwrap();
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// An automation that runs a short script for every sampled delivery.
async fn sampled_automation(s: &TestServer) -> String {
    s.post(
        "/v1/automations",
        json!({
            "name": "sampled issues",
            "trigger": {"type": "event", "source": "github", "on": ["issues.*"], "filter": "sample"},
            "preset": {"name": "script", "config": {"script": "sleep 0.3"}},
            "concurrency": 100,
        }),
    )
    .await
    .expect(201)
    .id()
}

async fn ready(s: &TestServer) -> (u16, String) {
    let r = s.raw(Method::GET, "/ready", &[], vec![]).await;
    (r.status, r.text)
}

async fn wait_ready(s: &TestServer, secs: u64, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, text) = ready(s).await;
        if status == want {
            return text;
        }
        assert!(Instant::now() < deadline, "/ready did not answer {want} within {secs} s; last: {status} {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The invariants after a fault: acknowledged ⊆ stored exactly once, every
/// one matched, every run final. Returns how many runs there were.
async fn check_nothing_lost(s: &TestServer, automation: &str, seen: &Seen) -> usize {
    assert!(
        seen.other.is_empty(),
        "only 202 and 503 are acceptable answers: {:?}",
        &seen.other[..seen.other.len().min(3)]
    );
    let mut sampled = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    for (delivery, id) in &seen.acked {
        let d = loop {
            let d = s.get(&format!("/v1/events/{id}")).await;
            assert_eq!(d.status, 200, "acknowledged delivery {delivery} ({id}) is not stored: {}", d.text);
            if d.body["status"] == "matched" {
                break d.body;
            }
            assert!(Instant::now() < deadline, "delivery {id} was never matched: {}", d.text);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(d["delivery_id"], delivery.as_str());
        if d["payload"]["sample"] == true {
            sampled += 1;
            let matched = d["result"]["matched"].as_array().unwrap();
            assert_eq!(matched.len(), 1, "{d}");
            assert_eq!(matched[0]["automation_id"], automation);
        }
    }
    // Exactly once: no delivery id is stored twice.
    let mut stored = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/events?source=github&limit=100&cursor={c}"),
            None => "/v1/events?source=github&limit=100".to_owned(),
        };
        let page = s.get(&path).await.expect(200).body;
        for d in page["items"].as_array().unwrap() {
            assert!(stored.insert(d["delivery_id"].as_str().unwrap().to_owned()), "stored twice: {d}");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    for delivery in seen.acked.keys() {
        assert!(stored.contains(delivery));
    }
    // Every run of the sampled deliveries reaches one final status.
    let mut runs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/automations/{automation}/runs?limit=100&cursor={c}"),
            None => format!("/v1/automations/{automation}/runs?limit=100"),
        };
        let page = s.get(&path).await.expect(200).body;
        runs.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(runs.len() >= sampled, "{} runs for {sampled} acknowledged sampled deliveries", runs.len());
    let mut statuses: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &runs {
        let done = wait_final(s, r["id"].as_str().unwrap(), 120).await;
        let status = done["status"].as_str().unwrap().to_owned();
        // A run that started while the disk was full may fail (its workspace
        // could not be written); it must still end, once, and say why.
        if status != "succeeded" {
            assert_eq!(status, "failed", "{done}");
            assert!(done["error"].as_str().is_some_and(|e| !e.is_empty()), "{done}");
        }
        *statuses.entry(status).or_default() += 1;
    }
    eprintln!("runs by final status: {statuses:?}");
    runs.len()
}

async fn metric(s: &TestServer, line_start: &str) -> u64 {
    let text = s.raw(Method::GET, "/metrics", &[], vec![]).await.text;
    text.lines().find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET), ("AUTOMATION_MAX_CONCURRENT_RUNS", "64")]
}

// --- SQLite: a database size cap and a ballast table ----------------------------

/// A second connection to the host's SQLite file, as an operator's tool would
/// open it: it adds and removes ballast rows that take the database's pages.
struct Ballast {
    pool: sqlx::SqlitePool,
}

impl Ballast {
    async fn open(db: &Path) -> Ballast {
        use std::str::FromStr;
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
            .unwrap()
            .busy_timeout(Duration::from_secs(30));
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.unwrap();
        sqlx::query("create table if not exists ballast (b blob)").execute(&pool).await.unwrap();
        Ballast { pool }
    }

    /// Adds `mib` MiB of ballast.
    async fn add(&self, mib: usize) {
        for _ in 0..mib {
            sqlx::query("insert into ballast (b) values (zeroblob(1048576))").execute(&self.pool).await.unwrap();
        }
    }

    async fn clear(&self) {
        sqlx::query("delete from ballast").execute(&self.pool).await.unwrap();
    }
}

/// SQLite with its size capped: ballast fills it during ingestion, matching
/// and run bookkeeping, then is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_acknowledges_only_what_it_stores_and_recovers() {
    let mut env = env();
    env.push(("AUTOMATION_SQLITE_MAX_SIZE_MB", "24"));
    let s = TestServer::start_with(Backend::Sqlite, &env).await;
    let automation = sampled_automation(&s).await;
    let ballast = Ballast::open(&s.data_dir().join("automation.db")).await;
    let load = Load::start(&s.base, "cap", 10);
    load.until(60, "a first burst", |seen| seen.acked.len() >= 300).await;
    // Fill what is left: the writes of ingestion, of the matcher (with a
    // backlog now) and of the runs going all meet the full database.
    load.fault.store(true, std::sync::atomic::Ordering::SeqCst);
    ballast.add(24).await;
    load.until(60, "503s", |seen| seen.unavailable >= 20).await;
    let why = wait_ready(&s, 10, 503).await;
    assert!(why.contains("disk is full"), "/ready says why: {why}");
    assert!(!why.contains("code:"), "no database text: {why}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked_in_fault = load.acked();
    ballast.clear().await;
    load.fault.store(false, std::sync::atomic::Ordering::SeqCst);
    let cleared = Instant::now();
    wait_ready(&s, 30, 200).await;
    let recovered = cleared.elapsed();
    load.until(30, "acknowledgements again", |seen| seen.acked.len() > acked_in_fault + 100).await;
    let seen = load.finish().await;
    let runs = check_nothing_lost(&s, &automation, &seen).await;
    assert!(metric(&s, "automation_background_errors_total{loop=\"ingest\"}").await > 0);
    eprintln!(
        "sqlite cap: acknowledged {}, 503 {}, acknowledged while full {}, runs {runs}, ready again {recovered:?} after space came back",
        seen.acked.len(),
        seen.unavailable,
        seen.acked_during_fault
    );
}

// --- SQLite on a real small filesystem (root: the test mounts a tmpfs) ---------

/// A tmpfs the test mounts (and unmounts when dropped).
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(mib: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("NOT RUN: this test mounts a tmpfs, which needs root (CI runs as root)");
            return None;
        }
        Some(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with a ballast file, leaving about `free_kib`.
    fn fill(&self, free_kib: u64) -> PathBuf {
        let stat = nix_statvfs(self.path());
        let free = stat.saturating_sub(free_kib << 10);
        let path = self.path().join("ballast");
        let f = std::fs::File::create(&path).unwrap();
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let chunk = vec![0u8; 1 << 16];
        let mut written = 0;
        while written + chunk.len() as u64 <= free {
            if w.write_all(&chunk).is_err() {
                break;
            }
            written += chunk.len() as u64;
        }
        let _ = w.flush();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Bytes free on the filesystem at `path`.
fn nix_statvfs(path: &Path) -> u64 {
    let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

/// The reproduction: the data directory on a small filesystem that
/// fills up under a stream of deliveries, then gets space back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_never_costs_an_acknowledged_delivery() {
    let Some(fs) = SmallFs::mount(48) else { return };
    let mut env = env();
    let data = fs.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let data_s = data.display().to_string();
    env.push(("AUTOMATION_DATA_DIR", &data_s));
    let s = TestServer::start_with(Backend::Sqlite, &env).await;
    let automation = sampled_automation(&s).await;
    let load = Load::start(&s.base, "tmpfs", 10);
    load.until(60, "a first burst", |seen| seen.acked.len() >= 200).await;
    load.fault.store(true, std::sync::atomic::Ordering::SeqCst);
    let ballast = fs.fill(512);
    load.until(60, "503s", |seen| seen.unavailable >= 20).await;
    let why = wait_ready(&s, 10, 503).await;
    assert!(why.contains("disk is full") || why.contains("disk failed"), "/ready says why: {why}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = load.acked();
    std::fs::remove_file(&ballast).unwrap();
    load.fault.store(false, std::sync::atomic::Ordering::SeqCst);
    let cleared = Instant::now();
    wait_ready(&s, 30, 200).await;
    let recovered = cleared.elapsed();
    load.until(30, "acknowledgements again", |seen| seen.acked.len() > before + 100).await;
    let seen = load.finish().await;
    let runs = check_nothing_lost(&s, &automation, &seen).await;
    eprintln!(
        "tmpfs full: acknowledged {}, 503 {}, acknowledged while full {}, runs {runs}, ready again {recovered:?} after space came back",
        seen.acked.len(),
        seen.unavailable,
        seen.acked_during_fault
    );
}

/// The database file deleted under the host: nothing is acknowledged into
/// the deleted file; once the operator puts a database back (here a backup),
/// the host uses it without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_replaced_database_file_is_noticed() {
    let s = TestServer::start_with(Backend::Sqlite, &env()).await;
    let automation = sampled_automation(&s).await;
    let db = s.data_dir().join("automation.db");
    let load = Load::start(&s.base, "before", 10);
    load.until(60, "a first burst", |seen| seen.acked.len() >= 100).await;
    let first = load.finish().await;
    check_nothing_lost(&s, &automation, &first).await;
    let backup = s.data_dir().join("backup.db");
    {
        let b = Ballast::open(&db).await;
        sqlx::query(&format!("vacuum into '{}'", backup.display())).execute(&b.pool).await.unwrap();
        sqlx::query("drop table ballast").execute(&b.pool).await.unwrap();
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let load = Load::start(&s.base, "deleted", 10);
    load.fault.store(true, std::sync::atomic::Ordering::SeqCst);
    load.until(30, "503s", |seen| seen.unavailable >= 10).await;
    let why = wait_ready(&s, 10, 503).await;
    assert!(why.contains("was deleted") || why.contains("cannot be opened"), "{why}");
    let during = load.finish().await;
    assert_eq!(during.acked.len(), 0, "acknowledged into a deleted database file: {during:?}");
    // The operator restores the backup: a replaced file, picked up at once.
    std::fs::copy(&backup, &db).unwrap();
    wait_ready(&s, 30, 200).await;
    let load = Load::start(&s.base, "restored", 10);
    load.until(30, "acknowledgements again", |seen| seen.acked.len() >= 100).await;
    let after = load.finish().await;
    check_nothing_lost(&s, &automation, &after).await;
    // Replaced while running: the host moves to the new file.
    let copy = s.data_dir().join("copy.db");
    {
        let b = Ballast::open(&db).await;
        sqlx::query(&format!("vacuum into '{}'", copy.display())).execute(&b.pool).await.unwrap();
    }
    // As an operator must: the old file's WAL and index go first (SQLite
    // would apply them to the new file), then the new file takes its place.
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::rename(&copy, &db).unwrap();
    let load = Load::start(&s.base, "replaced", 10);
    load.until(30, "acknowledgements into the new file", |seen| seen.acked.len() >= 50).await;
    let replaced = load.finish().await;
    check_nothing_lost(&s, &automation, &replaced).await;
    assert!(s.log_text().contains("was replaced") || s.log_text().contains("was deleted"));
}

// --- Postgres: a private cluster the test stops and starts ----------------------

/// A Postgres server of the test's own, on an ephemeral port.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
}

fn as_postgres(cmd: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("runuser").args(["-u", "postgres", "--"]).arg(cmd).args(args).output().unwrap()
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Postgres binaries under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let _ = std::process::Command::new("chmod").arg("755").arg(dir.path()).status();
        let data = dir.path().join("pg");
        std::fs::create_dir(&data).unwrap();
        std::process::Command::new("chown").args(["postgres:postgres"]).arg(&data).status().unwrap();
        let out = as_postgres(&bin.join("initdb"), &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = PrivatePostgres { dir, port, bin };
        pg.up();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("pg").display().to_string()
    }

    fn up(&self) {
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.data());
        let log = format!("{}/log", self.data());
        let out = as_postgres(&self.bin.join("pg_ctl"), &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"]);
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn down(&self) {
        let out = as_postgres(&self.bin.join("pg_ctl"), &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn restart(&self) {
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.data());
        let log = format!("{}/log", self.data());
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-m", "fast", "-w", "restart"],
        );
        assert!(out.status.success(), "pg_ctl restart: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"), &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

/// Postgres stopped for 10 s under load (ingestion, matching and runs
/// going), then started; then restarted; then its tables locked until every
/// connection of the host waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outages_lose_nothing_and_recover_by_themselves() {
    if !std::fs::read_to_string("/proc/self/status").unwrap_or_default().lines().any(|l| l.starts_with("Uid:\t0\t")) {
        eprintln!(
            "NOT RUN: this test starts its own Postgres cluster as the postgres user, which needs root (CI runs as root)"
        );
        return;
    }
    let pg = PrivatePostgres::start();
    let url = pg.url();
    let mut env = env();
    env.push(("AUTOMATION_DATABASE_URL", &url));
    env.push(("AUTOMATION_DB_CONNECTIONS", "4"));
    let s = TestServer::start_with(Backend::Sqlite, &env).await;
    let automation = sampled_automation(&s).await;

    // Stopped for 10 s.
    let load = Load::start(&s.base, "pg-stop", 10);
    load.until(60, "a first burst", |seen| seen.acked.len() >= 200).await;
    load.fault.store(true, std::sync::atomic::Ordering::SeqCst);
    pg.down();
    let stopped = Instant::now();
    load.until(40, "503s", |seen| seen.unavailable >= 3).await;
    let why = wait_ready(&s, 20, 503).await;
    assert!(!why.contains("code:"), "{why}");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    pg.up();
    load.fault.store(false, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    wait_ready(&s, 30, 200).await;
    let recovered = started.elapsed();
    let before = load.acked();
    load.until(60, "acknowledgements again", |seen| seen.acked.len() > before + 100).await;
    let first = load.finish().await;
    check_nothing_lost(&s, &automation, &first).await;

    // Restarted under load.
    let load = Load::start(&s.base, "pg-restart", 10);
    load.until(60, "a burst", |seen| seen.acked.len() >= 200).await;
    pg.restart();
    let before = load.acked();
    load.until(60, "acknowledgements after the restart", |seen| seen.acked.len() > before + 100).await;
    let second = load.finish().await;
    check_nothing_lost(&s, &automation, &second).await;

    // Every table the host writes locked by someone else for 12 s: the
    // host's connections all wait, and senders wait or get 503.
    let load = Load::start(&s.base, "pg-lock", 10);
    load.until(60, "a burst", |seen| seen.acked.len() >= 100).await;
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        // Taking three exclusive locks one after another while the host
        // reads runs with their deliveries can deadlock (Postgres then
        // aborts this side): take them again until they are all held.
        let tx = loop {
            let mut tx = c.begin().await.unwrap();
            match sqlx::query("lock table deliveries, runs, settings in access exclusive mode").execute(&mut *tx).await
            {
                Ok(_) => break tx,
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40P01") => tx.rollback().await.unwrap(),
                Err(e) => panic!("cannot lock the tables: {e}"),
            }
        };
        load.fault.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(12)).await;
        tx.rollback().await.unwrap();
        load.fault.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    let before = load.acked();
    load.until(60, "acknowledgements after the lock", |seen| seen.acked.len() > before + 100).await;
    let third = load.finish().await;
    check_nothing_lost(&s, &automation, &third).await;
    eprintln!(
        "postgres: stop 10 s: acknowledged {} 503 {} ready again {recovered:?} after the start; restart: acknowledged {} 503 {}; \
         lock 12 s: acknowledged {} 503 {}",
        first.acked.len(),
        first.unavailable,
        second.acked.len(),
        second.unavailable,
        third.acked.len(),
        third.unavailable
    );
}

/// `kill -9` while many runs are finishing: after the restart every run has
/// exactly one final status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_run_bookkeeping_leaves_every_run_final() {
    let mut env = env();
    env.push(("AUTOMATION_LEASE_SECONDS", "3"));
    let mut s = TestServer::start_with(Backend::Sqlite, &env).await;
    let a = s
        .post(
            "/v1/automations",
            json!({
                "name": "many short",
                "trigger": {"type": "manual"},
                "preset": {"name": "script", "config": {"script": "sleep 0.2"}},
                "concurrency": 100,
            }),
        )
        .await
        .expect(201)
        .id();
    let mut runs = Vec::new();
    for _ in 0..120 {
        runs.push(s.post(&format!("/v1/automations/{a}/dispatch"), json!({})).await.expect(201).id());
    }
    // Kill the host while runs are starting and finishing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = s.get(&format!("/v1/automations/{a}/runs?status=succeeded&limit=1")).await.expect(200).body["total"]
            .as_u64()
            .unwrap();
        if done >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "runs did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.kill();
    s.spawn_again();
    let mut statuses: HashMap<String, u32> = HashMap::new();
    for r in &runs {
        let done = wait_final(&s, r, 60).await;
        *statuses.entry(done["status"].as_str().unwrap().to_owned()).or_default() += 1;
        // One final status, recorded once: the detail names one transition.
        assert!(done["status_detail"]["from"] == "running" || done["status_detail"]["from"] == "pending", "{done}");
    }
    let total: u32 = statuses.values().sum();
    assert_eq!(total as usize, runs.len());
    eprintln!("kill -9 during bookkeeping: {statuses:?}");
}
