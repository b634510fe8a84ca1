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

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::cgroup::CgroupLayout;
use crate::daemon::thread_cpu_time;
use crate::files::Content;
use crate::host::HostRoots;
use crate::render::{Options, Renderer};
use crate::view::loadavg::LOAD_PERIOD;
use crate::view::sysinfo::Sysinfo;

/// `SECCOMP_RET_USER_NOTIF`: the filter's action that hands a call to the listener.
pub const RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`.
pub const FLAG_NEW_LISTENER: u32 = 1 << 3;
/// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`.
const FLAG_WAIT_KILLABLE_RECV: u32 = 1 << 5;

/// The calls answered here.
pub const CALLS: [libc::c_long; 2] = [libc::SYS_sysinfo, libc::SYS_sched_getaffinity];

/// The most of a caller's affinity buffer filled (8192 CPUs; the kernel copies only its mask's size).
const MAX_MASK_BYTES: usize = 1024;
/// `AUDIT_ARCH_X86_64`: the ABI whose numbers the answers are for.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// The most of one core the answers to one container may take, measured on the answering thread's
/// own CPU clock. Answers cost tens of microseconds of a process outside the container's cgroup, so a
/// container calling sysinfo in a loop from many threads would otherwise have a core of the host's
/// for free; past this share its calls wait (it slows itself, not the host). About 1,800 answers a
/// second; programs call these once at start or once per `free`.
pub const CPU_SHARE: f64 = 0.1;
/// CPU time answers may take at once before [`CPU_SHARE`] applies.
const CPU_BURST: Duration = Duration::from_millis(50);

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
    /// The most of one core answering may take (see [`CPU_SHARE`]).
    cpu_share: f64,
}

impl Answers {
    /// Answers rendered from this host's /proc, /sys and cgroups.
    pub fn new(calls: Calls) -> Answers {
        let roots = HostRoots::default();
        let renderer = CgroupLayout::detect(&roots.proc)
            .and_then(|layout| Renderer::new(roots, layout, Options::default()))
            .inspect_err(|e| {
                log::warn!("cannot read this host's cgroups, sysinfo and sched_getaffinity stay the host's: {e}")
            })
            .ok();
        Answers {
            renderer,
            calls,
            cpu_share: CPU_SHARE,
        }
    }

    /// The same answers with no CPU budget (benchmarks measure what one answer costs).
    pub fn unlimited(mut self) -> Answers {
        self.cpu_share = f64::INFINITY;
        self
    }

