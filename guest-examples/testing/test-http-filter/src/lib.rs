//! A filter that tries outbound HTTP: it imports `wasi:http/outgoing-handler`
//! (as a JavaScript runtime's component does by default) and sends a GET
//! to the expression, an authority such as `127.0.0.1:PORT`.
//!
//! Filters are never granted `http`, so the host loads it (provide, then
//! deny) and refuses every request: the verdict is an `unavailable` error
//! carrying the host's answer, and the test listening on that port sees no
//! connection. If a request ever gets through, the verdict is `true`.

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({ path: "../../../wit", world: "filter-plugin" });
}

use bindings::automation::plugin::types::{Error, Event};
use bindings::exports::automation::plugin::filter::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, OutgoingRequest, Scheme};

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct HttpFilter;

/// Sends `GET http://{authority}/` and waits for the answer.
fn get(authority: &str) -> Result<u16, String> {
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "bad scheme".to_owned())?;
    request.set_authority(Some(authority)).map_err(|()| format!("bad authority {authority:?}"))?;
    request.set_path_with_query(Some("/")).map_err(|()| "bad path".to_owned())?;
    let response = outgoing_handler::handle(request, None).map_err(|e| format!("handle: {e:?}"))?;
    response.subscribe().block();
    match response.get() {
        Some(Ok(Ok(r))) => Ok(r.status()),
        Some(Ok(Err(e))) => Err(format!("response: {e:?}")),
        Some(Err(())) => Err("response taken twice".to_owned()),
        None => Err("no response".to_owned()),
    }
}

impl Guest for HttpFilter {
    fn validate(_expression: String) -> Result<(), Error> {
        Ok(())
    }

    fn matches(_event: Event, expressions: Vec<String>) -> Vec<Result<bool, Error>> {
        expressions
            .iter()
            .map(|authority| match get(authority) {
                Ok(_) => Ok(true),
                Err(e) => Err(Error::Unavailable(e)),
            })
            .collect()
    }
}

// Only the WebAssembly build exports the functions: their symbol names
// (`automation:plugin/...#...`) are not valid in a native linker's version
// script, and natively the crate only has to compile (and run unit tests).
#[cfg(target_arch = "wasm32")]
bindings::export!(HttpFilter with_types_in bindings);
