//! The payload's seccomp filter: by default Docker's own default profile (an allowlist: every system call
//! it does not name fails with EPERM, including those added to the kernel later), with its
//! capability-conditional rules decided by the payload's capabilities; or a profile of the user's in
//! Docker's format (`--security-opt seccomp=FILE.json`), or none (`seccomp=unconfined`).
//!
//! Compiled here to a classic BPF program: check the architecture (x86_64 only; i386 through `int 0x80`
//! and x32 are refused outright, so no other ABI's numbering can go around the rules), then a binary
//! search over the system call numbers that have rules, then each call's rules in order.

pub mod profile;

use std::io;
use std::path::PathBuf;

use profile::{Comparison, Condition, Filter, RET_ERRNO};

/// Docker's default profile (moby/profiles seccomp/default.json, Apache-2.0), read by [`profile::parse`]
/// like any user profile.
pub const DOCKER_DEFAULT: &str = include_str!("docker-default.json");

/// Refused under the default profile though moby's allows them (since 2025): the kernel keyring is
/// namespaced by user namespace, and vproc's containers have none, so the container's root would share
/// the host root's keyrings, and `request_key` makes the host run /sbin/request-key as root with what
/// the container asks for. Docker refused them from 2016 to 2025.
const KEYRING_CALLS: [libc::c_long; 3] =
    [libc::SYS_add_key, libc::SYS_keyctl, libc::SYS_request_key];

/// `--security-opt seccomp=...`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Docker's default profile.
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A profile in Docker's format.
    File(PathBuf),
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// x32 system call numbers carry this bit on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The filter `policy` asks for, for a payload with `capabilities` (names as `CAP_SYS_ADMIN`); `None`
/// when unconfined. Errors name the profile and what in it is wrong.
pub fn program_for(
    policy: &Policy,
    capabilities: &[String],
) -> Result<Option<(Vec<libc::sock_filter>, u32)>, String> {
    let json = match policy {
        Policy::Unconfined => return Ok(None),
        Policy::Default => DOCKER_DEFAULT.as_bytes().to_vec(),
        Policy::File(path) => std::fs::read(path)
            .map_err(|e| format!("--security-opt seccomp={}: {e}", path.display()))?,
    };
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let target = profile::Target {
        capabilities,
        kernel: profile::kernel_version(&release).unwrap_or((0, 0)),
    };
    let shown = match policy {
        Policy::File(path) => path.display().to_string(),
        _ => "(Docker's default profile)".to_string(),
    };
    let mut filter = profile::parse(&json, &target)
        .map_err(|e| format!("--security-opt seccomp={shown}: {e}"))?;
    if *policy == Policy::Default {
        for call in KEYRING_CALLS {
            filter.rules.remove(&(call as u32));
        }
    }
    let program = compile(&filter).map_err(|e| format!("--security-opt seccomp={shown}: {e}"))?;
    Ok(Some((program, filter.flags)))
}

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
/// The kernel's limit on a filter's length (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: usize = 4096;

// struct seccomp_data: nr at 0, arch at 4, instruction pointer at 8, args[6] from 16 (little-endian).
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
fn offset_low(index: u8) -> u32 {
    16 + 8 * u32::from(index)
}

type Label = usize;

/// An instruction before jump offsets are known.
#[derive(Debug, Clone, Copy)]
enum Op {
    Load(u32),
    And(u32),
    Return(u32),
    /// Unconditional, any distance.
    Jump(Label),
    /// `code` with `k`: on true to `yes`, else to `no`; both within 255 instructions.
    Branch {
        code: u16,
        k: u32,
        yes: Label,
        no: Label,
    },
    Mark(Label),
}

#[derive(Default)]
struct Assembler {
    ops: Vec<Op>,
    labels: usize,
}

impl Assembler {
    fn label(&mut self) -> Label {
        self.labels += 1;
        self.labels - 1
    }

    fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    fn branch(&mut self, code: u16, k: u32, yes: Label, no: Label) {
        self.push(Op::Branch { code, k, yes, no });
    }

