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
pub mod prune;
pub mod pyre;

use eval::{Engine, EvalError, ExpressionCache};

use automation_plugin::Error;
use automation_plugin::filter::{Event, Filter};

/// The exported `filter` interface.
pub struct JmespathFilter;

thread_local! {
    /// Compiled expressions, kept for the life of the instance: the host may
    /// reuse an instance for many calls, and then each filter is compiled
    /// once rather than once per event.
    static COMPILED: ExpressionCache<'static> = ExpressionCache::new();
}

impl Filter for JmespathFilter {
    fn validate(expression: &str) -> Result<(), Error> {
        COMPILED.with(|cache| match &*cache.compile(Engine::global(), expression) {
            Ok(_) => Ok(()),
            Err(err) => Err(invalid_input(err.clone())),
        })
    }

    fn matches(event: &Event, expression: &str) -> Result<bool, Error> {
        Self::matches_all(event, &[expression.to_owned()]).pop().unwrap_or(Ok(false))
    }

    /// The whole batch at once: the payload is parsed once, into the
    /// engine's own value type (not `serde_json::Value`), from its text.
    fn matches_all(event: &Event, expressions: &[String]) -> Vec<Result<bool, Error>> {
        COMPILED.with(|cache| {
            Engine::global()
                .matches_cached(cache, event.payload_text(), expressions)
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

automation_plugin::export_filter!(JmespathFilter);
