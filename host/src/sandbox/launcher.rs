//! The launcher: the host binary re-executed as `automation-host
//! __sandbox-exec RUN`, the first process of every sandboxed run.
//!
//! The host spawns it with `posix_spawn` (no copy of the host's page tables)
//! and hands it a [`Policy`] over a socket on its standard input. Then:
//!
//! 1. **Launcher** (in the host's namespaces, the host's user): makes the
//!    run's cgroup, forks the run into new user, mount, pid, ipc, uts and
//!    network namespaces (`clone`), writes the new user namespace's id maps
//!    (inside uid 1000 → the host user, or an unprivileged user when the host
//!    is root), moves the child into the cgroup, and lets it go. It then
//!    watches: the host's socket (`terminate`, `kill`, or the host gone), the
//!    run's exit (`signalfd`), the workspace's disk use and, without a memory
//!    cgroup, the run's memory. It reports `started`, then `ended` with how
//!    the command ended and which limits it hit.
//! 2. **Init** (pid 1 of the new pid namespace, every capability of the new
//!    user namespace and none outside it): builds the minimal root
//!    (`root.rs`), pivots into it, forks the command, reaps, and when the
//!    command exits kills everything left in the namespace. When the init
//!    ends, the kernel ends every process of the namespace, whatever they
//!    did (`setsid`, double forks); when the launcher dies, the init gets
//!    SIGKILL (`PR_SET_PDEATHSIG`).
//! 3. **Command**: its own session, rlimits, standard input `/dev/null`,
//!    Landlock, `no_new_privs`, seccomp, then `execve`. As uid 1000 with no
//!    capability, it has none after `execve`.
//!
//! Without namespaces (`restricted` and `none`) the launcher forks the
//! command directly, drops to the unprivileged identity when the host is
//! root, and is the command's subreaper: every descendant, daemonised or
//! not, is re-parented to it and ended with the run.
//!
//! Why a helper mode of our own binary rather than bubblewrap: bubblewrap is
//! not on a fresh machine (the two README commands must do all set-up), it
//! applies neither Landlock nor a seccomp filter of our choosing without
//! more plumbing, and its process model would still need our supervisor for
//! disk and memory limits and reports. Every layer here is a kernel feature
//! driven through a well-kept crate (`nix`, `landlock`, `seccompiler`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

use super::cgroup::RunCgroup;
use super::policy::{Applied, Control, Exit, INSIDE_ID, Network, Policy, Report, human_bytes};
use super::sys::{Forked, default_sigpipe, fork_into, lower_priority};
use super::{landlock, limits, root, seccomp};

/// Time between SIGTERM and SIGKILL when a run is asked to stop.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Largest policy accepted on the socket.
const MAX_POLICY: u64 = 64 << 20;
/// How often the run's memory is summed when no cgroup limits it.
const MEMORY_EVERY: Duration = Duration::from_millis(100);

/// Entry point of `automation-host __sandbox-exec`. Never returns.
pub fn main() -> ! {
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            // No channel to the host: the host sees the socket close.
            eprintln!("automation-host sandbox launcher: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// Splits a byte stream into lines, one `read` at a time.
#[derive(Default)]
struct LineBuf {
    buf: Vec<u8>,
}

impl LineBuf {
    /// One read from `r`: the complete lines so far, and whether the stream
    /// ended.
    fn fill(&mut self, r: &mut impl Read) -> (Vec<String>, bool) {
        let mut chunk = [0u8; 8192];
        let eof = match r.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => false,
            Err(_) => true,
        };
        let mut lines = Vec::new();
        while let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=at).collect();
            lines.push(String::from_utf8_lossy(&line).trim_end().to_owned());
        }
        (lines, eof)
    }
}

/// Reports read from a pipe.
struct Reports {
    file: std::fs::File,
    lines: LineBuf,
    ended: bool,
}

impl Reports {
    fn new(fd: OwnedFd) -> Reports {
        Reports { file: std::fs::File::from(fd), lines: LineBuf::default(), ended: false }
    }

