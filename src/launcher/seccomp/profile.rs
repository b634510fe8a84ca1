//! Docker's seccomp profile format (`docker run --security-opt seccomp=FILE.json`, the same JSON runc and
//! podman read): a default action and a list of rules, each naming system calls with an action, argument
//! conditions, and `includes`/`excludes` on capabilities, architectures and kernel versions. [`parse`]
//! keeps the rules that apply to this container (its capabilities, x86_64, the running kernel) and gives
//! the system calls by number.
//!
//! Worked example, from Docker's default: `{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args":
//! [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}], "excludes": {"caps":
//! ["CAP_SYS_ADMIN"]}}` allows clone(2) when `flags & 0x7e020000` (the CLONE_NEW* bits) is 0, for a
//! container without CAP_SYS_ADMIN. For MASKED_EQ `value` is the mask and `valueTwo` the datum.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Deserialize;

/// What the filter answers: the `SECCOMP_RET_*` value.
pub type Action = u32;

pub const RET_KILL_PROCESS: Action = 0x8000_0000;
pub const RET_KILL_THREAD: Action = 0x0000_0000;
pub const RET_TRAP: Action = 0x0003_0000;
pub const RET_ERRNO: Action = 0x0005_0000;
pub const RET_TRACE: Action = 0x7ff0_0000;
pub const RET_LOG: Action = 0x7ffc_0000;
pub const RET_ALLOW: Action = 0x7fff_0000;

/// A comparison of one 64-bit argument (`SCMP_CMP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    NotEqual,
    Less,
    LessOrEqual,
    Equal,
    GreaterOrEqual,
    Greater,
    /// `arg & mask == datum`.
    MaskedEqual {
        mask: u64,
    },
}

/// `args[index] <op> value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition {
    pub index: u8,
    pub comparison: Comparison,
    pub value: u64,
}

/// One rule of one system call: its action when every condition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub conditions: Vec<Condition>,
}

/// The profile as it applies to one container: the action for calls no rule matches, and the rules by
/// x86_64 system call number, unconditional ones first (libseccomp's precedence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub default: Action,
    pub rules: BTreeMap<u32, Vec<Rule>>,
    /// `SECCOMP_FILTER_FLAG_*` the profile asks for.
    pub flags: u32,
    /// Calls numbered above every call the profile names get ENOSYS, not the default, when the default
    /// is an errno (runc's rule): they are newer than the profile, and libc falls back to an older call
    /// on ENOSYS only (faccessat2, clone3).
    pub newer_than_profile: Option<u32>,
}

/// The container a profile is applied to.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Capability names as the profile writes them (`CAP_SYS_ADMIN`).
    pub capabilities: &'a [String],
    /// The running kernel's version (major, minor).
    pub kernel: (u32, u32),
}

