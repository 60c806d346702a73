//! The local sandbox: per-run workspaces and confined processes on this
//! machine, for executor plugins granted `sandbox`.
//!
//! Each process is started through the launcher (`launcher.rs`): the host
//! binary re-executed in a helper mode, which puts the run in new user,
//! mount, pid, network, ipc and uts namespaces with a minimal root
//! (`root.rs`), then applies Landlock (`landlock.rs`), rlimits (`limits.rs`),
//! `no_new_privs` and a seccomp filter (`seccomp.rs`) before executing the
//! command, and a cgroup where the machine gives one (`cgroup.rs`). What a
//! process may see and use is plain data (`policy.rs`).
//!
//! At first use the host probes what the kernel allows by starting real
//! sandboxed processes, and uses the strongest level that works: `full`,
//! else `restricted` (no namespaces), and refuses to run processes at all
//! when neither works, unless the operator chose `none`. The result is
//! [`Isolation`], logged once and shown by the API.
//!
//! This side of the sandbox keeps the process table, captures bounded
//! output, enforces the time limit and relays cancels; every process of a
//! run ends when its command ends, when it is cancelled or times out, and
//! when the host goes away (the launcher watches its socket to the host).

pub mod launcher;
pub mod policy;

mod cgroup;
mod landlock;
mod limits;
mod root;
mod seccomp;
mod sys;
mod workspace;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Component as PathComponent, Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use policy::{Applied, CgroupPlan, Control, Exit, LAUNCHER_ARG, Layers, Policy, RUN_MARKER, Report};
pub use policy::{DEFAULT_NICE, Identity, Level, Limits, Network};
pub use sys::PriorityError;

/// Lowers the calling thread's scheduling priority to niceness `nice`
/// (never raises it).
pub fn lower_thread_priority(nice: i32) -> Result<(), PriorityError> {
    sys::lower_priority(nice)
}

/// Makes the calling thread run only when the CPU is otherwise idle
/// (`SCHED_IDLE`), or where that is refused, at niceness 19.
pub fn idle_thread_priority() -> Result<(), PriorityError> {
    match sys::idle_priority() {
        Ok(()) => Ok(()),
        Err(_) => sys::lower_priority(19),
    }
}

/// How long a process may take to start (build its sandbox and `execve`).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Payloads up to this size are also passed in `AUTOMATION_EVENT_PAYLOAD`.
pub const PAYLOAD_ENV_MAX: usize = 64 << 10;

/// Why a sandbox operation failed; executors see it as a WIT `error`.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The caller asked for something invalid (a path leaving the workspace).
    #[error("{0}")]
    Invalid(String),
    /// The process or workspace is not known.
    #[error("{0}")]
    NotFound(String),
    /// The host does not allow it (no isolation, a network it may not have).
    #[error("{0}")]
    Denied(String),
    /// The operating system refused.
    #[error("{0}")]
    Io(String),
}

/// Which isolation the operator asks for (`AUTOMATION_SANDBOX_ISOLATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum IsolationSetting {
    /// The strongest level this machine allows; refuse when nothing works.
    Auto,
    /// Namespaces and every layer, or refuse.
    Full,
    /// No namespaces (Landlock, seccomp, rlimits), or refuse.
    Restricted,
    /// Unconfined; every run's status says so.
    None,
}

/// Where runs' cgroups go (`AUTOMATION_SANDBOX_CGROUP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSetting {
    /// Find one (cgroup v2 delegated to the host, else v1 when writable).
    Auto,
    /// Never use cgroups.
    Off,
    /// This cgroup v2 directory, which delegates `memory` and `pids`.
    Dir(PathBuf),
}

/// The sandbox's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Requested isolation.
    pub isolation: IsolationSetting,
    /// Network of runs by default.
    pub network: Network,
    /// Whether an automation may choose another network
    /// (`executor.config.network`).
    pub network_per_automation: bool,
    /// Resource limits of each run.
    pub limits: Limits,
    /// Extra host paths runs may read.
    pub read_only: Vec<PathBuf>,
    /// Who runs become on the host when the host is root.
    pub identity: Identity,
    /// Cgroups.
    pub cgroup: CgroupSetting,
    /// Bytes of stdout and of stderr kept per process.
    pub output_limit: usize,
    /// Bundle archive limits.
    pub archive_limits: crate::archive::Limits,
}

impl Settings {
    /// Defaults, with `output_limit` and `archive_limits` given.
    pub fn new(output_limit: usize, archive_limits: crate::archive::Limits) -> Settings {
        Settings {
            isolation: IsolationSetting::Auto,
            network: Network::None,
            network_per_automation: false,
            limits: Limits::default(),
            read_only: Vec::new(),
            identity: Identity { uid: 65534, gid: 65534 },
            cgroup: CgroupSetting::Auto,
            output_limit,
            archive_limits,
        }
    }
}