    /// Reads once; returns the reports that arrived.
    fn read(&mut self) -> Vec<Report> {
        if self.ended {
            return Vec::new();
        }
        let (lines, eof) = self.lines.fill(&mut self.file);
        self.ended = eof;
        lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Reads until the writer closes its end.
    fn read_to_end(&mut self) -> Vec<Report> {
        let mut all = Vec::new();
        while !self.ended {
            all.extend(self.read());
        }
        all
    }
}

fn send_fd(fd: &OwnedFd, report: &Report) {
    let mut line = serde_json::to_vec(report).unwrap_or_default();
    line.push(b'\n');
    let _ = nix::unistd::write(fd, &line);
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// Gives fds 1 and 2 /dev/null, so only the run holds its output pipes (the
/// host sees end of file once every process of the run is gone).
fn release_output() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// Blocks until the launcher says go; exits if the launcher is gone.
fn wait_for_go(go: OwnedFd) {
    let mut byte = [0u8; 1];
    if !matches!(nix::unistd::read(&go, &mut byte), Ok(1)) {
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    // The socket arrives as standard input. Keep it on a close-on-exec
    // descriptor and give fd 0 /dev/null, which is what the run inherits.
    let sock = std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| format!("no socket: {e}"))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("cannot redirect stdin: {e}"))?;
    let mut sock = UnixStream::from(sock);
    let mut line = Vec::new();
    BufReader::new((&mut sock).take(MAX_POLICY))
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the policy: {e}"))?;
    let policy: Policy = serde_json::from_slice(&line).map_err(|e| format!("bad policy: {e}"))?;
    let mut host = Host { sock: Some(sock), lines: LineBuf::default() };
    // Lower priority first, for the launcher and everything it starts: an
    // unprivileged process cannot raise it again (RLIMIT_NICE is 0 unless
    // an administrator gave more), so a run cannot take the CPU from the
    // host's acknowledgements.
    if let Err(e) = lower_priority(policy.limits.nice) {
        host.send(&Report::Failed { error: e.to_string() });
        return Ok(());
    }
    if let Err(error) = launch(&policy, &mut host) {
        host.send(&Report::Failed { error });
    }
    Ok(())
}

/// The socket to the host.
struct Host {
    sock: Option<UnixStream>,
    lines: LineBuf,
}

impl Host {
    fn send(&mut self, report: &Report) {
        let mut line = serde_json::to_vec(report).unwrap_or_default();
        line.push(b'\n');
        if let Some(s) = &mut self.sock {
            // The host may be gone; then there is no one to tell.
            let _ = s.write_all(&line);
        }
    }

    /// Reads what the host sent; `Kill` when the host is gone.
    fn controls(&mut self) -> Vec<Control> {
        let Some(s) = &mut self.sock else { return vec![Control::Kill] };
        let (lines, eof) = self.lines.fill(s);
        let mut out: Vec<Control> = lines.iter().filter_map(|l| Control::parse(l)).collect();
        if eof {
            // The host is gone (or closed its end): nobody will read a
            // report, and the run must not outlive it.
            self.sock = None;
            out.push(Control::Kill);
        }
        out
    }
}

/// The launcher proper: returns once the run has ended and been reported.
fn launch(policy: &Policy, host: &mut Host) -> Result<(), String> {
    prctl::set_child_subreaper(true).map_err(|e| format!("cannot become a subreaper: {e}"))?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(|e| format!("sigprocmask: {e}"))?;
    let sigchld = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("signalfd: {e}"))?;
    if Uid::effective().is_root() && policy.identity.is_some() {
        // Root's supplementary groups must not follow the run.
        nix::unistd::setgroups(&[]).map_err(|e| format!("cannot drop supplementary groups: {e}"))?;
    }
    let cgroup = match &policy.cgroup {
        Some(plan) => Some(RunCgroup::create(plan, &policy.process_id, &policy.limits)?),
        None => None,
    };
    let result = supervise(policy, host, &sigchld, cgroup.as_ref());
    if let Some(cg) = &cgroup {
        cg.remove();
    }
    result
}

