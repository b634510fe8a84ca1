//! Directories only root may enter (0700): the image cache and the containers' state. Images keep their
//! setuid binaries and a container's root can write more into its layer; what is below a 0700
//! directory is out of the host's other users' reach, whatever its own mode.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

const PRIVATE: u32 = 0o700;
const STICKY: u32 = 0o1000;

/// Makes `dir` (vproc's own: `--image-cache`, `--state-dir`) root's alone, creating it and its parents
/// if missing, and each directory in it too (entries made by versions before 0700). A shared directory
/// (sticky, like /tmp) is left as it is: its entries are still made private.
pub fn private_root(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE)
        .create(dir)?;
    let root = open_dir(dir)?;
    let stat = rustix::fs::fstat(&root)?;
    let mode = stat.st_mode & 0o7777;
    if stat.st_uid == 0 && mode & STICKY == 0 && mode & 0o077 != 0 {
        rustix::fs::fchmod(&root, Mode::from_raw_mode(PRIVATE))?;
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = open_dir(&entry.path())
                .and_then(|fd| Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(PRIVATE))?));
        }
    }
    Ok(())
}

/// Creates `dir` root's alone; one that is already there (left by a killed run) is made so.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(PRIVATE).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let fd = open_dir(dir)?;
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
    fn roots_and_what_is_in_them_become_root_s_alone() {
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
        private_root(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("old")), 0o700);
        assert_eq!(mode(&outside), 0o755);
        // A new root, with its parents.
        let fresh = work.path().join("a/b/images");
        private_root(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        // A shared directory keeps its mode.
        let shared = work.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        private_root(&shared).unwrap();
        assert_eq!(mode(&shared), 0o1777);
        // One left behind is made private again; a symlink is refused.
        let left = root.join("left");
        std::fs::create_dir(&left).unwrap();
        std::fs::set_permissions(&left, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&left).unwrap();
        assert_eq!(mode(&left), 0o700);
        assert!(private_dir(&root.join("link")).is_err());
    }
}
