//! The `script` preset for the automation host: turns a short configuration
//! holding an inline script into a run bundle.
//!
//! ```json
//! {"interpreter": "python3", "script": "print('hello')", "env": {"GREETING": "hi"}}
//! ```
//!
//! renders `main.py` (mode 0755) and the entrypoint `python3 main.py`. The
//! configuration rules and the rendering live in [`config`], which knows
//! nothing of WebAssembly; this file only adapts them to the `preset-plugin`
//! world.

pub mod config;

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({
        path: "../../wit",
        world: "preset-plugin",
    });
}

use bindings::automation::plugin::types::{Bundle, Error, File, PluginInfo};
use bindings::exports::automation::plugin::preset::Guest;

/// The exported `preset` interface.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct ScriptPreset;

impl Guest for ScriptPreset {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "script".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Runs an inline script with bash, sh, python3 or node; \
                          the script, its environment and an optional setup script \
                          come from the configuration."
                .to_owned(),
            config_schema: Some(config::config_schema()),
        }
    }

    fn render(config: String) -> Result<Bundle, Error> {
        let parsed = config::parse(&config).map_err(|err| Error::InvalidInput(err.to_string()))?;
        let rendered = config::render(&parsed);
        Ok(Bundle {
            // Everything the run needs is in `files`; there is nothing to unpack.
            archive: None,
            files: rendered
                .files
                .into_iter()
                .map(|file| File { path: file.path, mode: file.mode, contents: file.contents })
                .collect(),
            entrypoint: rendered.entrypoint,
            env: rendered.env,
        })
    }
}

// Only the WebAssembly build exports the functions: their symbol names
// (`automation:plugin/...#...`) are not valid in a native linker's version
// script, and natively the crate only has to compile (and run unit tests).
#[cfg(target_arch = "wasm32")]
bindings::export!(ScriptPreset with_types_in bindings);
