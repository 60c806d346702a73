//! Live output and progress: `GET /v1/runs/{id}/logs` serves what a local
//! run wrote so far and streams it with `?follow=true` until the run is
//! final; runs report progress through their progress file or with their
//! callback token, and the host never follows a link the run planted.

use std::path::PathBuf;
use std::time::Duration;

use crate::db_tests;
use crate::support::{Backend, KEY, TestServer, script_automation, wait_final};
use reqwest::Method;
use serde_json::{Value, json};

db_tests!(output_is_served_while_the_run_goes_and_streamed_until_it_ends);

async fn logs(s: &TestServer, run: &str) -> Value {
    s.get(&format!("/v1/runs/{run}/logs")).await.expect(200).body
}

/// Polls the run's logs until `done` says so.
async fn wait_logs(s: &TestServer, run: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let l = logs(s, run).await;
        if done(&l) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the run's logs never got there: {}", logs(s, run).await);
}

fn release(s: &TestServer, run: &str, name: &str) {
    let dir: PathBuf = s.data_dir().join("workspaces").join(run);
    std::fs::write(dir.join(name), b"").unwrap();
}

async fn output_is_served_while_the_run_goes_and_streamed_until_it_ends(backend: Backend) {
    let s = TestServer::start(backend).await;
    let secret = std::env::temp_dir().join(format!("host-only-{}", crate::support::token()));
    std::fs::write(&secret, "host-secret-line\n").unwrap();
    let script = format!(
        "echo first; echo \"token=$AUTOMATION_CALLBACK_TOKEN\"; echo '40% building' > \"$AUTOMATION_PROGRESS_FILE\"\n\
         while [ ! -e go1 ]; do sleep 0.05; done\n\
         ln -sf {} \"$AUTOMATION_PROGRESS_FILE\"; echo linked\n\
         while [ ! -e go2 ]; do sleep 0.05; done\n\
         echo second",
        secret.display()
    );
    let a = s.post("/v1/automations", script_automation("talks", &script, json!({}))).await.expect(201).id();
    let run = s.post(&format!("/v1/automations/{a}/dispatch"), json!({})).await.expect(201).id();

    // While it goes: the output so far, live, and the progress it wrote.
    let live = wait_logs(&s, &run, |l| {
        l["source"] == "live"
            && l["progress"]["phase"] == "building"
            && l["stdout"].as_str().unwrap().contains("token=")
    })
    .await;
    assert_eq!(live["status"], "running");
    assert_eq!(live["progress"]["percent"], 40);
    assert_eq!(live["progress"]["by"], "sandbox");
    assert!(!live["stdout"].as_str().unwrap().contains("second"));
    let token = live["stdout"].as_str().unwrap().lines().find_map(|l| l.strip_prefix("token=")).unwrap().to_owned();

    // The run's own report, with its callback token; another token is refused.
    let progress = format!("/v1/runs/{run}/progress");
    let report = serde_json::to_vec(&json!({"phase": "testing", "percent": 80})).unwrap();
    let with = |t: &str| format!("Bearer {t}");
    for (auth, status) in [(with("not-the-token"), 401), (with(KEY), 401), (with(&token), 204)] {
        let r = s
            .raw(
                Method::POST,
                &progress,
                &[("authorization", &auth), ("content-type", "application/json")],
                report.clone(),
            )
            .await;
        assert_eq!(r.status, status, "{}", r.text);
    }
    let bad = serde_json::to_vec(&json!({"phase": "", "percent": 101})).unwrap();
    let r = s
        .raw(Method::POST, &progress, &[("authorization", &with(&token)), ("content-type", "application/json")], bad)
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    let got = s.get(&format!("/v1/runs/{run}")).await.expect(200).body;
    assert_eq!(
        (got["progress"]["phase"].clone(), got["progress"]["by"].clone()),
        (json!("testing"), json!("callback"))
    );

    // Attack: the run replaces its progress file with a link to a file only
    // the host can read. The host opens it without following links, so the
    // file's line never becomes the run's progress.
    release(&s, &run, "go1");
    wait_logs(&s, &run, |l| l["stdout"].as_str().unwrap().contains("linked")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = logs(&s, &run).await;
    assert_ne!(after["progress"]["phase"], "host-secret-line", "the host followed the run's link: {after}");
    assert!(!after.to_string().contains("host-secret-line"));

    // Follow: events until the run is final, the last one `end`.
    let auth = with(KEY);
    let path = format!("/v1/runs/{run}/logs?follow=true");
    let headers = [("authorization", auth.as_str())];
    let follow = s.raw(Method::GET, &path, &headers, vec![]);
    let go = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        release(&s, &run, "go2");
    };
    let (streamed, ()) = tokio::join!(follow, go);
    assert_eq!(streamed.status, 200);
    let text = streamed.text;
    assert!(text.starts_with("event: logs\n"), "{text}");
    assert!(text.contains("\"source\":\"live\""), "output while it went: {text}");
    assert!(text.trim_end().ends_with("event: end\ndata: succeeded"), "{text}");
    let done = wait_final(&s, &run, 10).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    // Once over: the stored output, and no more progress.
    let stored = logs(&s, &run).await;
    assert_eq!(stored["source"], "stored");
    assert_eq!(stored["exit_code"], 0);
    assert!(
        stored["stdout"].as_str().unwrap().starts_with("first\n")
            && stored["stdout"].as_str().unwrap().ends_with("second\n")
    );
    let r = s
        .raw(Method::POST, &progress, &[("authorization", &with(&token)), ("content-type", "application/json")], report)
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    s.get("/v1/runs/00000000-0000-7000-8000-000000000000/logs").await.expect(404);
    let _ = std::fs::remove_file(&secret);
}

/// Attack: the run makes its progress file a FIFO that nobody writes. A
/// host opening it for reading would wait there for a writer, holding the
/// run's driver (and a worker thread) for good; it opens it without
/// blocking, sees it is not a regular file, and the run ends as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_for_a_progress_file_does_not_hold_the_host() {
    let s = TestServer::start(Backend::Sqlite).await;
    let script = "mkfifo \"$AUTOMATION_PROGRESS_FILE\"; sleep 1.5; echo done";
    let a = s.post("/v1/automations", script_automation("fifo", script, json!({}))).await.expect(201).id();
    let run = s.post(&format!("/v1/automations/{a}/dispatch"), json!({})).await.expect(201).id();
    let done = wait_final(&s, &run, 30).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["progress"].is_null(), "a FIFO is no progress: {done}");
    assert_eq!(done["output"]["stdout"], "done\n");
}
