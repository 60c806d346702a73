//! An executor that does nothing: `start` returns a handle at once and
//! `poll` reports success. The dispatch benchmark uses it to measure the
//! host's own cost per run (claims, transitions, plugin calls).

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({
        path: "../../../wit",
        world: "executor-plugin",
    });
}

use bindings::automation::plugin::types::{Bundle, Error, PluginInfo, RunContext, RunOutput, RunStatus};
use bindings::exports::automation::plugin::executor::Guest;

struct Noop;

impl Guest for Noop {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "noop".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Does nothing and succeeds (benchmarks only).".to_owned(),
            config_schema: None,
        }
    }

    fn start(ctx: RunContext, _bundle: Bundle) -> Result<String, Error> {
        Ok(ctx.run_id)
    }

    fn poll(_ctx: RunContext, _handle: String) -> Result<RunStatus, Error> {
        Ok(RunStatus::Succeeded(RunOutput {
            exit_code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
        }))
    }

    fn cancel(_ctx: RunContext, _handle: String) -> Result<(), Error> {
        Ok(())
    }
}

bindings::export!(Noop with_types_in bindings);
