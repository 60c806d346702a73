use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::db_tests;
use crate::support::{Backend, TestServer, script_automation, skip_postgres, wait_final};
use serde_json::{Value, json};

db_tests!(
    every_second_cron_runs_and_disabling_stops_it,
    schedule_lists_next_fire_times,
    misfire_policies_after_downtime
);

fn cron(name: &str, schedule: &str, script: &str, extra: Value) -> Value {
    let mut a = script_automation(name, script, extra);
    if a.get("trigger").is_none_or(|t| t["type"] == "manual") {
        a["trigger"] = json!({"type": "cron", "schedule": schedule, "timezone": "UTC"});
    }
    a
}

async fn every_second_cron_runs_and_disabling_stops_it(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = s
        .post("/v1/automations", cron("ticker", "* * * * * *", "echo tick at $(date +%s)", json!({})))
        .await
        .expect(201);
    assert!(a.body["next_fire_at"].is_string(), "{}", a.text);
    let path = format!("/v1/automations/{}", a.id());
    // Wait for two succeeded runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let runs = loop {
        let runs = s.get(&format!("{path}/runs?status=succeeded")).await.expect(200).body;
        if runs["total"].as_i64().unwrap() >= 2 {
            break runs;
        }
        assert!(std::time::Instant::now() < deadline, "no two succeeded cron runs in 30 s: {runs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let run = &runs["items"][0];
    assert_eq!(run["trigger"]["kind"], "cron");
    assert!(run["trigger"]["scheduled_for"].is_string());
    assert!(run["output"]["stdout"].as_str().unwrap().starts_with("tick at "), "{run}");
    let slots = s.get(&format!("{path}/slots")).await.expect(200).body;
    assert!(slots.as_array().unwrap().iter().all(|s| s["outcome"] == "fired" && s["run_id"].is_string()), "{slots}");
    // Disable: no new slots.
    let off = s.patch(&path, json!({"enabled": false})).await.expect(200);
    assert!(off.body["next_fire_at"].is_null());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = s.get(&format!("{path}/slots?limit=1000")).await.expect(200).body.as_array().unwrap().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = s.get(&format!("{path}/slots?limit=1000")).await.expect(200).body.as_array().unwrap().len();
    assert_eq!(before, after, "a disabled automation kept firing");
    // Every slot made exactly one run, and each run has a distinct slot.
    let all = s.get(&format!("{path}/runs?limit=100")).await.expect(200).body;
    let slots: HashSet<String> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trigger"]["scheduled_for"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(slots.len() as i64, all["total"].as_i64().unwrap());
    assert_eq!(slots.len(), after);
}

async fn schedule_lists_next_fire_times(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let a = s
        .post(
            "/v1/automations",
            json!({
                "name": "paris",
                "trigger": {"type": "cron", "schedule": "30 2 * * *", "timezone": "Europe/Paris"},
                "preset": {"name": "script", "config": {"script": "true"}},
            }),
        )
        .await
        .expect(201);
    let sched = s
        .get(&format!("/v1/automations/{}/schedule?count=3&after=2026-03-28T00:00:00Z", a.id()))
        .await
        .expect(200)
        .body;
    let utc: Vec<&str> = sched["items"].as_array().unwrap().iter().map(|i| i["utc"].as_str().unwrap()).collect();
    // 2026-03-29 02:30 does not exist in Paris: it fires at 03:30 CEST (01:30Z).
    assert_eq!(utc, ["2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]);
    assert_eq!(sched["items"][0]["local"], "2026-03-28T02:30:00+01:00");
    assert_eq!(sched["items"][2]["local"], "2026-03-30T02:30:00+02:00");
    let path = format!("/v1/automations/{}/schedule", a.id());
    s.get(&format!("{path}?count=0")).await.expect_error(400, "invalid_query", "count");
    s.get(&format!("{path}?after=yesterday")).await.expect_error(400, "invalid_query", "RFC 3339");
    let m = s.post("/v1/automations", script_automation("m", "true", json!({}))).await.expect(201);
    s.get(&format!("/v1/automations/{}/schedule", m.id())).await.expect_error(422, "not_cron", "manual");
}

/// Down across two slots of an every-10-seconds schedule, then back 4 s
/// after the last one: each policy does its own thing with the two misfires.
async fn misfire_policies_after_downtime(backend: Backend) {
    let mut s = TestServer::start_with(
        backend,
        &[("AUTOMATION_NO_DISPATCH", "true"), ("AUTOMATION_MISFIRE_GRACE_SECONDS", "1")],
    )
    .await;
    let mut ids = HashMap::new();
    for policy in ["skip", "run_once", "run_all"] {
        let body = json!({
            "name": policy,
            "trigger": {"type": "cron", "schedule": "*/10 * * * * *", "timezone": "UTC", "misfire": policy},
            "preset": {"name": "script", "config": {"script": "true"}},
        });
        ids.insert(policy, s.post("/v1/automations", body).await.expect(201).id());
    }
    // Stop at second 2 of a decade, come back at second 4 two decades later.
    wait_until_second_mod_10(2).await;
    let stopped = chrono::Utc::now();
    s.stop();
    tokio::time::sleep(Duration::from_secs(21)).await;
    wait_until_second_mod_10(4).await;
    s.spawn_again();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut outcomes = HashMap::new();
    for (policy, id) in &ids {
        let slots = s.get(&format!("/v1/automations/{id}/slots")).await.expect(200).body;
        let after_stop: Vec<(String, String)> = slots
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| chrono::DateTime::parse_from_rfc3339(s["scheduled_for"].as_str().unwrap()).unwrap() > stopped)
            .map(|s| (s["scheduled_for"].as_str().unwrap().to_owned(), s["outcome"].as_str().unwrap().to_owned()))
            .collect();
        outcomes.insert(*policy, after_stop);
    }
    let kinds = |p: &str| -> Vec<&str> {
        let mut v: Vec<&str> = outcomes[p].iter().map(|(_, o)| o.as_str()).collect();
        v.sort();
        v
    };
    assert_eq!(kinds("skip"), ["missed", "missed"], "{outcomes:?}");
    assert_eq!(kinds("run_once"), ["fired", "missed"], "{outcomes:?}");
    assert_eq!(kinds("run_all"), ["fired", "fired"], "{outcomes:?}");
    // run_once fires the latest missed slot.
    let latest = outcomes["run_once"].iter().max().unwrap();
    assert_eq!(latest.1, "fired");
    let runs = s.get(&format!("/v1/automations/{}/runs", ids["run_all"])).await.expect(200).body;
    assert!(runs["total"].as_i64().unwrap() >= 2);
}

async fn wait_until_second_mod_10(second: u32) {
    use chrono::Timelike;
    loop {
        let now = chrono::Utc::now();
        if now.second() % 10 == second {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two hosts on one Postgres: every slot of 200 automations fires exactly
/// once and no run is claimed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_fire_each_slot_once_postgres() {
    if skip_postgres() {
        eprintln!("AUTOMATION_TEST_SKIP_POSTGRES=1: not run");
        return;
    }
    // Two runs at a time per host, each taking 0.2 s: one host alone would
    // need 40 s for the ~400 runs, so the other host's claim loop (a 1 s
    // poll at worst) certainly takes part, and the two really race.
    let env = [("AUTOMATION_MAX_CONCURRENT_RUNS", "2")];
    let a = TestServer::start_with(Backend::Postgres, &env).await;
    let b = a.start_peer(&env).await;
    let mut ids = Vec::new();
    for i in 0..200 {
        let body = cron(&format!("a{i}"), "*/5 * * * * *", "sleep 0.2", json!({}));
        let server = if i % 2 == 0 { &a } else { &b };
        ids.push(server.post("/v1/automations", body).await.expect(201).id());
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    for id in &ids {
        a.patch(&format!("/v1/automations/{id}"), json!({"enabled": false})).await.expect(200);
    }
    let mut total_runs = 0;
    for id in &ids {
        let runs = a.get(&format!("/v1/automations/{id}/runs?limit=100")).await.expect(200).body;
        let items = runs["items"].as_array().unwrap();
        let slots: HashSet<&str> = items.iter().map(|r| r["trigger"]["scheduled_for"].as_str().unwrap()).collect();
        assert_eq!(slots.len(), items.len(), "a slot fired twice for {id}: {runs}");
        let recorded = a.get(&format!("/v1/automations/{id}/slots")).await.expect(200).body;
        let fired = recorded.as_array().unwrap().iter().filter(|s| s["outcome"] == "fired").count();
        assert_eq!(fired, items.len(), "slots and runs disagree for {id}");
        assert!(items.len() >= 2, "{id} fired {} times in 11 s", items.len());
        total_runs += items.len();
        for r in items {
            let run = wait_final(&a, r["id"].as_str().unwrap(), 120).await;
            assert_eq!(run["status"], "succeeded", "{run}");
            assert_eq!(run["attempt"], 1, "a run was claimed more than once: {run}");
        }
    }
    // Both hosts carried out runs (the finishing host signs the detail).
    let mut hosts = HashSet::new();
    for id in &ids {
        let runs = a.get(&format!("/v1/automations/{id}/runs?limit=100")).await.expect(200).body;
        for r in runs["items"].as_array().unwrap() {
            hosts.insert(r["status_detail"]["by"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(hosts.len(), 2, "expected runs finished by both hosts: {hosts:?}");
    eprintln!("{total_runs} runs over 200 automations, two hosts");
}
