//! What FUSE cannot reach: sysinfo(2) and sched_getaffinity(2), answered for a container through
//! seccomp user notification. The container's filter hands these two calls to a listener fd; whoever
//! holds it ([`serve`]) reads the caller's state, writes the answer into the caller's memory and tells
//! the kernel what the call returns.
//!
//! - sysinfo: the struct from the caller's own proc/meminfo, uptime and loadavg as [`Renderer`]
//!   renders them ([`crate::view::sysinfo`]), so `free` from busybox and from procps agree.
//! - sched_getaffinity of the caller itself: its real mask cut to the first N CPUs it has, N the CPU
//!   count its cpuinfo shows (quota and cpuset), so `nproc`, Python's `os.sched_getaffinity`, Node's
//!   `availableParallelism`, OpenMP and OpenBLAS size their threads for the container.
//!
//! Whatever goes wrong (a reader not in a container, a file not in the kernel's format, a bad
//! address, a caller gone), the answer is `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: the kernel runs the
//! real call, so a program sees the host's value at worst, never an error this agent made up.
//!
//! Who holds the listener: `vproc run` for its containers ([`crate::launcher`]); for runc and crun
//! (`linux.seccomp.listenerPath`) the per-container processes of `vproc seccomp-agent` ([`agent`]).

pub mod agent;
pub mod profile;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use crate::cgroup::CgroupLayout;
use crate::files::Content;
use crate::host::HostRoots;
use crate::render::{Options, Renderer};
use crate::view::loadavg::LOAD_PERIOD;
use crate::view::sysinfo::Sysinfo;

