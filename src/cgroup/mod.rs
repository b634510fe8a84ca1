//! Cgroups: where each controller's hierarchy is mounted (v1 or v2), which cgroup a process is in, and
//! the limits, usage and statistics of that cgroup. Limits are effective limits: the minimum over the
//! cgroup and all its ancestors.
//!
//! Everything takes its root directories as parameters so tests run on fixture trees.

mod blockio;
mod layout;
pub mod parse;
mod tasks;
mod v1;
mod v2;

use std::io;
use std::path::{Path, PathBuf};

pub use blockio::DeviceIo;
pub use layout::{CgroupLayout, Hierarchy};
pub use tasks::{NEWEST_KEPT, TaskCounter, TaskCounts};

use crate::error::{Error, Result};

/// The cgroup versions; a hybrid host mixes both, one per controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The controllers vproc knows: the views read the first four, `vproc run` also limits pids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Cpu,
    Cpuacct,
    Cpuset,
    Pids,
    /// v1 only: on v2 device access is a BPF program of the cgroup, not a controller.
    Devices,
    /// Block I/O: v1 `blkio`, v2 `io`.
    Io,
}

impl Controller {
    /// All controllers, in a fixed order.
    pub const ALL: [Controller; 7] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Cpuset,
        Controller::Pids,
        Controller::Devices,
        Controller::Io,
    ];

    /// The controllers a reader's cgroups are resolved for (what the views read).
    pub const VIEWED: [Controller; 5] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Cpuset,
        Controller::Io,
    ];

    /// The controller's v1 name, in /proc/PID/cgroup and mount options.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Pids => "pids",
            Controller::Devices => "devices",
            Controller::Io => "blkio",
        }
    }

    /// The v2 controller that does this one's work, as `cgroup.controllers` and
    /// `cgroup.subtree_control` name it (cpuacct has none of its own: v2 `cpu.stat` carries usage).
    pub fn v2_name(self) -> &'static str {
        match self {
            Controller::Cpuacct => "cpu",
            Controller::Io => "io",
            other => other.name(),
        }
    }
}

/// One cgroup directory on disk, with the mount point of its hierarchy (where the walk up stops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    pub version: Version,
    /// The cgroup's directory, e.g. `/sys/fs/cgroup/memory/docker/abc`.
    pub path: PathBuf,
    /// The hierarchy's mount point, e.g. `/sys/fs/cgroup/memory`.
    pub mount: PathBuf,
}

/// What a cgroup is, as opposed to where it is: the device and inode of its directory. A cgroup removed
/// and created again at the same path (a restarted container) is a new cgroup with a new inode; kernfs
/// does not reuse inode numbers (on 64-bit the inode is the kernfs node id, a generation in its upper
/// half), and on v2 it is also the cgroup id (`name_to_handle_at`, bpf's `cgroup_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CgroupId {
    pub dev: u64,
    pub ino: u64,
}

impl std::fmt::Display for CgroupId {
    /// `DEV:INO`, as `vproc status` shows a container's key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

/// The cgroups of one process, per controller; `None` where the controller is not mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessCgroups {
    pub memory: Option<CgroupDir>,
    pub cpu: Option<CgroupDir>,
    pub cpuacct: Option<CgroupDir>,
    pub cpuset: Option<CgroupDir>,
    /// v1 blkio, v2 io.
    pub io: Option<CgroupDir>,
}

impl ProcessCgroups {
    /// The cgroup of `controller`, if that controller is mounted and one of [`Controller::VIEWED`].
    pub fn get(&self, controller: Controller) -> Option<&CgroupDir> {
        match controller {
            Controller::Memory => self.memory.as_ref(),
            Controller::Cpu => self.cpu.as_ref(),
            Controller::Cpuacct => self.cpuacct.as_ref(),
            Controller::Cpuset => self.cpuset.as_ref(),
            Controller::Io => self.io.as_ref(),
            Controller::Pids | Controller::Devices => None,
        }
    }

    /// The same cgroups with systemd's `init.scope` left out: the init of a container that runs systemd
    /// sits in `<container>/init.scope`, and the container is its parent.
    pub fn without_init_scope(mut self) -> Self {
        for dir in [
            &mut self.memory,
            &mut self.cpu,
            &mut self.cpuacct,
            &mut self.cpuset,
            &mut self.io,
        ]
        .into_iter()
        .flatten()
        {
            if dir.path.file_name().is_some_and(|n| n == "init.scope")
                && let Some(parent) = dir.path.parent()
                && parent.starts_with(&dir.mount)
            {
                dir.path = parent.to_path_buf();
            }
        }
        self
    }

