//! The HTTP front against hostile clients: slow headers, idle connections,
//! floods of big unsigned or wrongly signed deliveries.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::events::SECRET;
use crate::support::{Backend, TestServer};
use automation_host::events::signature::sign;

/// Writes `head` (request line and headers, no body) and returns the status
/// line of the answer, if one comes within `wait`.
async fn answer_without_body(port: u16, head: &str, wait: Duration) -> Option<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    match tokio::time::timeout(wait, c.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned()),
        _ => None,
    }
}

/// Attack: the event routes read up to 25 MiB before they knew the source
/// or looked for a signature. Each of these is answered while the body has
/// not been sent at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_refused_before_their_body_is_read() {
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET)]).await;
    let big = 25 * 1024 * 1024;
    for (path, extra, status) in [
        ("/v1/events/github", String::new(), "401"),
        ("/v1/events/no-such-source", "x-signature: sha256=00\r\n".to_owned(), "404"),
        ("/v1/events/github", "x-hub-signature-256: sha256=00\r\n".to_owned(), "413"),
    ] {
        let length = if status == "413" { big + 1 } else { big };
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n{extra}\r\n"
        );
        let line = answer_without_body(s.port(), &head, Duration::from_secs(5)).await;
        let line = line.unwrap_or_else(|| panic!("{path} waited for a body before answering"));
        assert!(line.contains(status), "{path}: {line}");
    }
}

/// Attack: slowloris. Connections that send one header byte a second, or
/// nothing at all, used to be held open for ever; with more of them than
/// the connection limit, nobody else got in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_cut_off() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[("AUTOMATION_HEADER_TIMEOUT_SECONDS", "2"), ("AUTOMATION_MAX_CONNECTIONS", "10")],
    )
    .await;
    let port = s.port();
    let mut clients = Vec::new();
    for i in 0..24 {
        clients.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let head = b"GET /health HTTP/1.1\r\nhost: localhost\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut buf = [0u8; 256];
            for byte in head.iter().cycle().take(30) {
                // Every other client sends nothing at all.
                if i % 2 == 0 && c.write_all(&[*byte]).await.is_err() {
                    return Some(started.elapsed());
                }
                match tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
                    Ok(Ok(_)) => {} // a 408 on its way out; the close follows
                    Err(_) => {}
                }
            }
            None
        }));
    }
    // With 24 hostile connections against a limit of 10, a normal request
    // still gets in once they are cut off.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    s.get("/health").await.expect(200);
    let health_wait = started.elapsed();
    for (i, c) in clients.into_iter().enumerate() {
        let closed = c.await.unwrap();
        let closed = closed.unwrap_or_else(|| panic!("slow client {i} was still connected after 30 s"));
        assert!(closed < Duration::from_secs(20), "client {i} was cut off only after {closed:?}");
    }
    assert!(health_wait < Duration::from_secs(20), "a normal request waited {health_wait:?}");
    assert!(s.log_text().contains("connection limit reached"), "reaching the limit is logged");
}

/// Peak resident memory of a process (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// Attack: a flood of 25 MiB posts, without a signature or with a made-up
/// one. The unsigned ones are refused before their body is read; the
/// wrongly signed ones share a bounded budget. Memory stays bounded and
/// signed deliveries keep being acknowledged all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_big_unsigned_posts_leaves_memory_bounded_and_deliveries_flowing() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET),
            ("AUTOMATION_NO_DISPATCH", "true"),
            ("AUTOMATION_EVENT_BODY_BUDGET_MB", "64"),
        ],
    )
    .await;
    let base = s.base.clone();
    let baseline = peak_rss_mib(s.pid());
    let junk = bytes::Bytes::from(vec![b' '; 25 * 1024 * 1024]);
    let until = Instant::now() + Duration::from_secs(8);
    let mut flooders = Vec::new();
    for i in 0..12 {
        let (base, junk) = (base.clone(), junk.clone());
        flooders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut sent = 0;
            while Instant::now() < until {
                let mut req =
                    client.post(format!("{base}/v1/events/github")).header("x-github-event", "push").body(junk.clone());
                if i % 2 == 1 {
                    req = req.header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)));
                }
                if let Ok(r) = req.send().await {
                    assert!(matches!(r.status().as_u16(), 401 | 503), "a flood post was answered {}", r.status());
                }
                sent += 1;
            }
            sent
        }));
    }
    let client = reqwest::Client::new();
    let mut acked = 0;
    while Instant::now() < until {
        let body = json!({"ref": "refs/heads/main", "pad": "x".repeat(14_000)}).to_string();
        let r = client
            .post(format!("{base}/v1/events/github"))
            .header("x-github-event", "push")
            .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
            .header("x-hub-signature-256", sign(SECRET.as_bytes(), body.as_bytes()))
            .body(body)
            .send()
            .await
            .expect("signed deliveries are answered during the flood");
        assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap_or_default());
        acked += 1;
    }
    let mut flood = 0;
    for f in flooders {
        flood += f.await.unwrap();
    }
    let peak = peak_rss_mib(s.pid());
    eprintln!("flood: {flood} posts of 25 MiB, {acked} signed acknowledged, peak RSS {baseline} -> {peak} MiB");
    assert!(acked >= 20, "only {acked} signed deliveries acknowledged during the flood");
    assert!(flood >= 24, "the flood sent only {flood} posts");
    // 64 MiB of budget (bodies of known length are held once), connection
    // buffers, and the baseline.
    assert!(peak < baseline + 120, "peak RSS {peak} MiB (from {baseline} MiB) under a flood of {flood} posts");
}

/// A source over its rate gets 429 with Retry-After before its body is
/// read, and nothing of what was refused is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_rate_is_refused_and_nothing_is_stored() {
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET),
            ("AUTOMATION_NO_DISPATCH", "true"),
            ("AUTOMATION_EVENT_RATE_PER_SOURCE", "5"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let (mut accepted, mut limited) = (0, 0);
    for i in 0..30 {
        let body = json!({"ref": "refs/heads/main", "n": i}).to_string();
        let r = client
            .post(format!("{}/v1/events/github", s.base))
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("rate-{i}"))
            .header("x-hub-signature-256", sign(SECRET.as_bytes(), body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => accepted += 1,
            429 => {
                assert_eq!(r.headers()["retry-after"], "5");
                let b: serde_json::Value = r.json().await.unwrap();
                assert_eq!(b["code"], "rate_limited");
                limited += 1;
            }
            other => panic!("delivery {i} answered {other}"),
        }
    }
    assert!(limited > 0 && accepted >= 5, "{accepted} accepted, {limited} limited");
    let stored = s.get("/v1/events?source=github&limit=100").await.expect(200).body;
    assert_eq!(stored["total"], accepted, "exactly the accepted deliveries are stored");
    let metrics = s.raw(reqwest::Method::GET, "/metrics", &[], vec![]).await.expect(200).text;
    assert!(
        metrics.contains(&format!("automation_event_deliveries_total{{outcome=\"rate_limited\"}} {limited}")),
        "{metrics}"
    );
}
