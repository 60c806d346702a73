use crate::db_tests;
use crate::support::{Backend, KEY, TestServer};
use reqwest::Method;

db_tests!(v1_needs_a_valid_key, created_keys_work_and_are_stored_hashed);

async fn v1_needs_a_valid_key(backend: Backend) {
    let s = TestServer::start(backend).await;
    let r = s.raw(Method::GET, "/v1/automations", &[], vec![]).await;
    r.expect_error(401, "unauthorized", "Authorization");
    let r = s.raw(Method::GET, "/v1/automations", &[("authorization", "Bearer wrong-key-123456789")], vec![]).await;
    r.expect_error(401, "unauthorized", "invalid API key");
    let basic = format!("Basic {KEY}");
    let r = s.raw(Method::GET, "/v1/automations", &[("authorization", &basic)], vec![]).await;
    r.expect_error(401, "unauthorized", "Bearer");
    let r = s.raw(Method::GET, "/v1/runs", &[("authorization", "Bearer ")], vec![]).await;
    assert_eq!(r.status, 401);
    // A refused request changes nothing.
    let r = s
        .raw(
            Method::POST,
            "/v1/automations",
            &[("authorization", "Bearer nope-nope-nope-nope")],
            br#"{"name":"x"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(s.get("/v1/automations").await.expect(200).body["total"], 0);
}

async fn created_keys_work_and_are_stored_hashed(backend: Backend) {
    let s = TestServer::start(backend).await;
    let out = s.command().args(["api-key", "create", "--name", "ci", "--scope", "admin"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("ahk_"), "{key}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown only this once"));
    let auth = format!("Bearer {key}");
    s.raw(Method::GET, "/v1/automations", &[("authorization", &auth)], vec![]).await.expect(200);
    // The key itself is nowhere in the database file.
    if backend == Backend::Sqlite {
        let db = std::fs::read(s.data_dir().join("automation.db")).unwrap();
        let wal = std::fs::read(s.data_dir().join("automation.db-wal")).unwrap_or_default();
        let needle = key.as_bytes();
        for bytes in [&db, &wal] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "plaintext key stored");
        }
    }
}