/// Starts the run (the namespace's init, or the command itself) and waits
/// until it has started; returns its pid and its report pipe.
fn start(
    policy: &Policy,
    host: &mut Host,
    cgroup: Option<&RunCgroup>,
) -> Result<(Pid, Reports, Applied, Option<Exit>), String> {
    let memory_by_cgroup = cgroup.is_some_and(RunCgroup::limits_memory);
    let (go_read, go_write) = pipe()?;
    let (report_read, report_write) = pipe()?;
    let namespaced = policy.layers.namespaces;
    let plan = namespaced.then(|| root::plan(policy, &root::host_kind));
    let mut flags = CloneFlags::empty();
    if namespaced {
        flags = CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS;
        if policy.network == Network::None {
            flags |= CloneFlags::CLONE_NEWNET;
        }
    }
    let child = match fork_into(flags).map_err(|e| format!("cannot create the run's process: {e}"))? {
        Forked::Child => {
            drop((go_write, report_read));
            drop(host.sock.take());
            let _ = prctl::set_pdeathsig(Signal::SIGKILL);
            wait_for_go(go_read);
            let code = match &plan {
                Some(plan) => namespace_init(policy, plan, &report_write, memory_by_cgroup),
                None => exec_command(policy, &report_write, memory_by_cgroup),
            };
            std::process::exit(code)
        }
        Forked::Parent(pid) => pid,
    };
    drop((go_read, report_write));
    let abandon = |e: String| {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        e
    };
    if namespaced {
        write_id_maps(child, policy).map_err(abandon)?;
    }
    if let Some(cg) = cgroup {
        cg.add(child).map_err(abandon)?;
    }
    nix::unistd::write(&go_write, b"g").map_err(|e| abandon(format!("cannot release the run: {e}")))?;
    drop(go_write);
    release_output();
    let mut reports = Reports::new(report_read);
    // The init forwards one report (then, much later, `ended`); without
    // namespaces the pipe is the command's and closes when it execs.
    let first: Vec<Report> = if namespaced {
        let mut got = Vec::new();
        while got.is_empty() && !reports.ended {
            got = reports.read();
        }
        got
    } else {
        reports.read_to_end()
    };
    if let Some(Report::Failed { error }) = first.iter().find(|r| matches!(r, Report::Failed { .. })) {
        return Err(abandon(error.clone()));
    }
    // A quick command's end can arrive in the same read as its start.
    let ended = first.iter().find_map(|r| match r {
        Report::Ended { exit, .. } => Some(*exit),
        _ => None,
    });
    match first.into_iter().next() {
        Some(Report::Started { mut applied }) => {
            applied.cgroup = policy.cgroup.as_ref().map(super::cgroup::describe);
            Ok((child, reports, applied, ended))
        }
        _ => Err(abandon("the run's process ended before it started the command".into())),
    }
}

/// Maps the run's uid and gid 1000 to the host identity (or the host's own).
fn write_id_maps(pid: Pid, policy: &Policy) -> Result<(), String> {
    let uid = policy.identity.map_or_else(|| Uid::effective().as_raw(), |i| i.uid);
    let gid = policy.identity.map_or_else(|| Gid::effective().as_raw(), |i| i.gid);
    let proc = format!("/proc/{pid}");
    let w = |file: &str, text: String| {
        std::fs::write(format!("{proc}/{file}"), text).map_err(|e| format!("cannot write {file} of the run: {e}"))
    };
    w("uid_map", format!("{INSIDE_ID} {uid} 1\n"))?;
    w("setgroups", "deny".into())?;
    w("gid_map", format!("{INSIDE_ID} {gid} 1\n"))
}

