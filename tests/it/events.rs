use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::db_tests;
use crate::support::{Backend, TestServer};
use automation_host::events::signature::sign;
use reqwest::Method;
use serde_json::{Value, json};

pub(crate) const SECRET: &str = "test-webhook-secret-123";

db_tests!(
    every_github_fixture_delivers_matches_once_and_dedups,
    signatures_are_checked_and_nothing_is_stored_without_one,
    custom_sources_sign_key_and_dedup,
    acknowledged_deliveries_survive_kill_9,
    an_events_payload_is_stored_once_for_all_its_runs,
    signature_schemes_verify_refuse_stale_and_dedup,
    automation_changes_reach_the_very_next_delivery,
    a_backlog_that_waited_is_matched_at_the_acknowledgements_priority,
);

pub(crate) fn fixtures() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/github-webhooks");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(root).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let event = dir.file_name().unwrap().to_string_lossy().into_owned();
        for f in std::fs::read_dir(&dir).unwrap() {
            out.push((event.clone(), f.unwrap().path()));
        }
    }
    out.sort();
    out
}

pub(crate) async fn deliver(s: &TestServer, event: &str, delivery: &str, body: &[u8]) -> crate::support::Resp {
    let sig = sign(SECRET.as_bytes(), body);
    s.raw(
        Method::POST,
        "/v1/events/github",
        &[
            ("x-github-event", event),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", &sig),
            ("content-type", "application/json"),
        ],
        body.to_vec(),
    )
    .await
}

