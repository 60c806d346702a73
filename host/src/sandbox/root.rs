//! The minimal root a namespaced run sees: a read-only tmpfs holding the
//! system directories (read-only binds), a small `/etc` (a few host files
//! plus our own `passwd`, `group`, `hosts`), a minimal `/dev`, its own
//! `/proc`, a private size-limited `/tmp`, and the workspace at `/workspace`.
//! Nothing else of the host's filesystem exists inside.
//!
//! [`plan`] decides the steps from the policy and what the host has (pure,
//! unit-tested); the launcher opens every bind source before leaving the
//! host's user namespace, and [`apply`] carries the steps out inside the new
//! mount namespace, then pivots into the new root. Bind sources are opened
//! as `O_PATH` descriptors by the launcher and mounted through
//! `/proc/self/fd/N`, so a source need not be reachable by path from inside
//! the user namespace (a host running as root maps runs to an unprivileged
//! user, who could not walk into a 0700 data directory).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{FsFlags, statvfs};

use super::policy::{INSIDE_ID, Network, Policy, WORKSPACE_INSIDE};

/// Where the new root is assembled before the pivot (a tmpfs mounted over
/// the host's `/tmp` inside the run's private mount namespace; the host's
/// own `/tmp` is untouched).
const STAGING: &str = "/tmp";

/// System directories bound read-only when the host has them (a symlink,
/// such as a merged-`/usr` `/bin -> usr/bin`, is recreated as a symlink).
const SYSTEM: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Host `/etc` entries a run may read: the dynamic loader's cache, TLS
/// roots, time zones, Debian's alternatives symlinks and the name-service
/// basics. Users, groups, host names and the resolver come from us.
pub(crate) const ETC: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "os-release",
    "profile",
    "protocols",
    "services",
    "shells",
    "ssl",
    "timezone",
];

/// Device nodes bound from the host.
pub(crate) const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// What a host path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory.
    Dir,
    /// A file (or anything else that is not a directory).
    File,
    /// A symbolic link, with its target.
    Symlink(PathBuf),
}

/// Where a bind mount comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A host path (opened by the launcher, following symlinks).
    Host(PathBuf),
    /// The run's workspace.
    Workspace,
}

/// One step of building the root; paths are inside the new root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Make a directory.
    Dir(PathBuf),
    /// Make an empty file (a mount point for a file bind).
    EmptyFile(PathBuf),
    /// Write a file.
    File { path: PathBuf, contents: String },
    /// Make a symbolic link.
    Symlink { path: PathBuf, target: PathBuf },
    /// Bind-mount a source (its index among the plan's sources).
    Bind { source: usize, path: PathBuf, access: BindAccess },
    /// Mount a tmpfs.
    Tmpfs { path: PathBuf, bytes: u64, mode: u32 },
    /// Mount a new `/proc` (of the run's pid namespace).
    Proc(PathBuf),
    /// Remount a tmpfs read-only once it is filled.
    ReadOnly(PathBuf),
}

/// How a bind is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindAccess {
    /// Read-only, no setuid, no devices.
    ReadOnly,
    /// Read-write, no setuid, no devices.
    ReadWrite,
    /// A device node: read-write, no setuid, no exec.
    Device,
}

/// The steps and the bind sources they refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Sources, indexed by [`Step::Bind`].
    pub sources: Vec<Source>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// Decides the root for `policy`; `host` says what a host path is (`None`
