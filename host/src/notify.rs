//! Completion notifications: when a run of an automation with a `notify`
//! target ends in a status it lists, the host POSTs a Standard Webhooks
//! message (<https://www.standardwebhooks.com>) there: `webhook-id` (the
//! notification's id, the same on every retry), `webhook-timestamp` (Unix
//! seconds) and `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of
//! `{id}.{timestamp}.{body}` with the target's secret). The message is
//! queued with the run's final status (`store/notifications.rs`), so none
//! is lost, and retried with exponential backoff and jitter until the
//! receiver answers 2xx or `AUTOMATION_NOTIFY_ATTEMPTS` are spent; each
//! attempt is recorded on the run.
//!
//! The URL is chosen by whoever may write automations, so it must not be a
//! way into the host's network: a name is resolved by the notifier itself
//! and only public addresses are used (a name that resolves, or is
//! re-pointed, to loopback, a private network, link-local or a metadata
//! address is refused); a literal internal address is refused before any
//! connection; redirects are not followed. `AUTOMATION_NOTIFY_ALLOWED_HOSTS`
//! lists internal addresses the operator wants reachable.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::model::NotifyTarget;
use crate::plugins::http_policy::is_internal;
use crate::store::{Attempt, DueNotification, Store};

/// Longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Notifications sent at once.
const PARALLEL: usize = 8;

/// Why a target is refused when an automation is saved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

/// An internal address the operator lets notifications reach, with its
/// port if the entry names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The address.
    pub ip: IpAddr,
    /// The port, if only one.
    pub port: Option<u16>,
}

/// Parses `AUTOMATION_NOTIFY_ALLOWED_HOSTS`: comma-separated addresses,
/// each optionally with a port (`127.0.0.1:9000`, `[::1]:9000`, `10.0.0.5`).
pub fn parse_allowed(text: &str) -> Result<Vec<Allowed>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if let Ok(sa) = s.parse::<SocketAddr>() {
                return Ok(Allowed { ip: sa.ip(), port: Some(sa.port()) });
            }
            let bare = s.trim_start_matches('[').trim_end_matches(']');
            bare.parse::<IpAddr>().map(|ip| Allowed { ip, port: None }).map_err(|_| {
                format!("AUTOMATION_NOTIFY_ALLOWED_HOSTS: {s:?} is not an address (names are never internal here)")
            })
        })
        .collect()
}

/// Checks a target when an automation is saved: an http(s) URL with a
/// host and no credentials, statuses that are final, a secret of 16 to 200
/// characters.
pub fn check_target(t: &NotifyTarget) -> Result<(), TargetError> {
    let bad = |m: String| Err(TargetError(m));
    if t.url.len() > 2000 {
        return bad("notify.url is longer than 2000 bytes".into());
    }
    let url = match reqwest::Url::parse(&t.url) {
        Ok(u) => u,
        Err(e) => return bad(format!("notify.url: {e}")),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return bad(format!("notify.url must be http or https (got {})", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return bad("notify.url needs a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("notify.url must not carry credentials; the signature authenticates the host".into());
    }
    if t.on.is_empty() || t.on.iter().any(|s| !s.is_final()) {
        return bad("notify.on must list final statuses (succeeded, failed, timed_out, cancelled, skipped)".into());
    }
    let n = t.secret.0.chars().count();
    if !(16..=200).contains(&n) || t.secret.0.chars().any(char::is_control) {
        return bad("notify.secret must be 16 to 200 characters (whsec_ and base64, or any text)".into());
    }
    Ok(())
}

/// The `webhook-signature` of a message: `v1,` and the base64 HMAC-SHA256
/// of `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// The delay before attempt `attempts + 1`: 1 s doubling, at most an hour,
/// plus up to a quarter of jitter so receivers that failed together are
/// not retried together.
pub fn retry_delay(base: Duration, attempts: u32) -> Duration {
    let d = base.saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1))).min(MAX_DELAY);
    d + d.mul_f64(rand::random::<f64>() / 4.0)
}