/// What isolation runs get on this machine, found by the probe.
#[derive(Debug, Clone, Serialize)]
pub struct Isolation {
    /// The level runs get; `None` when runs are refused.
    pub level: Option<Level>,
    /// What the operator asked for.
    pub setting: IsolationSetting,
    /// What a probe process actually got.
    pub layers: Applied,
    /// The network runs get unless their automation may choose.
    pub network: Network,
    /// Whether automations may choose their network.
    pub network_per_automation: bool,
    /// Who runs are on the host: `uid:gid`, inside uid 1000 when namespaced.
    pub run_as: String,
    /// The limits of each run.
    pub limits: Limits,
    /// What did not work, and why.
    pub problems: Vec<String>,
    #[serde(skip)]
    use_layers: Layers,
    #[serde(skip)]
    cgroup: Option<CgroupPlan>,
}

impl Isolation {
    /// The level in words: `full`, `restricted`, `none` or `unavailable`.
    pub fn level_name(&self) -> &'static str {
        self.level.map_or("unavailable", Level::as_str)
    }

    /// One line for the log and for `/ready`.
    pub fn summary(&self) -> String {
        let mut s = format!("sandbox isolation: {}", self.level_name());
        let a = &self.layers;
        if self.level.is_some_and(|l| l != Level::None) {
            s.push_str(&format!(
                " (namespaces: {}, landlock: {}{}, seccomp: {}, cgroup: {}, network: {})",
                a.namespaces,
                a.landlock.as_deref().unwrap_or("off"),
                a.landlock_abi.map(|v| format!(" ABI {v}")).unwrap_or_default(),
                a.seccomp,
                a.cgroup.as_deref().unwrap_or("none"),
                self.network.as_str()
            ));
        }
        if !self.problems.is_empty() {
            s.push_str(&format!("; {}", self.problems.join("; ")));
        }
        s
    }
}

/// Where a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Still running.
    Running,
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
    /// Killed at its time limit.
    TimedOut,
}

/// A snapshot of a process.
#[derive(Debug, Clone)]
pub struct ProcessOutput {
    /// Its state.
    pub state: ProcessState,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
    /// True if some output was dropped at the limit.
    pub truncated: bool,
}

/// How to start a process.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// Program name or workspace-relative path.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment (on top of the minimal base).
    pub env: Vec<(String, String)>,
    /// Working directory relative to the workspace.
    pub cwd: Option<String>,
    /// Time limit.
    pub time_limit: Duration,
    /// The network the automation asks for (`None`: the host's default).
    pub network: Option<Network>,
}

/// Keeps the first and last halves of a stream up to a limit.
#[derive(Debug, Default)]
struct Bounded {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    dropped: u64,
    limit: usize,
}

impl Bounded {
    fn new(limit: usize) -> Bounded {
        Bounded { limit, ..Default::default() }
    }