    /// The answer to one notified call (the caller's memory written where it says so).
    fn answer(&self, listener: &Listener, call: &libc::seccomp_notif) -> Reply {
        let Some(renderer) = &self.renderer else {
            return Reply::Continue;
        };
        // A listener runc hands us may carry calls of another ABI under the same numbers.
        if call.data.arch != AUDIT_ARCH_X86_64 {
            return Reply::Continue;
        }
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
        let memory = CallerMemory::open(&renderer.host().roots().proc, pid)?;
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
        // The memory opened and the files read are the caller's only if it is still waiting in
        // this call (its pid was not reused meanwhile).
        if !listener.id_valid(call.id) {
            return None;
        }
        memory.write(&info.to_bytes(), call.data.args[0])?;
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
        // The kernel's types: `pid_t pid, unsigned int len`.
        let (target, len) = (target as i32, len as u32 as usize);
        // The kernel's errors stay the kernel's: a negative pid, a length not in whole longs, and one
        // whose bit count overflows 32 bits (the kernel's `len * 8` wraps). A length too short for
        // the kernel's CPUs fails the real call below, made with the caller's length or, past 8192
        // CPUs' worth (busybox passes 8192 bytes), with that: the kernel copies only its mask's size.
        if target < 0
            || len == 0
            || len % std::mem::size_of::<libc::c_ulong>() != 0
            || len >= 1 << 29
        {
            return None;
        }
        // Only the caller's own mask: pid 0, its thread id, or its process id (the main thread's
        // mask, as the kernel reads it), in its pid namespace's numbers. Another task's is the
        // kernel's.
        let whose = if target == 0 {
            pid
        } else {
            let ids = renderer.registry().pid_namespaces.task_ids(pid).ok()?;
            if target as u32 == ids.innermost_tid {
                pid
            } else if target as u32 == ids.innermost_tgid {
                ids.tgid
            } else {
                return None;
            }
        };
        renderer.container_key(pid)?;
        let memory = CallerMemory::open(&renderer.host().roots().proc, pid)?;
        let mut mask = vec![0u8; len.min(MAX_MASK_BYTES)];
        // SAFETY: the kernel writes at most `mask.len()` bytes into our buffer.
        let got = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                whose as libc::pid_t,
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
        memory.write(mask, address)?;
        Some(Reply::Value(got))
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

/// The caller's memory and its map, opened before the notification is checked still valid (so they
/// are the caller's, not a process's that took its pid: each open fd holds the caller's address
/// space).
struct CallerMemory {
    memory: OwnedFd,
    maps: OwnedFd,
}

impl CallerMemory {
    fn open(proc_root: &std::path::Path, pid: u32) -> Option<CallerMemory> {
        let open = |file: &str, flags: rustix::fs::OFlags| {
            let path = proc_root.join(format!("{pid}/{file}"));
            rustix::fs::open(
                &path,
                flags | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .inspect_err(|e| log::debug!("cannot open {}: {e}", path.display()))
            .ok()
        };
        Some(CallerMemory {
            memory: open("mem", rustix::fs::OFlags::RDWR)?,
            maps: open("maps", rustix::fs::OFlags::RDONLY)?,
        })
    }

    /// Writes all of `bytes` at `address`; `None` when it cannot, or when the range is not wholly
    /// in writable mappings: a write through /proc/PID/mem passes page protections (FOLL_FORCE), the
    /// kernel's copy to the caller does not, so read-only and inaccessible memory get the real call
    /// (and its EFAULT).
    fn write(&self, bytes: &[u8], address: u64) -> Option<()> {
        let end = address.checked_add(bytes.len() as u64)?;
        if !self.writable(address, end) {
            return None;
        }
        match rustix::io::pwrite(&self.memory, bytes, address) {
            Ok(written) if written == bytes.len() => Some(()),
            _ => None,
        }
    }

    /// Whether `[start, end)` lies wholly in writable mappings: asked of the kernel mapping by mapping
    /// (PROCMAP_QUERY, Linux 6.11+), else read from the whole map.
    fn writable(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        while at < end {
            match query_mapping(&self.maps, at) {
                Ok(Some((mapping_end, writable))) if writable => at = mapping_end,
                Ok(_) => return false,
                Err(_) => {
                    let mut maps = String::new();
                    let mut file = std::fs::File::from(match self.maps.try_clone() {
                        Ok(fd) => fd,
                        Err(_) => return false,
                    });
                    use std::io::Read;
                    return file.read_to_string(&mut maps).is_ok()
                        && covers(&writable_ranges(&maps), start, end);
                }
            }
        }
        true
    }
}

/// The mapping of the map file `maps` that covers `address`: its end and whether it is writable;
/// `None` where nothing is mapped. Errors where the kernel has no PROCMAP_QUERY.
fn query_mapping(maps: &OwnedFd, address: u64) -> io::Result<Option<(u64, bool)>> {
    /// `struct procmap_query` (include/uapi/linux/fs.h).
    #[repr(C)]
    #[derive(Default)]
    struct ProcmapQuery {
        size: u64,
        query_flags: u64,
        query_addr: u64,
        vma_start: u64,
        vma_end: u64,
        vma_flags: u64,
        vma_page_size: u64,
        vma_offset: u64,
        inode: u64,
        dev_major: u32,
        dev_minor: u32,
        vma_name_size: u32,
        build_id_size: u32,
        vma_name_addr: u64,
        build_id_addr: u64,
    }
    /// `_IOWR('f', 17, struct procmap_query)`.
    const PROCMAP_QUERY: libc::c_ulong = 0xc000_0000
        | ((std::mem::size_of::<ProcmapQuery>() as libc::c_ulong) << 16)
        | (0x66 << 8)
        | 17;
    const VMA_WRITABLE: u64 = 0x02;
    let mut query = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_addr: address,
        ..Default::default()
    };
    // SAFETY: PROCMAP_QUERY reads and fills one struct procmap_query of the size it names; the
    // name and build id are not asked for.
    let rc = unsafe { libc::ioctl(maps.as_raw_fd(), PROCMAP_QUERY, &mut query) };
    if rc == 0 {
        return Ok(Some((query.vma_end, query.vma_flags & VMA_WRITABLE != 0)));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(error),
    }
}

/// The writable mappings of /proc/PID/maps (`start-end rw-p ...`), in order.
fn writable_ranges(maps: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            (perms.as_bytes().get(1) == Some(&b'w')).then_some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

/// Whether `[start, end)` lies wholly within `ranges` (adjacent mappings join).
fn covers(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let mut at = start;
    for &(from, to) in ranges {
        if from <= at && at < to {
            at = to;
            if at >= end {
                return true;
            }
        }
    }
    start == end
}

/// What a listener has for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// A call to take.
    Call,
    /// Nothing yet.
    Nothing,
    /// No process uses the filter any more: no call will come.
    HungUp,
}

/// The most calls taken and not yet answered.
const MAX_TAKEN: usize = 4096;

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

    /// Asks the kernel to switch from a caller straight to this listener's thread
    /// (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6+): the call is taken sooner (a shorter window
    /// for a signal to interrupt it) and answered faster. Older kernels: as before.
    fn wake_synchronously(&self) {
        const SYNC_WAKE_UP: libc::c_ulong = 1;
        // SAFETY: SECCOMP_IOCTL_NOTIF_SET_FLAGS takes the flags as its argument's value.
        let rc = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                SYNC_WAKE_UP,
            )
        };
        if rc != 0 {
            log::debug!(
                "no synchronous wake-ups for this listener: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Waits at most `timeout` for a call to take (`take`), or only for the hang-up.
    fn poll(&self, timeout: Duration, take: bool) -> io::Result<Readiness> {
        let mut poll = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: if take { libc::POLLIN } else { 0 },
            revents: 0,
        };
        // Rounded up: a budget wait of 0.3 ms must not spin.
        let millis = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: poll(2) on one pollfd of ours.
        let rc = unsafe { libc::poll(&mut poll, 1, millis) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            return if error.raw_os_error() == Some(libc::EINTR) {
                Ok(Readiness::Nothing)
            } else {
                Err(error)
            };
        }
        // POLLERR is the kernel's "interrupted while looking" (a signal pending on this thread), not
        // the end of the listener.
        if poll.revents & libc::POLLNVAL != 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        Ok(if poll.revents & libc::POLLIN != 0 {
            Readiness::Call
        } else if poll.revents & libc::POLLHUP != 0 {
            Readiness::HungUp
        } else {
            Readiness::Nothing
        })
    }

    /// One of the listener's ioctls with its argument, again when a signal interrupted it; `Ok(false)`
    /// when the call it is about is gone (ENOENT: its caller went away).
    fn ioctl<T>(&self, request: libc::Ioctl, argument: &mut T) -> io::Result<bool> {
        loop {
            // SAFETY: each request of ours reads or writes one `T`, the type it is defined with.
            let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request, argument as *mut T) };
            if rc >= 0 {
                return Ok(true);
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOENT) => return Ok(false),
                _ => return Err(error),
            }
        }
    }

    /// The next notification; `None` when the caller went away before it could be received.
    fn receive(&self) -> io::Result<Option<libc::seccomp_notif>> {
        // SAFETY: the kernel requires a zeroed struct and fills it.
        let mut call: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        Ok(self
            .ioctl(libc::SECCOMP_IOCTL_NOTIF_RECV, &mut call)?
            .then_some(call))
    }

    /// Whether notification `id` is still pending (its caller still waits in the call).
    fn id_valid(&self, id: u64) -> bool {
        let mut id = id;
        self.ioctl(libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id)
            .unwrap_or(false)
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
        self.ioctl(libc::SECCOMP_IOCTL_NOTIF_SEND, &mut response)
            .map(drop)
    }
}