    fn finish(self) -> Result<Vec<libc::sock_filter>, String> {
        let mut at = vec![usize::MAX; self.labels];
        let mut position = 0;
        for op in &self.ops {
            match op {
                Op::Mark(label) => at[*label] = position,
                _ => position += 1,
            }
        }
        if position > MAX_INSTRUCTIONS {
            return Err(format!(
                "the filter needs {position} BPF instructions, more than the kernel's {MAX_INSTRUCTIONS}"
            ));
        }
        let mut program = Vec::with_capacity(position);
        for op in self.ops {
            let here = program.len();
            let distance = |label: Label| at[label] - (here + 1);
            let (code, jt, jf, k) = match op {
                Op::Mark(_) => continue,
                Op::Load(offset) => (LD_W_ABS, 0, 0, offset),
                Op::And(mask) => (ALU_AND_K, 0, 0, mask),
                Op::Return(action) => (RET_K, 0, 0, action),
                Op::Jump(label) => (JA, 0, 0, distance(label) as u32),
                Op::Branch { code, k, yes, no } => {
                    let short = |d: usize| {
                        u8::try_from(d).map_err(|_| "a BPF branch is too long".to_string())
                    };
                    (code, short(distance(yes))?, short(distance(no))?, k)
                }
            };
            program.push(libc::sock_filter { code, jt, jf, k });
        }
        Ok(program)
    }
}

/// The program for `filter`.
pub fn compile(filter: &Filter) -> Result<Vec<libc::sock_filter>, String> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let mut asm = Assembler::default();
    let (native, x32) = (asm.label(), asm.label());
    asm.push(Op::Load(OFFSET_ARCH));
    asm.branch(JEQ_K, AUDIT_ARCH_X86_64, native, x32);
    asm.push(Op::Mark(x32));
    asm.push(Op::Return(eperm));
    asm.push(Op::Mark(native));
    let (not_x32, refused) = (asm.label(), asm.label());
    asm.push(Op::Load(OFFSET_NR));
    asm.branch(JGE_K, X32_SYSCALL_BIT, refused, not_x32);
    asm.push(Op::Mark(refused));
    asm.push(Op::Return(eperm));
    asm.push(Op::Mark(not_x32));

    let numbers: Vec<u32> = filter.rules.keys().copied().collect();
    let bodies: Vec<Label> = numbers.iter().map(|_| asm.label()).collect();
    let default = asm.label();
    search(&mut asm, &numbers, &bodies, default);
    asm.push(Op::Mark(default));
    if let Some(newest) = filter.newer_than_profile {
        let (newer, known) = (asm.label(), asm.label());
        asm.branch(JGT_K, newest, newer, known);
        asm.push(Op::Mark(newer));
        asm.push(Op::Return(RET_ERRNO | libc::ENOSYS as u32));
        asm.push(Op::Mark(known));
    }
    asm.push(Op::Return(filter.default));
    for (rules, body) in filter.rules.values().zip(bodies) {
        asm.push(Op::Mark(body));
        for rule in rules {
            let next = asm.label();
            for condition in &rule.conditions {
                check(&mut asm, condition, next);
            }
            asm.push(Op::Return(rule.action));
            asm.push(Op::Mark(next));
        }
        asm.push(Op::Return(filter.default));
    }
    asm.finish()
}

/// A filter that hands `calls` (x86_64 numbers) to the listener and allows everything else, other
/// ABIs included: it sits under the container's own filter, which decides about the rest (the
/// kernel takes the strictest action of all filters, so the container's profile can still refuse
/// these calls).
pub fn notify_program(calls: &[u32]) -> Vec<libc::sock_filter> {
    let mut asm = Assembler::default();
    let (native, allow) = (asm.label(), asm.label());
    asm.push(Op::Load(OFFSET_ARCH));
    asm.branch(JEQ_K, AUDIT_ARCH_X86_64, native, allow);
    asm.push(Op::Mark(native));
    asm.push(Op::Load(OFFSET_NR));
    for &call in calls {
        let (notify, next) = (asm.label(), asm.label());
        asm.branch(JEQ_K, call, notify, next);
        asm.push(Op::Mark(notify));
        asm.push(Op::Return(crate::notify::RET_USER_NOTIF));
        asm.push(Op::Mark(next));
    }
    asm.push(Op::Mark(allow));
    asm.push(Op::Return(profile::RET_ALLOW));
    asm.finish()
        .expect("a handful of instructions with short branches")
}

/// A binary search over the sorted `numbers` (the accumulator holds the call's number): jumps to the
/// body of the one it is, or to `default`.
fn search(asm: &mut Assembler, numbers: &[u32], bodies: &[Label], default: Label) {
    if numbers.len() <= 4 {
        for (number, body) in numbers.iter().zip(bodies) {
            let (hit, miss) = (asm.label(), asm.label());
            asm.branch(JEQ_K, *number, hit, miss);
            asm.push(Op::Mark(hit));
            asm.push(Op::Jump(*body));
            asm.push(Op::Mark(miss));
        }
        asm.push(Op::Jump(default));
        return;
    }
    let middle = numbers.len() / 2;
    let (upper, lower, upper_jump) = (asm.label(), asm.label(), asm.label());
    asm.branch(JGE_K, numbers[middle], upper_jump, lower);
    asm.push(Op::Mark(upper_jump));
    asm.push(Op::Jump(upper));
    asm.push(Op::Mark(lower));
    search(asm, &numbers[..middle], &bodies[..middle], default);
    asm.push(Op::Mark(upper));
    search(asm, &numbers[middle..], &bodies[middle..], default);
}