/// when it does not exist).
pub(crate) fn plan(policy: &Policy, host: &dyn Fn(&Path) -> Option<Kind>) -> Plan {
    let mut p = Plan { sources: Vec::new(), steps: Vec::new() };
    let bind = |p: &mut Plan, source: Source, path: PathBuf, access: BindAccess, dir: bool| {
        p.steps.push(if dir { Step::Dir(path.clone()) } else { Step::EmptyFile(path.clone()) });
        p.sources.push(source);
        p.steps.push(Step::Bind { source: p.sources.len() - 1, path, access });
    };
    for dir in SYSTEM {
        let path = PathBuf::from(dir);
        match host(&path) {
            Some(Kind::Symlink(target)) => p.steps.push(Step::Symlink { path, target }),
            Some(Kind::Dir) => bind(&mut p, Source::Host(path.clone()), path, BindAccess::ReadOnly, true),
            _ => {}
        }
    }
    p.steps.push(Step::Dir("/etc".into()));
    for name in ETC {
        let path = Path::new("/etc").join(name);
        // Symlinks are followed: the bind mounts what they point to.
        let is_dir = match host(&path) {
            None => continue,
            Some(Kind::Dir) => true,
            Some(Kind::File) => false,
            Some(Kind::Symlink(_)) => matches!(followed(host, &path), Some(Kind::Dir)),
        };
        bind(&mut p, Source::Host(path.clone()), path, BindAccess::ReadOnly, is_dir);
    }
    for (name, contents) in etc_files() {
        p.steps.push(Step::File { path: Path::new("/etc").join(name), contents });
    }
    if policy.network == Network::Host && host(Path::new("/etc/resolv.conf")).is_some() {
        let path = PathBuf::from("/etc/resolv.conf");
        bind(&mut p, Source::Host(path.clone()), path, BindAccess::ReadOnly, false);
    }
    for extra in &policy.read_only {
        if !extra.is_absolute() {
            continue;
        }
        let Some(kind) = host(extra) else { continue };
        let mut ancestors: Vec<&Path> = extra.ancestors().skip(1).filter(|a| a.parent().is_some()).collect();
        ancestors.reverse();
        p.steps.extend(ancestors.into_iter().map(|a| Step::Dir(a.to_owned())));
        let is_dir = match kind {
            Kind::Dir => true,
            Kind::File => false,
            Kind::Symlink(_) => matches!(followed(host, extra), Some(Kind::Dir)),
        };
        bind(&mut p, Source::Host(extra.clone()), extra.clone(), BindAccess::ReadOnly, is_dir);
    }
    p.steps.push(Step::Dir("/dev".into()));
    p.steps.push(Step::Tmpfs { path: "/dev".into(), bytes: 64 << 10, mode: 0o755 });
    for name in DEVICES {
        let path = Path::new("/dev").join(name);
        if host(&path).is_some() {
            bind(&mut p, Source::Host(path.clone()), path, BindAccess::Device, false);
        }
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        p.steps.push(Step::Symlink { path: Path::new("/dev").join(name), target: target.into() });
    }
    p.steps.push(Step::Dir("/dev/shm".into()));
    p.steps.push(Step::ReadOnly("/dev".into()));
    p.steps.push(Step::Tmpfs { path: "/dev/shm".into(), bytes: policy.limits.tmp_bytes, mode: 0o1777 });
    p.steps.push(Step::Dir("/proc".into()));
    p.steps.push(Step::Proc("/proc".into()));
    p.steps.push(Step::Dir("/tmp".into()));
    p.steps.push(Step::Tmpfs { path: "/tmp".into(), bytes: policy.limits.tmp_bytes, mode: 0o1777 });
    bind(&mut p, Source::Workspace, WORKSPACE_INSIDE.into(), BindAccess::ReadWrite, true);
    p
}

/// What a path is once symlinks are followed (at most 8 of them).
fn followed(host: &dyn Fn(&Path) -> Option<Kind>, path: &Path) -> Option<Kind> {
    let mut at = path.to_owned();
    for _ in 0..8 {
        match host(&at)? {
            Kind::Symlink(target) => {
                at = if target.is_absolute() { target } else { at.parent().unwrap_or(Path::new("/")).join(target) }
            }
            kind => return Some(kind),
        }
    }
    None
}

/// The `/etc` files we write ourselves.
fn etc_files() -> Vec<(&'static str, String)> {
    let id = INSIDE_ID;
    vec![
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{id}:{id}:sandbox:{WORKSPACE_INSIDE}:/bin/sh\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        ("group", format!("root:x:0:\nsandbox:x:{id}:\nnogroup:x:65534:\n")),
        ("hostname", "sandbox\n".to_owned()),
        ("hosts", "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n".to_owned()),
        ("nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n".to_owned()),
    ]
}

/// What a host path is, for [`plan`].
pub(crate) fn host_kind(path: &Path) -> Option<Kind> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.file_type().is_symlink() {
        Some(Kind::Symlink(std::fs::read_link(path).ok()?))
    } else if meta.is_dir() {
        Some(Kind::Dir)
    } else {
        Some(Kind::File)
    }
}

