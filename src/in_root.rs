//! Opening a path of a container's tree as if its root were `/` (`openat2` with `RESOLVE_IN_ROOT`): a
//! symlink in an image, absolute or full of `..`, stays inside the tree. Used wherever vproc touches a
//! container's files from the host: attach targets, the launcher's mount targets, image whiteouts and
//! /etc/passwd lookups.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// How symlinks on the way are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    /// Followed, inside the root (`/x` means `<root>/x`).
    InRoot,
    /// Refused with ELOOP (for mount points an image has no business turning into links).
    Refused,
}

/// `relative` below the directory `root`, opened with `flags` (add `OFlags::PATH` for a mount target).
/// An empty `relative` is the root itself. Magic links (/proc/self/...) are never followed.
pub fn open_at(
    root: &impl AsFd,
    relative: impl AsRef<Path>,
    flags: OFlags,
    symlinks: Symlinks,
) -> rustix::io::Result<OwnedFd> {
    let how = match symlinks {
        Symlinks::InRoot => ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        Symlinks::Refused => ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS,
    };
    let relative = relative.as_ref();
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    rustix::fs::openat2(root, relative, flags | OFlags::CLOEXEC, Mode::empty(), how)
}

/// Like [`open_at`], with the root given as a path on the host.
pub fn open(
    root: &Path,
    relative: impl AsRef<Path>,
    flags: OFlags,
    symlinks: Symlinks,
) -> rustix::io::Result<OwnedFd> {
    let root = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    open_at(&root, relative, flags, symlinks)
}
