//! The hostile-bundle suite: real bundles run through `local-sandbox` on
//! the real binary, each trying to get out. Every case asserts that the
//! attempt failed and that the host is unharmed. These machines allow user
//! namespaces, Landlock and seccomp, so the suite asserts the `full` level is
//! what runs get here (no silent skip), and runs the escape attempts that do
//! not need namespaces again under `restricted`, the level a host without
//! user namespaces gets.
//!
//! The sandbox is not storage, so these run on SQLite only.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    Backend, KEY, TestServer, pids_with, script_automation, shared_cache_dir, tgz, token, wait_final, wait_for_pids,
    wait_for_run, wait_gone,
};

/// Runs `script` (sh) through the local sandbox and waits for the end.
async fn run(s: &TestServer, script: &str, extra: Value) -> Value {
    let a = s.post("/v1/automations", script_automation("hostile", script, extra)).await.expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    wait_final(s, &run, 60).await
}

fn stdout(run: &Value) -> &str {
    run["output"]["stdout"].as_str().unwrap_or_default()
}

fn all_output(run: &Value) -> String {
    format!("{}\n{}", run["output"]["stdout"].as_str().unwrap_or(""), run["output"]["stderr"].as_str().unwrap_or(""))
}

async fn healthy(s: &TestServer) {
    let h = s.raw(Method::GET, "/health", &[], vec![]).await;
    assert_eq!(h.status, 200, "the host stopped answering");
}