fn supervise(policy: &Policy, host: &mut Host, sigchld: &SignalFd, cgroup: Option<&RunCgroup>) -> Result<(), String> {
    let (child, mut reports, applied, early_exit) = start(policy, host, cgroup)?;
    host.send(&Report::Started { applied });
    let namespaced = policy.layers.namespaces;
    let me = Pid::this();
    let mut watch =
        Watch::new(policy, cgroup.is_some_and(RunCgroup::limits_memory), if namespaced { child } else { me });
    let mut notes: Vec<String> = Vec::new();
    let mut exit: Option<Exit> = early_exit;
    let mut kill_at: Option<Instant> = None;
    let end = |how: Signal| {
        if namespaced {
            // The init passes SIGTERM on to every process; SIGKILL ends the
            // namespace and everything in it.
            let _ = kill(child, how);
        } else {
            for pid in descendants(me) {
                let _ = kill(Pid::from_raw(pid), how);
            }
        }
    };
    loop {
        let now = Instant::now();
        let mut wait = watch.next_check().saturating_duration_since(now);
        if let Some(at) = kill_at {
            wait = wait.min(at.saturating_duration_since(now));
        }
        let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
        let (host_ready, child_ready, report_ready) = {
            let mut fds = vec![PollFd::new(sigchld.as_fd(), PollFlags::POLLIN)];
            if let Some(s) = &host.sock {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            if namespaced && !reports.ended {
                fds.push(PollFd::new(reports.file.as_fd(), PollFlags::POLLIN));
            }
            let _ = poll(&mut fds, PollTimeout::from(ms));
            let ready = |i: usize| fds.get(i).and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
            let host_at = usize::from(host.sock.is_some());
            (host.sock.is_some() && ready(1), ready(0), ready(host_at + 1))
        };
        if host_ready {
            for control in host.controls() {
                match control {
                    Control::Terminate if kill_at.is_none() => {
                        end(Signal::SIGTERM);
                        kill_at = Some(Instant::now() + KILL_GRACE);
                    }
                    Control::Terminate => {}
                    Control::Kill => {
                        end(Signal::SIGKILL);
                        kill_at = Some(Instant::now());
                    }
                }
            }
        }
        if report_ready {
            for r in reports.read() {
                if let Report::Ended { exit: e, .. } = r {
                    exit = Some(e);
                }
            }
        }
        let mut child_done = false;
        if child_ready {
            while let Ok(Some(_)) = sigchld.read_signal() {}
        }
        // Reap whatever ended (the child, or orphans re-parented to us).
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    child_done = true;
                    if !namespaced {
                        exit = Some(Exit::Code(code));
                    }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    child_done = true;
                    if !namespaced {
                        exit = Some(Exit::Signal(sig as i32));
                    }
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if child_done {
            if namespaced {
                for r in reports.read_to_end() {
                    if let Report::Ended { exit: e, .. } = r {
                        exit = Some(e);
                    }
                }
            } else {
                end_descendants(me);
            }
            break;
        }
        if let Some(note) = watch.check() {
            if notes.is_empty() {
                notes.push(note);
            }
            end(Signal::SIGKILL);
            kill_at = Some(Instant::now());
        }
        if kill_at.is_some_and(|at| Instant::now() >= at) {
            end(Signal::SIGKILL);
        }
    }
    // Killed before the init could say how the command ended.
    let exit = exit.unwrap_or(Exit::Signal(Signal::SIGKILL as i32));
    notes.extend(limit_notes(policy, exit, cgroup));
    let pids_by_cgroup = cgroup.is_some_and(|c| c.fork_refusals_counted());
    if !pids_by_cgroup && watch.most_processes >= policy.limits.processes {
        notes.push(format!("the run reached its limit of {} processes", policy.limits.processes));
    }
    host.send(&Report::Ended { exit, notes });
    Ok(())
}

/// Notes about limits the run hit, for its `status_detail`.
fn limit_notes(policy: &Policy, exit: Exit, cgroup: Option<&RunCgroup>) -> Vec<String> {
    let l = &policy.limits;
    let mut notes = Vec::new();
    if let Some(cg) = cgroup {
        let ooms = cg.oom_kills();
        if ooms > 0 {
            notes.push(format!(
                "the run reached its memory limit of {} and the kernel killed {ooms} of its processes",
                human_bytes(l.memory_bytes)
            ));
        }
        let refused = cg.fork_refusals();
        if refused > 0 {
            notes.push(format!("the run reached its limit of {} processes ({refused} forks refused)", l.processes));
        }
    }
    match exit {
        Exit::Signal(s) if s == Signal::SIGXCPU as i32 => {
            notes.push(format!("the command reached its CPU time limit of {} s", l.cpu_seconds))
        }
        Exit::Signal(s) if s == Signal::SIGXFSZ as i32 => notes.push(format!(
            "the command tried to write a file larger than the limit of {}",
            human_bytes(l.file_size_bytes.min(l.workspace_bytes))
        )),
        _ => {}
    }
    notes
}

/// Kills every descendant of `me` until none is left (they may fork while
/// being killed), reaping as it goes. Bounded at a few seconds.
fn end_descendants(me: Pid) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = descendants(me);
        if left.is_empty() || Instant::now() > until {
            return;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
        while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if s == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// Every descendant of a process (children first), from
/// `/proc/PID/task/TID/children`.
fn descendants(pid: Pid) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid.as_raw()];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in text.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                if !out.contains(&child) {
                    out.push(child);
                    todo.push(child);
                }
            }
        }
    }
    out
}

