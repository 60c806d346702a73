//! Delivery signatures, compared in constant time.
//!
//! - `hmac-sha256`: HMAC-SHA256 over the raw body, as GitHub sends it
//!   (`X-Hub-Signature-256: sha256=<hex>`); the `sha256=` prefix is optional
//!   for custom sources.
//! - `standard-webhooks` (<https://www.standardwebhooks.com>): HMAC-SHA256
//!   of `{webhook-id}.{webhook-timestamp}.{body}` keyed with the base64 part
//!   of a `whsec_` secret, base64 in `webhook-signature` as `v1,<sig>`,
//!   several space-separated during a key rotation.
//! - `slack-v0`: HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:{body}`,
//!   hex in `X-Slack-Signature` as `v0=<hex>`.
//! - `token`: a shared token in a header (GitLab's `X-Gitlab-Token`).
//!
//! The schemes with a timestamp refuse a delivery whose timestamp is more
//! than the tolerance away from now, so a captured request cannot be
//! replayed later; Standard Webhooks' `webhook-id` is the delivery id the
//! host dedups on, so it cannot be replayed sooner either.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a signature was refused (the text is the 401 detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header.
    #[error("missing signature header {0}")]
    Missing(String),
    /// Not hex, or the wrong length.
    #[error("malformed signature in {0}: expected sha256=<64 hex digits>")]
    Malformed(String),
    /// Does not match the body.
    #[error("invalid signature in {0}: it does not match the body and the configured secret")]
    Mismatch(String),
    /// A header the scheme needs is missing or malformed.
    #[error("{0}")]
    Header(String),
    /// The timestamp is too far from now.
    #[error(
        "the delivery's timestamp ({header}) is {skew} s from this host's clock, more than the {tolerance} s allowed: a replay, or a clock out of step"
    )]
    Stale {
        /// The header with the timestamp.
        header: &'static str,
        /// How far off it is, in seconds.
        skew: i64,
        /// The tolerance in seconds.
        tolerance: i64,
    },
}

/// How a custom source's deliveries are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HMAC-SHA256 of the body, hex (the default; GitHub's).
    HmacSha256,
    /// Standard Webhooks.
    StandardWebhooks,
    /// Slack's v0 request signing.
    SlackV0,
    /// A shared token in a header.
    Token,
}

impl Scheme {
    /// Every scheme.
    pub const ALL: [Scheme; 4] = [Scheme::HmacSha256, Scheme::StandardWebhooks, Scheme::SlackV0, Scheme::Token];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::HmacSha256 => "hmac-sha256",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::SlackV0 => "slack-v0",
            Scheme::Token => "token",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The header the signature (or token) comes in, unless the source names one.
    pub fn default_header(self) -> &'static str {
        match self {
            Scheme::HmacSha256 => "X-Signature-256",
            Scheme::StandardWebhooks => "webhook-signature",
            Scheme::SlackV0 => "X-Slack-Signature",
            Scheme::Token => "X-Gitlab-Token",
        }
    }
}

/// What a checked signature says about the delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// The delivery id the scheme carries (`webhook-id`), for dedup.
    pub delivery_id: Option<String>,
}

