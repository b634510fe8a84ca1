//! Healing containers after the daemon died or restarted. A container's bind mounts of the daemon's files
//! keep pointing at the old FUSE connection, so every read fails with ENOTCONN until the container
//! restarts (the most-reported LXCFS problem). A new daemon finds those dead mounts in every mount
//! namespace and replaces each with the same file from its own mount, in place: nothing restarts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::attach::attach_pairs;
use crate::mountinfo::MountinfoLine;

/// The FUSE source name (fsname) of the daemon serving `mountpoint`, as mountinfo shows it. It names the
/// mountpoint so that a daemon heals only the mounts of its own predecessors.
pub fn fs_name(mountpoint: &Path) -> String {
    format!("vprocd:{}", mountpoint.display())
}

/// Dead bind mounts of one mount namespace, with a process through which to enter it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleNamespace {
    pub pid: u32,
    /// (file below the daemon's mountpoint, where it is mounted relative to the namespace's root), both
    /// without a leading `/`: (`proc/meminfo`, `proc/meminfo`).
    pub mounts: Vec<(String, String)>,
}

/// Scans every process's mount namespace (once per namespace) for mounts of `fs_name` whose connection
/// is dead. Deadness is checked through /proc/PID/root, which reaches into the process's mounts without
/// entering its namespace. Processes that vanish during the scan are skipped.
pub fn find_stale(proc_root: &Path, fs_name: &str) -> Vec<StaleNamespace> {
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
        let dir = entry.path();
        let Ok(namespace) = std::fs::read_link(dir.join("ns/mnt")) else {
            continue;
        };
        if !seen.insert(namespace) {
            continue;
        }
        let Ok(mountinfo) = std::fs::read_to_string(dir.join("mountinfo")) else {
            continue;
        };
        let mut mounts = Vec::new();
        for line in mountinfo.lines().filter_map(MountinfoLine::parse) {
            if !line.fstype.starts_with("fuse") || line.source != fs_name {
                continue;
            }
            let through_root = dir
                .join("root")
                .join(line.mount_point.trim_start_matches('/'));
            if matches!(
                rustix::fs::statfs(&through_root),
                Err(rustix::io::Errno::NOTCONN)
            ) {
                let source = line.root.trim_start_matches('/').to_string();
                let target = line.mount_point.trim_start_matches('/').to_string();
                if !mounts.contains(&(source.clone(), target.clone())) {
                    mounts.push((source, target));
                }
            }
        }
        if !mounts.is_empty() {
            found.push(StaleNamespace { pid, mounts });
        }
    }
    found
}

/// What re-attaching did in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Healed {
        pid: u32,
        mounts: usize,
    },
    /// The process (and its namespace) went away before we got there.
    Gone {
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
    let stale = find_stale(proc_root, &fs_name(mountpoint));
    stale
        .into_iter()
        .map(|ns| reattach_one(mountpoint, ns))
        .collect()
}

fn reattach_one(mountpoint: &Path, ns: StaleNamespace) -> Outcome {
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    let pid = ns.pid;
    // SAFETY: the caller is single-threaded (documented above), so the child may run ordinary code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = match attach_pairs(pid, Path::new("/"), mountpoint, &ns.mounts) {
                Ok(_) => 0,
                Err(crate::attach::AttachError::Namespace { .. }) => 3,
                Err(e) => {
                    eprintln!("vproc reattach: pid {pid}: {e}");
                    1
                }
            };
            // SAFETY: _exit ends the forked child without running the parent's destructors twice.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Outcome::Healed {
                pid,
                mounts: ns.mounts.len(),
            },
            Ok(WaitStatus::Exited(_, 3)) => Outcome::Gone { pid },
            other => Outcome::Failed {
                pid,
                error: format!("re-attaching child ended with {other:?}"),
            },
        },
        Err(e) => Outcome::Failed {
            pid,
            error: format!("fork: {e}"),
        },
    }
}

/// The mountpoint as mountinfo spells it (absolute, symlinks resolved).
pub fn canonical_mountpoint(mountpoint: &Path) -> PathBuf {
    std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf())
}