    fn push(&mut self, mut data: &[u8]) {
        let half = self.limit / 2;
        if self.head.len() < half {
            let n = (half - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        let tail_cap = self.limit - half;
        for &b in data {
            if self.tail.len() == tail_cap {
                self.tail.pop_front();
                self.dropped += 1;
            }
            self.tail.push_back(b);
        }
    }

    fn text(&self) -> (String, bool) {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped > 0 {
            out.push_str(&format!("\n[... {} bytes omitted ...]\n", self.dropped));
        }
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        out.push_str(&String::from_utf8_lossy(&tail));
        (out, self.dropped > 0)
    }
}

struct Process {
    run_id: Uuid,
    state: watch::Receiver<ProcessState>,
    stdout: Arc<Mutex<Bounded>>,
    stderr: Arc<Mutex<Bounded>>,
    control: mpsc::UnboundedSender<Control>,
}

impl Process {
    fn snapshot(&self) -> ProcessOutput {
        let (stdout, t1) = self.stdout.lock().expect("stdout lock").text();
        let (stderr, t2) = self.stderr.lock().expect("stderr lock").text();
        ProcessOutput { state: *self.state.borrow(), stdout, stderr, truncated: t1 || t2 }
    }

    fn running(&self) -> bool {
        *self.state.borrow() == ProcessState::Running
    }
}

type Notes = Arc<Mutex<HashMap<Uuid, Vec<String>>>>;

/// Per run: signalled each time one of its processes ends, so the run's
/// driver polls its executor at once instead of at its next interval.
type Ended = Arc<Mutex<HashMap<Uuid, Arc<tokio::sync::Notify>>>>;

/// The file at a workspace's top a run writes its progress to
/// (`AUTOMATION_PROGRESS_FILE`, set by the local-sandbox executor).
pub const PROGRESS_FILE: &str = ".automation-progress";

/// The host side of the `sandbox` interface, shared by every executor call.
pub struct Sandbox {
    root: PathBuf,
    settings: Settings,
    runtime: tokio::runtime::Handle,
    processes: Mutex<HashMap<String, Arc<Process>>>,
    notes: Notes,
    ended: Ended,
    next_id: AtomicU64,
    isolation: OnceLock<Isolation>,
    /// Names this host's data directory in cgroups and leftover markers.
    tag: String,
}

impl Sandbox {
    /// A sandbox keeping workspaces under `root`.
    pub fn new(root: PathBuf, settings: Settings, runtime: tokio::runtime::Handle) -> Sandbox {
        let tag = {
            use sha2::Digest;
            let abs = std::path::absolute(&root).unwrap_or_else(|_| root.clone());
            hex::encode(&sha2::Sha256::digest(abs.as_os_str().as_encoded_bytes())[..4])
        };
        Sandbox {
            root,
            settings,
            runtime,
            processes: Mutex::default(),
            notes: Notes::default(),
            ended: Ended::default(),
            next_id: AtomicU64::new(1),
            isolation: OnceLock::new(),
            tag,
        }
    }

    /// What isolation runs get here (probed on first use, which blocks for
    /// the few milliseconds three sandboxed `true` processes take).
    pub fn isolation(&self) -> &Isolation {
        self.isolation.get_or_init(|| self.probe())
    }

    /// The run's workspace directory on the host.
    pub fn workspace(&self, run_id: Uuid) -> PathBuf {
        self.root.join(run_id.to_string())
    }

    /// The host identity runs take, when the host is root and runs are
    /// confined.
    fn identity(&self, level: Level) -> Option<Identity> {
        (level != Level::None && nix::unistd::geteuid().is_root()).then_some(self.settings.identity)
    }

    /// Creates the run's workspace (mode 0700, owned by the run's identity)
    /// if needed; returns the path as the run's processes see it.
    pub fn create_workspace(&self, run_id: Uuid) -> Result<String, SandboxError> {
        let dir = self.make_workspace(run_id)?;
        let iso = self.isolation();
        Ok(if iso.use_layers.namespaces { policy::WORKSPACE_INSIDE.to_owned() } else { dir.display().to_string() })
    }

    fn make_workspace(&self, run_id: Uuid) -> Result<PathBuf, SandboxError> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |e: std::io::Error| SandboxError::Io(format!("cannot create the workspace: {e}"));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.root).map_err(io)?;
        let dir = self.workspace(run_id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                if let Some(level) = self.isolation().level
                    && let Some(id) = self.identity(level)
                {
                    std::os::unix::fs::lchown(&dir, Some(id.uid), Some(id.gid)).map_err(io)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        Ok(dir)
    }

    /// Unpacks an archive, then writes files, into the run's workspace,
    /// never following a link (`workspace.rs`). Setuid, setgid and sticky
    /// bits are dropped; when runs have their own identity, everything is
    /// handed to it.
    pub fn unpack(
        &self,
        run_id: Uuid,
        archive: Option<&[u8]>,
        files: &[(String, u32, Vec<u8>)],
    ) -> Result<(), SandboxError> {
        let dir = self.make_workspace(run_id)?;
        let tree = workspace::Tree::open(&dir).map_err(SandboxError::Io)?;
        if let Some(bytes) = archive {
            crate::archive::check(bytes, self.settings.archive_limits)
                .map_err(|e| SandboxError::Invalid(e.to_string()))?;
            workspace::extract(bytes, &tree).map_err(|e| SandboxError::Io(format!("cannot unpack the bundle: {e}")))?;
        }
        for (path, mode, contents) in files {
            inside(&dir, path)?;
            tree.write_file(path, *mode, contents.as_slice()).map_err(SandboxError::Io)?;
        }
        if let Some(level) = self.isolation().level
            && let Some(id) = self.identity(level)
        {
            chown_tree(&dir, id).map_err(|e| SandboxError::Io(format!("cannot hand the workspace to the run: {e}")))?;
        }
        Ok(())
    }

    fn network_for(&self, asked: Option<Network>) -> Result<Network, SandboxError> {
        match asked {
            None => Ok(self.settings.network),
            Some(n) if n == self.settings.network || self.settings.network_per_automation => Ok(n),
            Some(n) => Err(SandboxError::Denied(format!(
                "this automation asks for sandbox network `{}`, but this host gives runs `{}` and does not let \
                 automations choose (AUTOMATION_SANDBOX_NETWORK_PER_AUTOMATION)",
                n.as_str(),
                self.settings.network.as_str()
            ))),
        }
    }

    /// Starts a process for the run; returns its id once its command runs.
    pub fn spawn(&self, run_id: Uuid, spec: CommandSpec) -> Result<String, SandboxError> {
        let iso = self.isolation();
        let Some(level) = iso.level else {
            return Err(SandboxError::Denied(format!(
                "the local sandbox cannot confine runs on this machine ({}); set AUTOMATION_SANDBOX_ISOLATION=none \
                 to run them unconfined",
                iso.problems.join("; ")
            )));
        };
        let network = self.network_for(spec.network)?;
        let dir = self.make_workspace(run_id)?;
        if let Some(c) = &spec.cwd {
            inside(&dir, c)?;
        }
        if spec.program.contains('/') {
            inside(&dir, &spec.program)?;
        }
        let layers = iso.use_layers;
        let seen = if layers.namespaces { PathBuf::from(policy::WORKSPACE_INSIDE) } else { dir.clone() };
        let tmp = if layers.namespaces {
            PathBuf::from("/tmp")
        } else {
            // No private /tmp without a mount namespace: one in the workspace.
            let t = dir.join(".tmp");
            std::fs::create_dir_all(&t).map_err(|e| SandboxError::Io(format!("cannot create {}: {e}", t.display())))?;
            if let Some(id) = self.identity(level) {
                let _ = std::os::unix::fs::lchown(&t, Some(id.uid), Some(id.gid));
            }
            t
        };
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let marker = format!("{}:{run_id}", self.tag);
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), policy::SANDBOX_PATH.into()),
            ("HOME".into(), seen.display().to_string()),
            ("LANG".into(), "C.UTF-8".into()),
            ("TMPDIR".into(), tmp.display().to_string()),
        ];
        for (k, v) in spec.env {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        env.retain(|(name, _)| name != RUN_MARKER);
        env.push((RUN_MARKER.into(), marker.clone()));
        let policy = Policy {
            run_id: run_id.to_string(),
            process_id: format!("{}-{run_id}-{n}", self.tag),
            layers,
            workspace: dir,
            program: spec.program,
            args: spec.args,
            env,
            cwd: spec.cwd,
            network,
            limits: self.settings.limits,
            read_only: self.settings.read_only.clone(),
            identity: self.identity(level),
            cgroup: iso.cgroup.clone(),
        };
        let (sock, mut child) = launch(&self.runtime, &policy, &marker)?;
        let (first, rest) = match read_first_report(&sock) {
            Ok(r) => r,
            Err(e) => {
                let _ = child.start_kill();
                return Err(e);
            }
        };
        match first {
            Report::Started { .. } => {}
            Report::Failed { error } => {
                let _ = self.runtime.block_on(child.wait());
                return Err(SandboxError::Io(error));
            }
            Report::Ended { .. } => return Err(SandboxError::Io("the sandbox reported an end before a start".into())),
        }
        if level == Level::None {
            self.note(
                run_id,
                "ran unconfined: AUTOMATION_SANDBOX_ISOLATION=none (the host's user, no namespaces, Landlock or seccomp)"
                    .into(),
            );
        }
        let id = format!("{run_id}:{n}");
        let stdout = Arc::new(Mutex::new(Bounded::new(self.settings.output_limit)));
        let stderr = Arc::new(Mutex::new(Bounded::new(self.settings.output_limit)));
        let (state_tx, state_rx) = watch::channel(ProcessState::Running);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let process = Arc::new(Process {
            run_id,
            state: state_rx,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            control: control_tx,
        });
        let sock = {
            let _guard = self.runtime.enter();
            sock.set_nonblocking(true).map_err(|e| SandboxError::Io(format!("socket: {e}")))?;
            tokio::net::UnixStream::from_std(sock).map_err(|e| SandboxError::Io(format!("socket: {e}")))?
        };
        let supervisor = Supervisor {
            run_id,
            child,
            sock,
            pending: rest,
            control: control_rx,
            time_limit: spec.time_limit,
            stdout,
            stderr,
            state: state_tx,
            notes: self.notes.clone(),
            ended: self.ended_signal(run_id),
        };
        self.runtime.spawn(supervisor.run());
        self.processes.lock().expect("process table").insert(id.clone(), process);
        Ok(id)
    }