/// Watches the workspace's disk use and, without a memory cgroup, the run's
/// memory; says when one passes its limit.
struct Watch {
    workspace: std::path::PathBuf,
    workspace_limit: u64,
    workspace_every: Duration,
    next_workspace: Instant,
    memory_limit: Option<u64>,
    next_memory: Instant,
    root: Pid,
    page: u64,
    /// The most processes seen at once (sampled with the memory).
    pub most_processes: u64,
}

impl Watch {
    fn new(policy: &Policy, memory_by_cgroup: bool, root: Pid) -> Watch {
        let now = Instant::now();
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
        Watch {
            workspace: policy.workspace.clone(),
            workspace_limit: policy.limits.workspace_bytes,
            workspace_every: Duration::from_millis(50),
            next_workspace: now + Duration::from_millis(50),
            memory_limit: (!memory_by_cgroup).then_some(policy.limits.memory_bytes),
            next_memory: now + MEMORY_EVERY,
            root,
            page,
            most_processes: 0,
        }
    }

    fn next_check(&self) -> Instant {
        if self.memory_limit.is_some() { self.next_workspace.min(self.next_memory) } else { self.next_workspace }
    }

    /// Checks what is due; a note when a limit was passed.
    fn check(&mut self) -> Option<String> {
        let now = Instant::now();
        if now >= self.next_workspace {
            let started = Instant::now();
            let used = disk_use(&self.workspace, self.workspace_limit.saturating_add(1));
            // A big tree is walked less often: at most ~5% of a core.
            self.workspace_every = (started.elapsed() * 20).clamp(Duration::from_millis(50), Duration::from_secs(5));
            self.next_workspace = Instant::now() + self.workspace_every;
            if used > self.workspace_limit {
                return Some(format!(
                    "the run's workspace grew past its limit of {} and the run was stopped",
                    human_bytes(self.workspace_limit)
                ));
            }
        }
        if let Some(limit) = self.memory_limit
            && now >= self.next_memory
        {
            self.next_memory = now + MEMORY_EVERY;
            let all = descendants(self.root);
            self.most_processes = self.most_processes.max(all.len() as u64);
            let resident: u64 = all.into_iter().map(|p| resident_pages(p) * self.page).sum();
            if resident > limit {
                return Some(format!(
                    "the run's processes held more than their memory limit of {} and the run was stopped",
                    human_bytes(limit)
                ));
            }
        }
        None
    }
}

fn resident_pages(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Disk blocks used under `dir` (not following links), counting up to
/// `stop` bytes.
fn disk_use(dir: &Path, stop: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else { continue };
            total = total.saturating_add(meta.blocks() * 512);
            if total >= stop {
                return total;
            }
            if meta.is_dir() {
                todo.push(e.path());
            }
        }
    }
    total
}

