//! What a sandboxed process may see and use, as plain data, and the messages
//! the launcher sends back. The host builds a [`Policy`] per process and hands
//! it to the launcher (see `launcher.rs`) over a socket; nothing here touches
//! the kernel, so all of it is tested without privileges.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `PATH` processes get.
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Where the workspace appears inside a namespaced sandbox.
pub const WORKSPACE_INSIDE: &str = "/workspace";
/// The user and group id a namespaced run has inside its user namespace.
pub const INSIDE_ID: u32 = 1000;
/// The variable every launcher (and, without namespaces, every sandboxed
/// process) carries, naming its run: a restarted host recognises leftovers by
/// it before ending them.
pub const RUN_MARKER: &str = "AUTOMATION_SANDBOX_RUN";
/// The hidden first argument that turns the host binary into the launcher.
pub const LAUNCHER_ARG: &str = "__sandbox-exec";

/// How strongly runs are confined, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Namespaces (user, mount, pid, network, ipc, uts) with a minimal root,
    /// plus every layer of `restricted`.
    Full,
    /// No namespaces: Landlock and/or seccomp, rlimits, its own session, and
    /// a subreaper that ends every descendant.
    Restricted,
    /// Unconfined: the host's user, a scrubbed environment, a process group
    /// and a time limit. Only when the operator says so.
    None,
}

impl Level {
    /// The level's name, as configured and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Restricted => "restricted",
            Level::None => "none",
        }
    }
}

/// Which confinement layers the launcher applies. Each one the host asks for
/// must succeed, or the process is not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layers {
    /// New user, mount, pid, ipc and uts namespaces (and network, unless the
    /// network is `host`) with a minimal root.
    pub namespaces: bool,
    /// A Landlock ruleset (best effort for the kernel's ABI).
    pub landlock: bool,
    /// A seccomp filter (with `no_new_privs`).
    pub seccomp: bool,
}

impl Layers {
    /// The layers of a level.
    pub fn of(level: Level) -> Layers {
        match level {
            Level::Full => Layers { namespaces: true, landlock: true, seccomp: true },
            Level::Restricted => Layers { namespaces: false, landlock: true, seccomp: true },
            Level::None => Layers { namespaces: false, landlock: false, seccomp: false },
        }
    }
}

/// What the run may reach over the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Nothing: an empty network namespace, and no IP sockets.
    #[default]
    None,
    /// The host's network stack as it is, loopback included.
    Host,
}

impl Network {
    /// Parses `none` or `host`.
    pub fn parse(s: &str) -> Option<Network> {
        match s {
            "none" => Some(Network::None),
            "host" => Some(Network::Host),
            _ => None,
        }
    }

    /// The setting's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

/// The niceness runs get unless configured (`AUTOMATION_SANDBOX_NICE`).
pub const DEFAULT_NICE: i32 = 10;

fn default_nice() -> i32 {
    DEFAULT_NICE
}

/// Resource limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory, bytes: a cgroup limit where the machine gives one, else the
    /// data segment of each process plus a watch on the run's total.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub processes: u64,
    /// Open files per process.
    pub open_files: u64,
    /// Largest file a process may write, bytes.
    pub file_size_bytes: u64,
    /// CPU seconds per process.
    pub cpu_seconds: u64,
    /// Disk the workspace may use, bytes (checked while the run goes).
    pub workspace_bytes: u64,
    /// Size of the private `/tmp` (and `/dev/shm`), bytes.
    pub tmp_bytes: u64,
    /// Scheduling niceness of the run's processes (0-19; higher yields
    /// more): runs are background work, and a webhook sender waiting for
    /// its 202 comes first when the CPU is short.
    #[serde(default = "default_nice")]
    pub nice: i32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 1 << 30,
            processes: 256,
            open_files: 1024,
            file_size_bytes: 1 << 30,
            cpu_seconds: 3600,
            workspace_bytes: 1 << 30,
            tmp_bytes: 256 << 20,
            nice: DEFAULT_NICE,
        }
    }
}

/// A user and group on the host that a run's processes become when the host
/// runs as root, so a run is never root (nor any real user) outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// User id on the host.
    pub uid: u32,
    /// Group id on the host.
    pub gid: u32,
}

/// Where the run's control group goes, when the machine gives a writable one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "version")]
pub enum CgroupPlan {
    /// A cgroup v2 directory whose `cgroup.subtree_control` has `memory` and
    /// `pids`; the run's cgroup is made inside it.
    V2 {
        /// The parent directory.
        parent: PathBuf,
    },
    /// cgroup v1 hierarchies (either may be missing).
    V1 {
        /// Parent directory in the memory hierarchy.
        memory: Option<PathBuf>,
        /// Parent directory in the pids hierarchy.
        pids: Option<PathBuf>,
    },
}

/// Everything the launcher needs to start one sandboxed process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    /// The run (names the cgroup and the leftover marker).
    pub run_id: String,
    /// A name unique to this process of the run (names its cgroup).
    pub process_id: String,
    /// The layers to apply.
    pub layers: Layers,
    /// The run's workspace on the host (made by the host, mode 0700).
    pub workspace: PathBuf,
    /// The program: a bare name looked up on [`SANDBOX_PATH`], or a path
    /// relative to the workspace.
    pub program: String,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// The complete environment of the process.
    pub env: Vec<(String, String)>,
    /// Working directory relative to the workspace.
    pub cwd: Option<String>,
    /// Network access.
    pub network: Network,
    /// Resource limits.
    pub limits: Limits,
    /// Host directories or files the run may read (and execute) besides the
    /// system directories, at the same path.
    pub read_only: Vec<PathBuf>,
    /// The host identity to run as; `None` keeps the host's own user (the
    /// only choice for a host that is not root).
    pub identity: Option<Identity>,
    /// The run's control group, if any.
    pub cgroup: Option<CgroupPlan>,
}

