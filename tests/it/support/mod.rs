//! Test support: start the real `automation-host` binary on an ephemeral
//! port against a fresh database, and talk HTTP to it.

#![allow(dead_code)] // Not every test binary module uses every helper.

pub mod polyglot;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

/// The admin key every test server accepts.
pub const KEY: &str = "test-admin-key-0123456789";

/// The database a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the server's temporary data directory.
    Sqlite,
    /// A fresh Postgres database, dropped afterwards.
    Postgres,
}

/// True when Postgres tests are explicitly switched off on this machine.
/// CI never sets it.
pub fn skip_postgres() -> bool {
    std::env::var("AUTOMATION_TEST_SKIP_POSTGRES").is_ok_and(|v| v == "1")
}

fn postgres_admin_url() -> String {
    std::env::var("AUTOMATION_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Generates `sqlite` and `postgres` test functions for each named
/// `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::support::skip_postgres() {
                    eprintln!("AUTOMATION_TEST_SKIP_POSTGRES=1: Postgres variant not run");
                    return;
                }
                super::$name($crate::support::Backend::Postgres).await
            }
        }
    )*};
}

/// The compile cache shared by the test servers of this build.
pub fn shared_cache_dir() -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    dir.display().to_string()
}

/// A fresh Postgres database that is dropped when this goes away.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sqlx::Connection;
        let admin = postgres_admin_url();
        let name = format!("ah_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach Postgres at {admin}: {e}\n\
                 Start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start), \
                 point AUTOMATION_TEST_POSTGRES_URL at one, or set AUTOMATION_TEST_SKIP_POSTGRES=1 \
                 to skip the Postgres variants on this machine."
            )
        });
        sqlx::query(&format!("create database {name}")).execute(&mut conn).await.unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin);
        PgDatabase { url: format!("{base}/{name}"), name }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context we can borrow; use a thread
        // with its own small runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ =
                        sqlx::query(&format!("drop database if exists {name} with (force)")).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

/// A running `automation-host` process and the database it owns.
pub struct TestServer {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub backend: Backend,
    /// The data directory (SQLite file, caches, workspaces).
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDatabase>,
    /// The Postgres URL when sharing another server's database.
    pub shared_db: Option<String>,
    /// Extra environment variables the server was started with.
    pub env: Vec<(String, String)>,
    http: reqwest::Client,
    log: PathBuf,
    /// Run at the lowest CPU priority (see [`TestServer::start_niced`]).
    nice: bool,
}

/// An HTTP response, read fully.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// Asserts the status, showing the body if it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        self
    }

    /// Asserts an error response with this status and code whose detail
    /// mentions `needle`.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str, needle: &str) -> Resp {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        assert_eq!(self.body["code"], code, "unexpected code; body: {}", self.text);
        let detail = self.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "detail {detail:?} should mention {needle:?}");
        self
    }

    /// The `id` field of the body.
    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_else(|| panic!("no id in {}", self.text)).to_owned()
    }
}

impl TestServer {
    /// Starts a server on a fresh database.
    pub async fn start(backend: Backend) -> TestServer {
        TestServer::start_with(backend, &[]).await
    }

    /// Starts a server on a fresh database with extra environment variables.
    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> TestServer {
        TestServer::start_with_spawn(backend, env, false).await
    }