/// The namespace's init: builds the root, starts the command, reaps, and
/// ends everything when the command ends. Returns its exit code.
fn namespace_init(policy: &Policy, plan: &root::Plan, report: &OwnedFd, memory_by_cgroup: bool) -> i32 {
    let result = (|| -> Result<(), String> {
        // Open the bind sources while still the launcher's user (a root
        // host's data directory may be 0700), and here rather than in the
        // launcher: a bind must come from a mount of this mount namespace.
        let sources = root::open_sources(plan, &policy.workspace)?;
        // The id maps say what uid 1000 is; become it (a root host's launcher
        // is still uid 0 here, unmapped in the namespace). This keeps every
        // capability in the new user namespace, which has no root.
        let (uid, gid) = (Uid::from_raw(INSIDE_ID), Gid::from_raw(INSIDE_ID));
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("cannot become gid {INSIDE_ID}: {e}"))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("cannot become uid {INSIDE_ID}: {e}"))?;
        root::apply(plan, &sources)?;
        // The host paths the sources point at must not reach the command.
        drop(sources);
        nix::unistd::sethostname("sandbox").map_err(|e| format!("sethostname: {e}"))?;
        // Nothing in the run may read this process's memory or descriptors.
        prctl::set_dumpable(false).map_err(|e| format!("cannot make the init undumpable: {e}"))?;
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.add(Signal::SIGTERM);
        mask.thread_block().map_err(|e| format!("sigprocmask: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(|e| format!("signalfd: {e}"))?;
        let (exec_read, exec_write) = pipe()?;
        let command = match fork_into(CloneFlags::empty()).map_err(|e| format!("fork: {e}"))? {
            Forked::Child => {
                drop(exec_read);
                std::process::exit(exec_command(policy, &exec_write, memory_by_cgroup))
            }
            Forked::Parent(pid) => pid,
        };
        drop(exec_write);
        release_output();
        let started = Reports::new(exec_read).read_to_end();
        if let Some(failed) = started.iter().find(|r| matches!(r, Report::Failed { .. })) {
            send_fd(report, failed);
            let _ = waitpid(command, None);
            return Ok(());
        }
        match started.into_iter().next() {
            Some(Report::Started { mut applied }) => {
                applied.namespaces = true;
                send_fd(report, &Report::Started { applied });
            }
            _ => {
                send_fd(report, &Report::Failed { error: "the command ended before it started".into() });
                return Ok(());
            }
        }
        let exit = loop {
            if let Ok(Some(info)) = signals.read_signal()
                && info.ssi_signo == Signal::SIGTERM as u32
            {
                // Every process of the namespace but this one.
                let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
            }
            let mut done = None;
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == command => done = Some(Exit::Code(code)),
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => done = Some(Exit::Signal(sig as i32)),
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            if let Some(e) = done {
                break e;
            }
        };
        // The command is done: so is everything it left behind.
        loop {
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            if let Err(nix::errno::Errno::ECHILD) = waitpid(None, None) {
                break;
            }
        }
        send_fd(report, &Report::Ended { exit, notes: Vec::new() });
        Ok(())
    })();
    match result {
        Ok(()) => 0,
        Err(error) => {
            send_fd(report, &Report::Failed { error });
            1
        }
    }
}

