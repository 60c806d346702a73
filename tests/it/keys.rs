//! API keys with scopes, revocation, expiry and the audit log, through the
//! real binary. Before scopes, every key could do everything and none could
//! be revoked: these tests fail against such a build at their first step.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::db_tests;
use crate::support::{Backend, KEY, TestServer, manual_automation, simple_upload};

db_tests!(
    each_scope_allows_what_it_names_and_403_names_the_missing_one,
    changes_are_audited_by_key_never_secret,
    the_new_run_routes_need_their_scopes,
);

/// Re-running, testing and deleting runs are changes: a `read` key gets a
/// 403 for each and changes nothing; `operate` may re-run and test but not
/// delete; `write` may delete a final run.
async fn the_new_run_routes_need_their_scopes(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let upload = simple_upload(&s).await;
    let automation = s.post("/v1/automations", manual_automation("scoped", &upload)).await.expect(201).id();
    let run = s.post(&format!("/v1/automations/{automation}/dispatch"), json!({})).await.expect(201).id();
    s.post(&format!("/v1/runs/{run}/cancel"), json!({})).await.expect(200);
    let (read, _) = make_key(&s, "viewer", &["read"]).await;
    let (operate, _) = make_key(&s, "on-call", &["operate"]).await;
    let (write, _) = make_key(&s, "deployer", &["write"]).await;
    let rerun = format!("/v1/runs/{run}/rerun");
    let test = format!("/v1/automations/{automation}/test");
    let delete = format!("/v1/runs/{run}");
    with_key(&s, &read, Method::POST, &rerun, None).await.expect_error(403, "forbidden", "`operate`");
    with_key(&s, &read, Method::POST, &test, Some(json!({"run": true}))).await.expect_error(
        403,
        "forbidden",
        "`operate`",
    );
    with_key(&s, &read, Method::DELETE, &delete, None).await.expect_error(403, "forbidden", "`write`");
    let runs = s.get(&format!("/v1/automations/{automation}/runs")).await.expect(200).body;
    assert_eq!(runs["total"], 1, "a refused request creates and deletes nothing");
    with_key(&s, &operate, Method::POST, &rerun, None).await.expect(201);
    with_key(&s, &operate, Method::POST, &test, Some(json!({}))).await.expect(200);
    with_key(&s, &operate, Method::DELETE, &delete, None).await.expect_error(403, "forbidden", "`write`");
    with_key(&s, &write, Method::DELETE, &delete, None).await.expect(204);
}

/// Makes a key through the API with the admin key; returns (secret, id).
async fn make_key(s: &TestServer, name: &str, scopes: &[&str]) -> (String, String) {
    let r = s.post("/v1/api-keys", json!({"name": name, "scopes": scopes})).await.expect(201);
    let key = r.body["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(r.body["prefix"].as_str().unwrap()), "{}", r.text);
    (key, r.id())
}

async fn with_key(s: &TestServer, key: &str, method: Method, path: &str, body: Option<Value>) -> crate::support::Resp {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str())];
    let bytes = match body {
        Some(b) => {
            headers.push(("content-type", "application/json"));
            serde_json::to_vec(&b).unwrap()
        }
        None => vec![],
    };
    s.raw(method, path, &headers, bytes).await
}

