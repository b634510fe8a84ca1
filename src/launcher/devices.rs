//! Which device nodes the container may create, read and write: Docker's default allowlist, enforced by
//! the kernel on v1 through the devices controller (`devices.deny` then `devices.allow`) and on v2 through
//! a BPF_PROG_TYPE_CGROUP_DEVICE program attached to the container's cgroup, as runc, crun and youki do.
//!
//! The list is Docker's (moby's default spec plus what runc adds to every container: the six memory
//! devices, tty, console, ptmx, the ptys and /dev/net/tun) without runc's `c *:* m` and `b *:* m`: those
//! let a container's root mknod any device, and a node of the host's disk left in a volume or a
//! `--rootfs` directory can be opened by the host's users, outside the container's cgroup. Here mknod is
//! refused (EPERM) for everything but the memory devices and tty, which are harmless wherever they are
//! (tty opens the opener's own terminal); console, ptmx, the ptys and tun can be used, not made (a node
//! of the host's console left in a volume would give the host's users its input).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Character or block device; `All` is v1's `a` (both, any number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
    All,
}

/// One rule of the allowlist: `c 1:3 rwm` (None is `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// The accesses allowed, as the BPF context's bits: [`MKNOD`], [`READ`], [`WRITE`].
    pub access: u32,
}

/// `m`, `r` and `w` of a rule; the same numbers as BPF_DEVCG_ACC_MKNOD, _READ and _WRITE.
pub const MKNOD: u32 = 1;
pub const READ: u32 = 2;
pub const WRITE: u32 = 4;
const RWM: u32 = MKNOD | READ | WRITE;

const fn char_device(major: u32, minor: Option<u32>, access: u32) -> DeviceRule {
    DeviceRule {
        kind: DeviceKind::Char,
        major: Some(major),
        minor,
        access,
    }
}

/// Docker's default devices, in its order.
pub const DEFAULT_ALLOWED: &[DeviceRule] = &[
    char_device(1, Some(3), RWM),             // null
    char_device(1, Some(8), RWM),             // random
    char_device(1, Some(7), RWM),             // full
    char_device(5, Some(0), RWM),             // tty
    char_device(1, Some(5), RWM),             // zero
    char_device(1, Some(9), RWM),             // urandom
    char_device(5, Some(1), READ | WRITE),    // console
    char_device(136, None, READ | WRITE),     // pts/*
    char_device(5, Some(2), READ | WRITE),    // ptmx
    char_device(10, Some(200), READ | WRITE), // net/tun
];

impl DeviceRule {
    /// The rule as v1's `devices.allow` takes it and `devices.list` shows it: `c 136:* rwm`.
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
            DeviceKind::All => 'a',
        };
        let number = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, letter) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(letter);
            }
        }
        format!(
            "{kind} {}:{} {access}",
            number(self.major),
            number(self.minor)
        )
    }
}

// eBPF encoding (linux/bpf.h): 8-byte instructions; code, dst (low nibble) and src registers, a 16-bit
// jump offset counted in instructions after the next one, a 32-bit immediate.
const LDX_MEM_W: u8 = 0x61;
const ALU64_MOV_X: u8 = 0xbf;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const JMP_JNE_K: u8 = 0x55;
const JMP_JSET_K: u8 = 0x45;
const JMP_EXIT: u8 = 0x95;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    code: u8,
    registers: u8,
    offset: i16,
    immediate: i32,
}

fn insn(code: u8, dst: u8, src: u8, offset: i16, immediate: i32) -> Instruction {
    Instruction {
        code,
        registers: (src << 4) | dst,
        offset,
        immediate,
    }
}