    /// Signalled (one stored permit) whenever a process of `run_id` ends;
    /// the run's driver waits on it between polls. Kept until
    /// [`Sandbox::release_run`].
    pub fn ended_signal(&self, run_id: Uuid) -> Arc<tokio::sync::Notify> {
        self.ended.lock().expect("ended signals").entry(run_id).or_default().clone()
    }

    fn note(&self, run_id: Uuid, note: String) {
        self.notes.lock().expect("notes").entry(run_id).or_default().push(note);
    }

    /// What the sandbox has to say about a run (limits it hit, how it was
    /// confined), for its `status_detail`, once the run's processes have
    /// ended (waiting up to `wait` for them); each note is given once.
    pub async fn settled_notes(&self, run_id: Uuid, wait: Duration) -> Vec<String> {
        let states: Vec<watch::Receiver<ProcessState>> = self
            .processes
            .lock()
            .expect("process table")
            .values()
            .filter(|p| p.run_id == run_id)
            .map(|p| p.state.clone())
            .collect();
        let _ = tokio::time::timeout(wait, async {
            for mut s in states {
                let _ = s.wait_for(|s| *s != ProcessState::Running).await;
            }
        })
        .await;
        self.notes.lock().expect("notes").remove(&run_id).unwrap_or_default()
    }

    /// Forgets a run that is over on this host: ends any process of it still
    /// going and drops its entries (a kept workspace stays on disk).
    pub fn release_run(&self, run_id: Uuid) {
        self.processes.lock().expect("process table").retain(|_, p| {
            if p.run_id != run_id {
                return true;
            }
            if p.running() {
                let _ = p.control.send(Control::Kill);
            }
            false
        });
        self.notes.lock().expect("notes").remove(&run_id);
        self.ended.lock().expect("ended signals").remove(&run_id);
    }

    fn find(&self, run_id: Uuid, id: &str) -> Result<Arc<Process>, SandboxError> {
        let p = self.processes.lock().expect("process table").get(id).cloned();
        match p {
            Some(p) if p.run_id == run_id => Ok(p),
            _ => Err(SandboxError::NotFound(format!(
                "process {id:?} is not known to this host for this run (was the host restarted?)"
            ))),
        }
    }

