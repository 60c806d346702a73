//! A deliberately broken filter: `matches` panics, or, when one of the
//! expressions is `miscount`, answers no verdicts at all (its interface
//! says one per expression).
//!
//! The host's tests use it to check that a guest panic (a trap, on
//! wasm32-wasip2) is reported as an internal error, and that a filter
//! breaking its interface fails its own automations' matches, and neither
//! takes the host (or its matcher) down.

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({ path: "../../../wit", world: "filter-plugin" });
}

use bindings::automation::plugin::types::{Error, Event};
use bindings::exports::automation::plugin::filter::Guest;

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct PanicFilter;

impl Guest for PanicFilter {
    fn validate(_expression: String) -> Result<(), Error> {
        Ok(())
    }

    fn matches(event: Event, expressions: Vec<String>) -> Vec<Result<bool, Error>> {
        if expressions.iter().any(|e| e == "miscount") {
            return Vec::new();
        }
        panic!("test-panic-filter: deliberate panic in matches (event {})", event.id);
    }
}

// Only the WebAssembly build exports the functions: their symbol names
// (`automation:plugin/...#...`) are not valid in a native linker's version
// script, and natively the crate only has to compile (and run unit tests).
#[cfg(target_arch = "wasm32")]
bindings::export!(PanicFilter with_types_in bindings);