/// The program: `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` arrives in r1,
/// `access_type` is `access << 16 | type` (type 1 block, 2 char). Returns 1 (allow) for the first rule
/// that matches the type and numbers and allows every access asked for; 0 (EPERM) otherwise.
pub fn program(rules: &[DeviceRule]) -> Vec<Instruction> {
    const TYPE_BLOCK: i32 = 1;
    const TYPE_CHAR: i32 = 2;
    // r2 = access, r3 = type, r4 = major, r5 = minor.
    let mut program = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_MOV_X, 3, 2, 0, 0),
        insn(ALU64_AND_K, 3, 0, 0, 0xffff),
        insn(ALU64_RSH_K, 2, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        let mut checks = Vec::new();
        match rule.kind {
            DeviceKind::Char => checks.push((JMP_JNE_K, 3, TYPE_CHAR)),
            DeviceKind::Block => checks.push((JMP_JNE_K, 3, TYPE_BLOCK)),
            DeviceKind::All => {}
        }
        if let Some(major) = rule.major {
            checks.push((JMP_JNE_K, 4, major as i32));
        }
        if let Some(minor) = rule.minor {
            checks.push((JMP_JNE_K, 5, minor as i32));
        }
        // An access asked for that the rule does not give: not this rule.
        checks.push((JMP_JSET_K, 2, (!rule.access & RWM) as i32));
        // Each check jumps past the rest of the checks and this rule's `r0 = 1; exit`.
        let count = checks.len();
        for (i, (code, register, value)) in checks.into_iter().enumerate() {
            let skip = (count - i - 1 + 2) as i16;
            program.push(insn(code, register, 0, skip, value));
        }
        program.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        program.push(insn(JMP_EXIT, 0, 0, 0, 0));
    }
    program.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    program.push(insn(JMP_EXIT, 0, 0, 0, 0));
    program
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Programs of the parent cgroups (systemd's) still run too, and ours cannot be overridden below.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `prog_name`.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<i32> {
    // SAFETY: `attr` is the #[repr(C)] prefix of `union bpf_attr` for `command`, valid for the call;
    // the kernel reads only `size_of::<T>()` bytes of it (and treats the rest as zero).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

/// Loads the program for `rules`; on a verifier refusal the error carries the verifier's log.
pub fn load(rules: &[DeviceRule]) -> io::Result<OwnedFd> {
    let program = program(rules);
    let license = c"Apache";
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"vproc_device");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a new fd the kernel returned for us.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            // Load again with the verifier's log, to say why.
            let mut log = vec![0u8; 64 << 10];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr).map(|fd| {
                // SAFETY: as above; closed at once, the first error is what we report.
                drop(unsafe { OwnedFd::from_raw_fd(fd) })
            });
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            Err(io::Error::new(
                e.kind(),
                format!(
                    "{e}; verifier: {}",
                    String::from_utf8_lossy(&log[..end]).trim()
                ),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Attaches a program allowing only `rules` to the v2 cgroup at `dir`. It stays attached as long as
/// the cgroup exists; the fds are closed on return.
pub fn attach_program(dir: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    let program = load(rules)?;
    let cgroup = std::fs::File::open(dir)?;
    let mut attr = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_are_what_devices_list_shows() {
        // The whole list as the kernel shows it is checked in tests/run.rs.
        assert_eq!(DEFAULT_ALLOWED[0].v1_line(), "c 1:3 rwm");
        assert_eq!(char_device(136, None, READ | WRITE).v1_line(), "c 136:* rw");
        let block_read = DeviceRule {
            kind: DeviceKind::Block,
            major: None,
            minor: Some(0),
            access: READ | MKNOD,
        };
        assert_eq!(block_read.v1_line(), "b *:0 rm");
    }

    /// Runs the program on one request, as the kernel would, to check the jumps.
    fn allows(program: &[Instruction], kind: u32, access: u32, major: u32, minor: u32) -> bool {
        let context = [(access << 16) | kind, major, minor];
        let mut registers = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let dst = usize::from(i.registers & 0xf);
            let src = usize::from(i.registers >> 4);
            let imm = i64::from(i.immediate) as u64;
            pc += 1;
            match i.code {
                LDX_MEM_W => registers[dst] = u64::from(context[i.offset as usize / 4]),
                ALU64_MOV_X => registers[dst] = registers[src],
                ALU64_MOV_K => registers[dst] = imm,
                ALU64_AND_K => registers[dst] &= imm,
                ALU64_RSH_K => registers[dst] >>= imm,
                JMP_JNE_K if registers[dst] != imm => pc += i.offset as usize,
                JMP_JSET_K if registers[dst] & imm != 0 => pc += i.offset as usize,
                JMP_JNE_K | JMP_JSET_K => {}
                JMP_EXIT => return registers[0] == 1,
                other => panic!("unknown opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_program_allows_the_list_and_nothing_else() {
        let program = program(DEFAULT_ALLOWED);
        let (block, char) = (1, 2);
        assert!(allows(&program, char, READ | WRITE, 1, 3), "/dev/null");
        assert!(allows(&program, char, MKNOD, 1, 3), "mknod /dev/null");
        assert!(allows(&program, char, READ, 136, 7), "/dev/pts/7");
        assert!(!allows(&program, char, MKNOD, 136, 7), "mknod of a pty");
        assert!(!allows(&program, char, MKNOD, 5, 1), "mknod of the console");
        assert!(allows(&program, char, WRITE, 10, 200), "/dev/net/tun");
        assert!(!allows(&program, block, READ, 8, 0), "/dev/sda");
        assert!(!allows(&program, block, MKNOD, 254, 0), "mknod of a disk");
        assert!(!allows(&program, char, READ, 1, 1), "/dev/mem");
        assert!(!allows(&program, char, READ, 1, 11), "/dev/kmsg");
        assert!(!allows(&program, char, READ, 10, 229), "/dev/fuse");
        assert!(
            !allows(&program, block, READ, 1, 3),
            "a block device with null's numbers"
        );
        let read_only = [char_device(1, Some(3), READ)];
        let program = super::program(&read_only);
        assert!(allows(&program, char, READ, 1, 3));
        assert!(!allows(&program, char, READ | WRITE, 1, 3));
    }
}
