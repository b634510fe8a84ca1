//! The host's own files (/proc/meminfo, cpuinfo, stat, uptime, swaps, ...), the starting point of every
//! view and what a reader we cannot resolve gets verbatim. Reads can be cached for a short TTL: the
//! daemon serves thousands of reads a second and the host's values move slowly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cgroup::parse::parse_cpu_list;
use crate::error::{Error, Result, read_to_string};
use crate::lru::Lru;

/// Room for every [`HostFile`], so the host cache never evicts one.
const HOST_FILES: usize = 16;

/// A host file that views start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostFile {
    Meminfo,
    Cpuinfo,
    Stat,
    Uptime,
    Swaps,
    Loadavg,
    Diskstats,
    /// `/sys/devices/system/cpu/online`
    CpuOnline,
    CpuPossible,
    CpuPresent,
    /// `/proc/pressure/{cpu,io,memory}`
    Pressure(crate::files::Pressure),
}

impl HostFile {
    /// The file's path below the proc or sys root.
    fn path(self, roots: &HostRoots) -> PathBuf {
        match self {
            HostFile::Meminfo => roots.proc.join("meminfo"),
            HostFile::Cpuinfo => roots.proc.join("cpuinfo"),
            HostFile::Stat => roots.proc.join("stat"),
            HostFile::Uptime => roots.proc.join("uptime"),
            HostFile::Swaps => roots.proc.join("swaps"),
            HostFile::Loadavg => roots.proc.join("loadavg"),
            HostFile::Diskstats => roots.proc.join("diskstats"),
            HostFile::CpuOnline => roots.sys.join("devices/system/cpu/online"),
            HostFile::CpuPossible => roots.sys.join("devices/system/cpu/possible"),
            HostFile::CpuPresent => roots.sys.join("devices/system/cpu/present"),
            HostFile::Pressure(resource) => roots.proc.join("pressure").join(resource.name()),
        }
    }
}

/// The directories the host's files are read from: `/proc` and `/sys`, or fixture trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoots {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for HostRoots {
    fn default() -> Self {
        HostRoots {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// Reads host files, each cached for `ttl` (zero: always read).
#[derive(Debug)]
pub struct Host {
    roots: HostRoots,
    cache: Lru<HostFile, Arc<str>>,
}

impl Host {
    /// A host reader over `roots` whose reads may be up to `ttl` old.
    pub fn new(roots: HostRoots, ttl: Duration) -> Self {
        Host {
            roots,
            cache: Lru::new(HOST_FILES, ttl),
        }
    }

    /// The directories this host reader reads.
    pub fn roots(&self) -> &HostRoots {
        &self.roots
    }

    /// The content of `file`, at most `ttl` old.
    pub fn read(&self, file: HostFile) -> Result<Arc<str>> {
        self.cache.get_or_try_insert(&file, || {
            read_to_string(&file.path(&self.roots)).map(Arc::from)
        })
    }

    /// The host's online CPUs.
    pub fn online_cpus(&self) -> Result<Vec<u32>> {
        let text = self.read(HostFile::CpuOnline)?;
        parse_cpu_list(&text)
            .ok_or_else(|| Error::parse(&HostFile::CpuOnline.path(&self.roots), "cpu list", &text))
    }

    /// The host's `/sys/devices/system/cpu` directory.
    pub fn cpu_dir(&self) -> PathBuf {
        self.roots.sys.join("devices/system/cpu")
    }
}

/// The value in kB of `key` in meminfo text (`MemTotal:       16384 kB`).
pub fn meminfo_kb(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (k, rest) = line.split_once(':')?;
        (k == key)
            .then(|| rest.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}

/// The first number of /proc/uptime: seconds since boot.
pub fn uptime_seconds(uptime: &str) -> Option<f64> {
    uptime.split_whitespace().next()?.parse().ok()
}

/// Seconds since boot on CLOCK_BOOTTIME, the clock /proc/PID/stat start times count on.
pub fn boottime_now() -> f64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9);
    now.unwrap_or(0.0)
}

/// The path of `file` in process `pid`'s directory below the proc root (`<proc>/<pid>/cgroup`).
pub fn proc_path(roots: &HostRoots, pid: u32, file: &str) -> PathBuf {
    roots.proc.join(pid.to_string()).join(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_values() {
        let text =
            "MemTotal:       24576000 kB\nMemFree:        1000 kB\nHugePages_Total:       0\n";
        assert_eq!(meminfo_kb(text, "MemTotal"), Some(24576000));
        assert_eq!(meminfo_kb(text, "HugePages_Total"), Some(0));
        assert_eq!(meminfo_kb(text, "Mem"), None);
    }

    #[test]
    fn uptime_value() {
        assert_eq!(uptime_seconds("350735.47 234388.90\n"), Some(350735.47));
        assert_eq!(uptime_seconds(""), None);
    }
}
