//! Healing containers after the daemon died or restarted. A container's bind mounts of the daemon's files
//! keep pointing at the old FUSE connection, so every read fails with ENOTCONN until the container
//! restarts (the most-reported LXCFS problem). A new daemon finds those dead mounts in every mount
//! namespace and replaces each with the same file from its own mount, in place: nothing restarts.
//!
//! Two rules keep the heal safe on a busy node:
//! - A namespace is held by an fd of its `ns/mnt`, opened during the scan while a pidfd proves the pid
//!   still names the process the mountinfo came from; the heal enters that fd, never the pid again, so
//!   a pid reused in between cannot aim the heal at another process (the host's /proc).
//! - Nothing in the scanning process touches another namespace's FUSE mounts (a hung one would block it
//!   forever): each namespace is checked and healed by a forked child, killed after
//!   [`NAMESPACE_TIMEOUT`], with up to [`PARALLEL`] children at once, so one hung mount delays no other.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use rustix::fs::{Mode, OFlags};

use crate::attach::{AttachMode, Attached, ContainerRoot, attach_in};
use crate::files;
use crate::mountinfo::MountinfoLine;
use crate::pidfd::{self, is_alive};

/// How long one namespace's check and heal may take before its child is killed and the namespace
/// skipped. A healthy namespace takes a few milliseconds.
pub const NAMESPACE_TIMEOUT: Duration = Duration::from_secs(2);
/// Namespaces checked and healed at once.
pub const PARALLEL: usize = 8;

/// The FUSE source name (fsname) of the daemon serving `mountpoint`, as mountinfo shows it. It names the
/// mountpoint so that a daemon heals only the mounts of its own predecessors.
pub fn fs_name(mountpoint: &Path) -> String {
    format!("{FS_NAME_PREFIX}{}", mountpoint.display())
}

/// What every vprocd's fsname starts with.
const FS_NAME_PREFIX: &str = "vprocd:";

/// True for the fsname of a vprocd, whichever its mountpoint.
pub fn is_fs_name(source: &str) -> bool {
    source.starts_with(FS_NAME_PREFIX)
}

/// A mount namespace holding mounts of the daemon's filesystem (live or dead: which is decided inside
/// the namespace, by the child that heals it).
#[derive(Debug)]
pub struct NamespaceMounts {
    /// The process it was found through; only named in reports.
    pub pid: u32,
    /// The namespace itself (`/proc/PID/ns/mnt` opened during the scan).
    pub namespace: OwnedFd,
    /// The process's root (`/proc/PID/root`), which its mountinfo's mount points are relative to.
    pub root: OwnedFd,
    /// (file below the daemon's mountpoint, where it is mounted relative to the process's root), both
    /// without a leading `/`: (`proc/meminfo`, `proc/meminfo`).
    pub mounts: Vec<(String, String)>,
}

/// Mounts of one namespace looked at, at most: a namespace with more is healed for these.
pub const MAX_MOUNTS_PER_NAMESPACE: usize = 512;

/// The mount namespaces holding dead mounts of the daemon at `mountpoint`, found one process at a time,
/// once per namespace, reading only /proc (mountinfo), never the mounts themselves: a mount of the
/// daemon's fsname is dead when its device is not the live daemon's (every mount of one FUSE connection
/// shows that connection's device). Lazy, so that no more namespace fds are held than are being healed.
/// Processes that exit or change namespace during the scan are skipped.
pub fn find_namespaces(proc_root: &Path, mountpoint: &Path) -> NamespaceScan {
    use std::os::unix::fs::MetadataExt;
    // Nothing answering at the mountpoint: every mount of the fsname is dead. statfs asks the daemon;
    // stat alone could be answered from the attribute cache of a dead mount.
    let live = crate::attach::check_daemon(mountpoint).is_ok();
    let device = |path: &Path| {
        live.then(|| std::fs::metadata(path).ok())
            .flatten()
            .map(|meta| {
                let dev = meta.dev();
                format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))
            })
    };
    let views = mountpoint.join(crate::files::BY_PID_DIR);
    NamespaceScan {
        entries: std::fs::read_dir(proc_root).ok(),
        wanted: Wanted {
            fs_name: fs_name(mountpoint),
            live_device: device(mountpoint),
            views_fs_name: fs_name(&views),
            views_live_device: device(&views),
        },
        seen: HashSet::new(),
    }
}

