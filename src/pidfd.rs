//! pidfds: a process (or, with [`PIDFD_THREAD`], a thread) pinned by an fd, so that a pid reused by
//! another process is never mistaken for the one we looked at.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `PIDFD_THREAD` (= O_EXCL): lets pidfd_open accept a thread id, which is what FUSE sends (Linux 6.9+).
pub const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

/// A pidfd for `pid` with `flags`, if the kernel gives one (the task exists, and the flags fit it).
pub fn open(pid: libc::pid_t, flags: libc::c_uint) -> Option<OwnedFd> {
    if pid <= 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Signal 0 through a pidfd: succeeds while the process (or thread) it refers to exists (~0.7 us).
pub fn is_alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: the fd is a valid pidfd we own; signal 0 only checks for existence.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}
