//! Guests built against an older `automation:plugin` release, served by
//! this host's current bindings.
//!
//! A component names every interface it imports or exports with its
//! package version (`automation:plugin/filter@0.1.0`), and the host's
//! bindings look for the current one (`@0.2.0`). 0.2.0 only *added* to
//! 0.1.0 (the `source` interface and world); every 0.1.0 interface is the
//! same in 0.2.0, type for type, so the adapter for a 0.1.0 guest is to
//! read its names as 0.2.0 ones. The names are rewritten in place (the
//! versions have the same length, so no size or offset moves) in a copy of
//! the bytes; the digest that grants pin is the original's. Wasmtime still
//! type-checks every import and export when the component is linked, so if
//! a later release changed an interface, a guest adapted this way would be
//! refused at load with the mismatch named, never run against the wrong
//! shape: such a release needs a real adapter (host functions converting
//! between the two versions' types) beside this table.
//!
//! The frozen 0.1.0 WIT is kept in `wit/v0.1.0/`, and a component built
//! from it before 0.2.0 existed is committed under `tests/fixtures/` and
//! tested to load and decide as the current build does.

use std::borrow::Cow;

use super::inspect::Inventory;
use super::manifest::{OLDER_WIT_VERSIONS, WIT_VERSION};

/// The `automation:plugin` version a component targets, read from its
/// top-level names; `None` when it names none of this host's interfaces.
pub(super) fn wit_version<'a>(wasm: &'a [u8], inv: &Inventory) -> Result<Option<&'a str>, String> {
    let mut found: Option<&str> = None;
    for span in &inv.plugin_name_spans {
        let name = std::str::from_utf8(&wasm[span.clone()]).map_err(|_| "an interface name is not UTF-8".to_owned())?;
        let version = name.split_once('@').map_or("", |(_, v)| v);
        match found {
            None => found = Some(version),
            Some(v) if v == version => {}
            Some(v) => {
                return Err(format!(
                    "names automation:plugin interfaces of two versions ({} and {}): build against one release",
                    show(v),
                    show(version)
                ));
            }
        }
    }
    Ok(found)
}

fn show(v: &str) -> &str {
    if v.is_empty() { "unversioned" } else { v }
}

/// The component as the current bindings can link it: borrowed unchanged
/// when it targets the current release (or none), a renamed copy when it
/// targets an older release this host still serves.
pub(super) fn to_current<'a>(wasm: &'a [u8], inv: &Inventory) -> Result<Cow<'a, [u8]>, String> {
    let Some(version) = wit_version(wasm, inv)? else {
        return Ok(Cow::Borrowed(wasm));
    };
    if version == WIT_VERSION {
        return Ok(Cow::Borrowed(wasm));
    }
    if !OLDER_WIT_VERSIONS.contains(&version) {
        // `Runtime::load` refuses unsupported versions with the reason
        // before it gets here; this is the backstop.
        return Err(format!("targets automation:plugin@{}, which this host cannot adapt", show(version)));
    }
    debug_assert_eq!(version.len(), WIT_VERSION.len(), "a same-length rename only");
    let mut out = wasm.to_vec();
    for span in &inv.plugin_name_spans {
        let at = span.end - version.len();
        out[at..span.end].copy_from_slice(WIT_VERSION.as_bytes());
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::inspect::inventory;

    fn component(version: &str, other: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(component
                (import "automation:plugin/log@{version}" (instance))
                (import "wasi:cli/stdout@0.2.3" (instance))
                (component $c)
                (instance $i (instantiate $c))
                (instance $e)
                (export "automation:plugin/filter@{other}" (instance $e))
            )"#
        ))
        .unwrap()
    }

    #[test]
    fn an_older_guest_is_renamed_and_a_current_one_borrowed() {
        let old = component("0.1.0", "0.1.0");
        let inv = inventory(&old, 64).unwrap();
        assert_eq!(wit_version(&old, &inv).unwrap(), Some("0.1.0"));
        let adapted = to_current(&old, &inv).unwrap();
        assert!(matches!(adapted, Cow::Owned(_)));
        assert_eq!(adapted.len(), old.len());
        let again = inventory(&adapted, 64).unwrap();
        assert_eq!(again.imports, ["automation:plugin/log@0.2.0", "wasi:cli/stdout@0.2.3"]);
        assert_eq!(again.exports, ["automation:plugin/filter@0.2.0"]);
        wasmparser::Validator::new().validate_all(&adapted).unwrap();

        let current = component(WIT_VERSION, WIT_VERSION);
        let inv = inventory(&current, 64).unwrap();
        assert!(matches!(to_current(&current, &inv).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn mixed_or_unknown_versions_are_refused() {
        let mixed = component("0.1.0", "0.2.0");
        let inv = inventory(&mixed, 64).unwrap();
        assert!(to_current(&mixed, &inv).unwrap_err().contains("two versions (0.1.0 and 0.2.0)"));
        let future = component("0.9.0", "0.9.0");
        let inv = inventory(&future, 64).unwrap();
        assert!(to_current(&future, &inv).unwrap_err().contains("cannot adapt"));
    }
}
