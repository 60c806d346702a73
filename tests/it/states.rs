//! Automation states: drafts never fire on their trigger, disabling by hand
//! records `manual`, and the host disables an automation by itself after
//! failed runs in a row, when its bundle can no longer be made, or when its
//! plugin is gone; enabling clears the reason.

use crate::db_tests;
use crate::plugins::{digest, guest, put_plugin};
use crate::support::{Backend, TestServer, script_automation, wait_final};
use serde_json::{Value, json};

db_tests!(
    drafts_never_fire_and_disabling_by_hand_says_so,
    failed_runs_in_a_row_disable_and_enabling_clears_it,
    a_preset_that_no_longer_renders_disables_with_bad_bundle,
    a_preset_whose_grant_is_withdrawn_disables_with_plugin_missing,
);

async fn get(s: &TestServer, id: &str) -> Value {
    s.get(&format!("/v1/automations/{id}")).await.expect(200).body
}

async fn dispatch_and_wait(s: &TestServer, id: &str, payload: Value) -> Value {
    let run = s.post(&format!("/v1/automations/{id}/dispatch"), json!({"payload": payload})).await.expect(201).id();
    wait_final(s, &run, 60).await
}

async fn drafts_never_fire_and_disabling_by_hand_says_so(backend: Backend) {
    let s = TestServer::start(backend).await;
    let every_second = json!({"trigger": {"type": "cron", "schedule": "* * * * * *"}, "draft": true});
    let d = s.post("/v1/automations", script_automation("draft", "echo hi", every_second.clone())).await.expect(201);
    assert_eq!((d.body["draft"].clone(), d.body["enabled"].clone()), (json!(true), json!(false)), "{}", d.text);
    assert!(d.body["disabled_reason"].is_null() && d.body["next_fire_at"].is_null(), "{}", d.text);
    let mut both = every_second.clone();
    both["enabled"] = json!(true);
    s.post("/v1/automations", script_automation("bad", "echo hi", both)).await.expect_error(
        422,
        "invalid_state",
        "a draft is never enabled",
    );
    // A draft is tried, not fired: a test run works, the cron does not.
    let t = s.post(&format!("/v1/automations/{}/test", d.id()), json!({"run": true})).await.expect(200);
    let test_run = t.body["run"]["id"].as_str().expect("a test run").to_owned();
    assert_eq!(wait_final(&s, &test_run, 30).await["status"], "succeeded");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let runs = s.get(&format!("/v1/automations/{}/runs", d.id())).await.expect(200).body;
    assert_eq!(runs["total"], 1, "only the test run: {runs}");
    let drafts = s.get("/v1/automations?draft=true").await.expect(200).body;
    assert_eq!(drafts["total"], 1);

    // Enabling makes it live; disabling by hand records `manual`.
    let live = s.patch(&format!("/v1/automations/{}", d.id()), json!({"enabled": true})).await.expect(200).body;
    assert_eq!((live["draft"].clone(), live["enabled"].clone()), (json!(false), json!(true)));
    assert!(live["enabled_at"].is_string() && live["next_fire_at"].is_string(), "{live}");
    let off = s.patch(&format!("/v1/automations/{}", d.id()), json!({"enabled": false})).await.expect(200).body;
    assert_eq!(off["disabled_reason"], "manual");
    assert!(off["disabled_at"].is_string() && off["next_fire_at"].is_null(), "{off}");
    assert_eq!(s.get("/v1/automations?draft=true").await.expect(200).body["total"], 0);
    // Created disabled: `manual` too.
    let mut disabled = script_automation("off", "echo hi", json!({}));
    disabled["enabled"] = json!(false);
    let c = s.post("/v1/automations", disabled).await.expect(201).body;
    assert_eq!((c["disabled_reason"].clone(), c["draft"].clone()), (json!("manual"), json!(false)));
}

