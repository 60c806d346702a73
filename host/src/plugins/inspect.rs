//! What a component is, read from its bytes before anything is compiled.
//!
//! Compiling a language runtime's component (CPython, SpiderMonkey) takes
//! 10-25 s, so everything that can refuse it cheaply runs first: the binary's
//! magic and layer, its top-level imports and exports (what `Runtime::load`
//! checks against the kind and the grant), and how many core instances it
//! would need from the instance pool. One pass of `wasmparser`, no
//! validation (the compiler validates what is left).

use wasmparser::{Encoding, Instance, Parser, Payload};

/// The magic every WebAssembly binary starts with.
const MAGIC: &[u8; 4] = b"\0asm";

/// A component's outline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Top-level imports, as named (`wasi:sockets/tcp@0.2.9`).
    pub imports: Vec<String>,
    /// Top-level exports.
    pub exports: Vec<String>,
    /// Core module instantiations, counted over nested components too.
    pub core_instances: u32,
    /// Where each top-level `automation:plugin/...` name (import or export)
    /// sits in the bytes, for `adapt::to_current`.
    pub plugin_name_spans: Vec<std::ops::Range<usize>>,
}

/// Why bytes are not a component this host could compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly binary: it does not start with the `\\0asm` magic{hint}")]
    NotWasm {
        /// What it looks like instead, when that can be told.
        hint: &'static str,
    },
    /// A core module rather than a component.
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with \
         `wasm-tools component new`"
    )]
    CoreModule,
    /// The bytes stop making sense part-way.
    #[error("not a valid WebAssembly component: {0}")]
    Malformed(String),
    /// Needs more of the instance pool than one component may take.
    #[error(
        "the component needs {needed} core instances, which exceeds this host's limit of {limit} core \
         instances per component"
    )]
    TooManyCoreInstances {
        /// What it needs.
        needed: u32,
        /// This host's limit.
        limit: u32,
    },
}

impl Inventory {
    /// Records where `name` (borrowed from `wasm` by the parser) sits, if it
    /// is one of this host's interfaces.
    fn note_plugin_name(&mut self, wasm: &[u8], name: &str) {
        if !name.starts_with("automation:plugin/") {
            return;
        }
        let start = (name.as_ptr() as usize).wrapping_sub(wasm.as_ptr() as usize);
        if start.checked_add(name.len()).is_some_and(|end| end <= wasm.len()) {
            self.plugin_name_spans.push(start..start + name.len());
        }
    }
}

/// Reads a component's outline, refusing what is not a component or needs
/// more than `max_core_instances` core instances.
pub fn inventory(wasm: &[u8], max_core_instances: u32) -> Result<Inventory, InspectError> {
    if !wasm.starts_with(MAGIC) {
        let hint = if wasm.starts_with(b"\x7fELF") {
            " (it is an ELF file: precompiled artifacts (.cwasm) are not accepted; give the .wasm component)"
        } else if wasm.trim_ascii_start().starts_with(b"(") {
            " (it looks like WebAssembly text; this host takes binaries only: `wasm-tools parse`)"
        } else {
            ""
        };
        return Err(InspectError::NotWasm { hint });
    }
    let mut inv = Inventory::default();
    // Nesting: every module or component starts with a `Version` payload
    // and ends with `End`; imports and exports at depth 1 are the
    // component's own.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| InspectError::Malformed(e.to_string()))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding == Encoding::Module {
                    return Err(InspectError::CoreModule);
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| InspectError::Malformed(e.to_string()))?;
                    inv.note_plugin_name(wasm, import.name.name);
                    inv.imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| InspectError::Malformed(e.to_string()))?;
                    inv.note_plugin_name(wasm, export.name.name);
                    inv.exports.push(export.name.name.to_owned());
                }
            }
            Payload::InstanceSection(reader) => {
                for instance in reader {
                    let instance = instance.map_err(|e| InspectError::Malformed(e.to_string()))?;
                    if matches!(instance, Instance::Instantiate { .. }) {
                        inv.core_instances += 1;
                    }
                }
            }
            _ => {}
        }
    }
    if inv.core_instances > max_core_instances {
        return Err(InspectError::TooManyCoreInstances { needed: inv.core_instances, limit: max_core_instances });
    }
    Ok(inv)
}

/// Turns the pooling allocator's own refusal (which comes after a compile,
/// and counts instances of nested components more exactly than
/// [`inventory`] can) into this host's wording.
pub fn explain_pool_limit(message: &str, max_core_instances: u32) -> Option<String> {
    let rest = message.split("The component transitively contains ").nth(1)?;
    let (needed, rest) = rest.split_once(' ')?;
    if !rest.starts_with("core module instances") {
        return None;
    }
    let needed: u32 = needed.parse().ok()?;
    Some(InspectError::TooManyCoreInstances { needed, limit: max_core_instances }.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("test component")
    }

    #[test]
    fn refuses_what_is_not_wasm_before_parsing() {
        let e = inventory(b"hello", 32).unwrap_err();
        assert_eq!(e, InspectError::NotWasm { hint: "" });
        assert!(e.to_string().contains("\\0asm"), "{e}");
        let e = inventory(b"  (component)", 32).unwrap_err().to_string();
        assert!(e.contains("WebAssembly text"), "{e}");
        let e = inventory(b"\x7fELF\x02\x01\x01", 32).unwrap_err().to_string();
        assert!(e.contains(".cwasm"), "{e}");
        assert_eq!(inventory(&component("(module)"), 32).unwrap_err(), InspectError::CoreModule);
        let mut cut = component(r#"(component (import "a:b/c" (instance)))"#);
        cut.truncate(cut.len() - 3);
        assert!(matches!(inventory(&cut, 32), Err(InspectError::Malformed(_))));
    }

    #[test]
    fn lists_top_level_imports_and_exports_only() {
        let wasm = component(
            r#"(component
                (import "wasi:sockets/tcp@0.2.9" (instance))
                (import "automation:plugin/log@0.1.0" (instance))
                (component $inner
                    (import "nested:only/this" (instance))
                    (core module $m)
                    (core instance (instantiate $m))
                )
                (core module $m)
                (core instance $a (instantiate $m))
                (core instance $b (instantiate $m))
                (core instance $c)
                (instance $e)
                (export "automation:plugin/filter@0.1.0" (instance $e))
            )"#,
        );
        let inv = inventory(&wasm, 32).unwrap();
        assert_eq!(inv.imports, ["wasi:sockets/tcp@0.2.9", "automation:plugin/log@0.1.0"]);
        assert_eq!(inv.exports, ["automation:plugin/filter@0.1.0"]);
        // Two at the top, one in the nested component; `$c` is made of
        // exports, not instantiated.
        assert_eq!(inv.core_instances, 3);
        assert_eq!(
            inventory(&wasm, 2).unwrap_err().to_string(),
            "the component needs 3 core instances, which exceeds this host's limit of 2 core instances per component"
        );
    }

    #[test]
    fn rewords_the_pooling_allocators_refusal() {
        let msg = "failed: The component transitively contains 38 core module instances, which exceeds the \
                   configured maximum of 32 in the pooling allocator";
        assert_eq!(
            explain_pool_limit(msg, 32).as_deref(),
            Some(
                "the component needs 38 core instances, which exceeds this host's limit of 32 core instances per component"
            )
        );
        assert_eq!(explain_pool_limit("The component transitively contains 9 tables", 32), None);
        assert_eq!(explain_pool_limit("anything else", 32), None);
    }
}