/// Falls through when `condition` holds for the 64-bit argument, else jumps to `fail`. The argument is
/// two 32-bit words: the high word decides unless it is equal, then the low word does.
fn check(asm: &mut Assembler, condition: &Condition, fail: Label) {
    let low = offset_low(condition.index);
    let high = low + 4;
    let (value_high, value_low) = ((condition.value >> 32) as u32, condition.value as u32);
    let ok = asm.label();
    let low_word = asm.label();
    match condition.comparison {
        Comparison::Equal | Comparison::NotEqual => {
            let (equal, differ) = if condition.comparison == Comparison::Equal {
                (ok, fail)
            } else {
                (fail, ok)
            };
            asm.push(Op::Load(high));
            asm.branch(JEQ_K, value_high, low_word, differ);
            asm.push(Op::Mark(low_word));
            asm.push(Op::Load(low));
            asm.branch(JEQ_K, value_low, equal, differ);
        }
        Comparison::MaskedEqual { mask } => {
            asm.push(Op::Load(high));
            asm.push(Op::And((mask >> 32) as u32));
            asm.branch(JEQ_K, value_high, low_word, fail);
            asm.push(Op::Mark(low_word));
            asm.push(Op::Load(low));
            asm.push(Op::And(mask as u32));
            asm.branch(JEQ_K, value_low, ok, fail);
        }
        Comparison::Greater
        | Comparison::GreaterOrEqual
        | Comparison::Less
        | Comparison::LessOrEqual => {
            // `>` and `>=` hold when the argument is above; `<` and `<=` are their negations.
            let (above, below) = match condition.comparison {
                Comparison::Greater | Comparison::GreaterOrEqual => (ok, fail),
                _ => (fail, ok),
            };
            let low_code = match condition.comparison {
                Comparison::Greater | Comparison::LessOrEqual => JGT_K,
                _ => JGE_K,
            };
            let high_equal = asm.label();
            asm.push(Op::Load(high));
            asm.branch(JGT_K, value_high, above, high_equal);
            asm.push(Op::Mark(high_equal));
            asm.branch(JEQ_K, value_high, low_word, below);
            asm.push(Op::Mark(low_word));
            asm.push(Op::Load(low));
            asm.branch(low_code, value_low, above, below);
        }
    }
    asm.push(Op::Mark(ok));
}

/// Installs `program` on the calling thread (no_new_privs must be set); inherited across exec.
pub fn install(program: &[libc::sock_filter], flags: u32) -> io::Result<()> {
    set_mode_filter(program, flags).map(drop)
}

