use crate::db_tests;
use crate::support::{Backend, TestServer, manual_automation, simple_upload};
use serde_json::json;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_automation-host"))
}

#[test]
fn help_is_there_for_every_command() {
    for args in [&["--help"][..], &["serve", "--help"], &["migrate", "--help"], &["api-key", "create", "--help"]] {
        let out = bin().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
    let out = bin().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["AUTOMATION_DATABASE_URL", "AUTOMATION_LISTEN", "AUTOMATION_API_KEY", "AUTOMATION_DATA_DIR"] {
        assert!(text.contains(needle), "--help does not mention {needle}");
    }
}

#[test]
fn bad_config_is_reported_in_one_message() {
    let out = bin()
        .env_clear()
        .env("AUTOMATION_DATABASE_URL", "mysql://nope")
        .env("AUTOMATION_LISTEN", "not-an-address")
        .env("AUTOMATION_API_KEY", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["AUTOMATION_DATABASE_URL", "AUTOMATION_LISTEN", "AUTOMATION_API_KEY"] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
}

db_tests!(a_restart_keeps_everything);

async fn a_restart_keeps_everything(backend: Backend) {
    let mut s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let upload = simple_upload(&s).await;
    let a = s.post("/v1/automations", manual_automation("survivor", &upload)).await.expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({"payload": {"n": 1}})).await.expect(201);
    let before = (
        s.get(&format!("/v1/automations/{}", a.id())).await.expect(200).body,
        s.get(&format!("/v1/runs/{}", run.id())).await.expect(200).body,
        s.get(&format!("/v1/uploads/{upload}")).await.expect(200).body,
    );
    s.restart();
    let after = (
        s.get(&format!("/v1/automations/{}", a.id())).await.expect(200).body,
        s.get(&format!("/v1/runs/{}", run.id())).await.expect(200).body,
        s.get(&format!("/v1/uploads/{upload}")).await.expect(200).body,
    );
    assert_eq!(before, after);
    assert!(s.log_text().contains("shutting down"), "SIGTERM was not handled gracefully");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_without_a_key_prints_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .env_clear()
        .env("AUTOMATION_DATA_DIR", dir.path())
        .env("AUTOMATION_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut key = None;
    let mut base = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(k) = line.trim().strip_prefix("ahk_") {
            key = Some(format!("ahk_{k}"));
        }
        if let Some(url) = line.strip_prefix("automation-host listening on ") {
            base = Some(url.to_owned());
            break;
        }
    }
    let (key, base) = (key.expect("no key printed"), base.expect("never listened"));
    assert!(dir.path().join("automation.db").exists(), "SQLite file created in the data dir");
    let resp = reqwest::Client::new().get(format!("{base}/v1/automations")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = child.kill();
    let _ = child.wait();
}

/// The plugin author's loop: call an export of a component from a file.
#[test]
fn plugin_call_prints_result_logs_time_memory_and_fuel() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = |f: &str| std::path::Path::new(env!("GUEST_WASM_DIR")).join(f);
    let input = dir.path().join("in.json");
    std::fs::write(&input, r#"{"payload": {"action": "opened"}, "expressions": ["action == 'opened'", "action == 'closed'", "glob(x, 'y')"]}"#).unwrap();
    let out = bin()
        .env("AUTOMATION_DATA_DIR", dir.path())
        .env("AUTOMATION_PLUGIN_CACHE_DIR", crate::support::shared_cache_dir())
        .args(["plugin", "call"])
        .arg(wasm("jmespath_filter.wasm"))
        .args(["matches", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["ok"][0]["matches"], true);
    assert_eq!(v["result"]["ok"][1]["matches"], false);
    assert!(v["result"]["ok"][2]["error"].as_str().unwrap().contains("expects type string"));
    assert!(v["fuel"].as_u64().unwrap() > 0);
    assert!(v["elapsed_ms"].as_f64().unwrap() > 0.0);
    assert!(v["peak_memory_bytes"].as_u64().unwrap() > 0);
    // A filter that never returns: the call fails with a clear error, exit 1.
    let out = bin()
        .env("AUTOMATION_DATA_DIR", dir.path())
        .env("AUTOMATION_PLUGIN_CACHE_DIR", crate::support::shared_cache_dir())
        .args(["plugin", "call"])
        .arg(wasm("test_spin_filter.wasm"))
        .args(["matches", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["result"]["error"].as_str().unwrap().contains("deadline"), "{v}");
    // A preset renders from stdin input.
    let mut child = bin()
        .env("AUTOMATION_DATA_DIR", dir.path())
        .args(["plugin", "call"])
        .arg(wasm("script_preset.wasm"))
        .args(["render", "-i", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(br#"{"script": "echo hi"}"#).unwrap();
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["ok"]["entrypoint"], "bash main.sh");
}
