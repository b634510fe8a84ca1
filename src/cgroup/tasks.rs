//! How many of a cgroup's tasks (threads, its whole subtree) run and wait, for the per-container load
//! average and /proc/stat's `procs_running` / `procs_blocked`.
//!
//! Two sources, the cheapest first:
//! - v1: taskstats' `CGROUPSTATS_CMD_GET` over generic netlink counts one cgroup's tasks by state in
//!   one call, in the kernel (no per-task file). It needs a v1 cgroup directory fd; where the daemon's
//!   network namespace lacks the family, the socket is made in the host's.
//! - Anywhere else (v2, or taskstats unavailable): the cgroup's `cgroup.threads` (v1: `tasks`) and each
//!   task's state letter from /proc/TID/stat.
//!
//! Both count the cgroup and every cgroup below it. A task is counted as the kernel's load average
//! counts it: running (`R`, including throttled) or uninterruptible (`D`, but not an idle kernel
//! thread's `I`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use parking_lot::Mutex;

use super::{CgroupDir, CgroupId, Version};
use crate::error::{Error, Result};

/// Cgroups below a container visited at most per count: a container cannot make one count walk an
/// unbounded tree (each level is a mkdir away for a container that may write its cgroup).
pub const MAX_CGROUPS_PER_COUNT: usize = 256;
/// Tasks whose state is read at most per count on the per-task path.
pub const MAX_TASKS_PER_COUNT: usize = 16384;

/// A cgroup subtree's tasks by state, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Runnable: running or waiting for a CPU (including throttled by CFS quota).
    pub running: u32,
    /// In uninterruptible sleep (`D`), which the load average counts with the running ones.
    pub uninterruptible: u32,
    /// All tasks (threads).
    pub total: u32,
    /// The highest thread ids among them, highest first (0: none), when the lists were read: the
    /// newest tasks, for loadavg's last field.
    pub newest: [u32; NEWEST_KEPT],
}

/// How many of the newest thread ids a count keeps (a few, in case the newest have ended).
pub const NEWEST_KEPT: usize = 4;

impl TaskCounts {
    /// What the kernel's load average adds up: running plus uninterruptible.
    pub fn active(&self) -> u32 {
        self.running.saturating_add(self.uninterruptible)
    }

    fn add(&mut self, other: TaskCounts) {
        self.running = self.running.saturating_add(other.running);
        self.uninterruptible = self.uninterruptible.saturating_add(other.uninterruptible);
        self.total = self.total.saturating_add(other.total);
        for tid in other.newest {
            self.note_tid(tid);
        }
    }

    /// Keeps `tid` among the newest if it is higher than one of them.
    fn note_tid(&mut self, tid: u32) {
        if tid == 0 || self.newest.contains(&tid) {
            return;
        }
        if let Some(lowest) = self.newest.iter_mut().min()
            && tid > *lowest
        {
            *lowest = tid;
            self.newest.sort_unstable_by(|a, b| b.cmp(a));
        }
    }
}

/// Counts tasks by state; holds the taskstats socket when the kernel offers one.
#[derive(Debug)]
pub struct TaskCounter {
    /// /proc, held open.
    proc_dir: Option<OwnedFd>,
    taskstats: Option<Mutex<Taskstats>>,
}

impl TaskCounter {
    /// A counter reading tasks below `proc_root`; opens the taskstats socket if the kernel has one.
    /// `VPROCD_TASK_COUNT=per-task` in the environment counts task by task everywhere, as on cgroup v2
    /// (benches/loadavg-sampler compares the two).
    pub fn new(proc_root: &Path) -> Self {
        if std::env::var_os("VPROCD_TASK_COUNT").is_some_and(|v| v == "per-task") {
            log::info!("VPROCD_TASK_COUNT=per-task: load is counted task by task");
            return Self::per_task(proc_root);
        }
        let taskstats = match Taskstats::open_in_host_network(proc_root) {
            Ok(t) => Some(Mutex::new(t)),
            Err(e) => {
                log::info!(
                    "taskstats is not available ({e}); cgroup v1 load is counted task by task"
                );
                None
            }
        };
        TaskCounter {
            proc_dir: open_proc_dir(proc_root),
            taskstats,
        }
    }

