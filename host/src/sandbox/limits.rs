//! Resource limits of a run's processes (rlimits), decided from the policy
//! (pure) and applied by the process to itself before `execve`.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use super::policy::Limits;

/// One rlimit to set: soft and hard values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rlimit {
    /// Which resource.
    pub resource: Resource,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// The rlimits of a run.
///
/// - Memory: when a cgroup enforces memory (and reports an OOM kill), the
///   data segment is left alone so the kernel's kill names the limit;
///   otherwise `RLIMIT_DATA` caps each process at the limit.
/// - Processes: inside a user namespace `RLIMIT_NPROC` counts the run's own
///   user only, so it is the run's own budget; without one it counts every
///   process of the user, so `existing` (how many that user has now) is
///   added. A pids cgroup, when there is one, is the limit instead.
/// - A file can never be larger than the workspace may be.
pub(crate) fn rlimits(
    l: &Limits,
    memory_by_cgroup: bool,
    processes_by_cgroup: bool,
    existing_processes: u64,
) -> Vec<Rlimit> {
    // With a pids cgroup the cgroup enforces the limit (and counts refused
    // forks, which the run's status then names); the rlimit is a backstop.
    let processes = if processes_by_cgroup { l.processes.saturating_mul(2) } else { l.processes };
    let mut out = vec![
        Rlimit { resource: Resource::RLIMIT_NOFILE, soft: l.open_files, hard: l.open_files },
        Rlimit {
            resource: Resource::RLIMIT_FSIZE,
            soft: l.file_size_bytes.min(l.workspace_bytes),
            hard: l.file_size_bytes.min(l.workspace_bytes),
        },
        // SIGXCPU at the limit, SIGKILL a little later if it is ignored.
        Rlimit { resource: Resource::RLIMIT_CPU, soft: l.cpu_seconds, hard: l.cpu_seconds.saturating_add(5) },
        Rlimit { resource: Resource::RLIMIT_CORE, soft: 0, hard: 0 },
        // No raising the priority back (the launcher lowered it).
        Rlimit { resource: Resource::RLIMIT_NICE, soft: 0, hard: 0 },
        Rlimit { resource: Resource::RLIMIT_MEMLOCK, soft: 64 << 10, hard: 64 << 10 },
        Rlimit {
            resource: Resource::RLIMIT_NPROC,
            soft: processes.saturating_add(existing_processes),
            hard: processes.saturating_add(existing_processes),
        },
    ];
    if !memory_by_cgroup {
        out.push(Rlimit { resource: Resource::RLIMIT_DATA, soft: l.memory_bytes, hard: l.memory_bytes });
    }
    out
}

/// Applies rlimits to the calling process. A value above the current hard
/// limit (which only a privileged process could raise) is lowered to it.
pub(crate) fn apply(limits: &[Rlimit]) -> Result<(), String> {
    for l in limits {
        let (_, hard_now) = getrlimit(l.resource).map_err(|e| format!("getrlimit {:?}: {e}", l.resource))?;
        let hard = l.hard.min(hard_now);
        let soft = l.soft.min(hard);
        setrlimit(l.resource, soft, hard).map_err(|e| format!("setrlimit {:?}: {e}", l.resource))?;
    }
    Ok(())
}

/// How many processes (threads count) `uid` has now, from `/proc`.
pub(crate) fn processes_of(uid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut n = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        if real_uid == Some(uid) {
            let threads = status
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1);
            n += threads;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_an_rlimit_only_without_a_cgroup() {
        let l = Limits::default();
        let with = rlimits(&l, true, false, 0);
        let without = rlimits(&l, false, false, 0);
        assert!(!with.iter().any(|r| r.resource == Resource::RLIMIT_DATA));
        let data = without.iter().find(|r| r.resource == Resource::RLIMIT_DATA).unwrap();
        assert_eq!((data.soft, data.hard), (1 << 30, 1 << 30));
    }

    #[test]
    fn files_never_outgrow_the_workspace_and_processes_add_to_what_exists() {
        let l = Limits { workspace_bytes: 16 << 20, ..Limits::default() };
        let r = rlimits(&l, false, false, 40);
        let fsize = r.iter().find(|r| r.resource == Resource::RLIMIT_FSIZE).unwrap();
        assert_eq!(fsize.soft, 16 << 20);
        let nproc = r.iter().find(|r| r.resource == Resource::RLIMIT_NPROC).unwrap();
        assert_eq!(nproc.soft, 256 + 40);
        let cpu = r.iter().find(|r| r.resource == Resource::RLIMIT_CPU).unwrap();
        assert!(cpu.hard > cpu.soft);
        let by_cgroup = rlimits(&l, false, true, 0);
        let nproc = by_cgroup.iter().find(|r| r.resource == Resource::RLIMIT_NPROC).unwrap();
        assert_eq!(nproc.soft, 512, "the cgroup limits first, so it can report");
    }

    #[test]
    fn this_process_is_counted() {
        assert!(processes_of(nix::unistd::getuid().as_raw()) >= 1);
    }
}
