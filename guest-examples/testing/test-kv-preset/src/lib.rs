//! A preset that counts its renders in the host's key-value store (the
//! `kv` capability): each `render` reads `renders`, adds one, writes it
//! back, and renders `echo <count>`. The host's tests check that the count
//! survives between calls (state lives in the database, not the instance)
//! and that `list-keys` and `delete` work.

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({
        path: "../../../wit",
        world: "preset-plugin",
    });
}

use bindings::automation::plugin::kv;
use bindings::automation::plugin::types::{Bundle, Error, File, PluginInfo};
use bindings::exports::automation::plugin::preset::Guest;

struct Counter;

impl Guest for Counter {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "counter".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Counts its renders in the kv store (tests only).".to_owned(),
            config_schema: None,
        }
    }

    fn render(_config: String) -> Result<Bundle, Error> {
        let count = match kv::get("renders")? {
            Some(bytes) => String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0),
            None => 0,
        } + 1;
        kv::set("renders", count.to_string().as_bytes())?;
        // A scratch key, to exercise list-keys and delete.
        kv::set("scratch", b"x")?;
        let keys = kv::list_keys("")?;
        let deleted = kv::delete("scratch")?;
        let script = format!("echo count={count} keys={} deleted={deleted}\n", keys.join(","));
        Ok(Bundle {
            archive: None,
            files: vec![File { path: "main.sh".to_owned(), mode: 0o755, contents: script.into_bytes() }],
            entrypoint: "sh main.sh".to_owned(),
            env: Vec::new(),
        })
    }
}

bindings::export!(Counter with_types_in bindings);
