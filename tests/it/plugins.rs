use std::path::PathBuf;

use crate::db_tests;
use crate::support::{Backend, KEY, TestServer, script_automation};
use reqwest::Method;
use serde_json::json;

db_tests!(
    bundled_plugins_are_listed_with_their_facts,
    filters_evaluate_through_the_real_component,
    automations_name_plugins_of_the_right_kind,
    misbehaving_plugins_fail_their_own_call,
    hostile_filters_in_matching_fail_only_their_own_verdicts,
    uploads_are_checked_persisted_and_deletable,
    a_plugin_replaced_under_load_loses_no_call,
    kv_state_is_granted_and_kept_in_the_database,
    a_plugin_cannot_fill_the_database_through_kv,
);

/// A component built from guest-examples/.
pub(crate) fn guest(file: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("GUEST_WASM_DIR")).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The digest grants name: SHA-256 of the component, lowercase hex.
pub(crate) fn digest(wasm: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(wasm))
}

pub(crate) async fn put_plugin(s: &TestServer, name: &str, query: &str, wasm: Vec<u8>) -> crate::support::Resp {
    let auth = format!("Bearer {KEY}");
    s.raw(
        Method::PUT,
        &format!("/v1/plugins/{name}?{query}"),
        &[("authorization", &auth), ("content-type", "application/wasm")],
        wasm,
    )
    .await
}

async fn bundled_plugins_are_listed_with_their_facts(backend: Backend) {
    let s = TestServer::start(backend).await;
    let list = s.get("/v1/plugins").await.expect(200).body;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for (name, kind) in
        [("jmespath", "filter"), ("script", "preset"), ("local-sandbox", "executor"), ("linear", "source")]
    {
        assert!(names.contains(&name), "{name} missing from {names:?}");
        let p = s.get(&format!("/v1/plugins/{name}")).await.expect(200).body;
        assert_eq!(p["kind"], kind);
        assert_eq!(p["source"], "bundled");
        assert_eq!(p["wit"], "0.2.0");
        assert_eq!(p["wit_adapted"], false);
        assert_eq!(p["world"], format!("automation:plugin/{kind}-plugin@0.2.0"));
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
        assert!(p["size_bytes"].as_u64().unwrap() > 1000);
    }
    let sandbox = s.get("/v1/plugins/local-sandbox").await.expect(200).body;
    assert_eq!(sandbox["granted"]["capabilities"], json!(["sandbox"]));
    let imports = sandbox["imports"].as_array().unwrap();
    assert!(
        imports.iter().any(|i| i["name"].as_str().unwrap().starts_with("automation:plugin/sandbox")
            && i["status"] == "live"
            && i["detail"] == "granted"),
        "{imports:?}"
    );
    let script = s.get("/v1/plugins/script").await.expect(200).body;
    assert_eq!(script["config_schema"]["type"], "object", "presets publish their config schema");
    assert_eq!(s.get("/v1/plugins/jmespath").await.expect(200).body["granted"]["capabilities"], json!([]));
    s.get("/v1/plugins/nope").await.expect_error(404, "not_found", "nope");
}

async fn filters_evaluate_through_the_real_component(backend: Backend) {
    let s = TestServer::start(backend).await;
    let eval = |filter: &str, payload: serde_json::Value| json!({"filter": filter, "payload": payload});
    for (filter, payload, expected) in [
        ("name == 'test'", json!({"name": "test"}), true),
        ("glob(repo, 'OpenHands/*')", json!({"repo": "OpenHands/automation"}), true),
        ("icontains(body, '@OPENHANDS-RESOLVER')", json!({"body": "Hey @OpenHands-Resolver"}), true),
        ("regex(ref, '^refs/heads/')", json!({"ref": "refs/tags/v1"}), false),
        ("regex(text, '[invalid')", json!({"text": "x"}), false),
        ("missing_field", json!({}), false),
        ("count", json!({"count": 0}), false),
    ] {
        let r = s.post("/v1/filters/evaluate", eval(filter, payload)).await.expect(200);
        assert_eq!(r.body["matches"], expected, "{filter}");
    }
    s.post("/v1/filters/evaluate", eval("invalid(((", json!({}))).await.expect_error(
        422,
        "invalid_filter",
        "trigger.filter",
    );
    s.post("/v1/filters/evaluate", eval("glob(value, '*')", json!({"value": 42}))).await.expect_error(
        422,
        "filter_error",
        "failed on this payload",
    );
    s.post("/v1/filters/evaluate", json!({"filter": "a", "payload": {}, "plugin": "script"})).await.expect_error(
        422,
        "unknown_plugin",
        "not filter",
    );
}

