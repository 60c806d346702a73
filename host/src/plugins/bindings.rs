//! Host bindings generated from `wit/`, one module per world.
//!
//! The shared interfaces (`types`, `log`, `clock`, `kv`) are generated once,
//! in the filter and preset worlds, and the other worlds reuse those Rust
//! types through `with:`, so a `types::Error` is the same type everywhere.
//! Everything is synchronous: calls run on blocking threads, and a
//! synchronous call skips the fiber switch an async call costs.

#![allow(missing_docs, unreachable_pub)] // generated code

pub mod filter {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter-plugin",
        imports: { default: trappable },
    });
}

pub mod preset {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "preset-plugin",
        imports: { default: trappable },
        with: {
            "automation:plugin/types": super::filter::automation::plugin::types,
            "automation:plugin/log": super::filter::automation::plugin::log,
            "automation:plugin/clock": super::filter::automation::plugin::clock,
        },
    });
}

pub mod executor {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "executor-plugin",
        imports: { default: trappable },
        with: {
            "automation:plugin/types": super::filter::automation::plugin::types,
            "automation:plugin/log": super::filter::automation::plugin::log,
            "automation:plugin/clock": super::filter::automation::plugin::clock,
            "automation:plugin/kv": super::preset::automation::plugin::kv,
        },
    });
}

pub mod source {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "source-plugin",
        imports: { default: trappable },
        with: {
            "automation:plugin/types": super::filter::automation::plugin::types,
            "automation:plugin/log": super::filter::automation::plugin::log,
            "automation:plugin/clock": super::filter::automation::plugin::clock,
        },
    });
}

pub use executor::automation::plugin::sandbox;
pub use filter::automation::plugin::{clock, log, types};
pub use preset::automation::plugin::kv;
