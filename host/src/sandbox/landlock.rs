//! The Landlock layer: a second, independent filesystem boundary (and, on
//! kernels that have them, TCP/UDP and scope rules), applied by the run's
//! process to itself just before `execve`.
//!
//! Inside namespaces it repeats what the mount namespace already gives
//! (read-only system directories, a writable workspace and `/tmp`), so a
//! mistake in one layer is not an escape. Without namespaces it is the
//! filesystem boundary: the host's paths, allow-listed. The ruleset asks for
//! every right the `landlock` crate knows (ABI 10) in best-effort mode, so an
//! older kernel enforces what it has and the status says so.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, RestrictionStatus, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};

use super::policy::{Network, Policy, WORKSPACE_INSIDE};
use super::root::{DEVICES, ETC};

/// The newest ABI this code asks for.
const ABI_WANTED: ABI = ABI::V10;

/// Which paths get which rights.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Paths {
    /// Read and execute.
    pub read_exec: Vec<PathBuf>,
    /// Read only (no execute).
    pub read: Vec<PathBuf>,
    /// Everything.
    pub read_write: Vec<PathBuf>,
    /// Device files: read, write, ioctl.
    pub devices: Vec<PathBuf>,
    /// Directories that may be listed (and nothing more).
    pub list: Vec<PathBuf>,
}

/// The paths of a policy, as the process sees them.
pub(crate) fn paths(policy: &Policy) -> Paths {
    let system = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"].map(PathBuf::from);
    let devices = DEVICES.iter().map(|d| Path::new("/dev").join(d)).collect();
    let extra = policy.read_only.iter().filter(|p| p.is_absolute()).cloned();
    if policy.layers.namespaces {
        Paths {
            read_exec: system.into_iter().chain([PathBuf::from("/etc")]).chain(extra).collect(),
            read: vec!["/proc".into()],
            read_write: vec![WORKSPACE_INSIDE.into(), "/tmp".into(), "/dev/shm".into()],
            devices,
            // The minimal root holds nothing but what is listed above, so
            // `ls /` may show it.
            list: vec!["/".into()],
        }
    } else {
        // The host's own /etc: only the entries a namespaced run would see,
        // plus the user and host databases (the host's, here).
        let etc = ETC
            .iter()
            .copied()
            .chain(["passwd", "group", "hosts", "nsswitch.conf", "resolv.conf"])
            .map(|e| Path::new("/etc").join(e));
        Paths {
            read_exec: system.into_iter().chain(etc).chain(extra).collect(),
            read: vec![],
            read_write: vec![policy.workspace.clone()],
            devices,
            list: vec![],
        }
    }
}

/// A ruleset with every rule added, ready to enforce. Built before the
/// process drops its identity (opening a rule's path needs to walk to it).
pub(crate) fn prepare(policy: &Policy) -> Result<RulesetCreated, String> {
    let paths = paths(policy);
    let fail = |e: landlock::RulesetError| format!("cannot build the Landlock ruleset: {e}");
    let all = AccessFs::from_all(ABI_WANTED);
    let mut ruleset = Ruleset::default().set_compatibility(CompatLevel::BestEffort).handle_access(all).map_err(fail)?;
    if policy.network == Network::None {
        ruleset = ruleset.handle_access(AccessNet::from_all(ABI_WANTED)).map_err(fail)?;
    }
    ruleset = ruleset.scope(Scope::from_all(ABI_WANTED)).map_err(fail)?;
    let read = AccessFs::from_read(ABI_WANTED) & !AccessFs::Execute;
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    ruleset
        .create()
        .map_err(fail)?
        .add_rules(path_beneath_rules(&paths.read_exec, AccessFs::from_read(ABI_WANTED)))
        .map_err(fail)?
        .add_rules(path_beneath_rules(&paths.read, read))
        .map_err(fail)?
        .add_rules(path_beneath_rules(&paths.read_write, all))
        .map_err(fail)?
        .add_rules(path_beneath_rules(&paths.devices, device))
        .map_err(fail)?
        .add_rules(path_beneath_rules(&paths.list, AccessFs::ReadDir))
        .map_err(fail)
}

/// Enforces the ruleset on the calling process (and so on everything it
/// starts); returns the status in words and the kernel's ABI.
pub(crate) fn enforce(ruleset: RulesetCreated) -> Result<(String, Option<i32>), String> {
    let status: RestrictionStatus =
        ruleset.restrict_self().map_err(|e| format!("cannot enforce the Landlock ruleset: {e}"))?;
    let words = match status.ruleset {
        RulesetStatus::FullyEnforced => "fully_enforced",
        RulesetStatus::PartiallyEnforced => "partially_enforced",
        RulesetStatus::NotEnforced => "not_enforced",
    };
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, kernel_abi } => Some(kernel_abi.unwrap_or(effective_abi as i32)),
        _ => None,
    };
    Ok((words.to_owned(), abi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(namespaces: bool) -> Policy {
        Policy {
            workspace: "/srv/data/workspaces/r".into(),
            read_only: vec!["/opt/models".into()],
            ..crate::sandbox::policy::test_policy(namespaces)
        }
    }

    #[test]
    fn inside_namespaces_only_the_workspace_tmp_and_shm_are_writable() {
        let p = paths(&policy(true));
        assert_eq!(p.read_write, [PathBuf::from("/workspace"), "/tmp".into(), "/dev/shm".into()]);
        assert!(p.read_exec.contains(&"/etc".into()) && p.read_exec.contains(&"/opt/models".into()));
        assert_eq!(p.read, [PathBuf::from("/proc")]);
        assert_eq!(p.list, [PathBuf::from("/")]);
    }

    #[test]
    fn without_namespaces_the_host_paths_are_allow_listed() {
        let p = paths(&policy(false));
        assert_eq!(p.read_write, [PathBuf::from("/srv/data/workspaces/r")]);
        // The host's /etc only entry by entry: never /etc itself (shadow,
        // the host's own secrets), never /proc (the host's processes).
        assert!(!p.read_exec.contains(&"/etc".into()));
        assert!(p.read_exec.contains(&"/etc/ld.so.cache".into()));
        assert!(!p.read_exec.iter().any(|e| e.ends_with("shadow")));
        assert!(p.read.is_empty() && p.list.is_empty());
        assert!(!p.read_write.iter().chain(&p.read_exec).any(|e| e.starts_with("/tmp") || e.starts_with("/proc")));
    }
}
