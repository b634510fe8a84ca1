//! Putting the daemon's files into a container that already has its mount namespace: `vproc attach` for a
//! running container and `vproc hook` for OCI runtimes (createRuntime: the container's mounts exist, its
//! root is not pivoted yet). Uses the new mount API so nothing needs to exist in the image:
//! `open_tree(OPEN_TREE_CLONE)` of each file in the host's namespace, `setns` into the container's mount
//! namespace, then `move_mount` onto the target, which is resolved inside the container's root
//! (`RESOLVE_IN_ROOT`: a symlink in the image cannot send a mount to the host).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, OFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags, move_mount, open_tree};

use crate::files::{self, bind_pairs};
use crate::in_root::{self, Symlinks};

/// `FUSE_SUPER_MAGIC`, the f_type statfs reports for a FUSE mount.
const FUSE_SUPER_MAGIC: rustix::fs::FsWord = 0x6573_5546;

/// Why attaching failed, naming the path and what to do.
#[derive(Debug)]
pub enum AttachError {
    /// Nothing (or not a live vprocd) is mounted at the daemon's mountpoint.
    NotMounted {
        mountpoint: PathBuf,
        detail: String,
    },
    Source {
        path: PathBuf,
        source: io::Error,
    },
    Namespace {
        pid: u32,
        source: io::Error,
    },
    Target {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::NotMounted { mountpoint, detail } => write!(
                f,
                "no vprocd is serving {} ({detail}); start it (systemctl start vprocd) or pass --mountpoint",
                mountpoint.display()
            ),
            AttachError::Source { path, source } => {
                write!(f, "cannot clone {}: {source}", path.display())
            }
            AttachError::Namespace { pid, source } => {
                write!(f, "cannot enter the mount namespace of pid {pid}: {source}")
            }
            AttachError::Target { path, source } => {
                write!(
                    f,
                    "cannot mount over {} in the container: {source}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for AttachError {}

/// What happened to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    Mounted(PathBuf),
    /// A live vprocd file was already there.
    AlreadyAttached(PathBuf),
    /// The container has no such path (an image without /sys, say); nothing to cover.
    Missing(PathBuf),
    /// Healing only: what is there is not a dead vprocd mount, so it was left as it is.
    LeftAlone(PathBuf),
    /// Upgrade only: the shared file stays, since its view could not be mounted (why).
    Kept(PathBuf, String),
}

/// What to do with each target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Cover the container's own file, or replace a dead vprocd mount (attach, hook).
    Attach,
    /// Replace dead vprocd mounts only (reattach: the container's mounts may have changed since the scan).
    HealOnly,
    /// Replace the shared mount's files with the container's views (the runc wrapper's hook: runc bound
    /// the shared files, read per reader; a view is served from the page cache). Nothing else is
    /// touched, and a file whose view cannot be had keeps its shared bind.
    Upgrade,
}

/// Bind-mounts the daemon's files over the container's: the mount namespace of `pid`, whose root is at
/// `root` inside that namespace (`/` for a running container, the rootfs path before pivot_root).
///
/// Enters that namespace: call it from a single-threaded process that does nothing else afterwards.
pub fn attach(pid: u32, root: &Path, mountpoint: &Path) -> Result<Vec<Attached>, AttachError> {
    attach_pairs(pid, root, mountpoint, &view_pairs(), AttachMode::Attach)
}

/// Every bind target with its source on the views mount (`.by-pid/proc/meminfo` for
/// `proc/meminfo`: the named process's own file).
pub fn view_pairs() -> Vec<(String, String)> {
    bind_pairs()
        .into_iter()
        .map(|(source, target)| (format!("{}/{source}", files::BY_PID_DIR), target))
        .collect()
}

/// Like [`attach`], for explicit pairs (`source` below the mountpoint goes over `target` below `root`,
/// both relative, e.g. `proc/meminfo`) and any `mode`.
pub fn attach_pairs(
    pid: u32,
    root: &Path,
    mountpoint: &Path,
    pairs: &[(String, String)],
    mode: AttachMode,
) -> Result<Vec<Attached>, AttachError> {
    let ns_path = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
    let ns = File::open(&ns_path).map_err(|source| AttachError::Namespace { pid, source })?;
    attach_in(
        ns.as_fd(),
        pid,
        ContainerRoot::Path(root),
        mountpoint,
        pairs,
        mode,
    )
}

/// Where the targets are resolved from, inside the namespace.
#[derive(Debug, Clone, Copy)]
pub enum ContainerRoot<'a> {
    /// A path, opened after entering the namespace.
    Path(&'a Path),
    /// A directory opened beforehand (`/proc/PID/root` of a process of that namespace: its own root,
    /// which is what the paths of its mountinfo are relative to).
    Opened(BorrowedFd<'a>),
}

/// Puts `pairs` into the mount namespace `namespace` (an fd of its `ns/mnt`, so no pid is resolved
/// again: a pid reused since the namespace was found cannot send the mounts elsewhere). `pid` only
/// names the namespace in errors. Enters the namespace: call it from a single-threaded process.
pub fn attach_in(
    namespace: BorrowedFd<'_>,
    pid: u32,
    root: ContainerRoot<'_>,
    mountpoint: &Path,
    pairs: &[(String, String)],
    mode: AttachMode,
) -> Result<Vec<Attached>, AttachError> {
    check_daemon(mountpoint)?;
    // Sources below `.by-pid/` are the container's own files on the views mount, named by a process of
    // the container: the one a dead bind recorded (`.by-pid/PID/...`), else PID (for a heal, only when
    // it is in a pid namespace other than ours: a host shell that entered the mount namespace would
    // name the host's files), else another process of the namespace in such a pid namespace. Each is
    // held by a pidfd, checked to be of `namespace` before and alive after, so a pid reused meanwhile
    // cannot name another container. Where no process names them, or the views mount refuses, the
    // shared mount's file serves instead (read per reader): one file never keeps the others back.
    // Other sources are the shared mount's.
    let namespace_error = |source: io::Error| AttachError::Namespace { pid, source };
    let by_pid = format!("{}/", files::BY_PID_DIR);
    let mut found: Option<Option<u32>> = None;
    let mut holders: Vec<OwnedFd> = Vec::new();
    let mut clones: Vec<Cloned> = Vec::new();
    let mut results = Vec::new();
    for (source, relative) in pairs {
        let (file, views) = match source.strip_prefix(&by_pid) {
            None => (source.as_str(), None),
            Some("") => (files::BY_PID_DIR, Some(mountpoint.join(files::BY_PID_DIR))),
            Some(rest) => {
                let (recorded, file) = match rest.split_once('/') {
                    Some((named, file)) if named.bytes().all(|b| b.is_ascii_digit()) => {
                        (named.parse::<u32>().ok(), file)
                    }
                    _ => (None, rest),
                };
                let namer = recorded
                    .and_then(|named| of_namespace(namespace, named))
                    .or_else(|| {
                        let named = *found.get_or_insert_with(|| {
                            process_in(namespace, pid, mode == AttachMode::HealOnly)
                        });
                        named.and_then(|named| of_namespace(namespace, named))
                    });
                match namer {
                    Some((named, holder)) => {
                        holders.push(holder);
                        (file, Some(view_dir(mountpoint, named).join(file)))
                    }
                    None => (file, None),
                }
            }
        };
        let clone = |path: &Path| {
            open_tree(
                CWD,
                path,
                OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
            )
        };
        let shared = mountpoint.join(file);
        // A source below `.by-pid/`: its view, or why there is none.
        let view = source.starts_with(&by_pid).then(|| match &views {
            Some(views) => clone(views).map_err(|e| format!("{}: {e}", views.display())),
            None => Err("no process of the container names its view".to_string()),
        });
        // An upgrade mounts views only (a file without one keeps runc's bind); the others bind the
        // shared file where there is no view.
        let tree = match view {
            Some(Ok(view)) => Ok(Ok(view)),
            Some(Err(why)) if mode == AttachMode::Upgrade => Ok(Err(why)),
            Some(Err(why)) => {
                log::debug!("{why}; the shared mount's instead");
                clone(&shared).map(Ok)
            }
            None if mode == AttachMode::Upgrade => Ok(Err("not a view".to_string())),
            None => clone(&shared).map(Ok),
        };
        match tree {
            Ok(tree) => clones.push(Cloned {
                source: file,
                relative: relative.as_str(),
                tree,
            }),
            // Disks come and go (loop, dm, nbd): one gone since the list was made is skipped, never
            // a reason to leave the container without its other files.
            Err(_) if files::is_block_stat(file) => {
                results.push(Attached::Missing(Path::new("/").join(relative)));
            }
            Err(e) => {
                return Err(AttachError::Source {
                    path: shared,
                    source: e.into(),
                });
            }
        }
    }

    // What the shared mount's files are (an upgrade replaces those only), known in our namespace.
    let shared_device = rustix::fs::stat(mountpoint).map(|s| s.st_dev).ok();

    if holders.iter().any(|holder| !crate::pidfd::is_alive(holder)) {
        return Err(namespace_error(io::Error::other(
            "the process exited while its files were looked up",
        )));
    }

    // After setns, /proc is the container's procfs, where our /proc/self does not exist; keep the host's.
    let host_proc = rustix::fs::open(
        "/proc",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| AttachError::Namespace {
        pid,
        source: e.into(),
    })?;
    nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
        AttachError::Namespace {
            pid,
            source: e.into(),
        }
    })?;

    let (root_dir, root) = match root {
        ContainerRoot::Path(root) => {
            let dir = rustix::fs::open(
                root,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| AttachError::Target {
                path: root.to_path_buf(),
                source: e.into(),
            })?;
            (dir, root)
        }
        ContainerRoot::Opened(dir) => {
            let dir = dir
                .try_clone_to_owned()
                .map_err(|source| AttachError::Target {
                    path: PathBuf::from("/"),
                    source,
                })?;
            (dir, Path::new("/"))
        }
    };
    for cloned in clones {
        let shown = root.join(cloned.relative);
        match put(&root_dir, &cloned, &shown, mode, &host_proc, shared_device) {
            Ok(done) => results.push(done),
            // A disk's statistics are a side line: never a reason to fail the rest.
            Err(e) if files::is_block_stat(cloned.source) => {
                log::debug!("not binding {}: {e}", shown.display());
                results.push(Attached::Missing(shown));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(results)
}

/// One target's trees, cloned in our namespace.
struct Cloned<'a> {
    /// The file below the mountpoint.
    source: &'a str,
    /// Where it goes, below the container's root.
    relative: &'a str,
    /// The tree to mount, or (an upgrade's only) why there is no view.
    tree: Result<OwnedFd, String>,
}

/// Puts `cloned` over its target below `root_dir` (shown to users as `shown`), as `mode` says.
fn put(
    root_dir: &OwnedFd,
    cloned: &Cloned<'_>,
    shown: &Path,
    mode: AttachMode,
    host_proc: &OwnedFd,
    shared_device: Option<u64>,
) -> Result<Attached, AttachError> {
    let relative = cloned.relative;
    let target_error = |source: io::Error| AttachError::Target {
        path: shown.to_path_buf(),
        source,
    };
    let shown = shown.to_path_buf();
    let what = match what_is_at(root_dir, relative) {
        Ok(what) => what,
        // Nothing was changed: the shared bind, if there is one, stays.
        Err(e) if mode == AttachMode::Upgrade => return Ok(Attached::Kept(shown, e.to_string())),
        Err(e) => return Err(target_error(e)),
    };
    match (what, mode) {
        (Target::Missing, AttachMode::Attach) => return Ok(Attached::Missing(shown)),
        (Target::Missing | Target::Plain, AttachMode::HealOnly) => {
            return Ok(Attached::LeftAlone(shown));
        }
        (Target::Live(_), AttachMode::Attach | AttachMode::HealOnly) => {
            return Ok(Attached::AlreadyAttached(shown));
        }
        // A bind mount of a dead daemon's file (ENOTCONN): detach it, then cover what was under it.
        (Target::Dead(dead), AttachMode::Attach | AttachMode::HealOnly) => {
            detach_dead(root_dir, relative, dead, host_proc).map_err(target_error)?;
        }
        (Target::Plain, AttachMode::Attach) => {}
        (Target::Live(live), AttachMode::Upgrade) => {
            // Only the shared mount's file (not a view already, nor another FUSE filesystem).
            let shared = rustix::fs::fstat(&live).map(|s| Some(s.st_dev) == shared_device);
            return match (shared, &cloned.tree) {
                (Ok(true), Ok(view)) => Ok(upgrade(view, live, host_proc, &shown)),
                (Ok(true), Err(why)) => Ok(Attached::Kept(shown, why.clone())),
                (Ok(false), _) => Ok(Attached::LeftAlone(shown)),
                (Err(e), _) => Ok(Attached::Kept(shown, io::Error::from(e).to_string())),
            };
        }
        // The wrapper's bind, dead since (a daemon restarted after runc bound it): the view, if any,
        // goes in its place; nothing does otherwise (the new daemon's reattach heals it).
        (Target::Dead(dead), AttachMode::Upgrade) => {
            let Ok(view) = &cloned.tree else {
                return Ok(Attached::Kept(shown, "a dead bind, no view".to_string()));
            };
            let healed = detach_dead(root_dir, relative, dead, host_proc)
                .and_then(|()| mount_at(&open_in_root(root_dir, relative)?, view));
            return Ok(match healed {
                Ok(()) => Attached::Mounted(shown),
                Err(e) => Attached::Kept(shown, format!("a dead bind: {e}")),
            });
        }
        // Nothing of ours there: an upgrade touches only what runc bound from the shared mount.
        (Target::Missing | Target::Plain, AttachMode::Upgrade) => {
            return Ok(Attached::LeftAlone(shown));
        }
    }
    let tree = cloned
        .tree
        .as_ref()
        .map_err(|why| target_error(io::Error::other(why.clone())))?;
    mount_at(
        &open_in_root(root_dir, relative).map_err(target_error)?,
        tree,
    )
    .map_err(target_error)?;
    Ok(Attached::Mounted(shown))
}

/// Replaces the shared mount's file `top` (the mount on top of its target) with `view`, never
/// exposing the kernel's own file: the view goes beneath the shared bind, which is then detached
/// (MOVE_MOUNT_BENEATH, Linux 6.5). Where the kernel cannot (EINVAL: an older kernel, or a target it
/// refuses to mount beneath), the view is mounted over the shared bind, which stays covered below it.
fn upgrade(view: &OwnedFd, top: OwnedFd, host_proc: &OwnedFd, shown: &Path) -> Attached {
    let kept = |why: String| Attached::Kept(shown.to_path_buf(), why);
    let beneath = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
        | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH
        | MoveMountFlags::MOVE_MOUNT_BENEATH;
    match move_mount(view, "", &top, "", beneath) {
        Ok(()) => match detach(&top, host_proc) {
            Ok(()) => Attached::Mounted(shown.to_path_buf()),
            // The view waits beneath; the shared file still serves.
            Err(e) => kept(format!("cannot detach the shared bind: {e}")),
        },
        Err(rustix::io::Errno::INVAL) => match mount_at(&top, view) {
            Ok(()) => Attached::Mounted(shown.to_path_buf()),
            Err(e) => kept(e.to_string()),
        },
        Err(e) => kept(io::Error::from(e).to_string()),
    }
}

/// Moves the cloned `tree` onto the file or directory `target`.
fn mount_at(target: &OwnedFd, tree: &OwnedFd) -> io::Result<()> {
    let flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    move_mount(tree, "", target, "", flags)?;
    Ok(())
}

/// Where the daemon at `mountpoint` serves the files of process `pid`'s container.
pub fn view_dir(mountpoint: &Path, pid: u32) -> PathBuf {
    mountpoint.join(crate::fs::BY_PID_DIR).join(pid.to_string())
}

/// Process `pid` held by a pidfd, if it is of mount namespace `namespace` (opened first, checked
/// after: the pid named this namespace's process while the fd was open).
fn of_namespace(namespace: BorrowedFd<'_>, pid: u32) -> Option<(u32, OwnedFd)> {
    let holder = crate::pidfd::open(pid as libc::pid_t, 0)?;
    same_file(namespace, &PathBuf::from(format!("/proc/{pid}/ns/mnt"))).then_some((pid, holder))
}

/// A process of mount namespace `namespace`: `pid` while it is still there (unless `elsewhere` and it
/// is in our own pid namespace), else the first found in /proc in a pid namespace other than ours (a
/// container's short-lived process found by a scan may have gone, and its pid may name another
/// process since; a host shell that entered only the mount namespace, `nsenter -m`, would name the
/// host's files).
fn process_in(namespace: BorrowedFd<'_>, pid: u32, elsewhere: bool) -> Option<u32> {
    let ours = std::fs::read_link("/proc/self/ns/pid").ok();
    let not_ours = |pid: &u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != ours;
    let of = |pid: u32| of_namespace(namespace, pid).map(|(pid, _)| pid);
    Some(pid)
        .filter(|pid| !elsewhere || not_ours(pid))
        .and_then(of)
        .or_else(|| {
            std::fs::read_dir("/proc")
                .ok()?
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                .filter(not_ours)
                .find_map(of)
        })
}

/// True when `fd` and `path` are the same file (a namespace: its nsfs inode).
fn same_file(fd: BorrowedFd<'_>, path: &Path) -> bool {
    match (rustix::fs::fstat(fd), rustix::fs::stat(path)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

/// Fails unless a live FUSE filesystem is mounted at `mountpoint`.
pub fn check_daemon(mountpoint: &Path) -> Result<(), AttachError> {
    let not_mounted = |detail: String| AttachError::NotMounted {
        mountpoint: mountpoint.to_path_buf(),
        detail,
    };
    match rustix::fs::statfs(mountpoint) {
        Ok(fs) if fs.f_type == FUSE_SUPER_MAGIC => Ok(()),
        Ok(_) => Err(not_mounted("it is not a FUSE mount".into())),
        Err(e) => Err(not_mounted(io::Error::from(e).to_string())),
    }
}

/// What a target path holds in the container (the mount on top, opened, where there is one).
enum Target {
    Missing,
    /// A live vprocd (FUSE) file or directory.
    Live(OwnedFd),
    /// A FUSE mount whose daemon is gone.
    Dead(OwnedFd),
    /// The container's own file.
    Plain,
}

fn what_is_at(root_dir: &OwnedFd, relative: &str) -> io::Result<Target> {
    let target = match open_in_root(root_dir, relative) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Target::Missing),
        Err(e) => return Err(e),
    };
    match rustix::fs::fstatfs(&target) {
        Ok(fs) if fs.f_type == FUSE_SUPER_MAGIC => Ok(Target::Live(target)),
        Ok(_) => Ok(Target::Plain),
        Err(rustix::io::Errno::NOTCONN) => Ok(Target::Dead(target)),
        Err(e) => Err(e.into()),
    }
}

/// Detaches `dead` and any dead mounts stacked beneath it on `relative`, until what is there answers
/// again. Each detach is of the very mount found dead.
fn detach_dead(
    root_dir: &OwnedFd,
    relative: &str,
    dead: OwnedFd,
    host_proc: &OwnedFd,
) -> io::Result<()> {
    let mut dead = Some(dead);
    for _ in 0..16 {
        let Some(top) = dead.take() else {
            return Ok(());
        };
        detach(&top, host_proc)?;
        let next = open_in_root(root_dir, relative)?;
        if matches!(rustix::fs::fstatfs(&next), Err(rustix::io::Errno::NOTCONN)) {
            dead = Some(next);
        }
    }
    Ok(())
}

/// Detaches the mount `target` (an fd of its root) is on. umount2 needs a path: `self/fd/N` below the
/// host's procfs (our cwd for the call) names exactly that mount.
fn detach(target: &OwnedFd, host_proc: &OwnedFd) -> io::Result<()> {
    rustix::process::fchdir(host_proc)?;
    let by_fd = format!("self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(target));
    nix::mount::umount2(by_fd.as_str(), nix::mount::MntFlags::MNT_DETACH)?;
    Ok(())
}

/// `relative` opened as an O_PATH fd, resolved as if `root_dir` were `/`.
fn open_in_root(root_dir: &OwnedFd, relative: &str) -> io::Result<OwnedFd> {
    in_root::open_at(root_dir, relative, OFlags::PATH, Symlinks::InRoot).map_err(Into::into)
}