async fn each_scope_allows_what_it_names_and_403_names_the_missing_one(backend: Backend) {
    let s = TestServer::start(backend).await;
    let upload = simple_upload(&s).await;
    let automation = s.post("/v1/automations", manual_automation("existing", &upload)).await.expect(201).id();
    let (read, _) = make_key(&s, "dashboard", &["read"]).await;
    let (operate, _) = make_key(&s, "on-call", &["operate"]).await;
    let (write, _) = make_key(&s, "deployer", &["write"]).await;
    let (plugins, _) = make_key(&s, "plugin-author", &["plugins"]).await;

    // read: every GET and filter evaluation, nothing else.
    for path in ["/v1/automations", "/v1/runs", "/v1/plugins", "/v1/sources", "/v1/uploads", "/v1/events"] {
        with_key(&s, &read, Method::GET, path, None).await.expect(200);
    }
    let eval = json!({"filter": "action == 'opened'", "payload": {"action": "opened"}});
    with_key(&s, &read, Method::POST, "/v1/filters/evaluate", Some(eval)).await.expect(200);
    let r = with_key(&s, &read, Method::POST, "/v1/automations", Some(manual_automation("x", &upload))).await;
    let r = r.expect_error(403, "forbidden", "needs the `write` scope");
    assert!(r.text.contains("dashboard") && r.text.contains("has read"), "{}", r.text);
    let dispatch = format!("/v1/automations/{automation}/dispatch");
    with_key(&s, &read, Method::POST, &dispatch, None).await.expect_error(403, "forbidden", "`operate`");
    with_key(&s, &read, Method::GET, "/v1/api-keys", None).await.expect_error(403, "forbidden", "`admin`");
    with_key(&s, &read, Method::DELETE, &format!("/v1/automations/{automation}"), None).await.expect_error(
        403,
        "forbidden",
        "`write`",
    );

    // operate: dispatch and cancel, not change.
    let run = with_key(&s, &operate, Method::POST, &dispatch, None).await.expect(201).id();
    let cancel = with_key(&s, &operate, Method::POST, &format!("/v1/runs/{run}/cancel"), None).await;
    assert!(cancel.status == 200 || cancel.status == 409, "{} {}", cancel.status, cancel.text);
    with_key(&s, &operate, Method::PATCH, &format!("/v1/automations/{automation}"), Some(json!({"enabled": false})))
        .await
        .expect_error(403, "forbidden", "`write`");

    // write: automations, uploads, sources (and operate), not plugins or keys.
    let created = with_key(&s, &write, Method::POST, "/v1/automations", Some(manual_automation("w", &upload))).await;
    let created = created.expect(201).id();
    with_key(&s, &write, Method::POST, &format!("/v1/automations/{created}/dispatch"), None).await.expect(201);
    with_key(&s, &write, Method::POST, "/v1/sources", Some(json!({"name": "ci-source"}))).await.expect(201);
    with_key(&s, &write, Method::DELETE, "/v1/sources/ci-source", None).await.expect(204);
    with_key(&s, &write, Method::PUT, "/v1/plugins/anything?kind=filter", None).await.expect_error(
        403,
        "forbidden",
        "`plugins`",
    );
    let grant = json!({"sha256": "0".repeat(64), "capabilities": ["kv"]});
    with_key(&s, &write, Method::POST, "/v1/plugins/anything/grants", Some(grant.clone())).await.expect_error(
        403,
        "forbidden",
        "`admin`",
    );
    with_key(&s, &write, Method::POST, "/v1/api-keys", Some(json!({"name": "escalate", "scopes": ["admin"]})))
        .await
        .expect_error(403, "forbidden", "`admin`");

    // plugins: may upload components (which get no grant), never grant.
    let r = with_key(&s, &plugins, Method::PUT, "/v1/plugins/anything?kind=filter", None).await;
    assert_ne!(r.status, 403, "a plugins key may upload: {}", r.text);
    with_key(&s, &plugins, Method::POST, "/v1/plugins/anything/grants", Some(grant)).await.expect_error(
        403,
        "forbidden",
        "`admin`",
    );
    with_key(&s, &plugins, Method::POST, "/v1/automations", Some(manual_automation("p", &upload))).await.expect_error(
        403,
        "forbidden",
        "`write`",
    );

    // A refused change changed nothing.
    let names: Vec<String> = s.get("/v1/automations").await.expect(200).body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Bad key requests are 422s that say what is wrong.
    s.post("/v1/api-keys", json!({"name": "x", "scopes": []})).await.expect_error(422, "invalid_key", "scope");
    s.post("/v1/api-keys", json!({"name": "x", "scopes": ["root"]})).await.expect_error(422, "invalid_body", "root");
    s.post("/v1/api-keys", json!({"name": "x", "scopes": ["read"], "expires_in_days": 0})).await.expect_error(
        422,
        "invalid_expiry",
        "1 to 3650",
    );

    // The listing shows scopes and never a secret.
    let list = s.get("/v1/api-keys").await.expect(200);
    for secret in [&read, &operate, &write, &plugins] {
        assert!(!list.text.contains(secret.as_str()), "a secret is listed");
    }
    let dashboard = list.body.as_array().unwrap().iter().find(|k| k["name"] == "dashboard").unwrap().clone();
    assert_eq!(dashboard["scopes"], json!(["read"]));
}

