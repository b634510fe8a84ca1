//! The one table of what vproc serves: every virtual file and directory with its path below the
//! mountpoint, inode and content. The FUSE layer, `vproc show` and the bind-mount lists read it.

/// What a virtual file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Content {
    Meminfo,
    Cpuinfo,
    Stat,
    Uptime,
    Swaps,
    /// The container's load averages and task counts.
    Loadavg,
    /// The container's I/O on the devices it used.
    Diskstats,
    /// `proc/pressure/*`: the cgroup's pressure stall information on cgroup v2, the host's on v1.
    Pressure(Pressure),
    /// `sys/devices/system/cpu/online`, `possible` and `present`: `0-(N-1)`.
    CpuOnline,
    CpuPossible,
    CpuPresent,
}

/// The resources of proc/pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pressure {
    Cpu,
    Io,
    Memory,
}

impl Pressure {
    /// The file's name in /proc/pressure; the cgroup's file is `<name>.pressure`.
    pub fn name(self) -> &'static str {
        match self {
            Pressure::Cpu => "cpu",
            Pressure::Io => "io",
            Pressure::Memory => "memory",
        }
    }
}

/// A file below the mountpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualFile {
    /// Path below the mountpoint, e.g. `proc/meminfo`.
    pub path: &'static str,
    pub ino: u64,
    pub content: Content,
    /// Permission bits (read-only for everyone, like /proc).
    pub mode: u16,
    /// The name `vproc show` takes.
    pub show_name: &'static str,
    /// True when `vproc attach` and the launcher bind-mount this file over the container's own
    /// (`/proc/meminfo`). Files that still show the host's content are not bound: it would add nothing.
    pub bind: bool,
    /// True for files the kernel may lack (proc/pressure without PSI): bound only where the host has
    /// them, since a bind needs its target.
    pub optional: bool,
}

impl VirtualFile {
    /// The file's name in its directory.
    pub fn name(&self) -> &'static str {
        self.path.rsplit('/').next().unwrap_or(self.path)
    }

    /// The directory holding the file.
    pub fn parent(&self) -> &'static str {
        self.path.rsplit_once('/').map_or("", |(dir, _)| dir)
    }
}

/// A directory below the mountpoint; `""` is the mountpoint itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualDir {
    pub path: &'static str,
    pub ino: u64,
}

/// Permission bits of every virtual directory.
pub const DIR_MODE: u16 = 0o555;

impl VirtualDir {
    /// The directory's name in its parent.
    pub fn name(&self) -> &'static str {
        self.path.rsplit('/').next().unwrap_or(self.path)
    }

    /// The parent directory's path (`""` for top-level directories and the root).
    pub fn parent(&self) -> &'static str {
        self.path.rsplit_once('/').map_or("", |(dir, _)| dir)
    }
}

/// The FUSE root inode.
pub const ROOT_INO: u64 = 1;

/// The directory that also lists `cpu0..cpu(N-1)` and passes the host's other entries through.
pub const CPU_DIR: &str = "sys/devices/system/cpu";

/// The directory of the host's block devices, each with its `stat` in the container's numbers.
pub const BLOCK_DIR: &str = "sys/block";

/// Every virtual directory, parents before children.
pub const DIRS: &[VirtualDir] = &[
    VirtualDir {
        path: "",
        ino: ROOT_INO,
    },
    VirtualDir {
        path: "proc",
        ino: 2,
    },
    VirtualDir {
        path: "sys",
        ino: 3,
    },
    VirtualDir {
        path: "sys/devices",
        ino: 4,
    },
    VirtualDir {
        path: "sys/devices/system",
        ino: 5,
    },
    VirtualDir {
        path: CPU_DIR,
        ino: 6,
    },
    VirtualDir {
        path: "proc/pressure",
        ino: 7,
    },
    VirtualDir {
        path: BLOCK_DIR,
        ino: 8,
    },
];

