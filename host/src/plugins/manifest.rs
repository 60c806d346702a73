//! Plugin manifests (what a plugin asks for) and grants (what the operator
//! allows). A plugin gets the intersection; deny by default.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "0.1.0";

/// The three kinds of plugin, one WIT world each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Evaluates filter expressions against events (world `filter-plugin`).
    Filter,
    /// Renders bundles from a configuration (world `preset-plugin`).
    Preset,
    /// Carries out runs (world `executor-plugin`).
    Executor,
}

impl Kind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Preset => "preset",
            Kind::Executor => "executor",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "filter" => Some(Kind::Filter),
            "preset" => Some(Kind::Preset),
            "executor" => Some(Kind::Executor),
            _ => None,
        }
    }

    /// The WIT world a plugin of this kind targets.
    pub fn world(self) -> &'static str {
        match self {
            Kind::Filter => "filter-plugin",
            Kind::Preset => "preset-plugin",
            Kind::Executor => "executor-plugin",
        }
    }

    /// The interface a plugin of this kind must export.
    pub fn export(self) -> &'static str {
        match self {
            Kind::Filter => "automation:plugin/filter",
            Kind::Preset => "automation:plugin/preset",
            Kind::Executor => "automation:plugin/executor",
        }
    }

    /// The capabilities a plugin of this kind may ever be granted. Filters
    /// run on every event and must stay pure: no state, network or processes.
    pub fn allowed_capabilities(self) -> &'static [Capability] {
        match self {
            Kind::Filter => &[],
            Kind::Preset => &[Capability::Kv, Capability::Http],
            Kind::Executor => &[Capability::Kv, Capability::Http, Capability::Sandbox],
        }
    }
}

/// Something a plugin may be granted beyond logging and the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Per-plugin key-value state (`automation:plugin/kv`).
    Kv,
    /// Outbound HTTP to allow-listed hosts (`wasi:http/outgoing-handler`).
    Http,
    /// Processes on the host in a per-run workspace (`automation:plugin/sandbox`).
    Sandbox,
}

impl Capability {
    /// The name used in manifests and grants.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Kv => "kv",
            Capability::Http => "http",
            Capability::Sandbox => "sandbox",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Capability> {
        match s {
            "kv" => Some(Capability::Kv),
            "http" => Some(Capability::Http),
            "sandbox" => Some(Capability::Sandbox),
            _ => None,
        }
    }

    /// The capability an import needs, if it needs one; `None` for imports
    /// every plugin may have.
    pub fn for_import(import: &str) -> Result<Option<Capability>, String> {
        let base = import.split_once('@').map_or(import, |(b, _)| b);
        match base {
            "automation:plugin/types" | "automation:plugin/log" | "automation:plugin/clock" => Ok(None),
            "automation:plugin/kv" => Ok(Some(Capability::Kv)),
            "automation:plugin/sandbox" => Ok(Some(Capability::Sandbox)),
            b if b.starts_with("wasi:http/") => Ok(Some(Capability::Http)),
            // What a language's standard library imports. The WASI context
            // grants nothing through them: no preopened directories, no
            // environment, no arguments, stdout/stderr captured.
            b if ["wasi:cli/", "wasi:clocks/", "wasi:io/", "wasi:random/", "wasi:filesystem/"]
                .iter()
                .any(|p| b.starts_with(p)) =>
            {
                Ok(None)
            }
            _ => Err(format!("imports `{import}`, which this host does not provide to plugins")),
        }
    }
}

/// A plugin's manifest: `<name>.toml` beside `<name>.wasm`, or the query
/// parameters of `PUT /v1/plugins/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name; automations refer to it.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// The `automation:plugin` version it was built against.
    #[serde(default = "default_wit")]
    pub wit: String,
    /// Its own version.
    #[serde(default = "default_version")]
    pub version: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Capabilities it asks for.
    #[serde(default)]
    pub capabilities: BTreeSet<Capability>,
    /// Hosts it asks to reach with `http`.
    #[serde(default)]
    pub allowed_hosts: BTreeSet<String>,
}