    /// The process's state and output so far.
    pub fn status(&self, run_id: Uuid, id: &str) -> Result<ProcessOutput, SandboxError> {
        Ok(self.find(run_id, id)?.snapshot())
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait(&self, run_id: Uuid, id: &str, timeout: Duration) -> Result<ProcessOutput, SandboxError> {
        let p = self.find(run_id, id)?;
        let mut rx = p.state.clone();
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, rx.wait_for(|s| *s != ProcessState::Running)).await });
        Ok(p.snapshot())
    }

    /// Stops the process and everything it started (SIGTERM, then SIGKILL
    /// after a grace period).
    pub fn kill(&self, run_id: Uuid, id: &str) -> Result<(), SandboxError> {
        let p = self.find(run_id, id)?;
        if p.running() {
            let _ = p.control.send(Control::Terminate);
        }
        Ok(())
    }

    /// What the run's processes on this host wrote so far, in the order
    /// they started (setup, then the command), for live logs; `None` when
    /// this host has none of them (another host runs it, or it is over).
    pub fn live_output(&self, run_id: Uuid) -> Option<ProcessOutput> {
        let mut mine: Vec<(u64, Arc<Process>)> = {
            let table = self.processes.lock().expect("process table");
            table
                .iter()
                .filter(|(_, p)| p.run_id == run_id)
                .map(|(k, p)| (k.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0), p.clone()))
                .collect()
        };
        if mine.is_empty() {
            return None;
        }
        mine.sort_by_key(|(n, _)| *n);
        let mut out = ProcessOutput {
            state: ProcessState::Exited(0),
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
        };
        for (_, p) in &mine {
            let snap = p.snapshot();
            out.stdout.push_str(&snap.stdout);
            out.stderr.push_str(&snap.stderr);
            out.truncated |= snap.truncated;
            if snap.state == ProcessState::Running || out.state != ProcessState::Running {
                out.state = snap.state;
            }
        }
        Some(out)
    }

    /// The end (at most 4 KiB) of the progress file a run writes at its
    /// workspace's top (`$AUTOMATION_PROGRESS_FILE`), if there is one. The
    /// run controls that file, so it is opened without following a
    /// symbolic link or blocking on a FIFO, and read only when it is a
    /// regular file with no other link (never a hard link to a file the
    /// host can read and the run cannot).
    pub fn read_progress(&self, run_id: Uuid) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let path = self.workspace(run_id).join(PROGRESS_FILE);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .ok()?;
        let meta = f.metadata().ok()?;
        if !meta.is_file() || meta.nlink() != 1 {
            return None;
        }
        f.seek(SeekFrom::Start(meta.len().saturating_sub(4096))).ok()?;
        let mut buf = Vec::with_capacity(4096);
        f.take(4096).read_to_end(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Runs whose workspace directory is still on disk, was last changed
    /// before `before`, and has no process of this host going: kept
    /// workspaces (`keep_workspace`) and ones a crash left, for the
    /// retention sweep to remove (after it checked the run is final).
    pub fn stale_workspaces(&self, before: std::time::SystemTime) -> Vec<Uuid> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let busy: std::collections::HashSet<Uuid> =
            self.processes.lock().expect("process table").values().map(|p| p.run_id).collect();
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let id = Uuid::parse_str(e.file_name().to_str()?).ok()?;
                let modified = e.metadata().ok()?.modified().ok()?;
                (modified < before && !busy.contains(&id)).then_some(id)
            })
            .collect()
    }

    /// Ends the run's processes and removes its workspace.
    pub fn remove_workspace(&self, run_id: Uuid) -> Result<(), SandboxError> {
        let mine: Vec<Arc<Process>> = {
            let mut table = self.processes.lock().expect("process table");
            let ids: Vec<String> = table.iter().filter(|(_, p)| p.run_id == run_id).map(|(k, _)| k.clone()).collect();
            ids.into_iter().filter_map(|k| table.remove(&k)).collect()
        };
        for p in &mine {
            if p.running() {
                let _ = p.control.send(Control::Kill);
            }
        }
        for p in &mine {
            let mut rx = p.state.clone();
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| *s != ProcessState::Running)).await
            });
        }
        let dir = self.workspace(run_id);
        if mine.is_empty() && dir.exists() {
            // A workspace whose processes this host process never started: a
            // previous process of this host left it (and maybe processes).
            let ended = end_marked(&format!("{}:{run_id}", self.tag));
            if ended > 0 {
                tracing::warn!(run.id = %run_id, processes = ended, "ended sandbox processes left by a previous host process");
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SandboxError::Io(format!("cannot remove the workspace: {e}"))),
        }
    }

    /// Ends whatever an earlier process of this host left running: its runs'
    /// cgroups and every process carrying this host's marker. Call once at
    /// start-up, before any run starts.
    pub fn sweep_leftovers(&self) -> usize {
        let mut n = 0;
        if let Some(plan) = &self.isolation().cgroup {
            n += cgroup::sweep(plan, &self.tag);
        }
        n += end_marked(&format!("{}:", self.tag));
        if n > 0 {
            tracing::warn!(leftovers = n, "ended sandbox processes left by a previous process of this host");
        }
        n
    }

    /// Kills every process the sandbox started (at shutdown).
    pub fn kill_all(&self) {
        for p in self.processes.lock().expect("process table").values() {
            if p.running() {
                let _ = p.control.send(Control::Kill);
            }
        }
    }

    /// Runs a sandboxed `true` with `layers`; what it got, or why it failed.
    fn try_layers(&self, layers: Layers, cgroup: Option<&CgroupPlan>, level: Level) -> Result<Applied, String> {
        let dir =
            self.root.join(format!(".probe-{}-{}", std::process::id(), self.next_id.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let identity = self.identity(level);
        if let Some(id) = identity {
            let _ = std::os::unix::fs::lchown(&dir, Some(id.uid), Some(id.gid));
        }
        let policy = Policy {
            run_id: "probe".into(),
            process_id: format!("{}-probe-{}", self.tag, std::process::id()),
            layers,
            workspace: dir.clone(),
            program: "true".into(),
            args: vec![],
            env: vec![("PATH".into(), policy::SANDBOX_PATH.into())],
            cwd: None,
            network: Network::None,
            limits: self.settings.limits,
            read_only: self.settings.read_only.clone(),
            identity,
            cgroup: cgroup.cloned(),
        };
        let result = run_blocking(&policy);
        let _ = std::fs::remove_dir_all(&dir);
        let (applied, exit) = result?;
        match exit {
            Exit::Code(0) => Ok(applied),
            other => Err(format!("a sandboxed `true` ended with {other:?}")),
        }
    }

    fn probe(&self) -> Isolation {
        let s = &self.settings;
        let mut problems = Vec::new();
        let cgroup = match &s.cgroup {
            CgroupSetting::Off => None,
            CgroupSetting::Auto => cgroup::detect(None).map_err(|e| problems.push(format!("cgroups: {e}"))).ok(),
            CgroupSetting::Dir(d) => cgroup::detect(Some(d)).map_err(|e| problems.push(format!("cgroups: {e}"))).ok(),
        };
        let _ = std::fs::create_dir_all(&self.root);
        let mut chosen: Option<(Level, Layers, Applied)> = None;
        if matches!(s.isolation, IsolationSetting::Auto | IsolationSetting::Full) {
            let layers = Layers::of(Level::Full);
            match self.try_layers(layers, cgroup.as_ref(), Level::Full) {
                Ok(applied) => chosen = Some((Level::Full, layers, applied)),
                Err(e) => problems.push(format!("namespaces: {e}")),
            }
        }
        if chosen.is_none() && matches!(s.isolation, IsolationSetting::Auto | IsolationSetting::Restricted) {
            for layers in [
                Layers { namespaces: false, landlock: true, seccomp: true },
                Layers { namespaces: false, landlock: true, seccomp: false },
                Layers { namespaces: false, landlock: false, seccomp: true },
            ] {
                match self.try_layers(layers, cgroup.as_ref(), Level::Restricted) {
                    // Landlock that the kernel does not enforce is no layer.
                    Ok(applied) if layers.landlock && applied.landlock.as_deref() == Some("not_enforced") => {
                        problems.push("landlock: the kernel does not enforce it".into())
                    }
                    Ok(applied) => {
                        chosen = Some((Level::Restricted, layers, applied));
                        break;
                    }
                    Err(e) => problems.push(format!(
                        "{}: {e}",
                        match (layers.landlock, layers.seccomp) {
                            (true, true) => "landlock and seccomp",
                            (true, false) => "landlock",
                            _ => "seccomp",
                        }
                    )),
                }
            }
        }
        if s.isolation == IsolationSetting::None {
            let layers = Layers::of(Level::None);
            match self.try_layers(layers, None, Level::None) {
                Ok(applied) => chosen = Some((Level::None, layers, applied)),
                Err(e) => problems.push(format!("launcher: {e}")),
            }
        }
        problems.dedup();
        let (level, use_layers, layers) = match chosen {
            Some((l, use_layers, applied)) => (Some(l), use_layers, applied),
            None => (None, Layers::of(Level::None), Applied::default()),
        };
        let run_as = match level.and_then(|l| self.identity(l)) {
            Some(id) => format!("{}:{} on the host", id.uid, id.gid),
            None => format!("{}:{} on the host (the host's user)", nix::unistd::geteuid(), nix::unistd::getegid()),
        };
        let run_as = if use_layers.namespaces { format!("{run_as}, 1000:1000 inside") } else { run_as };
        Isolation {
            level,
            setting: s.isolation,
            layers,
            network: s.network,
            network_per_automation: s.network_per_automation,
            run_as,
            limits: s.limits,
            problems,
            use_layers,
            cgroup: cgroup.filter(|_| level.is_some()),
        }
    }
}

/// Spawns the launcher for `policy` (with `posix_spawn`: no `pre_exec`, so
/// the host's page tables are not copied), sends it the policy, and returns
/// the host's end of the socket and the child. The host keeps no copy of the
/// launcher's end: when either side goes, the other sees end of file.
fn launch(
    runtime: &tokio::runtime::Handle,
    policy: &Policy,
    marker: &str,
) -> Result<(std::os::unix::net::UnixStream, tokio::process::Child), SandboxError> {
    let io = |what: &str, e: std::io::Error| SandboxError::Io(format!("{what}: {e}"));
    let (sock, stdin) = std::os::unix::net::UnixStream::pair().map_err(|e| io("socketpair", e))?;
    let mut cmd = tokio::process::Command::new(launcher_path());
    cmd.arg(LAUNCHER_ARG)
        .arg(marker)
        .env_clear()
        .env(RUN_MARKER, marker)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(stdin)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = {
        let _guard = runtime.enter();
        cmd.spawn().map_err(|e| io("cannot start the sandbox launcher", e))?
    };
    // The Command holds the launcher's copy of the socket until dropped.
    drop(cmd);
    let mut line = serde_json::to_vec(policy).map_err(|e| SandboxError::Io(format!("policy: {e}")))?;
    line.push(b'\n');
    (&sock).write_all(&line).map_err(|e| io("cannot hand the policy to the sandbox launcher", e))?;
    Ok((sock, child))
}

/// The launcher binary: `automation-sandbox` next to this executable (small,
/// so it starts in about a millisecond), else this executable itself, which
/// has the same mode (`__sandbox-exec`) but takes a few milliseconds more to
/// load. `/proc/self/exe` still works when the file was replaced on disk.
fn launcher_path() -> &'static std::ffi::OsStr {
    static PATH: OnceLock<std::ffi::OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let own = std::env::current_exe().ok().and_then(|exe| {
            let small = exe.with_file_name("automation-sandbox");
            (small != exe && small.is_file()).then_some(small)
        });
        match own {
            Some(p) => p.into_os_string(),
            None => "/proc/self/exe".into(),
        }
    })
}

