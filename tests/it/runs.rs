use crate::db_tests;
use crate::support::{Backend, KEY, TestServer, manual_automation, simple_upload};
use reqwest::Method;
use serde_json::json;

db_tests!(
    dispatch_creates_pending_runs_with_payload,
    cancel_is_final_and_exactly_one_racer_wins,
    run_lists_count_by_status_and_filter_by_time,
    reruns_repeat_the_trigger_and_final_runs_can_be_deleted,
    an_idempotency_key_gives_one_run_however_often_it_is_sent,
);

async fn dispatch_creates_pending_runs_with_payload(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let upload = simple_upload(&s).await;
    let a = s.post("/v1/automations", manual_automation("m", &upload)).await.expect(201);
    let disp = format!("/v1/automations/{}/dispatch", a.id());
    let r1 = s.post(&disp, json!({"payload": {"ticket": 42}})).await.expect(201);
    assert_eq!(r1.body["status"], "pending");
    assert_eq!(r1.body["automation_id"], a.body["id"]);
    assert_eq!(r1.body["trigger"]["kind"], "manual");
    assert_eq!(r1.body["trigger"]["payload"]["ticket"], 42);
    assert_eq!(r1.body["status_detail"]["by"], "AUTOMATION_API_KEY", "the run names the key that dispatched it");
    // No body at all is fine too.
    let auth = format!("Bearer {KEY}");
    let r2 = s.raw(Method::POST, &disp, &[("authorization", &auth)], vec![]).await.expect(201);
    s.post(&disp, json!({"nope": 1})).await.expect_error(422, "invalid_body", "nope");

    let got = s.get(&format!("/v1/runs/{}", r1.id())).await.expect(200);
    assert_eq!(got.body, r1.body);
    let runs = s.get(&format!("/v1/automations/{}/runs", a.id())).await.expect(200);
    assert_eq!(runs.body["total"], 2);
    assert_eq!(runs.body["items"][0]["id"], r2.body["id"], "newest first");
    let pending = s.get("/v1/runs?status=pending&limit=1").await.expect(200);
    assert_eq!(pending.body["total"], 2);
    assert_eq!(pending.body["items"].as_array().unwrap().len(), 1);
    assert!(pending.body["next_cursor"].is_string());
    s.get("/v1/runs?status=bogus").await.expect_error(400, "invalid_query", "status must be one of");
    let auto = s.get(&format!("/v1/automations/{}", a.id())).await.expect(200);
    assert!(auto.body["last_triggered_at"].is_string());
    s.get("/v1/runs/00000000-0000-7000-8000-000000000000").await.expect_error(404, "not_found", "run");
    s.get("/v1/automations/00000000-0000-7000-8000-000000000000/runs").await.expect_error(
        404,
        "not_found",
        "automation",
    );
}

async fn cancel_is_final_and_exactly_one_racer_wins(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let upload = simple_upload(&s).await;
    let a = s.post("/v1/automations", manual_automation("m", &upload)).await.expect(201);
    let disp = format!("/v1/automations/{}/dispatch", a.id());

    let run = s.post(&disp, json!({})).await.expect(201);
    let cancelled = s.post(&format!("/v1/runs/{}/cancel", run.id()), json!({})).await.expect(200);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["status_detail"]["from"], "pending");
    assert!(cancelled.body["finished_at"].is_string());
    s.post(&format!("/v1/runs/{}/cancel", run.id()), json!({})).await.expect_error(
        409,
        "run_final",
        "already cancelled",
    );
    s.post("/v1/runs/00000000-0000-7000-8000-000000000000/cancel", json!({})).await.expect_error(
        404,
        "not_found",
        "run",
    );

    // Races: eight cancels of one run at once; exactly one wins each time.
    for _ in 0..5 {
        let run = s.post(&disp, json!({})).await.expect(201).id();
        let path = format!("/v1/runs/{run}/cancel");
        let results = futures::future::join_all((0..8).map(|_| s.post(&path, json!({})))).await;
        let wins = results.iter().filter(|r| r.status == 200).count();
        let conflicts = results.iter().filter(|r| r.status == 409).count();
        assert_eq!((wins, conflicts), (1, 7), "{:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
        let got = s.get(&format!("/v1/runs/{run}")).await.expect(200);
        assert_eq!(got.body["status"], "cancelled");
    }
}

