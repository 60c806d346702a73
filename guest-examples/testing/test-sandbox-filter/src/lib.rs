//! A deliberately forbidden filter: it imports `automation:plugin/sandbox`.
//!
//! The sandbox is for executors only, so the host must refuse this component
//! when it is loaded as a filter, naming the import. The world below is the
//! filter world plus the sandbox import; `matches` calls the sandbox so that
//! the linker keeps the import.

mod bindings {
    //! Generated from the host's WIT package plus a local world.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({
        inline: r#"
            package test:sandbox-filter;

            world sandbox-filter {
                import automation:plugin/sandbox@0.2.0;
                export automation:plugin/filter@0.2.0;
            }
        "#,
        path: "../../../wit",
        world: "test:sandbox-filter/sandbox-filter",
        // The interfaces come from another package than the world's, which
        // the macro only generates when asked to.
        generate_all,
    });
}

use bindings::automation::plugin::sandbox;
use bindings::automation::plugin::types::{Error, Event};
use bindings::exports::automation::plugin::filter::Guest;

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct SandboxFilter;

impl Guest for SandboxFilter {
    fn validate(_expression: String) -> Result<(), Error> {
        Ok(())
    }

    fn matches(_event: Event, expressions: Vec<String>) -> Vec<Result<bool, Error>> {
        let created = sandbox::create_workspace();
        expressions.iter().map(|_| created.clone().map(|_| false)).collect()
    }
}

// Only the WebAssembly build exports the functions: their symbol names
// (`automation:plugin/...#...`) are not valid in a native linker's version
// script, and natively the crate only has to compile (and run unit tests).
#[cfg(target_arch = "wasm32")]
bindings::export!(SandboxFilter with_types_in bindings);
