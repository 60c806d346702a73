//! The seccomp layer: system calls a run never needs fail with an error
//! instead of reaching the kernel. A deny list, not an allow list: runs are
//! arbitrary programs (shells, Python, Node, compilers), and the namespaces
//! and Landlock already bound what the allowed calls can touch; what is
//! denied here is what would widen the attack surface of the kernel itself
//! or reach outside those bounds (other processes' memory, mounts, new
//! namespaces, kernel keyrings, BPF, io_uring, terminal injection) and, when
//! the run has no network, sockets of any family but local ones.
//!
//! The filters are built by `seccompiler` (Firecracker's compiler), which
//! also kills a process that makes system calls of another architecture
//! (the i386 `int 0x80` bypass). A seccompiler filter has one action, so
//! what must fail as unknown (ENOSYS) is a second, small filter; seccomp
//! evaluates both.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};

use super::policy::Network;

/// Calls that fail with `EPERM` whatever their arguments.
const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_uselib,
];

/// Namespace flags a `clone` may not carry.
const CLONE_NS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Terminal ioctls that push input into another process's terminal.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

/// x32 system calls carry this bit in their number (on kernels built with
/// the x32 ABI); they are a second table a deny list would miss.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn arch() -> TargetArch {
    TargetArch::x86_64
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch())
        .map_err(|e| format!("cannot build the seccomp filter: {e}"))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| format!("cannot compile the seccomp filter: {e}"))
}

/// Which socket families a run may open.
fn allowed_families(network: Network, namespaces: bool) -> Option<&'static [u64]> {
    match (network, namespaces) {
        // Everything the host's stack offers that a normal program uses.
        (Network::Host, _) => {
            Some(&[libc::AF_UNIX as u64, libc::AF_INET as u64, libc::AF_INET6 as u64, libc::AF_NETLINK as u64])
        }
        // Local sockets reach only the run's own namespace.
        (Network::None, true) => Some(&[libc::AF_UNIX as u64]),
        // Without a network namespace even a Unix socket could reach a host
        // service (a database socket in /run): no sockets at all.
        (Network::None, false) => None,
    }
}

/// The filters for a run, in the order they are installed.
pub(crate) fn filters(network: Network, namespaces: bool) -> Result<Vec<BpfProgram>, String> {
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    let clone_rules = CLONE_NS
        .iter()
        .map(|&flag| SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(flag), flag)?]).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, String>>()?;
    eperm.insert(libc::SYS_clone, clone_rules);
    let ioctl_rules = [TIOCSTI, TIOCLINUX]
        .iter()
        .map(|&req| {
            SeccompRule::new(vec![cond(1, SeccompCmpOp::MaskedEq(0xffff_ffff), req)?]).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    eperm.insert(libc::SYS_ioctl, ioctl_rules);

    // Sockets of other families: refused as not permitted (a program sees
    // EPERM, as from a firewall). Every filter installed costs a JIT compile
    // per run and a pass per system call, so the deny list is one filter.
    let socket_rules = match allowed_families(network, namespaces) {
        None => Vec::new(),
        Some(families) => {
            let conditions = families.iter().map(|&f| cond(0, SeccompCmpOp::Ne, f)).collect::<Result<Vec<_>, _>>()?;
            vec![SeccompRule::new(conditions).map_err(|e| e.to_string())?]
        }
    };
    eperm.insert(libc::SYS_socket, socket_rules);
    Ok(vec![unknown_calls(), compile(eperm, libc::EPERM)?])
}

/// A filter refusing with ENOSYS what must look unknown rather than
/// forbidden: `clone3`, whose flags live in memory a filter cannot read (C
/// libraries fall back to `clone`, whose flags are checked), and x32 system
/// call numbers, a second table a deny list would miss. seccompiler cannot
/// match on the call number's range, so this one is written out; the
/// encodings are those of `linux/filter.h`.
fn unknown_calls() -> BpfProgram {
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JGE | BPF_K, BPF_JMP | BPF_JEQ |
    // BPF_K, BPF_RET | BPF_K.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    vec![
        // A = seccomp_data.nr (offset 0)
        sock_filter { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: 0 },
        // x32 numbers: to ENOSYS
        sock_filter { code: BPF_JMP_JGE_K, jt: 1, jf: 0, k: X32_SYSCALL_BIT },
        // clone3: to ENOSYS; anything else: allowed here (the deny list decides)
        sock_filter { code: BPF_JMP_JEQ_K, jt: 0, jf: 1, k: libc::SYS_clone3 as u32 },
        sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32 },
        sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
    ]
}

/// Installs the filters on the calling process (setting `no_new_privs`).
pub(crate) fn apply(filters: &[BpfProgram]) -> Result<(), String> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_compiles() {
        for network in [Network::None, Network::Host] {
            for namespaces in [true, false] {
                let f = filters(network, namespaces).unwrap();
                assert_eq!(f.len(), 2);
                assert!(f.iter().all(|p| !p.is_empty() && p.len() < 4096));
            }
        }
    }

    #[test]
    fn socket_families_follow_the_network() {
        assert_eq!(allowed_families(Network::None, false), None);
        assert_eq!(allowed_families(Network::None, true), Some(&[libc::AF_UNIX as u64][..]));
        assert!(allowed_families(Network::Host, false).unwrap().contains(&(libc::AF_INET6 as u64)));
    }

    #[test]
    fn x32_numbers_and_clone3_look_unknown_and_the_rest_passes() {
        // A tiny interpreter for the instruction kinds the filter uses.
        let run = |nr: u32| {
            let prog = unknown_calls();
            let mut pc = 0;
            let mut a = 0u32;
            loop {
                let i = &prog[pc];
                let jump = |taken: bool| 1 + usize::from(if taken { i.jt } else { i.jf });
                match i.code {
                    0x20 => a = nr,
                    0x35 => {
                        pc += jump(a >= i.k);
                        continue;
                    }
                    0x15 => {
                        pc += jump(a == i.k);
                        continue;
                    }
                    0x06 => return i.k,
                    other => panic!("unexpected instruction {other:#x}"),
                }
                pc += 1;
            }
        };
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        assert_eq!(run(libc::SYS_ptrace as u32), libc::SECCOMP_RET_ALLOW, "the deny list decides");
        assert_eq!(run(libc::SYS_clone as u32), libc::SECCOMP_RET_ALLOW);
        assert_eq!(run(libc::SYS_clone3 as u32), enosys);
        assert_eq!(run(0x4000_0000 | 521), enosys);
    }
}