/// Answers `listener`'s calls until no process uses its filter any more (the container ended).
/// Only an error of the listener itself ends it early; a call that cannot be answered gets the
/// kernel's answer.
pub fn serve(listener: &Listener, answers: &Answers) -> io::Result<()> {
    // Calls taken from the kernel and not answered yet. A call is taken as soon as it comes, even
    // while answers wait for the CPU budget: until it is taken, any signal interrupts the caller's
    // wait (EINTR, which the real call never gives, to a handler without SA_RESTART); once taken,
    // only a fatal one does (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV).
    let mut taken: VecDeque<libc::seccomp_notif> = VecDeque::new();
    let served = serve_taking(listener, answers, &mut taken);
    if served.is_err() {
        // The listener is about to close, which would fail these callers with ENOSYS: the real
        // call instead, where the kernel still takes an answer.
        for call in taken {
            let _ = listener.send(call.id, Reply::Continue);
        }
    }
    served
}

fn serve_taking(
    listener: &Listener,
    answers: &Answers,
    taken: &mut VecDeque<libc::seccomp_notif>,
) -> io::Result<()> {
    let mut next_sample = Instant::now() + LOAD_PERIOD;
    let mut budget = CpuBudget::new(answers.cpu_share, CPU_BURST);
    listener.wake_synchronously();
    loop {
        let now = Instant::now();
        let mut timeout = next_sample.saturating_duration_since(now);
        if !taken.is_empty() {
            timeout = timeout.min(budget.wait(now));
        }
        // With the queue full, wait for the budget (or the hang-up) only: calls still coming
        // would wake the poll at once and spin.
        match listener.poll(timeout, taken.len() < MAX_TAKEN)? {
            Readiness::Call => {
                // Every call waiting, one per caller thread.
                while taken.len() < MAX_TAKEN {
                    if let Some(call) = listener.receive()? {
                        taken.push_back(call);
                    }
                    if listener.poll(Duration::ZERO, true)? != Readiness::Call {
                        break;
                    }
                }
            }
            // No process uses the filter any more, so none waits for an answer either.
            Readiness::HungUp => return Ok(()),
            Readiness::Nothing => {}
        }
        if Instant::now() >= next_sample {
            answers.sample();
            next_sample = Instant::now() + LOAD_PERIOD;
        }
        if !taken.is_empty() && budget.wait(Instant::now()).is_zero() {
            let call = taken.pop_front().expect("not empty");
            let cpu = thread_cpu_time();
            let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                answers.answer(listener, &call)
            }))
            .unwrap_or(Reply::Continue);
            listener.send(call.id, reply)?;
            budget.spend(thread_cpu_time().saturating_sub(cpu), Instant::now());
        }
    }
}

