//! A source plugin for Linear webhooks.
//!
//! Linear signs each delivery with HMAC-SHA256 over the raw body, keyed
//! with the webhook's signing secret, hex-encoded in `Linear-Signature`; it
//! names the delivery in `Linear-Delivery` and puts the send time (Unix
//! milliseconds) in the body's `webhookTimestamp`, which receivers should
//! hold within a minute of their clock to refuse replays
//! (<https://linear.app/developers/webhooks>). The event key is
//! `{type}.{action}` as Linear spells them: `Issue.create`,
//! `Comment.update`, `IssueLabel.remove`.
//!
//! A self-hoster uses it with
//! `POST /v1/sources {"name": "linear", "plugin": "linear", "secret": "<signing secret>"}`
//! and points Linear at `/v1/events/linear`.

use automation_plugin::source::{Outcome, Request, Source};
use automation_plugin::{Error, Info};
use hmac::{Hmac, Mac};

/// How far `webhookTimestamp` may be from the host's clock: Linear's advice.
pub const TOLERANCE_MS: i64 = 60_000;

/// What a request is, without the WIT types (so native tests can call it).
#[derive(Debug, PartialEq, Eq)]
pub struct Read {
    /// `{type}.{action}`, or `{type}` without an action.
    pub key: Option<String>,
    /// `Linear-Delivery`.
    pub delivery_id: Option<String>,
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A missing or wrong signature, or a stale timestamp: not from Linear, now.
    Denied(String),
    /// Signed, but not something Linear sends.
    Invalid(String),
}

/// Verifies and reads one request; `now_ms` is the host's clock.
pub fn read(headers: &[(String, String)], body: &[u8], secret: &str, now_ms: i64) -> Result<Read, Refusal> {
    let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim());
    let signature =
        header("linear-signature").ok_or_else(|| Refusal::Denied("missing Linear-Signature header".into()))?;
    let signature =
        hex::decode(signature).map_err(|_| Refusal::Denied("Linear-Signature is not a hex digest".into()))?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| Refusal::Denied("Linear-Signature does not match the body and this source's secret".into()))?;
    let payload: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Refusal::Invalid(format!("the body is not JSON: {e}")))?;
    let Some(object) = payload.as_object() else {
        return Err(Refusal::Invalid("the body is not a JSON object".into()));
    };
    let sent = object
        .get("webhookTimestamp")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| Refusal::Denied("no webhookTimestamp: cannot tell a replay from a fresh delivery".into()))?;
    let skew = now_ms.saturating_sub(sent);
    if skew.abs() > TOLERANCE_MS {
        return Err(Refusal::Denied(format!(
            "webhookTimestamp is {} s from this host's clock (more than {} s): a replay, or a clock out of step",
            skew / 1000,
            TOLERANCE_MS / 1000
        )));
    }
    let text = |k: &str| object.get(k).and_then(serde_json::Value::as_str).filter(|s| !s.is_empty());
    let key = match (text("type"), text("action")) {
        (Some(t), Some(a)) => Some(format!("{t}.{a}")),
        (Some(t), None) => Some(t.to_owned()),
        _ => None,
    };
    Ok(Read { key, delivery_id: header("linear-delivery").map(str::to_owned) })
}

struct Linear;

impl Source for Linear {
    fn describe() -> Info {
        Info::new(
            "linear",
            env!("CARGO_PKG_VERSION"),
            "Verifies Linear webhooks (Linear-Signature, webhookTimestamp within 60 s); keys them \
             `{type}.{action}`, such as Issue.create.",
        )
    }

    fn verify(request: &Request, secret: &str) -> Result<Outcome, Error> {
        let now = automation_plugin::clock::now().unix_millis();
        match read(&request.headers, &request.body, secret, now) {
            // The body is stored as it came: no payload to copy back.
            Ok(r) => Ok(Outcome::Deliver { key: r.key, delivery_id: r.delivery_id, payload: None }),
            Err(Refusal::Denied(m)) => Err(Error::Denied(m)),
            Err(Refusal::Invalid(m)) => Err(Error::InvalidInput(m)),
        }
    }
}

automation_plugin::export_source!(Linear);

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "lin_wh_test_secret_0123456789";

    fn sign(body: &[u8]) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn headers(sig: &str) -> Vec<(String, String)> {
        vec![
            ("linear-signature".into(), sig.into()),
            ("linear-delivery".into(), "234d1a4e-b617-4388-90fe-adc3633d6b72".into()),
            ("linear-event".into(), "Issue".into()),
        ]
    }

    const NOW: i64 = 1_676_056_940_508;

    fn body(extra: &str) -> Vec<u8> {
        format!(r#"{{"action":"create","type":"Issue","data":{{"id":"x"}},"webhookTimestamp":{NOW}{extra}}}"#)
            .into_bytes()
    }

    #[test]
    fn a_signed_fresh_delivery_is_keyed_type_dot_action() {
        let b = body("");
        let r = read(&headers(&sign(&b)), &b, SECRET, NOW + 5_000).unwrap();
        assert_eq!(r.key.as_deref(), Some("Issue.create"));
        assert_eq!(r.delivery_id.as_deref(), Some("234d1a4e-b617-4388-90fe-adc3633d6b72"));
    }

    #[test]
    fn wrong_missing_or_stale_is_denied_and_garbage_invalid() {
        let b = body("");
        let denied = |r: Result<Read, Refusal>| matches!(r, Err(Refusal::Denied(_)));
        assert!(denied(read(&headers(&sign(b"other")), &b, SECRET, NOW)));
        assert!(denied(read(&headers("zz"), &b, SECRET, NOW)));
        assert!(denied(read(&[], &b, SECRET, NOW)));
        assert!(denied(read(&headers(&sign(&b)), &b, SECRET, NOW + 61_000)));
        assert!(denied(read(&headers(&sign(&b)), &b, SECRET, NOW - 61_000)));
        let not_json = b"nope".to_vec();
        assert!(matches!(read(&headers(&sign(&not_json)), &not_json, SECRET, NOW), Err(Refusal::Invalid(_))));
    }
}
