//! A source plugin that does what the request's `x-misbehave` header says:
//! `panic`, `spin` (never returns), `reply` (a handshake answer),
//! `bad-reply` (a redirect, which the host must not pass on), `not-json`
//! (a payload that is not JSON), `long-key` (a 300-character key); anything
//! else delivers the body under the key `test.event`, with the
//! `x-delivery` header as its id. It checks no signature: the host's tests
//! use it to see that whatever a source plugin does fails only the request.

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({ path: "../../../wit", world: "source-plugin" });
}

use bindings::automation::plugin::types::{Error, PluginInfo};
use bindings::exports::automation::plugin::source::{Delivery, Guest, Outcome, Reply, Request};

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct BadSource;

impl Guest for BadSource {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "test-bad-source".into(),
            version: "0.1.0".into(),
            description: "misbehaves on request".into(),
            config_schema: None,
        }
    }

    fn verify(request: Request, _secret: String) -> Result<Outcome, Error> {
        let header = |name: &str| request.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let deliver = |key: String, payload: Option<String>| {
            Ok(Outcome::Deliver(Delivery { key: Some(key), delivery_id: header("x-delivery"), payload }))
        };
        match header("x-misbehave").as_deref() {
            Some("panic") => panic!("test-bad-source: deliberate panic"),
            Some("spin") => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("reply") => Ok(Outcome::Reply(Reply {
                status: 200,
                content_type: "text/plain".into(),
                body: "challenge-accepted".into(),
            })),
            Some("bad-reply") => {
                Ok(Outcome::Reply(Reply { status: 302, content_type: "text/html".into(), body: "<script>".into() }))
            }
            Some("not-json") => deliver("test.event".into(), Some("not json".into())),
            Some("long-key") => deliver("k".repeat(300), None),
            Some("denied") => Err(Error::Denied("test-bad-source: signature refused".into())),
            _ => deliver("test.event".into(), None),
        }
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(BadSource with_types_in bindings);
