//! The local sandbox: per-run workspaces and processes on this machine, for
//! executor plugins granted `sandbox`.
//!
//! Confinement is by convention, not by the kernel: each process starts in
//! its run's workspace with a scrubbed environment (`HOME` is the workspace),
//! in its own process group (so a kill reaches its children), under a time
//! limit, and with bounded output capture. It runs as the host's user; a
//! hostile bundle is as dangerous as any script that user runs. Stronger
//! isolation (namespaces, containers) would go behind this same interface.

use std::collections::HashMap;
use std::path::{Component as PathComponent, Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

/// The `PATH` processes get.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The variable every sandbox process carries, naming its run; after a host
/// restart, leftover processes are recognised by it before being killed.
const RUN_MARKER: &str = "AUTOMATION_SANDBOX_RUN";
/// Time between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Why a sandbox operation failed; executors see it as a WIT `error`.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The caller asked for something invalid (a path leaving the workspace).
    #[error("{0}")]
    Invalid(String),
    /// The process or workspace is not known.
    #[error("{0}")]
    NotFound(String),
    /// The operating system refused.
    #[error("{0}")]
    Io(String),
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
    pgid: i32,
    state: watch::Receiver<ProcessState>,
    stdout: Arc<Mutex<Bounded>>,
    stderr: Arc<Mutex<Bounded>>,
    kill: Arc<Notify>,
}

impl Process {
    fn snapshot(&self) -> ProcessOutput {
        let (stdout, t1) = self.stdout.lock().expect("stdout lock").text();
        let (stderr, t2) = self.stderr.lock().expect("stderr lock").text();
        ProcessOutput { state: *self.state.borrow(), stdout, stderr, truncated: t1 || t2 }
    }
}

/// The host side of the `sandbox` interface, shared by every executor call.
pub struct Sandbox {
    root: PathBuf,
    output_limit: usize,
    archive_limits: crate::archive::Limits,
    runtime: tokio::runtime::Handle,
    processes: Mutex<HashMap<String, Arc<Process>>>,
    next_id: AtomicU64,
}

impl Sandbox {
    /// A sandbox keeping workspaces under `root`.
    pub fn new(
        root: PathBuf,
        output_limit: usize,
        archive_limits: crate::archive::Limits,
        runtime: tokio::runtime::Handle,
    ) -> Sandbox {
        Sandbox { root, output_limit, archive_limits, runtime, processes: Mutex::default(), next_id: AtomicU64::new(1) }
    }

    /// The run's workspace directory.
    pub fn workspace(&self, run_id: Uuid) -> PathBuf {
        self.root.join(run_id.to_string())
    }

    /// Creates the run's workspace if needed.
    pub fn create_workspace(&self, run_id: Uuid) -> Result<PathBuf, SandboxError> {
        let dir = self.workspace(run_id);
        std::fs::create_dir_all(&dir).map_err(|e| SandboxError::Io(format!("cannot create the workspace: {e}")))?;
        Ok(dir)
    }

