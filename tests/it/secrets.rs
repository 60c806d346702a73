//! Secrets through the real binary: sealed at rest, write-only over the
//! API, rotated without a restart, and out of the process environment.

use reqwest::Method;
use serde_json::{Value, json};

use crate::db_tests;
use crate::support::{Backend, KEY, TestServer, script_automation, wait_final};
use automation_host::events::signature::sign;

db_tests!(
    secrets_are_sealed_at_rest_and_never_shown,
    a_source_secret_rotates_at_once,
    a_host_with_another_secret_key_refuses_to_start,
    write_only_config_is_masked_and_kept
);

/// Every text value of the tables that hold secrets, as stored.
async fn stored_values(s: &TestServer) -> Vec<String> {
    let queries = [
        "select secret from event_sources",
        "select value from settings",
        "select coalesce(secret_env, '') from automations",
    ];
    let mut out = Vec::new();
    let url = s.database_url();
    for q in queries {
        let rows: Vec<String> = if url.starts_with("sqlite") {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let rows = sqlx::query_scalar(q).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        } else {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let rows = sqlx::query_scalar(q).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        };
        out.extend(rows);
    }
    out
}

async fn secrets_are_sealed_at_rest_and_never_shown(backend: Backend) {
    let s = TestServer::start(backend).await;
    let source_secret = "shop-secret-0123456789-abcdef";
    s.post("/v1/sources", json!({"name": "shop", "secret": source_secret})).await.expect(201);
    let token = "ghp_do-not-show-me-0123456789";
    let script = "printf 'len=%s' \"${#GITHUB_TOKEN}\"";
    let body = script_automation(
        "secretive",
        script,
        json!({"env": {"PLAIN": "visible"}, "secret_env": {"GITHUB_TOKEN": token}}),
    );
    let created = s.post("/v1/automations", body).await.expect(201);
    assert_eq!(created.body["secret_env"], json!({"GITHUB_TOKEN": "********"}), "{}", created.text);
    assert_eq!(created.body["env"], json!({"PLAIN": "visible"}));
    let id = created.id();
    for r in [s.get(&format!("/v1/automations/{id}")).await, s.get("/v1/automations").await] {
        assert!(!r.text.contains(token), "a read showed the secret: {}", r.text);
        assert!(r.text.contains("GITHUB_TOKEN"), "the name is shown");
    }
    // The run gets the value (a 29-character token).
    let run = s.post(&format!("/v1/automations/{id}/dispatch"), json!({})).await.expect(201).id();
    let run = wait_final(&s, &run, 60).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["output"]["stdout"].as_str().unwrap_or_default().contains(&format!("len={}", token.len())), "{run}");
    // Sealed at rest: neither value is in the database, every secret is sealed.
    let stored = stored_values(&s).await;
    for v in &stored {
        assert!(!v.contains(token) && !v.contains(source_secret), "stored in plain text: {v}");
    }
    let sealed = stored.iter().filter(|v| v.starts_with("sealed:v1:")).count();
    assert!(sealed >= 4, "expected the source secret, the callback key, the key check and the env sealed: {stored:?}");
    if backend == Backend::Sqlite {
        for file in ["automation.db", "automation.db-wal"] {
            let bytes = std::fs::read(s.data_dir().join(file)).unwrap_or_default();
            for needle in [token, source_secret] {
                assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} in {file}");
            }
        }
        let key = s.data_dir().join("secret.key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // Merge semantics: null removes, other names stay.
    let patched = s
        .patch(&format!("/v1/automations/{id}"), json!({"secret_env": {"GITHUB_TOKEN": null, "NPM_TOKEN": "n-123"}}))
        .await;
    assert_eq!(patched.expect(200).body["secret_env"], json!({"NPM_TOKEN": "********"}));
    let clash = s.patch(&format!("/v1/automations/{id}"), json!({"secret_env": {"PLAIN": "x"}})).await;
    clash.expect_error(422, "invalid_env", "both env and secret_env");
    // Nor in the host's log.
    assert!(!s.log_text().contains(token) && !s.log_text().contains(source_secret), "a secret was logged");
}

