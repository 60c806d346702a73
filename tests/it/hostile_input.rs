//! Hostile input through the real binary: archives built to escape or to
//! exhaust the host.

use std::io::Write;

use serde_json::json;

use crate::support::{Backend, TestServer, wait_final};

/// A .tar.gz from raw `(name, type, data-or-link-target)` entries.
fn raw_tgz(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.set_link_name_literal(data).unwrap();
            h.set_size(0);
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Each link alone stays inside the bundle; followed through each other
/// they reach the data directory: `main.sh -> a/b/../../automation.db` with
/// `a/b -> ..`. The host used to accept it, then write the preset's
/// `main.sh` through it: the host overwrote its own database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_chain_cannot_make_the_host_overwrite_its_files() {
    let s = TestServer::start(Backend::Sqlite).await;
    let db = s.data_dir().join("automation.db");
    let chain = raw_tgz(&[
        ("a/", tar::EntryType::Directory, b""),
        ("a/b", tar::EntryType::Symlink, b".."),
        ("main.sh", tar::EntryType::Symlink, b"a/b/../../automation.db"),
    ]);
    s.upload(chain.clone()).await.expect_error(422, "invalid_archive", "main.sh");
    // Writing through a link inside the bundle is refused too.
    let through = raw_tgz(&[
        ("d/", tar::EntryType::Directory, b""),
        ("l", tar::EntryType::Symlink, b"d"),
        ("l/x", tar::EntryType::Regular, b"x"),
    ]);
    s.upload(through).await.expect_error(422, "invalid_archive", "through a link");
    let twice =
        raw_tgz(&[("run.sh", tar::EntryType::Regular, b"echo 1"), ("./run.sh", tar::EntryType::Regular, b"echo 2")]);
    s.upload(twice).await.expect_error(422, "invalid_archive", "twice");
    // A bundle with an inner link and a preset that writes over it: the
    // preset's file replaces the link, and the link's target is untouched.
    let inner =
        raw_tgz(&[("keep.txt", tar::EntryType::Regular, b"kept"), ("main.sh", tar::EntryType::Symlink, b"keep.txt")]);
    let up = s.upload(inner).await.expect(201).id();
    let a = s
        .post(
            "/v1/automations",
            json!({
                "name": "inner link",
                "trigger": {"type": "manual"},
                "bundle": {"upload_id": up},
                "preset": {"name": "script", "config": {"interpreter": "sh", "script": "cat keep.txt"}},
            }),
        )
        .await
        .expect(201)
        .id();
    let r = s.post(&format!("/v1/automations/{a}/dispatch"), json!({})).await.expect(201).id();
    let done = wait_final(&s, &r, 30).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["stdout"], "kept");
    let head = std::fs::read(&db).unwrap();
    assert!(head.starts_with(b"SQLite format 3"), "the database was overwritten");
    assert_eq!(s.get("/v1/uploads").await.expect(200).body["total"], 1);
}

/// A 1 MiB gzip upload whose GNU long-name record claims 1 GiB: the tar
/// crate would read the whole name into memory before any check saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_bomb_is_refused_with_memory_bounded() {
    let s = TestServer::start(Backend::Sqlite).await;
    let before = peak_rss_kib(s.pid());
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(1 << 30);
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(h.as_bytes()).unwrap();
    let zeros = vec![b'a'; 1 << 20];
    for _ in 0..1024 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 8 << 20, "the bomb is {} bytes", bomb.len());
    s.upload(bomb).await.expect_error(422, "invalid_archive", "long name record");
    // A plain gzip bomb: one file of 1 GiB of zeros, in a few MB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..4].copy_from_slice(b"huge");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1 << 30);
    h.set_cksum();
    gz.write_all(h.as_bytes()).unwrap();
    for _ in 0..1024 {
        gz.write_all(&zeros).unwrap();
    }
    s.upload(gz.finish().unwrap()).await.expect_error(422, "invalid_archive", "unpacks to more than");
    let after = peak_rss_kib(s.pid());
    assert!(after < before + (64 << 10), "the host's peak memory grew from {before} to {after} KiB");
    assert_eq!(s.get("/v1/uploads").await.expect(200).body["total"], 0);
}

/// Attack: a custom source's event-key expression runs natively on every
/// delivery, before any plugin bound applies. One that copies the payload
/// many times over (`to_string([@, @, ...])` on a 25 MiB delivery) held
/// the acknowledgement path for seconds per delivery. Such shapes are now
/// refused when the source is made; field paths and joins still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_key_expressions_are_bounded() {
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_NO_DISPATCH", "true")]).await;
    let copies = vec!["@"; 200].join(",");
    for expr in [format!("to_string([{copies}])"), "a[*].b".to_owned(), "sort_by(items, &n)[0].kind".to_owned()] {
        let r = s.post("/v1/sources", json!({"name": "costly", "event_key_expr": expr})).await;
        r.expect_error(422, "invalid_event_key_expr", "event-key expression");
    }
    let expr = "join('.', [object_kind, object_attributes.action])";
    let made = s.post("/v1/sources", json!({"name": "gitlab", "event_key_expr": expr})).await.expect(201);
    let secret = made.body["secret"].as_str().unwrap().to_owned();
    let body = json!({"object_kind": "merge_request", "object_attributes": {"action": "open"}}).to_string();
    let sig = automation_host::events::signature::sign(secret.as_bytes(), body.as_bytes());
    let r = s
        .raw(reqwest::Method::POST, "/v1/events/gitlab", &[("X-Signature-256", &sig)], body.into_bytes())
        .await
        .expect(202);
    assert_eq!(r.body["event_key"], "merge_request.open");
}

/// Found by the `archive_check` fuzz target: an entry whose GNU base-256
/// size is near u64::MAX overflowed the archive check's block rounding (a
/// panic in the upload handler of a debug build, a misaligned skip in a
/// release one). It is now a clear 422, and the host carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_size_near_u64_max_is_a_clear_refusal() {
    let s = TestServer::start(Backend::Sqlite).await;
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..5].copy_from_slice(b"a.txt");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(u64::MAX - 3);
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(h.as_bytes()).unwrap();
    gz.write_all(&[0u8; 1024]).unwrap();
    s.upload(gz.finish().unwrap()).await.expect_error(422, "invalid_archive", "claims");
    s.get("/v1/uploads").await.expect(200);
    assert_eq!(s.get("/v1/uploads").await.body["total"], 0, "nothing was stored");
}