    /// Unpacks an archive, then writes files, into the run's workspace.
    pub fn unpack(
        &self,
        run_id: Uuid,
        archive: Option<&[u8]>,
        files: &[(String, u32, Vec<u8>)],
    ) -> Result<(), SandboxError> {
        let dir = self.create_workspace(run_id)?;
        if let Some(bytes) = archive {
            crate::archive::check(bytes, self.archive_limits).map_err(|e| SandboxError::Invalid(e.to_string()))?;
            let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
            ar.set_preserve_permissions(true);
            ar.set_overwrite(true);
            ar.set_unpack_xattrs(false);
            ar.unpack(&dir).map_err(|e| SandboxError::Io(format!("cannot unpack the bundle: {e}")))?;
        }
        for (path, mode, contents) in files {
            let target = inside(&dir, path)?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| SandboxError::Io(format!("{path}: {e}")))?;
            }
            std::fs::write(&target, contents).map_err(|e| SandboxError::Io(format!("{path}: {e}")))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o777))
                .map_err(|e| SandboxError::Io(format!("{path}: {e}")))?;
        }
        Ok(())
    }

    /// Starts a process for the run; returns its id.
    pub fn spawn(&self, run_id: Uuid, spec: CommandSpec) -> Result<String, SandboxError> {
        let dir = self.create_workspace(run_id)?;
        let cwd = match &spec.cwd {
            Some(c) => inside(&dir, c)?,
            None => dir.clone(),
        };
        let program =
            if spec.program.contains('/') { inside(&dir, &spec.program)? } else { PathBuf::from(&spec.program) };
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&spec.args)
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .env("HOME", &dir)
            .env("LANG", "C.UTF-8")
            .env("TMPDIR", &dir)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env(RUN_MARKER, run_id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let _guard = self.runtime.enter();
        let mut child = cmd.spawn().map_err(|e| SandboxError::Io(format!("cannot start {:?}: {e}", spec.program)))?;
        let pid = child.id().ok_or_else(|| SandboxError::Io("the process exited before it started".into()))? as i32;
        let id = format!("{run_id}:{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        self.remember_group(run_id, pid);
        let stdout = Arc::new(Mutex::new(Bounded::new(self.output_limit)));
        let stderr = Arc::new(Mutex::new(Bounded::new(self.output_limit)));
        let (state_tx, state_rx) = watch::channel(ProcessState::Running);
        let kill = Arc::new(Notify::new());
        let process = Arc::new(Process {
            run_id,
            pgid: pid,
            state: state_rx,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            kill: kill.clone(),
        });
        let out_pipe = child.stdout.take();
        let err_pipe = child.stderr.take();
        self.runtime.spawn(async move {
            let readers = tokio::spawn(async move {
                tokio::join!(drain(out_pipe, stdout), drain(err_pipe, stderr));
            });
            let final_state = tokio::select! {
                status = child.wait() => exit_state(status),
                () = tokio::time::sleep(spec.time_limit) => {
                    terminate(pid, &mut child).await;
                    ProcessState::TimedOut
                }
                () = kill.notified() => {
                    match terminate(pid, &mut child).await {
                        Some(state) => state,
                        None => ProcessState::Signaled(Signal::SIGKILL as i32),
                    }
                }
            };
            // Grandchildren may hold the pipes open; the group kill above ends
            // them, but never wait forever on output.
            let _ = tokio::time::timeout(Duration::from_secs(5), readers).await;
            let _ = state_tx.send(final_state);
        });
        self.processes.lock().expect("process table").insert(id.clone(), process);
        Ok(id)
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

    /// Kills the process group.
    pub fn kill(&self, run_id: Uuid, id: &str) -> Result<(), SandboxError> {
        let p = self.find(run_id, id)?;
        if *p.state.borrow() == ProcessState::Running {
            p.kill.notify_one();
            // Also signal right away, in case the supervising task is busy.
            let _ = killpg(Pid::from_raw(p.pgid), Signal::SIGTERM);
        }
        Ok(())
    }

    /// Kills the run's processes and removes its workspace.
    pub fn remove_workspace(&self, run_id: Uuid) -> Result<(), SandboxError> {
        let mine: Vec<(String, Arc<Process>)> = {
            let mut table = self.processes.lock().expect("process table");
            let ids: Vec<String> = table.iter().filter(|(_, p)| p.run_id == run_id).map(|(k, _)| k.clone()).collect();
            ids.into_iter().filter_map(|k| table.remove(&k).map(|p| (k, p))).collect()
        };
        for (_, p) in &mine {
            if *p.state.borrow() == ProcessState::Running {
                p.kill.notify_one();
                let _ = killpg(Pid::from_raw(p.pgid), Signal::SIGKILL);
            }
        }
        self.kill_leftovers(run_id);
        let dir = self.workspace(run_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SandboxError::Io(format!("cannot remove the workspace: {e}"))),
        }
    }

    /// Where the process groups of a run are written down, outside the
    /// workspace (plugins cannot write there), so a restarted host can still
    /// find them.
    fn groups_file(&self, run_id: Uuid) -> PathBuf {
        self.root.join(".groups").join(run_id.to_string())
    }

    fn remember_group(&self, run_id: Uuid, pgid: i32) {
        use std::io::Write;
        let path = self.groups_file(run_id);
        let written = std::fs::create_dir_all(path.parent().expect("has a parent")).and_then(|()| {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            writeln!(f, "{pgid}")
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot record a sandbox process group; a restart could leave it running");
        }
    }

    /// Kills process groups of the run that a previous host process started
    /// and lost track of. A group is killed only if its leader still carries
    /// the run's marker (so a recycled pid is never hit).
    fn kill_leftovers(&self, run_id: Uuid) {
        let path = self.groups_file(run_id);
        let Ok(text) = std::fs::read_to_string(&path) else { return };
        let marker = format!("{RUN_MARKER}={run_id}");
        for pgid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let environ = std::fs::read(format!("/proc/{pgid}/environ")).unwrap_or_default();
            if environ.split(|b| *b == 0).any(|var| var == marker.as_bytes()) {
                tracing::warn!(run.id = %run_id, pgid, "killing a sandbox process group left by a previous host process");
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Kills every process the sandbox started (at shutdown).
    pub fn kill_all(&self) {
        for p in self.processes.lock().expect("process table").values() {
            if *p.state.borrow() == ProcessState::Running {
                let _ = killpg(Pid::from_raw(p.pgid), Signal::SIGKILL);
            }
        }
    }
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

fn exit_state(status: std::io::Result<std::process::ExitStatus>) -> ProcessState {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ProcessState::Exited(code),
            (None, Some(sig)) => ProcessState::Signaled(sig),
            (None, None) => ProcessState::Exited(-1),
        },
        Err(_) => ProcessState::Exited(-1),
    }
}

/// SIGTERM to the group, then SIGKILL after a grace period; returns how the
/// leader ended if it ended on its own terms.
async fn terminate(pgid: i32, child: &mut tokio::process::Child) -> Option<ProcessState> {
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    let ended = tokio::time::timeout(KILL_GRACE, child.wait()).await;
    // Kill the rest of the group either way: children may ignore SIGTERM.
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    match ended {
        Ok(status) => Some(exit_state(status)),
        Err(_) => {
            let _ = child.wait().await;
            None
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
