//! A deliberately forbidden filter: it imports `wasi:http/outgoing-handler`.
//!
//! Filters are never granted outbound HTTP, so the host must refuse this
//! component when it is loaded, naming the import. It only has to contain
//! the import; `matches` calls it so that the linker keeps it.

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({ path: "../../../wit", world: "filter-plugin" });
}

use bindings::automation::plugin::types::{Error, Event};
use bindings::exports::automation::plugin::filter::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, OutgoingRequest};

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct HttpFilter;

impl Guest for HttpFilter {
    fn validate(_expression: String) -> Result<(), Error> {
        Ok(())
    }

    fn matches(_event: Event, expressions: Vec<String>) -> Vec<Result<bool, Error>> {
        let request = OutgoingRequest::new(Fields::new());
        let sent = outgoing_handler::handle(request, None).is_ok();
        expressions.iter().map(|_| Ok(sent)).collect()
    }
}

// Only the WebAssembly build exports the functions: their symbol names
// (`automation:plugin/...#...`) are not valid in a native linker's version
// script, and natively the crate only has to compile (and run unit tests).
#[cfg(target_arch = "wasm32")]
bindings::export!(HttpFilter with_types_in bindings);
