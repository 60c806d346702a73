//! WIT releases side by side. `tests/fixtures/wit-0.1.0/jmespath-filter.wasm`
//! is the bundled filter as built against `automation:plugin@0.1.0`, before
//! 0.2.0 existed (committed bytes, never rebuilt). It must still load on
//! this host, say which release it targets, and decide every GitHub fixture
//! delivery exactly as the 0.2.0 build of the same filter does.

use std::collections::BTreeSet;

use crate::events::{SECRET, deliver, fixtures, wait_matched};
use crate::plugins::put_plugin;
use crate::polyglot::{automation, rules};
use crate::support::{Backend, TestServer};

fn fixture_0_1_0() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/wit-0.1.0/jmespath-filter.wasm")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_0_1_0_guest_loads_and_decides_like_its_0_2_0_build() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET), ("AUTOMATION_NO_DISPATCH", "true")],
    )
    .await;
    let old = fixture_0_1_0();
    let up = put_plugin(&s, "jmespath-010", "kind=filter&wit=0.1.0", old.clone()).await.expect(201);
    assert_eq!(up.body["wit"], "0.1.0", "{}", up.body);
    assert_eq!(up.body["wit_adapted"], true);
    assert_eq!(up.body["world"], "automation:plugin/filter-plugin@0.1.0");
    assert_eq!(up.body["size_bytes"], old.len(), "the digest and size are the uploaded bytes'");
    let names: BTreeSet<&str> =
        up.body["imports"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert!(names.iter().any(|n| n.starts_with("automation:plugin/") && n.ends_with("@0.1.0")), "{names:?}");
    let current = s.get("/v1/plugins/jmespath").await.expect(200).body;
    assert_eq!(current["wit"], "0.2.0");
    assert_eq!(current["wit_adapted"], false);

    // validate() through the old guest: its errors reach the field as before.
    let bad = s.post("/v1/automations", automation("bad", "sender.login ==", "jmespath-010")).await;
    bad.expect_error(422, "invalid_filter", "trigger.filter");

    let mut pairs = Vec::new();
    for (i, (_, jmespath, native)) in rules().into_iter().enumerate() {
        let old = s.post("/v1/automations", automation(&format!("0.1.0 {i}"), jmespath, "jmespath-010")).await;
        let new = s.post("/v1/automations", automation(&format!("0.2.0 {i}"), jmespath, "jmespath")).await;
        pairs.push((old.expect(201).id(), new.expect(201).id(), native));
    }
    let mut acks = Vec::new();
    for (i, (event, path)) in fixtures().iter().enumerate() {
        let body = std::fs::read(path).unwrap();
        let id = deliver(&s, event, &format!("wit-{i}"), &body).await.expect(202).id();
        acks.push((id, serde_json::from_slice::<serde_json::Value>(&body).unwrap(), path.clone()));
    }
    assert!(acks.len() > 250, "{} fixtures", acks.len());
    let mut matched_by_old = 0;
    for (id, payload, path) in &acks {
        let d = wait_matched(&s, id).await;
        let matched: BTreeSet<&str> =
            d["result"]["matched"].as_array().unwrap().iter().map(|m| m["automation_id"].as_str().unwrap()).collect();
        for (old, new, native) in &pairs {
            let want = native(payload);
            assert_eq!(matched.contains(old.as_str()), want, "0.1.0 guest on {}: {d}", path.display());
            assert_eq!(matched.contains(new.as_str()), want, "0.2.0 guest on {}: {d}", path.display());
            matched_by_old += usize::from(want);
        }
    }
    assert!(matched_by_old > 250, "the rules match real deliveries ({matched_by_old})");
}