/// Checks a delivery signed with `scheme`. `header` reads a request
/// header (any case); `signature_header` is where the signature or token
/// is; `now` and `tolerance` are Unix seconds.
pub fn check(
    scheme: Scheme,
    secret: &str,
    body: &[u8],
    signature_header: &str,
    header: &dyn Fn(&str) -> Option<String>,
    now: i64,
    tolerance: i64,
) -> Result<Checked, SignatureError> {
    let required = |name: &'static str| {
        header(name)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| SignatureError::Header(format!("missing header {name}")))
    };
    let timestamp = |name: &'static str| -> Result<String, SignatureError> {
        let raw = required(name)?;
        let t: i64 = raw
            .trim()
            .parse()
            .map_err(|_| SignatureError::Header(format!("{name} must be Unix seconds, not {raw:?}")))?;
        let skew = now.saturating_sub(t);
        if skew.abs() > tolerance {
            return Err(SignatureError::Stale { header: name, skew, tolerance });
        }
        Ok(raw.trim().to_owned())
    };
    match scheme {
        Scheme::HmacSha256 => {
            verify(secret.as_bytes(), body, signature_header, header(signature_header).as_deref())?;
            Ok(Checked::default())
        }
        Scheme::StandardWebhooks => {
            let id = required("webhook-id")?;
            let ts = timestamp("webhook-timestamp")?;
            let given = header(signature_header).ok_or_else(|| SignatureError::Missing(signature_header.to_owned()))?;
            let key = match secret.strip_prefix("whsec_") {
                Some(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| SignatureError::Header("the source's whsec_ secret is not base64".into()))?,
                None => secret.as_bytes().to_vec(),
            };
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(ts.as_bytes());
            mac.update(b".");
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            // Several signatures during a key rotation: any v1 one will do.
            let any = given.split_whitespace().filter_map(|s| s.strip_prefix("v1,")).any(|sig| {
                base64::engine::general_purpose::STANDARD.decode(sig).is_ok_and(|sig| bool::from(sig.ct_eq(&expected)))
            });
            if !any {
                return Err(SignatureError::Mismatch(signature_header.to_owned()));
            }
            Ok(Checked { delivery_id: Some(id) })
        }
        Scheme::SlackV0 => {
            let ts = timestamp("X-Slack-Request-Timestamp")?;
            let given = header(signature_header).ok_or_else(|| SignatureError::Missing(signature_header.to_owned()))?;
            let hex_part = given
                .trim()
                .strip_prefix("v0=")
                .ok_or_else(|| SignatureError::Header(format!("{signature_header} must be v0=<64 hex digits>")))?;
            let given = hex::decode(hex_part).map_err(|_| SignatureError::Malformed(signature_header.to_owned()))?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
            mac.update(b"v0:");
            mac.update(ts.as_bytes());
            mac.update(b":");
            mac.update(body);
            mac.verify_slice(&given).map_err(|_| SignatureError::Mismatch(signature_header.to_owned()))?;
            Ok(Checked::default())
        }
        Scheme::Token => {
            let given = header(signature_header).ok_or_else(|| SignatureError::Missing(signature_header.to_owned()))?;
            if !bool::from(given.trim().as_bytes().ct_eq(secret.as_bytes())) {
                return Err(SignatureError::Mismatch(signature_header.to_owned()));
            }
            Ok(Checked::default())
        }
    }
}

/// Checks `header_value` (from header `header_name`) against the body.
pub fn verify(secret: &[u8], body: &[u8], header_name: &str, header_value: Option<&str>) -> Result<(), SignatureError> {
    let value = header_value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| SignatureError::Missing(header_name.to_owned()))?;
    let hex_part = value.strip_prefix("sha256=").unwrap_or(value);
    let given = hex::decode(hex_part).map_err(|_| SignatureError::Malformed(header_name.to_owned()))?;
    if given.len() != 32 {
        return Err(SignatureError::Malformed(header_name.to_owned()));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| SignatureError::Mismatch(header_name.to_owned()))
}

