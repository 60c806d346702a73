use crate::db_tests;
use crate::support::{Backend, KEY, TestServer, manual_automation, simple_upload};
use reqwest::Method;
use serde_json::json;

db_tests!(
    create_read_list_every_trigger_type,
    bad_input_gets_a_clear_4xx_and_writes_nothing,
    pagination_walks_every_item_once,
    patch_changes_only_what_it_names,
    soft_delete_hides_and_cancels_pending_runs,
    descriptions_tags_and_search_find_automations,
    trying_a_trigger_shows_what_would_happen,
    plugin_configs_are_checked_against_their_schema_when_saved,
);

/// A configuration the plugin's JSON Schema refuses is a 422 naming the
/// field when the automation is saved (before, an unknown executor field
/// was accepted and every run failed on it); nothing is stored.
async fn plugin_configs_are_checked_against_their_schema_when_saved(backend: Backend) {
    let s = TestServer::start(backend).await;
    let with = |preset: serde_json::Value, executor: serde_json::Value| {
        json!({
            "name": "checked",
            "trigger": {"type": "manual"},
            "preset": {"name": "script", "config": preset},
            "executor": {"plugin": "local-sandbox", "config": executor},
        })
    };
    let ok = json!({"script": "echo hi"});
    for (body, needle) in [
        (with(ok.clone(), json!({"keep_workspac": true})), "executor.config: "),
        (with(ok.clone(), json!({"network": "wifi"})), "executor.config.network: \"wifi\" is not one of"),
        (with(ok.clone(), json!({"env": {"A": 1}})), "executor.config.env.A: 1 is not of type \"string\""),
        (with(json!({"script": "echo", "interpreter": "perl"}), json!({})), "preset.config.interpreter: \"perl\""),
        (with(json!({"script": ""}), json!({})), "preset.config.script: "),
    ] {
        let code = if needle.starts_with("preset") { "invalid_preset_config" } else { "invalid_executor_config" };
        s.post("/v1/automations", body).await.expect_error(422, code, needle);
    }
    assert_eq!(s.get("/v1/automations").await.expect(200).body["total"], 0, "nothing stored");
    let a = s.post("/v1/automations", with(ok.clone(), json!({"keep_workspace": true}))).await.expect(201);
    s.patch(
        &format!("/v1/automations/{}", a.id()),
        json!({"executor": {"plugin": "local-sandbox", "config": {"network": 5}}}),
    )
    .await
    .expect_error(422, "invalid_executor_config", "executor.config.network");
}

async fn create_read_list_every_trigger_type(backend: Backend) {
    let s = TestServer::start(backend).await;
    let upload = simple_upload(&s).await;
    let cron = s
        .post(
            "/v1/automations",
            json!({
                "name": "nightly",
                "trigger": {"type": "cron", "schedule": "*/5 * * * *", "timezone": "Europe/Paris"},
                "preset": {"name": "script", "config": {"script": "echo hi"}},
                "executor": {"plugin": "local-sandbox", "config": {}},
                "timeout_seconds": 60,
                "concurrency": 2,
            }),
        )
        .await
        .expect(201);
    assert_eq!(cron.body["trigger"]["timezone"], "Europe/Paris");
    assert_eq!(cron.body["trigger"]["misfire"], "run_once");
    assert_eq!(cron.body["enabled"], true);
    assert_eq!(cron.body["concurrency"], 2);
    let event = s
        .post(
            "/v1/automations",
            json!({
                "name": "on pr",
                "trigger": {"type": "event", "source": "github", "on": ["pull_request.opened"], "filter": "pull_request.draft == `false`"},
                "bundle": {"upload_id": upload},
                "entrypoint": "sh run.sh",
            }),
        )
        .await
        .expect(201);
    assert_eq!(event.body["trigger"]["filter_plugin"], "jmespath");
    assert_eq!(event.body["executor"]["plugin"], "local-sandbox", "default executor");
    assert_eq!(event.body["timeout_seconds"], 600, "default timeout");
    let manual = s.post("/v1/automations", manual_automation("by hand", &upload)).await.expect(201);

    let got = s.get(&format!("/v1/automations/{}", event.id())).await.expect(200);
    assert_eq!(got.body, event.body, "read back equals what create returned");

    let list = s.get("/v1/automations").await.expect(200);
    assert_eq!(list.body["total"], 3);
    let names: Vec<_> = list.body["items"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["by hand", "on pr", "nightly"], "newest first");
    let only_cron = s.get("/v1/automations?trigger=cron").await.expect(200);
    assert_eq!(only_cron.body["total"], 1);
    assert_eq!(only_cron.body["items"][0]["id"], cron.body["id"]);
    s.patch(&format!("/v1/automations/{}", manual.id()), json!({"enabled": false})).await.expect(200);
    assert_eq!(s.get("/v1/automations?enabled=false").await.expect(200).body["total"], 1);
}