/// The scan behind [`find_namespaces`].
#[derive(Debug)]
pub struct NamespaceScan {
    entries: Option<std::fs::ReadDir>,
    wanted: Wanted,
    seen: HashSet<(u64, u64)>,
}

/// Which mounts the scan looks for: the daemon's fsname, on another device than the live daemon's.
#[derive(Debug)]
struct Wanted {
    fs_name: String,
    live_device: Option<String>,
    /// The same for the views mount stacked on `.by-pid` (binds made by vproc itself).
    views_fs_name: String,
    views_live_device: Option<String>,
}

impl Iterator for NamespaceScan {
    type Item = NamespaceMounts;

    fn next(&mut self) -> Option<NamespaceMounts> {
        for entry in self.entries.as_mut()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ns) = namespace_of(&entry.path(), pid, &self.wanted, &mut self.seen) {
                return Some(ns);
            }
        }
        None
    }
}

/// The device and inode of a namespace file: the namespace's identity.
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// The namespace of process `pid` (its /proc directory `dir`) with its dead mounts; `None` when it has
/// none, was seen already, or the process went away or changed namespace meanwhile. Most processes
/// share a namespace seen before and cost one stat; a namespace's first process costs a mountinfo
/// read; only a namespace with dead mounts is pinned (pidfd, namespace and root fds) and read again.
fn namespace_of(
    dir: &Path,
    pid: u32,
    wanted: &Wanted,
    seen: &mut HashSet<(u64, u64)>,
) -> Option<NamespaceMounts> {
    let ns_path = dir.join("ns/mnt");
    let id = identity(&std::fs::metadata(&ns_path).ok()?);
    if seen.contains(&id) {
        return None;
    }
    // A process entering a container (runc exec, nsenter) changes namespace between our reads: a
    // namespace counts as seen only when it is still the process's after its mountinfo was read.
    let still = |seen: &mut HashSet<(u64, u64)>| {
        let same = std::fs::metadata(&ns_path).ok().map(|m| identity(&m)) == Some(id);
        if same {
            seen.insert(id);
        }
        same
    };
    let mountinfo = std::fs::read_to_string(dir.join("mountinfo")).ok()?;
    if dead_mounts(&mountinfo, wanted).is_empty() {
        still(seen);
        return None;
    }
    // Pin it: the pidfd says which process `pid` means; if it is still alive, in the same namespace,
    // after the namespace, its root and its mountinfo were read again, all of them were that process's.
    let pidfd = pidfd::open(libc::pid_t::try_from(pid).ok()?, 0)?;
    let namespace = std::fs::File::open(&ns_path).ok()?;
    if identity(&namespace.metadata().ok()?) != id {
        return None;
    }
    let root = rustix::fs::open(
        dir.join("root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mountinfo = std::fs::read_to_string(dir.join("mountinfo")).ok()?;
    if !still(seen) || !is_alive(&pidfd) {
        return None;
    }
    let mounts = dead_mounts(&mountinfo, wanted);
    (!mounts.is_empty()).then(|| NamespaceMounts {
        pid,
        namespace: namespace.into(),
        root,
        mounts,
    })
}

/// The (source, target) pairs of the dead mounts in `mountinfo`: the daemon's fsname, not on the live
/// daemon's device, whose source is one of the daemon's files or directories (a forged mount naming
/// anything else is ignored), each once, at most [`MAX_MOUNTS_PER_NAMESPACE`].
fn dead_mounts(mountinfo: &str, wanted: &Wanted) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    let mut mounts = Vec::new();
    for line in mountinfo.lines().filter_map(MountinfoLine::parse) {
        let live = if line.source == wanted.fs_name {
            wanted.live_device.as_deref()
        } else if line.source == wanted.views_fs_name {
            wanted.views_live_device.as_deref()
        } else {
            continue;
        };
        if !line.fstype.starts_with("fuse") || live == Some(line.device) {
            continue;
        }
        let source = files::file_of_mount_root(&line.root);
        // A bind of the views mount is healed from the views mount (named by a process of its
        // container), one of the shared mount from the shared mount, as each was made.
        let views = line.source == wanted.views_fs_name;
        let served = source.is_empty()
            || files::FILES.iter().any(|f| f.path == source)
            || files::dir_by_path(source).is_some()
            || files::is_block_stat(source);
        if !served {
            continue;
        }
        // A views bind keeps the pid it was named by (`.by-pid/PID/proc/meminfo`): that process, if it
        // still lives in the namespace, names it again.
        let source = if views {
            format!(
                "{}/{}",
                files::BY_PID_DIR,
                line.root.trim_start_matches('/')
            )
        } else {
            source.to_string()
        };
        let pair = (source, line.mount_point.trim_start_matches('/').to_string());
        if seen.insert(pair.clone()) {
            mounts.push(pair);
            if mounts.len() == MAX_MOUNTS_PER_NAMESPACE {
                break;
            }
        }
    }
    // On one path, views first: where a view was mounted over a shared bind (vproc-runc's hook on a
    // kernel without MOVE_MOUNT_BENEATH), the first heal of the path detaches every dead mount on it
    // and puts its own source there, and the view is the one the container read. Paths keep
    // mountinfo's order (a parent is healed before what is mounted below it).
    let first: std::collections::HashMap<String, usize> = mounts
        .iter()
        .enumerate()
        .rev()
        .map(|(at, (_, target))| (target.clone(), at))
        .collect();
    mounts.sort_by_key(|(source, target)| (first[target], !source.starts_with(files::BY_PID_DIR)));
    mounts
}

/// What re-attaching did in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `mounts` dead mounts were replaced (0: all were live already).
    Healed {
        pid: u32,
        mounts: usize,
    },
    /// The namespace did not answer within [`NAMESPACE_TIMEOUT`] (a FUSE mount there hangs): skipped.
    TimedOut {
        pid: u32,
    },
    Failed {
        pid: u32,
        error: String,
    },
}

