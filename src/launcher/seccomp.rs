//! The payload's seccomp filter: the system calls Docker's default profile refuses to a container
//! without CAP_SYS_ADMIN, refused with EPERM (clone3 with ENOSYS, so libc falls back to clone, whose
//! flags a filter can see). Most of them need capabilities the payload no longer has; the filter is
//! the second wall, and the only one for what needs none: user namespaces (the door to most kernel
//! exploits from containers), the kernel keyring (not namespaced), io_uring, userfaultfd, bpf,
//! perf_event_open.
//!
//! A classic BPF program: check the architecture (x86_64 only; other ABIs, i386 and x32, are refused
//! so they cannot go around the list), then one `jeq` per refused call.

use std::io;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// x32 system call numbers carry this bit on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Refused with EPERM.
#[cfg(target_arch = "x86_64")]
const REFUSED: &[libc::c_long] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_bpf,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_settimeofday,
    libc::SYS_delete_module,
    libc::SYS_finit_module,
    libc::SYS_init_module,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_request_key,
    libc::SYS_lookup_dcookie,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_mount_setattr,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_perf_event_open,
    libc::SYS_quotactl,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_kcmp,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_uselib,
    libc::SYS_ustat,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_vhangup,
];

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

// struct seccomp_data: nr at 0, arch at 4, instruction pointer at 8, args[6] from 16.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// The low 32 bits of args[0] (little-endian), where clone(2) takes its flags.
const OFFSET_ARG0_LOW: u32 = 16;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter program.
#[cfg(target_arch = "x86_64")]
pub fn program() -> Vec<libc::sock_filter> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let mut program = vec![
        statement(LD_W_ABS, OFFSET_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        statement(RET_K, eperm),
        statement(LD_W_ABS, OFFSET_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        statement(RET_K, eperm),
    ];
    for &nr in REFUSED {
        program.push(jump(JEQ_K, nr as u32, 0, 1));
        program.push(statement(RET_K, eperm));
    }
    program.extend([
        jump(JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        statement(RET_K, RET_ERRNO | libc::ENOSYS as u32),
        // clone(2) is allowed unless it asks for a new user namespace.
        jump(JEQ_K, libc::SYS_clone as u32, 0, 3),
        statement(LD_W_ABS, OFFSET_ARG0_LOW),
        jump(JSET_K, libc::CLONE_NEWUSER as u32, 0, 1),
        statement(RET_K, eperm),
        statement(RET_K, RET_ALLOW),
    ]);
    program
}

/// Installs the filter on the calling thread (no_new_privs must be set). Inherited across exec.
#[cfg(target_arch = "x86_64")]
pub fn install() -> io::Result<()> {
    let program = program();
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies the filter.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// No filter for other architectures yet (their system call numbers differ).
#[cfg(not(target_arch = "x86_64"))]
pub fn install() -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program_and_it_ends_in_a_return() {
        let program = program();
        assert!(program.len() < 256, "BPF jumps are 8-bit");
        const BPF_JMP: u16 = 0x05;
        for (i, instruction) in program.iter().enumerate() {
            if instruction.code & 0x07 != BPF_JMP {
                continue;
            }
            let furthest = i + 1 + usize::from(instruction.jt.max(instruction.jf));
            assert!(furthest < program.len(), "instruction {i} jumps out");
        }
        assert_eq!(program.last().unwrap().code, RET_K);
        assert_eq!(program.last().unwrap().k, RET_ALLOW);
    }
}