async fn bad_input_gets_a_clear_4xx_and_writes_nothing(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_MAX_BODY_BYTES", "4096")]).await;
    let upload = simple_upload(&s).await;
    let valid = manual_automation("ok", &upload);
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];

    let r = s.raw(Method::POST, "/v1/automations", &headers, b"{\"name\": \"x\",".to_vec()).await;
    r.expect_error(400, "malformed_json", "malformed JSON");
    // curl -d sends form-urlencoded; the body is still read as JSON.
    let r = s.raw(Method::POST, "/v1/automations", &[("authorization", &auth)], b"name=x".to_vec()).await;
    r.expect_error(400, "malformed_json", "malformed JSON");

    let mut unknown = valid.clone();
    unknown["colour"] = json!("blue");
    s.post("/v1/automations", unknown).await.expect_error(422, "invalid_body", "colour");
    let mut unknown_nested = valid.clone();
    unknown_nested["trigger"] = json!({"type": "manual", "extra": 1});
    s.post("/v1/automations", unknown_nested).await.expect_error(422, "invalid_body", "extra");

    let cron = |schedule: &str, tz: &str| {
        let mut a = valid.clone();
        a["trigger"] = json!({"type": "cron", "schedule": schedule, "timezone": tz});
        a
    };
    s.post("/v1/automations", cron("61 * * * *", "UTC")).await.expect_error(422, "invalid_cron", "61 * * * *");
    s.post("/v1/automations", cron("* * * *", "UTC")).await.expect_error(422, "invalid_cron", "got 4");
    s.post("/v1/automations", cron("0 0 31 2 *", "UTC")).await.expect_error(422, "invalid_cron", "never fires");
    s.post("/v1/automations", cron("* * * * *", "Mars/Olympus")).await.expect_error(
        422,
        "invalid_timezone",
        "Mars/Olympus",
    );

    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("name");
    s.post("/v1/automations", missing).await.expect_error(422, "invalid_body", "name");
    let mut blank = valid.clone();
    blank["name"] = json!("   ");
    s.post("/v1/automations", blank).await.expect_error(422, "invalid_field", "name");
    let mut long = valid.clone();
    long["name"] = json!("x".repeat(201));
    s.post("/v1/automations", long).await.expect_error(422, "too_long", "name");
    let mut shell = valid.clone();
    shell["entrypoint"] = json!("sh run.sh; curl evil");
    s.post("/v1/automations", shell).await.expect_error(422, "invalid_entrypoint", "shell syntax");
    let mut nothing = valid.clone();
    nothing.as_object_mut().unwrap().remove("bundle");
    s.post("/v1/automations", nothing).await.expect_error(422, "nothing_to_run", "bundle");
    let mut ghost = valid.clone();
    ghost["bundle"] = json!({"upload_id": "00000000-0000-7000-8000-000000000000"});
    s.post("/v1/automations", ghost).await.expect_error(422, "unknown_upload", "does not exist");
    let mut timeout = valid.clone();
    timeout["timeout_seconds"] = json!(0);
    s.post("/v1/automations", timeout).await.expect_error(422, "invalid_timeout", "timeout_seconds");
    let mut neg = valid.clone();
    neg["concurrency"] = json!(-1);
    s.post("/v1/automations", neg).await.expect_error(422, "invalid_body", "concurrency");
    let mut bad_plugin = valid.clone();
    bad_plugin["executor"] = json!({"plugin": "Not A Name"});
    s.post("/v1/automations", bad_plugin).await.expect_error(422, "invalid_name", "executor.plugin");
    let mut bad_event = valid.clone();
    bad_event["trigger"] = json!({"type": "event", "source": "github", "on": []});
    s.post("/v1/automations", bad_event).await.expect_error(422, "invalid_trigger", "trigger.on");

    let mut big = valid.clone();
    big["env"] = json!({"BIG": "x".repeat(5000)});
    s.post("/v1/automations", big).await.expect_error(413, "payload_too_large", "too large");

    s.get("/v1/automations/not-a-uuid").await.expect_error(400, "invalid_path", "");
    s.get("/v1/automations?limit=0").await.expect_error(400, "invalid_query", "limit");
    s.get("/v1/automations?limit=abc").await.expect_error(400, "invalid_query", "limit");

    // Nothing above was stored.
    assert_eq!(s.get("/v1/automations").await.expect(200).body["total"], 0);
    s.post("/v1/automations", valid).await.expect(201);
    assert_eq!(s.get("/v1/automations").await.expect(200).body["total"], 1);
}

