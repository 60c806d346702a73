//! Trust follows the component, not its name: uploads never inherit what a
//! name was granted, bundled plugins cannot be replaced over the API unless
//! the operator allows it, and grants name a digest and who gave them.

use serde_json::json;

use crate::db_tests;
use crate::plugins::{digest, guest, put_plugin};
use crate::support::{Backend, TestServer, script_automation, wait_final, wait_for_run};

db_tests!(
    bundled_executors_cannot_be_replaced_over_the_api,
    a_name_grant_never_reaches_an_upload,
    api_grants_name_the_digest_and_who_gave_them,
    a_run_keeps_the_plugin_it_started_with,
    a_filter_breaking_its_interface_fails_only_its_own_automations,
);

/// Attack: a filter answering fewer verdicts than expressions used to panic
/// the matcher task, which nothing restarted: deliveries were acknowledged
/// and never matched on that host again.
async fn a_filter_breaking_its_interface_fails_only_its_own_automations(backend: Backend) {
    use crate::events::{SECRET, deliver, wait_matched};
    let s = TestServer::start_with(
        backend,
        &[("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET), ("AUTOMATION_NO_DISPATCH", "true")],
    )
    .await;
    put_plugin(&s, "miscount", "kind=filter", guest("test_panic_filter.wasm")).await.expect(201);
    let event = |name: &str, filter: &str, plugin: &str| {
        json!({
            "name": name,
            "trigger": {"type": "event", "source": "github", "on": ["push"], "filter": filter, "filter_plugin": plugin},
            "preset": {"name": "script", "config": {"script": "true"}},
        })
    };
    let bad = s.post("/v1/automations", event("bad", "miscount", "miscount")).await.expect(201).id();
    let good = s.post("/v1/automations", event("good", "ref == 'refs/heads/main'", "jmespath")).await.expect(201).id();
    for i in 0..3 {
        let body = json!({"ref": "refs/heads/main", "n": i}).to_string();
        let id = deliver(&s, "push", &format!("miscount-{i}"), body.as_bytes()).await.expect(202).id();
        let d = wait_matched(&s, &id).await;
        let matched: Vec<&str> =
            d["result"]["matched"].as_array().unwrap().iter().map(|m| m["automation_id"].as_str().unwrap()).collect();
        assert_eq!(matched, vec![good.as_str()], "{d}");
        let reason = d["result"]["not_matched"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["automation_id"] == bad.as_str())
            .map(|m| m["reason"].as_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(reason.contains("returned 0 verdicts for 1 expressions"), "{d}");
    }
    let metrics = s.raw(reqwest::Method::GET, "/metrics", &[], vec![]).await.expect(200).text;
    assert!(!metrics.contains("automation_background_restarts_total{loop=\"matcher\"}"), "the matcher never panicked");
}

/// Attack: a file planted in the compile cache directory is native code the
/// host runs. Here the planted file is a genuine compiled artifact, of
/// another component (a filter that panics), put under the bundled
/// jmespath filter's name; then a tampered entry. Neither may load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_and_tampered_cache_entries_are_never_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("plugin-cache");
    let cache_env = cache_dir.display().to_string();
    let mut s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_PLUGIN_CACHE_DIR", cache_env.as_str())]).await;
    let evaluate = json!({"filter": "a == `1`", "payload": {"a": 1}});
    assert_eq!(s.post("/v1/filters/evaluate", evaluate.clone()).await.expect(200).body["matches"], true);
    let panics = guest("test_panic_filter.wasm");
    put_plugin(&s, "panics", "kind=filter", panics.clone()).await.expect(201);
    let jmespath = s.get("/v1/plugins/jmespath").await.expect(200).body["sha256"].as_str().unwrap().to_owned();
    assert_eq!(std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777, 0o700, "the cache is private");
    let key = cache.path().join("plugin-cache.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the key sits beside it, 0600");
    s.stop();

    let entry = |prefix: &str| {
        std::fs::read_dir(&cache_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no cache entry for {prefix}"))
    };
    let panic_entry = entry(&digest(&panics));
    let jmespath_entry = entry(&jmespath);
    std::fs::copy(&panic_entry, &jmespath_entry).unwrap();
    s.spawn_again();
    let shown = s.get("/v1/plugins/jmespath").await.expect(200).body;
    assert_eq!(shown["from_cache"], false, "the planted entry was not used");
    let r = s.post("/v1/filters/evaluate", evaluate.clone()).await;
    assert_eq!(r.status, 200, "jmespath is itself, not the planted code: {}", r.text);
    assert_eq!(r.body["matches"], true);
    assert!(s.log_text().contains("compile cache entry refused"), "the refusal is logged");
    s.stop();

    // One byte of the genuine entry changed.
    let mut bytes = std::fs::read(&jmespath_entry).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&jmespath_entry, &bytes).unwrap();
    s.spawn_again();
    assert_eq!(s.get("/v1/plugins/jmespath").await.expect(200).body["from_cache"], false);
    assert_eq!(s.post("/v1/filters/evaluate", evaluate.clone()).await.expect(200).body["matches"], true);
    s.stop();
    // The refused entries were replaced by authentic ones.
    s.spawn_again();
    assert_eq!(s.get("/v1/plugins/jmespath").await.expect(200).body["from_cache"], true);

    // A key inside the cache directory is a configuration error.
    let mut cmd = s.command();
    cmd.env("AUTOMATION_PLUGIN_CACHE_KEY_FILE", cache_dir.join("k.key")).arg("migrate");
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not be inside the cache directory"));
}

/// Attack: `PUT /v1/plugins/local-sandbox` with any component used to replace
/// the bundled executor and keep its `sandbox` grant; `agent-server` handed
/// HTTP to localhost to whatever was uploaded under it.
async fn bundled_executors_cannot_be_replaced_over_the_api(backend: Backend) {
    let s = TestServer::start(backend).await;
    let before = s.get("/v1/plugins/local-sandbox").await.expect(200).body;
    for (name, query, wasm) in [
        ("local-sandbox", "kind=executor&capabilities=sandbox", guest("local_sandbox.wasm")),
        ("local-sandbox", "kind=executor", guest("test_noop_executor.wasm")),
        ("agent-server", "kind=executor&capabilities=http&allowed_hosts=127.0.0.1", guest("agent_server.wasm")),
        ("jmespath", "kind=filter", guest("jmespath_filter.wasm")),
    ] {
        put_plugin(&s, name, query, wasm).await.expect_error(409, "plugin_protected", "AUTOMATION_PLUGIN_REPLACE");
        let now = s.get(&format!("/v1/plugins/{name}")).await.expect(200).body;
        assert_eq!(now["source"], "bundled", "{name} is still the bundled one");
    }
    let after = s.get("/v1/plugins/local-sandbox").await.expect(200).body;
    assert_eq!(after["sha256"], before["sha256"]);
    assert_eq!(after["grant_origins"], json!(["bundled_default"]));

    // Where the operator allows replacing, the upload still gets none of
    // the bundled plugin's grants, even byte for byte the same component.
    let mut s = s;
    s.stop();
    let s = TestServer::start_with(backend, &[("AUTOMATION_PLUGIN_REPLACE", "allow")]).await;
    put_plugin(&s, "local-sandbox", "kind=executor&capabilities=sandbox", guest("local_sandbox.wasm"))
        .await
        .expect_error(422, "invalid_plugin", "not granted to this component");
    put_plugin(
        &s,
        "agent-server",
        "kind=executor&capabilities=http&allowed_hosts=127.0.0.1",
        guest("agent_server.wasm"),
    )
    .await
    .expect_error(422, "invalid_plugin", "not granted to this component");
    assert_eq!(s.get("/v1/plugins/local-sandbox").await.expect(200).body["source"], "bundled");
    // One that asks for nothing may replace it, and gets nothing.
    let up = put_plugin(&s, "local-sandbox", "kind=executor", guest("test_noop_executor.wasm")).await.expect(200);
    assert_eq!(up.body["granted"]["capabilities"], json!([]));
    assert_eq!(up.body["grant_origins"], json!([]));
}

/// Attack: `AUTOMATION_PLUGIN_GRANTS=counter=kv` was meant for one plugin;
/// anything uploaded as `counter` used to get `kv`.
async fn a_name_grant_never_reaches_an_upload(backend: Backend) {
    let kv = guest("test_kv_preset.wasm");
    let sb = guest("local_sandbox.wasm");
    let grants = format!("counter=kv;my-exec=sandbox;pinned@sha256:{}=kv", digest(&kv));
    let s = TestServer::start_with(backend, &[("AUTOMATION_PLUGIN_GRANTS", grants.as_str())]).await;
    let refused = put_plugin(&s, "counter", "kind=preset&capabilities=kv", kv.clone()).await;
    let detail = refused.expect_error(422, "invalid_plugin", "not granted").body["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains(&digest(&kv)), "the refusal names the digest to grant: {detail}");
    put_plugin(&s, "my-exec", "kind=executor&capabilities=sandbox", sb.clone()).await.expect_error(
        422,
        "invalid_plugin",
        "not granted",
    );
    // The pinned entry grants that digest, under that name only.
    let ok = put_plugin(&s, "pinned", "kind=preset&capabilities=kv", kv.clone()).await.expect(201);
    assert_eq!(ok.body["granted"]["capabilities"], json!(["kv"]));
    assert_eq!(ok.body["grant_origins"], json!(["operator_pinned"]));
    assert_eq!(ok.body["sha256"], digest(&kv));
    put_plugin(&s, "other", "kind=preset&capabilities=kv", kv).await.expect_error(422, "invalid_plugin", "not granted");
    // Another component uploaded over the pinned name gets nothing.
    let swapped = put_plugin(&s, "pinned", "kind=preset", guest("script_preset.wasm")).await.expect(200);
    assert_eq!(swapped.body["granted"]["capabilities"], json!([]));
    // Malformed pins are a configuration error, not a silent no-op.
    let mut cmd = s.command();
    cmd.env("AUTOMATION_PLUGIN_GRANTS", "x@sha256:abc=kv").arg("migrate");
    let out = cmd.output().expect("run the binary");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A grant recorded through the API names the digest; `GET` shows it with
/// who gave it and when; withdrawing it unloads the component at once.
async fn api_grants_name_the_digest_and_who_gave_them(backend: Backend) {
    let mut s = TestServer::start(backend).await;
    let kv = guest("test_kv_preset.wasm");
    let sha = digest(&kv);
    put_plugin(&s, "counter", "kind=preset&capabilities=kv", kv.clone()).await.expect_error(
        422,
        "invalid_plugin",
        "not granted",
    );
    for (body, needle) in [
        (json!({"sha256": "abc", "capabilities": ["kv"]}), "64 hex"),
        (json!({"sha256": sha, "capabilities": ["root"]}), "unknown capability"),
    ] {
        s.post("/v1/plugins/counter/grants", body).await.expect_error(422, "invalid_grant", needle);
    }
    let g = s.post("/v1/plugins/counter/grants", json!({"sha256": sha, "capabilities": ["kv"]})).await.expect(201);
    assert_eq!(g.body["granted_by"], "AUTOMATION_API_KEY");
    assert_eq!(g.body["sha256"], sha);
    let p = put_plugin(&s, "counter", "kind=preset&capabilities=kv", kv.clone()).await.expect(201);
    assert_eq!(p.body["granted"]["capabilities"], json!(["kv"]));
    assert_eq!(p.body["grant_origins"], json!(["api"]));
    let shown = s.get("/v1/plugins/counter").await.expect(200).body;
    assert_eq!(shown["recorded_grant"]["granted_by"], "AUTOMATION_API_KEY");
    assert_eq!(shown["recorded_grant"]["capabilities"], json!(["kv"]));
    assert!(shown["recorded_grant"]["granted_at"].is_string());
    let list = s.get("/v1/plugins/counter/grants").await.expect(200).body;
    assert_eq!(list.as_array().unwrap().len(), 1);
    // The grant is for that digest: the same component with one custom
    // section added (a different digest) under the same name gets nothing,
    // and the granted one stays loaded.
    let mut other = kv.clone();
    other.extend_from_slice(&[0x00, 0x05, 0x04, b'x', b'x', b'x', b'x']);
    let refused = put_plugin(&s, "counter", "kind=preset&capabilities=kv", other.clone()).await;
    refused.expect_error(422, "invalid_plugin", &digest(&other));
    assert_eq!(s.get("/v1/plugins/counter").await.expect(200).body["sha256"], sha);
    // Survives a restart.
    s.restart();
    assert_eq!(s.get("/v1/plugins/counter").await.expect(200).body["grant_origins"], json!(["api"]));
    // Withdrawn: the component needs it, so it is unloaded at once.
    s.delete(&format!("/v1/plugins/counter/grants/{sha}")).await.expect(204);
    s.get("/v1/plugins/counter").await.expect_error(404, "not_found", "counter");
    s.delete(&format!("/v1/plugins/counter/grants/{sha}")).await.expect_error(404, "not_found", "counter");
    s.restart();
    s.get("/v1/plugins/counter").await.expect_error(404, "not_found", "counter");
}

/// A run keeps the executor it started with when the plugin is replaced
/// under it.
async fn a_run_keeps_the_plugin_it_started_with(backend: Backend) {
    let sb = guest("local_sandbox.wasm");
    let pin = format!("my-exec@sha256:{}=sandbox", digest(&sb));
    let s = TestServer::start_with(backend, &[("AUTOMATION_PLUGIN_GRANTS", pin.as_str())]).await;
    put_plugin(&s, "my-exec", "kind=executor&capabilities=sandbox", sb).await.expect(201);
    let a = s
        .post(
            "/v1/automations",
            script_automation("keeps", "sleep 2; echo from-the-sandbox", json!({"executor": {"plugin": "my-exec"}})),
        )
        .await
        .expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    wait_for_run(&s, &run, 30, |r| r["status"] == "running").await;
    // Replaced by one that succeeds at once with no output.
    put_plugin(&s, "my-exec", "kind=executor", guest("test_noop_executor.wasm")).await.expect(200);
    let done = wait_final(&s, &run, 30).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["stdout"], "from-the-sandbox\n", "the run finished on the executor it started on");
}
