use crate::db_tests;
use crate::support::{
    Backend, TestServer, script_automation, tgz, token, wait_final, wait_for_pids, wait_for_run, wait_gone,
};
use reqwest::Method;
use serde_json::json;

db_tests!(
    script_runs_to_succeeded_with_output,
    bundle_exit_code_fails_the_run_and_payload_reaches_it,
    timeout_kills_the_process_group,
    cancel_kills_a_running_process,
    concurrency_queue_and_skip,
    completion_callback_finishes_the_run,
    a_killed_host_rescues_its_running_run,
    transient_start_failures_are_retried_then_fail,
    http_to_a_host_not_granted_is_denied,
);

async fn script_runs_to_succeeded_with_output(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = s
        .post(
            "/v1/automations",
            script_automation("hello", "echo hello from $AUTOMATION_TRIGGER; echo oops >&2", json!({})),
        )
        .await
        .expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    let done = wait_final(&s, &run, 30).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["exit_code"], 0);
    assert_eq!(done["output"]["stdout"], "hello from manual\n");
    assert_eq!(done["output"]["stderr"], "oops\n");
    assert_eq!(done["executor"], "local-sandbox");
    assert!(done["executor_handle"].is_string());
    assert_eq!(done["attempt"], 1);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    // What the executor plugin logged is kept with the run.
    let log = done["plugin_log"].as_array().unwrap();
    assert!(
        log.iter().any(|l| l["call"] == "start"
            && l["level"] == "info"
            && l["message"].as_str().unwrap().contains("started in")),
        "{done}"
    );
    // The workspace is gone once the run is over.
    assert!(!s.data_dir().join("workspaces").join(&run).exists());
}

async fn bundle_exit_code_fails_the_run_and_payload_reaches_it(backend: Backend) {
    let s = TestServer::start(backend).await;
    let archive = tgz(&[
        ("setup.sh", "echo setup-ran > setup.out\n", 0o755),
        (
            "run.sh",
            "cat setup.out; printf '%s' \"$AUTOMATION_EVENT_PAYLOAD\"; echo; echo \"$GREETING\"; exit 3\n",
            0o755,
        ),
    ]);
    let upload = s.upload(archive).await.expect(201).id();
    let a = s
        .post(
            "/v1/automations",
            json!({
                "name": "fails",
                "trigger": {"type": "manual"},
                "bundle": {"upload_id": upload},
                "entrypoint": "sh run.sh",
                "env": {"GREETING": "hi there"},
            }),
        )
        .await
        .expect(201);
    let run = s
        .post(&format!("/v1/automations/{}/dispatch", a.id()), json!({"payload": {"ticket": 7}}))
        .await
        .expect(201)
        .id();
    let done = wait_final(&s, &run, 30).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"], "exit code 3");
    assert_eq!(done["output"]["exit_code"], 3);
    let stdout = done["output"]["stdout"].as_str().unwrap();
    assert_eq!(stdout, "setup-ran\n{\"ticket\":7}\nhi there\n");
}

async fn timeout_kills_the_process_group(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = token();
    let script = format!("sleep 300.{t}1 & sleep 300.{t}2; wait");
    let body = script_automation("slow", &script, json!({"timeout_seconds": 2}));
    let a = s.post("/v1/automations", body).await.expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    wait_for_pids(&format!("300.{t}1"), 20).await;
    wait_for_pids(&format!("300.{t}2"), 20).await;
    let done = wait_final(&s, &run, 30).await;
    assert_eq!(done["status"], "timed_out", "{done}");
    assert!(done["error"].as_str().unwrap().contains("timed out"), "{done}");
    // Both the script's foreground and background children are gone.
    assert_eq!(wait_gone(&format!("300.{t}"), 5).await, Vec::<i32>::new(), "a process survived its run's timeout");
}

async fn cancel_kills_a_running_process(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = token();
    let body = script_automation("long", &format!("sleep 300.{t}"), json!({}));
    let a = s.post("/v1/automations", body).await.expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    wait_for_pids(&format!("300.{t}"), 20).await;
    wait_for_run(&s, &run, 20, |r| r["status"] == "running").await;
    let c = s.post(&format!("/v1/runs/{run}/cancel"), json!({})).await.expect(200);
    assert_eq!(c.body["status"], "cancelled");
    assert_eq!(c.body["status_detail"]["from"], "running");
    assert_eq!(wait_gone(&format!("300.{t}"), 10).await, Vec::<i32>::new(), "cancel did not stop the process");
    assert_eq!(s.get(&format!("/v1/runs/{run}")).await.expect(200).body["status"], "cancelled");
}