async fn failed_runs_in_a_row_disable_and_enabling_clears_it(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_FAILURE_DISABLE_THRESHOLD", "3")]).await;
    // Succeeds when the payload says ok, fails otherwise.
    let script = r#"grep -q '"ok":true' "$AUTOMATION_EVENT_PAYLOAD_FILE""#;
    let a = s.post("/v1/automations", script_automation("flaky", script, json!({}))).await.expect(201).id();
    let mut failed = Vec::new();
    for ok in [false, false, true, false, false] {
        let run = dispatch_and_wait(&s, &a, json!({"ok": ok})).await;
        assert_eq!(run["status"], if ok { "succeeded" } else { "failed" }, "{run}");
        if !ok {
            failed.push(run["id"].as_str().unwrap().to_owned());
        }
    }
    let still = get(&s, &a).await;
    assert_eq!(still["enabled"], true, "two failures since the success are not three: {still}");
    let third = dispatch_and_wait(&s, &a, json!({"ok": false})).await;
    failed.push(third["id"].as_str().unwrap().to_owned());
    let off = get(&s, &a).await;
    assert_eq!((off["enabled"].clone(), off["disabled_reason"].clone()), (json!(false), json!("failures")), "{off}");
    let detail = off["disabled_detail"].as_str().unwrap();
    assert!(detail.starts_with("its last 3 runs failed"), "{detail}");
    for id in &failed[2..] {
        assert!(detail.contains(id.as_str()), "{detail} names {id}");
    }
    assert!(!detail.contains(failed[0].as_str()), "the runs before the success are not named: {detail}");
    let metrics = s.get("/metrics").await.text;
    assert!(metrics.contains("automation_automations_disabled_total{reason=\"failures\"} 1"), "{metrics}");

    // Enabling clears the reason and starts counting again: one failure
    // after it does not disable.
    let on = s.patch(&format!("/v1/automations/{a}"), json!({"enabled": true})).await.expect(200).body;
    assert!(on["disabled_reason"].is_null() && on["disabled_detail"].is_null() && on["disabled_at"].is_null());
    assert_eq!(dispatch_and_wait(&s, &a, json!({"ok": false})).await["status"], "failed");
    assert_eq!(get(&s, &a).await["enabled"], true);
}

/// The counter preset (kv) with a quota of one key: its render sets two
/// keys, so it fails. Replacing an uploaded preset that an automation
/// uses with it leaves the automation unable to make its bundle.
async fn a_preset_that_no_longer_renders_disables_with_bad_bundle(backend: Backend) {
    let counter = guest("test_kv_preset.wasm");
    let pin = format!("my-preset@sha256:{}=kv", digest(&counter));
    let s = TestServer::start_with(
        backend,
        &[("AUTOMATION_PLUGIN_GRANTS", pin.as_str()), ("AUTOMATION_PLUGIN_KV_MAX_KEYS", "1")],
    )
    .await;
    put_plugin(&s, "my-preset", "kind=preset", guest("script_preset.wasm")).await.expect(201);
    let mut body = script_automation("uses my-preset", "echo hi", json!({}));
    body["preset"]["name"] = json!("my-preset");
    let a = s.post("/v1/automations", body).await.expect(201).id();
    assert_eq!(dispatch_and_wait(&s, &a, json!({})).await["status"], "succeeded");

    put_plugin(&s, "my-preset", "kind=preset&capabilities=kv", counter).await.expect(200);
    let run = dispatch_and_wait(&s, &a, json!({})).await;
    assert_eq!(run["status"], "failed");
    assert!(run["error"].as_str().unwrap().contains("the preset could not render the bundle"), "{run}");
    let off = get(&s, &a).await;
    assert_eq!((off["enabled"].clone(), off["disabled_reason"].clone()), (json!(false), json!("bad_bundle")), "{off}");
    assert!(off["disabled_detail"].as_str().unwrap().contains("quota"), "{off}");
}

async fn a_preset_whose_grant_is_withdrawn_disables_with_plugin_missing(backend: Backend) {
    let counter = guest("test_kv_preset.wasm");
    let sha = digest(&counter);
    let s = TestServer::start(backend).await;
    s.post("/v1/plugins/counter/grants", json!({"sha256": sha, "capabilities": ["kv"]})).await.expect(201);
    put_plugin(&s, "counter", "kind=preset&capabilities=kv", counter).await.expect(201);
    let body = json!({
        "name": "counting",
        "trigger": {"type": "manual"},
        "preset": {"name": "counter", "config": {}},
        "executor": {"plugin": "local-sandbox"},
    });
    let a = s.post("/v1/automations", body).await.expect(201).id();
    s.delete(&format!("/v1/plugins/counter/grants/{sha}")).await.expect(204);
    let run = dispatch_and_wait(&s, &a, json!({})).await;
    assert_eq!(run["status"], "failed");
    let off = get(&s, &a).await;
    assert_eq!(
        (off["enabled"].clone(), off["disabled_reason"].clone()),
        (json!(false), json!("plugin_missing")),
        "{off}"
    );
    assert!(off["disabled_detail"].as_str().unwrap().contains("counter"), "{off}");
    // Manual dispatch still works on a disabled automation (and fails the
    // same way); the first reason stays.
    dispatch_and_wait(&s, &a, json!({})).await;
    assert_eq!(get(&s, &a).await["disabled_reason"], "plugin_missing");
}