/// Finds and heals every dead mount of the daemon at `mountpoint`. Each namespace is entered by a forked
/// child (setns into a mount namespace needs a single-threaded process, and the parent stays where it
/// is): call this from a single-threaded process.
pub fn reattach_all(proc_root: &Path, mountpoint: &Path) -> Vec<Outcome> {
    let found = find_namespaces(proc_root, mountpoint);
    heal_all(mountpoint, found, NAMESPACE_TIMEOUT)
}

/// How long a killed child may take to go. One blocked in a FUSE request its server already read
/// cannot be killed until that server answers or dies: it is left behind (reaped by init) rather than
/// waited for; it holds no pipe of ours.
const KILL_GRACE: Duration = Duration::from_millis(200);

/// One forked child at work in one namespace.
struct Worker {
    child: Pid,
    pid: u32,
    started: Instant,
    /// When it was sent SIGKILL.
    killed: Option<Instant>,
    /// The child writes its report here.
    report: std::fs::File,
}

/// How a [`Worker`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It ran to the end and wrote this.
    Reported(String),
    /// Killed for taking too long (a FUSE mount there hangs).
    TimedOut,
    /// It could not be started, or died.
    Failed(String),
}

/// Heals the dead mounts of each namespace in its own child, [`PARALLEL`] at a time, each killed after
/// `timeout`. Call from a single-threaded process.
pub fn heal_all(
    mountpoint: &Path,
    namespaces: impl IntoIterator<Item = NamespaceMounts>,
    timeout: Duration,
) -> Vec<Outcome> {
    let mut queue = namespaces.into_iter();
    let mut running: Vec<Worker> = Vec::new();
    let mut outcomes = Vec::new();
    loop {
        while running.len() < PARALLEL {
            let Some(ns) = queue.next() else { break };
            let pid = ns.pid;
            match spawn_healer(mountpoint, ns) {
                Ok(healer) => running.push(healer),
                Err(e) => outcomes.push(healed(pid, Ended::Failed(e))),
            }
        }
        if running.is_empty() {
            return outcomes;
        }
        let mut still = Vec::new();
        for mut healer in running {
            match ended(&mut healer, timeout) {
                Some(end) => outcomes.push(healed(healer.pid, end)),
                None => still.push(healer),
            }
        }
        running = still;
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Forks the child that heals `ns`: it reports `healed N` or its error.
fn spawn_healer(mountpoint: &Path, ns: NamespaceMounts) -> Result<Worker, String> {
    spawn_worker(ns.pid, || {
        match attach_in(
            ns.namespace.as_fd(),
            ns.pid,
            ContainerRoot::Opened(ns.root.as_fd()),
            mountpoint,
            &ns.mounts,
            AttachMode::HealOnly,
        ) {
            Ok(done) => {
                let healed = done
                    .iter()
                    .filter(|a| matches!(a, Attached::Mounted(_)))
                    .count();
                format!("healed {healed}")
            }
            Err(e) => e.to_string(),
        }
    })
}

/// The outcome of healing `pid`'s namespace from how its healer ended.
fn healed(pid: u32, end: Ended) -> Outcome {
    match end {
        Ended::Reported(report) => match report.strip_prefix("healed ") {
            Some(count) => Outcome::Healed {
                pid,
                mounts: count.parse().unwrap_or(0),
            },
            None => Outcome::Failed { pid, error: report },
        },
        Ended::TimedOut => Outcome::TimedOut { pid },
        Ended::Failed(error) => Outcome::Failed { pid, error },
    }
}

/// Runs `work` (which may enter pid `pid`'s mount namespace) in a forked child, killed after
/// `timeout`, and returns what it reported: a FUSE mount that hangs there cannot hang the caller.
/// Call it from a single-threaded process.
pub fn in_child(pid: u32, timeout: Duration, work: impl FnOnce() -> String) -> Ended {
    let mut worker = match spawn_worker(pid, work) {
        Ok(worker) => worker,
        Err(e) => return Ended::Failed(e),
    };
    loop {
        if let Some(end) = ended(&mut worker, timeout) {
            return end;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Forks a child that runs `work` and writes its report to a pipe.
fn spawn_worker(pid: u32, work: impl FnOnce() -> String) -> Result<Worker, String> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the callers are single-threaded (heal_all, in_child), so the child may run ordinary code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(read);
            // Our stdout and stderr may be a caller's pipes, which a child stuck in a hung mount would
            // keep open forever: everything goes through the report pipe instead.
            silence_output();
            let report = work();
            let _ = std::fs::File::from(write).write_all(report.as_bytes());
            // SAFETY: _exit ends the forked child without running the parent's destructors twice.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => Ok(Worker {
            child,
            pid,
            started: Instant::now(),
            killed: None,
            report: std::fs::File::from(read),
        }),
        Err(e) => Err(format!("fork: {e}")),
    }
}

/// How `worker` ended, if it did, or was killed for taking longer than `timeout`.
fn ended(worker: &mut Worker, timeout: Duration) -> Option<Ended> {
    match waitpid(worker.child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => match worker.killed {
            None if worker.started.elapsed() < timeout => None,
            None => {
                let _ = kill(worker.child, Signal::SIGKILL);
                worker.killed = Some(Instant::now());
                None
            }
            Some(at) if at.elapsed() < KILL_GRACE => None,
            Some(_) => Some(Ended::TimedOut),
        },
        _ if worker.killed.is_some() => Some(Ended::TimedOut),
        Ok(WaitStatus::Exited(_, 0)) => {
            let mut report = String::new();
            let _ = worker.report.read_to_string(&mut report);
            Some(Ended::Reported(report))
        }
        other => Some(Ended::Failed(format!("the child ended with {other:?}"))),
    }
}

/// Points stdout and stderr at /dev/null.
fn silence_output() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            // SAFETY: dup2 onto the standard fds of this forked child, which nothing else uses.
            unsafe { libc::dup2(null.as_raw_fd(), target) };
        }
    }
}