async fn automations_name_plugins_of_the_right_kind(backend: Backend) {
    let s = TestServer::start(backend).await;
    let event = |filter: &str| {
        json!({
            "name": "e",
            "trigger": {"type": "event", "source": "github", "on": ["push"], "filter": filter},
            "preset": {"name": "script", "config": {"script": "true"}},
        })
    };
    let r = s.post("/v1/automations", event("ref == `")).await;
    r.expect_error(422, "invalid_filter", "trigger.filter");
    s.post("/v1/automations", event("nosuchfunction(ref)")).await.expect_error(422, "invalid_filter", "nosuchfunction");
    s.post("/v1/automations", event("starts_with(ref, 'refs/heads/')")).await.expect(201);
    s.post("/v1/automations", script_automation("x", "true", json!({"executor": {"plugin": "missing"}})))
        .await
        .expect_error(422, "unknown_plugin", "missing");
    s.post("/v1/automations", script_automation("x", "true", json!({"executor": {"plugin": "jmespath"}})))
        .await
        .expect_error(422, "wrong_plugin_kind", "of kind filter, not executor");
    let bad_preset = script_automation(
        "x",
        "true",
        json!({"preset": {"name": "script", "config": {"script": "true", "colour": 1}}}),
    );
    s.post("/v1/automations", bad_preset).await.expect_error(422, "invalid_preset_config", "colour");
    let no_script = script_automation("x", "true", json!({"preset": {"name": "script", "config": {}}}));
    s.post("/v1/automations", no_script).await.expect_error(422, "invalid_preset_config", "script");
    assert_eq!(s.get("/v1/automations").await.expect(200).body["total"], 1);
}

async fn misbehaving_plugins_fail_their_own_call(backend: Backend) {
    let s = TestServer::start(backend).await;
    // Loadable but broken filters: each fails its own call, clearly.
    for (name, file, needle) in [
        ("spin", "test_spin_filter.wasm", "deadline"),
        ("membomb", "test_membomb_filter.wasm", "memory limit"),
        ("panics", "test_panic_filter.wasm", "crashed"),
    ] {
        put_plugin(&s, name, "kind=filter", guest(file)).await.expect(201);
        // Twice: a failed call's instance is not kept, so the second call
        // fails the same way rather than on a poisoned instance.
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let r = s.post("/v1/filters/evaluate", json!({"filter": "a", "payload": {"a": 1}, "plugin": name})).await;
            r.expect_error(422, "filter_failed", needle);
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "{name} took {:?}", started.elapsed());
        }
        // The host is fine and the good filter still answers.
        s.raw(Method::GET, "/health", &[], vec![]).await.expect(200);
        let ok = s.post("/v1/filters/evaluate", json!({"filter": "a", "payload": {"a": 1}})).await.expect(200);
        assert_eq!(ok.body["matches"], true);
    }
    let panic = s.post("/v1/filters/evaluate", json!({"filter": "a", "payload": {}, "plugin": "panics"})).await;
    assert!(panic.body["detail"].as_str().unwrap().contains("panicked"), "the panic message is shown: {}", panic.text);
    // Refused at load, with the reason.
    for (name, query, wasm, needle) in [
        (
            "sandbox-filter",
            "kind=filter",
            guest("test_sandbox_filter.wasm"),
            "may not import `automation:plugin/sandbox",
        ),
        ("wrong-world", "kind=filter", guest("script_preset.wasm"), "wrong world"),
        ("corrupt", "kind=filter", b"\0asm\x0d\0\x01\0garbage".to_vec(), "not a valid WebAssembly component"),
        ("text", "kind=filter", b"hello".to_vec(), "not a WebAssembly binary"),
        ("future", "kind=filter&wit=0.3.0", guest("jmespath_filter.wasm"), "newer than this host supports"),
        ("my-exec", "kind=executor&capabilities=sandbox", guest("local_sandbox.wasm"), "not granted"),
        (
            "asks-too-much",
            "kind=filter&capabilities=http",
            guest("jmespath_filter.wasm"),
            "cannot have the `http` capability",
        ),
    ] {
        let r = put_plugin(&s, name, query, wasm).await;
        assert_eq!(r.status, 422, "{name}: {}", r.text);
        let detail = r.body["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{name}: {detail:?} should mention {needle:?}");
        s.get(&format!("/v1/plugins/{name}")).await.expect_error(404, "not_found", name);
    }
    put_plugin(&s, "x", "kind=gizmo", guest("jmespath_filter.wasm")).await.expect_error(400, "invalid_query", "kind");
}

