//! The last steps before the payload runs, in the forked payload process: user, capabilities,
//! no_new_privs, every inherited fd above stdio closed (CVE-2024-21626: a leaked host directory fd lets
//! a container walk the host), the seccomp filter, then exec with the container's PATH. And the
//! init's own hardening.

use std::ffi::CString;
use std::io::Write;
use std::path::Path;

use rustix::thread::{CapabilitySet, CapabilitySets};

use super::user::User;

/// What the payload runs: argv, environment, working directory and user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub user: User,
}

impl Command {
    /// PATH when neither the image nor `-e` sets one (Docker's).
    pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    fn path_var(&self) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(Self::DEFAULT_PATH, |(_, v)| v.as_str())
    }
}

/// Docker's default capabilities; the payload keeps those the bounding set still has.
pub const DEFAULT_CAPABILITIES: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::AUDIT_WRITE);

/// Highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`); 63 at most.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

/// Exit codes of a payload that could not be started, as shells and Docker use them.
const EXIT_NOT_FOUND: i32 = 127;
const EXIT_CANNOT_RUN: i32 = 126;

/// Becomes the payload. Never returns: exec, or an exit code with the reason on stderr.
pub fn exec_payload(command: &Command) -> ! {
    let fail = |code: i32, message: String| -> ! {
        let _ = writeln!(std::io::stderr(), "vproc run: {message}");
        std::process::exit(code)
    };
    super::child_signals(false);
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    if let Err(e) = drop_privileges(&command.user) {
        fail(EXIT_CANNOT_RUN, format!("cannot drop privileges: {e}"));
    }
    if let Err(e) = std::env::set_current_dir(&command.workdir) {
        fail(
            EXIT_CANNOT_RUN,
            format!(
                "cannot enter the working directory {}: {e}",
                command.workdir
            ),
        );
    }
    let program = match find_program(&command.argv[0], command.path_var()) {
        Ok(program) => program,
        Err(message) => fail(EXIT_NOT_FOUND, message),
    };
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let argv: Vec<CString> = command.argv.iter().map(|a| to_c(a)).collect();
    let env: Vec<CString> = command
        .env
        .iter()
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect();
    let program_c = to_c(&program);
    if let Err(e) = rustix::thread::set_no_new_privs(true) {
        fail(EXIT_CANNOT_RUN, format!("cannot set no_new_privs: {e}"));
    }
    close_inherited_fds();
    // Last: the filter refuses some of the calls made above.
    if let Err(e) = super::seccomp::install() {
        fail(
            EXIT_CANNOT_RUN,
            format!("cannot install the seccomp filter: {e}"),
        );
    }
    let error = nix::unistd::execve(&program_c, &argv, &env).unwrap_err();
    let code = if error == nix::errno::Errno::ENOENT {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_RUN
    };
    fail(
        code,
        format!("cannot run {program}: {}", std::io::Error::from(error)),
    )
}

/// The init keeps nothing it does not need: no capabilities (kill(2) of its own child needs none),
/// not dumpable (so the payload cannot read its memory or /proc/1/exe, the host's vproc binary).
pub fn become_reaper() {
    // SAFETY: plain prctls.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
    }
    for cap in 0..=last_capability() {
        // SAFETY: plain prctl; EINVAL for unknown numbers is fine.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap) };
    }
    let _ = rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    );
    let _ = rustix::thread::set_no_new_privs(true);
}

/// Bounding set down to Docker's defaults (of those we still have), groups, gid, uid, then the
/// capability sets; a non-root uid ends with none (the kernel clears them on setuid).
fn drop_privileges(user: &User) -> std::io::Result<()> {
    let mut keep = 0u64;
    for cap in 0..=last_capability() {
        // SAFETY: plain prctl.
        let bounded = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap) } == 1;
        if bounded && DEFAULT_CAPABILITIES.bits() & (1 << cap) != 0 {
            keep |= 1 << cap;
        }
    }
    for cap in 0..=last_capability() {
        if keep & (1 << cap) == 0 {
            // SAFETY: plain prctl.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    // SAFETY: plain prctl.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let (uid, gid) = (user.uid, user.gid);
    let groups: Vec<nix::unistd::Gid> = user
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups)?;
    nix::unistd::setresgid(gid.into(), gid.into(), gid.into())?;
    nix::unistd::setresuid(uid.into(), uid.into(), uid.into())?;
    let set = if uid == 0 {
        CapabilitySet::from_bits_retain(keep)
    } else {
        CapabilitySet::empty()
    };
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: set,
            permitted: set,
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

/// `name` itself when it has a slash, else the first executable regular file named so in `path`.
fn find_program(name: &str, path: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the command is an empty string".into());
    }
    if name.contains('/') {
        return match std::fs::metadata(name) {
            Ok(_) => Ok(name.to_string()),
            Err(e) => Err(format!("{name}: {e}")),
        };
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if rustix::fs::access(&candidate, rustix::fs::Access::EXEC_OK).is_ok()
            && candidate.metadata().is_ok_and(|m| m.is_file())
        {
            return Ok(candidate.to_string_lossy().into_owned());
        }
    }
    Err(format!("{name}: command not found in PATH ({path})"))
}

/// Closes every fd above stderr, so nothing of the host (a directory fd, the cgroup) leaks in.
fn close_inherited_fds() {
    // SAFETY: close_range(2) on fds this process no longer uses; nothing refers to them afterwards.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        // Kernels before 5.9: close them one by one.
        for fd in 3..1024 {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_path_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        assert_eq!(
            find_program("tool", &path),
            Ok(tool.to_string_lossy().into_owned())
        );
        assert!(
            find_program("nope", &path)
                .unwrap_err()
                .contains("not found in PATH")
        );
        assert!(find_program("/no/such/tool", &path).is_err());
        assert!(find_program("", &path).is_err());
    }
}
