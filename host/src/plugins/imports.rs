//! Which of a component's imports are live, which are linked but denied, and
//! which refuse the component: "provide, then deny".
//!
//! Language runtimes (CPython through componentize-py, SpiderMonkey through
//! componentize-js, Go, .NET) import most of WASI 0.2 whether the plugin
//! uses it or not. Refusing those imports would refuse every such component,
//! so the host links all of WASI 0.2 and decides what each interface may do:
//! sockets, directories, environment and stdin are there but empty or
//! refused (a call fails inside the guest like an unavailable resource),
//! `wasi:http` works only with the `http` grant and only to the allow-list.
//! The host's own capability interfaces (`kv`, `sandbox`) are never imported
//! by accident, so importing one without the grant still refuses the
//! component at load, as does anything the host does not link at all.

use serde::Serialize;
use utoipa::ToSchema;

use super::manifest::{Capability, Grant, Kind, Manifest};

/// What the host does with one import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ImportStatus {
    /// The import as the component names it (`wasi:sockets/tcp@0.2.9`).
    pub name: String,
    /// `live` (works as the interface says) or `denied` (linked, every
    /// use fails).
    pub status: Provision,
    /// What that means here.
    pub detail: String,
}

/// Live or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provision {
    /// Works.
    Live,
    /// Linked so the component loads; every use fails.
    Denied,
}

/// The WASI line this host links (wasmtime-wasi's 0.2 interfaces; the
/// linker matches any 0.2.x import to them, semver-compatibly).
const WASI_LINE: &str = "0.2.";

/// Classifies every import of a plugin with `manifest` and `grant`; refuses
/// with one message naming every import that cannot be had.
pub fn check(
    imports: &[String],
    manifest: &Manifest,
    grant: &Grant,
    sha256: &str,
) -> Result<Vec<ImportStatus>, String> {
    let mut statuses = Vec::with_capacity(imports.len());
    let mut refused = Vec::new();
    for import in imports {
        match classify(import, manifest, grant, sha256) {
            Ok((status, detail)) => statuses.push(ImportStatus { name: import.clone(), status, detail }),
            Err(reason) => refused.push(reason),
        }
    }
    match refused.len() {
        0 => Ok(statuses),
        1 => Err(refused.remove(0)),
        n => Err(format!("{n} imports cannot be had: {}", refused.join("; "))),
    }
}

/// One import: `Ok((live or denied, why))`, or why it refuses the component.
fn classify(import: &str, manifest: &Manifest, grant: &Grant, sha256: &str) -> Result<(Provision, String), String> {
    use Provision::{Denied, Live};
    let (base, version) = import.split_once('@').unwrap_or((import, ""));
    let live = |d: &str| Ok((Live, d.to_owned()));
    let denied = |d: &str| Ok((Denied, d.to_owned()));
    if let Some(interface) = base.strip_prefix("automation:plugin/") {
        return match interface {
            "types" | "log" | "clock" => live("the host's own interface"),
            "kv" => capability(import, Capability::Kv, manifest, grant, sha256),
            "sandbox" => capability(import, Capability::Sandbox, manifest, grant, sha256),
            _ => Err(not_provided(import)),
        };
    }
    let Some(rest) = base.strip_prefix("wasi:") else {
        return Err(not_provided(import));
    };
    if !version.starts_with(WASI_LINE) {
        return Err(format!(
            "imports `{import}`, but this host links WASI 0.2.x only (build against WASI 0.2, the wasm32-wasip2 target)"
        ));
    }
    let (package, interface) = rest.split_once('/').unwrap_or((rest, ""));
    match (package, interface) {
        ("io", _) | ("clocks", _) | ("random", _) => live("provided"),
        ("cli", "stdout" | "stderr") => live("captured into the call's output (capped)"),
        ("cli", "exit") => live("ends the call"),
        ("cli", i) if i.starts_with("terminal-") => live("never a terminal"),
        ("cli", "stdin") => denied("always at end of file"),
        ("cli", "environment") => denied("no environment variables, no arguments, no working directory"),
        ("filesystem", "types" | "preopens") => denied("no directories are preopened: nothing can be opened"),
        ("sockets", _) => denied(
            "raw sockets are never available to plugins: socket creation and name lookup fail \
             (outbound HTTP goes through wasi:http with the `http` grant)",
        ),
        ("http", "types" | "outgoing-handler") => capability(import, Capability::Http, manifest, grant, sha256),
        _ => Err(not_provided(import)),
    }
}

