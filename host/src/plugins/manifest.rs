//! Plugin manifests (what a plugin asks for) and grants (what the operator
//! allows). A plugin gets the intersection; deny by default.

use std::collections::{BTreeMap, BTreeSet};

use super::Source;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The WIT package version this host implements (`wit/`).
pub const WIT_VERSION: &str = "0.2.0";

/// Older releases this host still loads, frozen under `wit/v<version>/`.
/// 0.2.0 only added to 0.1.0 (the `source` interface and world), so a
/// 0.1.0 guest is served by the 0.2.0 bindings once its interface names are
/// adapted (see `inspect::adapt_to_current`).
pub const OLDER_WIT_VERSIONS: &[&str] = &["0.1.0"];

/// The four kinds of plugin, one WIT world each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Evaluates filter expressions against events (world `filter-plugin`).
    Filter,
    /// Renders bundles from a configuration (world `preset-plugin`).
    Preset,
    /// Carries out runs (world `executor-plugin`).
    Executor,
    /// Turns a webhook request into an event: verifies its signature and
    /// names its key and delivery id (world `source-plugin`, since 0.2.0).
    Source,
}

impl Kind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Preset => "preset",
            Kind::Executor => "executor",
            Kind::Source => "source",
        }
    }

    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Filter, Kind::Preset, Kind::Executor, Kind::Source];

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "filter" => Some(Kind::Filter),
            "preset" => Some(Kind::Preset),
            "executor" => Some(Kind::Executor),
            "source" => Some(Kind::Source),
            _ => None,
        }
    }

    /// The WIT world a plugin of this kind targets.
    pub fn world(self) -> &'static str {
        match self {
            Kind::Filter => "filter-plugin",
            Kind::Preset => "preset-plugin",
            Kind::Executor => "executor-plugin",
            Kind::Source => "source-plugin",
        }
    }

    /// The interface a plugin of this kind must export.
    pub fn export(self) -> &'static str {
        match self {
            Kind::Filter => "automation:plugin/filter",
            Kind::Preset => "automation:plugin/preset",
            Kind::Executor => "automation:plugin/executor",
            Kind::Source => "automation:plugin/source",
        }
    }

    /// The capabilities a plugin of this kind may ever be granted. Filters
    /// and sources run on every event and must stay pure: no state, network
    /// or processes.
    pub fn allowed_capabilities(self) -> &'static [Capability] {
        match self {
            Kind::Filter | Kind::Source => &[],
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

/// Accepts the host's own WIT version and the older releases it still loads
/// (each with its own older patch releases); refuses anything newer or of a
/// minor it never implemented (0.x minors are breaking).
pub fn check_wit_version(v: &str) -> Result<(), String> {
    let parse = |s: &str| -> Option<(u64, u64, u64)> {
        let mut it = s.split('.').map(|p| p.parse::<u64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    };
    let Some(want) = parse(v) else {
        return Err(format!("WIT version {v:?} is not a version like {WIT_VERSION}"));
    };
    let known = std::iter::once(WIT_VERSION).chain(OLDER_WIT_VERSIONS.iter().copied()).filter_map(parse);
    if known.clone().any(|have| want.0 == have.0 && want.1 == have.1 && want.2 <= have.2) {
        return Ok(());
    }
    let newest = parse(WIT_VERSION).expect("the host's own version parses");
    if want > newest {
        Err(format!("targets automation:plugin@{v}, newer than this host supports ({WIT_VERSION}); upgrade the host"))
    } else {
        Err(format!(
            "targets automation:plugin@{v}, which this host ({WIT_VERSION}, and {}) does not support; rebuild the plugin",
            OLDER_WIT_VERSIONS.join(", ")
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

/// Where a plugin's grant came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantOrigin {
    /// The bundled defaults (bundled plugins only).
    BundledDefault,
    /// `AUTOMATION_PLUGIN_GRANTS` by name (bundled and directory plugins).
    OperatorByName,
    /// `AUTOMATION_PLUGIN_GRANTS` as `name@sha256:DIGEST` (this component).
    OperatorPinned,
    /// `POST /v1/plugins/{name}/grants` for this component's digest.
    Api,
}

/// The operator's grants.
///
/// Trust follows the component, not its name: a grant by name applies to
/// bundled plugins and to the operator's own plugins directory; an uploaded
/// component gets only grants that name its digest (`name@sha256:HEX` here,
/// or one recorded through the API), so uploading something under a
/// trusted name never inherits what that name was granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    by_name: BTreeMap<String, Grant>,
    pinned: BTreeMap<(String, String), Grant>,
    defaults: BTreeMap<String, Grant>,
}

impl Grant {
    /// A grant from capability names, refusing unknown ones.
    pub fn from_names(capabilities: &[String], allowed_hosts: &[String]) -> Result<Grant, String> {
        let capabilities = capabilities
            .iter()
            .map(|c| Capability::parse(c).ok_or_else(|| format!("unknown capability {c:?} (kv, http, sandbox)")))
            .collect::<Result<_, _>>()?;
        Ok(Grant { capabilities, allowed_hosts: allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect() })
    }

    fn extend(&mut self, other: &Grant) {
        self.capabilities.extend(other.capabilities.iter().copied());
        self.allowed_hosts.extend(other.allowed_hosts.iter().cloned());
    }
}

impl Grants {
    /// The grants bundled plugins get unless the operator says otherwise:
    /// the local sandbox may run processes, the agent-server executor may
    /// reach an agent-server on this machine. They apply to the bundled
    /// components only.
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
        Grants { defaults: g, ..Grants::default() }
    }

    /// Grants `grant` to plugins named `name` (bundled and directory ones).
    pub fn grant_by_name(&mut self, name: &str, grant: Grant) {
        self.by_name.insert(name.to_owned(), grant);
    }

    /// Parses `AUTOMATION_PLUGIN_GRANTS`:
    /// `name=cap,cap;name2=http:host1|host2,kv;name3@sha256:HEX=kv`. Entries
    /// by name replace the bundled defaults for that name; `name=` grants
    /// nothing; `name@sha256:HEX` grants only the component with that digest
    /// (the only kind of entry an uploaded plugin can get).
    pub fn parse(spec: &str) -> Result<Grants, String> {
        let mut out = Grants::default();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (key, caps) = entry.split_once('=').ok_or_else(|| {
                format!("grant {entry:?} must look like name=cap,cap or name@sha256:DIGEST=cap (caps: kv, sandbox, http:host|host)")
            })?;
            let (name, digest) = match key.trim().split_once('@') {
                Some((name, pin)) => {
                    let digest = pin.strip_prefix("sha256:").unwrap_or("").to_ascii_lowercase();
                    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(format!("grant {key:?}: a pin must be @sha256: and 64 hex digits"));
                    }
                    (name.trim(), Some(digest))
                }
                None => (key.trim(), None),
            };
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
            match digest {
                Some(d) => out.pinned.insert((name.to_owned(), d), grant),
                None => out.by_name.insert(name.to_owned(), grant),
            };
        }
        Ok(out)
    }

    /// The bundled defaults with the operator's entries laid over them.
    pub fn with_overrides(mut self, overrides: Grants) -> Grants {
        self.by_name.extend(overrides.by_name);
        self.pinned.extend(overrides.pinned);
        self
    }

    /// What a plugin with this manifest, source and digest actually gets
    /// (what it asks for and what is granted, both), with where the grant
    /// came from; `recorded` is a grant recorded through the API for this
    /// name and digest.
    pub fn effective(
        &self,
        manifest: &Manifest,
        source: Source,
        sha256: &str,
        recorded: Option<&Grant>,
    ) -> (Grant, Vec<GrantOrigin>) {
        let mut offered = Grant::default();
        let mut origins = Vec::new();
        let by_name = self.by_name.get(&manifest.name);
        match source {
            Source::Bundled => match (by_name, self.defaults.get(&manifest.name)) {
                (Some(g), _) => {
                    offered.extend(g);
                    origins.push(GrantOrigin::OperatorByName);
                }
                (None, Some(g)) => {
                    offered.extend(g);
                    origins.push(GrantOrigin::BundledDefault);
                }
                (None, None) => {}
            },
            Source::Directory => {
                if let Some(g) = by_name {
                    offered.extend(g);
                    origins.push(GrantOrigin::OperatorByName);
                }
            }
            Source::Uploaded => {}
        }
        if let Some(g) = self.pinned.get(&(manifest.name.clone(), sha256.to_ascii_lowercase())) {
            offered.extend(g);
            origins.push(GrantOrigin::OperatorPinned);
        }
        if let Some(g) = recorded {
            offered.extend(g);
            origins.push(GrantOrigin::Api);
        }
        let capabilities: BTreeSet<_> = manifest.capabilities.intersection(&offered.capabilities).copied().collect();
        let allowed_hosts = if capabilities.contains(&Capability::Http) {
            if offered.allowed_hosts.contains("*") {
                manifest.allowed_hosts.clone()
            } else {
                super::http_policy::intersect(&manifest.allowed_hosts, &offered.allowed_hosts)
            }
        } else {
            BTreeSet::new()
        };
        if capabilities.is_empty() {
            origins.clear();
        }
        (Grant { capabilities, allowed_hosts }, origins)
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
        let (g, from) = grants.effective(&m, Source::Directory, "00", None);
        assert_eq!(g.capabilities, [Capability::Kv, Capability::Http].into());
        assert_eq!(g.allowed_hosts, ["api.example.com".to_owned()].into());
        assert_eq!(from, [GrantOrigin::OperatorByName]);
        // The operator emptied agent-server's default grant.
        let a = manifest("agent-server", Kind::Executor, &[Capability::Http], &["127.0.0.1"]);
        assert!(grants.effective(&a, Source::Bundled, "00", None).0.capabilities.is_empty());
        // Unknown plugins get nothing.
        let u = manifest("stranger", Kind::Executor, &[Capability::Sandbox], &[]);
        assert!(grants.effective(&u, Source::Directory, "00", None).0.capabilities.is_empty());
        assert!(Grants::parse("x=teleport").unwrap_err().contains("teleport"));
        assert!(Grants::parse("nonsense").is_err());
    }

    #[test]
    fn uploads_get_only_grants_that_name_their_digest() {
        let digest = "ab".repeat(32);
        let grants = Grants::bundled_defaults()
            .with_overrides(Grants::parse(&format!("mine=kv; pinned@sha256:{digest}=kv")).unwrap());
        let sandbox = manifest("local-sandbox", Kind::Executor, &[Capability::Sandbox], &[]);
        assert_eq!(grants.effective(&sandbox, Source::Bundled, "00", None).1, [GrantOrigin::BundledDefault]);
        // The same name, uploaded: no bundled default, no name grant.
        assert!(grants.effective(&sandbox, Source::Uploaded, "00", None).0.capabilities.is_empty());
        assert!(grants.effective(&sandbox, Source::Directory, "00", None).0.capabilities.is_empty());
        let mine = manifest("mine", Kind::Preset, &[Capability::Kv], &[]);
        assert!(grants.effective(&mine, Source::Uploaded, "00", None).0.capabilities.is_empty());
        let pinned = manifest("pinned", Kind::Preset, &[Capability::Kv], &[]);
        let (g, from) = grants.effective(&pinned, Source::Uploaded, &digest, None);
        assert_eq!((g.capabilities, from), ([Capability::Kv].into(), vec![GrantOrigin::OperatorPinned]));
        assert!(grants.effective(&pinned, Source::Uploaded, &"cd".repeat(32), None).0.capabilities.is_empty());
        // A grant recorded through the API for this digest.
        let recorded = Grant { capabilities: [Capability::Kv].into(), allowed_hosts: BTreeSet::new() };
        assert_eq!(grants.effective(&mine, Source::Uploaded, "00", Some(&recorded)).1, [GrantOrigin::Api]);
        assert!(Grants::parse("x@sha256:12=kv").unwrap_err().contains("64 hex"));
    }

    #[test]
    fn kinds_limit_capabilities_and_versions_are_checked() {
        assert!(manifest("f", Kind::Filter, &[Capability::Http], &[]).check().unwrap_err().contains("filter"));
        manifest("e", Kind::Executor, &[Capability::Sandbox], &[]).check().unwrap();
        assert!(check_wit_version("0.3.0").unwrap_err().contains("newer"));
        assert!(check_wit_version("0.2.1").unwrap_err().contains("newer"));
        assert!(check_wit_version("0.0.9").unwrap_err().contains("does not support"));
        assert!(check_wit_version("0.1.1").unwrap_err().contains("does not support"));
        check_wit_version("0.1.0").unwrap();
        check_wit_version("0.2.0").unwrap();
        assert!(check_wit_version("banana").is_err());
    }
}