/// Resolves names to their public addresses only, plus the internal ones
/// allowed for the port being connected to.
struct PublicOnly {
    allowed: Vec<IpAddr>,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> =
                found.into_iter().filter(|a| !is_internal(a.ip()) || allowed.contains(&a.ip())).collect();
            if usable.is_empty() {
                return Err(format!(
                    "{host} resolves only to internal addresses (list one in AUTOMATION_NOTIFY_ALLOWED_HOSTS to allow it)"
                )
                .into());
            }
            Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What the notifier needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Attempts before a notification is given up.
    pub attempts: u32,
    /// Internal addresses it may reach.
    pub allowed: Vec<Allowed>,
    /// First retry delay.
    pub retry_base: Duration,
    /// The host's base URL (for the run's link in the message).
    pub public_url: String,
}

/// The notifier of one host.
pub struct Notifier {
    store: Store,
    metrics: Arc<Metrics>,
    settings: Settings,
}

/// Why an attempt did not deliver.
enum Failure {
    /// Worth trying again later (the receiver's status, if it answered).
    Retry(String, Option<u16>),
    /// No retry would make it work.
    Permanent(String),
}

impl Notifier {
    /// A notifier.
    pub fn new(store: Store, metrics: Arc<Metrics>, settings: Settings) -> Notifier {
        Notifier { store, metrics, settings }
    }

    /// A client for one attempt at `url`: its resolver knows which internal
    /// addresses are allowed for the URL's port (a client per attempt,
    /// because reqwest's resolver is not told the port; notifications are
    /// few).
    fn client_for(&self, url: &reqwest::Url) -> Result<reqwest::Client, reqwest::Error> {
        let port = url.port_or_known_default();
        let allowed =
            self.settings.allowed.iter().filter(|a| a.port.is_none_or(|p| Some(p) == port)).map(|a| a.ip).collect();
        reqwest::Client::builder()
            .dns_resolver(Arc::new(PublicOnly { allowed }))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("automation-host/", env!("CARGO_PKG_VERSION")))
            .build()
    }

    /// Sends due notifications until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            let now = crate::model::now();
            let lease = now + chrono::Duration::seconds(60);
            let wait = match self.store.claim_notifications(now, lease, 32).await {
                Ok(due) => {
                    backoff.reset();
                    let busy = !due.is_empty();
                    futures::stream::iter(due).for_each_concurrent(PARALLEL, |d| self.deliver(d)).await;
                    if busy { Duration::from_millis(50) } else { Duration::from_millis(500) }
                }
                Err(e) => {
                    self.metrics.background_errors.add("notifier", 1);
                    tracing::warn!(error = %e, "claiming notifications failed; backing off");
                    backoff.next_delay()
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn deliver(&self, due: DueNotification) {
        let attempts = due.attempts + 1;
        let outcome = match self.attempt(&due).await {
            Ok(status_code) => Attempt::Delivered { status_code },
            Err(Failure::Retry(error, status_code)) => {
                let retry_at = (attempts < self.settings.attempts).then(|| {
                    let d = retry_delay(self.settings.retry_base, attempts);
                    crate::model::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(1))
                });
                Attempt::Failed { error, status_code, retry_at }
            }
            Err(Failure::Permanent(error)) => Attempt::Failed { error, status_code: None, retry_at: None },
        };
        let label = match &outcome {
            Attempt::Delivered { .. } => "delivered",
            Attempt::Failed { retry_at: Some(_), .. } => "retried",
            Attempt::Failed { retry_at: None, .. } => "failed",
        };
        self.metrics.notifications.add(label, 1);
        if let Attempt::Failed { error, retry_at, .. } = &outcome {
            tracing::warn!(notification.id = %due.id, run.id = %due.run_id, attempts, error, retry = retry_at.is_some(), "a run notification was not delivered");
        }
        if let Err(e) = self.store.record_notification(due.id, attempts, &outcome).await {
            // The lease runs out and it is tried again: at least once.
            tracing::warn!(notification.id = %due.id, error = %e, "cannot record a notification attempt");
        }
    }

    /// One POST: the receiver's 2xx status, or why not.
    async fn attempt(&self, due: &DueNotification) -> Result<u16, Failure> {
        let store_err = |e: crate::store::Error| Failure::Retry(format!("cannot read the run: {e}"), None);
        let run = self.store.get_run(due.run_id).await.map_err(store_err)?;
        let Some(run) = run else { return Err(Failure::Permanent("the run no longer exists".into())) };
        let automation = self.store.get_automation_any(run.automation_id).await.map_err(store_err)?;
        let Some((automation, _)) = automation else {
            return Err(Failure::Permanent("the automation no longer exists".into()));
        };
        let Some(target) = &automation.notify else {
            return Err(Failure::Permanent("the automation no longer has a notify target".into()));
        };
        let url = reqwest::Url::parse(&target.url).map_err(|e| Failure::Permanent(format!("notify.url: {e}")))?;
        if let Some(ip) = literal_ip(&url)
            && is_internal(ip)
            && !self
                .settings
                .allowed
                .iter()
                .any(|a| a.ip == ip && a.port.is_none_or(|p| Some(p) == url.port_or_known_default()))
        {
            return Err(Failure::Permanent(format!(
                "refused: {ip} is an internal address (list it in AUTOMATION_NOTIFY_ALLOWED_HOSTS to allow it)"
            )));
        }
        let body = json!({
            "type": "run.finished",
            "timestamp": crate::model::now(),
            "data": {
                "run_id": run.id,
                "automation_id": automation.id,
                "automation_name": automation.name,
                "status": run.status,
                "error": run.error,
                "exit_code": run.output.as_ref().and_then(|o| o.exit_code),
                "trigger": run.trigger.kind,
                "created_at": run.created_at,
                "started_at": run.started_at,
                "finished_at": run.finished_at,
                "url": format!("{}/v1/runs/{}", self.settings.public_url.trim_end_matches('/'), run.id),
            }
        })
        .to_string();
        let id = due.id.to_string();
        let ts = chrono::Utc::now().timestamp();
        let signature = sign(&target.key(), &id, ts, body.as_bytes());
        let client =
            self.client_for(&url).map_err(|e| Failure::Retry(format!("cannot make an HTTP client: {e}"), None))?;
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
            Ok(r) => Err(Failure::Retry(format!("the receiver answered {}", r.status()), Some(r.status().as_u16()))),
            Err(e) => Err(Failure::Retry(format!("cannot reach the receiver: {}", error_chain(&e)), None)),
        }
    }
}