/// Opens every source of the plan as an `O_PATH` descriptor (following
/// symlinks), with the launcher's own credentials. A source that vanished
/// since planning is an error.
pub(crate) fn open_sources(plan: &Plan, workspace: &Path) -> Result<Vec<OwnedFd>, String> {
    plan.sources
        .iter()
        .map(|s| {
            let path = match s {
                Source::Host(p) => p.as_path(),
                Source::Workspace => workspace,
            };
            open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| format!("cannot open {} for the sandbox: {e}", path.display()))
        })
        .collect()
}

/// Builds the root inside the new mount namespace and pivots into it.
/// Runs as the namespace's first process, which holds every capability in
/// the new user namespace (none outside it).
pub(crate) fn apply(plan: &Plan, sources: &[OwnedFd]) -> Result<(), String> {
    let staging = Path::new(STAGING);
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("cannot make the mount namespace private: {e}"))?;
    mount(Some("tmpfs"), staging, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("size=4m,mode=0755"))
        .map_err(|e| format!("cannot mount the sandbox root: {e}"))?;
    for step in &plan.steps {
        apply_step(staging, step, sources)?;
    }
    nix::unistd::chdir(staging).map_err(|e| format!("cannot enter the sandbox root: {e}"))?;
    // pivot_root(".", ".") stacks the old root under the new one; detaching
    // it leaves only the new root (the approach runc and LXC use).
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root failed: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("cannot detach the host's root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir / failed: {e}"))?;
    remount_read_only(Path::new("/"))
}

fn inside(staging: &Path, path: &Path) -> PathBuf {
    staging.join(path.strip_prefix("/").unwrap_or(path))
}