fn default_wit() -> String {
    WIT_VERSION.to_owned()
}

fn default_version() -> String {
    "0.0.0".to_owned()
}

impl Manifest {
    /// A manifest for `name` of `kind`, at this host's WIT version, version
    /// 0.0.0, asking for nothing: set the fields that differ.
    pub fn new(name: impl Into<String>, kind: Kind) -> Manifest {
        Manifest {
            name: name.into(),
            kind,
            wit: default_wit(),
            version: default_version(),
            description: String::new(),
            capabilities: BTreeSet::new(),
            allowed_hosts: BTreeSet::new(),
        }
    }

    /// Checks the manifest on its own: kind-appropriate capabilities and a
    /// WIT version this host implements.
    pub fn check(&self) -> Result<(), String> {
        crate::model::check_name(&self.name)?;
        for cap in &self.capabilities {
            if !self.kind.allowed_capabilities().contains(cap) {
                return Err(format!("a {} plugin cannot have the `{}` capability", self.kind.as_str(), cap.as_str()));
            }
        }
        check_wit_version(&self.wit)
    }
}

/// Accepts the host's own WIT version and older 0.1.x patch releases; refuses
/// anything newer or of another minor (0.x minors are breaking).
pub fn check_wit_version(v: &str) -> Result<(), String> {
    let parse = |s: &str| -> Option<(u64, u64, u64)> {
        let mut it = s.split('.').map(|p| p.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    };
    let (Some(want), Some(have)) = (parse(v), parse(WIT_VERSION)) else {
        return Err(format!("WIT version {v:?} is not a version like 0.1.0"));
    };
    if want.0 == have.0 && want.1 == have.1 && want.2 <= have.2 {
        Ok(())
    } else if want > have {
        Err(format!("targets automation:plugin@{v}, newer than this host supports ({WIT_VERSION}); upgrade the host"))
    } else {
        Err(format!(
            "targets automation:plugin@{v}, which this host ({WIT_VERSION}) no longer supports; rebuild the plugin"
        ))
    }
}

/// What the operator grants one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    /// Granted capabilities.
    pub capabilities: BTreeSet<Capability>,
    /// Hosts `http` may reach (exact host names; `*` for any).
    pub allowed_hosts: BTreeSet<String>,
}

/// The operator's grants, by plugin name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(pub BTreeMap<String, Grant>);

impl Grants {
    /// The grants bundled plugins get unless the operator says otherwise:
    /// the local sandbox may run processes, the agent-server executor may
    /// reach an agent-server on this machine.
    pub fn bundled_defaults() -> Grants {
        let mut g = BTreeMap::new();
        g.insert(
            "local-sandbox".to_owned(),
            Grant { capabilities: [Capability::Sandbox].into(), allowed_hosts: BTreeSet::new() },
        );
        g.insert(
            "agent-server".to_owned(),
            Grant {
                capabilities: [Capability::Http].into(),
                allowed_hosts: ["127.0.0.1".to_owned(), "localhost".to_owned()].into(),
            },
        );
        Grants(g)
    }