/// `SECCOMP_RET_USER_NOTIF`: the filter's action that hands a call to the listener.
pub const RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`.
pub const FLAG_NEW_LISTENER: u32 = 1 << 3;

/// The calls answered here.
pub const CALLS: [libc::c_long; 2] = [libc::SYS_sysinfo, libc::SYS_sched_getaffinity];

/// The largest affinity mask handled (8192 CPUs); a caller's bigger buffer gets the kernel's size.
const MAX_MASK_BYTES: usize = 1024;

/// Which of the calls get the container's answer (the other gets the kernel's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub sysinfo: bool,
    pub affinity: bool,
}

impl Default for Calls {
    fn default() -> Self {
        Calls {
            sysinfo: true,
            affinity: true,
        }
    }
}

/// Answers notified calls from the container's views.
pub struct Answers {
    /// `None` when the host's cgroups could not be read: every call gets the kernel's answer.
    renderer: Option<Renderer>,
    calls: Calls,
    proc_root: std::path::PathBuf,
}

impl Answers {
    /// Answers rendered from this host's /proc, /sys and cgroups.
    pub fn new(calls: Calls) -> Answers {
        let roots = HostRoots::default();
        let proc_root = roots.proc.clone();
        let renderer = CgroupLayout::detect(&roots.proc)
            .and_then(|layout| Renderer::new(roots, layout, Options::default()))
            .inspect_err(|e| {
                log::warn!("cannot read this host's cgroups, sysinfo and sched_getaffinity stay the host's: {e}")
            })
            .ok();
        Answers {
            renderer,
            calls,
            proc_root,
        }
    }

    /// The answer to one notified call (the caller's memory written where it says so).
    fn answer(&self, listener: &Listener, call: &libc::seccomp_notif) -> Reply {
        let Some(renderer) = &self.renderer else {
            return Reply::Continue;
        };
        let answered = match i64::from(call.data.nr) {
            libc::SYS_sysinfo if self.calls.sysinfo => self.sysinfo(renderer, listener, call),
            libc::SYS_sched_getaffinity if self.calls.affinity => {
                self.affinity(renderer, listener, call)
            }
            _ => None,
        };
        answered.unwrap_or(Reply::Continue)
    }

    fn sysinfo(
        &self,
        renderer: &Renderer,
        listener: &Listener,
        call: &libc::seccomp_notif,
    ) -> Option<Reply> {
        let pid = call.pid;
        // A process of the host's own (or one not resolvable) keeps the kernel's answer.
        renderer.container_key(pid)?;
        let memory = self.open_memory(pid)?;
        let text = |content| {
            renderer
                .render(content, pid)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
        };
        let info = Sysinfo::from_views(
            &text(Content::Meminfo)?,
            &text(Content::Uptime)?,
            &text(Content::Loadavg)?,
        )?;
        // The memory opened and the cgroup read are the caller's only if it is still waiting in
        // this call (its pid was not reused meanwhile).
        if !listener.id_valid(call.id) {
            return None;
        }
        write_at(&memory, &info.to_bytes(), call.data.args[0])?;
        Some(Reply::Value(0))
    }

    fn affinity(
        &self,
        renderer: &Renderer,
        listener: &Listener,
        call: &libc::seccomp_notif,
    ) -> Option<Reply> {
        let pid = call.pid;
        let [target, len, address, ..] = call.data.args;
        let target = target as i32;
        // The kernel's errors (a negative pid, a length not in whole longs) stay the kernel's.
        if target < 0 || len as usize % std::mem::size_of::<libc::c_ulong>() != 0 || len == 0 {
            return None;
        }
        // Only the caller's own mask (pid 0, or its own thread id in its namespace): another task's
        // mask is the kernel's.
        if target != 0
            && renderer.registry().pid_namespaces.innermost_pid(pid).ok()? != target as u32
        {
            return None;
        }
        renderer.container_key(pid)?;
        let memory = self.open_memory(pid)?;
        let mut mask = vec![0u8; (len as usize).min(MAX_MASK_BYTES)];
        // SAFETY: the kernel writes at most `mask.len()` bytes into our buffer.
        let got = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                pid as libc::pid_t,
                mask.len(),
                mask.as_mut_ptr(),
            )
        };
        if got <= 0 {
            return None;
        }
        let mask = &mut mask[..got as usize];
        keep_first(mask, renderer.visible_cpus(pid).len().max(1));
        if !listener.id_valid(call.id) {
            return None;
        }
        write_at(&memory, mask, address)?;
        Some(Reply::Value(got))
    }

    /// The caller's memory, opened before the notification is checked still valid (so it is the
    /// caller's, not a process that took its pid).
    fn open_memory(&self, pid: u32) -> Option<OwnedFd> {
        let path = self.proc_root.join(format!("{pid}/mem"));
        rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .inspect_err(|e| log::debug!("cannot open {}: {e}", path.display()))
        .ok()
    }

    /// One step of the load averages (every [`LOAD_PERIOD`]).
    fn sample(&self) {
        if let Some(renderer) = &self.renderer {
            renderer.sample_loads();
        }
    }
}

/// Clears every set bit of `mask` after the first `keep`.
fn keep_first(mask: &mut [u8], keep: usize) {
    let mut seen = 0;
    for byte in mask.iter_mut() {
        for bit in 0..8 {
            if *byte & (1 << bit) != 0 {
                if seen >= keep {
                    *byte &= !(1 << bit);
                }
                seen += 1;
            }
        }
    }
}

/// Writes all of `bytes` at `address` of the process whose memory `memory` is; `None` when it cannot
/// (a bad address: the real call then gives the caller its EFAULT).
fn write_at(memory: &OwnedFd, bytes: &[u8], address: u64) -> Option<()> {
    match rustix::io::pwrite(memory, bytes, address) {
        Ok(written) if written == bytes.len() => Some(()),
        _ => None,
    }
}

/// What the kernel is told a call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The call returns this (the caller's memory holds the answer).
    Value(i64),
    /// The kernel runs the real call.
    Continue,
}

/// A seccomp listener fd.
pub struct Listener(OwnedFd);

impl Listener {
    pub fn new(fd: OwnedFd) -> Listener {
        Listener(fd)
    }

    /// The next notification; `None` when the caller went away before it could be received.
    fn receive(&self) -> io::Result<Option<libc::seccomp_notif>> {
        loop {
            // SAFETY: the kernel requires a zeroed struct and fills it.
            let mut call: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: SECCOMP_IOCTL_NOTIF_RECV writes one seccomp_notif into `call`.
            let rc = unsafe {
                libc::ioctl(
                    self.0.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_RECV,
                    &mut call,
                )
            };
            if rc == 0 {
                return Ok(Some(call));
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOENT) => return Ok(None),
                _ => return Err(error),
            }
        }
    }

    /// Whether notification `id` is still pending (its caller still waits in the call).
    fn id_valid(&self, id: u64) -> bool {
        let mut id = id;
        // SAFETY: SECCOMP_IOCTL_NOTIF_ID_VALID reads one u64.
        unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                &mut id,
            ) == 0
        }
    }

    /// Tells the kernel what call `id` returns. A caller gone meanwhile (ENOENT) is no error.
    fn send(&self, id: u64, reply: Reply) -> io::Result<()> {
        let mut response = libc::seccomp_notif_resp {
            id,
            val: 0,
            error: 0,
            flags: 0,
        };
        match reply {
            Reply::Value(value) => response.val = value,
            Reply::Continue => response.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        }
        loop {
            // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads one seccomp_notif_resp.
            let rc = unsafe {
                libc::ioctl(
                    self.0.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_SEND,
                    &mut response,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOENT) => return Ok(()),
                _ => return Err(error),
            }
        }
    }
}

/// Answers `listener`'s calls until no process uses its filter any more (the container ended).
/// Only an error of the listener itself ends it early; a call that cannot be answered gets the
/// kernel's answer.
pub fn serve(listener: &Listener, answers: &Answers) -> io::Result<()> {
    let mut next_sample = Instant::now() + LOAD_PERIOD;
    loop {
        let wait = next_sample.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd: listener.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd of ours.
        let rc = unsafe { libc::poll(&mut poll, 1, wait.as_millis().max(1) as libc::c_int) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(error);
        }
        if Instant::now() >= next_sample {
            answers.sample();
            next_sample = Instant::now() + LOAD_PERIOD;
        }
        if poll.revents & libc::POLLIN != 0 {
            if let Some(call) = listener.receive()? {
                let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    answers.answer(listener, &call)
                }))
                .unwrap_or(Reply::Continue);
                listener.send(call.id, reply)?;
            }
        } else if poll.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Ok(());
        }
    }
}

/// Installs, on the calling thread, a filter that hands sysinfo and sched_getaffinity to a new
/// listener and lets every other call through (x86_64 only; other ABIs are left alone, the
/// container's own filter decides about them). no_new_privs must be set. The listener fd
/// (close-on-exec).
pub fn install_listener_filter() -> io::Result<OwnedFd> {
    let program = crate::launcher::seccomp::notify_program(&CALLS.map(|c| c as u32));
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel copies the filter.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: seccomp(2) returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::keep_first;

    #[test]
    fn a_mask_keeps_its_first_cpus() {
        let mut mask = [0b1010_1100u8, 0b0000_0001, 0, 0, 0, 0, 0, 0];
        keep_first(&mut mask, 2);
        assert_eq!(mask, [0b0000_1100, 0, 0, 0, 0, 0, 0, 0]);
        let mut mask = [0b0000_0011u8, 0, 0, 0, 0, 0, 0, 0];
        keep_first(&mut mask, 4);
        assert_eq!(mask[0], 0b11);
        let mut mask = [0xffu8; 8];
        keep_first(&mut mask, 9);
        assert_eq!(mask, [0xff, 1, 0, 0, 0, 0, 0, 0]);
    }
}