async fn changes_are_audited_by_key_never_secret(backend: Backend) {
    let s = TestServer::start(backend).await;
    let upload = simple_upload(&s).await;
    let (write, write_id) = make_key(&s, "deployer", &["write"]).await;
    let created =
        with_key(&s, &write, Method::POST, "/v1/automations", Some(manual_automation("audited", &upload))).await;
    let automation = created.expect(201).id();
    let run =
        with_key(&s, &write, Method::POST, &format!("/v1/automations/{automation}/dispatch"), None).await.expect(201);
    let by = format!("api-key:deployer ({write_id})");
    assert_eq!(run.body["status_detail"]["by"], by.as_str(), "{}", run.text);
    let cancelled = with_key(&s, &write, Method::POST, &format!("/v1/runs/{}/cancel", run.id()), None).await;
    if cancelled.status == 200 {
        assert_eq!(cancelled.body["status_detail"]["by"], by.as_str(), "{}", cancelled.text);
    }
    // Reads and refused requests are not changes.
    with_key(&s, &write, Method::GET, "/v1/automations", None).await.expect(200);
    with_key(&s, &write, Method::GET, "/v1/audit", None).await.expect_error(403, "forbidden", "`admin`");

    let audit = s.get(&format!("/v1/audit?key_id={write_id}")).await.expect(200);
    assert!(!audit.text.contains(&write), "the audit log holds a secret");
    let actions: Vec<(String, String)> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["key_name"], "deployer");
            assert_eq!(e["key_id"], write_id.as_str());
            (e["action"].as_str().unwrap().to_owned(), e["target"].as_str().unwrap().to_owned())
        })
        .collect();
    let dispatch = ("POST /v1/automations/{id}/dispatch".to_owned(), format!("/v1/automations/{automation}/dispatch"));
    assert!(actions.contains(&("POST /v1/automations".to_owned(), "/v1/automations".to_owned())), "{actions:?}");
    assert!(actions.contains(&dispatch), "{actions:?}");
    assert!(actions.iter().all(|(a, _)| !a.starts_with("GET")), "{actions:?}");
    // The admin's own changes (making the key) are recorded as the admin's.
    let all = s.get("/v1/audit").await.expect(200);
    let made = all.body["items"].as_array().unwrap().iter().find(|e| e["action"] == "POST /v1/api-keys").cloned();
    let made = made.unwrap_or_else(|| panic!("key creation not audited: {}", all.text));
    assert_eq!(made["key_name"], "AUTOMATION_API_KEY");
    assert!(made["key_id"].is_null());
}

/// Revoked and expired keys are refused at once, on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_keys_are_refused_at_once_on_every_replica() {
    if crate::support::skip_postgres() {
        eprintln!("AUTOMATION_TEST_SKIP_POSTGRES=1: Postgres variant not run");
        return;
    }
    let a = TestServer::start(Backend::Postgres).await;
    let b = a.start_peer(&[]).await;
    let (key, id) = make_key(&a, "laptop", &["read"]).await;
    with_key(&a, &key, Method::GET, "/v1/automations", None).await.expect(200);
    with_key(&b, &key, Method::GET, "/v1/automations", None).await.expect(200);
    let revoked = a.delete(&format!("/v1/api-keys/{id}")).await.expect(200);
    assert!(revoked.body["revoked_at"].is_string(), "{}", revoked.text);
    // No wait: the very next request, on either host.
    with_key(&b, &key, Method::GET, "/v1/automations", None).await.expect_error(401, "unauthorized", "revoked");
    with_key(&a, &key, Method::GET, "/v1/automations", None).await.expect_error(401, "unauthorized", "revoked");

    let soon = (chrono::Utc::now() + chrono::TimeDelta::seconds(2)).to_rfc3339();
    let r = a.post("/v1/api-keys", json!({"name": "temp", "scopes": ["read"], "expires_at": soon})).await.expect(201);
    let temp = r.body["key"].as_str().unwrap().to_owned();
    with_key(&b, &temp, Method::GET, "/v1/runs", None).await.expect(200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    with_key(&b, &temp, Method::GET, "/v1/runs", None).await.expect_error(401, "unauthorized", "expired");
    with_key(&a, &temp, Method::GET, "/v1/runs", None).await.expect_error(401, "unauthorized", "expired");
    // last_used_at was recorded for the key that was used.
    let list = a.get("/v1/api-keys").await.expect(200);
    let laptop = list.body.as_array().unwrap().iter().find(|k| k["name"] == "laptop").unwrap().clone();
    assert!(laptop["last_used_at"].is_string(), "{laptop}");
}

/// The CLI makes scoped keys, lists them and revokes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_lists_and_revokes_scoped_keys() {
    let s = TestServer::start(Backend::Sqlite).await;
    let out = s.command().args(["api-key", "create", "--name", "grafana", "--scope", "read"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    with_key(&s, &key, Method::GET, "/v1/runs", None).await.expect(200);
    with_key(&s, &key, Method::POST, "/v1/sources", Some(json!({"name": "nope"}))).await.expect_error(
        403,
        "forbidden",
        "`write`",
    );
    let out = s.command().args(["api-key", "create", "--name", "x"]).output().unwrap();
    assert!(!out.status.success(), "a key without --scope was made");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--scope"));
    let out = s.command().args(["api-key", "create", "--name", "x", "--scope", "root"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown scope"));

    let out = s.command().args(["api-key", "list"]).output().unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    let line = listing.lines().find(|l| l.contains("grafana")).unwrap_or_else(|| panic!("{listing}"));
    assert!(line.contains("read") && line.ends_with("live"), "{line}");
    assert!(!listing.contains(&key), "the listing shows a secret");
    let id = line.split_whitespace().next().unwrap();
    let out = s.command().args(["api-key", "revoke", id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    with_key(&s, &key, Method::GET, "/v1/runs", None).await.expect_error(401, "unauthorized", "revoked");
    let out = s.command().args(["api-key", "list"]).output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("revoked"));
    let _ = KEY;
}
