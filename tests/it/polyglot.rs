//! The Python and JavaScript filters in `guest-examples/`, built by their
//! own toolchains, through the real host: uploaded, used by event
//! automations on every GitHub fixture delivery, deciding exactly as the
//! bundled Rust (JMESPath) filter does with the equivalent expressions, and
//! contained when a delivery is too much for them.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::events::{SECRET, deliver, fixtures, wait_matched};
use crate::plugins::put_plugin;
use crate::support::polyglot::{cargo_component, componentize_js, componentize_py, js_filter, python_filter};
use crate::support::{Backend, TestServer};
use automation_host::events::signature::sign;

/// A rule in the guests' language, the same test in JMESPath, and the same
/// test in Rust.
pub(crate) type Rule = (&'static str, &'static str, fn(&Value) -> bool);

pub(crate) fn rules() -> Vec<Rule> {
    fn labels(p: &Value) -> Vec<&str> {
        ["pull_request", "issue"]
            .iter()
            .filter_map(|c| p[c]["labels"].as_array())
            .flatten()
            .filter_map(|l| l["name"].as_str())
            .collect()
    }
    vec![
        ("sender:Codertocat", "sender.login == 'Codertocat'", |p| p["sender"]["login"] == "Codertocat"),
        ("sender: github , Octocoders,octocat", "contains(['github', 'Octocoders', 'octocat'], sender.login)", |p| {
            ["github", "Octocoders", "octocat"].iter().any(|l| p["sender"]["login"] == *l)
        }),
        (
            "label:bug",
            "contains(pull_request.labels[].name || `[]`, 'bug') || contains(issue.labels[].name || `[]`, 'bug')",
            |p| labels(p).contains(&"bug"),
        ),
        ("sender:nobody-at-all", "sender.login == 'nobody-at-all'", |p| p["sender"]["login"] == "nobody-at-all"),
    ]
}

pub(crate) fn automation(name: &str, filter: &str, plugin: &str) -> Value {
    json!({
        "name": name,
        "trigger": {"type": "event", "source": "github", "on": ["*", "*.*"], "filter": filter, "filter_plugin": plugin},
        "preset": {"name": "script", "config": {"script": "true"}},
    })
}

