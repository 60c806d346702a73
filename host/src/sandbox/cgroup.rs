//! Control groups for runs, where the machine gives the host a writable one:
//! a memory limit the kernel enforces for the whole run (and reports as an
//! OOM kill), a process limit for the whole run, and a way to find and end
//! every process of a run after a crash.
//!
//! cgroup v2 is used when the host's cgroup (or `AUTOMATION_SANDBOX_CGROUP`)
//! delegates `memory` and `pids` to its children; cgroup v1 hierarchies
//! (`memory`, `pids`) when they are mounted and the host may write there
//! (typically as root). Neither is required: without them the limits are
//! rlimits and the launcher's own watch, and the isolation report says so.
//!
//! Layout: `<parent>/automation-sandbox/<tag>-<run>-<n>`, where the tag
//! names the host's data directory, so a host sweeping leftovers never
//! touches another host's runs on the same machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::policy::{CgroupPlan, Limits};

/// The directory every run's cgroup goes into.
const GROUP: &str = "automation-sandbox";

/// A cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    /// Where it is mounted.
    mount_point: PathBuf,
    /// Which part of the hierarchy the mount shows.
    root: String,
    /// `None` for cgroup2, else the v1 controllers it carries.
    controllers: Option<Vec<String>>,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, mount_point) = (left.get(3)?, left.get(4)?);
            match *right.first()? {
                "cgroup2" => {
                    Some(CgroupMount { mount_point: mount_point.into(), root: (*root).into(), controllers: None })
                }
                "cgroup" => {
                    let options = right.get(2)?.split(',').map(str::to_owned).collect();
                    Some(CgroupMount {
                        mount_point: mount_point.into(),
                        root: (*root).into(),
                        controllers: Some(options),
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// `(controllers, path)` per line of `/proc/self/cgroup` (`""` for v2).
fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// The directory of this process's cgroup in a mount.
fn own_dir(mount: &CgroupMount, path: &str) -> PathBuf {
    let rel = path.strip_prefix(mount.root.as_str()).unwrap_or(path).trim_start_matches('/');
    mount.mount_point.join(rel)
}

fn has_controllers(dir: &Path, file: &str) -> bool {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    let names: Vec<&str> = text.split_whitespace().collect();
    names.contains(&"memory") && names.contains(&"pids")
}

/// Makes `<parent>/automation-sandbox` and checks a child can be made in it.
fn usable(parent: &Path, v2: bool) -> Result<PathBuf, String> {
    let group = parent.join(GROUP);
    match std::fs::create_dir(&group) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", group.display())),
    }
    if v2 {
        std::fs::write(group.join("cgroup.subtree_control"), "+memory +pids")
            .map_err(|e| format!("cannot delegate memory and pids in {}: {e}", group.display()))?;
    }
    let probe = group.join(format!("probe-{}", std::process::id()));
    std::fs::create_dir(&probe).map_err(|e| format!("cannot create a cgroup in {}: {e}", group.display()))?;
    let _ = std::fs::remove_dir(&probe);
    Ok(parent.to_owned())
}

/// Finds a cgroup the host may put runs in. `explicit` is a v2 directory
/// the operator named; otherwise this process's own v2 cgroup, then v1.
pub(crate) fn detect(explicit: Option<&Path>) -> Result<CgroupPlan, String> {
    if let Some(dir) = explicit {
        if !has_controllers(dir, "cgroup.subtree_control") {
            return Err(format!("{} does not delegate memory and pids (cgroup.subtree_control)", dir.display()));
        }
        return usable(dir, true).map(|parent| CgroupPlan::V2 { parent });
    }
    let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let own = parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    let mut problems = Vec::new();
    if let (Some(m), Some((_, path))) =
        (mounts.iter().find(|m| m.controllers.is_none()), own.iter().find(|(c, _)| c.is_empty()))
    {
        let dir = own_dir(m, path);
        if has_controllers(&dir, "cgroup.subtree_control") {
            match usable(&dir, true) {
                Ok(parent) => return Ok(CgroupPlan::V2 { parent }),
                Err(e) => problems.push(e),
            }
        } else {
            problems.push(format!("cgroup v2 at {}: memory and pids are not delegated", dir.display()));
        }
    }
    let v1 = |controller: &str| -> Option<Result<PathBuf, String>> {
        let m = mounts.iter().find(|m| m.controllers.as_ref().is_some_and(|c| c.iter().any(|x| x == controller)))?;
        let (_, path) = own.iter().find(|(c, _)| c.split(',').any(|x| x == controller))?;
        Some(usable(&own_dir(m, path), false))
    };
    let memory = v1("memory");
    let pids = v1("pids");
    let (memory, pids) = match (memory, pids) {
        (None, None) => {
            problems.push("no cgroup v1 memory or pids hierarchy".into());
            return Err(problems.join("; "));
        }
        (m, p) => (m, p),
    };
    let mut keep = |r: Option<Result<PathBuf, String>>| match r {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            problems.push(e);
            None
        }
        None => None,
    };
    let (memory, pids) = (keep(memory), keep(pids));
    if memory.is_none() && pids.is_none() {
        return Err(problems.join("; "));
    }
    Ok(CgroupPlan::V1 { memory, pids })
}

/// A short name of the plan, for reports.
pub(crate) fn describe(plan: &CgroupPlan) -> String {
    match plan {
        CgroupPlan::V2 { .. } => "v2 (memory, pids)".into(),
        CgroupPlan::V1 { memory, pids } => {
            let parts: Vec<&str> =
                [memory.as_ref().map(|_| "memory"), pids.as_ref().map(|_| "pids")].into_iter().flatten().collect();
            format!("v1 ({})", parts.join(", "))
        }
    }
}

/// One run's cgroup (one directory per hierarchy).
pub(crate) struct RunCgroup {
    v2: bool,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value).map_err(|e| format!("cannot write {}/{file}: {e}", dir.display()))
}

fn make(parent: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = parent.join(GROUP).join(name);
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create the run's cgroup {}: {e}", dir.display()))?;
    Ok(dir)
}

impl RunCgroup {
    /// Creates the run's cgroup with its limits.
    pub(crate) fn create(plan: &CgroupPlan, name: &str, limits: &Limits) -> Result<RunCgroup, String> {
        let cg = match plan {
            CgroupPlan::V2 { parent } => {
                let dir = make(parent, name)?;
                RunCgroup { v2: true, memory: Some(dir.clone()), pids: Some(dir) }
            }
            CgroupPlan::V1 { memory, pids } => RunCgroup {
                v2: false,
                memory: memory.as_deref().map(|p| make(p, name)).transpose()?,
                pids: pids.as_deref().map(|p| make(p, name)).transpose()?,
            },
        };
        if let Some(dir) = &cg.memory {
            if cg.v2 {
                write(dir, "memory.max", &limits.memory_bytes.to_string())?;
                // No swap: the limit is what the run may hold.
                let _ = write(dir, "memory.swap.max", "0");
            } else {
                write(dir, "memory.limit_in_bytes", &limits.memory_bytes.to_string())?;
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(dir, "memory.memsw.limit_in_bytes", &limits.memory_bytes.to_string())?;
                }
            }
        }
        if let Some(dir) = &cg.pids {
            write(dir, "pids.max", &limits.processes.to_string())?;
        }
        Ok(cg)
    }

    /// True if the kernel enforces the memory limit for the whole run.
    pub(crate) fn limits_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Moves a process (and so everything it starts) into the cgroup.
    pub(crate) fn add(&self, pid: Pid) -> Result<(), String> {
        let mut dirs: Vec<&PathBuf> = self.memory.iter().chain(self.pids.iter()).collect();
        dirs.dedup();
        for dir in dirs {
            write(dir, "cgroup.procs", &pid.as_raw().to_string())?;
        }
        Ok(())
    }

    /// How many processes the kernel killed at the memory limit.
    pub(crate) fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        counter(&dir.join(file), "oom_kill")
    }

    /// True if the process limit is the cgroup's (which counts refusals).
    pub(crate) fn fork_refusals_counted(&self) -> bool {
        self.pids.is_some()
    }

    /// How many forks failed at the process limit.
    pub(crate) fn fork_refusals(&self) -> u64 {
        self.pids.as_ref().map_or(0, |dir| counter(&dir.join("pids.events"), "max"))
    }

    /// Kills every process in the cgroup, then removes it.
    pub(crate) fn remove(&self) {
        let mut dirs: Vec<&PathBuf> = self.memory.iter().chain(self.pids.iter()).collect();
        dirs.dedup();
        for dir in dirs {
            end_and_remove(dir, self.v2);
        }
    }
}

