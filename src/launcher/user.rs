//! Who the payload runs as: `-u` or the image's User, `UID[:GID]` or `NAME[:GROUP]`, names looked up in
//! the container's own /etc/passwd and /etc/group (read inside the root, so an image's symlink cannot
//! point the lookup at the host's files), with the home directory and supplementary groups they give.

use std::path::Path;

use rustix::fs::OFlags;

use crate::in_root::{self, Symlinks};

/// The payload's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: those of /etc/group that list the user by name.
    pub groups: Vec<u32>,
    /// From /etc/passwd; `/` for a uid it does not list (Docker's choice), `/root` for root.
    pub home: String,
}

/// Checks the shape of `-u`: `UID`, `UID:GID`, `NAME` or `NAME:GROUP`.
pub fn parse_user_spec(value: &str) -> Result<String, String> {
    let ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    };
    match value.split_once(':') {
        Some((user, group)) if ok(user) && ok(group) => Ok(value.to_string()),
        None if ok(value) => Ok(value.to_string()),
        _ => Err("expected UID, UID:GID, NAME or NAME:GROUP".into()),
    }
}

/// Resolves `spec` against the container's files below `rootfs`.
pub fn resolve(spec: &str, rootfs: &Path) -> Result<User, String> {
    let passwd = read_in_root(rootfs, "etc/passwd");
    let group_file = read_in_root(rootfs, "etc/group");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // passwd lines: name:password:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| {
            f.len() >= 7
                && match user_part.parse::<u32>() {
                    Ok(uid) => f[2].parse() == Ok(uid),
                    Err(_) => f[0] == user_part,
                }
        });
    let (name, uid, primary_gid, home) = match (&entry, user_part.parse::<u32>()) {
        (Some(f), _) => (
            Some(f[0].to_string()),
            f[2].parse()
                .map_err(|_| format!("/etc/passwd has a bad uid for {}", f[0]))?,
            f[3].parse().ok(),
            f[5].to_string(),
        ),
        (None, Ok(uid)) => (
            None,
            uid,
            None,
            if uid == 0 { "/root" } else { "/" }.to_string(),
        ),
        (None, Err(_)) => {
            return Err(format!(
                "no user {user_part:?} in the container's /etc/passwd"
            ));
        }
    };
    // group lines: name:password:gid:member,member
    let groups: Vec<Vec<&str>> = group_file
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let gid = match group_part {
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == group)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("no group {group:?} in the container's /etc/group"))?,
        },
        None => primary_gid.unwrap_or(uid),
    };
    let mut supplementary: Vec<u32> = vec![gid];
    if let Some(name) = &name {
        for f in &groups {
            if f[3].split(',').any(|member| member == name)
                && let Ok(extra) = f[2].parse::<u32>()
                && !supplementary.contains(&extra)
            {
                supplementary.push(extra);
            }
        }
    }
    Ok(User {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

/// /etc/passwd and /etc/group of the largest sites are a few MiB.
const MAX_ACCOUNT_FILE_BYTES: u64 = 16 << 20;

/// A file of the container, resolved as if `rootfs` were `/`; empty when missing, unreadable or not a
/// regular file. A `--rootfs` directory is written by the container's root, which may have left a FIFO
/// (open would block) or a node of /dev/zero (read would never end) where /etc/passwd was.
fn read_in_root(rootfs: &Path, relative: &str) -> String {
    let read = || -> std::io::Result<String> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = in_root::open(rootfs, relative, flags, Symlinks::InRoot)?;
        let stat = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Ok(String::new());
        }
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::fs::File::from(fd), MAX_ACCOUNT_FILE_BYTES),
            &mut text,
        )?;
        Ok(text)
    };
    read().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = root();
        let fifo = dir.path().join("etc/fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: plain mkfifo(3) with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // Would block forever opening a FIFO without a writer, or reading one.
        assert_eq!(read_in_root(dir.path(), "etc/fifo"), "");
        // A node of /dev/zero (tests run as root).
        let zero =
            std::ffi::CString::new(dir.path().join("etc/zero").as_os_str().as_encoded_bytes())
                .unwrap();
        // SAFETY: plain mknod(2) with a valid C string.
        let made =
            unsafe { libc::mknod(zero.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 5)) };
        assert_eq!(made, 0, "{}", std::io::Error::last_os_error());
        assert_eq!(read_in_root(dir.path(), "etc/zero"), "");
        assert!(read_in_root(dir.path(), "etc/passwd").starts_with("root:"));
    }

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:33:34:web:/var/www:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwww:x:34:\nlogs:x:4:web,other\nstaff:x:50:\n",
        )
        .unwrap();
        dir
    }

    fn user(uid: u32, gid: u32, groups: &[u32], home: &str) -> User {
        User {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.into(),
        }
    }

    #[test]
    fn names_and_numbers_resolve_in_the_containers_files() {
        let root = root();
        let r = |spec| resolve(spec, root.path());
        assert_eq!(r("web"), Ok(user(33, 34, &[34, 4], "/var/www")));
        assert_eq!(r("33"), Ok(user(33, 34, &[34, 4], "/var/www")));
        assert_eq!(r("web:staff"), Ok(user(33, 50, &[50, 4], "/var/www")));
        assert_eq!(r("1000"), Ok(user(1000, 1000, &[1000], "/")));
        assert_eq!(r("1000:5"), Ok(user(1000, 5, &[5], "/")));
        assert_eq!(r("0"), Ok(user(0, 0, &[0], "/root")));
        assert!(r("nobody").unwrap_err().contains("nobody"));
        assert!(r("web:nogroup").unwrap_err().contains("nogroup"));
    }

    #[test]
    fn a_symlinked_passwd_is_read_inside_the_root() {
        let root = root();
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        // An absolute link means <root>/etc/shadow-copy, never the host's file.
        std::os::unix::fs::symlink("/etc/passwd-elsewhere", root.path().join("etc/passwd"))
            .unwrap();
        assert!(resolve("root", root.path()).is_err());
        assert_eq!(resolve("0", root.path()), Ok(user(0, 0, &[0], "/root")));
    }

    #[test]
    fn spec_shapes() {
        assert!(parse_user_spec("1000:1000").is_ok());
        assert!(parse_user_spec("www-data").is_ok());
        assert!(parse_user_spec("").is_err());
        assert!(parse_user_spec("a:b:c").is_err());
        assert!(parse_user_spec("a b").is_err());
    }
}
