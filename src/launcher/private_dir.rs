//! Directories only root may enter (0700): the image cache and the containers' state. Images keep their
//! setuid binaries and a container's root can write more into its layer; what is below a 0700
//! directory is out of the host's other users' reach, whatever its own mode.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

const PRIVATE: u32 = 0o700;

/// Makes sure `dir` (`--image-cache`, `--state-dir`) is root's alone: created so if missing (with its
/// parents). One that exists must belong to root, or another user could put an image or a container's
/// layer there. If other users can enter it, vproc's own default (`is_default`) is made 0700, with
/// the directories in it (left by versions before 0700); a directory the user named is refused rather
/// than changed, since it may be shared (`/srv`, `/tmp`).
pub fn private_root(dir: &Path, is_default: bool) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return std::fs::DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE)
                .create(dir);
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let root = open_dir(dir)?;
    let stat = rustix::fs::fstat(&root)?;
    if stat.st_uid != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "belongs to uid {}; it must be root's, or that user could put an image or a \
                 container's layer there",
                stat.st_uid
            ),
        ));
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if !is_default {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "other users can enter it (mode {mode:04o}), and unpacked images keep their setuid \
                 binaries: chmod 700 it, or name a directory of vproc's own"
            ),
        ));
    }
    rustix::fs::fchmod(&root, Mode::from_raw_mode(PRIVATE))?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = open_dir(&entry.path())
                .and_then(|fd| Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(PRIVATE))?));
        }
    }
    Ok(())
}

/// Creates `dir` root's alone; one that is already there (left by a killed run) must be root's and
/// is made so.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(PRIVATE).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let fd = open_dir(dir)?;
            if rustix::fs::fstat(&fd)?.st_uid != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "exists and is not root's",
                ));
            }
            Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(PRIVATE))?)
        }
        other => other,
    }
}

/// The directory itself, never what a symlink there points at.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn vproc_s_own_roots_become_root_s_alone_and_others_are_refused() {
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("containers");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(root.join("old")).unwrap();
        for path in [&root, &root.join("old")] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // A symlink in the root is not followed.
        let outside = work.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        // Named by the user: refused, unchanged.
        let error = private_root(&root, false).unwrap_err();
        assert!(error.to_string().contains("mode 0755"), "{error}");
        assert_eq!(mode(&root), 0o755);
        // vproc's default: made private, with what is in it.
        private_root(&root, true).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("old")), 0o700);
        assert_eq!(mode(&outside), 0o755);
        // A new root, with its parents; a private one is fine either way.
        let fresh = work.path().join("a/b/images");
        private_root(&fresh, false).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        private_root(&fresh, false).unwrap();
        // Not root's: refused.
        let theirs = work.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(
            private_root(&theirs, true)
                .unwrap_err()
                .to_string()
                .contains("uid 1000")
        );
        // One left behind is made private again; a symlink or another user's is refused.
        let left = root.join("left");
        std::fs::create_dir(&left).unwrap();
        std::fs::set_permissions(&left, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&left).unwrap();
        assert_eq!(mode(&left), 0o700);
        assert!(private_dir(&root.join("link")).is_err());
        assert!(private_dir(&theirs).is_err());
    }
}
