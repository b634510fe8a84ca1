//! The last steps before the payload runs, in the forked payload process: user, capabilities,
//! no_new_privs, every inherited fd above stdio closed (CVE-2024-21626: a leaked host directory fd lets
//! a container walk the host), the seccomp filter, then exec with the container's PATH. And the
//! init's own hardening.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::thread::{CapabilitySet, CapabilitySets};

use super::user::User;

/// What the payload runs: argv, environment, working directory, user and seccomp filter.
#[derive(Debug, Clone)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub user: User,
    /// `-i`: stdin stays `vproc run`'s; else /dev/null (unless -t gives a terminal).
    pub interactive: bool,
    /// None: `--security-opt seccomp=unconfined`.
    pub seccomp: Option<SeccompProgram>,
}

/// A compiled filter and the `SECCOMP_FILTER_FLAG_*` to install it with.
#[derive(Clone)]
pub struct SeccompProgram {
    pub instructions: Vec<libc::sock_filter>,
    pub flags: u32,
}

impl std::fmt::Debug for SeccompProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SeccompProgram({} instructions)",
            self.instructions.len()
        )
    }
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

/// The capabilities the payload keeps: Docker's defaults that the bounding set still has (as bits).
fn kept_capabilities() -> u64 {
    let mut keep = 0u64;
    for cap in 0..=last_capability() {
        // SAFETY: plain prctl.
        let bounded = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap) } == 1;
        if bounded && DEFAULT_CAPABILITIES.bits() & (1 << cap) != 0 {
            keep |= 1 << cap;
        }
    }
    keep
}

/// [`kept_capabilities`] by name (`CAP_CHOWN`), as seccomp profiles' `includes.caps` name them.
pub fn kept_capability_names() -> Vec<String> {
    let keep = kept_capabilities();
    (0..64)
        .filter(|cap| keep & (1 << cap) != 0)
        .filter_map(super::seccomp::capability_name)
        .map(String::from)
        .collect()
}

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