    /// A counter that never uses taskstats (benchmarks compare the two).
    pub fn per_task(proc_root: &Path) -> Self {
        TaskCounter {
            proc_dir: open_proc_dir(proc_root),
            taskstats: None,
        }
    }

    /// The tasks of `cgroup` and the cgroups below it, if the directory is still the cgroup `id`
    /// (a removed cgroup whose path was reused is another container).
    /// With `listed`, the thread lists are read even where taskstats answers, for an exact total
    /// (taskstats leaves tasks in some states out of its total). `reader`, a task that waits for this
    /// count, is never counted as running: it is running only on its way to sleep. Per task it is
    /// skipped; taskstats counts whoever runs during the call, so the call waits (2 ms at most) for
    /// the reader to sleep, and a reader still running after it is taken off again.
    pub fn count(
        &self,
        cgroup: &CgroupDir,
        id: CgroupId,
        listed: bool,
        reader: Option<u32>,
    ) -> Result<TaskCounts> {
        // One stat: the identity, and the link count, which on cgroupfs (kernfs) is 2 plus the number
        // of child cgroups, so a leaf is never listed.
        let meta = std::fs::metadata(&cgroup.path).map_err(|e| Error::io(&cgroup.path, e))?;
        if meta.dev() != id.dev || meta.ino() != id.ino {
            return Err(Error::io(
                &cgroup.path,
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        let taskstats = match (&self.taskstats, cgroup.version) {
            (Some(t), Version::V1) => Some(t),
            _ => None,
        };
        if let (Some(_), Some(reader)) = (taskstats, reader) {
            self.wait_until_asleep(reader, std::time::Duration::from_millis(2));
        }
        // A frozen container (`docker pause` on v2) adds nothing to the load, as in the kernel's count:
        // a task caught runnable while the freeze settles must not count. (The v1 freezer is not
        // looked at: its frozen tasks show in D and count, as the README says.)
        let frozen = cgroup.version == Version::V2
            && std::fs::read_to_string(cgroup.path.join("cgroup.events"))
                .is_ok_and(|events| events.lines().any(|l| l.trim() == "frozen 1"));
        let mut counts = TaskCounts::default();
        let mut by_taskstats = false;
        let mut pending = vec![(cgroup.path.clone(), meta.nlink())];
        let mut visited = 0;
        while let Some((path, links)) = pending.pop() {
            visited += 1;
            if visited > MAX_CGROUPS_PER_COUNT {
                break;
            }
            let level = match taskstats {
                Some(taskstats) => {
                    let fd = match open_dir(&path) {
                        Ok(fd) => fd,
                        // Removed since it was listed.
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(e),
                    };
                    // A directory taskstats does not take (not a v1 cgroupfs directory) is counted
                    // task by task.
                    let stats = taskstats.lock().cgroup_stats(&fd);
                    match stats {
                        Ok(mut level) => {
                            by_taskstats = true;
                            if listed {
                                let listed = thread_list(&path, cgroup.version)?;
                                level.total = listed.total.max(level.active());
                                level.newest = listed.newest;
                            }
                            level
                        }
                        Err(e) => {
                            log::debug!("taskstats refused {}: {e}", path.display());
                            self.count_tasks_of(&path, cgroup.version, &counts, reader)?
                        }
                    }
                }
                None => self.count_tasks_of(&path, cgroup.version, &counts, reader)?,
            };
            let level = if frozen {
                TaskCounts {
                    running: 0,
                    uninterruptible: 0,
                    ..level
                }
            } else {
                level
            };
            counts.add(level);
            if links == 2 {
                continue;
            }
            match std::fs::read_dir(&path) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        // The directory's type comes with the entry; only child cgroups are stat'ed,
                        // and no more are kept than the walk may visit.
                        if visited + pending.len() >= MAX_CGROUPS_PER_COUNT {
                            break;
                        }
                        if entry.file_type().is_ok_and(|t| t.is_dir())
                            && let Ok(meta) = entry.metadata()
                        {
                            pending.push((entry.path(), meta.nlink()));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        if by_taskstats
            && let Some(reader) = reader
            && task_state(self.proc_dir.as_ref(), reader) == Some(b'R')
        {
            counts.running = counts.running.saturating_sub(1);
        }
        Ok(counts)
    }

    /// Waits (at most `limit`) until task `tid` is no longer running: a reader that asked the daemon
    /// something is about to sleep until the answer.
    fn wait_until_asleep(&self, tid: u32, limit: std::time::Duration) {
        let started = std::time::Instant::now();
        while task_state(self.proc_dir.as_ref(), tid) == Some(b'R') {
            if started.elapsed() >= limit {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// The tasks directly in the cgroup at `path`, from its thread list and each thread's state.
    fn count_tasks_of(
        &self,
        path: &Path,
        version: Version,
        so_far: &TaskCounts,
        reader: Option<u32>,
    ) -> Result<TaskCounts> {
        let text = read_thread_list(path, version)?;
        let mut counts = TaskCounts::default();
        for tid in thread_ids(&text) {
            if (so_far.total + counts.total) as usize >= MAX_TASKS_PER_COUNT {
                break;
            }
            counts.total += 1;
            counts.note_tid(tid);
            if Some(tid) == reader {
                continue;
            }
            match task_state(self.proc_dir.as_ref(), tid) {
                Some(b'R') => counts.running += 1,
                Some(b'D') => counts.uninterruptible += 1,
                _ => {}
            }
        }
        Ok(counts)
    }
}

/// The threads the cgroup at `path` itself lists: how many, and the newest (no states).
fn thread_list(path: &Path, version: Version) -> Result<TaskCounts> {
    let text = read_thread_list(path, version)?;
    let mut counts = TaskCounts::default();
    for tid in thread_ids(&text) {
        counts.total = counts.total.saturating_add(1);
        counts.note_tid(tid);
    }
    Ok(counts)
}

/// The cgroup at `path`'s own thread list (v1 `tasks`, v2 `cgroup.threads`, in the reader's pid
/// namespace); empty for a cgroup removed meanwhile.
fn read_thread_list(path: &Path, version: Version) -> Result<String> {
    let list = path.join(match version {
        Version::V1 => "tasks",
        Version::V2 => "cgroup.threads",
    });
    match std::fs::read_to_string(&list) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io(&list, e)),
    }
}

/// The thread ids of a thread list.
fn thread_ids(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.lines().filter_map(|l| l.trim().parse().ok())
}

/// The state letter of task `tid` (the field after the command's closing parenthesis in
/// /proc/TID/stat); `None` when the task is gone. Three system calls on a held /proc fd and no
/// allocation: the v2 sampler makes one call per task of every container it samples.
fn task_state(proc_dir: Option<&OwnedFd>, tid: u32) -> Option<u8> {
    let proc_dir = proc_dir?;
    // "4294967295/stat\0" at most.
    let mut path = [0u8; 16];
    let mut buffer = [0u8; 20];
    let digits = crate::view::decimal(u64::from(tid), &mut buffer);
    path[..digits.len()].copy_from_slice(digits);
    path[digits.len()..digits.len() + 5].copy_from_slice(b"/stat");
    // SAFETY: path is NUL-terminated (the array's rest is zero); the fd is closed below.
    let fd = unsafe {
        libc::openat(
            proc_dir.as_raw_fd(),
            path.as_ptr().cast(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // The state is within the first 64 bytes: pid, the command (at most 16 bytes, in parentheses).
    let mut buffer = [0u8; 96];
    // SAFETY: the buffer is valid for its length; fd is ours.
    let read = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    let text = buffer.get(..usize::try_from(read).ok()?)?;
    let close = text.iter().rposition(|&b| b == b')')?;
    text.get(close + 2).copied()
}

/// /proc (or a fixture) as a directory fd, for [`task_state`].
fn open_proc_dir(proc_root: &Path) -> Option<OwnedFd> {
    open_dir(proc_root)
        .inspect_err(|e| {
            log::warn!(
                "cannot open {}: {e}; task states are unknown",
                proc_root.display()
            )
        })
        .ok()
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::io(path, io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: a valid C string; the fd returned is owned below.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::io(path, io::Error::last_os_error()));
    }
    // SAFETY: fd was just opened and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A generic netlink socket speaking to the kernel's taskstats family.
#[derive(Debug)]
struct Taskstats {
    socket: OwnedFd,
    family: u16,
    sequence: u32,
}

const NETLINK_GENERIC: libc::c_int = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CGROUPSTATS_CMD_GET: u8 = 4;
const CGROUPSTATS_CMD_ATTR_FD: u16 = 1;
const CGROUPSTATS_TYPE_CGROUP_STATS: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

impl Taskstats {
    /// The taskstats family exists only in the host's (initial) network namespace. A daemon in a pod
    /// without hostNetwork makes its socket from a thread that joined the namespace of `<proc>/1`
    /// (the socket keeps its namespace; the thread ends).
    fn open_in_host_network(proc_root: &Path) -> io::Result<Self> {
        let here = Self::open();
        let host_ns = proc_root.join("1/ns/net");
        let same = std::fs::read_link(&host_ns).ok()
            == std::fs::read_link("/proc/thread-self/ns/net").ok();
        match here {
            Ok(taskstats) => Ok(taskstats),
            Err(e) if same => Err(e),
            Err(_) => std::thread::spawn(move || {
                let ns = std::fs::File::open(&host_ns)?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                Self::open()
            })
            .join()
            .map_err(|_| {
                io::Error::other("the thread joining the host's network namespace failed")
            })?,
        }
    }

    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a valid timeval of the right size. A kernel that never answers must not hang a read.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut taskstats = Taskstats {
            socket,
            family: GENL_ID_CTRL,
            sequence: 0,
        };
        let reply = taskstats.request(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            CTRL_ATTR_FAMILY_NAME,
            b"TASKSTATS\0",
        )?;
        let id = find_attribute(&reply, CTRL_ATTR_FAMILY_ID)
            .filter(|v| v.len() >= 2)
            .map(|v| u16::from_ne_bytes([v[0], v[1]]))
            .ok_or_else(|| io::Error::other("no TASKSTATS family id in the reply"))?;
        taskstats.family = id;
        Ok(taskstats)
    }

    /// The counts of the tasks directly in the v1 cgroup whose directory is `dir`.
    fn cgroup_stats(&mut self, dir: &OwnedFd) -> io::Result<TaskCounts> {
        let fd = u32::try_from(dir.as_raw_fd()).map_err(io::Error::other)?;
        let reply = self.request(
            self.family,
            CGROUPSTATS_CMD_GET,
            CGROUPSTATS_CMD_ATTR_FD,
            &fd.to_ne_bytes(),
        )?;
        let stats = find_attribute(&reply, CGROUPSTATS_TYPE_CGROUP_STATS)
            .filter(|v| v.len() >= 40)
            .ok_or_else(|| io::Error::other("no cgroupstats in the taskstats reply"))?;
        let field = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&stats[i * 8..i * 8 + 8]);
            u32::try_from(u64::from_ne_bytes(bytes)).unwrap_or(u32::MAX)
        };
        // struct cgroupstats: nr_sleeping, nr_running, nr_stopped, nr_uninterruptible, nr_io_wait.
        let (sleeping, running, stopped, uninterruptible, io_wait) =
            (field(0), field(1), field(2), field(3), field(4));
        Ok(TaskCounts {
            running,
            // Killable sleeps (in I/O or on a lock) fall outside taskstats' exact state match and are
            // counted as I/O wait when in io_schedule; the kernel's load counts both.
            uninterruptible: uninterruptible.saturating_add(io_wait),
            // The kernel counts only these states; tasks in others (dead, traced, idle kernel
            // threads) are left out of its total too.
            total: sleeping
                .saturating_add(running)
                .saturating_add(stopped)
                .saturating_add(uninterruptible)
                .saturating_add(io_wait),
            ..TaskCounts::default()
        })
    }

    /// Sends one generic netlink request with one attribute and returns the reply's attributes.
    fn request(
        &mut self,
        family: u16,
        command: u8,
        attribute: u16,
        value: &[u8],
    ) -> io::Result<Vec<u8>> {
        self.sequence = self.sequence.wrapping_add(1);
        let attribute_len = 4 + value.len();
        let total = NLMSG_HDRLEN + GENL_HDRLEN + attribute_len.next_multiple_of(4);
        let mut message = Vec::with_capacity(total);
        message.extend_from_slice(&(total as u32).to_ne_bytes());
        message.extend_from_slice(&family.to_ne_bytes());
        message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        message.extend_from_slice(&self.sequence.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(&[command, 1, 0, 0]);
        message.extend_from_slice(&(attribute_len as u16).to_ne_bytes());
        message.extend_from_slice(&attribute.to_ne_bytes());
        message.extend_from_slice(value);
        message.resize(total, 0);
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: the message and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&address as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buffer = vec![0u8; 8192];
        loop {
            // SAFETY: the buffer is valid for its length.
            let received = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if received < 0 {
                return Err(io::Error::last_os_error());
            }
            let reply = &buffer[..received as usize];
            if reply.len() < NLMSG_HDRLEN {
                return Err(io::Error::other("short netlink reply"));
            }
            let kind = u16::from_ne_bytes([reply[4], reply[5]]);
            let sequence = u32::from_ne_bytes([reply[8], reply[9], reply[10], reply[11]]);
            if sequence != self.sequence {
                // An answer to an earlier request that timed out.
                continue;
            }
            if kind == NLMSG_ERROR {
                let code = reply
                    .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-libc::EIO);
                return Err(io::Error::from_raw_os_error(-code));
            }
            let length = (u32::from_ne_bytes([reply[0], reply[1], reply[2], reply[3]]) as usize)
                .min(reply.len());
            return Ok(reply
                .get(NLMSG_HDRLEN + GENL_HDRLEN..length)
                .unwrap_or_default()
                .to_vec());
        }
    }
}

/// The value of the first netlink attribute of type `kind` in `attributes`.
fn find_attribute(attributes: &[u8], kind: u16) -> Option<&[u8]> {
    let mut rest = attributes;
    while rest.len() >= 4 {
        let length = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let this = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if length < 4 || length > rest.len() {
            return None;
        }
        if this == kind {
            return Some(&rest[4..length]);
        }
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_found_past_padding() {
        // A 5-byte attribute (padded to 8) then a 2-byte one.
        let attributes = [
            9, 0, 2, 0, b'a', b'b', b'c', b'd', b'e', 0, 0, 0, 6, 0, 1, 0, 0x22, 0x11, 0, 0,
        ];
        assert_eq!(find_attribute(&attributes, 2), Some(&b"abcde"[..]));
        assert_eq!(find_attribute(&attributes, 1), Some(&[0x22, 0x11][..]));
        assert_eq!(find_attribute(&attributes, 3), None);
        assert_eq!(
            find_attribute(&[200, 0, 1, 0], 1),
            None,
            "length past the end"
        );
    }

    #[test]
    fn a_task_s_state_comes_after_its_command() {
        let dir = std::env::temp_dir().join(format!("vproc-task-state-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("7")).unwrap();
        std::fs::write(dir.join("7/stat"), "7 (a) b) c) D 1 7 7 0 -1").unwrap();
        let fd = open_proc_dir(&dir);
        assert_eq!(task_state(fd.as_ref(), 7), Some(b'D'));
        assert_eq!(task_state(fd.as_ref(), 8), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// This process counts as running, in its own cgroup, by both methods.
    #[test]
    fn both_methods_count_this_process() {
        let proc = Path::new("/proc");
        let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
            return;
        };
        let layout = super::super::CgroupLayout::detect(proc).unwrap();
        let cgroups = layout
            .resolve(&text, Path::new("/proc/self/cgroup"))
            .unwrap();
        let Some(dir) = cgroups.cpuacct.or(cgroups.memory) else {
            return;
        };
        let id = dir.id().unwrap();
        for (method, counter) in [
            ("fastest", TaskCounter::new(proc)),
            ("per task", TaskCounter::per_task(proc)),
        ] {
            let counts = counter.count(&dir, id, true, None).unwrap();
            assert!(counts.total >= 1, "{method:?}: {counts:?}");
            assert!(counts.running >= 1, "{method:?}: {counts:?}");
        }
    }
}
