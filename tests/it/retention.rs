//! Retention: the sweep removes final runs and cron slots older than the
//! retention except each automation's newest, and kept workspaces past
//! theirs; pending runs and the newest records always stay. Age is made by
//! moving rows' times back in the database (the sweep reads them as any
//! old row), not by a test hook in the host.

use std::time::Duration;

use crate::db_tests;
use crate::support::{Backend, TestServer, manual_automation, script_automation, simple_upload, wait_final};
use serde_json::json;

db_tests!(old_runs_and_slots_go_and_each_automations_newest_stay);

const SWEEP: [(&str, &str); 3] = [
    ("AUTOMATION_RETENTION_SWEEP_SECONDS", "1"),
    ("AUTOMATION_RUN_RETENTION_KEEP", "2"),
    ("AUTOMATION_RUN_RETENTION_DAYS", "30"),
];

/// Moves `column` of every row of `table` six years back.
async fn age(s: &TestServer, backend: Backend, table: &str, column: &str) {
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&s.database_url()).await.unwrap();
            sqlx::query(&format!("update {table} set {column} = '2020' || substr({column}, 5)"))
                .execute(&pool)
                .await
                .unwrap();
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&s.database_url()).await.unwrap();
            sqlx::query(&format!("update {table} set {column} = {column} - interval '6 years'"))
                .execute(&pool)
                .await
                .unwrap();
        }
    }
}

/// Waits until `/metrics` counts `n` removed records of `kind`.
async fn wait_removed(s: &TestServer, kind: &str, n: u64) {
    let line = format!("automation_retention_removed_total{{kind=\"{kind}\"}} {n}\n");
    for _ in 0..150 {
        let text = s.get("/metrics").await.text;
        if text.contains(&line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {line:?} in {}", s.get("/metrics").await.text);
}

async fn old_runs_and_slots_go_and_each_automations_newest_stay(backend: Backend) {
    let mut env = SWEEP.to_vec();
    env.push(("AUTOMATION_NO_DISPATCH", "true"));
    let s = TestServer::start_with(backend, &env).await;
    let upload = simple_upload(&s).await;
    let a = s.post("/v1/automations", manual_automation("busy", &upload)).await.expect(201).id();
    let b = s.post("/v1/automations", manual_automation("quiet", &upload)).await.expect(201).id();
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(s.post(&format!("/v1/automations/{a}/dispatch"), json!({})).await.expect(201).id());
    }
    // Four final (cancelled), the newest still pending.
    for r in &runs[..4] {
        s.post(&format!("/v1/runs/{r}/cancel"), json!({})).await.expect(200);
    }
    let mut quiet = Vec::new();
    for _ in 0..2 {
        let r = s.post(&format!("/v1/automations/{b}/dispatch"), json!({})).await.expect(201).id();
        s.post(&format!("/v1/runs/{r}/cancel"), json!({})).await.expect(200);
        quiet.push(r);
    }
    age(&s, backend, "runs", "created_at").await;
    wait_removed(&s, "runs", 3).await;
    for r in &runs[..3] {
        s.get(&format!("/v1/runs/{r}")).await.expect(404);
    }
    // The newest two of `busy` (one of them pending), and both of `quiet`
    // (it has no more than it keeps).
    for r in runs[3..].iter().chain(&quiet) {
        s.get(&format!("/v1/runs/{r}")).await.expect(200);
    }
    assert_eq!(s.get(&format!("/v1/automations/{a}/runs")).await.expect(200).body["total"], 2);

    // Cron slots: every second, then stopped; all but the newest two go.
    let cron = json!({"name": "tick", "trigger": {"type": "cron", "schedule": "* * * * * *"},
        "bundle": {"upload_id": upload}, "entrypoint": "sh run.sh"});
    let c = s.post("/v1/automations", cron).await.expect(201).id();
    let slots = format!("/v1/automations/{c}/slots");
    for _ in 0..100 {
        if s.get(&slots).await.expect(200).body.as_array().unwrap().len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.patch(&format!("/v1/automations/{c}"), json!({"enabled": false})).await.expect(200);
    let before = s.get(&slots).await.expect(200).body.as_array().unwrap().len() as u64;
    assert!(before >= 4, "{before} slots");
    age(&s, backend, "cron_slots", "recorded_at").await;
    wait_removed(&s, "slots", before - 2).await;
    let left = s.get(&slots).await.expect(200).body;
    assert_eq!(left.as_array().unwrap().len(), 2, "{left}");
}

/// A workspace kept for debugging goes once it is older than
/// `AUTOMATION_WORKSPACE_RETENTION_HOURS`; a newer one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_workspaces_go_after_their_retention() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[("AUTOMATION_RETENTION_SWEEP_SECONDS", "1"), ("AUTOMATION_WORKSPACE_RETENTION_HOURS", "1")],
    )
    .await;
    let keep = json!({"executor": {"plugin": "local-sandbox", "config": {"keep_workspace": true}}});
    let a = s.post("/v1/automations", script_automation("kept", "echo hi > out.txt", keep)).await.expect(201).id();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let run = s.post(&format!("/v1/automations/{a}/dispatch"), json!({})).await.expect(201).id();
        assert_eq!(wait_final(&s, &run, 30).await["status"], "succeeded");
        let dir = s.data_dir().join("workspaces").join(&run);
        assert!(dir.exists(), "kept: {}", dir.display());
        dirs.push(dir);
    }
    let touched = std::process::Command::new("touch").arg("-d").arg("3 hours ago").arg(&dirs[0]).status().unwrap();
    assert!(touched.success());
    wait_removed(&s, "workspaces", 1).await;
    assert!(!dirs[0].exists(), "the old workspace went");
    assert!(dirs[1].exists(), "the recent one stays");
}