    async fn start_with_spawn(backend: Backend, env: &[(&str, &str)], nice: bool) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDatabase::create().await),
        };
        let mut server = TestServer {
            child: None,
            base: String::new(),
            backend,
            log: dir.path().join("server.log"),
            dir,
            pg,
            shared_db: None,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
            nice,
        };
        server.spawn();
        server
    }

    /// [`TestServer::start_with`] at the lowest CPU priority (`nice -n 19`),
    /// for tests whose server compiles big components (tens of seconds of
    /// both cores) while other tests time what they see.
    pub async fn start_niced(backend: Backend, env: &[(&str, &str)]) -> TestServer {
        TestServer::start_with_spawn(backend, env, true).await
    }

    /// Starts a second host on this server's Postgres database (a replica).
    pub async fn start_peer(&self, env: &[(&str, &str)]) -> TestServer {
        let url = self.pg.as_ref().expect("peers share a Postgres database").url.clone();
        let dir = tempfile::tempdir().unwrap();
        // Replicas of one database share its secret key, as the README says.
        let key_file = self.dir.path().join("secret.key").display().to_string();
        let mut env: Vec<(&str, &str)> = env.to_vec();
        if !env.iter().any(|(k, _)| k.starts_with("AUTOMATION_SECRET_KEY")) {
            env.push(("AUTOMATION_SECRET_KEY_FILE", &key_file));
        }
        let mut server = TestServer {
            child: None,
            base: String::new(),
            backend: Backend::Postgres,
            log: dir.path().join("server.log"),
            dir,
            pg: None,
            shared_db: Some(url),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
            nice: false,
        };
        server.spawn();
        server
    }

    /// The environment the binary runs with (besides `PATH`).
    pub fn server_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("AUTOMATION_DATA_DIR".to_owned(), self.dir.path().display().to_string()),
            ("AUTOMATION_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("AUTOMATION_API_KEY".to_owned(), KEY.to_owned()),
            ("AUTOMATION_LOG".to_owned(), "info,automation_host=debug".to_owned()),
            // One compile cache for every test server: the bundled plugins
            // are compiled once per test run, not once per test.
            ("AUTOMATION_PLUGIN_CACHE_DIR".to_owned(), shared_cache_dir()),
        ];
        if let Some(pg) = &self.pg {
            env.push(("AUTOMATION_DATABASE_URL".to_owned(), pg.url.clone()));
        }
        if let Some(url) = &self.shared_db {
            env.push(("AUTOMATION_DATABASE_URL".to_owned(), url.clone()));
        }
        if self.env.iter().any(|(k, _)| k == "AUTOMATION_API_KEY_FILE") {
            env.retain(|(k, _)| k != "AUTOMATION_API_KEY");
        }
        env.extend(self.env.iter().cloned());
        env
    }

    /// The database URL the server uses.
    pub fn database_url(&self) -> String {
        match (&self.pg, &self.shared_db) {
            (Some(pg), _) => pg.url.clone(),
            (None, Some(url)) => url.clone(),
            (None, None) => format!("sqlite://{}", self.dir.path().join("automation.db").display()),
        }
    }

    /// A `Command` for the binary with this server's environment.
    pub fn command(&self) -> Command {
        // AUTOMATION_TEST_BINARY runs the suite against another build (an
        // older one, to see an attack test fail before its fix).
        let binary = std::env::var("AUTOMATION_TEST_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_automation-host").to_owned());
        let mut cmd = Command::new(binary);
        cmd.env_clear();
        for var in ["PATH", "HOME", "TMPDIR"] {
            if let Ok(v) = std::env::var(var) {
                cmd.env(var, v);
            }
        }
        cmd.envs(self.server_env());
        cmd
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = self.command();
        if self.nice {
            // `nice` execs the binary: the pid stays the server's.
            let mut niced = Command::new("nice");
            niced.args(["-n", "19"]).arg(cmd.get_program()).env_clear();
            niced.envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))));
            cmd = niced;
        }
        let mut child = cmd
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("cannot start automation-host");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("automation-host listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => self.base = url,
            Err(_) => {
                let _ = child.kill();
                panic!("automation-host did not start; its log:\n{}", self.log_text());
            }
        }
        self.child = Some(child);
    }

    /// The server process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server not running").id()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port in the base URL")
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server not running");
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        for _ in 0..300 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("automation-host did not stop within 15 s of SIGTERM; log:\n{}", self.log_text());
    }

    /// Kills the process with SIGKILL (no chance to clean up).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (after `kill`) on the same database.
    pub fn spawn_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn();
    }

    /// Stops the server and starts it again on the same database.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "server exited with {status} on SIGTERM; log:\n{}", self.log_text());
        self.spawn();
    }

    /// Sends a request with the admin key.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        read(req.send().await.expect("request failed")).await
    }

    /// Sends a request with a raw body and optional headers, no default auth.
    pub async fn raw(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        read(req.send().await.expect("request failed")).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    /// Uploads a bundle archive.
    pub async fn upload(&self, tgz: Vec<u8>) -> Resp {
        let auth = format!("Bearer {KEY}");
        self.raw(Method::POST, "/v1/uploads", &[("authorization", &auth), ("content-type", "application/gzip")], tgz)
            .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- automation-host log ({:?}) ---\n{}", self.backend, self.log_text());
        }
    }
}