fn apply_step(staging: &Path, step: &Step, sources: &[OwnedFd]) -> Result<(), String> {
    let fail = |what: &str, path: &Path, e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
    match step {
        Step::Dir(path) => match std::fs::create_dir(inside(staging, path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(fail("cannot make", path, &e)),
        },
        Step::EmptyFile(path) => {
            std::fs::File::create(inside(staging, path)).map(drop).map_err(|e| fail("cannot make", path, &e))
        }
        Step::File { path, contents } => {
            std::fs::write(inside(staging, path), contents).map_err(|e| fail("cannot write", path, &e))
        }
        Step::Symlink { path, target } => {
            std::os::unix::fs::symlink(target, inside(staging, path)).map_err(|e| fail("cannot link", path, &e))
        }
        Step::Bind { source, path, access } => {
            let fd = sources.get(*source).ok_or_else(|| format!("no source for {}", path.display()))?;
            let from = format!("/proc/self/fd/{}", fd.as_raw_fd());
            let target = inside(staging, path);
            mount(Some(from.as_str()), &target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| fail("cannot bind", path, &e))?;
            let mut flags = MsFlags::MS_NOSUID;
            match access {
                BindAccess::ReadOnly => flags |= MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
                BindAccess::ReadWrite => flags |= MsFlags::MS_NODEV,
                BindAccess::Device => flags |= MsFlags::MS_NOEXEC,
            }
            remount(&target, flags).map_err(|e| fail("cannot restrict", path, &e))
        }
        Step::Tmpfs { path, bytes, mode } => {
            let options = format!("size={bytes},mode={mode:o}");
            mount(
                Some("tmpfs"),
                &inside(staging, path),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .map_err(|e| fail("cannot mount a tmpfs on", path, &e))
        }
        Step::Proc(path) => mount(
            Some("proc"),
            &inside(staging, path),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| fail("cannot mount proc on", path, &e)),
        Step::ReadOnly(path) => remount_read_only(&inside(staging, path)),
    }
}

fn remount_read_only(path: &Path) -> Result<(), String> {
    remount(path, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
        .map_err(|e| format!("cannot make {} read-only: {e}", path.display()))
}

/// Remounts a bind with `flags` added to the flags it already has. A mount
/// made in a user namespace may not drop flags its source has locked
/// (`noexec`, `nosuid`, the atime mode), so they are carried over.
fn remount(path: &Path, flags: MsFlags) -> nix::Result<()> {
    let current = statvfs(path)?.flags();
    let mut keep = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(fs) {
            keep |= ms;
        }
    }
    mount(None::<&str>, path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | keep | flags, None::<&str>)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(network: Network, read_only: Vec<PathBuf>) -> Policy {
        Policy {
            workspace: "/srv/data/workspaces/r".into(),
            network,
            read_only,
            ..crate::sandbox::policy::test_policy(true)
        }
    }

    /// A merged-/usr Debian host with a few /etc entries.
    fn debian(path: &Path) -> Option<Kind> {
        let p = path.to_str()?;
        match p {
            "/usr" | "/etc/ssl" | "/etc/alternatives" | "/opt/tools" => Some(Kind::Dir),
            "/bin" => Some(Kind::Symlink("usr/bin".into())),
            "/lib" => Some(Kind::Symlink("usr/lib".into())),
            "/etc/ld.so.cache" | "/etc/resolv.conf" | "/dev/null" | "/dev/urandom" => Some(Kind::File),
            _ => None,
        }
    }

    fn binds(plan: &Plan) -> Vec<(Source, PathBuf, BindAccess)> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Bind { source, path, access } => Some((plan.sources[*source].clone(), path.clone(), *access)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_system_directories_a_few_etc_entries_devices_and_the_workspace_are_bound() {
        let plan = plan(&policy(Network::None, vec![]), &debian);
        let host = |p: &str| Source::Host(p.into());
        assert_eq!(
            binds(&plan),
            vec![
                (host("/usr"), "/usr".into(), BindAccess::ReadOnly),
                (host("/etc/alternatives"), "/etc/alternatives".into(), BindAccess::ReadOnly),
                (host("/etc/ld.so.cache"), "/etc/ld.so.cache".into(), BindAccess::ReadOnly),
                (host("/etc/ssl"), "/etc/ssl".into(), BindAccess::ReadOnly),
                (host("/dev/null"), "/dev/null".into(), BindAccess::Device),
                (host("/dev/urandom"), "/dev/urandom".into(), BindAccess::Device),
                (Source::Workspace, "/workspace".into(), BindAccess::ReadWrite),
            ]
        );
        // Merged-/usr links are recreated, not bound.
        assert!(plan.steps.contains(&Step::Symlink { path: "/bin".into(), target: "usr/bin".into() }));
        // Our own users, a private /proc and a size-limited /tmp.
        assert!(plan.steps.iter().any(|s| matches!(s, Step::File { path, contents }
            if path == Path::new("/etc/passwd") && contents.contains("sandbox:x:1000:1000"))));
        assert!(plan.steps.contains(&Step::Proc("/proc".into())));
        assert!(plan.steps.contains(&Step::Tmpfs { path: "/tmp".into(), bytes: 256 << 20, mode: 0o1777 }));
        // Nothing of the data directory, /root, /home, /run or /var.
        for s in &plan.sources {
            if let Source::Host(p) = s {
                for hidden in ["/srv", "/root", "/home", "/run", "/var", "/proc", "/sys"] {
                    assert!(!p.starts_with(hidden), "{} must not be visible", p.display());
                }
            }
        }
    }

    #[test]
    fn the_resolver_only_with_host_network_and_extra_paths_under_their_parents() {
        let none = plan(&policy(Network::None, vec![]), &debian);
        assert!(!binds(&none).iter().any(|(_, p, _)| p == Path::new("/etc/resolv.conf")));
        let host =
            plan(&policy(Network::Host, vec!["/opt/tools".into(), "relative".into(), "/missing".into()]), &debian);
        let b = binds(&host);
        assert!(b.iter().any(|(_, p, _)| p == Path::new("/etc/resolv.conf")));
        assert!(b.iter().any(|(_, p, a)| p == Path::new("/opt/tools") && *a == BindAccess::ReadOnly));
        assert!(!b.iter().any(|(_, p, _)| p == Path::new("/missing") || p == Path::new("relative")));
        let opt = host.steps.iter().position(|s| s == &Step::Dir("/opt".into())).unwrap();
        let tools = host.steps.iter().position(|s| s == &Step::Dir("/opt/tools".into())).unwrap();
        assert!(opt < tools);
    }

    #[test]
    fn dev_is_read_only_before_shm_is_mounted_writable() {
        let plan = plan(&policy(Network::None, vec![]), &debian);
        let ro = plan.steps.iter().position(|s| s == &Step::ReadOnly("/dev".into())).unwrap();
        let shm = plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::Tmpfs { path, .. } if path == Path::new("/dev/shm")))
            .unwrap();
        let null = plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::Bind { path, .. } if path == Path::new("/dev/null")))
            .unwrap();
        assert!(null < ro && ro < shm);
    }
}