/// An import that works only with `cap`.
fn capability(
    import: &str,
    cap: Capability,
    manifest: &Manifest,
    grant: &Grant,
    sha256: &str,
) -> Result<(Provision, String), String> {
    let kind: Kind = manifest.kind;
    // A WASI interface a toolchain added by default is denied, not fatal,
    // unless the manifest says the plugin needs it.
    let toolchain_default = import.starts_with("wasi:") && !manifest.capabilities.contains(&cap);
    if !kind.allowed_capabilities().contains(&cap) {
        if toolchain_default {
            return Ok((
                Provision::Denied,
                format!("{} is never granted to {} plugins: every request fails", cap.as_str(), kind.as_str()),
            ));
        }
        return Err(format!(
            "a {} plugin may not import `{import}` ({} is never granted to {} plugins)",
            kind.as_str(),
            cap.as_str(),
            kind.as_str()
        ));
    }
    if grant.capabilities.contains(&cap) {
        let detail = match cap {
            Capability::Http => {
                let hosts: Vec<&str> = grant.allowed_hosts.iter().map(String::as_str).collect();
                format!(
                    "granted: requests only to {}",
                    if hosts.is_empty() { "nowhere".into() } else { hosts.join(", ") }
                )
            }
            _ => "granted".to_owned(),
        };
        return Ok((Provision::Live, detail));
    }
    if toolchain_default {
        return Ok((
            Provision::Denied,
            format!(
                "the `{}` capability is not granted (the manifest does not ask for it): every request fails",
                cap.as_str()
            ),
        ));
    }
    Err(format!(
        "imports `{import}`, which needs the `{cap}` capability; it is not granted to this component \
         (sha256 {sha256}): the manifest must ask for it, and the operator grant it to this digest \
         (AUTOMATION_PLUGIN_GRANTS={name}@sha256:{sha256}={cap}, or POST /v1/plugins/{name}/grants \
         with an admin key; bundled and directory plugins may be granted by name)",
        cap = cap.as_str(),
        name = manifest.name
    ))
}

fn not_provided(import: &str) -> String {
    format!("imports `{import}`, which this host does not provide to plugins")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn manifest(kind: Kind, caps: &[Capability]) -> Manifest {
        Manifest { capabilities: caps.iter().copied().collect(), ..Manifest::new("p", kind) }
    }

    fn grant(caps: &[Capability]) -> Grant {
        Grant { capabilities: caps.iter().copied().collect(), allowed_hosts: BTreeSet::from(["api.example".into()]) }
    }

    fn status(import: &str, m: &Manifest, g: &Grant) -> Result<Provision, String> {
        check(&[import.to_owned()], m, g, "00").map(|s| s[0].status)
    }

    #[test]
    fn what_a_language_runtime_imports_loads_and_is_denied_where_it_matters() {
        let filter = manifest(Kind::Filter, &[]);
        let none = grant(&[]);
        for (import, want) in [
            ("wasi:io/streams@0.2.9", Provision::Live),
            ("wasi:clocks/monotonic-clock@0.2.0", Provision::Live),
            ("wasi:random/random@0.2.3", Provision::Live),
            ("wasi:cli/stdout@0.2.0", Provision::Live),
            ("wasi:cli/terminal-stdin@0.2.0", Provision::Live),
            ("wasi:cli/stdin@0.2.0", Provision::Denied),
            ("wasi:cli/environment@0.2.9", Provision::Denied),
            ("wasi:filesystem/preopens@0.2.9", Provision::Denied),
            ("wasi:sockets/tcp@0.2.9", Provision::Denied),
            ("wasi:sockets/ip-name-lookup@0.2.0", Provision::Denied),
            ("wasi:http/outgoing-handler@0.2.4", Provision::Denied),
            ("automation:plugin/log@0.1.0", Provision::Live),
        ] {
            assert_eq!(status(import, &filter, &none), Ok(want), "{import}");
        }
        // Even a full grant opens no raw socket.
        let exec = manifest(Kind::Executor, &[Capability::Http]);
        assert_eq!(status("wasi:sockets/tcp@0.2.0", &exec, &grant(&[Capability::Http])), Ok(Provision::Denied));
        let s = check(&["wasi:http/types@0.2.0".into()], &exec, &grant(&[Capability::Http]), "00").unwrap();
        assert_eq!((s[0].status, s[0].detail.as_str()), (Provision::Live, "granted: requests only to api.example"));
    }

    #[test]
    fn capabilities_the_manifest_asks_for_must_be_granted() {
        let asks = manifest(Kind::Executor, &[Capability::Http]);
        let e = status("wasi:http/outgoing-handler@0.2.0", &asks, &grant(&[])).unwrap_err();
        assert!(e.contains("not granted to this component") && e.contains("p@sha256:00=http"), "{e}");
        // The host's own interfaces are never a toolchain default.
        let e = status("automation:plugin/kv@0.1.0", &manifest(Kind::Preset, &[]), &grant(&[])).unwrap_err();
        assert!(e.contains("not granted"), "{e}");
        let e = status("automation:plugin/sandbox@0.1.0", &manifest(Kind::Filter, &[]), &grant(&[])).unwrap_err();
        assert!(e.contains("may not import `automation:plugin/sandbox"), "{e}");
        assert_eq!(
            status("automation:plugin/kv@0.1.0", &manifest(Kind::Preset, &[Capability::Kv]), &grant(&[Capability::Kv])),
            Ok(Provision::Live)
        );
    }

    #[test]
    fn every_refused_import_is_named_in_one_message() {
        let imports = [
            "wasi:cli/stdout@0.2.0".to_owned(),
            "wasi:nn/graph@0.2.0".to_owned(),
            "wasi:io/streams@0.3.0-rc-2025-09-16".to_owned(),
            "acme:secret/door".to_owned(),
        ];
        let e = check(&imports, &manifest(Kind::Filter, &[]), &grant(&[]), "00").unwrap_err();
        assert!(e.starts_with("3 imports cannot be had: "), "{e}");
        for name in ["wasi:nn/graph@0.2.0", "wasi:io/streams@0.3.0-rc", "acme:secret/door"] {
            assert!(e.contains(name), "{name} missing from {e}");
        }
        assert!(e.contains("WASI 0.2.x only"), "{e}");
        assert!(!e.contains("stdout"), "{e}");
    }
}
