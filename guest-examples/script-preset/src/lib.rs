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

use automation_plugin::preset::{Bundle, Preset};
use automation_plugin::{Error, Info, Value};

/// The exported `preset` interface.
pub struct ScriptPreset;

impl Preset for ScriptPreset {
    fn describe() -> Info {
        Info::new(
            "script",
            env!("CARGO_PKG_VERSION"),
            "Runs an inline script with bash, sh, python3 or node; the script, its environment and an \
             optional setup script come from the configuration.",
        )
        .with_config_schema(config::config_schema())
    }

    fn render(config: &Value) -> Result<Bundle, Error> {
        let parsed = config::from_value(config).map_err(|err| Error::InvalidInput(err.to_string()))?;
        let rendered = config::render(&parsed);
        // Everything the run needs is in `files`; there is nothing to unpack.
        let mut bundle = Bundle::new(rendered.entrypoint);
        for file in rendered.files {
            bundle = bundle.file(file.path, file.mode, file.contents);
        }
        bundle.env = rendered.env;
        Ok(bundle)
    }
}

automation_plugin::export_preset!(ScriptPreset);