    /// For each controller, `outer`'s cgroup where it holds this one (is it or an ancestor of it, in
    /// the same hierarchy), else this one.
    pub fn within(self, outer: ProcessCgroups) -> ProcessCgroups {
        let pick = |own: Option<CgroupDir>, outer: Option<CgroupDir>| match (own, outer) {
            (Some(own), Some(outer))
                if outer.mount == own.mount && own.path.starts_with(&outer.path) =>
            {
                Some(outer)
            }
            (own, _) => own,
        };
        ProcessCgroups {
            memory: pick(self.memory, outer.memory),
            cpu: pick(self.cpu, outer.cpu),
            cpuacct: pick(self.cpuacct, outer.cpuacct),
            cpuset: pick(self.cpuset, outer.cpuset),
            io: pick(self.io, outer.io),
        }
    }

    /// Where the cgroup of a [`Controller::VIEWED`] controller goes.
    fn slot(&mut self, controller: Controller) -> Option<&mut Option<CgroupDir>> {
        match controller {
            Controller::Memory => Some(&mut self.memory),
            Controller::Cpu => Some(&mut self.cpu),
            Controller::Cpuacct => Some(&mut self.cpuacct),
            Controller::Cpuset => Some(&mut self.cpuset),
            Controller::Io => Some(&mut self.io),
            Controller::Pids | Controller::Devices => None,
        }
    }
}

/// How swap is limited for a cgroup; the view turns it into SwapTotal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapLimit {
    /// The kernel does not account swap for this cgroup (no `memory.swap.max` / `memory.memsw.*`).
    NotAccounted,
    /// v2 `memory.swap.max`: a limit on swap alone (`None`: unlimited).
    SwapOnly(Option<u64>),
    /// v1 `memory.memsw.limit_in_bytes`: a limit on memory plus swap (`None`: unlimited).
    MemoryPlusSwap(Option<u64>),
}

/// Effective memory limits of a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Minimum of the memory limits over the cgroup and its ancestors; `None`: unlimited.
    pub limit_bytes: Option<u64>,
    pub swap: SwapLimit,
}

/// The `memory.stat` figures the views use, normalized across versions (v1: hierarchical `total_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStat {
    pub anon: u64,
    pub file: u64,
    pub active_anon: u64,
    pub inactive_anon: u64,
    pub active_file: u64,
    pub inactive_file: u64,
    pub unevictable: u64,
    pub shmem: u64,
    pub mapped: u64,
    pub dirty: u64,
    pub writeback: u64,
    /// v2 only; v1 has no per-cgroup slab breakdown.
    pub slab_reclaimable: Option<u64>,
    pub slab_unreclaimable: Option<u64>,
}

/// Current memory use of a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// v2 `memory.current`, v1 `memory.usage_in_bytes`.
    pub usage_bytes: u64,
    /// v2 `memory.swap.current`, v1 memsw usage minus usage; `None` without swap accounting.
    pub swap_used_bytes: Option<u64>,
    pub stat: MemoryStat,
}

/// A CFS bandwidth limit: `quota_us` of CPU time every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuQuota {
    /// The number of whole CPUs the quota allows, rounded up and at least 1
    /// (50000/100000 -> 1, 150000/100000 -> 2).
    pub fn cpus_ceil(self) -> u32 {
        let period = self.period_us.max(1);
        let cpus = self.quota_us.div_ceil(period).max(1);
        u32::try_from(cpus).unwrap_or(u32::MAX)
    }

    /// True when `self` allows less CPU time than `other` (compared as quota/period, without division).
    pub fn is_tighter_than(self, other: CpuQuota) -> bool {
        u128::from(self.quota_us) * u128::from(other.period_us)
            < u128::from(other.quota_us) * u128::from(self.period_us)
    }
}

/// CPU time a cgroup has consumed since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUsage {
    pub user_ns: u64,
    pub system_ns: u64,
}

impl CgroupDir {
    /// True for the root of the hierarchy (the host's own cgroup, or a container's namespace root).
    pub fn is_root(&self) -> bool {
        self.path == self.mount
    }

