//! The only `unsafe` the sandbox needs: creating processes (plain or into
//! new namespaces) and restoring the default `SIGPIPE` disposition before
//! `execve`. Everything else goes through `nix`'s safe wrappers.
//!
//! Both are sound for one reason: they run only in the launcher, a process
//! that never starts a second thread, so a child gets a consistent copy of
//! every lock and of the allocator (the usual hazard of `fork` in a threaded
//! program, which the host itself is, and why the host never forks: it
//! spawns the launcher with `posix_spawn`).

#![allow(unsafe_code)]

use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Which side of a fork this is.
pub(super) enum Forked {
    /// The new process.
    Child,
    /// The caller, with the child's pid.
    Parent(Pid),
}

/// `fork(2)` that can also put the child in new namespaces: the raw `clone`
/// system call with a null stack, so the child continues on a copy of the
/// caller's stack exactly as after `fork`.
pub(super) fn fork_into(flags: CloneFlags) -> nix::Result<Forked> {
    let flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: the launcher is single-threaded (see the module doc), the null
    // stack makes the child share the caller's stack layout (as fork does),
    // and no pid, tid or TLS pointers are passed.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match ret {
        -1 => Err(nix::errno::Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as i32))),
    }
}

/// Why a scheduling priority could not be lowered.
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    /// The current niceness could not be read.
    #[error("getpriority: {0}")]
    Read(nix::errno::Errno),
    /// The niceness could not be set.
    #[error("cannot lower the run's priority (nice {nice}): {errno}")]
    Set {
        /// The niceness asked for.
        nice: i32,
        /// Why.
        errno: nix::errno::Errno,
    },
}

/// Lowers the calling thread's scheduling priority to niceness `nice`
/// (clamped to 0-19); inherited by every thread and process it starts (on
/// Linux the nice value belongs to the thread: the launcher, single-threaded,
/// lowers its whole process). A niceness at or below the current one is left
/// as it is (lowering it again would need a privilege).
pub(super) fn lower_priority(nice: i32) -> Result<(), PriorityError> {
    let nice = nice.clamp(0, 19);
    // SAFETY: getpriority and setpriority take integers and touch no memory.
    // getpriority may return -1 as a value, so errno tells failures apart.
    let now = unsafe {
        nix::errno::Errno::clear();
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    if now == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(PriorityError::Read(nix::errno::Errno::last()));
    }
    if nice <= now {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(PriorityError::Set { nice, errno: nix::errno::Errno::last() });
    }
    Ok(())
}

/// Moves the calling thread to `SCHED_IDLE`: it runs when no other thread
/// of the machine wants the CPU.
pub(super) fn idle_priority() -> nix::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; 0 is
    // the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Puts `SIGPIPE` back to its default action. The Rust runtime ignores it at
/// start-up, and an ignored signal stays ignored across `execve`; a shell
/// pipeline in a run expects the default.
pub(super) fn default_sigpipe() -> nix::Result<()> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installing SIG_DFL runs no handler code.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
}

/// Marks every descriptor from `first` up close-on-exec, so the command
/// starts with only its standard streams whatever the launcher inherited.
pub(super) fn cloexec_from(first: u32) -> Result<(), String> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags; no memory is passed.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk the open descriptors instead.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("cannot list open descriptors: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd: &i32| fd >= first as i32)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; an already closed one
        // (such as the directory listing's own) only fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}
