//! /proc/PID/mountinfo lines: cgroup discovery reads the cgroup mounts, re-attaching finds the bind
//! mounts a dead daemon left in containers.

/// The fields of one /proc/PID/mountinfo line that vproc uses.
pub struct MountinfoLine<'a> {
    /// This mount's id and its parent's: a mount whose id is another's parent on the same path is
    /// covered by it.
    pub id: &'a str,
    pub parent: &'a str,
    /// The device of the mounted filesystem, `major:minor` (`0:58`): every mount of one FUSE connection
    /// shows the same one.
    pub device: &'a str,
    /// The path inside the filesystem that is mounted (`/proc/meminfo` for a bind of one file).
    pub root: String,
    /// Where it is mounted, relative to the reading process's root.
    pub mount_point: String,
    pub fstype: &'a str,
    /// The mount source (a FUSE filesystem's fsname).
    pub source: String,
    pub super_options: &'a str,
}

impl<'a> MountinfoLine<'a> {
    /// `36 35 98:0 /root /mnt rw,noatime master:1 - cgroup cgroup rw,memory`: four fixed fields, the
    /// mount point, options and optional fields up to `-`, then type, source and super options.
    pub fn parse(line: &'a str) -> Option<Self> {
        let (left, right) = line.split_once(" - ")?;
        let mut left = left.split(' ');
        let id = left.next()?;
        let parent = left.next()?;
        let device = left.next()?;
        let root = unescape(left.next()?);
        let mount_point = unescape(left.next()?);
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let source = unescape(right.next()?);
        let super_options = right.next().unwrap_or("");
        Some(MountinfoLine {
            id,
            parent,
            device,
            root,
            mount_point,
            fstype,
            source,
            super_options,
        })
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // The kernel escapes bytes as three octal digits (`\134` for a backslash); anything above
        // `\377` is not an escape and stays as written.
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| {
                let value = u16::from(d[0] - b'0') * 64 + u16::from(d[1] - b'0') * 8;
                u8::try_from(value + u16::from(d[2] - b'0')).ok()
            });
        match (bytes[i], escaped) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_above_a_byte_stay_as_written() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("\\134"), "\\");
        assert_eq!(unescape("x\\777y"), "x\\777y");
        assert_eq!(unescape("x\\400"), "x\\400");
    }

    #[test]
    fn parses_a_bind_mount_of_a_fuse_file() {
        let line = "812 790 0:58 /proc/meminfo /proc/meminfo ro,nosuid - fuse vprocd:/var/lib/lxcfs ro,user_id=0";
        let m = MountinfoLine::parse(line).unwrap();
        assert_eq!(
            (m.root.as_str(), m.mount_point.as_str()),
            ("/proc/meminfo", "/proc/meminfo")
        );
        assert_eq!(
            (m.fstype, m.source.as_str()),
            ("fuse", "vprocd:/var/lib/lxcfs")
        );
    }

    #[test]
    fn optional_fields_and_escapes() {
        let line = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue";
        let m = MountinfoLine::parse(line).unwrap();
        assert_eq!(m.mount_point, "/mnt two");
        assert_eq!(m.fstype, "ext3");
        assert!(MountinfoLine::parse("garbage").is_none());
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain\\"), "/plain\\");
    }
}