async fn read(resp: reqwest::Response) -> Resp {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp { status, body, text }
}

/// Builds a .tar.gz from `(path, contents, mode)` files.
pub fn tgz(files: &[(&str, &str, u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, contents, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, contents.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A .tar.gz with one entry whose raw name is `name` (which `tar` itself
/// would refuse to write, such as `../escape`).
pub fn tgz_raw_name(name: &str, contents: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_size(contents.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, contents.as_bytes()).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

/// A minimal valid manual automation body that runs `bundle`.
pub fn manual_automation(name: &str, upload_id: &str) -> Value {
    serde_json::json!({
        "name": name,
        "trigger": {"type": "manual"},
        "bundle": {"upload_id": upload_id},
        "entrypoint": "sh run.sh",
    })
}

/// Uploads a trivial bundle and returns its id.
pub async fn simple_upload(server: &TestServer) -> String {
    server.upload(tgz(&[("run.sh", "echo hello\n", 0o755)])).await.expect(201).id()
}

/// Polls a run until `done` says so, or panics after `secs` seconds.
pub async fn wait_for_run(server: &TestServer, run: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let r = server.get(&format!("/v1/runs/{run}")).await.expect(200);
        if done(&r.body) {
            return r.body;
        }
        if std::time::Instant::now() > deadline {
            panic!("run {run} did not get there within {secs} s; last seen: {}", r.text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a run until it reaches a final status.
pub async fn wait_final(server: &TestServer, run: &str, secs: u64) -> Value {
    wait_for_run(server, run, secs, |r| !matches!(r["status"].as_str(), Some("pending" | "running"))).await
}

/// A manual automation running `script` through the script preset and the
/// local sandbox, with extra fields merged in.
pub fn script_automation(name: &str, script: &str, extra: Value) -> Value {
    let mut a = serde_json::json!({
        "name": name,
        "trigger": {"type": "manual"},
        "preset": {"name": "script", "config": {"interpreter": "sh", "script": script}},
        "executor": {"plugin": "local-sandbox", "config": {}},
    });
    if let (Some(a), Some(extra)) = (a.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            a.insert(k.clone(), v.clone());
        }
    }
    a
}

/// A token unique to a test, to tell its processes apart by command line
/// (sandboxed processes have pids of their own namespace, so the tests find
/// them from the host by what they run instead: `sleep 1000.<token>`).
pub fn token() -> String {
    format!("{}", 100_000 + (uuid::Uuid::new_v4().as_u128() % 900_000))
}

/// Host pids of live processes whose command line contains `needle`.
pub fn pids_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let me = std::process::id() as i32;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && process_alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Waits until some process runs `needle`; returns their pids.
pub async fn wait_for_pids(needle: &str, secs: u64) -> Vec<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let pids = pids_with(needle);
        if !pids.is_empty() {
            return pids;
        }
        assert!(std::time::Instant::now() < deadline, "no process running {needle:?} appeared within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to `secs` for every process running `needle` to be gone;
/// returns the pids still alive then (empty when all are gone).
pub async fn wait_gone(needle: &str, secs: u64) -> Vec<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let pids = pids_with(needle);
        if pids.is_empty() || std::time::Instant::now() > deadline {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True while a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Waits for a file to appear and returns its trimmed contents.
pub async fn wait_for_file(path: &Path, secs: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text.trim().to_owned();
        }
        if std::time::Instant::now() > deadline {
            panic!("{} did not appear within {secs} s", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