async fn concurrency_queue_and_skip(backend: Backend) {
    let s = TestServer::start(backend).await;
    // queue: three runs of a concurrency-1 automation run one at a time.
    let q =
        s.post("/v1/automations", script_automation("queued", "sleep 1", json!({"concurrency": 1}))).await.expect(201);
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(s.post(&format!("/v1/automations/{}/dispatch", q.id()), json!({})).await.expect(201).id());
    }
    let mut max_running = 0;
    loop {
        let list = s.get(&format!("/v1/automations/{}/runs", q.id())).await.expect(200).body;
        let items = list["items"].as_array().unwrap();
        let running = items.iter().filter(|r| r["status"] == "running").count();
        max_running = max_running.max(running);
        if items.iter().all(|r| r["status"] == "succeeded") {
            break;
        }
        assert!(
            items.iter().all(|r| matches!(r["status"].as_str(), Some("pending" | "running" | "succeeded"))),
            "{list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(max_running, 1, "concurrency 1 was exceeded");
    // skip: while one run is going, more runs are skipped, not queued.
    let k = s
        .post(
            "/v1/automations",
            script_automation("skipper", "sleep 3", json!({"concurrency": 1, "concurrency_policy": "skip"})),
        )
        .await
        .expect(201);
    let first = s.post(&format!("/v1/automations/{}/dispatch", k.id()), json!({})).await.expect(201).id();
    wait_for_run(&s, &first, 20, |r| r["status"] == "running").await;
    let second = s.post(&format!("/v1/automations/{}/dispatch", k.id()), json!({})).await.expect(201).id();
    let skipped = wait_final(&s, &second, 20).await;
    assert_eq!(skipped["status"], "skipped", "{skipped}");
    assert!(skipped["status_detail"]["reason"].as_str().unwrap().contains("concurrency"));
    assert_eq!(wait_final(&s, &first, 30).await["status"], "succeeded");
}

async fn completion_callback_finishes_the_run(backend: Backend) {
    // The callback is the host's own API: the run needs the host's network.
    let s = TestServer::start_with(backend, &[("AUTOMATION_SANDBOX_NETWORK", "host")]).await;
    let script = r#"curl -sf -X POST -H "Authorization: Bearer $AUTOMATION_CALLBACK_TOKEN" -d '{"status": "succeeded", "output": {"exit_code": null, "stdout": "reported", "stderr": "", "truncated": false}}' "$AUTOMATION_CALLBACK_URL" > /dev/null; sleep 300"#;
    let a = s.post("/v1/automations", script_automation("reporter", script, json!({}))).await.expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    let done = wait_final(&s, &run, 30).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["status_detail"]["by"], "callback");
    assert_eq!(done["output"]["stdout"], "reported");
    // Wrong token, and a second report of a final run.
    let path = format!("/v1/runs/{run}/complete");
    let r = s.raw(Method::POST, &path, &[("authorization", "Bearer nope")], br#"{"status": "failed"}"#.to_vec()).await;
    r.expect_error(401, "unauthorized", "callback token");
    let r = s.raw(Method::POST, &path, &[], br#"{"status": "failed"}"#.to_vec()).await;
    assert_eq!(r.status, 401);
}

async fn a_killed_host_rescues_its_running_run(backend: Backend) {
    let mut s = TestServer::start_with(backend, &[("AUTOMATION_LEASE_SECONDS", "3")]).await;
    let t = token();
    let body = script_automation("orphan", &format!("sleep 300.{t}"), json!({}));
    let a = s.post("/v1/automations", body).await.expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    wait_for_pids(&format!("300.{t}"), 20).await;
    wait_for_run(&s, &run, 20, |r| r["status"] == "running" && r["executor_handle"].is_string()).await;
    s.kill();
    // The run's processes do not outlive their host, even before a restart.
    assert_eq!(wait_gone(&format!("300.{t}"), 5).await, Vec::<i32>::new(), "the run outlived its killed host");
    s.spawn_again();
    let done = wait_final(&s, &run, 30).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["error"].as_str().unwrap().contains("process is gone"), "{done}");
    assert!(done["status_detail"]["reason"].as_str().unwrap().contains("gone"), "{done}");
}

/// An executor that cannot reach its server says `unavailable`: the host
/// retries with backoff, then fails the run, and counts the retries.
async fn transient_start_failures_are_retried_then_fail(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_START_ATTEMPTS", "3")]).await;
    // Nothing listens on this port (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let body = script_automation(
        "unreachable",
        "true",
        json!({"executor": {"plugin": "agent-server", "config": {"url": format!("http://127.0.0.1:{port}")}}}),
    );
    let a = s.post("/v1/automations", body).await.expect(201);
    let started = std::time::Instant::now();
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    let done = wait_final(&s, &run, 60).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("could not start") && error.contains("unavailable"), "{error}");
    // Two retries, with 1 s and 2 s of backoff between the three attempts.
    assert!(started.elapsed() >= std::time::Duration::from_secs(3), "{:?}", started.elapsed());
    let metrics = s.raw(Method::GET, "/metrics", &[], vec![]).await.expect(200).text;
    assert!(metrics.contains("automation_executor_start_retries_total 2"), "{metrics}");
    assert!(metrics.contains("automation_runs_finished_total{status=\"failed\"} 1"), "{metrics}");
}