/// Reads the launcher's first report; returns it and any bytes after it.
fn read_first_report(sock: &std::os::unix::net::UnixStream) -> Result<(Report, Vec<u8>), SandboxError> {
    sock.set_read_timeout(Some(START_TIMEOUT)).map_err(|e| SandboxError::Io(format!("socket: {e}")))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let at = loop {
        if let Some(at) = buf.iter().position(|&b| b == b'\n') {
            break at;
        }
        match (&*sock).read(&mut chunk) {
            Ok(0) => return Err(SandboxError::Io("the sandbox launcher ended without a word".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SandboxError::Io(format!("the sandbox did not start in time: {e}"))),
        }
    };
    let rest = buf.split_off(at + 1);
    let report =
        serde_json::from_slice(&buf).map_err(|e| SandboxError::Io(format!("bad report from the launcher: {e}")))?;
    Ok((report, rest))
}

/// Runs a policy to its end without the async runtime (the probe): returns
/// what was applied and how the command ended.
fn run_blocking(policy: &Policy) -> Result<(Applied, Exit), String> {
    let (sock, child_sock) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let child = std::process::Command::new(launcher_path())
        .arg(LAUNCHER_ARG)
        .arg("probe")
        .env_clear()
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(child_sock)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the sandbox launcher: {e}"))?;
    let mut line = serde_json::to_vec(policy).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let result = (|| {
        (&sock).write_all(&line).map_err(|e| format!("cannot hand over the policy: {e}"))?;
        sock.set_read_timeout(Some(START_TIMEOUT)).map_err(|e| e.to_string())?;
        let mut text = String::new();
        (&sock).read_to_string(&mut text).map_err(|e| format!("no answer from the launcher: {e}"))?;
        let mut applied = None;
        for l in text.lines() {
            match serde_json::from_str::<Report>(l) {
                Ok(Report::Started { applied: a }) => applied = Some(a),
                Ok(Report::Failed { error }) => return Err(error),
                Ok(Report::Ended { exit, .. }) => {
                    return applied.map(|a| (a, exit)).ok_or_else(|| "ended before it started".to_owned());
                }
                Err(_) => {}
            }
        }
        Err("the launcher ended without a report".into())
    })();
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    result.map_err(|e| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.trim().is_empty() { e } else { format!("{e} ({})", stderr.trim()) }
    })
}

