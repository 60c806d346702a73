//! Source plugins (WIT 0.2.0): a webhook provider added without rebuilding
//! the host. The bundled `linear` plugin verifies Linear's signature and
//! timestamp on Linear's documented payload; a deliberately broken one
//! shows that whatever a source plugin does fails only its own request,
//! storing nothing, and never the host.

use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};

use crate::db_tests;
use crate::events::wait_matched;
use crate::plugins::{guest, put_plugin};
use crate::support::{Backend, Resp, TestServer};

db_tests!(linear_deliveries_are_verified_keyed_and_deduped);

const LINEAR_SECRET: &str = "lin_wh_0123456789abcdef0123456789";

/// Linear's sample Issue payload, sent `age_ms` ago.
fn linear_body(age_ms: i64) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/linear/issue-create.json");
    let mut payload: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    payload["webhookTimestamp"] = json!(now - age_ms);
    serde_json::to_vec(&payload).unwrap()
}

/// Linear's signature: hex HMAC-SHA256 of the raw body.
fn linear_sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn send(s: &TestServer, source: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    let mut all = vec![("content-type", "application/json; charset=utf-8")];
    all.extend_from_slice(headers);
    s.raw(Method::POST, &format!("/v1/events/{source}"), &all, body).await
}

async fn linear(s: &TestServer, delivery: &str, signature: &str, body: Vec<u8>) -> Resp {
    send(
        s,
        "linear",
        &[("linear-signature", signature), ("linear-delivery", delivery), ("linear-event", "Issue")],
        body,
    )
    .await
}

async fn stored(s: &TestServer, source: &str) -> usize {
    let page = s.get(&format!("/v1/events?source={source}")).await.expect(200).body;
    page["items"].as_array().unwrap().len()
}

async fn linear_deliveries_are_verified_keyed_and_deduped(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    // A plugin source takes no HMAC settings, and only a source plugin.
    let with_header = json!({"name": "linear", "plugin": "linear", "signature_header": "X-Sig"});
    s.post("/v1/sources", with_header).await.expect_error(422, "plugin_reads_requests", "signature_header");
    let filter = json!({"name": "linear", "plugin": "jmespath"});
    s.post("/v1/sources", filter).await.expect_error(422, "wrong_plugin_kind", "jmespath");
    let missing = json!({"name": "linear", "plugin": "stripe"});
    s.post("/v1/sources", missing).await.expect_error(422, "unknown_plugin", "stripe");
    let created =
        s.post("/v1/sources", json!({"name": "linear", "plugin": "linear", "secret": LINEAR_SECRET})).await.expect(201);
    assert_eq!(created.body["plugin"], "linear");
    assert!(created.body.get("signature_header").is_none(), "{}", created.body);
    assert_eq!(s.get("/v1/sources/linear").await.expect(200).body["plugin"], "linear");

    let automation = json!({
        "name": "new linear issues",
        "trigger": {"type": "event", "source": "linear", "on": ["Issue.create"], "filter": "data.team.key == 'ENG'"},
        "preset": {"name": "script", "config": {"script": "true"}},
    });
    let automation = s.post("/v1/automations", automation).await.expect(201).id();

    // Forged, unsigned, stale, and signed garbage: refused, nothing stored.
    let body = linear_body(2_000);
    let forged = linear_sign("some-other-secret-entirely", &body);
    linear(&s, "d-1", &forged, body.clone()).await.expect_error(401, "unauthorized", "does not match");
    send(&s, "linear", &[("linear-delivery", "d-1")], body.clone()).await.expect_error(
        401,
        "unauthorized",
        "missing Linear-Signature",
    );
    let stale = linear_body(5 * 60_000);
    let sig = linear_sign(LINEAR_SECRET, &stale);
    linear(&s, "d-1", &sig, stale).await.expect_error(401, "unauthorized", "webhookTimestamp");
    let garbage = b"{not json".to_vec();
    let sig = linear_sign(LINEAR_SECRET, &garbage);
    linear(&s, "d-1", &sig, garbage).await.expect_error(400, "rejected_by_source", "not JSON");
    assert_eq!(stored(&s, "linear").await, 0, "a refused delivery stores nothing");

    // The real thing: accepted under `{type}.{action}`, matched, deduped.
    let sig = linear_sign(LINEAR_SECRET, &body);
    let ack = linear(&s, "234d1a4e-b617-4388-90fe-adc3633d6b72", &sig, body.clone()).await.expect(202);
    assert_eq!(ack.body["status"], "accepted");
    assert_eq!(ack.body["event_key"], "Issue.create");
    let id = ack.id();
    let again = linear(&s, "234d1a4e-b617-4388-90fe-adc3633d6b72", &sig, body.clone()).await.expect(200);
    assert_eq!(again.body["status"], "duplicate");
    assert_eq!(again.body["id"], id.as_str());
    let d = wait_matched(&s, &id).await;
    let matched: Vec<&str> =
        d["result"]["matched"].as_array().unwrap().iter().map(|m| m["automation_id"].as_str().unwrap()).collect();
    assert_eq!(matched, [automation.as_str()], "{d}");
    assert_eq!(d["payload"]["data"]["identifier"], "ENG-1234", "the body is stored as Linear sent it");
    assert_eq!(stored(&s, "linear").await, 1);

    // Rotating the source's secret reaches the plugin on the next delivery.
    s.patch("/v1/sources/linear", json!({"secret": "lin_wh_rotated_secret_0000000000"})).await.expect(200);
    let fresh = linear_body(0);
    let old = linear_sign(LINEAR_SECRET, &fresh);
    linear(&s, "d-2", &old, fresh.clone()).await.expect_error(401, "unauthorized", "does not match");
    let new = linear_sign("lin_wh_rotated_secret_0000000000", &fresh);
    linear(&s, "d-2", &new, fresh).await.expect(202);
}