pub(crate) async fn wait_matched(s: &TestServer, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = s.get(&format!("/v1/events/{id}")).await.expect(200).body;
        if d["status"] == "matched" || d["status"] == "unrecognized" {
            return d;
        }
        assert!(std::time::Instant::now() < deadline, "delivery {id} was not matched: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn server_env() -> Vec<(&'static str, &'static str)> {
    vec![("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET), ("AUTOMATION_NO_DISPATCH", "true")]
}

async fn every_github_fixture_delivers_matches_once_and_dedups(backend: Backend) {
    let s = TestServer::start_with(backend, &server_env()).await;
    let fixtures = fixtures();
    assert!(fixtures.len() > 250);
    // One automation per event type: its events, filtered on having a sender.
    let mut automations = HashMap::new();
    for event in fixtures.iter().map(|(e, _)| e.clone()).collect::<std::collections::BTreeSet<_>>() {
        let body = json!({
            "name": format!("on {event}"),
            "trigger": {"type": "event", "source": "github", "on": [event, format!("{event}.*")], "filter": "sender.login"},
            "preset": {"name": "script", "config": {"script": "true"}},
        });
        automations.insert(event.clone(), s.post("/v1/automations", body).await.expect(201).id());
    }
    let mut expected_runs: HashMap<String, usize> = HashMap::new();
    let mut acks = Vec::new();
    for (i, (event, path)) in fixtures.iter().enumerate() {
        let body = std::fs::read(path).unwrap();
        let payload: Value = serde_json::from_slice(&body).unwrap();
        let r = deliver(&s, event, &format!("delivery-{i}"), &body).await;
        assert_eq!(r.status, 202, "{}: {}", path.display(), r.text);
        assert_eq!(r.body["status"], "accepted");
        let expect = payload["sender"]["login"].as_str().is_some_and(|l| !l.is_empty());
        if expect {
            *expected_runs.entry(event.clone()).or_default() += 1;
        }
        acks.push((event.clone(), r.id(), expect, payload));
    }
    for (event, id, expect, payload) in &acks {
        let d = wait_matched(&s, id).await;
        let key = match payload["action"].as_str() {
            Some(a) if !a.is_empty() => format!("{event}.{a}"),
            _ => event.clone(),
        };
        assert_eq!(d["event_key"], key.as_str());
        let matched: Vec<&str> =
            d["result"]["matched"].as_array().unwrap().iter().map(|m| m["automation_id"].as_str().unwrap()).collect();
        if *expect {
            assert_eq!(matched, [automations[event].as_str()], "{d}");
        } else {
            assert!(matched.is_empty(), "{d}");
            assert!(d["result"]["not_matched"].to_string().contains("filter is false"), "{d}");
        }
    }
    for (event, id) in &automations {
        let runs = s.get(&format!("/v1/automations/{id}/runs")).await.expect(200).body;
        assert_eq!(runs["total"].as_u64().unwrap() as usize, expected_runs.get(event).copied().unwrap_or(0), "{event}");
    }
    // A redelivery: acknowledged as a duplicate, nothing new.
    let (event, path) = &fixtures[0];
    let r = deliver(&s, event, "delivery-0", &std::fs::read(path).unwrap()).await.expect(200);
    assert_eq!(r.body["status"], "duplicate");
    assert_eq!(r.body["id"], acks[0].1.as_str());
    let total: u64 = {
        let mut t = 0;
        for id in automations.values() {
            t += s.get(&format!("/v1/automations/{id}/runs")).await.expect(200).body["total"].as_u64().unwrap();
        }
        t
    };
    assert_eq!(total as usize, expected_runs.values().sum::<usize>());
    assert_eq!(s.get("/v1/events?source=github").await.expect(200).body["total"], fixtures.len());
    let metrics = s.raw(Method::GET, "/metrics", &[], vec![]).await.expect(200).text;
    let expected_matches: usize = expected_runs.values().sum();
    for line in [
        format!("automation_event_deliveries_total{{outcome=\"accepted\"}} {}", fixtures.len()),
        "automation_event_deliveries_total{outcome=\"duplicate\"} 1".to_owned(),
        format!("automation_filter_evaluations_total{{result=\"match\"}} {expected_matches}"),
        format!("automation_runs{{status=\"pending\"}} {expected_matches}"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
    }
}

async fn signatures_are_checked_and_nothing_is_stored_without_one(backend: Backend) {
    let s = TestServer::start_with(backend, &server_env()).await;
    let body = br#"{"action": "opened", "pull_request": {"draft": false}, "repository": {"full_name": "o/r"}}"#;
    let r = s.raw(Method::POST, "/v1/events/github", &[("x-github-event", "pull_request")], body.to_vec()).await;
    r.expect_error(401, "unauthorized", "missing signature header X-Hub-Signature-256");
    let wrong = sign(b"not the secret", body);
    let r = s
        .raw(
            Method::POST,
            "/v1/events/github",
            &[("x-github-event", "pull_request"), ("x-hub-signature-256", &wrong)],
            body.to_vec(),
        )
        .await;
    r.expect_error(401, "unauthorized", "invalid signature");
    // Signed over other bytes.
    let r = s
        .raw(
            Method::POST,
            "/v1/events/github",
            &[("x-github-event", "pull_request"), ("x-hub-signature-256", &sign(SECRET.as_bytes(), b"{}"))],
            body.to_vec(),
        )
        .await;
    assert_eq!(r.status, 401);
    let bad_json = b"{not json";
    let r = s
        .raw(
            Method::POST,
            "/v1/events/github",
            &[("x-hub-signature-256", &sign(SECRET.as_bytes(), bad_json))],
            bad_json.to_vec(),
        )
        .await;
    r.expect_error(400, "malformed_json", "not JSON");
    assert_eq!(s.get("/v1/events").await.expect(200).body["total"], 0, "a refused delivery was stored");
    // The reference service's envelope, and a filter error made visible.
    let a = s
        .post(
            "/v1/automations",
            json!({
                "name": "pr",
                "trigger": {"type": "event", "source": "github", "on": ["pull_request.*"], "filter": "glob(pull_request.title, 'WIP*')"},
                "preset": {"name": "script", "config": {"script": "true"}},
            }),
        )
        .await
        .expect(201);
    let envelope = json!({"payload": {"action": "opened", "pull_request": {"draft": false}}}).to_string();
    let r = deliver(&s, "pull_request", "env-1", envelope.as_bytes()).await.expect(202);
    let d = wait_matched(&s, &r.id()).await;
    assert_eq!(d["event_key"], "pull_request.opened");
    assert_eq!(d["payload"]["pull_request"]["draft"], false, "the envelope was unwrapped");
    assert!(d["result"]["not_matched"][0]["reason"].as_str().unwrap().contains("filter failed"), "{d}");
    let auto = s.get(&format!("/v1/automations/{}", a.id())).await.expect(200).body;
    assert_eq!(auto["filter_errors"]["count"], 1);
    assert!(auto["filter_errors"]["last_error"].is_string(), "{auto}");
    // Without a secret configured, GitHub events are off.
    let off = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    off.raw(Method::POST, "/v1/events/github", &[], body.to_vec()).await.expect_error(
        404,
        "not_found",
        "AUTOMATION_GITHUB_WEBHOOK_SECRET",
    );
}

async fn custom_sources_sign_key_and_dedup(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let created = s
        .post(
            "/v1/sources",
            json!({"name": "shop", "event_key_expr": "event.kind", "delivery_id_header": "X-Shop-Delivery"}),
        )
        .await
        .expect(201)
        .body;
    let secret = created["secret"].as_str().expect("a generated secret is returned once").to_owned();
    assert_eq!(created["signature_header"], "X-Signature-256");
    assert!(
        s.get("/v1/sources/shop").await.expect(200).body.get("secret").is_none(),
        "the secret is never shown again"
    );
    s.post("/v1/sources", json!({"name": "shop"})).await.expect_error(409, "source_exists", "shop");
    s.post("/v1/sources", json!({"name": "github"})).await.expect_error(409, "source_reserved", "built in");
    s.post("/v1/sources", json!({"name": "x", "event_key_expr": "a["})).await.expect_error(
        422,
        "invalid_event_key_expr",
        "event_key_expr",
    );
    s.post("/v1/sources", json!({"name": "y", "secret": "short"})).await.expect_error(422, "invalid_secret", "16");
    let a = s
        .post(
            "/v1/automations",
            json!({
                "name": "paid orders",
                "trigger": {"type": "event", "source": "shop", "on": ["order.*"], "filter": "amount > `100`"},
                "preset": {"name": "script", "config": {"script": "true"}},
            }),
        )
        .await
        .expect(201);
    let send = |body: Value, delivery: &str| {
        let body = body.to_string();
        let sig = sign(secret.as_bytes(), body.as_bytes());
        let headers = vec![("X-Signature-256".to_owned(), sig), ("X-Shop-Delivery".to_owned(), delivery.to_owned())];
        (body, headers)
    };
    let (big, h1) = send(json!({"event": {"kind": "order.paid"}, "amount": 250}), "d1");
    let h: Vec<(&str, &str)> = h1.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = s.raw(Method::POST, "/v1/events/shop", &h, big.clone().into_bytes()).await.expect(202);
    assert_eq!(r.body["event_key"], "order.paid");
    let d = wait_matched(&s, &r.id()).await;
    assert_eq!(d["result"]["matched"][0]["automation_id"], a.body["id"]);
    let again = s.raw(Method::POST, "/v1/events/shop", &h, big.into_bytes()).await.expect(200);
    assert_eq!(again.body["status"], "duplicate");
    let (small, h2) = send(json!({"event": {"kind": "order.paid"}, "amount": 5}), "d2");
    let h: Vec<(&str, &str)> = h2.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = s.raw(Method::POST, "/v1/events/shop", &h, small.into_bytes()).await.expect(202);
    let d = wait_matched(&s, &r.id()).await;
    assert!(d["result"]["matched"].as_array().unwrap().is_empty());
    assert_eq!(s.get(&format!("/v1/automations/{}/runs", a.id())).await.expect(200).body["total"], 1);
    s.raw(Method::POST, "/v1/events/nope", &[], b"{}".to_vec()).await.expect_error(404, "not_found", "nope");
    s.raw(Method::POST, "/v1/events/shop", &[("X-Signature-256", "sha256=00")], b"{}".to_vec()).await.expect_error(
        401,
        "unauthorized",
        "X-Signature-256",
    );
    s.delete("/v1/sources/shop").await.expect(204);
    s.delete("/v1/sources/shop").await.expect_error(404, "not_found", "shop");
}

/// A burst of deliveries, the host killed in the middle: every delivery it
/// acknowledged is matched after a restart, with its run.
async fn acknowledged_deliveries_survive_kill_9(backend: Backend) {
    let mut env = server_env();
    env.push(("AUTOMATION_LEASE_SECONDS", "3"));
    let mut s = TestServer::start_with(backend, &env).await;
    let a = s
        .post(
            "/v1/automations",
            json!({
                "name": "every push",
                "trigger": {"type": "event", "source": "github", "on": ["push"], "filter": "ref == 'refs/heads/main'"},
                "preset": {"name": "script", "config": {"script": "true"}},
            }),
        )
        .await
        .expect(201)
        .id();
    let base = s.base.clone();
    let sender = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut acked = Vec::new();
        for i in 0..2000 {
            let body = json!({"ref": "refs/heads/main", "commits": [], "n": i}).to_string();
            let sig = sign(SECRET.as_bytes(), body.as_bytes());
            let sent = client
                .post(format!("{base}/v1/events/github"))
                .header("x-github-event", "push")
                .header("x-github-delivery", format!("burst-{i}"))
                .header("x-hub-signature-256", sig)
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 202 => {
                    let v: Value = r.json().await.unwrap();
                    acked.push(v["id"].as_str().unwrap().to_owned());
                }
                _ => break, // the host is gone
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.kill();
    let acked = sender.await.unwrap();
    assert!(acked.len() > 10, "too few deliveries before the kill: {}", acked.len());
    s.spawn_again();
    for id in &acked {
        let d = wait_matched(&s, id).await;
        assert_eq!(d["result"]["matched"][0]["automation_id"], a.as_str(), "{d}");
    }
    let runs = s.get(&format!("/v1/automations/{a}/runs?limit=1")).await.expect(200).body;
    assert!(
        runs["total"].as_u64().unwrap() as usize >= acked.len(),
        "{} runs for {} acknowledged deliveries",
        runs["total"],
        acked.len()
    );
}

/// A delivery's payload is stored once, in the delivery: the runs it starts
/// refer to it (their stored trigger stays small) and still show it whole.
async fn an_events_payload_is_stored_once_for_all_its_runs(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        &[("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET), ("AUTOMATION_NO_DISPATCH", "true")],
    )
    .await;
    for i in 0..3 {
        let a = json!({
            "name": format!("copy {i}"),
            "trigger": {"type": "event", "source": "github", "on": ["issues.*"]},
            "preset": {"name": "script", "config": {"script": "true"}},
        });
        s.post("/v1/automations", a).await.expect(201);
    }
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/github-webhooks/issues/transferred.payload.json");
    let body = std::fs::read(&path).unwrap();
    assert!(body.len() > 20_000);
    let payload: Value = serde_json::from_slice(&body).unwrap();
    let id = deliver(&s, "issues", "once-1", &body).await.expect(202).id();
    let d = wait_matched(&s, &id).await;
    let runs: Vec<String> =
        d["result"]["matched"].as_array().unwrap().iter().map(|m| m["run_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(runs.len(), 3, "{d}");
    for run in &runs {
        let r = s.get(&format!("/v1/runs/{run}")).await.expect(200).body;
        assert_eq!(r["trigger"]["payload"], payload, "the run shows the whole payload");
        assert_eq!(r["trigger"]["event_id"], id.as_str());
    }
    let sizes: Vec<i64> = match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&s.database_url()).await.unwrap();
            sqlx::query_scalar("select length(trigger) from runs").fetch_all(&pool).await.unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&s.database_url()).await.unwrap();
            sqlx::query_scalar("select octet_length(trigger::text)::bigint from runs").fetch_all(&pool).await.unwrap()
        }
    };
    assert_eq!(sizes.len(), 3);
    assert!(sizes.iter().all(|n| *n < 1024), "each run stores its trigger without the payload: {sizes:?} bytes");
}

/// Custom sources signed the Standard Webhooks way, Slack's way, or with a
/// shared token: good deliveries are stored, forged, stale and unsigned
/// ones refused with nothing stored, and a Standard Webhooks delivery
/// replayed under its `webhook-id` is a duplicate.
async fn signature_schemes_verify_refuse_stale_and_dedup(backend: Backend) {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let now = chrono::Utc::now().timestamp();
    let mac = |key: &[u8], parts: &[&[u8]]| {
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    };
    let stored = |name: &'static str| {
        let s = &s;
        async move { s.get(&format!("/v1/events?source={name}")).await.expect(200).body["total"].as_i64().unwrap() }
    };
    let post = |name: &'static str, headers: Vec<(&'static str, String)>, body: &'static [u8]| {
        let s = &s;
        async move {
            let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            h.push(("content-type", "application/json"));
            s.raw(Method::POST, &format!("/v1/events/{name}"), &h, body.to_vec()).await
        }
    };
    s.post("/v1/sources", json!({"name": "odd", "signature_scheme": "rot13"})).await.expect_error(
        422,
        "invalid_signature_scheme",
        "standard-webhooks",
    );

    // Standard Webhooks, with a generated whsec_ secret.
    let created =
        s.post("/v1/sources", json!({"name": "sw", "signature_scheme": "standard-webhooks"})).await.expect(201);
    assert_eq!(created.body["signature_header"], "webhook-signature");
    assert_eq!(created.body["signature_scheme"], "standard-webhooks");
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let body: &'static [u8] = br#"{"type": "invoice.paid", "id": 7}"#;
    let sw = |id: &str, ts: i64, key: &[u8]| {
        let sig = base64::engine::general_purpose::STANDARD
            .encode(mac(key, &[id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body]));
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", format!("v1,{sig}")),
        ]
    };
    post("sw", sw("msg_1", now, b"not the key"), body).await.expect_error(401, "unauthorized", "invalid signature");
    post("sw", sw("msg_1", now - 600, &key), body).await.expect_error(401, "unauthorized", "more than the 300 s");
    let mut no_id = sw("msg_1", now, &key);
    no_id.remove(0);
    post("sw", no_id, body).await.expect_error(401, "unauthorized", "webhook-id");
    assert_eq!(stored("sw").await, 0);
    let ok = post("sw", sw("msg_1", now, &key), body).await.expect(202);
    assert_eq!(ok.body["event_key"], "invoice.paid");
    let replay = post("sw", sw("msg_1", now + 1, &key), body).await.expect(200);
    assert_eq!(replay.body["status"], "duplicate");
    assert_eq!(stored("sw").await, 1);

    // Slack v0.
    let slack_secret = "8f742231b10e8888abcd99yyyzzz85a5";
    s.post("/v1/sources", json!({"name": "slack", "signature_scheme": "slack-v0", "secret": slack_secret}))
        .await
        .expect(201);
    let slack = |ts: i64| {
        let sig = hex::encode(mac(slack_secret.as_bytes(), &[b"v0:", ts.to_string().as_bytes(), b":", body]));
        vec![("x-slack-request-timestamp", ts.to_string()), ("x-slack-signature", format!("v0={sig}"))]
    };
    post("slack", slack(now - 301), body).await.expect_error(401, "unauthorized", "X-Slack-Request-Timestamp");
    post("slack", vec![("x-slack-signature", "v0=00".into())], body).await.expect_error(
        401,
        "unauthorized",
        "missing header",
    );
    post("slack", slack(now), body).await.expect(202);

    // A shared token (GitLab style).
    let token = "gitlab-token-0123456789";
    s.post(
        "/v1/sources",
        json!({"name": "gl", "signature_scheme": "token", "secret": token, "event_key_expr": "object_kind"}),
    )
    .await
    .expect(201);
    let gl_body: &'static [u8] = br#"{"object_kind": "push"}"#;
    post("gl", vec![("x-gitlab-token", "gitlab-token-012345678".into())], gl_body).await.expect_error(
        401,
        "unauthorized",
        "invalid",
    );
    post("gl", vec![], gl_body).await.expect_error(401, "unauthorized", "X-Gitlab-Token");
    let ok = post("gl", vec![("x-gitlab-token", token.into())], gl_body).await.expect(202);
    assert_eq!(ok.body["event_key"], "push");
    assert_eq!(stored("gl").await, 1);
    assert_eq!(stored("slack").await, 1);
}