async fn uploads_are_checked_persisted_and_deletable(backend: Backend) {
    let pin = format!("my-exec@sha256:{}=sandbox", digest(&guest("local_sandbox.wasm")));
    let mut s = TestServer::start_with(
        backend,
        &[("AUTOMATION_PLUGIN_GRANTS", pin.as_str()), ("AUTOMATION_PLUGIN_REPLACE", "allow")],
    )
    .await;
    let up = put_plugin(&s, "my-filter", "kind=filter&version=1.2.3&description=mine", guest("jmespath_filter.wasm"))
        .await
        .expect(201);
    assert_eq!(up.body["source"], "uploaded");
    assert_eq!(up.body["version"], "1.2.3");
    put_plugin(&s, "my-exec", "kind=executor&capabilities=sandbox", guest("local_sandbox.wasm")).await.expect(201);
    let a = s
        .post(
            "/v1/automations",
            json!({
                "name": "uses mine",
                "trigger": {"type": "event", "source": "github", "on": ["push"], "filter": "ref == 'x'", "filter_plugin": "my-filter"},
                "preset": {"name": "script", "config": {"script": "true"}},
                "executor": {"plugin": "my-exec"},
            }),
        )
        .await
        .expect(201);
    s.delete("/v1/plugins/my-filter").await.expect_error(409, "plugin_in_use", &a.id());
    s.delete("/v1/plugins/jmespath").await.expect_error(409, "plugin_not_deletable", "bundled");
    s.restart();
    let after = s.get("/v1/plugins/my-filter").await.expect(200).body;
    assert_eq!(after["sha256"], up.body["sha256"], "uploaded plugins survive a restart");
    assert_eq!(after["from_cache"], true, "and load from the compile cache");
    s.delete(&format!("/v1/automations/{}", a.id())).await.expect(204);
    s.delete("/v1/plugins/my-filter").await.expect(204);
    s.get("/v1/plugins/my-filter").await.expect_error(404, "not_found", "my-filter");
    // Where the operator allows it, replacing a bundled plugin by upload,
    // then deleting the upload, brings the bundled one back.
    put_plugin(&s, "jmespath", "kind=filter&version=9.9.9", guest("jmespath_filter.wasm")).await.expect(200);
    assert_eq!(s.get("/v1/plugins/jmespath").await.expect(200).body["version"], "9.9.9");
    s.delete("/v1/plugins/jmespath").await.expect(204);
    assert_eq!(s.get("/v1/plugins/jmespath").await.expect(200).body["source"], "bundled");
}

