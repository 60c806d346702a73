//! Write automation-host plugins in Rust.
//!
//! One trait per kind of plugin, plain Rust types in and out, and one line
//! to export it:
//!
//! ```ignore
//! use automation_plugin::filter::{Event, Filter};
//! use automation_plugin::Error;
//!
//! struct Maintainers;
//!
//! impl Filter for Maintainers {
//!     fn validate(expression: &str) -> Result<(), Error> {
//!         if expression.is_empty() { Err(Error::InvalidInput("empty".into())) } else { Ok(()) }
//!     }
//!     fn matches(event: &Event, expression: &str) -> Result<bool, Error> {
//!         Ok(event.payload()?["sender"]["login"] == expression)
//!     }
//! }
//!
//! automation_plugin::export_filter!(Maintainers);
//! ```
//!
//! | kind | trait | export |
//! |---|---|---|
//! | filter | [`filter::Filter`] | [`export_filter!`] |
//! | preset | [`preset::Preset`] | [`export_preset!`] |
//! | executor | [`executor::Executor`] | [`export_executor!`] |
//! | source | [`source::Source`] | [`export_source!`] |
//!
//! The host's imports are here as plain functions: [`log`], [`clock`],
//! [`kv`] (presets and executors, when granted) and
//! [`executor::sandbox`] (executors, when granted). The crate wraps the
//! bindings `wit-bindgen` generates from the host's WIT package
//! (`automation:plugin@0.2.0`, in `wit/`); a plugin never names a WIT type.
//!
//! Build for `wasm32-wasip2` (`cargo build --release --target
//! wasm32-wasip2`); natively the export macros expand to nothing, so a
//! plugin's own unit tests run with `cargo test`.

mod convert;
pub mod executor;
pub mod filter;
pub mod preset;
pub mod source;

pub use serde_json::{self, Value};

/// The bindings of each world, generated once here. Plugins use them only
/// through this crate's types and macros.
#[doc(hidden)]
pub mod __wit {
    #![allow(missing_docs, unreachable_pub, clippy::all)]

    pub mod filter {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "filter-plugin",
            pub_export_macro: true,
            export_macro_name: "__export_filter_world",
            default_bindings_module: "automation_plugin::__wit::filter",
        });
    }
    pub mod preset {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "preset-plugin",
            pub_export_macro: true,
            export_macro_name: "__export_preset_world",
            default_bindings_module: "automation_plugin::__wit::preset",
        });
    }
    pub mod executor {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "executor-plugin",
            pub_export_macro: true,
            export_macro_name: "__export_executor_world",
            default_bindings_module: "automation_plugin::__wit::executor",
        });
    }
    pub mod source {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "source-plugin",
            pub_export_macro: true,
            export_macro_name: "__export_source_world",
            default_bindings_module: "automation_plugin::__wit::source",
        });
    }
}

/// What a plugin's call can fail with; the host shows the text to the user
/// (and retries `Unavailable` from executors with backoff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input was wrong (bad expression, bad configuration, bad request);
    /// the same input fails the same way.
    InvalidInput(String),
    /// Not allowed (an ungranted capability; for a source, a bad signature).
    Denied(String),
    /// Something outside the plugin is unavailable right now.
    Unavailable(String),
    /// The thing asked for does not exist (an unknown handle).
    NotFound(String),
    /// Anything else.
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, m) = match self {
            Error::InvalidInput(m) => ("invalid input", m),
            Error::Denied(m) => ("denied", m),
            Error::Unavailable(m) => ("unavailable", m),
            Error::NotFound(m) => ("not found", m),
            Error::Internal(m) => ("internal", m),
        };
        write!(f, "{kind}: {m}")
    }
}

impl std::error::Error for Error {}

/// A point in time (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Datetime {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Nanoseconds past `seconds`.
    pub nanoseconds: u32,
}

impl Datetime {
    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        self.seconds.saturating_mul(1000).saturating_add(i64::from(self.nanoseconds / 1_000_000))
    }
}

/// What a preset, executor or source says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Info {
    /// Short name, such as `script`.
    pub name: String,
    /// The plugin's own version (semver).
    pub version: String,
    /// One or two sentences for the plugin listing.
    pub description: String,
    /// JSON Schema (JSON text) of the configuration, if it takes one.
    pub config_schema: Option<String>,
}

impl Info {
    /// Name, version and description, no configuration schema.
    pub fn new(name: impl Into<String>, version: impl Into<String>, description: impl Into<String>) -> Info {
        Info { name: name.into(), version: version.into(), description: description.into(), config_schema: None }
    }

    /// With the JSON Schema of the configuration.
    pub fn with_config_schema(mut self, schema: impl Into<String>) -> Info {
        self.config_schema = Some(schema.into());
        self
    }
}

/// The host's log (every kind may log). Lines go to the host's log with
/// the plugin's name, and, for executors, to the run's `plugin_log`.
pub mod log {
    use crate::__wit::filter::automation::plugin::log::{Level, log};

    /// Logs at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// The host's clock (every kind may read it).
pub mod clock {
    /// Now, by the host's clock.
    pub fn now() -> crate::Datetime {
        let t = crate::__wit::filter::automation::plugin::clock::now();
        crate::Datetime { seconds: t.seconds, nanoseconds: t.nanoseconds }
    }
}

/// The plugin's own key-value state, kept by the host (presets and
/// executors granted `kv`; a plugin without the grant that uses this is
/// refused at load).
pub mod kv {
    use crate::__wit::preset::automation::plugin::kv;
    use crate::Error;

    /// The value under `key`, if any.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        kv::get(key).map_err(Into::into)
    }
    /// Sets `key` to `value`.
    pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
        kv::set(key, value).map_err(Into::into)
    }
    /// Deletes `key`; true if it was there.
    pub fn delete(key: &str) -> Result<bool, Error> {
        kv::delete(key).map_err(Into::into)
    }
    /// The keys starting with `prefix`.
    pub fn list_keys(prefix: &str) -> Result<Vec<String>, Error> {
        kv::list_keys(prefix).map_err(Into::into)
    }
}