/// Confines the calling process and executes the command. Returns only if
/// that failed (the exit code to use), after reporting why.
fn exec_command(policy: &Policy, report: &OwnedFd, memory_by_cgroup: bool) -> i32 {
    let result = (|| -> Result<std::convert::Infallible, String> {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        let namespaced = policy.layers.namespaces;
        let root_host = Uid::effective().is_root() && !namespaced;
        let identity = policy.identity.filter(|_| root_host);
        let count_uid = identity.map_or_else(|| Uid::current().as_raw(), |i| i.uid);
        let pids_cgroup = matches!(&policy.cgroup, Some(super::policy::CgroupPlan::V2 { .. }))
            || matches!(&policy.cgroup, Some(super::policy::CgroupPlan::V1 { pids: Some(_), .. }));
        // Outside a user namespace RLIMIT_NPROC counts every process of the
        // user; leave room for what it already runs.
        let existing = if namespaced || pids_cgroup { 0 } else { limits::processes_of(count_uid) };
        limits::apply(&limits::rlimits(&policy.limits, memory_by_cgroup, pids_cgroup, existing))?;
        let workspace = nix::fcntl::open(
            &policy.workspace_inside(),
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("cannot open the workspace: {e}"))?;
        let ruleset = if policy.layers.landlock { Some(landlock::prepare(policy)?) } else { None };
        let filters = if policy.layers.seccomp { Some(seccomp::filters(policy.network, namespaced)?) } else { None };
        if let Some(id) = identity {
            let (uid, gid) = (Uid::from_raw(id.uid), Gid::from_raw(id.gid));
            nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
            nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
            nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
        }
        nix::unistd::fchdir(&workspace).map_err(|e| format!("cannot enter the workspace: {e}"))?;
        drop(workspace);
        if let Some(cwd) = &policy.cwd {
            nix::unistd::chdir(Path::new(cwd)).map_err(|e| format!("cannot enter {cwd:?}: {e}"))?;
        }
        super::sys::cloexec_from(3)?;
        let mut applied = Applied::default();
        if let Some(ruleset) = ruleset {
            let (status, abi) = landlock::enforce(ruleset)?;
            applied.landlock = Some(status);
            applied.landlock_abi = abi;
        }
        prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
        if let Some(filters) = &filters {
            seccomp::apply(filters)?;
            applied.seccomp = true;
        }
        default_sigpipe().map_err(|e| format!("cannot restore SIGPIPE: {e}"))?;
        SigSet::empty().thread_set_mask().map_err(|e| format!("sigprocmask: {e}"))?;
        let program = policy.resolve_program(|p| p.is_file()).ok_or_else(|| {
            format!("cannot start {:?}: not found on {}", policy.program, super::policy::SANDBOX_PATH)
        })?;
        let cstr = |s: &str| std::ffi::CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
        let path = cstr(&program.to_string_lossy())?;
        let argv = std::iter::once(policy.program.as_str())
            .chain(policy.args.iter().map(String::as_str))
            .map(cstr)
            .collect::<Result<Vec<_>, _>>()?;
        let envp = policy.env.iter().map(|(k, v)| cstr(&format!("{k}={v}"))).collect::<Result<Vec<_>, _>>()?;
        send_fd(report, &Report::Started { applied });
        nix::unistd::execve(&path, &argv, &envp).map_err(|e| format!("cannot start {:?}: {e}", policy.program))
    })();
    match result {
        Ok(never) => match never {},
        Err(error) => {
            send_fd(report, &Report::Failed { error });
            127
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_reads() {
        let mut lb = LineBuf::default();
        let mut first: &[u8] = b"termi";
        assert_eq!(lb.fill(&mut first), (vec![], false));
        let mut second: &[u8] = b"nate\nkill\npartial";
        assert_eq!(lb.fill(&mut second), (vec!["terminate".to_owned(), "kill".to_owned()], false));
        let mut empty: &[u8] = b"";
        assert_eq!(lb.fill(&mut empty), (vec![], true));
    }

    #[test]
    fn disk_use_counts_blocks_and_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 64 << 10]).unwrap();
        let used = disk_use(dir.path(), u64::MAX);
        assert!(used >= 64 << 10, "{used}");
        assert!(disk_use(dir.path(), 1) >= 1);
    }

    #[test]
    fn limit_notes_name_the_limit() {
        let policy: Policy = serde_json::from_value(serde_json::json!({
            "run_id": "r", "process_id": "p", "layers": {"namespaces": true, "landlock": true, "seccomp": true},
            "workspace": "/w", "program": "sh", "args": [], "env": [], "cwd": null, "network": "none",
            "limits": {"memory_bytes": 1, "processes": 1, "open_files": 1, "file_size_bytes": 1048576,
                       "cpu_seconds": 7, "workspace_bytes": 2097152, "tmp_bytes": 1},
            "read_only": [], "identity": null, "cgroup": null
        }))
        .unwrap();
        let cpu = limit_notes(&policy, Exit::Signal(Signal::SIGXCPU as i32), None);
        assert_eq!(cpu, ["the command reached its CPU time limit of 7 s"]);
        let fsize = limit_notes(&policy, Exit::Signal(Signal::SIGXFSZ as i32), None);
        assert!(fsize[0].contains("1 MiB"), "{fsize:?}");
        assert!(limit_notes(&policy, Exit::Code(0), None).is_empty());
    }

    #[test]
    fn descendants_of_this_test_include_a_child() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let found = descendants(Pid::this()).contains(&(child.id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
    }
}