/// Every virtual file.
pub const FILES: &[VirtualFile] = &[
    VirtualFile {
        path: "proc/meminfo",
        ino: 16,
        content: Content::Meminfo,
        mode: 0o444,
        show_name: "meminfo",
        bind: true,
        optional: false,
    },
    VirtualFile {
        path: "proc/cpuinfo",
        ino: 17,
        content: Content::Cpuinfo,
        mode: 0o444,
        show_name: "cpuinfo",
        bind: true,
        optional: false,
    },
    VirtualFile {
        path: "proc/stat",
        ino: 18,
        content: Content::Stat,
        mode: 0o444,
        show_name: "stat",
        bind: true,
        optional: false,
    },
    VirtualFile {
        path: "proc/uptime",
        ino: 19,
        content: Content::Uptime,
        mode: 0o444,
        show_name: "uptime",
        bind: true,
        optional: false,
    },
    VirtualFile {
        path: "proc/swaps",
        ino: 20,
        content: Content::Swaps,
        mode: 0o444,
        show_name: "swaps",
        bind: true,
        optional: false,
    },
    VirtualFile {
        path: "proc/loadavg",
        ino: 21,
        content: Content::Loadavg,
        mode: 0o444,
        show_name: "loadavg",
        bind: true,
        optional: false,
    },
    VirtualFile {
        path: "proc/diskstats",
        ino: 22,
        content: Content::Diskstats,
        mode: 0o444,
        show_name: "diskstats",
        bind: true,
        optional: false,
    },
    VirtualFile {
        path: "sys/devices/system/cpu/online",
        ino: 23,
        content: Content::CpuOnline,
        mode: 0o444,
        show_name: "cpu-online",
        bind: true,
        optional: false,
    },
    VirtualFile {
        path: "sys/devices/system/cpu/possible",
        ino: 24,
        content: Content::CpuPossible,
        mode: 0o444,
        show_name: "cpu-possible",
        bind: false,
        optional: false,
    },
    VirtualFile {
        path: "sys/devices/system/cpu/present",
        ino: 25,
        content: Content::CpuPresent,
        mode: 0o444,
        show_name: "cpu-present",
        bind: false,
        optional: false,
    },
    VirtualFile {
        path: "proc/pressure/cpu",
        ino: 26,
        content: Content::Pressure(Pressure::Cpu),
        mode: 0o444,
        show_name: "pressure-cpu",
        bind: true,
        optional: true,
    },
    VirtualFile {
        path: "proc/pressure/io",
        ino: 27,
        content: Content::Pressure(Pressure::Io),
        mode: 0o444,
        show_name: "pressure-io",
        bind: true,
        optional: true,
    },
    VirtualFile {
        path: "proc/pressure/memory",
        ino: 28,
        content: Content::Pressure(Pressure::Memory),
        mode: 0o444,
        show_name: "pressure-memory",
        bind: true,
        optional: true,
    },
];

/// Directories bound whole over the container's (their files are not bound one by one).
pub const BIND_DIRS: &[&str] = &[CPU_DIR];

/// Paths below the mountpoint that container tools bind over the same path in the container, e.g.
/// `proc/meminfo` over `/proc/meminfo`.
pub fn bind_targets() -> Vec<&'static str> {
    FILES
        .iter()
        .filter(|f| f.bind && !BIND_DIRS.contains(&f.parent()))
        .filter(|f| !f.optional || std::path::Path::new("/").join(f.path).exists())
        .map(|f| f.path)
        .chain(BIND_DIRS.iter().copied())
        .collect()
}

/// What container tools bind and where, below the mountpoint and below the container's root: every
/// [`bind_targets`] path over itself, and each host block device's `sys/block/NAME/stat` over the file
/// it is in sysfs (`sys/devices/.../NAME/stat`: sys/block holds symlinks, and binds go through none).
/// iostat reads the sysfs files, not /proc/diskstats.
pub fn bind_pairs() -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = bind_targets()
        .into_iter()
        .map(|t| (t.to_string(), t.to_string()))
        .collect();
    let mut devices: Vec<(String, String)> = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_string();
            let real = std::fs::canonicalize(entry.path()).ok()?;
            let real = real.strip_prefix("/").ok()?.to_str()?.to_string();
            real.starts_with("sys/devices/")
                .then(|| (format!("{BLOCK_DIR}/{name}/stat"), format!("{real}/stat")))
        })
        .collect();
    devices.sort();
    pairs.extend(devices);
    pairs
}

/// True for a name that can be a host block device's in sys/block: one path component, not `.` or
/// `..` (the kernel's own names, `vda`, `loop0`, `dm-1`, `nvme0n1`).
pub fn is_block_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// The hidden directory whose entries name the views of processes: `.by-pid/PID/proc/meminfo` is
/// PID's container's meminfo, for binds made from outside the container (see `fs::views`).
pub const BY_PID_DIR: &str = ".by-pid";