async fn a_plugin_replaced_under_load_loses_no_call(backend: Backend) {
    let s = TestServer::start(backend).await;
    put_plugin(&s, "hot", "kind=filter&version=1.0.0", guest("jmespath_filter.wasm")).await.expect(201);
    let load = async {
        let mut ok = 0;
        for i in 0..150 {
            let r = s
                .post(
                    "/v1/filters/evaluate",
                    json!({"filter": "n == `7`", "payload": {"n": 7 + (i % 2)}, "plugin": "hot"}),
                )
                .await;
            assert_eq!(r.status, 200, "call {i} failed during a replace: {}", r.text);
            assert_eq!(r.body["matches"], i % 2 == 0);
            ok += 1;
        }
        ok
    };
    let replace = async {
        for v in 2..6 {
            put_plugin(&s, "hot", &format!("kind=filter&version={v}.0.0"), guest("jmespath_filter.wasm"))
                .await
                .expect(200);
        }
    };
    let (ok, ()) = tokio::join!(load, replace);
    assert_eq!(ok, 150);
    assert_eq!(s.get("/v1/plugins/hot").await.expect(200).body["version"], "5.0.0");
}

/// The `kv` capability: granted only by the operator to this component's
/// digest, and the state lives in the database (each call is a fresh
/// instance, yet the count goes on).
async fn kv_state_is_granted_and_kept_in_the_database(backend: Backend) {
    let wasm = guest("test_kv_preset.wasm");
    let pin = format!("counter@sha256:{}=kv", digest(&wasm));
    let s = TestServer::start_with(backend, &[("AUTOMATION_PLUGIN_GRANTS", pin.as_str())]).await;
    put_plugin(&s, "counter", "kind=preset", wasm.clone()).await.expect_error(422, "invalid_plugin", "not granted");
    put_plugin(&s, "stranger", "kind=preset&capabilities=kv", wasm.clone()).await.expect_error(
        422,
        "invalid_plugin",
        "not granted",
    );
    let p = put_plugin(&s, "counter", "kind=preset&capabilities=kv", wasm).await.expect(201);
    assert_eq!(p.body["granted"]["capabilities"], json!(["kv"]));
    assert_eq!(p.body["grant_origins"], json!(["operator_pinned"]));
    // Saving renders once (count 1); the run renders again (count 2).
    let body = json!({
        "name": "counting",
        "trigger": {"type": "manual"},
        "preset": {"name": "counter", "config": {}},
        "executor": {"plugin": "local-sandbox"},
    });
    let a = s.post("/v1/automations", body).await.expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    let done = crate::support::wait_final(&s, &run, 30).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["stdout"], "count=2 keys=renders,scratch deleted=true\n");
}

/// Attack: a plugin granted `kv` wrote without bound into the host's
/// database. Past its quota a set is `denied`, naming the quota, and
/// nothing past it is stored.
async fn a_plugin_cannot_fill_the_database_through_kv(backend: Backend) {
    let wasm = guest("test_kv_preset.wasm");
    let pin = format!("counter@sha256:{}=kv", digest(&wasm));
    let env = [("AUTOMATION_PLUGIN_GRANTS", pin.as_str()), ("AUTOMATION_PLUGIN_KV_MAX_KEYS", "1")];
    let s = TestServer::start_with(backend, &env).await;
    put_plugin(&s, "counter", "kind=preset&capabilities=kv", wasm).await.expect(201);
    let body = json!({
        "name": "counting",
        "trigger": {"type": "manual"},
        "preset": {"name": "counter", "config": {}},
        "executor": {"plugin": "local-sandbox"},
    });
    // The render sets `renders` (the one key allowed), then `scratch`: refused.
    let r = s.post("/v1/automations", body).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("key-value quota") && r.text.contains("1 keys of 1"), "{}", r.text);
    assert_eq!(s.get("/v1/automations").await.expect(200).body["total"], 0);
}

