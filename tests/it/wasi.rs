//! Provide, then deny: components that import WASI 0.2 the way language
//! runtimes do (sockets, filesystem, environment, stdin, wasi:http) load,
//! and every use of what a plugin must not have fails inside the guest.
//! Refusals that remain come before the compile and name every import.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::events::{deliver, wait_matched};
use crate::plugins::{digest, guest, put_plugin};
use crate::support::{Backend, TestServer, shared_cache_dir};

/// A listener on 127.0.0.1 counting the connections it accepts, so a test
/// can tell that nothing reached it.
struct Witness {
    addr: String,
    accepted: Arc<AtomicUsize>,
}

impl Witness {
    fn start() -> Witness {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if conn.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Witness { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The status `GET /v1/plugins/{name}` reports for each import whose name
/// starts with `prefix`.
fn statuses<'a>(plugin: &'a Value, prefix: &str) -> Vec<(&'a str, &'a str)> {
    plugin["imports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"].as_str().unwrap().starts_with(prefix))
        .map(|i| (i["name"].as_str().unwrap(), i["status"].as_str().unwrap()))
        .collect()
}

/// Attack: a filter that tries sockets, files, the environment and stdin
/// through the standard library (the imports a language runtime brings).
/// Before: refused at load ("does not provide `wasi:sockets/...`"), so no
/// such component could be a plugin; now it loads, and gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_importing_all_of_wasi_loads_and_gets_nothing() {
    let witness = Witness::start();
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[("AUTOMATION_GITHUB_WEBHOOK_SECRET", crate::events::SECRET), ("AUTOMATION_NO_DISPATCH", "true")],
    )
    .await;
    put_plugin(&s, "probe", "kind=filter", guest("test_wasi_probe_filter.wasm")).await.expect(201);
    let p = s.get("/v1/plugins/probe").await.expect(200).body;
    // The guest really imports what it probes; otherwise this test would
    // prove nothing.
    for (prefix, want) in [
        ("wasi:sockets/tcp@", "denied"),
        ("wasi:sockets/udp@", "denied"),
        ("wasi:sockets/ip-name-lookup@", "denied"),
        ("wasi:filesystem/preopens@", "denied"),
        ("wasi:cli/environment@", "denied"),
        ("wasi:cli/stdin@", "denied"),
        ("wasi:cli/stdout@", "live"),
    ] {
        let found = statuses(&p, prefix);
        assert!(!found.is_empty(), "the probe does not import {prefix}: {}", p["imports"]);
        assert!(found.iter().all(|(_, st)| *st == want), "{prefix}: {found:?}");
    }

    let r = s.post("/v1/filters/evaluate", json!({"filter": witness.addr, "payload": {}, "plugin": "probe"})).await;
    let detail = r.body["detail"].as_str().unwrap_or_else(|| panic!("no error detail: {}", r.text));
    assert!(!detail.contains("LEAKED"), "{detail}");
    assert!(detail.contains("all refused"), "{detail}");
    for attempt in [
        "tcp connect:",
        "udp bind:",
        "name lookup:",
        "read /:",
        "read /etc/passwd:",
        "write /tmp:",
        "environment: no variables",
        "arguments: no arguments",
        "stdin: end of file",
    ] {
        assert!(detail.contains(attempt), "{attempt} missing from {detail}");
    }

    // Used by an event automation on a real delivery: the filter fails its
    // own match, visibly, and the host carries on.
    let a = s
        .post(
            "/v1/automations",
            json!({
                "name": "probing",
                "trigger": {"type": "event", "source": "github", "on": ["push"], "filter": witness.addr, "filter_plugin": "probe"},
                "preset": {"name": "script", "config": {"script": "true"}},
            }),
        )
        .await
        .expect(201);
    let body =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/github-webhooks/push/payload.json"))
            .unwrap();
    let d = deliver(&s, "push", "probe-1", &body).await.expect(202);
    let d = wait_matched(&s, &d.id()).await;
    assert!(d["result"]["not_matched"][0]["reason"].as_str().unwrap().contains("filter failed"), "{d}");
    let auto = s.get(&format!("/v1/automations/{}", a.id())).await.expect(200).body;
    assert_eq!(auto["filter_errors"]["count"], 1, "{auto}");
    assert!(!auto["filter_errors"]["last_error"].as_str().unwrap().contains("LEAKED"), "{auto}");
    assert_eq!(witness.accepted(), 0, "a connection reached the witness");
    s.get("/health").await.expect(200);
}