async fn a_source_secret_rotates_at_once(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let old = "first-secret-0123456789";
    s.post("/v1/sources", json!({"name": "shop", "secret": old})).await.expect(201);
    let deliver = |secret: &str, n: u32| {
        let body = json!({"type": "order.paid", "n": n}).to_string();
        (sign(secret.as_bytes(), body.as_bytes()), body)
    };
    let s = &s;
    let post = |sig: String, body: String| async move {
        s.raw(Method::POST, "/v1/events/shop", &[("X-Signature-256", &sig)], body.into_bytes()).await
    };
    let (sig, body) = deliver(old, 1);
    post(sig, body).await.expect(202);
    let rotated = s.patch("/v1/sources/shop", json!({})).await.expect(200);
    let new = rotated.body["secret"].as_str().expect("a generated secret is shown once").to_owned();
    assert!(new.starts_with("whsec_"), "{}", rotated.text);
    let (sig, body) = deliver(old, 2);
    post(sig, body).await.expect_error(401, "unauthorized", "signature");
    let (sig, body) = deliver(&new, 3);
    post(sig, body).await.expect(202);
    let chosen = s.patch("/v1/sources/shop", json!({"secret": "chosen-secret-0123456789"})).await.expect(200);
    assert!(chosen.body.get("secret").is_none(), "a chosen secret is not echoed: {}", chosen.text);
    s.patch("/v1/sources/shop", json!({"secret": "short"})).await.expect_error(422, "invalid_secret", "16");
    s.patch("/v1/sources/nope", json!({})).await.expect_error(404, "not_found", "nope");
}

async fn a_host_with_another_secret_key_refuses_to_start(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.post("/v1/sources", json!({"name": "shop", "secret": "a-secret-0123456789"})).await.expect(201);
    let out = s.command().env("AUTOMATION_SECRET_KEY", "ab".repeat(32)).arg("migrate").output().unwrap();
    assert!(!out.status.success(), "a host with another key started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sealed with another secret key") && err.contains("AUTOMATION_SECRET_KEY"), "{err}");
    // A key that is not 32 bytes is a configuration error, named.
    let out = s.command().env("AUTOMATION_SECRET_KEY", "short").arg("migrate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTOMATION_SECRET_KEY must be 32 bytes"));
}

async fn write_only_config_is_masked_and_kept(backend: Backend) {
    let s = TestServer::start(backend).await;
    let schema = s.get("/v1/plugins/agent-server").await.expect(200).body["config_schema"].clone();
    assert_eq!(schema["properties"]["session_api_key"]["writeOnly"], true, "{schema}");
    let session = "sk-session-secret-0123456789";
    let body = json!({
        "name": "remote",
        "trigger": {"type": "manual"},
        "preset": {"name": "script", "config": {"script": "true"}},
        "executor": {"plugin": "agent-server", "config": {"url": "http://127.0.0.1:9", "session_api_key": session}},
    });
    let created = s.post("/v1/automations", body).await.expect(201);
    assert_eq!(created.body["executor"]["config"]["session_api_key"], "********", "{}", created.text);
    let id = created.id();
    let shown = s.get(&format!("/v1/automations/{id}")).await.expect(200);
    assert!(!shown.text.contains(session));
    // Sending back what a read showed keeps the stored value.
    let config = shown.body["executor"].clone();
    s.patch(&format!("/v1/automations/{id}"), json!({"executor": config, "name": "renamed"})).await.expect(200);
    let stored = executor_config(&s, &id).await;
    assert_eq!(stored["session_api_key"], session, "the masked round trip lost the value");
    // A new value replaces it.
    let new = json!({"plugin": "agent-server", "config": {"url": "http://127.0.0.1:9", "session_api_key": "sk-new"}});
    s.patch(&format!("/v1/automations/{id}"), json!({"executor": new})).await.expect(200);
    assert_eq!(executor_config(&s, &id).await["session_api_key"], "sk-new");
}

async fn executor_config(s: &TestServer, id: &str) -> Value {
    let url = s.database_url();
    let text: String = if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query_scalar("select executor from automations where id = $1").bind(id).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query_scalar("select executor::text from automations where id = $1::uuid")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    serde_json::from_str::<Value>(&text).unwrap()["config"].clone()
}

/// The admin key is in neither the environment nor `/proc/<pid>/environ`
/// of the running host (any process of its user could read it there), and
/// can come from a file instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_leaves_the_process_environment() {
    let s = TestServer::start(Backend::Sqlite).await;
    let environ = std::fs::read(format!("/proc/{}/environ", s.pid())).unwrap();
    assert!(!environ.windows(KEY.len()).any(|w| w == KEY.as_bytes()), "the admin key is in /proc/<pid>/environ");
    s.get("/v1/automations").await.expect(200);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.key");
    std::fs::write(&file, "from-a-file-0123456789\n").unwrap();
    let f = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_API_KEY_FILE", file.to_str().unwrap())]).await;
    let auth = "Bearer from-a-file-0123456789";
    f.raw(Method::GET, "/v1/automations", &[("authorization", auth)], vec![]).await.expect(200);
    let environ = std::fs::read_to_string(format!("/proc/{}/environ", f.pid())).unwrap_or_default();
    assert!(!environ.contains("AUTOMATION_API_KEY="), "{environ}");
}
