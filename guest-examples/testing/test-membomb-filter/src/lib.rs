//! A deliberately broken filter: `matches` allocates and touches 1 GiB.
//!
//! The host's tests use it to check that the per-instance memory limit stops
//! a plugin (the allocation fails and the instance traps) instead of letting
//! it take the host's memory.

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({ path: "../../../wit", world: "filter-plugin" });
}

use bindings::automation::plugin::types::{Error, Event};
use bindings::exports::automation::plugin::filter::Guest;

/// 1 GiB.
const BOMB_BYTES: usize = 1 << 30;

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct MembombFilter;

impl Guest for MembombFilter {
    fn validate(_expression: String) -> Result<(), Error> {
        Ok(())
    }

    fn matches(_event: Event, expressions: Vec<String>) -> Vec<Result<bool, Error>> {
        // Filling with a non-zero byte writes every page (a zeroed allocation
        // could be satisfied without touching memory); `black_box` keeps the
        // optimiser from proving the buffer unused and dropping it.
        let bomb = vec![1u8; BOMB_BYTES];
        let bomb = core::hint::black_box(bomb);
        expressions.iter().map(|_| Ok(bomb[bomb.len() - 1] == 0)).collect()
    }
}

// Only the WebAssembly build exports the functions: their symbol names
// (`automation:plugin/...#...`) are not valid in a native linker's version
// script, and natively the crate only has to compile (and run unit tests).
#[cfg(target_arch = "wasm32")]
bindings::export!(MembombFilter with_types_in bindings);