/// Attack: a filter that sends HTTP through `wasi:http` (a JavaScript
/// runtime imports it by default). Before: refused at load; now it loads,
/// its import is shown denied, and no request leaves the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_importing_wasi_http_loads_but_sends_nothing() {
    let witness = Witness::start();
    let s = TestServer::start(Backend::Sqlite).await;
    put_plugin(&s, "http-filter", "kind=filter", guest("test_http_filter.wasm")).await.expect(201);
    let p = s.get("/v1/plugins/http-filter").await.expect(200).body;
    let http = statuses(&p, "wasi:http/");
    assert!(!http.is_empty() && http.iter().all(|(_, st)| *st == "denied"), "{}", p["imports"]);
    let r =
        s.post("/v1/filters/evaluate", json!({"filter": witness.addr, "payload": {}, "plugin": "http-filter"})).await;
    let detail = r.body["detail"].as_str().unwrap_or_else(|| panic!("no error detail: {}", r.text));
    assert!(detail.contains("HttpRequestDenied"), "{detail}");
    assert_eq!(witness.accepted(), 0, "the request reached the witness");
    // A filter asking for `http` in its manifest is still refused outright.
    put_plugin(&s, "asks", "kind=filter&capabilities=http", guest("test_http_filter.wasm")).await.expect_error(
        422,
        "invalid_manifest",
        "cannot have the `http` capability",
    );
}

fn component(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("test component")
}

/// A component exporting the filter interface's name (nothing behind it:
/// these are refused before that matters) with `extra` inside.
fn filter_shaped(extra: &str) -> Vec<u8> {
    component(&format!(r#"(component {extra} (instance $e) (export "automation:plugin/filter@0.1.0" (instance $e)))"#))
}

/// What cannot be a plugin is refused before the compile (no compile cache
/// entry is written for it), and the refusal says everything at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_before_the_compile_and_name_every_import() {
    let s = TestServer::start(Backend::Sqlite).await;
    let many: String = (0..65).map(|_| "(core instance (instantiate $m))").collect();
    for (name, wasm, needle) in [
        ("text", b"hello".to_vec(), "does not start with the `\\0asm` magic"),
        ("wat", b"(component)".to_vec(), "WebAssembly text"),
        ("core", component("(module)"), "a core WebAssembly module, not a component"),
        (
            "imports",
            filter_shaped(r#"(import "wasi:nn/graph@0.2.0" (instance)) (import "acme:secret/door" (instance))"#),
            "2 imports cannot be had",
        ),
        ("wasi3", filter_shaped(r#"(import "wasi:io/streams@0.3.0" (instance))"#), "WASI 0.2.x only"),
        (
            "instances",
            filter_shaped(&format!("(core module $m) {many}")),
            "needs 65 core instances, which exceeds this host's limit of 64 core instances",
        ),
    ] {
        let r = put_plugin(&s, name, "kind=filter", wasm.clone()).await;
        let r = r.expect_error(422, "invalid_plugin", needle);
        if name == "imports" {
            let detail = r.body["detail"].as_str().unwrap();
            assert!(detail.contains("wasi:nn/graph@0.2.0") && detail.contains("acme:secret/door"), "{detail}");
        }
        let sha = digest(&wasm);
        let cached: Vec<String> = std::fs::read_dir(shared_cache_dir())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        assert!(!cached.iter().any(|f| f.starts_with(&sha)), "{name} was compiled before it was refused");
    }
}