/// The mountpoint as mountinfo spells it (absolute, symlinks resolved).
pub fn canonical_mountpoint(mountpoint: &Path) -> PathBuf {
    std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: &str = "vprocd:/var/lib/lxcfs";

    /// A mount of the dead connection `0:58`, the live daemon being `0:61`.
    fn line(root: &str, target: &str, source: &str) -> String {
        format!("812 790 0:58 {root} {target} ro,nosuid - fuse {source} ro,user_id=0\n")
    }

    fn wanted() -> Wanted {
        Wanted {
            fs_name: FS.to_string(),
            live_device: Some("0:61".to_string()),
            views_fs_name: "vprocd:/var/lib/lxcfs/.by-pid".to_string(),
            views_live_device: Some("0:62".to_string()),
        }
    }

    #[test]
    fn only_the_daemons_own_files_are_taken_each_once() {
        let mountinfo = [
            line("/proc/meminfo", "/proc/meminfo", FS),
            line("/proc/meminfo", "/proc/meminfo", FS),
            line("/sys/devices/system/cpu", "/sys/devices/system/cpu", FS),
            line("/proc/meminfo", "/proc/meminfo", "vprocd:/elsewhere"),
            // A forged mount under our name pointing into the host's tree through a pass-through path.
            line("/sys/devices/system/cpu/cpu0/node0", "/x", FS),
            line("/../etc", "/y", FS),
        ]
        .concat();
        assert_eq!(
            dead_mounts(&mountinfo, &wanted()),
            [
                ("proc/meminfo".to_string(), "proc/meminfo".to_string()),
                (
                    "sys/devices/system/cpu".to_string(),
                    "sys/devices/system/cpu".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_view_over_a_shared_bind_is_healed_first() {
        let views = "vprocd:/var/lib/lxcfs/.by-pid";
        // A namespace copied from the host's (unshare -m): the daemon's mountpoint with its views
        // mount below it comes first, and keeps its order.
        let mountinfo = [
            line("/", "/var/lib/lxcfs", FS),
            line("/", "/var/lib/lxcfs/.by-pid", views),
            line("/proc/meminfo", "/proc/meminfo", FS),
            line("/proc/stat", "/proc/stat", FS),
            line("/4242/proc/meminfo", "/proc/meminfo", views),
        ]
        .concat();
        let pair = |source: &str, target: &str| (source.to_string(), target.to_string());
        assert_eq!(
            dead_mounts(&mountinfo, &wanted()),
            [
                pair("", "var/lib/lxcfs"),
                pair(".by-pid/", "var/lib/lxcfs/.by-pid"),
                pair(".by-pid/4242/proc/meminfo", "proc/meminfo"),
                pair("proc/meminfo", "proc/meminfo"),
                pair("proc/stat", "proc/stat"),
            ]
        );
    }

    #[test]
    fn the_live_daemons_own_mounts_are_not_dead() {
        let live = "813 790 0:61 /proc/meminfo /proc/meminfo ro - fuse vprocd:/var/lib/lxcfs ro\n";
        assert!(dead_mounts(live, &wanted()).is_empty());
        let nothing_live = Wanted {
            live_device: None,
            views_fs_name: "vprocd:/var/lib/lxcfs/.by-pid".to_string(),
            views_live_device: None,
            ..wanted()
        };
        assert_eq!(dead_mounts(live, &nothing_live).len(), 1);
    }

    #[test]
    fn a_namespace_is_looked_at_for_a_bounded_number_of_mounts() {
        let mountinfo: String = (0..10_000)
            .map(|i| line("/proc/meminfo", &format!("/m{i}"), FS))
            .collect();
        assert_eq!(
            dead_mounts(&mountinfo, &wanted()).len(),
            MAX_MOUNTS_PER_NAMESPACE
        );
    }

    #[test]
    fn block_device_stats_are_healed_and_odd_names_are_not() {
        let mountinfo = [
            line(
                "/sys/block/vda/stat",
                "/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda/stat",
                FS,
            ),
            line("/sys/block/../stat", "/x", FS),
            line("/sys/block/vda/size", "/y", FS),
        ]
        .concat();
        assert_eq!(
            dead_mounts(&mountinfo, &wanted()),
            [(
                "sys/block/vda/stat".to_string(),
                "sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda/stat".to_string()
            )]
        );
    }
}