async fn pagination_walks_every_item_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let upload = simple_upload(&s).await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(s.post("/v1/automations", manual_automation(&format!("a{i}"), &upload)).await.expect(201).id());
    }
    created.reverse(); // newest first
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/automations?limit=3&cursor={c}"),
            None => "/v1/automations?limit=3".to_owned(),
        };
        let page = s.get(&path).await.expect(200);
        pages += 1;
        assert_eq!(page.body["total"], 7);
        seen.extend(page.body["items"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);
    s.get("/v1/automations?cursor=garbage").await.expect_error(400, "invalid_query", "cursor");
    s.get("/v1/automations?limit=101").await.expect_error(400, "invalid_query", "limit");
}

async fn patch_changes_only_what_it_names(backend: Backend) {
    let s = TestServer::start(backend).await;
    let upload = simple_upload(&s).await;
    let a = s.post("/v1/automations", manual_automation("before", &upload)).await.expect(201);
    let path = format!("/v1/automations/{}", a.id());
    let p = s
        .patch(&path, json!({"name": "after", "enabled": false, "executor": {"plugin": "local-sandbox", "config": {"keep_workspace": true}}}))
        .await
        .expect(200);
    assert_eq!(p.body["name"], "after");
    assert_eq!(p.body["enabled"], false);
    assert_eq!(p.body["executor"]["config"]["keep_workspace"], true);
    assert_eq!(p.body["entrypoint"], a.body["entrypoint"]);
    assert_ne!(p.body["updated_at"], a.body["updated_at"]);
    // An invalid patch is refused whole.
    s.patch(&path, json!({"name": "again", "trigger": {"type": "cron", "schedule": "61 * * * *"}})).await.expect_error(
        422,
        "invalid_cron",
        "61",
    );
    let got = s.get(&path).await.expect(200);
    assert_eq!(got.body, p.body);
    // Removing the entrypoint of a bundle-only automation is refused.
    s.patch(&path, json!({"entrypoint": null})).await.expect_error(422, "missing_entrypoint", "entrypoint");
    s.patch(&path, json!({"colour": 1})).await.expect_error(422, "invalid_body", "colour");
    s.patch("/v1/automations/00000000-0000-7000-8000-000000000000", json!({"name": "x"})).await.expect_error(
        404,
        "not_found",
        "automation",
    );
}

async fn soft_delete_hides_and_cancels_pending_runs(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let upload = simple_upload(&s).await;
    let a = s.post("/v1/automations", manual_automation("doomed", &upload)).await.expect(201);
    let path = format!("/v1/automations/{}", a.id());
    let run = s.post(&format!("{path}/dispatch"), json!({})).await.expect(201);
    s.delete(&path).await.expect(204);
    s.get(&path).await.expect_error(404, "not_found", "automation");
    s.delete(&path).await.expect_error(404, "not_found", "automation");
    s.post(&format!("{path}/dispatch"), json!({})).await.expect_error(404, "not_found", "automation");
    s.patch(&path, json!({"enabled": true})).await.expect_error(404, "not_found", "automation");
    assert_eq!(s.get("/v1/automations").await.expect(200).body["total"], 0);
    // The run is still readable, and will never start.
    let r = s.get(&format!("/v1/runs/{}", run.id())).await.expect(200);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["status_detail"]["reason"], "automation deleted");
    assert!(r.body["finished_at"].is_string());
    // Its upload is no longer in use.
    s.delete(&format!("/v1/uploads/{upload}")).await.expect(204);
}

