//! Presets: turn a short configuration into a bundle.

use crate::{Error, Info, Value};

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Path relative to the bundle root; no `..`, not absolute.
    pub path: String,
    /// Unix permission bits (0o644, 0o755).
    pub mode: u32,
    /// The bytes.
    pub contents: Vec<u8>,
}

/// The code a run executes, built up step by step:
///
/// ```
/// use automation_plugin::preset::Bundle;
/// let b = Bundle::new("./main.sh").file("main.sh", 0o755, "echo hi\n").env("GREETING", "hi");
/// assert_eq!(b.entrypoint, "./main.sh");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bundle {
    /// A gzip-compressed tar archive, unpacked first.
    pub archive: Option<Vec<u8>>,
    /// Files written after the archive (they win on conflict).
    pub files: Vec<File>,
    /// The command to run from the bundle root; words split on whitespace.
    pub entrypoint: String,
    /// Extra environment variables for the run.
    pub env: Vec<(String, String)>,
}

impl Bundle {
    /// A bundle that runs `entrypoint`, with nothing in it yet.
    pub fn new(entrypoint: impl Into<String>) -> Bundle {
        Bundle { entrypoint: entrypoint.into(), ..Bundle::default() }
    }

    /// Adds a file.
    pub fn file(mut self, path: impl Into<String>, mode: u32, contents: impl Into<Vec<u8>>) -> Bundle {
        self.files.push(File { path: path.into(), mode, contents: contents.into() });
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Bundle {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets the archive unpacked before the files.
    pub fn archive(mut self, tar_gz: Vec<u8>) -> Bundle {
        self.archive = Some(tar_gz);
        self
    }
}

/// A preset plugin.
pub trait Preset {
    /// Name, version, description and configuration schema.
    fn describe() -> Info;

    /// Renders a bundle from the automation's configuration (parsed from
    /// JSON by the SDK; text that is not JSON never gets here). Called when
    /// an automation is saved, to check it, and again for each run.
    fn render(config: &Value) -> Result<Bundle, Error>;
}

type W = crate::__wit::preset::automation::plugin::types::Error;

#[doc(hidden)]
pub fn __describe<P: Preset>() -> crate::__wit::preset::automation::plugin::types::PluginInfo {
    P::describe().into()
}

#[doc(hidden)]
pub fn __render<P: Preset>(config: String) -> Result<crate::__wit::preset::automation::plugin::types::Bundle, W> {
    let config: Value = serde_json::from_str(&config)
        .map_err(|e| Error::InvalidInput(format!("the configuration is not valid JSON: {e}")))?;
    P::render(&config).map(Into::into).map_err(Into::into)
}

/// Exports a [`Preset`]: `automation_plugin::export_preset!(MyPreset);`.
#[macro_export]
macro_rules! export_preset {
    ($preset:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __AutomationPluginPreset;
            impl $crate::__wit::preset::exports::automation::plugin::preset::Guest for __AutomationPluginPreset {
                fn describe() -> $crate::__wit::preset::automation::plugin::types::PluginInfo {
                    $crate::preset::__describe::<$preset>()
                }
                fn render(
                    config: ::std::string::String,
                ) -> ::core::result::Result<
                    $crate::__wit::preset::automation::plugin::types::Bundle,
                    $crate::__wit::preset::automation::plugin::types::Error,
                > {
                    $crate::preset::__render::<$preset>(config)
                }
            }
    $crate::__wit::preset::__export_preset_world!(__AutomationPluginPreset with_types_in $crate::__wit::preset);
        };
    };
}
