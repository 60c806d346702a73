//! A filter plugin for the automation host: decides whether an event matches
//! an automation's JMESPath filter expression.
//!
//! The semantics follow the OpenHands automation service: standard JMESPath,
//! the custom functions `glob`, `icontains`, `regex`, `lower` and `upper`,
//! and Python truthiness for the final result. The evaluation logic lives in
//! [`eval`], [`fnmatch`] and [`pyre`] (with the Python quirks in `compat`),
//! which know nothing of WebAssembly; this file only adapts them to the
//! `filter-plugin` world.

mod compat;
pub mod eval;
pub mod fnmatch;
pub mod pyre;

use eval::{Engine, EvalError, ExpressionCache};

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({
        path: "../../wit",
        world: "filter-plugin",
    });
}

use bindings::automation::plugin::types::{Error, Event};
use bindings::exports::automation::plugin::filter::Guest;

/// The exported `filter` interface.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct JmespathFilter;

thread_local! {
    /// Compiled expressions, kept for the life of the instance: the host may
    /// reuse an instance for many calls, and then each filter is compiled
    /// once rather than once per event.
    static COMPILED: ExpressionCache<'static> = ExpressionCache::new();
}

impl Guest for JmespathFilter {
    fn validate(expression: String) -> Result<(), Error> {
        COMPILED.with(|cache| match &*cache.compile(Engine::global(), &expression) {
            Ok(_) => Ok(()),
            Err(err) => Err(invalid_input(err.clone())),
        })
    }

    fn matches(event: Event, expressions: Vec<String>) -> Vec<Result<bool, Error>> {
        COMPILED.with(|cache| {
            Engine::global()
                .matches_cached(cache, &event.payload, &expressions)
                .into_iter()
                .map(|result| result.map_err(invalid_input))
                .collect()
        })
    }
}

/// Every failure of this plugin is caused by its input (the expression or
/// the payload), so it is reported as `invalid-input`.
fn invalid_input(err: EvalError) -> Error {
    Error::InvalidInput(err.to_string())
}

// Only the WebAssembly build exports the functions: their symbol names
// (`automation:plugin/...#...`) are not valid in a native linker's version
// script, and natively the crate only has to compile (and run unit tests).
#[cfg(target_arch = "wasm32")]
bindings::export!(JmespathFilter with_types_in bindings);