/// The matcher keeps the automations in memory and patches them with the
/// ones that changed: every create, edit, disable and delete made through
/// the API decides the very next delivery, with no wait for a refresh.
async fn automation_changes_reach_the_very_next_delivery(backend: Backend) {
    let s = TestServer::start_with(backend, &server_env()).await;
    let body = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/github-webhooks/issues/opened.payload.json"),
    )
    .unwrap();
    let mut n = 0;
    let mut fired = async || -> Vec<String> {
        n += 1;
        let id = deliver(&s, "issues", &format!("change-{n}"), &body).await.expect(202).id();
        let d = wait_matched(&s, &id).await;
        let mut ids: Vec<String> = d["result"]["matched"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["automation_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let make = |name: &str, on: &str, filter: Option<&str>| {
        let mut trigger = json!({"type": "event", "source": "github", "on": [on]});
        if let Some(f) = filter {
            trigger["filter"] = json!(f);
        }
        json!({"name": name, "trigger": trigger, "preset": {"name": "script", "config": {"script": "true"}}})
    };
    let a = s.post("/v1/automations", make("a", "issues.*", Some("action == 'opened'"))).await.expect(201).id();
    let b = s.post("/v1/automations", make("b", "push", None)).await.expect(201).id();
    assert_eq!(fired().await, vec![a.clone()]);
    // Edited: its filter is false now.
    let mut trigger = make("a", "issues.*", Some("action == 'closed'"))["trigger"].clone();
    s.patch(&format!("/v1/automations/{a}"), json!({"trigger": trigger.clone()})).await.expect(200);
    assert!(fired().await.is_empty());
    // Created, and an edit that makes another one fire.
    let c = s.post("/v1/automations", make("c", "issues.opened", None)).await.expect(201).id();
    s.patch(&format!("/v1/automations/{b}"), json!({"trigger": make("b", "issues.opened", None)["trigger"]}))
        .await
        .expect(200);
    let mut both = vec![b.clone(), c.clone()];
    both.sort();
    assert_eq!(fired().await, both);
    // Disabled, deleted.
    s.patch(&format!("/v1/automations/{b}"), json!({"enabled": false})).await.expect(200);
    s.delete(&format!("/v1/automations/{c}")).await.expect(204);
    assert!(fired().await.is_empty());
    // Back again: enabled, and filter true.
    s.patch(&format!("/v1/automations/{b}"), json!({"enabled": true})).await.expect(200);
    trigger["filter"] = json!("action == 'opened'");
    s.patch(&format!("/v1/automations/{a}"), json!({"trigger": trigger})).await.expect(200);
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(fired().await, both);
}

/// Filters whose regexes make the lazy DFA build state after state (each
/// `a[ab]{13}c...` has 2^14 states over a text of `a` and `b`, and never
/// matches it) must not make the filter run out of its 64 MiB: the `regex`
/// engine bounds each regex's DFA cache and, past it, searches without the
/// DFA. A guard for the filter's regex set-up (lazy DFA on since
/// 6d9fd94): it passed before that change and after it.
#[tokio::test]
async fn regex_filters_cannot_exhaust_the_filters_memory() {
    let s = TestServer::start_with(Backend::Sqlite, &server_env()).await;
    for i in 0..200 {
        let filter = format!("regex(issue.body, 'a[ab]{{13}}c{{{}}}')", i + 1);
        let a = json!({"name": format!("dfa {i}"),
            "trigger": {"type": "event", "source": "github", "on": ["issues.opened"], "filter": filter},
            "preset": {"name": "script", "config": {"script": "true"}}});
        s.post("/v1/automations", a).await.expect(201);
    }
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/github-webhooks/issues/opened.payload.json");
    let mut payload: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    // 32 KB of `a` and `b` from a fixed xorshift, so every run is the same.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let body: String = (0..16 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x & 1 == 0 { 'a' } else { 'b' }
        })
        .collect();
    payload["issue"]["body"] = json!(body);
    let id = deliver(&s, "issues", "dfa-1", payload.to_string().as_bytes()).await.expect(202).id();
    let d = wait_matched(&s, &id).await;
    assert_eq!(d["result"]["filter_errors"], json!([]), "{}", d["result"]);
    assert_eq!(d["result"]["matched"], json!([]), "none of them matches");
}

