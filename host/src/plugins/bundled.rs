//! The plugins built from `guest-examples/` into this binary (see
//! `host/build.rs`), with their manifests.

use super::manifest::Manifest;

macro_rules! guest {
    ($file:literal) => {
        include_bytes!(concat!(env!("GUEST_WASM_DIR"), "/", $file))
    };
}

const BUNDLED: &[(&str, &[u8])] = &[
    (include_str!("../../../guest-examples/jmespath-filter/plugin.toml"), guest!("jmespath_filter.wasm")),
    (include_str!("../../../guest-examples/script-preset/plugin.toml"), guest!("script_preset.wasm")),
    (include_str!("../../../guest-examples/local-sandbox/plugin.toml"), guest!("local_sandbox.wasm")),
    (include_str!("../../../guest-examples/agent-server/plugin.toml"), guest!("agent_server.wasm")),
    (include_str!("../../../guest-examples/linear-source/plugin.toml"), guest!("linear_source.wasm")),
];

/// Every bundled plugin: its manifest and component bytes.
pub fn all() -> anyhow::Result<Vec<(Manifest, &'static [u8])>> {
    BUNDLED
        .iter()
        .map(|(toml_text, wasm)| {
            let manifest: Manifest =
                toml::from_str(toml_text).map_err(|e| anyhow::anyhow!("bad bundled manifest: {e}"))?;
            Ok((manifest, *wasm))
        })
        .collect()
}
