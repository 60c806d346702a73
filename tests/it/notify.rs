//! Completion notifications against small receivers the test starts on
//! loopback: a failed run's end is POSTed as a signed Standard Webhooks
//! message, retried after the receiver's 500 with the same id, recorded on
//! the run; a status the target does not list sends nothing; and a target
//! inside the host's network (a literal loopback address, or a name that
//! resolves to one) is refused unless the operator allowed that address
//! and port, so an automation cannot make the host call its neighbours.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::db_tests;
use crate::support::{Backend, TestServer, script_automation, wait_final};
use serde_json::{Value, json};

db_tests!(run_endings_are_signed_retried_recorded_and_kept_out_of_the_hosts_network);

#[derive(Clone, Debug)]
struct Received {
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

/// A receiver on loopback that answers 500 to its first `failures`
/// requests and 200 after, recording them all.
async fn receiver(failures: usize) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let log = log.clone();
        async move {
            let mut l = log.lock().unwrap();
            l.push(Received { headers, body: body.to_vec() });
            if l.len() <= failures { axum::http::StatusCode::INTERNAL_SERVER_ERROR } else { axum::http::StatusCode::OK }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, seen)
}

async fn run_of(s: &TestServer, automation: &Value) -> Value {
    let a = s.post("/v1/automations", automation.clone()).await.expect(201).id();
    let run = s.post(&format!("/v1/automations/{a}/dispatch"), json!({})).await.expect(201).id();
    wait_final(s, &run, 30).await;
    run_with_notifications(s, &run, |_| true).await
}

/// Polls the run until its notifications satisfy `done`.
async fn run_with_notifications(s: &TestServer, run: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let r = s.get(&format!("/v1/runs/{run}")).await.expect(200).body;
        let n = &r["notifications"];
        if n.as_array().is_some_and(|a| !a.is_empty()) && done(n) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the run's notifications never got there: {}", s.get(&format!("/v1/runs/{run}")).await.text);
}

async fn run_endings_are_signed_retried_recorded_and_kept_out_of_the_hosts_network(backend: Backend) {
    let (allowed_port, allowed) = receiver(1).await;
    let (other_port, other) = receiver(0).await;
    let allow = format!("127.0.0.1:{allowed_port}");
    let s = TestServer::start_with(
        backend,
        &[("AUTOMATION_NOTIFY_ALLOWED_HOSTS", allow.as_str()), ("AUTOMATION_NOTIFY_ATTEMPTS", "2")],
    )
    .await;
    let key = b"0123456789abcdef0123456789abcdef";
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
    let with_notify = |name: &str, script: &str, url: String| {
        script_automation(name, script, json!({"notify": {"url": url, "on": ["failed"], "secret": secret}}))
    };

    // Bad targets are refused at save.
    for (url, needle) in [("ftp://x/", "http or https"), ("http://u:p@example.com/", "credentials")] {
        s.post("/v1/automations", with_notify("bad", "true", url.into())).await.expect_error(
            422,
            "invalid_notify",
            needle,
        );
    }

    // A failed run: the first POST gets 500, the retry 200, with one id.
    let failing = with_notify("fails", "exit 3", format!("http://127.0.0.1:{allowed_port}/hook"));
    let created = s.post("/v1/automations", failing.clone()).await.expect(201).body;
    assert_eq!(created["notify"]["secret"], "********", "the secret is never shown");
    let run = s
        .post(&format!("/v1/automations/{}/dispatch", created["id"].as_str().unwrap()), json!({}))
        .await
        .expect(201)
        .id();
    assert_eq!(wait_final(&s, &run, 30).await["status"], "failed");
    let r = run_with_notifications(&s, &run, |n| n[0]["status"] == "delivered").await;
    let n = &r["notifications"][0];
    assert_eq!((n["attempts"].clone(), n["last_status_code"].clone()), (json!(2), json!(200)), "{r}");
    let got = allowed.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one failure, one retry");
    for m in &got {
        let h = |k: &str| m.headers[k].to_str().unwrap().to_owned();
        assert_eq!(h("webhook-id"), n["id"].as_str().unwrap(), "the same id on every attempt");
        let signed = format!("{}.{}.", h("webhook-id"), h("webhook-timestamp"));
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(signed.as_bytes());
        mac.update(&m.body);
        let want = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(h("webhook-signature"), want, "signed as Standard Webhooks says");
        let body: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!((body["type"].clone(), body["data"]["run_id"].clone()), (json!("run.finished"), json!(run)));
        assert_eq!(body["data"]["status"], "failed");
        assert_eq!(body["data"]["exit_code"], 3);
    }
    let metrics = s.get("/metrics").await.text;
    assert!(metrics.contains("automation_notifications_total{outcome=\"delivered\"} 1"), "{metrics}");
    assert!(metrics.contains("automation_notifications_total{outcome=\"retried\"} 1"), "{metrics}");

    // A status the target does not list sends nothing.
    let ok = with_notify("works", "true", format!("http://127.0.0.1:{allowed_port}/hook"));
    let a = s.post("/v1/automations", ok).await.expect(201).id();
    let quiet = s.post(&format!("/v1/automations/{a}/dispatch"), json!({})).await.expect(201).id();
    assert_eq!(wait_final(&s, &quiet, 30).await["status"], "succeeded");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(s.get(&format!("/v1/runs/{quiet}")).await.expect(200).body["notifications"].is_null());
    assert_eq!(allowed.lock().unwrap().len(), 2);

    // Attack: the same loopback address on a port the operator did not
    // allow, literally and through a name that resolves to it.
    let literal = run_of(&s, &with_notify("lit", "exit 1", format!("http://127.0.0.1:{other_port}/"))).await;
    let literal = run_with_notifications(&s, literal["id"].as_str().unwrap(), |n| n[0]["status"] == "failed").await;
    let e = literal["notifications"][0]["last_error"].as_str().unwrap().to_owned();
    assert!(e.contains("internal address"), "{e}");
    let named = run_of(&s, &with_notify("name", "exit 1", format!("http://localhost:{other_port}/"))).await;
    let named = run_with_notifications(&s, named["id"].as_str().unwrap(), |n| n[0]["status"] == "failed").await;
    let e = named["notifications"][0]["last_error"].as_str().unwrap().to_owned();
    assert!(e.contains("internal addresses"), "{e}");
    assert!(other.lock().unwrap().is_empty(), "nothing reached the receiver the operator did not allow");
}