/// Whatever a source plugin does (panic, spin, answer out of bounds), the
/// request fails with a clear status, nothing is stored, and the host and
/// the source's other deliveries carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_source_plugin_fails_only_its_request() {
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let up = put_plugin(&s, "bad", "kind=source", guest("test_bad_source.wasm")).await.expect(201);
    assert_eq!(up.body["kind"], "source");
    s.post("/v1/sources", json!({"name": "bad", "plugin": "bad"})).await.expect(201);
    let s = &s;
    let misbehave = |how: &'static str| async move {
        send(s, "bad", &[("x-misbehave", how)], br#"{"hello": "world"}"#.to_vec()).await
    };
    misbehave("panic").await.expect_error(503, "unavailable", "crashed");
    let started = std::time::Instant::now();
    misbehave("spin").await.expect_error(503, "unavailable", "deadline");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the deadline stopped it");
    misbehave("bad-reply").await.expect_error(503, "unavailable", "2xx text/plain");
    misbehave("not-json").await.expect_error(503, "unavailable", "JSON text of an object");
    misbehave("long-key").await.expect_error(503, "unavailable", "longer than 200");
    misbehave("denied").await.expect_error(401, "unauthorized", "signature refused");
    let reply = misbehave("reply").await.expect(200);
    assert_eq!(reply.text, "challenge-accepted");
    assert_eq!(stored(s, "bad").await, 0, "nothing was stored for any of them");

    let ok = send(s, "bad", &[("x-delivery", "one")], br#"{"hello": "world"}"#.to_vec()).await.expect(202);
    assert_eq!(ok.body["event_key"], "test.event");
    assert_eq!(stored(s, "bad").await, 1);
    s.get("/health").await.expect(200);

    // The plugin cannot be deleted from under its source.
    s.delete("/v1/plugins/bad").await.expect_error(409, "plugin_in_use", "source(s) bad");
    s.delete("/v1/sources/bad").await.expect(204);
    s.delete("/v1/plugins/bad").await.expect(204);
}
