//! Sources made from a built-in provider (`"preset"`), fed the samples the
//! providers publish (`tests/fixtures/gitlab`, `tests/fixtures/slack`):
//! GitLab keyed `issue.open` and deduplicated on `X-Gitlab-Event-UUID`;
//! Slack's `url_verification` answered only when signed and never stored,
//! `app_mention` keyed and its retries deduplicated on `event_id`; a
//! Standard Webhooks sender keyed on `type`.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};

use crate::db_tests;
use crate::support::{Backend, TestServer, manual_automation, simple_upload};

db_tests!(provider_presets_key_dedup_and_answer_handshakes);

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(path)).unwrap()
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

async fn post(s: &TestServer, source: &str, headers: &[(&str, String)], body: &[u8]) -> crate::support::Resp {
    let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    h.push(("content-type", "application/json"));
    s.raw(Method::POST, &format!("/v1/events/{source}"), &h, body.to_vec()).await
}

async fn stored(s: &TestServer, source: &str) -> i64 {
    s.get(&format!("/v1/events?source={source}")).await.expect(200).body["total"].as_i64().unwrap()
}

async fn event_automation(s: &TestServer, upload: &str, source: &str, on: &str) -> String {
    let mut a = manual_automation(&format!("on {source}"), upload);
    a["trigger"] = json!({"type": "event", "source": source, "on": [on]});
    s.post("/v1/automations", a).await.expect(201).id()
}

/// Waits for an automation to have `n` runs.
async fn wait_runs(s: &TestServer, automation: &str, n: i64) -> Value {
    for _ in 0..100 {
        let runs = s.get(&format!("/v1/automations/{automation}/runs")).await.expect(200).body;
        // The page and its total are two reads: wait for both.
        if runs["total"] == n && runs["items"].as_array().map(Vec::len) == Some(n as usize) {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("automation {automation} never had {n} runs");
}

async fn provider_presets_key_dedup_and_answer_handshakes(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let upload = simple_upload(&s).await;
    s.post("/v1/sources", json!({"name": "x", "preset": "bitbucket"})).await.expect_error(
        422,
        "invalid_preset",
        "gitlab",
    );
    s.post("/v1/sources", json!({"name": "x", "preset": "gitlab", "event_key_expr": "a"})).await.expect_error(
        422,
        "preset_sets_fields",
        "give none of them",
    );

    // GitLab.
    let token = "gitlab-token-0123456789";
    let gl = s.post("/v1/sources", json!({"name": "gl", "preset": "gitlab", "secret": token})).await.expect(201).body;
    assert_eq!((gl["preset"].clone(), gl["signature_scheme"].clone()), (json!("gitlab"), json!("token")));
    assert_eq!(gl["delivery_id_header"], "X-Gitlab-Event-UUID");
    let on_issue = event_automation(&s, &upload, "gl", "issue.open").await;
    let issue = fixture("gitlab/issue.json");
    let headers = |uuid: &str| {
        vec![
            ("x-gitlab-token", token.to_owned()),
            ("x-gitlab-event", "Issue Hook".into()),
            ("x-gitlab-event-uuid", uuid.into()),
        ]
    };
    let mut wrong = headers("u-0");
    wrong[0].1 = "not-the-token-at-all".into();
    post(&s, "gl", &wrong, &issue).await.expect_error(401, "unauthorized", "invalid");
    let first = post(&s, "gl", &headers("u-1"), &issue).await.expect(202);
    assert_eq!(first.body["event_key"], "issue.open");
    assert_eq!(post(&s, "gl", &headers("u-1"), &issue).await.expect(200).body["status"], "duplicate");
    let push = post(&s, "gl", &headers("u-2"), &fixture("gitlab/push.json")).await.expect(202);
    assert_eq!(push.body["event_key"], "push");
    let runs = wait_runs(&s, &on_issue, 1).await;
    assert_eq!(runs["items"][0]["trigger"]["event_key"], "issue.open", "{runs}");
    assert_eq!(runs["items"][0]["trigger"]["payload"]["object_attributes"]["iid"], 23);

    // Slack.
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    s.post("/v1/sources", json!({"name": "sl", "preset": "slack", "secret": secret})).await.expect(201);
    let on_mention = event_automation(&s, &upload, "sl", "app_mention").await;
    let signed = |body: &[u8], ts: i64| {
        let sig = hex::encode(mac(secret.as_bytes(), &[b"v0:", ts.to_string().as_bytes(), b":", body]));
        vec![("x-slack-request-timestamp", ts.to_string()), ("x-slack-signature", format!("v0={sig}"))]
    };
    let now = chrono::Utc::now().timestamp();
    let verify = fixture("slack/url_verification.json");
    // Attack: an unsigned (or wrongly signed) handshake is refused like any delivery.
    post(&s, "sl", &[], &verify).await.expect_error(401, "unauthorized", "missing signature header");
    let mut forged = signed(&verify, now);
    forged[1].1 = format!("v0={}", "0".repeat(64));
    post(&s, "sl", &forged, &verify).await.expect_error(401, "unauthorized", "invalid");
    let answer = post(&s, "sl", &signed(&verify, now), &verify).await.expect(200);
    assert_eq!(answer.body, json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}));
    assert_eq!(stored(&s, "sl").await, 0, "a handshake is answered, not stored");
    let mention = fixture("slack/app_mention.json");
    let got = post(&s, "sl", &signed(&mention, now), &mention).await.expect(202);
    assert_eq!(got.body["event_key"], "app_mention");
    // Slack retries the same event (same event_id) with a fresh signature.
    let retry = post(&s, "sl", &signed(&mention, now + 1), &mention).await.expect(200);
    assert_eq!(retry.body["status"], "duplicate");
    post(&s, "sl", &signed(&mention, now - 900), &mention).await.expect_error(
        401,
        "unauthorized",
        "X-Slack-Request-Timestamp",
    );
    assert_eq!(stored(&s, "sl").await, 1);
    wait_runs(&s, &on_mention, 1).await;

    // Standard Webhooks.
    let sw = s.post("/v1/sources", json!({"name": "sw", "preset": "standard-webhooks"})).await.expect(201).body;
    let key = base64::engine::general_purpose::STANDARD
        .decode(sw["secret"].as_str().unwrap().strip_prefix("whsec_").unwrap())
        .unwrap();
    let body = br#"{"type": "invoice.paid", "data": {"id": 7}}"#;
    let sig = base64::engine::general_purpose::STANDARD
        .encode(mac(&key, &[b"msg_1.", now.to_string().as_bytes(), b".", body]));
    let h = vec![
        ("webhook-id", "msg_1".to_owned()),
        ("webhook-timestamp", now.to_string()),
        ("webhook-signature", format!("v1,{sig}")),
    ];
    assert_eq!(post(&s, "sw", &h, body).await.expect(202).body["event_key"], "invoice.paid");
    assert_eq!(post(&s, "sw", &h, body).await.expect(200).body["status"], "duplicate");
}
