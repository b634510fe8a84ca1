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

use crate::attach::{AttachMode, Attached, attach_in};
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
    format!("vprocd:{}", mountpoint.display())
}

/// A mount namespace holding mounts of the daemon's filesystem (live or dead: which is decided inside
/// the namespace, by the child that heals it).
#[derive(Debug)]
pub struct NamespaceMounts {
    /// The process it was found through; only named in reports.
    pub pid: u32,
    /// The namespace itself (`/proc/PID/ns/mnt` opened during the scan).
    pub namespace: OwnedFd,
    /// (file below the daemon's mountpoint, where it is mounted relative to the namespace's root), both
    /// without a leading `/`: (`proc/meminfo`, `proc/meminfo`).
    pub mounts: Vec<(String, String)>,
}

/// Scans every process's mount namespace (once per namespace) for mounts of `fs_name`, reading only
/// /proc (mountinfo), never the mounts themselves. Processes that exit during the scan are skipped.
pub fn find_namespaces(proc_root: &Path, fs_name: &str) -> Vec<NamespaceMounts> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(ns) = namespace_of(&entry.path(), pid, fs_name, &mut seen) {
            found.push(ns);
        }
    }
    found
}

/// The namespace of process `pid` (its /proc directory `dir`) with its mounts of `fs_name`; `None` when
/// it has none, was seen already, or the process went away meanwhile.
fn namespace_of(
    dir: &Path,
    pid: u32,
    fs_name: &str,
    seen: &mut HashSet<(u64, u64)>,
) -> Option<NamespaceMounts> {
    // The pidfd pins which process `pid` means; if it is still alive after the namespace and the
    // mountinfo were read, both were that process's.
    let pidfd = pidfd::open(libc::pid_t::try_from(pid).ok()?, 0)?;
    let namespace = std::fs::File::open(dir.join("ns/mnt")).ok()?;
    let meta = namespace.metadata().ok()?;
    let identity = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    if seen.contains(&identity) {
        return None;
    }
    let mountinfo = std::fs::read_to_string(dir.join("mountinfo")).ok()?;
    if !is_alive(&pidfd) {
        return None;
    }
    seen.insert(identity);
    let mut mounts = Vec::new();
    for line in mountinfo.lines().filter_map(MountinfoLine::parse) {
        if !line.fstype.starts_with("fuse") || line.source != fs_name {
            continue;
        }
        let pair = (
            line.root.trim_start_matches('/').to_string(),
            line.mount_point.trim_start_matches('/').to_string(),
        );
        if !mounts.contains(&pair) {
            mounts.push(pair);
        }
    }
    (!mounts.is_empty()).then(|| NamespaceMounts {
        pid,
        namespace: namespace.into(),
        mounts,
    })
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
    let found = find_namespaces(proc_root, &fs_name(mountpoint));
    heal_all(mountpoint, found, NAMESPACE_TIMEOUT)
}

/// One child healing one namespace.
struct Healer {
    child: Pid,
    pid: u32,
    started: Instant,
    /// The child writes how many mounts it replaced here.
    report: std::fs::File,
}

/// Heals the dead mounts of each namespace in its own child, [`PARALLEL`] at a time, each killed after
/// `timeout`. Call from a single-threaded process.
pub fn heal_all(
    mountpoint: &Path,
    namespaces: Vec<NamespaceMounts>,
    timeout: Duration,
) -> Vec<Outcome> {
    let mut queue = namespaces.into_iter();
    let mut running: Vec<Healer> = Vec::new();
    let mut outcomes = Vec::new();
    loop {
        while running.len() < PARALLEL {
            let Some(ns) = queue.next() else { break };
            match spawn_healer(mountpoint, ns) {
                Ok(healer) => running.push(healer),
                Err(outcome) => outcomes.push(outcome),
            }
        }
        if running.is_empty() {
            return outcomes;
        }
        let mut still = Vec::new();
        for mut healer in running {
            match finished(&mut healer, timeout) {
                Some(outcome) => outcomes.push(outcome),
                None => still.push(healer),
            }
        }
        running = still;
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Forks the child that heals `ns`.
fn spawn_healer(mountpoint: &Path, ns: NamespaceMounts) -> Result<Healer, Outcome> {
    let pid = ns.pid;
    let failed = |error: String| Outcome::Failed { pid, error };
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| failed(format!("pipe: {e}")))?;
    // SAFETY: the caller is single-threaded (documented on heal_all), so the child may run ordinary code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(read);
            let code = match attach_in(
                ns.namespace.as_fd(),
                pid,
                Path::new("/"),
                mountpoint,
                &ns.mounts,
                AttachMode::HealOnly,
            ) {
                Ok(done) => {
                    let healed = done
                        .iter()
                        .filter(|a| matches!(a, Attached::Mounted(_)))
                        .count() as u32;
                    let _ = std::fs::File::from(write).write_all(&healed.to_le_bytes());
                    0
                }
                Err(e) => {
                    eprintln!("vproc reattach: pid {pid}: {e}");
                    1
                }
            };
            // SAFETY: _exit ends the forked child without running the parent's destructors twice.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => Ok(Healer {
            child,
            pid,
            started: Instant::now(),
            report: std::fs::File::from(read),
        }),
        Err(e) => Err(failed(format!("fork: {e}"))),
    }
}

/// The outcome of `healer` if it ended (or was killed for taking longer than `timeout`).
fn finished(healer: &mut Healer, timeout: Duration) -> Option<Outcome> {
    let pid = healer.pid;
    match waitpid(healer.child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) if healer.started.elapsed() < timeout => None,
        Ok(WaitStatus::StillAlive) => {
            // A FUSE request waits killably: SIGKILL ends the child even inside a hung statfs.
            let _ = kill(healer.child, Signal::SIGKILL);
            let _ = waitpid(healer.child, None);
            Some(Outcome::TimedOut { pid })
        }
        Ok(WaitStatus::Exited(_, 0)) => {
            let mut count = [0u8; 4];
            let mounts = match healer.report.read_exact(&mut count) {
                Ok(()) => u32::from_le_bytes(count) as usize,
                Err(_) => 0,
            };
            Some(Outcome::Healed { pid, mounts })
        }
        other => Some(Outcome::Failed {
            pid,
            error: format!("re-attaching child ended with {other:?}"),
        }),
    }
}

/// The mountpoint as mountinfo spells it (absolute, symlinks resolved).
pub fn canonical_mountpoint(mountpoint: &Path) -> PathBuf {
    std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf())
}