/// Watches one launcher: relays controls, enforces the time limit, reads
/// the output, and records how the process ended.
struct Supervisor {
    run_id: Uuid,
    child: tokio::process::Child,
    sock: tokio::net::UnixStream,
    pending: Vec<u8>,
    control: mpsc::UnboundedReceiver<Control>,
    time_limit: Duration,
    stdout: Arc<Mutex<Bounded>>,
    stderr: Arc<Mutex<Bounded>>,
    state: watch::Sender<ProcessState>,
    notes: Notes,
    ended: Arc<tokio::sync::Notify>,
}

impl Supervisor {
    async fn run(mut self) {
        let out_pipe = self.child.stdout.take();
        let err_pipe = self.child.stderr.take();
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        let readers = tokio::spawn(async move {
            tokio::join!(drain(out_pipe, stdout), drain(err_pipe, stderr));
        });
        let (mut rd, mut wr) = self.sock.into_split();
        let mut buf = std::mem::take(&mut self.pending);
        let mut chunk = [0u8; 4096];
        let deadline = tokio::time::sleep(self.time_limit);
        tokio::pin!(deadline);
        let mut timed_out = false;
        // After asking to stop: when to insist, then when to give up on the
        // launcher and kill it (its namespace goes with it).
        let mut insist: Option<tokio::time::Instant> = None;
        let mut ended: Option<(Exit, Vec<String>)> = None;
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        loop {
            if let Some(at) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=at).collect();
                if let Ok(Report::Ended { exit, notes }) = serde_json::from_slice::<Report>(&line) {
                    ended = Some((exit, notes));
                    break;
                }
                continue;
            }
            tokio::select! {
                n = rd.read(&mut chunk) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                () = &mut deadline, if !timed_out => {
                    timed_out = true;
                    let _ = wr.write_all(Control::Terminate.line()).await;
                    insist = Some(tokio::time::Instant::now() + launcher_grace());
                }
                Some(c) = self.control.recv() => {
                    let _ = wr.write_all(c.line()).await;
                    if insist.is_none() {
                        insist = Some(tokio::time::Instant::now() + launcher_grace());
                    }
                }
                () = tokio::time::sleep_until(insist.unwrap_or(far)), if insist.is_some() => {
                    let _ = wr.write_all(Control::Kill.line()).await;
                    insist = None;
                    // A launcher that does not answer a kill is killed itself.
                    let _ = tokio::time::timeout(Duration::from_secs(3), self.child.wait()).await;
                    let _ = self.child.start_kill();
                }
            }
        }
        drop(wr);
        // The run's processes are gone, so the pipes close; never wait
        // forever on them all the same. The launcher itself may still be
        // tidying up (its cgroup); it is reaped after the state is known.
        let _ = tokio::time::timeout(Duration::from_secs(5), readers).await;
        let (final_state, notes) = match ended {
            _ if timed_out => (ProcessState::TimedOut, ended.map(|e| e.1).unwrap_or_default()),
            Some((Exit::Code(c), notes)) => (ProcessState::Exited(c), notes),
            Some((Exit::Signal(s), notes)) => (ProcessState::Signaled(s), notes),
            None => (
                ProcessState::Signaled(nix::sys::signal::Signal::SIGKILL as i32),
                vec!["the sandbox launcher ended without reporting; the run's processes were killed".to_owned()],
            ),
        };
        if !notes.is_empty() {
            let mut err = self.stderr.lock().expect("stderr lock");
            for n in &notes {
                err.push(format!("\n[sandbox] {n}\n").as_bytes());
            }
            self.notes.lock().expect("notes").entry(self.run_id).or_default().extend(notes);
        }
        let _ = self.state.send(final_state);
        // A stored permit: a driver that is polling right now sees it on
        // its next wait, so the end is never missed.
        self.ended.notify_one();
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// How long the launcher gets to end a run after `terminate` before it is
/// told to kill (its own grace is 2 s).
fn launcher_grace() -> Duration {
    Duration::from_secs(3)
}