fn counter(file: &Path, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Kills what is in a cgroup directory and removes it (retrying briefly:
/// the kernel frees a cgroup only once its last process is reaped).
fn end_and_remove(dir: &Path, v2: bool) {
    for _ in 0..100 {
        if v2 {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    tracing::warn!(cgroup = %dir.display(), "cannot remove a run's cgroup");
}

/// Ends and removes every run cgroup whose name starts with `tag-` (left by
/// an earlier process of this host); returns how many there were.
pub(crate) fn sweep(plan: &CgroupPlan, tag: &str) -> usize {
    let (parents, v2): (Vec<&PathBuf>, bool) = match plan {
        CgroupPlan::V2 { parent } => (vec![parent], true),
        CgroupPlan::V1 { memory, pids } => (memory.iter().chain(pids.iter()).collect(), false),
    };
    let prefix = format!("{tag}-");
    let mut n = 0;
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(parent.join(GROUP)) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) && e.path().is_dir() {
                end_and_remove(&e.path(), v2);
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_and_proc_cgroup_are_read() {
        let mountinfo = "\
35 24 0:30 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
36 24 0:31 / /sys/fs/cgroup/pids rw,relatime shared:13 - cgroup cgroup rw,pids
40 24 0:35 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
41 24 0:36 /kubepods /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct
22 1 8:1 / / rw - ext4 /dev/vda rw";
        let m = parse_mountinfo(mountinfo);
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[2],
            CgroupMount { mount_point: "/sys/fs/cgroup/unified".into(), root: "/".into(), controllers: None }
        );
        assert!(m[0].controllers.as_ref().unwrap().contains(&"memory".to_owned()));
        let own = parse_proc_cgroup("4:memory:/process_api/abc\n8:pids:/\n0::/\n");
        assert_eq!(own[0], ("memory".into(), "/process_api/abc".into()));
        assert_eq!(own_dir(&m[0], &own[0].1), PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"));
        assert_eq!(own_dir(&m[2], "/"), PathBuf::from("/sys/fs/cgroup/unified"));
        // A mount showing only part of the hierarchy (a container).
        assert_eq!(own_dir(&m[3], "/kubepods/pod1"), PathBuf::from("/sys/fs/cgroup/cpu/pod1"));
    }

    #[test]
    fn counters_are_read_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.oom_control");
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(counter(&f, "oom_kill"), 3);
        assert_eq!(counter(&f, "missing"), 0);
        assert_eq!(describe(&CgroupPlan::V1 { memory: Some("/m".into()), pids: None }), "v1 (memory)");
    }
}