/// A batch whose oldest delivery waited longer than
/// `AUTOMATION_MATCH_CATCH_UP_MS` is matched on the acknowledgements'
/// runtime instead of with idle CPU: the same verdicts, counted apart.
async fn a_backlog_that_waited_is_matched_at_the_acknowledgements_priority(backend: Backend) {
    let mut env = server_env();
    // Every batch has waited longer than this by the time it is claimed.
    env.push(("AUTOMATION_MATCH_CATCH_UP_MS", "1"));
    let s = TestServer::start_with(backend, &env).await;
    let body = json!({
        "name": "issues with a sender",
        "trigger": {"type": "event", "source": "github", "on": ["issues.*"], "filter": "sender.login"},
        "preset": {"name": "script", "config": {"script": "true"}},
    });
    let automation = s.post("/v1/automations", body).await.expect(201).id();
    let issues: Vec<PathBuf> = fixtures().into_iter().filter(|(e, _)| e == "issues").map(|(_, p)| p).collect();
    assert!(issues.len() >= 5, "{}", issues.len());
    let mut acks = Vec::new();
    for (i, path) in issues.iter().enumerate() {
        let body = std::fs::read(path).unwrap();
        let payload: Value = serde_json::from_slice(&body).unwrap();
        let expect = payload["sender"]["login"].as_str().is_some_and(|l| !l.is_empty());
        acks.push((deliver(&s, "issues", &format!("catch-up-{i}"), &body).await.expect(202).id(), expect));
    }
    for (id, expect) in &acks {
        let d = wait_matched(&s, id).await;
        let matched: Vec<&str> =
            d["result"]["matched"].as_array().unwrap().iter().map(|m| m["automation_id"].as_str().unwrap()).collect();
        if *expect {
            assert_eq!(matched, [automation.as_str()], "{d}");
        } else {
            assert!(matched.is_empty(), "{d}");
        }
    }
    let metrics = s.raw(Method::GET, "/metrics", &[], vec![]).await.expect(200).text;
    let count = |priority: &str| -> u64 {
        let prefix = format!("automation_event_matched_total{{priority=\"{priority}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map_or(0, |v| v.trim().parse().unwrap())
    };
    assert!(count("catch_up") > 0, "{metrics}");
    assert_eq!(count("catch_up") + count("background"), acks.len() as u64, "{metrics}");
}