/// A leaky bucket of CPU time: what answers spent drains at `share` of wall time; past `burst`,
/// the next answer waits until it is back under.
struct CpuBudget {
    share: f64,
    burst: f64,
    /// Seconds of CPU not yet drained.
    level: f64,
    at: Instant,
}

impl CpuBudget {
    fn new(share: f64, burst: Duration) -> CpuBudget {
        CpuBudget {
            share,
            burst: burst.as_secs_f64(),
            level: 0.0,
            at: Instant::now(),
        }
    }

    fn drain(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level - elapsed * self.share).max(0.0);
        self.at = now;
    }

    fn spend(&mut self, cpu: Duration, now: Instant) {
        self.drain(now);
        self.level += cpu.as_secs_f64();
    }

    /// How long the next answer waits.
    fn wait(&mut self, now: Instant) -> Duration {
        self.drain(now);
        let over = self.level - self.burst;
        if over > 0.0 && self.share.is_finite() {
            Duration::from_secs_f64(over / self.share)
        } else {
            Duration::ZERO
        }
    }
}

/// Installs, on the calling thread, a filter that hands sysinfo and sched_getaffinity to a new
/// listener and lets every other call through (x86_64 only; other ABIs are left alone, the
/// container's own filter decides about them). no_new_privs must be set. The listener fd
/// (close-on-exec).
pub fn install_listener_filter() -> io::Result<OwnedFd> {
    let program = crate::launcher::seccomp::notify_program(&CALLS.map(|c| c as u32));
    let install = |flags| crate::launcher::seccomp::set_mode_filter(&program, flags);
    // Once the listener has taken a call, only a fatal signal ends the caller's wait (Linux 5.19+):
    // a signal handler without SA_RESTART would otherwise see EINTR, which the real call never
    // gives, and a timer signal could restart the call without end. Older kernels: without.
    let fd = match install(FLAG_NEW_LISTENER | FLAG_WAIT_KILLABLE_RECV) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => install(FLAG_NEW_LISTENER)?,
        other => other?,
    };
    // SAFETY: seccomp(2) returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writable_mappings_are_written() {
        let maps = "00400000-00401000 r-xp 00000000 08:01 1 /bin/x\n\
                    00601000-00602000 rw-p 00001000 08:01 1 /bin/x\n\
                    00602000-00604000 rw-p 00000000 00:00 0 [heap]\n\
                    7ffd0000-7ffd1000 ---p 00000000 00:00 0\n\
                    7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]\n";
        let ranges = writable_ranges(maps);
        assert_eq!(ranges.len(), 3);
        // Within one mapping, across two adjacent ones; not code, not a guard page, not past the end.
        assert!(covers(&ranges, 0x601010, 0x601080));
        assert!(covers(&ranges, 0x601fc0, 0x602030));
        assert!(!covers(&ranges, 0x400100, 0x400170));
        assert!(!covers(&ranges, 0x7ffd0ff0, 0x7ffd1010));
        assert!(!covers(&ranges, 0x603fc0, 0x604030));
        assert!(!covers(&ranges, 0, 0x70));
    }

    #[test]
    fn writable_memory_is_told_from_code_and_holes() {
        let memory = CallerMemory::open(std::path::Path::new("/proc"), std::process::id()).unwrap();
        let on_stack = [0u8; 64];
        let stack = on_stack.as_ptr() as u64;
        let code = writable_memory_is_told_from_code_and_holes as *const () as u64;
        assert!(memory.writable(stack, stack + 64));
        assert!(!memory.writable(code, code + 16));
        assert!(!memory.writable(8, 24));
        // Where the kernel answers PROCMAP_QUERY (6.11+), it agrees with the map's text.
        if let Ok(found) = query_mapping(&memory.maps, stack) {
            assert!(found.is_some_and(|(end, writable)| writable && end > stack));
            assert!(matches!(
                query_mapping(&memory.maps, code),
                Ok(Some((_, false)))
            ));
            assert!(matches!(query_mapping(&memory.maps, 8), Ok(None)));
        }
    }

    #[test]
    fn the_cpu_budget_holds_answers_to_their_share() {
        let start = Instant::now();
        let mut budget = CpuBudget::new(0.1, Duration::from_millis(50));
        // Within the burst: no wait.
        budget.spend(Duration::from_millis(40), start);
        assert_eq!(budget.wait(start), Duration::ZERO);
        // 30 ms over the burst at 10%: 300 ms of wall time to drain it.
        budget.spend(Duration::from_millis(40), start);
        let wait = budget.wait(start);
        assert!((wait.as_secs_f64() - 0.3).abs() < 1e-6, "{wait:?}");
        // A second later it has drained.
        assert_eq!(budget.wait(start + Duration::from_secs(1)), Duration::ZERO);
        // Unlimited: never.
        let mut free = CpuBudget::new(f64::INFINITY, Duration::ZERO);
        free.spend(Duration::from_secs(5), start);
        assert_eq!(free.wait(start), Duration::ZERO);
    }

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