    /// The identity of the cgroup now at this path.
    pub fn id(&self) -> Result<CgroupId> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(CgroupId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Effective memory and swap limits.
    pub fn memory_limits(&self) -> Result<MemoryLimits> {
        match self.version {
            Version::V1 => v1::memory_limits(self),
            Version::V2 => v2::memory_limits(self),
        }
    }

    /// Current memory use and statistics.
    pub fn memory_usage(&self) -> Result<MemoryUsage> {
        match self.version {
            Version::V1 => v1::memory_usage(self),
            Version::V2 => v2::memory_usage(self),
        }
    }

    /// The tightest CFS quota over the cgroup and its ancestors; `None`: unlimited.
    pub fn cpu_quota(&self) -> Result<Option<CpuQuota>> {
        match self.version {
            Version::V1 => v1::cpu_quota(self),
            Version::V2 => v2::cpu_quota(self),
        }
    }

    /// The CPUs the cgroup may run on; `None` when no level of the hierarchy names any.
    pub fn cpuset(&self) -> Result<Option<Vec<u32>>> {
        match self.version {
            Version::V1 => v1::cpuset(self),
            Version::V2 => v2::cpuset(self),
        }
    }

    /// The cgroup's block I/O per device; `None` where the kernel keeps none for it.
    pub fn device_io(&self) -> Result<Option<Vec<DeviceIo>>> {
        blockio::device_io(self)
    }

    /// The cgroup's `<resource>.pressure` (v2 with PSI); `None` where there is none.
    pub fn pressure(&self, resource: &str) -> Result<Option<String>> {
        self.read_optional(&format!("{resource}.pressure"))
    }

    /// CPU time consumed by the cgroup.
    pub fn cpu_usage(&self) -> Result<CpuUsage> {
        match self.version {
            Version::V1 => v1::cpu_usage(self),
            Version::V2 => v2::cpu_usage(self),
        }
    }

    /// The cgroup's directory and each ancestor's, up to and including the hierarchy's mount point.
    fn self_and_ancestors(&self) -> impl Iterator<Item = &Path> {
        self.path
            .ancestors()
            .take_while(|dir| dir.starts_with(&self.mount))
    }

    /// Reads `file` in this cgroup's directory.
    fn read(&self, file: &str) -> Result<String> {
        crate::error::read_to_string(&self.path.join(file))
    }

    /// Reads `file` in this cgroup; `Ok(None)` if the kernel does not provide it.
    fn read_optional(&self, file: &str) -> Result<Option<String>> {
        read_optional(&self.path.join(file))
    }

    /// The minimum of a per-level limit over this cgroup and its ancestors. `read_level` returns
    /// `None` for "no limit at this level"; levels that lack the file (the v2 root) count as no limit.
    fn min_over_ancestors<T>(
        &self,
        mut read_level: impl FnMut(&Path) -> Result<Option<T>>,
        tighter: impl Fn(&T, &T) -> bool,
    ) -> Result<Option<T>> {
        let mut best: Option<T> = None;
        for dir in self.self_and_ancestors() {
            if let Some(level) = read_level(dir)? {
                if best.as_ref().is_none_or(|b| tighter(&level, b)) {
                    best = Some(level);
                }
            }
        }
        Ok(best)
    }

    /// The first non-empty CPU list in `file`, walking up from this cgroup.
    fn nearest_cpu_list(&self, file: &str) -> Result<Option<Vec<u32>>> {
        for dir in self.self_and_ancestors() {
            let path = dir.join(file);
            if let Some(text) = read_optional(&path)? {
                let cpus = parse::parse_cpu_list(&text)
                    .ok_or_else(|| Error::parse(&path, "cpu list", &text))?;
                if !cpus.is_empty() {
                    return Ok(Some(cpus));
                }
            }
        }
        Ok(None)
    }

    /// Effective memory limits from the version's limit file and swap-limit file; the swap file exists
    /// only where the kernel accounts swap. `swap_kind` says what the swap file limits.
    fn memory_limits_from(
        &self,
        limit_file: &str,
        swap_file: &str,
        swap_kind: fn(Option<u64>) -> SwapLimit,
    ) -> Result<MemoryLimits> {
        let limit_bytes = self.min_limit_over_ancestors(limit_file)?;
        let swap = if self.path.join(swap_file).exists() {
            swap_kind(self.min_limit_over_ancestors(swap_file)?)
        } else {
            SwapLimit::NotAccounted
        };
        Ok(MemoryLimits { limit_bytes, swap })
    }

    /// Reads a memory-style limit file at every level and returns the smallest limit.
    fn min_limit_over_ancestors(&self, file: &str) -> Result<Option<u64>> {
        self.min_over_ancestors(
            |dir| {
                let path = dir.join(file);
                match read_optional(&path)? {
                    None => Ok(None),
                    Some(text) => {
                        parse::parse_limit(&text).ok_or_else(|| Error::parse(&path, "limit", &text))
                    }
                }
            },
            |a, b| a < b,
        )
    }
}

/// Reads a file; `Ok(None)` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Parses a single-number file such as `memory.current`.
fn parse_number(path: &Path, field: &'static str, text: &str) -> Result<u64> {
    text.trim()
        .parse()
        .map_err(|_| Error::parse(path, field, text))
}
