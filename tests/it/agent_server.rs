//! The `agent-server` executor against a real OpenHands agent-server
//! (installed from PyPI by tests/agent_server/start.sh, pinned version).

use std::path::Path;
use std::process::Command;

use crate::db_tests;
use crate::support::{Backend, TestServer, script_automation, wait_final, wait_for_run};
use serde_json::json;

/// A running agent-server, stopped when dropped.
struct AgentServer {
    port: u16,
    url: String,
}

impl AgentServer {
    fn start() -> AgentServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/agent_server/start.sh");
        let out = Command::new("bash").arg(&script).arg(port.to_string()).output().expect("run start.sh");
        assert!(
            out.status.success(),
            "the agent-server did not start:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("AGENT_SERVER_URL="))
            .expect("start.sh printed no URL")
            .to_owned();
        AgentServer { port, url }
    }
}

impl Drop for AgentServer {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/agent_server/stop.sh");
        let _ = Command::new("bash").arg(script).arg(self.port.to_string()).status();
    }
}

db_tests!(switching_executors_needs_one_patch);

/// One automation runs a real bundle to `succeeded` on the agent-server,
/// then, after one PATCH, on the local sandbox; failures and cancels work
/// through the agent-server too.
async fn switching_executors_needs_one_patch(backend: Backend) {
    let agent = tokio::task::spawn_blocking(AgentServer::start).await.unwrap();
    let s = TestServer::start(backend).await;
    let script = "echo ran on $AUTOMATION_TRIGGER; echo payload=$AUTOMATION_EVENT_PAYLOAD";
    let body = script_automation(
        "switch",
        script,
        json!({"executor": {"plugin": "agent-server", "config": {"url": agent.url}}}),
    );
    let a = s.post("/v1/automations", body).await.expect(201);
    let path = format!("/v1/automations/{}", a.id());

    let run = s.post(&format!("{path}/dispatch"), json!({"payload": {"n": 1}})).await.expect(201).id();
    let done = wait_final(&s, &run, 90).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["executor"], "agent-server");
    assert_eq!(done["output"]["stdout"], "ran on manual\npayload={\"n\":1}\n", "{done}");

    let p = s.patch(&path, json!({"executor": {"plugin": "local-sandbox", "config": {}}})).await.expect(200);
    assert_eq!(p.body["executor"]["plugin"], "local-sandbox");
    let run = s.post(&format!("{path}/dispatch"), json!({"payload": {"n": 2}})).await.expect(201).id();
    let done = wait_final(&s, &run, 60).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["executor"], "local-sandbox");
    assert_eq!(done["output"]["stdout"], "ran on manual\npayload={\"n\":2}\n", "{done}");

    // A failing bundle and a cancel, through the agent-server.
    let config = json!({"executor": {"plugin": "agent-server", "config": {"url": agent.url}}});
    let fails =
        s.post("/v1/automations", script_automation("fails", "echo bad >&2; exit 4", config.clone())).await.expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", fails.id()), json!({})).await.expect(201).id();
    let done = wait_final(&s, &run, 60).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["output"]["exit_code"], 4);
    assert_eq!(done["output"]["stderr"], "bad\n");
    let slow = s.post("/v1/automations", script_automation("slow", "sleep 120", config)).await.expect(201);
    let run = s.post(&format!("/v1/automations/{}/dispatch", slow.id()), json!({})).await.expect(201).id();
    wait_for_run(&s, &run, 60, |r| r["status"] == "running" && r["executor_handle"].is_string()).await;
    s.post(&format!("/v1/runs/{run}/cancel"), json!({})).await.expect(200);
    assert_eq!(wait_final(&s, &run, 10).await["status"], "cancelled");
}