/// Hands a tree to the run's identity without following links.
fn chown_tree(dir: &Path, id: Identity) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(id.uid), Some(id.gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            chown_tree(&path, id)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(id.uid), Some(id.gid))?;
        }
    }
    Ok(())
}

/// SIGKILLs every process whose environment carries `RUN_MARKER=<prefix>...`
/// (launchers and, without namespaces, the run's own processes); returns
/// how many.
fn end_marked(prefix: &str) -> usize {
    let needle = format!("{RUN_MARKER}={prefix}");
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let me = std::process::id();
    let mut n = 0;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|b| *b == 0).any(|var| var.starts_with(needle.as_bytes())) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            n += 1;
        }
    }
    n
}

/// Resolves a workspace-relative path, refusing absolute paths and `..`.
fn inside(root: &Path, rel: &str) -> Result<PathBuf, SandboxError> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, PathComponent::Normal(_) | PathComponent::CurDir)) {
        return Err(SandboxError::Invalid(format!("path {rel:?} must be relative and stay inside the workspace")));
    }
    Ok(root.join(p))
}

async fn drain<R: AsyncRead + Unpin>(pipe: Option<R>, into: Arc<Mutex<Bounded>>) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => into.lock().expect("output lock").push(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_head_and_tail() {
        let mut b = Bounded::new(10);
        b.push(b"0123456789abcdef");
        let (text, truncated) = b.text();
        assert!(truncated);
        assert!(text.starts_with("01234"));
        assert!(text.ends_with("bcdef"));
        assert!(text.contains("6 bytes omitted"));
        let mut small = Bounded::new(10);
        small.push(b"hi");
        assert_eq!(small.text(), ("hi".to_owned(), false));
    }

    #[test]
    fn paths_stay_inside() {
        let root = Path::new("/w");
        assert_eq!(inside(root, "a/b").unwrap(), Path::new("/w/a/b"));
        for bad in ["", "/etc", "../x", "a/../../x"] {
            assert!(inside(root, bad).is_err(), "{bad}");
        }
    }
}