/// The URL's host as an address, when it is one.
fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    url.host_str()?.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RunStatus, WriteOnly};

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification's test vectors.
        let key = base64::engine::general_purpose::STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let t = NotifyTarget {
            url: "x".into(),
            on: vec![],
            secret: WriteOnly("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        };
        assert_eq!(t.key(), key);
    }

    #[test]
    fn targets_are_checked_and_delays_grow_bounded() {
        let t = |url: &str, on: Vec<RunStatus>, secret: &str| {
            check_target(&NotifyTarget { url: url.into(), on, secret: WriteOnly(secret.into()) })
        };
        let ok = "0123456789abcdef";
        assert!(t("https://hooks.example.com/x", vec![RunStatus::Failed], ok).is_ok());
        assert!(t("ftp://x", vec![RunStatus::Failed], ok).unwrap_err().0.contains("http or https"));
        assert!(t("https://u:p@x/", vec![RunStatus::Failed], ok).unwrap_err().0.contains("credentials"));
        assert!(t("https://x/", vec![RunStatus::Running], ok).unwrap_err().0.contains("final"));
        assert!(t("https://x/", vec![RunStatus::Failed], "short").unwrap_err().0.contains("16 to 200"));
        assert_eq!(parse_allowed("127.0.0.1:9000, ::1").unwrap()[1].ip, "::1".parse::<IpAddr>().unwrap());
        assert!(parse_allowed("localhost").is_err());
        let base = Duration::from_secs(1);
        assert!(retry_delay(base, 1) >= base && retry_delay(base, 1) <= base.mul_f64(1.25));
        assert!(retry_delay(base, 40) <= MAX_DELAY.mul_f64(1.25));
    }
}
