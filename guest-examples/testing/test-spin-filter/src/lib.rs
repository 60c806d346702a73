//! A deliberately broken filter: `matches` never returns.
//!
//! The host's tests use it to check that a runaway plugin is interrupted by
//! the per-call time limit instead of holding a worker forever.

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({ path: "../../../wit", world: "filter-plugin" });
}

use bindings::automation::plugin::types::{Error, Event};
use bindings::exports::automation::plugin::filter::Guest;

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct SpinFilter;

impl Guest for SpinFilter {
    fn validate(_expression: String) -> Result<(), Error> {
        Ok(())
    }

    fn matches(_event: Event, _expressions: Vec<String>) -> Vec<Result<bool, Error>> {
        // `black_box` hides the counter from the optimiser, so the loop stays
        // a real busy loop rather than being folded into a trap or removed.
        let mut counter: u64 = 0;
        loop {
            counter = core::hint::black_box(counter.wrapping_add(1));
        }
    }
}

// Only the WebAssembly build exports the functions: their symbol names
// (`automation:plugin/...#...`) are not valid in a native linker's version
// script, and natively the crate only has to compile (and run unit tests).
#[cfg(target_arch = "wasm32")]
bindings::export!(SpinFilter with_types_in bindings);