/// Run lists answer `status_counts` (whatever the page's filters) and
/// filter by status and creation time.
async fn run_lists_count_by_status_and_filter_by_time(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let upload = simple_upload(&s).await;
    let a = s.post("/v1/automations", manual_automation("counted", &upload)).await.expect(201).id();
    let other = s.post("/v1/automations", manual_automation("other", &upload)).await.expect(201).id();
    let disp = format!("/v1/automations/{a}/dispatch");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(s.post(&disp, json!({})).await.expect(201).id());
    }
    let middle =
        s.get(&format!("/v1/runs/{}", ids[1])).await.expect(200).body["created_at"].as_str().unwrap().to_owned();
    s.post(&format!("/v1/runs/{}/cancel", ids[0]), json!({})).await.expect(200);
    s.post(&format!("/v1/automations/{other}/dispatch"), json!({})).await.expect(201);

    let list = s.get(&format!("/v1/automations/{a}/runs?status=pending")).await.expect(200).body;
    assert_eq!(list["total"], 2);
    assert_eq!(list["status_counts"], json!({"cancelled": 1, "pending": 2}), "the automation's, all statuses");
    let all = s.get("/v1/runs?limit=1").await.expect(200).body;
    assert_eq!(all["status_counts"], json!({"cancelled": 1, "pending": 3}));
    assert_eq!(all["items"].as_array().unwrap().len(), 1);

    let encoded = middle.replace('+', "%2B");
    let since = s.get(&format!("/v1/automations/{a}/runs?created_after={encoded}")).await.expect(200).body;
    let got: Vec<&str> = since["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()], "newest first, from the middle one on");
    let before = s.get(&format!("/v1/automations/{a}/runs?created_before={encoded}")).await.expect(200).body;
    assert_eq!(before["total"], 1);
    assert_eq!(before["items"][0]["id"], ids[0].as_str());
    s.get("/v1/runs?created_after=yesterday").await.expect_error(400, "invalid_query", "RFC 3339");
}

/// `POST /v1/runs/{id}/rerun` makes a new run with the same trigger and
/// payload, naming the original; `DELETE /v1/runs/{id}` removes final runs
/// only.
async fn reruns_repeat_the_trigger_and_final_runs_can_be_deleted(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let upload = simple_upload(&s).await;
    let a = s.post("/v1/automations", manual_automation("again", &upload)).await.expect(201).id();
    let first = s.post(&format!("/v1/automations/{a}/dispatch"), json!({"payload": {"n": 7}})).await.expect(201);
    let again = s.post(&format!("/v1/runs/{}/rerun", first.id()), json!({})).await.expect(201).body;
    assert_eq!(again["rerun_of"], first.body["id"]);
    assert_eq!(again["trigger"], first.body["trigger"], "same trigger, same payload");
    assert_eq!(again["status"], "pending");
    assert_ne!(again["id"], first.body["id"]);
    assert!(again["status_detail"]["reason"].as_str().unwrap().contains("re-run of"));
    assert!(first.body.get("rerun_of").is_none());
    s.post("/v1/runs/00000000-0000-7000-8000-000000000000/rerun", json!({})).await.expect_error(
        404,
        "not_found",
        "run",
    );

    let path = format!("/v1/runs/{}", first.id());
    s.delete(&path).await.expect_error(409, "run_not_final", "cancel it first");
    s.post(&format!("{path}/cancel"), json!({})).await.expect(200);
    s.delete(&path).await.expect(204);
    s.get(&path).await.expect_error(404, "not_found", "run");
    s.delete(&path).await.expect_error(404, "not_found", "run");
    // The re-run lives on without its original.
    let again_path = format!("/v1/runs/{}", again["id"].as_str().unwrap());
    assert_eq!(s.get(&again_path).await.expect(200).body["rerun_of"], first.body["id"]);

    // A deleted automation's run cannot be re-run.
    s.delete(&format!("/v1/automations/{a}")).await.expect(204);
    s.post(&format!("{again_path}/rerun"), json!({})).await.expect_error(409, "automation_deleted", "deleted");
}

/// A dispatch retried with the same `Idempotency-Key` (one after another,
/// and many at once) answers the first run every time and creates no other.
async fn an_idempotency_key_gives_one_run_however_often_it_is_sent(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let upload = simple_upload(&s).await;
    let a = s.post("/v1/automations", manual_automation("once", &upload)).await.expect(201).id();
    let disp = format!("/v1/automations/{a}/dispatch");
    let auth = format!("Bearer {KEY}");
    let send = |key: &'static str| {
        let headers =
            [("authorization", auth.as_str()), ("idempotency-key", key), ("content-type", "application/json")];
        let (s, disp) = (&s, disp.clone());
        async move { s.raw(Method::POST, &disp, &headers, br#"{"payload": {"order": 1}}"#.to_vec()).await }
    };
    let first = send("order-1").await.expect(201);
    let again = send("order-1").await.expect(200);
    assert_eq!(again.body["id"], first.body["id"]);
    let racers = futures::future::join_all((0..8).map(|_| send("order-2"))).await;
    let created: Vec<_> = racers.iter().filter(|r| r.status == 201).collect();
    assert_eq!(created.len(), 1, "exactly one of eight concurrent requests creates the run");
    assert!(racers.iter().all(|r| r.status == 201 || r.status == 200), "{racers:?}");
    assert!(racers.iter().all(|r| r.body["id"] == created[0].body["id"]));
    let runs = s.get(&format!("/v1/automations/{a}/runs")).await.expect(200).body;
    assert_eq!(runs["total"], 2, "one run per key");
    // Without a key every dispatch is a new run; a bad key is refused.
    s.post(&disp, json!({})).await.expect(201);
    send("").await.expect_error(400, "invalid_idempotency_key", "1 to 255");
}
