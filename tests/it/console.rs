//! The web console (`/ui/`) driven in a real headless Chromium (Debian's
//! `chromium` and `chromium-driver`, through WebDriver) against the real
//! binary: sign in, create a cron automation through the form (a bad cron
//! refused at its field, the next fire times shown as it is typed), dispatch
//! it and watch the run reach `succeeded` with its output, disable it, open
//! a delivery's explanation, try a filter; then, signed in with a `read`
//! key, every page again without a single failing request and without write
//! actions. Each main page is saved as a screenshot under
//! `target/console-screenshots/` (the README's come from there).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::support::{Backend, KEY, TestServer};

const SECRET: &str = "console-webhook-secret";

struct Browser {
    driver: Child,
    client: Client,
    shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn found(name: &str, paths: &[&str]) -> String {
    paths.iter().find(|p| std::path::Path::new(p).exists()).map(|p| p.to_string()).unwrap_or_else(|| {
        panic!(
            "the console tests drive a real browser and need {name}: install the Debian packages chromium and \
             chromium-driver (`apt-get install chromium chromium-driver`; .ci/run installs them when missing)"
        )
    })
}

async fn browser() -> Browser {
    let chromium = found("chromium", &["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
    let chromedriver = found("chromedriver", &["/usr/bin/chromedriver"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let driver = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--window-size=1280,900"]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("WebDriver session with chromium");
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    Browser { driver, client, shots }
}

impl Browser {
    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Waits until the element at `css` exists and its text contains `needle`.
    async fn text(&self, css: &str, needle: &str) -> String {
        let mut last = String::new();
        for _ in 0..150 {
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                last = el.text().await.unwrap_or_default();
                if last.contains(needle) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.shot("failure").await;
        panic!(
            "{css} never contained {needle:?} (last: {last:?}); screenshot in target/console-screenshots/failure.png"
        );
    }

    async fn click(&self, css: &str) {
        self.text(css, "").await;
        self.client.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
    }

    async fn fill(&self, css: &str, value: &str) {
        self.text(css, "").await;
        let el = self.client.find(Locator::Css(css)).await.unwrap();
        el.clear().await.unwrap();
        el.send_keys(value).await.unwrap();
    }

    async fn go(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn absent(&self, css: &str) -> bool {
        self.client.find(Locator::Css(css)).await.is_err()
    }

    /// The requests that failed on this page so far (the console counts them).
    async fn failures(&self) -> String {
        let v = self
            .client
            .execute(
                "const d = document.documentElement.dataset; return (d.failedRequests || '0') + ' ' + (d.lastFailure || '')",
                vec![],
            )
            .await
            .unwrap();
        v.as_str().unwrap_or_default().trim().to_owned()
    }
}

async fn sign_in(b: &Browser, base: &str, key: &str) {
    b.go(&format!("{base}/ui/#/signin")).await;
    b.fill("#key", key).await;
    b.click("#signin").await;
    b.text("#automations", "Name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let s = TestServer::start_with(Backend::Sqlite, &[("AUTOMATION_GITHUB_WEBHOOK_SECRET", SECRET)]).await;
    let base = format!("http://127.0.0.1:{}", s.port());
    // The console's page forbids inline script and other origins.
    let page = reqwest::get(format!("{base}/ui/")).await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
    let b = browser().await;

    // Sign in, then make a cron automation through the form.
    sign_in(&b, &base, KEY).await;
    b.click("#new-automation").await;
    b.fill("#name", "hello from the console").await;
    b.fill("#schedule", "61 * * * *").await;
    b.text("#schedule-error", "trigger.schedule").await;
    b.fill("#schedule", "*/5 * * * *").await;
    b.text("#preview li:nth-child(5)", ":").await;
    assert_eq!(b.text("#schedule-error", "").await, "", "the error went once the cron was right");
    b.fill("#timezone", "Mars/Olympus").await;
    b.text("#timezone-error", "time zone").await;
    b.fill("#timezone", "Europe/Paris").await;
    b.text("#preview li:nth-child(5)", "+0").await;
    b.fill("#script", "echo hello from the console").await;
    b.shot("new-automation").await;
    b.click("#create").await;
    b.text("#next-fires li:nth-child(5)", ":").await;
    let automation_url = b.client.current_url().await.unwrap().to_string();
    b.shot("automation").await;

    // Dispatch it and watch the run succeed with its output.
    b.click("#dispatch").await;
    b.text("#run-status", "succeeded").await;
    b.text("#stdout", "hello from the console").await;
    let run_url = b.client.current_url().await.unwrap().to_string();
    b.shot("run").await;

    // Disable it.
    b.go(&automation_url).await;
    b.click("#toggle").await;
    b.text("#state", "disabled").await;

    // A delivery's explanation: which automation matched, and why the other did not.
    for (name, on) in [("on issues", "issues.*"), ("on pushes", "push")] {
        let body = json!({"name": name, "trigger": {"type": "event", "source": "github", "on": [on]},
            "preset": {"name": "script", "config": {"script": "true"}}});
        s.post("/v1/automations", body).await.expect(201);
    }
    let payload = br#"{"action": "opened", "issue": {"number": 7, "title": "console"}}"#;
    let sig = automation_host::events::signature::sign(SECRET.as_bytes(), payload);
    let ack = s
        .raw(
            reqwest::Method::POST,
            "/v1/events/github",
            &[
                ("x-github-event", "issues"),
                ("x-github-delivery", "console-1"),
                ("x-hub-signature-256", &sig),
                ("content-type", "application/json"),
            ],
            payload.to_vec(),
        )
        .await
        .expect(202);
    let delivery = ack.body["id"].as_str().unwrap().to_owned();
    b.go(&format!("{base}/ui/#/events")).await;
    b.text("#events", "console-1").await;
    b.go(&format!("{base}/ui/#/events/{delivery}")).await;
    b.text("#matched", "run").await;
    b.text("#not-matched", "matches none of").await;
    b.shot("event").await;

    // Try a filter on that delivery's payload.
    b.go(&format!("{base}/ui/#/filters?event={delivery}")).await;
    b.text("#sample", "console").await;
    b.fill("#expression", "issue.number == `7`").await;
    b.click("#evaluate").await;
    b.text("#verdict", "matches").await;
    b.fill("#expression", "issue.number ==").await;
    b.click("#evaluate").await;
    b.text("#verdict", "filter").await;
    b.go(&format!("{base}/ui/#/automations")).await;
    b.text("#automations", "on pushes").await;
    b.shot("automations").await;

    // Attack: whoever may write automations names one with markup. The
    // console shows it as text; it never runs (and the CSP would refuse
    // inline handlers anyway).
    let hostile = r#"<img src=x onerror="document.title='pwned'">"#;
    let body = json!({"name": hostile, "trigger": {"type": "manual"}, "preset": {"name": "script", "config": {"script": "true"}}});
    s.post("/v1/automations", body).await.expect(201);
    b.client.refresh().await.unwrap();
    b.text("#automations", hostile).await;
    assert_ne!(b.client.title().await.unwrap(), "pwned", "markup in a name ran in the console");
    assert!(b.absent("#automations img").await, "markup in a name became an element");

    // A read key sees every page, read-only, and no request fails.
    let viewer = s.post("/v1/api-keys", json!({"name": "viewer", "scopes": ["read"]})).await.expect(201);
    let viewer = viewer.body["key"].as_str().unwrap().to_owned();
    b.click("#signout").await;
    sign_in(&b, &base, &viewer).await;
    b.client.refresh().await.unwrap();
    b.text("#who", "viewer (read)").await;
    assert!(b.absent("#new-automation").await, "no create link for a read key");
    let pages = [
        (automation_url.clone(), "#next-fires"),
        (run_url.clone(), "#run-status"),
        (format!("{base}/ui/#/runs"), ".runs"),
        (format!("{base}/ui/#/events"), "#events"),
        (format!("{base}/ui/#/events/{delivery}"), "#matched"),
        (format!("{base}/ui/#/filters?event={delivery}"), "#sample"),
        (format!("{base}/ui/#/plugins"), "#isolation"),
        (format!("{base}/ui/#/automations"), "#automations"),
    ];
    for (url, css) in &pages {
        b.go(url).await;
        b.text(css, "").await;
        for write in ["#dispatch", "#toggle", "#delete", "#cancel", "#rerun"] {
            assert!(b.absent(write).await, "{write} is shown to a read key on {url}");
        }
    }
    // Evaluating a filter changes nothing: a read key may.
    b.go(&format!("{base}/ui/#/filters?event={delivery}")).await;
    b.text("#sample", "console").await;
    b.click("#evaluate").await;
    b.text("#verdict", "match").await;
    b.shot("filters-read-key").await;
    assert_eq!(b.failures().await, "0", "a request failed for the read key");
}