fn keep() -> Value {
    json!({"executor": {"plugin": "local-sandbox", "config": {"keep_workspace": true}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_isolation_level_is_probed_shown_and_full_here() {
    let s = TestServer::start(Backend::Sqlite).await;
    let p = s.get("/v1/plugins/local-sandbox").await.expect(200).body;
    let iso = &p["isolation"];
    assert_eq!(iso["level"], "full", "these machines allow namespaces, Landlock and seccomp: {iso}");
    assert_eq!(iso["layers"]["namespaces"], true, "{iso}");
    assert_eq!(iso["layers"]["seccomp"], true, "{iso}");
    assert!(iso["layers"]["landlock"].as_str().unwrap().ends_with("enforced"), "{iso}");
    assert!(iso["layers"]["landlock_abi"].as_i64().unwrap() >= 1, "{iso}");
    assert_eq!(iso["network"], "none");
    assert_eq!(iso["limits"]["processes"], 256);
    // Filters and presets have no sandbox, so no isolation to show.
    assert!(s.get("/v1/plugins/jmespath").await.expect(200).body.get("isolation").is_none());
    let ready = s.raw(Method::GET, "/ready", &[], vec![]).await.expect(200).body;
    assert!(ready["sandbox"].as_str().unwrap().contains("sandbox isolation: full"), "{ready}");
    assert!(s.log_text().contains("sandbox isolation: full"), "the level is logged at start-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_sees_only_its_own_small_world() {
    let s = TestServer::start(Backend::Sqlite).await;
    let script = "id -u; id -g; hostname; ls /; echo procs=$(ls /proc | grep -c '^[0-9]'); \
                  stat -c %a /workspace; pwd; echo home=$HOME tmp=$TMPDIR; \
                  grep -E '^(CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status; \
                  ls /home /root /run /var /srv /sys 2>&1 | head -3; ls /dev";
    let done = run(&s, script, json!({})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let out = stdout(&done);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000", "never root inside: {out}");
    assert_eq!(lines[1], "1000", "{out}");
    assert_eq!(lines[2], "sandbox", "{out}");
    // The root holds the system directories, a minimal /etc, /dev, /proc,
    // /tmp and the workspace; nothing of the host's data or homes.
    for hidden in ["home", "root", "run", "var", "srv", "sys", "opt", "mnt", "data"] {
        assert!(!lines.contains(&hidden), "/{hidden} is visible: {out}");
    }
    for shown in ["usr", "etc", "dev", "proc", "tmp", "workspace"] {
        assert!(lines.contains(&shown), "/{shown} is missing: {out}");
    }
    let procs: usize = out.lines().find_map(|l| l.strip_prefix("procs=")).unwrap().parse().unwrap();
    assert!(procs <= 6, "only the run's own processes are in /proc: {out}");
    assert!(out.contains("\n700\n/workspace\n"), "the workspace is 0700 and the working directory: {out}");
    assert!(out.contains("home=/workspace tmp=/tmp"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000") && out.contains("CapPrm:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1") && out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("No such file or directory"), "{out}");
    for dev in ["null", "zero", "urandom", "fd", "shm"] {
        assert!(lines.contains(&dev), "/dev/{dev} is missing: {out}");
    }
    assert!(!lines.contains(&"sda") && !lines.contains(&"vda") && !lines.contains(&"mem"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_environment_and_processes_are_out_of_reach() {
    let s = TestServer::start(Backend::Sqlite).await;
    let host = s.pid();
    let script = format!(
        "tr '\\0' '\\n' < /proc/{host}/environ; echo direct=$?; \
         for f in /proc/*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null | grep -c AUTOMATION_API_KEY; \
         kill -0 {host} && echo signalled || echo no-signal; kill -0 1 && echo init-signalled; \
         env | grep -c AUTOMATION_API_KEY"
    );
    let done = run(&s, &script, json!({})).await;
    let out = all_output(&done);
    assert!(!out.contains(KEY), "the host's admin key leaked: {out}");
    assert!(out.contains("direct=") && !out.contains("direct=0"), "{out}");
    assert!(out.contains("no-signal"), "the run could signal the host: {out}");
    assert!(!out.contains("init-signalled"), "the run could signal its init: {out}");
    healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_and_compile_cache_are_out_of_reach() {
    let s = TestServer::start(Backend::Sqlite).await;
    let data = s.data_dir().display().to_string();
    let cache = shared_cache_dir();
    let planted = format!("planted-{}", token());
    let script = format!(
        "head -c 16 ../../automation.db; head -c 16 {data}/automation.db; ls {cache} {data} ..; \
         echo x > ../../{planted}; echo x > {data}/{planted}; echo x > {cache}/{planted}.cwasm; \
         sqlite3 {data}/automation.db 'select 1' ; echo end"
    );
    let db_before = std::fs::metadata(s.data_dir().join("automation.db")).unwrap().len();
    let done = run(&s, &script, json!({})).await;
    let out = all_output(&done);
    assert!(!out.contains("SQLite format"), "the run read the database: {out}");
    for entry in std::fs::read_dir(&cache).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!out.contains(&name), "the run listed the compile cache ({name}): {out}");
    }
    assert!(out.contains("end"), "{out}");
    for place in [s.data_dir().to_path_buf(), Path::new(&cache).to_path_buf(), s.data_dir().join("workspaces")] {
        let names: Vec<String> = std::fs::read_dir(&place)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with(&planted)), "a file was planted in {}", place.display());
    }
    assert!(std::fs::metadata(s.data_dir().join("automation.db")).unwrap().len() >= db_before);
    healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_runs_workspace_and_token_are_out_of_reach() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = token();
    let a = s
        .post(
            "/v1/automations",
            script_automation(
                "victim",
                &format!("echo secret-{t} > secret.txt; echo $AUTOMATION_CALLBACK_TOKEN > token; sleep 120.{t}"),
                keep(),
            ),
        )
        .await
        .expect(201);
    let victim = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    wait_for_pids(&format!("120.{t}"), 20).await;
    let victim_ws = s.data_dir().join("workspaces").join(&victim);
    let victim_token = crate::support::wait_for_file(&victim_ws.join("token"), 20).await;
    let script = format!(
        "cat ../{victim}/secret.txt; cat {ws}/secret.txt; ls ..; \
         for f in /proc/*/environ; do tr '\\0' '\\n' < $f; done 2>/dev/null | grep CALLBACK_TOKEN; \
         for f in /proc/*/cwd/secret.txt; do cat $f; done 2>/dev/null; echo end",
        ws = victim_ws.display()
    );
    let done = run(&s, &script, json!({})).await;
    let out = all_output(&done);
    assert!(out.contains("end"), "{out}");
    assert!(!out.contains(&format!("secret-{t}")), "the run read another run's workspace: {out}");
    assert!(!out.contains(&victim_token), "the run read another run's callback token: {out}");
    assert!(!out.lines().any(|l| l.trim() == victim), "the run listed other workspaces: {out}");
    s.post(&format!("/v1/runs/{victim}/cancel"), json!({})).await.expect(200);
    assert_eq!(wait_gone(&format!("120.{t}"), 10).await, Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_workspace_go_nowhere() {
    let s = TestServer::start(Backend::Sqlite).await;
    let name = format!("escape-{}", token());
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let targets = ["/tmp".to_owned(), home.clone(), "/usr".into(), "/etc".into(), "/".into(), "/dev/shm/..".into()];
    let script = targets.iter().map(|d| format!("echo x > {d}/{name}; ")).collect::<String>() + "echo end";
    let done = run(&s, &script, json!({})).await;
    assert!(stdout(&done).contains("end"), "{done}");
    for d in ["/tmp", &home, "/usr", "/etc", "/", "/dev"] {
        assert!(!Path::new(d).join(&name).exists(), "the run wrote {d}/{name} on the host");
    }
    // Its own /tmp is private, and writable.
    let done = run(&s, "echo mine > /tmp/x && cat /tmp/x", json!({})).await;
    assert_eq!(stdout(&done), "mine\n", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_not_even_the_hosts_own_api() {
    let s = TestServer::start(Backend::Sqlite).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let api = s.port();
    let script = format!(
        "curl -s --max-time 3 http://127.0.0.1:{api}/health; echo api=$?; \
         curl -s --max-time 3 http://127.0.0.1:{port}/; echo other=$?; \
         (echo hi > /dev/tcp/127.0.0.1/{port}) 2>&1; echo devtcp=$?; \
         python3 -c 'import socket; socket.socket(socket.AF_INET)' 2>&1 | tail -1; \
         python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); print(\"unix ok\")'; echo end"
    );
    let done =
        run(&s, &script, json!({"preset": {"name": "script", "config": {"interpreter": "bash", "script": script}}}))
            .await;
    let out = all_output(&done);
    assert!(out.contains("end"), "{out}");
    assert!(!out.contains("\"ok\""), "the run reached the host's API: {out}");
    assert!(!out.contains("api=0") && !out.contains("other=0") && !out.contains("devtcp=0"), "{out}");
    assert!(out.contains("PermissionError"), "IP sockets are refused: {out}");
    assert!(out.contains("unix ok"), "local sockets still work: {out}");
    assert!(listener.accept().is_err(), "a connection reached a local port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_is_per_automation_only_where_the_operator_allows() {
    let s = TestServer::start(Backend::Sqlite).await;
    let host_net = json!({"executor": {"plugin": "local-sandbox", "config": {"network": "host"}}});
    let done = run(&s, "echo should-not-run", host_net.clone()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["error"].as_str().unwrap().contains("AUTOMATION_SANDBOX_NETWORK_PER_AUTOMATION"), "{done}");
    assert!(!stdout(&done).contains("should-not-run"));
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_SANDBOX_NETWORK_PER_AUTOMATION", "true")]).await;
    let script = format!("curl -sf http://127.0.0.1:{}/health", s.port());
    let done = run(&s, &script, host_net).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(stdout(&done), "{\"status\":\"ok\"}", "{done}");
    // Others on the same host still have none.
    let done = run(&s, &script, json!({})).await;
    assert_eq!(done["status"], "failed", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setsid_and_double_forks_end_with_the_run() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = token();
    let script = format!(
        "setsid sleep 1000.{t}1 > /dev/null 2>&1 < /dev/null & \
         ( ( sleep 1000.{t}2 > /dev/null 2>&1 & ) & ); \
         nohup sleep 1000.{t}3 > /dev/null 2>&1 & \
         sleep 1; echo forked"
    );
    let done = run(&s, &script, json!({})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(stdout(&done), "forked\n");
    assert_eq!(wait_gone(&format!("1000.{t}"), 5).await, Vec::<i32>::new(), "a daemon outlived its run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_end_daemonised_processes_too() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = token();
    let script = format!("setsid sleep 1000.{t}1 > /dev/null 2>&1 < /dev/null & sleep 1000.{t}2");
    let a = s.post("/v1/automations", script_automation("c", &script, json!({}))).await.expect(201);
    let r = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    wait_for_pids(&format!("1000.{t}1"), 20).await;
    wait_for_run(&s, &r, 20, |r| r["status"] == "running" && r["executor_handle"].is_string()).await;
    s.post(&format!("/v1/runs/{r}/cancel"), json!({})).await.expect(200);
    assert_eq!(wait_gone(&format!("1000.{t}"), 10).await, Vec::<i32>::new(), "cancel left a process behind");

    let u = token();
    let script = format!("setsid sleep 1000.{u}1 > /dev/null 2>&1 < /dev/null & sleep 1000.{u}2");
    let done = run(&s, &script, json!({"timeout_seconds": 2})).await;
    assert_eq!(done["status"], "timed_out", "{done}");
    assert_eq!(wait_gone(&format!("1000.{u}"), 10).await, Vec::<i32>::new(), "the timeout left a process behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_restarted_host_leaves_no_process_behind() {
    let mut s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_SHUTDOWN_GRACE_SECONDS", "1")]).await;
    let t = token();
    let a = s
        .post(
            "/v1/automations",
            script_automation(
                "d",
                &format!("setsid sleep 1000.{t}1 > /dev/null 2>&1 < /dev/null & sleep 1000.{t}2"),
                json!({}),
            ),
        )
        .await
        .expect(201);
    let r = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    wait_for_pids(&format!("1000.{t}1"), 20).await;
    wait_for_run(&s, &r, 20, |r| r["status"] == "running" && r["executor_handle"].is_string()).await;
    s.kill();
    assert_eq!(wait_gone(&format!("1000.{t}"), 5).await, Vec::<i32>::new(), "the run outlived its killed host");
    s.spawn_again();
    let done = wait_final(&s, &r, 30).await;
    assert_eq!(done["status"], "failed", "{done}");

    // A clean restart (SIGTERM) with a long run going.
    let r = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    wait_for_run(&s, &r, 20, |r| r["status"] == "running" && r["executor_handle"].is_string()).await;
    let before = pids_with(&format!("1000.{t}"));
    assert!(!before.is_empty());
    s.restart();
    assert_eq!(wait_gone(&format!("1000.{t}"), 5).await, Vec::<i32>::new(), "the run outlived a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_bounded_and_the_host_keeps_answering() {
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_SANDBOX_PROCESSES", "64")]).await;
    let script = "readlink /proc/self/ns/pid > ns; bomb() { bomb | bomb & }; bomb; sleep 30";
    let extra =
        json!({"timeout_seconds": 6, "executor": {"plugin": "local-sandbox", "config": {"keep_workspace": true}}});
    let a = s.post("/v1/automations", script_automation("bomb", script, extra)).await.expect(201);
    let r = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    let ns = crate::support::wait_for_file(&s.data_dir().join("workspaces").join(&r).join("ns"), 20).await;
    let count = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path().join("ns/pid")).is_ok_and(|l| l.to_string_lossy() == ns))
            .count()
    };
    let mut most = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        most = most.max(count());
        let t = std::time::Instant::now();
        healthy(&s).await;
        assert!(t.elapsed() < Duration::from_secs(2), "/health took {:?} during the fork bomb", t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = wait_final(&s, &r, 30).await;
    let detail = &done["status_detail"];
    // The bomb's processes exit as soon as their forks are refused, so the
    // tree can reach the limit and collapse between two samples (seen when
    // another run filled its disk at the same time): the kernel's count of
    // refused forks is the evidence that it got going, the samples a
    // second witness.
    let refused = detail["reason"].as_str().is_some_and(|r| r.contains("forks refused"));
    assert!(most > 8 || refused, "the bomb did not get going ({most} processes, no fork refused): {done}");
    assert!(most <= 64, "the run had {most} processes, over its limit of 64");
    assert_eq!(done["status"], "timed_out", "{detail}");
    assert!(detail["reason"].as_str().unwrap().contains("limit of 64 processes"), "the limit is named: {detail}");
    for _ in 0..50 {
        if count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(), 0, "processes of the bomb survived its run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_killed_at_the_limit() {
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_SANDBOX_MEMORY_MB", "64")]).await;
    let bomb = "a = []\nwhile True:\n    a.append(b'x' * (4 << 20))\n";
    let done =
        run(&s, "", json!({"preset": {"name": "script", "config": {"interpreter": "python3", "script": bomb}}})).await;
    assert_eq!(done["status"], "failed", "{done}");
    let reason = done["status_detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("memory limit of 64 MiB"), "the status says which limit: {done}");
    assert!(done["error"].as_str().unwrap().contains("memory limit of 64 MiB"), "{done}");
    healthy(&s).await;
    // A run under the limit is unaffected.
    let fine = "a = b'x' * (16 << 20)\nprint(len(a))\n";
    let done =
        run(&s, "", json!({"preset": {"name": "script", "config": {"interpreter": "python3", "script": fine}}})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filler_is_stopped_before_the_host_disk_is_touched() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[("AUTOMATION_SANDBOX_WORKSPACE_MB", "16"), ("AUTOMATION_SANDBOX_TMP_MB", "8")],
    )
    .await;
    // Many files, each under the file size limit: 512 MiB if nothing stops it.
    let script =
        "i=0; while [ $i -lt 64 ]; do head -c 8388608 /dev/zero > f$i || exit 9; i=$((i+1)); done; echo filled";
    let a = s.post("/v1/automations", script_automation("filler", script, keep())).await.expect(201);
    let r = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    let done = wait_final(&s, &r, 60).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(!stdout(&done).contains("filled"), "{done}");
    assert!(
        done["status_detail"]["reason"].as_str().unwrap().contains("workspace grew past its limit of 16 MiB"),
        "{done}"
    );
    let used: u64 = std::fs::read_dir(s.data_dir().join("workspaces").join(&r))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(used < 256 << 20, "the workspace reached {} MiB before the run was stopped", used >> 20);
    // One big file stops at the file size limit (the workspace's).
    let done = run(&s, "exec head -c 104857600 /dev/zero > big", json!({})).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["status_detail"]["reason"].as_str().unwrap().contains("larger than the limit"), "{done}");
    // The private /tmp is bounded too.
    let done = run(&s, "head -c 20971520 /dev/zero > /tmp/fill", json!({})).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(all_output(&done).contains("No space left on device"), "{done}");
    healthy(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_bits_are_stripped_and_powerless() {
    let s = TestServer::start(Backend::Sqlite).await;
    let archive = tgz(&[("suid.sh", "#!/bin/sh\nid -u\n", 0o4755), ("sgid.sh", "#!/bin/sh\nid -g\n", 0o2755)]);
    let upload = s.upload(archive).await.expect(201).id();
    let script = "stat -c %a suid.sh sgid.sh; ./suid.sh; ls -n /usr/bin/su | cut -d' ' -f3; \
                  su -c id root < /dev/null 2>&1 | tail -1; echo su=$?; \
                  unshare -U true 2>&1; echo unshare=$?; mount -t tmpfs none /tmp 2>&1; echo mount=$?; \
                  python3 -c 'import ctypes; print(\"ptrace\", ctypes.CDLL(None).ptrace(0, 1, 0, 0))'";
    let a = s
        .post(
            "/v1/automations",
            json!({
                "name": "suid",
                "trigger": {"type": "manual"},
                "bundle": {"upload_id": upload},
                "preset": {"name": "script", "config": {"interpreter": "sh", "script": script}},
                "executor": {"plugin": "local-sandbox", "config": {"keep_workspace": true}},
            }),
        )
        .await
        .expect(201);
    let r = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    let done = wait_final(&s, &r, 30).await;
    let out = all_output(&done);
    use std::os::unix::fs::PermissionsExt;
    for f in ["suid.sh", "sgid.sh"] {
        let mode = std::fs::metadata(s.data_dir().join("workspaces").join(&r).join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o7000, 0, "{f} kept special bits: {mode:o}");
    }
    assert!(out.starts_with("755\n755\n1000\n"), "{out}");
    assert!(out.contains("65534"), "root's files belong to nobody inside: {out}");
    assert!(!out.contains("uid=0"), "su gained root: {out}");
    assert!(out.contains("unshare: unshare failed: Operation not permitted"), "{out}");
    assert!(!out.contains("mount=0"), "{out}");
    assert!(out.contains("ptrace -1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_payload_arrives_as_a_file() {
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_MAX_BODY_BYTES", "4194304")]).await;
    let script = "wc -c < \"$AUTOMATION_EVENT_PAYLOAD_FILE\"; [ -z \"${AUTOMATION_EVENT_PAYLOAD+x}\" ] && echo no-env; \
                  head -c 9 \"$AUTOMATION_EVENT_PAYLOAD_FILE\"; echo";
    let a = s.post("/v1/automations", script_automation("big", script, json!({}))).await.expect(201);
    let blob = "x".repeat(1 << 20);
    let r = s
        .post(&format!("/v1/automations/{}/dispatch", a.id()), json!({"payload": {"blob": blob}}))
        .await
        .expect(201)
        .id();
    let done = wait_final(&s, &r, 30).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let out = stdout(&done);
    let size: usize = out.lines().next().unwrap().trim().parse().unwrap();
    assert!(size > 1 << 20, "{out}");
    assert!(out.contains("no-env\n{\"blob\":\""), "{out}");
    // A small payload is in both.
    let script = "cat \"$AUTOMATION_EVENT_PAYLOAD_FILE\"; echo; echo \"$AUTOMATION_EVENT_PAYLOAD\"";
    let a = s.post("/v1/automations", script_automation("small", script, json!({}))).await.expect(201);
    let r =
        s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({"payload": {"n": 1}})).await.expect(201).id();
    let done = wait_final(&s, &r, 30).await;
    assert_eq!(stdout(&done), "{\"n\":1}\n{\"n\":1}\n", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_isolation_still_blocks_the_escapes() {
    let mut s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_SANDBOX_ISOLATION", "restricted")]).await;
    let iso = s.get("/v1/plugins/local-sandbox").await.expect(200).body["isolation"].clone();
    assert_eq!(iso["level"], "restricted", "{iso}");
    assert_eq!(iso["layers"]["namespaces"], false, "{iso}");
    let host = s.pid();
    let data = s.data_dir().display().to_string();
    let api = s.port();
    let planted = format!("planted-{}", token());
    let script = format!(
        "id -u; tr '\\0' '\\n' < /proc/{host}/environ; head -c 16 {data}/automation.db; head -c 16 ../../automation.db; \
         echo x > {data}/{planted}; echo x > /tmp/{planted}; \
         curl -s --max-time 3 http://127.0.0.1:{api}/health; echo api=$?; echo end"
    );
    let done = run(&s, &script, json!({})).await;
    let out = all_output(&done);
    assert!(out.contains("end"), "{out}");
    if nix_is_root() {
        assert!(out.starts_with("65534\n"), "a root host's runs are never root: {out}");
    }
    assert!(!out.contains(KEY), "{out}");
    assert!(!out.contains("SQLite format"), "{out}");
    assert!(!out.contains("\"ok\"") && !out.contains("api=0"), "{out}");
    assert!(!s.data_dir().join(&planted).exists() && !Path::new("/tmp").join(&planted).exists());
    // Daemons still end with their run, and with their host.
    let t = token();
    let done = run(&s, &format!("setsid sleep 1000.{t} > /dev/null 2>&1 < /dev/null & echo forked"), json!({})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(wait_gone(&format!("1000.{t}"), 5).await, Vec::<i32>::new(), "a daemon outlived its run");
    // Kill the host and its launchers: the daemon is orphaned, and the next
    // start of the host ends it.
    let u = token();
    let a = s
        .post(
            "/v1/automations",
            script_automation(
                "orphan",
                &format!("setsid sleep 1000.{u}1 > /dev/null 2>&1 < /dev/null & sleep 1000.{u}2"),
                json!({}),
            ),
        )
        .await
        .expect(201);
    let r = s.post(&format!("/v1/automations/{}/dispatch", a.id()), json!({})).await.expect(201).id();
    wait_for_pids(&format!("1000.{u}1"), 20).await;
    wait_for_run(&s, &r, 20, |r| r["status"] == "running" && r["executor_handle"].is_string()).await;
    // The launcher's command line names its run.
    for launcher in pids_with(&r) {
        nix_kill(launcher);
    }
    s.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pids_with(&format!("1000.{u}1")).is_empty(), "the test needs an orphan to be left behind");
    s.spawn_again();
    assert_eq!(wait_gone(&format!("1000.{u}"), 10).await, Vec::<i32>::new(), "the restarted host left the orphan");
    assert!(s.log_text().contains("left by a previous"), "the sweep is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfined_runs_say_so() {
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_SANDBOX_ISOLATION", "none")]).await;
    let iso = s.get("/v1/plugins/local-sandbox").await.expect(200).body["isolation"].clone();
    assert_eq!(iso["level"], "none", "{iso}");
    let done = run(&s, "echo hi", json!({})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["status_detail"]["reason"].as_str().unwrap().contains("ran unconfined"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_local_runs_finish_and_cancels_the_rest() {
    let mut s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_SHUTDOWN_GRACE_SECONDS", "4")]).await;
    let t = token();
    let quick =
        s.post("/v1/automations", script_automation("quick", "sleep 1.5; echo done", json!({}))).await.expect(201);
    let slow =
        s.post("/v1/automations", script_automation("slow", &format!("sleep 1000.{t}"), json!({}))).await.expect(201);
    let q = s.post(&format!("/v1/automations/{}/dispatch", quick.id()), json!({})).await.expect(201).id();
    let w = s.post(&format!("/v1/automations/{}/dispatch", slow.id()), json!({})).await.expect(201).id();
    wait_for_pids(&format!("1000.{t}"), 20).await;
    wait_for_run(&s, &q, 20, |r| r["status"] == "running" && r["executor_handle"].is_string()).await;
    wait_for_run(&s, &w, 20, |r| r["status"] == "running" && r["executor_handle"].is_string()).await;
    let started = std::time::Instant::now();
    let status = s.stop();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(12), "shutdown took {:?}", started.elapsed());
    assert_eq!(wait_gone(&format!("1000.{t}"), 5).await, Vec::<i32>::new(), "a run outlived its host's shutdown");
    s.spawn_again();
    let q = s.get(&format!("/v1/runs/{q}")).await.expect(200).body;
    assert_eq!(q["status"], "succeeded", "a run that finishes within the grace finishes: {q}");
    assert_eq!(stdout(&q), "done\n");
    let w = s.get(&format!("/v1/runs/{w}")).await.expect(200).body;
    assert_eq!(w["status"], "cancelled", "{w}");
    assert_eq!(w["status_detail"]["by"], "shutdown", "{w}");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|v| v.split_whitespace().next() == Some("0"))
}

fn nix_kill(pid: i32) {
    let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_yield_the_cpu_to_the_host_and_cannot_take_it_back() {
    // Runs are background work: their processes run at a lower priority
    // (niceness 10 by default), so a sender waiting for its 202 comes first
    // when the CPU is short, and a run cannot raise its priority again.
    let script = "read -r s < /proc/self/stat; set -- $s; echo \"nice=${19}\"; \
                  if renice -n 0 -p $$ >/dev/null 2>&1; then echo raised; else echo refused; fi; \
                  read -r s < /proc/self/stat; set -- $s; echo \"after=${19}\"";
    let s = TestServer::start(Backend::Sqlite).await;
    let done = run(&s, script, json!({})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let out = stdout(&done);
    assert!(out.contains("nice=10"), "runs get niceness 10 by default: {out}");
    assert!(out.contains("refused") && out.contains("after=10"), "a run raised its own priority: {out}");
    drop(s);
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_SANDBOX_NICE", "17")]).await;
    let done = run(&s, script, json!({})).await;
    assert!(stdout(&done).contains("nice=17"), "the operator sets the niceness: {}", stdout(&done));
    healthy(&s).await;
}