/// The Go architecture name Docker matches `includes.arches` and `excludes.arches` against.
const ARCH: &str = "amd64";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileFile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    syscalls: Vec<SyscallGroup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyscallGroup {
    #[serde(default)]
    names: Vec<String>,
    /// The older single-name form.
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Arg>>,
    #[serde(default)]
    includes: Option<Filters>,
    #[serde(default)]
    excludes: Option<Filters>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filters {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// Reads a profile and keeps what applies to `target`. Errors name the field and value refused.
pub fn parse(json: &[u8], target: &Target<'_>) -> Result<Filter, String> {
    let file: ProfileFile =
        serde_json::from_slice(json).map_err(|e| format!("not a seccomp profile: {e}"))?;
    // vproc run answers the calls a profile may notify (sysinfo, sched_getaffinity) itself: the
    // profile's listener (vproc seccomp-agent, for runc and crun) is not needed.
    let _ = &file.listener_path;
    let default = action(&file.default_action, file.default_errno_ret)
        .map_err(|e| format!("defaultAction: {e}"))?;
    let mut flags = 0;
    for flag in &file.flags {
        flags |= match flag.as_str() {
            "SECCOMP_FILTER_FLAG_TSYNC" => 1,
            "SECCOMP_FILTER_FLAG_LOG" => 2,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => 4,
            other => return Err(format!("flags: unknown flag {other:?}")),
        };
    }
    let mut rules: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    for (i, group) in file.syscalls.iter().enumerate() {
        let at = |e: String| format!("syscalls[{i}]: {e}");
        if !applies(group, target).map_err(at)? {
            continue;
        }
        let action = action(&group.action, group.errno_ret).map_err(at)?;
        // As runc: a rule that does what the default does is no rule (kept, an unconditional one would
        // hide the call's conditional rules of another action).
        if action == default {
            continue;
        }
        let conditions: Vec<Condition> = group
            .args
            .iter()
            .flatten()
            .map(condition)
            .collect::<Result<_, _>>()
            .map_err(at)?;
        let group_rules = split_repeated_arguments(action, conditions);
        // Names this architecture does not have (arm_fadvise64_64, the 32-bit *64 calls) are skipped,
        // as libseccomp does.
        let names = group.names.iter().chain(group.name.iter());
        for number in names.filter_map(|name| syscalls::x86_64::Sysno::from_str(name).ok()) {
            let list = rules.entry(number.id() as u32).or_default();
            if action == crate::notify::RET_USER_NOTIF {
                // The call goes to vproc run's own listener, under this filter.
                if !crate::notify::CALLS.contains(&(number.id() as libc::c_long)) {
                    return Err(at(format!(
                        "SCMP_ACT_NOTIFY on {}: vproc run answers only sysinfo and \
                         sched_getaffinity",
                        number.name()
                    )));
                }
                list.extend(group_rules.iter().map(|rule| Rule {
                    action: RET_ALLOW,
                    conditions: rule.conditions.clone(),
                }));
                continue;
            }
            list.extend(group_rules.iter().cloned());
        }
    }
    let newer_than_profile = match default & 0xffff_0000 {
        RET_ERRNO => rules.keys().next_back().copied(),
        _ => None,
    };
    for list in rules.values_mut() {
        list.sort_by_key(|rule| !rule.conditions.is_empty());
        // After an unconditional rule nothing else of that call is ever reached.
        if let Some(first) = list.first()
            && first.conditions.is_empty()
        {
            list.truncate(1);
        }
    }
    Ok(Filter {
        default,
        rules,
        flags,
        newer_than_profile,
    })
}

/// runc's reading of a rule whose conditions test one argument more than once (`socket` with `a0 == 40`
/// and `a0 == 16`): each condition is a rule of its own, so they are ORed; otherwise they are ANDed.
fn split_repeated_arguments(action: Action, conditions: Vec<Condition>) -> Vec<Rule> {
    let mut seen = [false; 6];
    let repeated = conditions
        .iter()
        .any(|c| std::mem::replace(&mut seen[usize::from(c.index)], true));
    if repeated {
        conditions
            .into_iter()
            .map(|condition| Rule {
                action,
                conditions: vec![condition],
            })
            .collect()
    } else {
        vec![Rule { action, conditions }]
    }
}

/// Whether a rule group's `includes` all hold and none of its `excludes` does (Docker's rules: every
/// included capability, one of the included architectures, at least the minimum kernel; no excluded
/// capability or architecture).
fn applies(group: &SyscallGroup, target: &Target<'_>) -> Result<bool, String> {
    let has = |cap: &String| target.capabilities.iter().any(|c| c == cap);
    if let Some(includes) = &group.includes {
        if !includes.caps.iter().all(has) {
            return Ok(false);
        }
        if !includes.arches.is_empty() && !includes.arches.iter().any(|a| a == ARCH) {
            return Ok(false);
        }
        if let Some(min) = &includes.min_kernel {
            let wanted = kernel_version(min).ok_or_else(|| {
                format!("includes.minKernel {min:?}: expected a version like 4.8")
            })?;
            if target.kernel < wanted {
                return Ok(false);
            }
        }
    }
    if let Some(excludes) = &group.excludes {
        if excludes.caps.iter().any(has) || excludes.arches.iter().any(|a| a == ARCH) {
            return Ok(false);
        }
        if let Some(min) = &excludes.min_kernel {
            let from = kernel_version(min).ok_or_else(|| {
                format!("excludes.minKernel {min:?}: expected a version like 4.8")
            })?;
            if target.kernel >= from {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// `6.18.0-1-amd64` -> (6, 18).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().ok()?;
    Some((major, minor))
}

/// An action by name; ERRNO without a number is EPERM (as runc: `defaultErrnoRet` is the default
/// action's alone).
fn action(name: &str, errno: Option<u32>) -> Result<Action, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => RET_ALLOW,
        "SCMP_ACT_ERRNO" => RET_ERRNO | (errno.unwrap_or(libc::EPERM as u32) & 0xffff),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => RET_KILL_PROCESS,
        "SCMP_ACT_TRAP" => RET_TRAP,
        "SCMP_ACT_TRACE" => RET_TRACE | (errno.unwrap_or(0) & 0xffff),
        "SCMP_ACT_LOG" => RET_LOG,
        "SCMP_ACT_NOTIFY" => crate::notify::RET_USER_NOTIF,
        other => return Err(format!("unknown action {other:?}")),
    })
}

fn condition(arg: &Arg) -> Result<Condition, String> {
    if arg.index > 5 {
        return Err(format!(
            "args index {}: system calls have 6 (0-5)",
            arg.index
        ));
    }
    let (comparison, value) = match arg.op.as_str() {
        "SCMP_CMP_NE" => (Comparison::NotEqual, arg.value),
        "SCMP_CMP_LT" => (Comparison::Less, arg.value),
        "SCMP_CMP_LE" => (Comparison::LessOrEqual, arg.value),
        "SCMP_CMP_EQ" => (Comparison::Equal, arg.value),
        "SCMP_CMP_GE" => (Comparison::GreaterOrEqual, arg.value),
        "SCMP_CMP_GT" => (Comparison::Greater, arg.value),
        "SCMP_CMP_MASKED_EQ" => (Comparison::MaskedEqual { mask: arg.value }, arg.value_two),
        other => return Err(format!("unknown op {other:?}")),
    };
    Ok(Condition {
        index: arg.index,
        comparison,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nr(name: &str) -> u32 {
        syscalls::x86_64::Sysno::from_str(name).unwrap().id() as u32
    }

    fn docker_default(capabilities: &[&str]) -> Filter {
        let capabilities: Vec<String> = capabilities.iter().map(|c| c.to_string()).collect();
        let target = Target {
            capabilities: &capabilities,
            kernel: (6, 18),
        };
        parse(super::super::DOCKER_DEFAULT.as_bytes(), &target).unwrap()
    }

    #[test]
    fn docker_s_default_allows_the_usual_and_refuses_the_rest_with_eperm() {
        let filter = docker_default(&["CAP_CHOWN", "CAP_SYS_CHROOT"]);
        assert_eq!(filter.default, RET_ERRNO | 1);
        let allow = vec![Rule {
            action: RET_ALLOW,
            conditions: vec![],
        }];
        for name in [
            "read",
            "write",
            "execve",
            "arch_prctl",
            "modify_ldt",
            "chroot",
            "ptrace",
        ] {
            assert_eq!(filter.rules.get(&nr(name)), Some(&allow), "{name}");
        }
        for name in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "reboot",
            "init_module",
            "io_uring_setup",
        ] {
            assert_eq!(filter.rules.get(&nr(name)), None, "{name}");
        }
        // clone: only without the CLONE_NEW* flags; clone3: ENOSYS, so libc falls back to clone.
        assert_eq!(
            filter.rules[&nr("clone")],
            [Rule {
                action: RET_ALLOW,
                conditions: vec![Condition {
                    index: 0,
                    comparison: Comparison::MaskedEqual { mask: 0x7e02_0000 },
                    value: 0
                }]
            }]
        );
        assert_eq!(
            filter.rules[&nr("clone3")],
            [Rule {
                action: RET_ERRNO | libc::ENOSYS as u32,
                conditions: vec![]
            }]
        );
        assert_eq!(filter.rules[&nr("personality")].len(), 5);
        // Numbers above the newest call it names are ENOSYS (so libc falls back).
        assert_eq!(
            filter.newer_than_profile,
            filter.rules.keys().next_back().copied()
        );
    }

    #[test]
    fn repeated_arguments_are_ored_as_runc_does() {
        let target = Target {
            capabilities: &[],
            kernel: (6, 1),
        };
        let filter = parse(
            br#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": [
                    {"index": 0, "value": 40, "op": "SCMP_CMP_EQ"},
                    {"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": [
                    {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                    {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]}]}"#,
            &target,
        )
        .unwrap();
        let equal = |index, value| Condition {
            index,
            comparison: Comparison::Equal,
            value,
        };
        let eperm = RET_ERRNO | libc::EPERM as u32;
        assert_eq!(
            filter.rules[&nr("socket")],
            [
                Rule {
                    action: eperm,
                    conditions: vec![equal(0, 40)]
                },
                Rule {
                    action: eperm,
                    conditions: vec![equal(0, 16)]
                }
            ]
        );
        assert_eq!(
            filter.rules[&nr("kill")],
            [Rule {
                action: RET_ERRNO | 13,
                conditions: vec![equal(0, 1), equal(1, 9)]
            }]
        );
        // An allow-by-default profile has no "newer than the profile".
        assert_eq!(filter.newer_than_profile, None);
        // A rule with the default's action is dropped, and cannot hide a conditional one.
        let filter = parse(
            br#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["kill"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [
                    {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]}]}"#,
            &target,
        )
        .unwrap();
        assert_eq!(
            filter.rules[&nr("kill")],
            [Rule {
                action: eperm,
                conditions: vec![equal(1, 9)]
            }]
        );
    }

    #[test]
    fn capability_rules_follow_the_container_s_capabilities() {
        let filter = docker_default(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
        for name in ["mount", "unshare", "setns", "bpf", "clone3", "kcmp"] {
            assert_eq!(filter.rules[&nr(name)][0].action, RET_ALLOW, "{name}");
            assert!(filter.rules[&nr(name)][0].conditions.is_empty(), "{name}");
        }
        // The unconditional clone of CAP_SYS_ADMIN wins over the masked one.
        assert_eq!(filter.rules[&nr("clone")].len(), 1);
        assert!(!docker_default(&[]).rules.contains_key(&nr("chroot")));
    }

    #[test]
    fn bad_profiles_name_what_is_wrong() {
        let target = Target {
            capabilities: &[],
            kernel: (6, 1),
        };
        let error = |json: &str| parse(json.as_bytes(), &target).unwrap_err();
        assert!(error("{").contains("not a seccomp profile"));
        assert!(error(r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#).contains("defaultAction"));
        assert!(
            error(r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]}"#)
                .contains("syscalls[0]: unknown op")
        );
        assert!(
            error(r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#)
                .contains("answers only sysinfo and sched_getaffinity")
        );
        // The shipped profile for runc: its notified calls are vproc run's own listener's.
        let notified = parse(
            br#"{"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/vproc/seccomp.sock", "syscalls": [{"names": ["sysinfo", "sched_getaffinity"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            &target,
        )
        .unwrap();
        assert_eq!(notified.rules[&nr("sysinfo")][0].action, RET_ALLOW);
        assert_eq!(
            notified.rules[&nr("sched_getaffinity")][0].action,
            RET_ALLOW
        );
        assert!(
            error(r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}"#)
                .contains("minKernel")
        );
        // minKernel excludes a rule on an older kernel.
        let old = parse(
            br#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "6.2"}}]}"#,
            &target,
        )
        .unwrap();
        assert!(old.rules.is_empty());
        // excludes.minKernel drops a rule from that kernel on.
        let excluded = parse(
            br#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "6.1"}}]}"#,
            &target,
        )
        .unwrap();
        assert!(excluded.rules.is_empty());
        assert_eq!(kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(kernel_version("4.8"), Some((4, 8)));
    }
}