/// What `GET /v1/plugins/{name}` says of the imports starting with `prefix`.
fn import_statuses(plugin: &Value, prefix: &str) -> BTreeSet<String> {
    plugin["imports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"].as_str().unwrap().starts_with(prefix))
        .map(|i| i["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_guest_filter_decides_like_the_rust_one(name: &str, wasm: Vec<u8>, denied_imports: &[&str]) {
    let s = TestServer::start_niced(
        Backend::Sqlite,
        &[("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET), ("AUTOMATION_NO_DISPATCH", "true")],
    )
    .await;
    let up = put_plugin(&s, name, "kind=filter", wasm).await.expect(201);
    assert_eq!(up.body["kind"], "filter");
    // It loads because WASI is provided; what it must not use is denied.
    let p = s.get(&format!("/v1/plugins/{name}")).await.expect(200).body;
    for prefix in denied_imports {
        assert_eq!(import_statuses(&p, prefix), BTreeSet::from(["denied".to_owned()]), "{prefix}: {}", p["imports"]);
    }

    // validate(), through the API: a bad rule is refused at the field.
    let bad = s.post("/v1/automations", automation("bad", "colour:red", name)).await;
    bad.expect_error(422, "invalid_filter", "unknown rule kind \"colour\"");
    let ok = s
        .post(
            "/v1/filters/evaluate",
            json!({"filter": "label:bug", "payload": {"issue": {"labels": [{"name": "bug"}]}}, "plugin": name}),
        )
        .await
        .expect(200);
    assert_eq!(ok.body["matches"], true);

    // Every fixture delivery, decided by the guest and by the JMESPath twin.
    let mut twins = Vec::new();
    for (i, (rule, jmespath, native)) in rules().into_iter().enumerate() {
        let guest = s.post("/v1/automations", automation(&format!("{name} {i}"), rule, name)).await.expect(201).id();
        let rust = s.post("/v1/automations", automation(&format!("jmespath {i}"), jmespath, "jmespath")).await;
        twins.push((guest, rust.expect(201).id(), native));
    }
    let fixtures = fixtures();
    let mut acks = Vec::new();
    for (i, (event, path)) in fixtures.iter().enumerate() {
        let body = std::fs::read(path).unwrap();
        let id = deliver(&s, event, &format!("{name}-{i}"), &body).await.expect(202).id();
        acks.push((id, serde_json::from_slice::<Value>(&body).unwrap(), path));
    }
    let mut matched_by_guest = 0;
    for (id, payload, path) in &acks {
        let d = wait_matched(&s, id).await;
        let matched: BTreeSet<&str> =
            d["result"]["matched"].as_array().unwrap().iter().map(|m| m["automation_id"].as_str().unwrap()).collect();
        for (guest, rust, native) in &twins {
            let want = native(payload);
            assert_eq!(matched.contains(guest.as_str()), want, "{name} on {}: {d}", path.display());
            assert_eq!(matched.contains(rust.as_str()), want, "jmespath on {}: {d}", path.display());
            matched_by_guest += usize::from(want);
        }
    }
    assert!(matched_by_guest > 250, "the rules match real deliveries ({matched_by_guest})");
    for (guest, _, _) in &twins {
        let a = s.get(&format!("/v1/automations/{guest}")).await.expect(200).body;
        assert_eq!(a["filter_errors"]["count"], 0, "{a}");
    }

    // Contained: a delivery whose parse needs more than a filter's memory
    // (3 million empty arrays, 9 MB of JSON) fails the guest's own match and
    // nothing else; the next delivery is decided as before.
    let padding = vec!["[]"; 3_000_000].join(",");
    let huge = format!(r#"{{"action":"opened","sender":{{"login":"Codertocat"}},"padding":[{padding}]}}"#);
    let sig = sign(SECRET.as_bytes(), huge.as_bytes());
    let r = s
        .raw(
            Method::POST,
            "/v1/events/github",
            &[("x-github-event", "issues"), ("x-github-delivery", "huge"), ("x-hub-signature-256", &sig)],
            huge.into_bytes(),
        )
        .await
        .expect(202);
    let d = wait_matched(&s, &r.id()).await;
    let failed = d["result"]["not_matched"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["automation_id"] == twins[0].0.as_str())
        .unwrap_or_else(|| panic!("the guest matched a delivery it cannot have parsed: {d}"));
    let reason = failed["reason"].as_str().unwrap();
    eprintln!("{name} on a 9 MB delivery: {reason}");
    // Stopped by the host (memory limit, deadline), or, for a runtime that
    // catches its own allocation failure, reported by the guest.
    assert!(reason.contains("memory") || reason.contains("deadline"), "{reason}");
    let (event, path) = &fixtures[0];
    let again = deliver(&s, event, &format!("{name}-again"), &std::fs::read(path).unwrap()).await.expect(202);
    let d = wait_matched(&s, &again.id()).await;
    let matched = d["result"]["matched"].to_string();
    assert_eq!(matched.contains(&twins[0].0), (twins[0].2)(&acks[0].1), "{d}");
    s.get("/health").await.expect(200);
}

/// componentize-py's CPython imports all of WASI 0.2 (sockets included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_filter_decides_like_the_rust_one() {
    let wasm = tokio::task::block_in_place(python_filter);
    a_guest_filter_decides_like_the_rust_one(
        "py-rules",
        wasm,
        &["wasi:sockets/tcp@", "wasi:filesystem/preopens@", "wasi:cli/environment@"],
    )
    .await;
}

/// componentize-js's StarlingMonkey imports `wasi:http` by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_filter_decides_like_the_rust_one() {
    let wasm = tokio::task::block_in_place(js_filter);
    a_guest_filter_decides_like_the_rust_one(
        "js-rules",
        wasm,
        &["wasi:http/outgoing-handler@", "wasi:filesystem/preopens@", "wasi:cli/stdin@"],
    )
    .await;
}

/// A newcomer's path, in each language: `plugin new` in an empty directory
/// outside the repository, the README's build, `plugin call` on the sample
/// input from inside the plugin's directory (which must stay clean), the
/// upload, and a matched delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_new_scaffolds_filters_that_reach_a_matched_delivery() {
    let bin = env!("CARGO_BIN_EXE_automation-host");
    let s = TestServer::start_niced(
        Backend::Sqlite,
        &[("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET), ("AUTOMATION_NO_DISPATCH", "true")],
    )
    .await;
    let opened = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/github-webhooks/pull_request/opened.payload.json"
    ))
    .unwrap();
    for lang in ["rust", "python", "js"] {
        let home = tempfile::tempdir().unwrap();
        let name = format!("my-{lang}-filter");
        let dir = home.path().join(&name);
        let made = std::process::Command::new(bin)
            .current_dir(home.path())
            .args(["plugin", "new", "filter", &name, "--lang", lang])
            .output()
            .unwrap();
        assert!(made.status.success(), "{lang}: {}", String::from_utf8_lossy(&made.stderr));
        let wasm = tokio::task::block_in_place(|| match lang {
            "rust" => cargo_component(&dir).join(format!("{}.wasm", name.replace('-', "_"))),
            "python" => {
                let out = dir.join(format!("{name}.wasm"));
                componentize_py(&dir, &dir.join("wit"), &out);
                out
            }
            _ => {
                let out = dir.join(format!("{name}.wasm"));
                componentize_js(&dir.join("filter.js"), &dir.join("wit"), &out);
                out
            }
        });
        let v = plugin_call(&dir, home.path(), &wasm, "matches");
        assert_eq!(v["result"]["ok"], json!([{"matches": true}, {"matches": false}, {"matches": true}]), "{lang}: {v}");
        assert!(!dir.join("data").exists(), "{lang}: plugin call wrote ./data into the plugin's directory");
        put_plugin(&s, &name, "kind=filter", std::fs::read(&wasm).unwrap()).await.expect(201);
        s.post("/v1/automations", automation(&format!("{lang} bad"), "no equals sign", &name)).await.expect_error(
            422,
            "invalid_filter",
            "path=value",
        );
        let a = s.post("/v1/automations", automation(&format!("{lang} opened"), "action=opened", &name)).await;
        let a = a.expect(201).id();
        let d = deliver(&s, "pull_request", &format!("new-{lang}"), &opened).await.expect(202);
        let d = wait_matched(&s, &d.id()).await;
        let matched = d["result"]["matched"].to_string();
        assert!(matched.contains(&a), "{lang}: {d}");
    }
}

/// `plugin new` for the other kinds (Rust, written with the vendored SDK):
/// each scaffold builds, answers `plugin call` with its sample input, and
/// works in the server: the preset renders an automation's bundle, the
/// executor carries out its run, the source takes a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_new_scaffolds_presets_executors_and_sources() {
    let bin = env!("CARGO_BIN_EXE_automation-host");
    let s = TestServer::start_niced(Backend::Sqlite, &[]).await;
    let home = tempfile::tempdir().unwrap();
    let mut built = Vec::new();
    for (kind, export) in [("preset", "render"), ("executor", "start"), ("source", "verify")] {
        let name = format!("my-{kind}");
        let dir = home.path().join(&name);
        let made = std::process::Command::new(bin)
            .current_dir(home.path())
            .args(["plugin", "new", kind, &name])
            .output()
            .unwrap();
        assert!(made.status.success(), "{kind}: {}", String::from_utf8_lossy(&made.stderr));
        let wasm =
            tokio::task::block_in_place(|| cargo_component(&dir).join(format!("{}.wasm", name.replace('-', "_"))));
        let v = plugin_call(&dir, home.path(), &wasm, export);
        let ok = &v["result"]["ok"];
        match kind {
            "preset" => assert_eq!(ok["entrypoint"], "./main.sh", "{v}"),
            "executor" => {
                assert!(ok["output"]["stdout"].as_str().unwrap_or_default().contains("would run `./main.sh`"), "{v}")
            }
            _ => assert_eq!(ok["deliver"]["key"], "order.created", "{v}"),
        }
        let up = put_plugin(&s, &name, &format!("kind={kind}"), std::fs::read(&wasm).unwrap()).await.expect(201);
        assert_eq!(up.body["wit"], "0.2.0");
        built.push(name);
    }

    // The preset and the executor together: a manual run, carried out.
    let a = json!({
        "name": "scaffolded", "trigger": {"type": "manual"},
        "preset": {"name": "my-preset", "config": {"greeting": "hello"}},
        "executor": {"plugin": "my-executor", "config": {}},
    });
    s.post(
        "/v1/automations",
        json!({"name": "bad", "trigger": {"type": "manual"}, "preset": {"name": "my-preset", "config": {}}}),
    )
    .await
    .expect_error(422, "invalid_preset_config", "greeting");
    let a = s.post("/v1/automations", a).await.expect(201).id();
    let run = s.post(&format!("/v1/automations/{a}/dispatch"), json!({})).await.expect(201).id();
    let run = crate::support::wait_final(&s, &run, 30).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["output"]["stdout"].as_str().unwrap().contains("would run `./main.sh`"), "{run}");

    // The source: a delivery with the right token is stored under its key.
    let secret = "change-me-to-a-long-secret";
    s.post("/v1/sources", json!({"name": "shop", "plugin": "my-source", "secret": secret})).await.expect(201);
    let body = br#"{"type": "order.created", "order": {"id": 42}}"#.to_vec();
    let wrong = [("x-webhook-token", "guess"), ("content-type", "application/json")];
    s.raw(Method::POST, "/v1/events/shop", &wrong, body.clone()).await.expect_error(401, "unauthorized", "secret");
    let right = [("x-webhook-token", secret), ("x-delivery-id", "d-1"), ("content-type", "application/json")];
    let ack = s.raw(Method::POST, "/v1/events/shop", &right, body).await.expect(202);
    assert_eq!(ack.body["event_key"], "order.created");
}

/// `automation-host plugin call WASM EXPORT --input sample-input.json` in a
/// scaffold's directory, with `home` as `$HOME` (so its compile cache goes
/// there); the printed JSON.
fn plugin_call(dir: &std::path::Path, home: &std::path::Path, wasm: &std::path::Path, export: &str) -> Value {
    let call = std::process::Command::new(env!("CARGO_BIN_EXE_automation-host"))
        .current_dir(dir)
        .env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .args(["plugin", "call"])
        .arg(wasm)
        .args([export, "--input", "sample-input.json"])
        .output()
        .unwrap();
    assert!(call.status.success(), "{} {export}: {}", dir.display(), String::from_utf8_lossy(&call.stderr));
    serde_json::from_slice(&call.stdout).unwrap()
}
