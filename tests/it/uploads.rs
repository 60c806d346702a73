use crate::db_tests;
use crate::support::{Backend, TestServer, manual_automation, tgz, tgz_raw_name};
use serde_json::json;
use sha2::{Digest, Sha256};

db_tests!(uploads_are_checked_and_nothing_bad_is_kept, upload_delete_is_refused_while_in_use);

async fn uploads_are_checked_and_nothing_bad_is_kept(backend: Backend) {
    let s = TestServer::start_with(backend, &[("AUTOMATION_MAX_UPLOAD_BYTES", "65536")]).await;
    let archive = tgz(&[("run.sh", "echo hi\n", 0o755), ("lib/util.sh", "true\n", 0o644)]);
    let up = s.upload(archive.clone()).await.expect(201);
    assert_eq!(up.body["size_bytes"], archive.len());
    assert_eq!(up.body["sha256"], hex::encode(Sha256::digest(&archive)));
    assert_eq!(up.body["entry_count"], 2);
    assert_eq!(s.get(&format!("/v1/uploads/{}", up.id())).await.expect(200).body, up.body);

    s.upload(tgz_raw_name("../../etc/cron.d/evil", "x")).await.expect_error(422, "invalid_archive", "'..'");
    s.upload(tgz_raw_name("/etc/passwd", "x")).await.expect_error(422, "invalid_archive", "absolute path");
    s.upload(b"just some text".to_vec()).await.expect_error(422, "invalid_archive", "not a gzip");
    let mut damaged = tgz(&[("big.bin", &"x".repeat(20_000), 0o644)]);
    damaged.truncate(damaged.len() / 2);
    s.upload(damaged).await.expect_error(422, "invalid_archive", "damaged");
    // Random bytes compress badly: this archive is over the 64 KiB limit.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let noise: String = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    s.upload(tgz(&[("noise", &noise, 0o644)])).await.expect_error(413, "payload_too_large", "larger than 65536");

    let list = s.get("/v1/uploads").await.expect(200);
    assert_eq!(list.body["total"], 1, "only the good upload was kept");
    assert_eq!(list.body["items"][0]["id"], up.body["id"]);
}

async fn upload_delete_is_refused_while_in_use(backend: Backend) {
    let s = TestServer::start(backend).await;
    let up = s.upload(tgz(&[("run.sh", "echo hi\n", 0o755)])).await.expect(201).id();
    let a = s.post("/v1/automations", manual_automation("user", &up)).await.expect(201).id();
    s.delete(&format!("/v1/uploads/{up}")).await.expect_error(409, "upload_in_use", &a);
    s.get(&format!("/v1/uploads/{up}")).await.expect(200);
    s.patch(&format!("/v1/automations/{a}"), json!({"enabled": false})).await.expect(200);
    s.delete(&format!("/v1/uploads/{up}")).await.expect(204);
    s.get(&format!("/v1/uploads/{up}")).await.expect_error(404, "not_found", "upload");
    s.delete(&format!("/v1/uploads/{up}")).await.expect_error(404, "not_found", "upload");
    // Re-enabling an automation whose bundle is gone is refused.
    s.patch(&format!("/v1/automations/{a}"), json!({"enabled": true})).await.expect_error(422, "unknown_upload", &up);
}