/// Becomes the payload, on `terminal` (-t: the pty's slave) if given. Never returns: exec, or an exit
/// code with the reason on stderr.
pub fn exec_payload(
    command: &Command,
    terminal: Option<OwnedFd>,
    listener_to: Option<OwnedFd>,
) -> ! {
    let fail = |code: i32, message: String| -> ! {
        let _ = writeln!(std::io::stderr(), "vproc run: {message}");
        std::process::exit(code)
    };
    super::child_signals(false);
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let stdio = match terminal {
        Some(slave) => super::terminal::become_controlling(slave, command.user.uid)
            .map_err(|e| format!("cannot make the terminal the command's: {e}")),
        // A session of its own without -t too: the terminal `vproc run` was started from is not the
        // container's controlling terminal (no TIOCSTI into the user's shell, no /dev/tty).
        None => rustix::process::setsid()
            .map_err(|e| format!("cannot start a session: {e}"))
            .and_then(|_| {
                if command.interactive {
                    Ok(())
                } else {
                    stdin_from_null()
                }
            }),
    };
    if let Err(message) = stdio {
        fail(EXIT_CANNOT_RUN, message);
    }
    // While still root: a non-root payload cannot list its own /proc/self/fd (it is not dumpable
    // after setuid), which the fallback for kernels without close_range needs.
    let listener_to = listener_to.map(|socket| match keep_as_fd_3(socket) {
        Ok(socket) => socket,
        Err(e) => fail(
            EXIT_CANNOT_RUN,
            format!("cannot keep the seccomp listener's socket: {e}"),
        ),
    });
    close_inherited_fds(if listener_to.is_some() { 4 } else { 3 });
    if let Err(e) = drop_privileges(&command.user) {
        fail(EXIT_CANNOT_RUN, format!("cannot drop privileges: {e}"));
    }
    // A change of uid or gid clears the parent-death signal; the command must still end with
    // `vproc run`.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
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
    // Under the container's own filter (which decides about everything else, these two calls
    // included): sysinfo and sched_getaffinity go to `vproc run`.
    if let Some(socket) = listener_to
        && let Err(message) = hand_over_listener(&socket)
    {
        fail(EXIT_CANNOT_RUN, message);
    }
    // Last: the filter refuses some of the calls made above.
    if let Some(filter) = &command.seccomp
        && let Err(e) = super::seccomp::install(&filter.instructions, filter.flags)
    {
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

/// `socket` moved to fd 3 (close-on-exec), so that closing every fd from 4 up keeps it.
fn keep_as_fd_3(socket: OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if socket.as_raw_fd() == 3 {
        return Ok(socket);
    }
    // SAFETY: dup3(2) onto fd 3, which is about to be closed anyway with everything above stdio;
    // the new fd is owned by what is returned.
    let fd = unsafe { libc::dup3(socket.as_raw_fd(), 3, libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(socket);
    // SAFETY: fd 3 is ours alone now.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Installs the filter that hands sysinfo and sched_getaffinity to a listener and sends the
/// listener to `vproc run` over `socket`. Where a listener cannot be had (one is already installed
/// above us: vproc run nested in a container whose runtime uses one), the calls stay the host's,
/// said on stderr; a listener that cannot be sent stops the command, whose calls would otherwise
/// fail with ENOSYS.
fn hand_over_listener(socket: &OwnedFd) -> Result<(), String> {
    match crate::notify::install_listener_filter() {
        Ok(listener) => super::terminal::send_fd(socket, std::os::fd::AsFd::as_fd(&listener))
            .map_err(|e| format!("cannot pass the seccomp listener to vproc run: {e}")),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "vproc run: sysinfo and sched_getaffinity keep the host's answers: cannot install \
                 a seccomp listener: {e}"
            );
            Ok(())
        }
    }
}

/// Without -i, the command reads nothing: stdin is the container's /dev/null (docker run's default).
fn stdin_from_null() -> Result<(), String> {
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("cannot open /dev/null for stdin: {e}"))?;
    // SAFETY: dup2(2) onto stdin of this process, which is about to exec.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) } < 0 {
        return Err(format!(
            "cannot make /dev/null stdin: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// With --init, once the command is forked: the init keeps nothing it does not need, no capabilities
/// (kill(2) of its own child needs none). It is not dumpable since before that fork, so the command
/// cannot read its memory or /proc/1/exe (the host's vproc binary).
pub fn become_reaper() {
    // Nothing the caller of vproc run left open stays in the container.
    close_inherited_fds(3);
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
    let keep = kept_capabilities();
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
fn close_inherited_fds(from: u32) {
    // SAFETY: close_range(2) on fds this process no longer uses; nothing refers to them afterwards.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
    if rc != 0 {
        close_listed_fds(from as libc::c_int);
    }
}

/// Kernels before 5.9 (no close_range): closes the fds from `from` up that /proc/self/fd lists, whatever their number,
/// until none is left; where /proc cannot be read, every number below the hard RLIMIT_NOFILE. Only raw
/// system calls and a buffer on the stack: this runs in a forked child.
pub fn close_listed_fds(from: libc::c_int) {
    // SAFETY: open(2) of a constant path; the fd is closed below.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) writes the struct we pass.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        let top = limit.rlim_max.min(1 << 20) as libc::c_int;
        for fd in from..top.max(1024) {
            // SAFETY: closing numbers this process does not use is harmless (EBADF).
            unsafe { libc::close(fd) };
        }
        return;
    }
    let mut buffer = [0u8; 4096];
    loop {
        let mut closed_any = false;
        // SAFETY: lseek(2) and getdents64(2) on our own directory fd, into our own buffer.
        unsafe { libc::lseek(dir, 0, libc::SEEK_SET) };
        loop {
            // SAFETY: as above.
            let read = unsafe {
                libc::syscall(libc::SYS_getdents64, dir, buffer.as_mut_ptr(), buffer.len())
            };
            if read <= 0 {
                break;
            }
            let mut at = 0usize;
            while at < read as usize {
                // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, then the name.
                let length = u16::from_ne_bytes([buffer[at + 16], buffer[at + 17]]) as usize;
                let mut fd: libc::c_int = 0;
                let mut digits = 0;
                for &byte in &buffer[at + 19..at + length] {
                    if !byte.is_ascii_digit() {
                        break;
                    }
                    fd = fd
                        .saturating_mul(10)
                        .saturating_add(libc::c_int::from(byte - b'0'));
                    digits += 1;
                }
                if digits > 0 && fd >= from && fd != dir {
                    // SAFETY: an fd this process no longer uses.
                    unsafe { libc::close(fd) };
                    closed_any = true;
                }
                at += length;
            }
        }
        if !closed_any {
            break;
        }
    }
    // SAFETY: our own directory fd.
    unsafe { libc::close(dir) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_closes_fds_far_above_1024() {
        // In a child: fork, then raw system calls only (as in the payload).
        // SAFETY: the child only calls async-signal-safe functions and _exit.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: plain dup2/fcntl/_exit on our own fds.
                unsafe {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                    limit.rlim_cur = limit.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                    let top = limit.rlim_max.min(1 << 20) as libc::c_int - 1;
                    let high = [5, 1500, top];
                    let mut ok = top > 1500;
                    for fd in high {
                        ok &= libc::dup2(0, fd) == fd;
                    }
                    ok &= libc::dup2(0, 3) == 3;
                    close_listed_fds(4);
                    for fd in high {
                        ok &= libc::fcntl(fd, libc::F_GETFD) == -1;
                    }
                    ok &= libc::fcntl(2, libc::F_GETFD) != -1;
                    // Below `from` (where the seccomp listener's socket waits): kept.
                    ok &= libc::fcntl(3, libc::F_GETFD) != -1;
                    libc::_exit(if ok { 0 } else { 1 });
                }
            }
            child if child > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                assert!(libc::WIFEXITED(status), "status {status}");
                assert_eq!(libc::WEXITSTATUS(status), 0, "an fd survived");
            }
            _ => panic!("fork: {}", std::io::Error::last_os_error()),
        }
    }

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