/// Descriptions and tags are kept; lists filter by tag, trigger type,
/// source, enabled and name; `GET /v1/tags` counts the tags in use.
async fn descriptions_tags_and_search_find_automations(backend: Backend) {
    let s = TestServer::start(backend).await;
    let upload = simple_upload(&s).await;
    let make = |name: &str, tags: serde_json::Value| {
        let mut a = manual_automation(name, &upload);
        a["tags"] = tags;
        a["description"] = json!(format!("{name}, described"));
        a
    };
    let nightly = s.post("/v1/automations", make("Nightly report", json!(["Ops", "reports", "ops"]))).await.expect(201);
    assert_eq!(nightly.body["tags"], json!(["ops", "reports"]), "lowered, sorted, deduplicated");
    assert_eq!(nightly.body["description"], "Nightly report, described");
    let deploy = s.post("/v1/automations", make("deploy_100% safe", json!(["ops", "team:web"]))).await.expect(201);
    let event = json!({
        "name": "on push", "tags": ["ci"],
        "trigger": {"type": "event", "source": "github", "on": ["push"]},
        "preset": {"name": "script", "config": {"script": "true"}},
    });
    let on_push = s.post("/v1/automations", event).await.expect(201);
    s.post("/v1/automations", make("bad", json!(["a,b"]))).await.expect_error(422, "invalid_tags", "letters, digits");
    let long = "x".repeat(2001);
    let mut too_long = manual_automation("long", &upload);
    too_long["description"] = json!(long);
    s.post("/v1/automations", too_long).await.expect_error(422, "too_long", "description");

    let names = |v: &serde_json::Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_owned()).collect()
    };
    let ops = s.get("/v1/automations?tag=OPS").await.expect(200).body;
    assert_eq!(names(&ops), ["deploy_100% safe", "Nightly report"]);
    assert_eq!(ops["total"], 2);
    assert_eq!(names(&s.get("/v1/automations?tag=op").await.expect(200).body), Vec::<String>::new(), "whole tags only");
    assert_eq!(names(&s.get("/v1/automations?q=NIGHT").await.expect(200).body), ["Nightly report"]);
    // LIKE's wildcards in q are literal.
    assert_eq!(names(&s.get("/v1/automations?q=100%25").await.expect(200).body), ["deploy_100% safe"]);
    assert_eq!(names(&s.get("/v1/automations?q=y_1").await.expect(200).body), ["deploy_100% safe"]);
    assert_eq!(names(&s.get("/v1/automations?q=_").await.expect(200).body), ["deploy_100% safe"]);
    assert_eq!(names(&s.get("/v1/automations?source=github").await.expect(200).body), ["on push"]);
    assert_eq!(names(&s.get("/v1/automations?trigger=event&tag=ci").await.expect(200).body), ["on push"]);
    assert_eq!(names(&s.get("/v1/automations?tag=ops&q=deploy").await.expect(200).body), ["deploy_100% safe"]);

    let tags = s.get("/v1/tags").await.expect(200).body;
    assert_eq!(
        tags,
        json!([{"tag": "ci", "count": 1}, {"tag": "ops", "count": 2}, {"tag": "reports", "count": 1}, {"tag": "team:web", "count": 1}])
    );
    // A patch replaces the tags; a deleted automation's tags are not counted.
    let patched = s.patch(&format!("/v1/automations/{}", deploy.id()), json!({"tags": []})).await.expect(200);
    assert_eq!(patched.body["tags"], json!([]));
    s.delete(&format!("/v1/automations/{}", on_push.id())).await.expect(204);
    let tags = s.get("/v1/tags").await.expect(200).body;
    assert_eq!(tags, json!([{"tag": "ops", "count": 1}, {"tag": "reports", "count": 1}]));
    let got = s.get(&format!("/v1/automations/{}", nightly.id())).await.expect(200).body;
    assert_eq!(got["tags"], json!(["ops", "reports"]));
}