/// seccomp(SECCOMP_SET_MODE_FILTER, `flags`, `program`): what it returns (a listener fd with
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`, else 0).
pub fn set_mode_filter(program: &[libc::sock_filter], flags: u32) -> io::Result<libc::c_long> {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies the filter.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The name of capability `number` as profiles write it; `None` past the ones known here.
pub fn capability_name(number: u32) -> Option<&'static str> {
    const NAMES: [&str; 41] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    NAMES.get(number as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::profile::{RET_ALLOW, Rule};
    use super::*;

    /// Runs `program` on one call, as the kernel would.
    fn run(program: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        let word =
            |at: u32| u32::from_le_bytes(data[at as usize..at as usize + 4].try_into().unwrap());
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = program[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => a = word(i.k),
                ALU_AND_K => a &= i.k,
                RET_K => return i.k,
                JA => pc += i.k as usize,
                JEQ_K | JGT_K | JGE_K => {
                    let taken = match i.code {
                        JEQ_K => a == i.k,
                        JGT_K => a > i.k,
                        _ => a >= i.k,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    fn nr(name: &str) -> u32 {
        use std::str::FromStr;
        syscalls::x86_64::Sysno::from_str(name).unwrap().id() as u32
    }

    #[test]
    fn docker_s_default_compiles_and_decides_as_the_profile_says() {
        let capabilities = vec!["CAP_SYS_CHROOT".to_string()];
        let (program, _) = program_for(&Policy::Default, &capabilities)
            .unwrap()
            .unwrap();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let call = |name: &str, args: [u64; 6]| run(&program, AUDIT_ARCH_X86_64, nr(name), args);
        assert_eq!(call("read", [0; 6]), RET_ALLOW);
        assert_eq!(call("chroot", [0; 6]), RET_ALLOW);
        assert_eq!(call("mount", [0; 6]), eperm);
        assert_eq!(
            call("clone", [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            call("clone", [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(call("clone3", [0; 6]), RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(call("personality", [0xffff_ffff, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("personality", [0x0040000, 0, 0, 0, 0, 0]), eperm);
        // A value only the high word tells from an allowed one.
        assert_eq!(call("personality", [(1 << 32) | 8, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(
            call("socket", [libc::AF_INET as u64, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            call("socket", [libc::AF_VSOCK as u64, 0, 0, 0, 0, 0]),
            eperm
        );
        // Calls the profile does not name are refused; those newer than any it names get ENOSYS.
        assert_eq!(call("userfaultfd", [0; 6]), eperm);
        assert_eq!(call("io_uring_setup", [0; 6]), eperm);
        for keyring in ["add_key", "keyctl", "request_key"] {
            assert_eq!(call(keyring, [0; 6]), eperm, "{keyring}");
        }
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, 1000, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
        // Other ABIs: i386 (int 0x80) and x32.
        assert_eq!(run(&program, 0x4000_0003, 20, [0; 6]), eperm);
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39, [0; 6]),
            eperm
        );
        // Every number the profile allows on x86_64 is found by the search.
        let filter = profile::parse(
            DOCKER_DEFAULT.as_bytes(),
            &profile::Target {
                capabilities: &capabilities,
                kernel: (6, 18),
            },
        )
        .unwrap();
        for (number, rules) in &filter.rules {
            if rules[0].conditions.is_empty() && !KEYRING_CALLS.contains(&(*number as libc::c_long))
            {
                assert_eq!(
                    run(&program, AUDIT_ARCH_X86_64, *number, [0; 6]),
                    rules[0].action
                );
            }
        }
    }

    #[test]
    fn the_notify_filter_hands_over_only_its_calls() {
        let program = notify_program(&[99, 204]);
        let notify = crate::notify::RET_USER_NOTIF;
        assert_eq!(run(&program, AUDIT_ARCH_X86_64, 99, [0; 6]), notify);
        assert_eq!(run(&program, AUDIT_ARCH_X86_64, 204, [0; 6]), notify);
        assert_eq!(run(&program, AUDIT_ARCH_X86_64, 203, [0; 6]), RET_ALLOW);
        assert_eq!(run(&program, AUDIT_ARCH_X86_64, 0, [0; 6]), RET_ALLOW);
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 99, [0; 6]),
            RET_ALLOW
        );
        assert_eq!(run(&program, 0x4000_0003, 116, [0; 6]), RET_ALLOW);
    }

    #[test]
    fn comparisons_of_64_bit_arguments() {
        let cases = [
            (
                Comparison::Less,
                [(4u64, true), (5, false), (1 << 32, false)],
            ),
            (
                Comparison::LessOrEqual,
                [(5, true), (6, false), (1 << 33, false)],
            ),
            (
                Comparison::Greater,
                [(6, true), (5, false), (1 << 32, true)],
            ),
            (
                Comparison::GreaterOrEqual,
                [(5, true), (4, false), (1 << 32, true)],
            ),
            (
                Comparison::NotEqual,
                [(4, true), (5, false), ((1 << 32) | 5, true)],
            ),
            (
                Comparison::Equal,
                [(5, true), (4, false), ((1 << 32) | 5, false)],
            ),
            (
                Comparison::MaskedEqual { mask: 0xff },
                [(0x105, true), (0x6, false), ((7 << 32) | 5, true)],
            ),
        ];
        for (comparison, probes) in cases {
            let filter = Filter {
                default: RET_ERRNO | 1,
                rules: [(
                    7,
                    vec![Rule {
                        action: RET_ALLOW,
                        conditions: vec![Condition {
                            index: 2,
                            comparison,
                            value: 5,
                        }],
                    }],
                )]
                .into(),
                flags: 0,
                newer_than_profile: None,
            };
            let program = compile(&filter).unwrap();
            for (arg, allowed) in probes {
                let got = run(&program, AUDIT_ARCH_X86_64, 7, [0, 0, arg, 0, 0, 0]);
                assert_eq!(got == RET_ALLOW, allowed, "{comparison:?} {arg:#x}");
            }
        }
    }

    #[test]
    fn capability_names_match_the_kernel_s_numbers() {
        assert_eq!(capability_name(0), Some("CAP_CHOWN"));
        assert_eq!(capability_name(21), Some("CAP_SYS_ADMIN"));
        assert_eq!(capability_name(27), Some("CAP_MKNOD"));
        assert_eq!(capability_name(40), Some("CAP_CHECKPOINT_RESTORE"));
        assert_eq!(capability_name(41), None);
    }
}
