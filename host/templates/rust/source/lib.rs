//! {{name}}: a source plugin for automation-host.
//!
//! Reads a provider that sends a shared token: the `x-webhook-token`
//! header must equal the source's secret (compared in constant time), the
//! event key is the body's `type` field, the delivery id the
//! `x-delivery-id` header. Change `verify` for your provider's signature
//! scheme (most sign the raw body with HMAC-SHA256: add the `hmac` and
//! `sha2` crates).

use automation_plugin::source::{Outcome, Request, Source};
use automation_plugin::{Error, Info, Value};
use subtle::ConstantTimeEq;

pub struct TokenSource;

impl Source for TokenSource {
    fn describe() -> Info {
        Info::new("{{name}}", env!("CARGO_PKG_VERSION"), "A shared token in x-webhook-token; key from `type`.")
    }

    fn verify(request: &Request, secret: &str) -> Result<Outcome, Error> {
        let token = request.header("x-webhook-token").ok_or_else(|| Error::Denied("missing x-webhook-token".into()))?;
        if !bool::from(token.as_bytes().ct_eq(secret.as_bytes())) {
            return Err(Error::Denied("x-webhook-token is not this source's secret".into()));
        }
        let body: Value = serde_json::from_slice(&request.body)
            .map_err(|e| Error::InvalidInput(format!("the body is not JSON: {e}")))?;
        Ok(Outcome::Deliver {
            key: body.get("type").and_then(Value::as_str).map(str::to_owned),
            delivery_id: request.header("x-delivery-id").map(str::to_owned),
            // Store the body as it came.
            payload: None,
        })
    }
}

automation_plugin::export_source!(TokenSource);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: &str) -> Request {
        Request {
            headers: vec![("x-webhook-token".into(), token.into()), ("x-delivery-id".into(), "d-1".into())],
            body: br#"{"type": "order.created"}"#.to_vec(),
        }
    }

    #[test]
    fn the_token_is_checked_and_the_key_read() {
        let ok = TokenSource::verify(&request("s3cret"), "s3cret").unwrap();
        assert!(matches!(ok, Outcome::Deliver { key: Some(k), .. } if k == "order.created"));
        assert!(matches!(TokenSource::verify(&request("nope"), "s3cret"), Err(Error::Denied(_))));
    }
}
