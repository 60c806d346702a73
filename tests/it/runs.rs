use crate::db_tests;
use crate::support::{Backend, KEY, TestServer, manual_automation, simple_upload};
use reqwest::Method;
use serde_json::json;

db_tests!(dispatch_creates_pending_runs_with_payload, cancel_is_final_and_exactly_one_racer_wins);

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