    /// Parses `AUTOMATION_PLUGIN_GRANTS`:
    /// `name=cap,cap;name2=http:host1|host2,kv`. Entries replace the bundled
    /// defaults for that name; `name=` grants nothing.
    pub fn parse(spec: &str) -> Result<Grants, String> {
        let mut out = BTreeMap::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, caps) = entry.split_once('=').ok_or_else(|| {
                format!("grant {entry:?} must look like name=cap,cap (caps: kv, sandbox, http:host|host)")
            })?;
            let name = name.trim();
            crate::model::check_name(name)?;
            let mut grant = Grant::default();
            for cap in caps.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                let (cap_name, hosts) = cap.split_once(':').unwrap_or((cap, ""));
                let parsed = Capability::parse(cap_name)
                    .ok_or_else(|| format!("unknown capability {cap_name:?} for {name} (kv, sandbox, http)"))?;
                if parsed == Capability::Http {
                    grant
                        .allowed_hosts
                        .extend(hosts.split('|').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()));
                } else if !hosts.is_empty() {
                    return Err(format!("only http takes hosts (got {cap:?} for {name})"));
                }
                grant.capabilities.insert(parsed);
            }
            out.insert(name.to_owned(), grant);
        }
        Ok(Grants(out))
    }

    /// The bundled defaults with the operator's entries laid over them.
    pub fn with_overrides(mut self, overrides: Grants) -> Grants {
        self.0.extend(overrides.0);
        self
    }

    /// What a plugin with this manifest actually gets: what it asks for and
    /// what the operator grants, both.
    pub fn effective(&self, manifest: &Manifest) -> Grant {
        let granted = self.0.get(&manifest.name).cloned().unwrap_or_default();
        let capabilities: BTreeSet<_> = manifest.capabilities.intersection(&granted.capabilities).copied().collect();
        let allowed_hosts = if capabilities.contains(&Capability::Http) {
            if granted.allowed_hosts.contains("*") {
                manifest.allowed_hosts.clone()
            } else {
                manifest.allowed_hosts.intersection(&granted.allowed_hosts).cloned().collect()
            }
        } else {
            BTreeSet::new()
        };
        Grant { capabilities, allowed_hosts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, kind: Kind, caps: &[Capability], hosts: &[&str]) -> Manifest {
        Manifest {
            version: "1.0.0".into(),
            capabilities: caps.iter().copied().collect(),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Manifest::new(name, kind)
        }
    }

    #[test]
    fn grants_are_the_intersection_and_deny_by_default() {
        let grants = Grants::bundled_defaults()
            .with_overrides(Grants::parse("mine=kv,http:api.example.com|x.org; agent-server=").unwrap());
        let m = manifest(
            "mine",
            Kind::Executor,
            &[Capability::Kv, Capability::Http, Capability::Sandbox],
            &["api.example.com", "evil.com"],
        );
        let g = grants.effective(&m);
        assert_eq!(g.capabilities, [Capability::Kv, Capability::Http].into());
        assert_eq!(g.allowed_hosts, ["api.example.com".to_owned()].into());
        // The operator emptied agent-server's default grant.
        let a = manifest("agent-server", Kind::Executor, &[Capability::Http], &["127.0.0.1"]);
        assert!(grants.effective(&a).capabilities.is_empty());
        // Unknown plugins get nothing.
        let u = manifest("stranger", Kind::Executor, &[Capability::Sandbox], &[]);
        assert!(grants.effective(&u).capabilities.is_empty());
        assert!(Grants::parse("x=teleport").unwrap_err().contains("teleport"));
        assert!(Grants::parse("nonsense").is_err());
    }

    #[test]
    fn kinds_limit_capabilities_and_versions_are_checked() {
        assert!(manifest("f", Kind::Filter, &[Capability::Http], &[]).check().unwrap_err().contains("filter"));
        manifest("e", Kind::Executor, &[Capability::Sandbox], &[]).check().unwrap();
        assert!(check_wit_version("0.2.0").unwrap_err().contains("newer"));
        assert!(check_wit_version("0.0.9").unwrap_err().contains("no longer"));
        check_wit_version("0.1.0").unwrap();
        assert!(check_wit_version("banana").is_err());
    }

    #[test]
    fn imports_map_to_capabilities() {
        assert_eq!(Capability::for_import("wasi:http/outgoing-handler@0.2.4"), Ok(Some(Capability::Http)));
        assert_eq!(Capability::for_import("automation:plugin/sandbox@0.1.0"), Ok(Some(Capability::Sandbox)));
        assert_eq!(Capability::for_import("wasi:cli/stdout@0.2.0"), Ok(None));
        assert!(Capability::for_import("wasi:sockets/tcp@0.2.0").is_err());
    }
}