/// The signature header value for a body (`sha256=<hex>`), as a sender
/// computes it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_lowercase(), (*v).to_owned())).collect();
        move |name: &str| pairs.iter().find(|(k, _)| *k == name.to_lowercase()).map(|(_, v)| v.clone())
    }

    /// The example of the Standard Webhooks specification's reference
    /// libraries (secret, id, timestamp, body and signature as published).
    #[test]
    fn standard_webhooks_example_rotation_staleness_and_tampering() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let sig = "webhook-signature";
        let req = |s: &str, ts: &str| {
            headers(&[("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"), ("webhook-timestamp", ts), (sig, s)])
        };
        let at = 1_614_265_330;
        let ok = check(Scheme::StandardWebhooks, secret, body, sig, &req(good, "1614265330"), at + 10, 300).unwrap();
        assert_eq!(ok.delivery_id.as_deref(), Some("msg_p5jXN8AQM9LWM0D4loKWxJek"));
        // During a rotation the sender signs with both keys.
        let rotating = format!("v1,bm90IHRoaXMgb25l {good}");
        check(Scheme::StandardWebhooks, secret, body, sig, &req(&rotating, "1614265330"), at, 300).unwrap();
        let stale = check(Scheme::StandardWebhooks, secret, body, sig, &req(good, "1614265330"), at + 301, 300);
        assert!(matches!(stale, Err(SignatureError::Stale { skew: 301, .. })), "{stale:?}");
        // The timestamp is signed: moving it breaks the signature.
        let moved = check(Scheme::StandardWebhooks, secret, body, sig, &req(good, "1614265331"), at, 300);
        assert!(matches!(moved, Err(SignatureError::Mismatch(_))));
        let tampered =
            check(Scheme::StandardWebhooks, secret, br#"{"test": 1}"#, sig, &req(good, "1614265330"), at, 300);
        assert!(matches!(tampered, Err(SignatureError::Mismatch(_))));
        let no_id = headers(&[("webhook-timestamp", "1614265330"), (sig, good)]);
        assert!(check(Scheme::StandardWebhooks, secret, body, sig, &no_id, at, 300).is_err());
    }

    /// The example in Slack's "Verifying requests from Slack".
    #[test]
    fn slack_v0_example() {
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        let h = headers(&[("X-Slack-Request-Timestamp", "1531420618"), ("X-Slack-Signature", sig)]);
        check(Scheme::SlackV0, secret, body, "X-Slack-Signature", &h, 1_531_420_618 + 60, 300).unwrap();
        let late = check(Scheme::SlackV0, secret, body, "X-Slack-Signature", &h, 1_531_420_618 + 600, 300);
        assert!(matches!(late, Err(SignatureError::Stale { .. })));
        let wrong = check(Scheme::SlackV0, "another-secret", body, "X-Slack-Signature", &h, 1_531_420_618, 300);
        assert!(matches!(wrong, Err(SignatureError::Mismatch(_))));
    }

    #[test]
    fn tokens_compare_whole() {
        let h = headers(&[("X-Gitlab-Token", "s3cret-s3cret-s3cret")]);
        check(Scheme::Token, "s3cret-s3cret-s3cret", b"{}", "X-Gitlab-Token", &h, 0, 300).unwrap();
        assert!(check(Scheme::Token, "s3cret-s3cret-s3cret-longer", b"{}", "X-Gitlab-Token", &h, 0, 300).is_err());
        assert!(check(Scheme::Token, "s3cret", b"{}", "X-Gitlab-Token", &h, 0, 300).is_err());
        assert!(check(Scheme::Token, "x", b"{}", "X-Other", &h, 0, 300).is_err());
    }

    #[test]
    fn github_example() {
        // The example from GitHub's documentation on validating deliveries.
        let sig = sign(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(sig, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
        verify(b"It's a Secret to Everybody", b"Hello, World!", "X-Hub-Signature-256", Some(&sig)).unwrap();
        // Without the prefix and in upper case too.
        let bare = sig.trim_start_matches("sha256=").to_uppercase();
        verify(b"It's a Secret to Everybody", b"Hello, World!", "X", Some(&bare)).unwrap();
    }

    #[test]
    fn refusals() {
        let sig = sign(b"k", b"body");
        assert_eq!(verify(b"k", b"body", "H", None), Err(SignatureError::Missing("H".into())));
        assert_eq!(verify(b"k", b"body", "H", Some("sha256=zz")), Err(SignatureError::Malformed("H".into())));
        assert_eq!(verify(b"k", b"body", "H", Some("sha256=abcd")), Err(SignatureError::Malformed("H".into())));
        assert_eq!(verify(b"k", b"other", "H", Some(&sig)), Err(SignatureError::Mismatch("H".into())));
        assert_eq!(verify(b"other", b"body", "H", Some(&sig)), Err(SignatureError::Mismatch("H".into())));
    }

    /// Bounded property test (fuzz target `signature_verify`): a signature
    /// verifies for its own secret and body only; arbitrary header values
    /// never panic and never verify.
    #[test]
    fn property_signatures_verify_only_their_own_body() {
        use rand::{Rng, RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x51_6e);
        for _ in 0..300 {
            let mut secret = vec![0u8; rng.random_range(1..64)];
            let mut body = vec![0u8; rng.random_range(0..512)];
            rng.fill_bytes(&mut secret);
            rng.fill_bytes(&mut body);
            let sig = sign(&secret, &body);
            assert!(verify(&secret, &body, "H", Some(&sig)).is_ok());
            let mut other = body.clone();
            other.push(rng.random());
            assert!(verify(&secret, &other, "H", Some(&sig)).is_err());
            let junk: String = (0..rng.random_range(0..80)).map(|_| rng.random_range(0x20u8..0x7f) as char).collect();
            assert!(verify(&secret, &body, "H", Some(&junk)).is_err(), "{junk:?} verified");
        }
    }
}