impl Policy {
    /// The workspace as the run's processes see it.
    pub fn workspace_inside(&self) -> PathBuf {
        if self.layers.namespaces { PathBuf::from(WORKSPACE_INSIDE) } else { self.workspace.clone() }
    }

    /// The working directory as the process sees it.
    pub fn cwd_inside(&self) -> PathBuf {
        let ws = self.workspace_inside();
        match &self.cwd {
            Some(c) => ws.join(c),
            None => ws,
        }
    }

    /// The program to `execve`, as the process sees it: a workspace path, or
    /// the first match of a bare name on [`SANDBOX_PATH`] (`exists` says
    /// whether a candidate is there).
    pub fn resolve_program(&self, exists: impl Fn(&std::path::Path) -> bool) -> Option<PathBuf> {
        if self.program.contains('/') {
            return Some(self.workspace_inside().join(&self.program));
        }
        SANDBOX_PATH.split(':').map(|dir| PathBuf::from(dir).join(&self.program)).find(|p| exists(p))
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

/// What the launcher tells the host, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Report {
    /// The command is running, confined as `applied` says.
    Started {
        /// The layers in force, in words (for the run's log and the probe).
        applied: Applied,
    },
    /// Nothing was started: setting up the sandbox or starting the program
    /// failed.
    Failed {
        /// Why, for the run's error.
        error: String,
    },
    /// The command ended, and every other process of the run with it.
    Ended {
        /// How the command ended.
        exit: Exit,
        /// Limits it hit, in words (`status_detail` carries them).
        notes: Vec<String>,
    },
}

/// The confinement a process actually got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Namespaces and a minimal root.
    pub namespaces: bool,
    /// Landlock: `fully_enforced`, `partially_enforced` (an older ABI) or
    /// `not_enforced`; `None` when not asked for.
    pub landlock: Option<String>,
    /// The kernel's Landlock ABI version, when known.
    pub landlock_abi: Option<i32>,
    /// A seccomp filter.
    pub seccomp: bool,
    /// The cgroup version used for memory and process limits, if any.
    pub cgroup: Option<String>,
}

/// What the host tells the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Ask every process to stop (SIGTERM), kill what is left after a grace
    /// period.
    Terminate,
    /// Kill every process now.
    Kill,
}

impl Control {
    /// The line sent for it.
    pub fn line(self) -> &'static [u8] {
        match self {
            Control::Terminate => b"terminate\n",
            Control::Kill => b"kill\n",
        }
    }

    /// Parses a line.
    pub fn parse(line: &str) -> Option<Control> {
        match line.trim() {
            "terminate" => Some(Control::Terminate),
            "kill" => Some(Control::Kill),
            _ => None,
        }
    }
}

/// A size for people: `64 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// A policy for unit tests: `sh` in `/data/workspaces/r`, no network.
#[cfg(test)]
pub(crate) fn test_policy(namespaces: bool) -> Policy {
    Policy {
        run_id: "r".into(),
        process_id: "r-1".into(),
        layers: Layers { namespaces, landlock: true, seccomp: true },
        workspace: PathBuf::from("/data/workspaces/r"),
        program: "sh".into(),
        args: vec![],
        env: vec![],
        cwd: None,
        network: Network::None,
        limits: Limits::default(),
        read_only: vec![],
        identity: None,
        cgroup: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(namespaces: bool) -> Policy {
        Policy { cwd: Some("sub".into()), ..test_policy(namespaces) }
    }

    #[test]
    fn the_workspace_is_at_slash_workspace_only_inside_namespaces() {
        assert_eq!(policy(true).cwd_inside(), PathBuf::from("/workspace/sub"));
        assert_eq!(policy(false).cwd_inside(), PathBuf::from("/data/workspaces/r/sub"));
    }

    #[test]
    fn programs_resolve_on_the_sandbox_path_or_in_the_workspace() {
        let p = policy(true);
        assert_eq!(p.resolve_program(|c| c == std::path::Path::new("/usr/bin/sh")), Some("/usr/bin/sh".into()));
        assert_eq!(p.resolve_program(|_| false), None);
        let mut local = policy(true);
        local.program = "./bin/run".into();
        assert_eq!(local.resolve_program(|_| false), Some("/workspace/./bin/run".into()));
    }

    #[test]
    fn reports_and_controls_round_trip() {
        for r in [
            Report::Started { applied: Applied { namespaces: true, ..Default::default() } },
            Report::Failed { error: "no".into() },
            Report::Ended { exit: Exit::Signal(9), notes: vec!["memory".into()] },
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Report>(&line).unwrap(), r);
        }
        for c in [Control::Terminate, Control::Kill] {
            assert_eq!(Control::parse(std::str::from_utf8(c.line()).unwrap()), Some(c));
        }
        assert_eq!(Control::parse("reboot"), None);
    }

    #[test]
    fn levels_order_and_layers() {
        assert!(Level::Full < Level::Restricted && Level::Restricted < Level::None);
        assert!(Layers::of(Level::Full).namespaces);
        assert!(!Layers::of(Level::Restricted).namespaces && Layers::of(Level::Restricted).landlock);
        assert_eq!(Layers::of(Level::None), Layers { namespaces: false, landlock: false, seccomp: false });
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
    }
}
