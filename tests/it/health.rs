use crate::db_tests;
use crate::support::{Backend, TestServer};
use reqwest::Method;

db_tests!(health_and_ready_need_no_key);

async fn health_and_ready_need_no_key(backend: Backend) {
    let s = TestServer::start(backend).await;
    let r = s.raw(Method::GET, "/health", &[], vec![]).await.expect(200);
    assert_eq!(r.body, serde_json::json!({"status": "ok"}));
    let r = s.raw(Method::GET, "/ready", &[], vec![]).await.expect(200);
    assert_eq!(r.body["status"], "ready");
    s.raw(Method::GET, "/nowhere", &[], vec![]).await.expect_error(404, "not_found", "no such route");
}