/// Outbound HTTP goes only to granted hosts: the agent-server executor is
/// granted 127.0.0.1 and localhost, so another address is refused by the host.
async fn http_to_a_host_not_granted_is_denied(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_START_ATTEMPTS", "1")]).await;
    let body = script_automation(
        "elsewhere",
        "true",
        json!({"executor": {"plugin": "agent-server", "config": {"url": "http://192.0.2.1:8000"}}}),
    );
    let a = s.post("/v1/automations", body).await.expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    let done = wait_final(&s, &run, 30).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["error"].as_str().unwrap().contains("denied"), "{done}");
    assert!(s.log_text().contains("not granted"), "the host logs the refused request");
}

/// Attack (DNS rebinding, SSRF): a name in a plugin's HTTP grant that
/// resolves to an internal address (here `localhost`, in the agent-server's
/// default grant, resolving to loopback) used to be connected to. Names now
/// reach only public addresses; the address itself, listed (127.0.0.1),
/// still works. Checked at connect time, on the address connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_name_resolving_to_an_internal_address_is_refused() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let hits = hits.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
            }
        });
    }
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_START_ATTEMPTS", "1")]).await;
    let run_with = |url: String| {
        let s = &s;
        async move {
            let body = script_automation(
                "remote",
                "true",
                json!({"executor": {"plugin": "agent-server", "config": {"url": url}}}),
            );
            let a = s.post("/v1/automations", body).await.expect(201);
            let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
            wait_final(s, &run, 60).await
        }
    };
    let done = run_with(format!("http://localhost:{port}")).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the host connected to loopback through a name");
    assert!(s.log_text().contains("resolves to an internal address"), "the refusal is logged");
    // The literal address is granted too: that connection is made.
    let done = run_with(format!("http://127.0.0.1:{port}")).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1, "a listed address must stay reachable: {done}");
}

/// A run made on one host (here one that dispatches nothing) wakes an idle
/// other host through Postgres `LISTEN/NOTIFY`, instead of waiting for its
/// next poll; the waking host counts it. Postgres only: SQLite is one host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_made_on_one_host_wakes_the_other_hosts() {
    if crate::support::skip_postgres() {
        eprintln!("AUTOMATION_TEST_SKIP_POSTGRES=1: not run (it needs two hosts on one Postgres)");
        return;
    }
    let api = TestServer::start_with(Backend::Postgres, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let worker = api.start_peer(&[]).await;
    let a = api.post("/v1/automations", script_automation("woken", "echo woken", json!({}))).await.expect(201).id();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let run = api.post(&format!("/v1/automations/{a}/dispatch"), json!({})).await.expect(201).id();
    let done = wait_final(&worker, &run, 30).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let metrics = worker.get("/metrics").await.text;
    let woken = metrics
        .lines()
        .find_map(|l| l.strip_prefix("automation_dispatch_wakeups_total{source=\"notify\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(woken >= 1, "the worker was not woken by the other host: {metrics}");
}