/// Found by the `jmespath_filter` fuzz target: a 297-byte expression for
/// which the JMESPath engine asks for more than 2 GiB. Natively that would
/// take the host; in the filter plugin it meets the store's memory limit
/// and fails only its own call, and the host keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expression_that_exhausts_memory_fails_only_its_call() {
    let s = TestServer::start(Backend::Sqlite).await;
    let expr = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/fuzz/jmespath-oom.txt"))
        .unwrap();
    let r = s.post("/v1/filters/evaluate", json!({"filter": expr, "payload": {}})).await;
    r.expect_error(422, "filter_failed", "exceeded its memory limit");
    s.get("/v1/plugins").await.expect(200);
    let ok = s.post("/v1/filters/evaluate", json!({"filter": "a == `1`", "payload": {"a": 1}})).await.expect(200);
    assert_eq!(ok.body["matches"], true);
}

/// The matcher's background filter calls share one thread that gets only
/// idle CPU (`Registry::idle`). A filter that spins to its deadline, one
/// that exhausts its memory and one that panics, all called there, fail
/// only their own automation's verdict, with the reason on the automation;
/// the thread serves the next delivery and the good filter still decides.
async fn hostile_filters_in_matching_fail_only_their_own_verdicts(backend: Backend) {
    let env = [
        ("AUTOMATION_GITHUB_WEBHOOK_SECRET", crate::events::SECRET),
        ("AUTOMATION_NO_DISPATCH", "true"),
        // Never catch up: every batch goes through the idle lane.
        ("AUTOMATION_MATCH_CATCH_UP_MS", "0"),
    ];
    let s = TestServer::start_with(backend, &env).await;
    let automation = |name: &str, plugin: &str, filter: &str| {
        json!({
            "name": name,
            "trigger": {"type": "event", "source": "github", "on": ["issues.*"], "filter": filter, "filter_plugin": plugin},
            "preset": {"name": "script", "config": {"script": "true"}},
        })
    };
    let good = s.post("/v1/automations", automation("good", "jmespath", "sender.login")).await.expect(201).id();
    let mut hostile = Vec::new();
    for (name, file, needle) in [
        ("spin", "test_spin_filter.wasm", "deadline"),
        ("membomb", "test_membomb_filter.wasm", "memory limit"),
        ("panics", "test_panic_filter.wasm", "crashed"),
    ] {
        put_plugin(&s, name, "kind=filter", guest(file)).await.expect(201);
        let id = s.post("/v1/automations", automation(name, name, "a")).await.expect(201).id();
        hostile.push((id, needle));
    }
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/github-webhooks/issues/labeled.payload.json");
    let body = std::fs::read(&path).unwrap();
    for n in 0..2 {
        let id = crate::events::deliver(&s, "issues", &format!("hostile-{n}"), &body).await.expect(202).id();
        let d = crate::events::wait_matched(&s, &id).await;
        let matched: Vec<&str> =
            d["result"]["matched"].as_array().unwrap().iter().map(|m| m["automation_id"].as_str().unwrap()).collect();
        assert_eq!(matched, [good.as_str()], "{d}");
        let errors = d["result"]["filter_errors"].as_array().unwrap();
        assert_eq!(errors.len(), hostile.len(), "{d}");
        for (automation, needle) in &hostile {
            let e = errors.iter().find(|e| e["automation_id"] == automation.as_str()).unwrap_or_else(|| panic!("{d}"));
            assert!(e["error"].as_str().unwrap().contains(needle), "{needle}: {e}");
        }
    }
    for (automation, needle) in &hostile {
        let a = s.get(&format!("/v1/automations/{automation}")).await.expect(200).body;
        assert_eq!(a["filter_errors"]["count"], 2, "{a}");
        assert!(a["filter_errors"]["last_error"].as_str().unwrap().contains(needle), "{a}");
    }
    s.raw(Method::GET, "/health", &[], vec![]).await.expect(200);
    let metrics = s.raw(Method::GET, "/metrics", &[], vec![]).await.expect(200).text;
    assert!(metrics.contains("automation_event_matched_total{priority=\"background\"} 2"), "{metrics}");
    assert!(!metrics.contains("priority=\"catch_up\"} "), "{metrics}");
}