/// The file of the layout a bind mount of the daemon shows, from its mountinfo root: `/proc/meminfo`
/// on the shared mount, `/PID/proc/meminfo` on the views mount (see `fs::views`): `proc/meminfo`.
pub fn file_of_mount_root(root: &str) -> &str {
    split_mount_root(root).1
}

/// The pid a views mount's root names (`/PID/proc/meminfo`), if it names one.
pub fn pid_of_mount_root(root: &str) -> Option<u32> {
    split_mount_root(root).0?.parse().ok()
}

/// A mount root as the pid it names (its leading digits, on the views mount) and the file.
fn split_mount_root(root: &str) -> (Option<&str>, &str) {
    let relative = root.trim_start_matches('/');
    match relative.split_once('/') {
        Some((pid, file)) if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
            (Some(pid), file)
        }
        _ => (None, relative),
    }
}

/// True for `sys/block/NAME/stat`, a block device's statistics below the mountpoint.
pub fn is_block_stat(path: &str) -> bool {
    path.strip_prefix(BLOCK_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.strip_suffix("/stat"))
        .is_some_and(is_block_name)
}

/// Inodes from here up are handed out at run time (`cpuN` slots and host entries passed through).
pub const FIRST_DYNAMIC_INO: u64 = 1 << 16;

/// The file with this inode.
pub fn file_by_ino(ino: u64) -> Option<&'static VirtualFile> {
    FILES.iter().find(|f| f.ino == ino)
}

/// The directory with this inode.
pub fn dir_by_ino(ino: u64) -> Option<&'static VirtualDir> {
    DIRS.iter().find(|d| d.ino == ino)
}

/// The directory at this path.
pub fn dir_by_path(path: &str) -> Option<&'static VirtualDir> {
    DIRS.iter().find(|d| d.path == path)
}

/// The file `vproc show` calls `name`.
pub fn file_by_show_name(name: &str) -> Option<&'static VirtualFile> {
    FILES.iter().find(|f| f.show_name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_names_its_file_through_a_view_or_not() {
        assert_eq!(file_of_mount_root("/proc/meminfo"), "proc/meminfo");
        assert_eq!(file_of_mount_root("/4242/proc/meminfo"), "proc/meminfo");
        assert_eq!(file_of_mount_root("/x/proc/meminfo"), "x/proc/meminfo");
        assert_eq!(file_of_mount_root("/"), "");
    }
    use std::collections::HashSet;

    #[test]
    fn inodes_are_unique_and_below_the_dynamic_range() {
        let inos: Vec<u64> = DIRS
            .iter()
            .map(|d| d.ino)
            .chain(FILES.iter().map(|f| f.ino))
            .collect();
        assert_eq!(inos.iter().collect::<HashSet<_>>().len(), inos.len());
        assert!(inos.iter().all(|&i| i < FIRST_DYNAMIC_INO));
    }

    #[test]
    fn bind_targets_are_the_virtualized_files_and_the_cpu_directory() {
        assert_eq!(
            bind_targets(),
            [
                "proc/meminfo",
                "proc/cpuinfo",
                "proc/stat",
                "proc/uptime",
                "proc/swaps",
                "proc/loadavg",
                "proc/diskstats",
                "proc/pressure/cpu",
                "proc/pressure/io",
                "proc/pressure/memory",
                "sys/devices/system/cpu"
            ]
        );
    }

    #[test]
    fn block_stat_paths_name_one_device() {
        assert!(is_block_stat("sys/block/vda/stat"));
        assert!(is_block_stat("sys/block/dm-1/stat"));
        assert!(!is_block_stat("sys/block/../stat"));
        assert!(!is_block_stat("sys/block/a/b/stat"));
        assert!(!is_block_stat("sys/block//stat"));
        assert!(!is_block_stat("sys/block/vda/size"));
        assert!(!is_block_name("."));
    }

    #[test]
    fn every_file_has_a_parent_directory() {
        for file in FILES {
            assert!(dir_by_path(file.parent()).is_some(), "{}", file.path);
        }
        for dir in &DIRS[1..] {
            assert!(dir_by_path(dir.parent()).is_some(), "{}", dir.path);
        }
    }
}