/// `POST /v1/automations/{id}/test` says whether a sample event would fire
/// an automation (source, key, filter, with the filter's error), shows the
/// bundle its preset renders, and with `"run": true` creates a real run of
/// kind `test`, even for a disabled automation.
async fn trying_a_trigger_shows_what_would_happen(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let a = json!({
        "name": "opened PRs", "enabled": false,
        "trigger": {"type": "event", "source": "github", "on": ["pull_request.*"], "filter": "action == 'opened'"},
        "preset": {"name": "script", "config": {"script": "echo hi"}},
    });
    let a = s.post("/v1/automations", a).await.expect(201).id();
    let test = format!("/v1/automations/{a}/test");
    let sample = |key: &str, action: serde_json::Value| json!({"event": {"key": key, "payload": {"action": action}}});

    let yes = s.post(&test, sample("pull_request.opened", json!("opened"))).await.expect(200).body;
    assert_eq!(yes["fires"], true, "{yes}");
    assert_eq!(yes["filter"], json!({"matches": true, "error": null}));
    assert_eq!(yes["bundle"]["files"], json!(["main.sh"]));
    assert!(!yes["bundle"]["entrypoint"].as_str().unwrap().is_empty());
    assert!(yes.get("run").is_none());

    let no = s.post(&test, sample("pull_request.closed", json!("closed"))).await.expect(200).body;
    assert_eq!(no["fires"], false);
    assert_eq!(no["filter"]["matches"], false);
    assert!(no["reason"].as_str().unwrap().contains("filter is false"), "{no}");
    let key = s.post(&test, sample("issues.opened", json!("opened"))).await.expect(200).body;
    assert_eq!(key["fires"], false);
    assert!(key["reason"].as_str().unwrap().contains("matches none of"), "{key}");
    assert!(key.get("filter").is_none(), "the filter is not asked when the key does not match");
    let other = json!({"event": {"source": "shop", "key": "pull_request.opened", "payload": {}}});
    let other = s.post(&test, other).await.expect(200).body;
    assert!(other["reason"].as_str().unwrap().contains("source is github"), "{other}");

    // An evaluation error is shown, and counts as no match.
    s.patch(
        &format!("/v1/automations/{a}"),
        json!({"trigger": {"type": "event", "source": "github", "on": ["*.*"], "filter": "abs(action) > `1`"}}),
    )
    .await
    .expect(200);
    let err = s.post(&test, sample("pull_request.opened", json!("opened"))).await.expect(200).body;
    assert_eq!(err["fires"], false);
    assert!(err["filter"]["error"].is_string(), "{err}");
    let errors = s.get(&format!("/v1/automations/{a}")).await.expect(200).body["filter_errors"]["count"].clone();
    assert_eq!(errors, 0, "a test does not count as a filter error of the automation");

    // A real run, of kind test, on the disabled automation.
    let mut body = sample("pull_request.opened", json!("opened"));
    body["run"] = json!(true);
    let ran = s.post(&test, body).await.expect(200).body;
    assert_eq!(ran["run"]["trigger"]["kind"], "test");
    assert_eq!(ran["run"]["trigger"]["payload"], json!({"action": "opened"}));
    assert_eq!(ran["run"]["status"], "pending");
    let runs = s.get(&format!("/v1/automations/{a}/runs")).await.expect(200).body;
    assert_eq!(runs["total"], 1);
    s.post(&test, json!({"nope": 1})).await.expect_error(422, "invalid_body", "nope");

    // Cron and manual automations have nothing to match: they fire.
    let cron = json!({"name": "tick", "trigger": {"type": "cron", "schedule": "0 9 * * *"}, "preset": {"name": "script", "config": {"script": "true"}}});
    let cron = s.post("/v1/automations", cron).await.expect(201).id();
    let tried = s.post(&format!("/v1/automations/{cron}/test"), json!({})).await.expect(200).body;
    assert_eq!(tried["fires"], true);
    assert!(tried.get("filter").is_none());
}
