//! Everything the daemon remembers between reads, in one place: resolved readers, pid-namespace inits,
//! per-cgroup usage snapshots and /proc/stat history. Each map is an [`Lru`] (the one eviction policy),
//! keyed by what the kernel identifies (a pid validated by its pidfd, a namespace inode, a cgroup
//! directory's inode), never by a path, and bounded by the budget below.
//!
//! | map | key | entries | fds | bytes per entry | kept |
//! |---|---|---|---|---|---|
//! | readers | pid + pidfd | [`Budget::readers`] (<= 8192, from RLIMIT_NOFILE) | 1 each | ~1 KiB (cgroup paths) | 250 ms after resolving |
//! | pid namespaces | `pid:[inode]` | 4096 | 0 | ~100 | 10 min, re-validated on use |
//! | memory usage | cgroup inode | 4096 | 0 | ~150 | one tick (10 ms) |
//! | cpu usage | cgroup inode | 4096 | 0 | ~50 | one tick (10 ms) |
//! | /proc/stat history | cgroup inode | 16384 | 0 | ~100 + 24 per CPU | 1 h after the last read |
//! | diskstats history | cgroup inode | 16384 | 0 | ~100 + 80 per device | 1 h after the last read |
//! | load averages | cgroup inode | 4096 | 0 | ~200 (cgroup path) | 15 min after the last read |
//! | task counts | cgroup inode | 4096 | 0 | ~70 | 1 s, or 50 times what the count cost |
//! | containers (`vproc status`) | cgroup inode | 4096 | 0 | ~1 KiB + cgroup path (a weak reference keeps the last resolution's allocation, not its paths) | 15 min after the last read |
//!
//! At most ~8 MiB of readers plus ~6 MiB for the rest, whatever containers do; an expired entry goes at
//! the next insert or sweep (the daemon sweeps every [`SWEEP_PERIOD`]).

use std::sync::Arc;
use std::time::Duration;

use super::{Container, PidNamespaces, ReaderCache};
use std::time::Instant;

use crate::cgroup::{CgroupDir, CgroupId, CpuUsage, DeviceIo, MemoryUsage, TaskCounts};
use crate::error::Result;
use crate::host::HostRoots;
use crate::lru::Lru;
use crate::metrics::ContainerStats;
use crate::metrics::exporter::CacheState;
use crate::view::loadavg::LoadAverages;
use crate::view::stat::CpuTimes;

/// Resolved readers at most, however many fds the daemon may open.
pub const MAX_READERS: usize = 8192;
/// Fds left to everything but reader pidfds: the FUSE device (one per worker), each worker's transient
/// kernel-file reads, the pidfile, logging, `vproc reattach`'s pipes.
pub const FD_RESERVE: u64 = 256;
/// Pid namespaces remembered at most.
pub const MAX_PID_NAMESPACES: usize = 4096;
/// Cgroups whose memory or CPU usage snapshot is kept at most (each of the two maps).
pub const MAX_USAGE_CGROUPS: usize = 4096;
/// Cgroups whose /proc/stat counters are remembered at most.
pub const MAX_STAT_HISTORY: usize = 16384;
/// How long a cgroup's /proc/stat counters are remembered after its last read. Between two reads of
/// top or htop the counters must not go backwards; after an hour of silence they cannot have caught up
/// with nothing (idle time alone has grown by an hour per CPU).
pub const STAT_HISTORY_TTL: Duration = Duration::from_secs(3600);
/// Cgroups whose load averages are kept (and sampled every 5 s) at most.
pub const MAX_LOAD_CGROUPS: usize = 4096;
/// A cgroup's load is sampled while it is read at least this often: idle containers cost nothing. A
/// container read again after a longer silence starts afresh, as on its first read.
pub const LOAD_SAMPLED_FOR: Duration = Duration::from_secs(15 * 60);
/// How old a cgroup's task counts (loadavg's running/total, /proc/stat's procs_running) may be. Counting
/// costs a /proc read per task on cgroup v2, so a container of 1,000 threads read in a tight loop costs
/// at most one count a second.
pub const TASK_COUNTS_TTL: Duration = Duration::from_secs(1);
/// How long a count is kept at most (see [`CountedTasks::is_fresh`] for how long it is used).
pub const TASK_COUNTS_KEPT: Duration = Duration::from_secs(60);
/// Containers whose reads are counted for `vproc status` at most.
pub const MAX_CONTAINERS: usize = 4096;
/// How long a container stays in `vproc status` after its last read.
pub const CONTAINER_KEPT: Duration = Duration::from_secs(15 * 60);
/// How often the daemon drops expired entries (and so closes the pidfds of readers gone).
pub const SWEEP_PERIOD: Duration = Duration::from_millis(250);

/// How many entries each map may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Resolved readers, each holding one pidfd.
    pub readers: usize,
    pub pid_namespaces: usize,
    pub usage_cgroups: usize,
    pub stat_history: usize,
    pub load_cgroups: usize,
}

impl Budget {
    /// The budget for a daemon that may have `open_files` fds open (its soft RLIMIT_NOFILE): half of
    /// what the reserve leaves goes to reader pidfds, so a burst of new readers never starves the
    /// kernel-file reads that serve them. Under systemd's default 1024: 384 readers; past them the least
    /// recently used reader is resolved again on its next read (correct, ~50 us slower).
    pub fn for_open_files(open_files: u64) -> Budget {
        let readers = open_files.saturating_sub(FD_RESERVE) / 2;
        Budget {
            readers: usize::try_from(readers)
                .unwrap_or(MAX_READERS)
                .clamp(1, MAX_READERS),
            pid_namespaces: MAX_PID_NAMESPACES,
            usage_cgroups: MAX_USAGE_CGROUPS,
            stat_history: MAX_STAT_HISTORY,
            load_cgroups: MAX_LOAD_CGROUPS,
        }
    }
}

/// How long entries live, from the daemon's options.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// A resolved reader (its cgroups and limits) is reused this long; zero: never.
    pub reader_ttl: Duration,
    /// A cgroup's usage figures are reused this long; zero: read on every render.
    pub usage_ttl: Duration,
}

/// Sizes of the registry's maps now, for the health report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub readers: usize,
    pub reader_capacity: usize,
    pub pid_namespaces: usize,
    pub usage_cgroups: usize,
    pub stat_history: usize,
    pub load_cgroups: usize,
}

/// A cgroup's tasks by state at one count, what loadavg's last field says from it, and what the count
/// cost: a count is reused for [`TASK_COUNTS_TTL`], or 50 times what it cost if longer, so reads of a
/// container of 16,000 threads cannot take more than 2% of a core each.
#[derive(Debug, Clone, Copy)]
pub struct CountedTasks {
    pub counts: TaskCounts,
    /// The newest task's pid in its own pid namespace (0: unknown).
    pub last_pid: u32,
    pub at: Instant,
    pub cost: Duration,
    /// The count failed (a cgroup tree the walk cannot get through): the host's files until it is
    /// tried again, so a failing count is not paid for on every read.
    pub failed: bool,
}

impl CountedTasks {
    /// True while the count may be reused.
    pub fn is_fresh(&self) -> bool {
        self.at.elapsed() < TASK_COUNTS_TTL.max(self.cost * 50)
    }
}

/// A cgroup whose load is being averaged.
#[derive(Debug, Clone)]
pub struct LoadEntry {
    /// Where the sampler counts its tasks.
    pub cgroup: CgroupDir,
    pub averages: LoadAverages,
    /// When the averages last took a step (or started).
    pub stepped_at: Instant,
    /// The tasks running or waiting at the last count, the cgroup's CPU time then (see
    /// [`crate::cgroup::CgroupDir::cpu_usage`]) and when it was.
    pub active: u32,
    pub cpu_time_at_count: Option<u64>,
    pub counted_at: Instant,
}

/// The owner of all per-reader and per-cgroup state.
#[derive(Debug)]
pub struct Registry {
    pub readers: ReaderCache<Container>,
    pub pid_namespaces: PidNamespaces,
    pub memory_usage: Lru<CgroupId, MemoryUsage>,
    pub cpu_usage: Lru<CgroupId, CpuUsage>,
    /// The last /proc/stat counters shown for each cpuacct cgroup, so they never go backwards.
    pub stat_history: Lru<CgroupId, CpuTimes>,
    /// The last diskstats counters shown for each io cgroup, so they never go backwards.
    pub disk_history: Lru<CgroupId, Vec<DeviceIo>>,
    /// Load averages of the cgroups read recently, stepped by the daemon's sampler.
    pub load: Lru<CgroupId, LoadEntry>,
    /// Each cgroup's tasks by state, a moment ago.
    pub task_counts: Lru<CgroupId, CountedTasks>,
    /// The reads of each container, for `vproc status` (keyed as [`crate::render::Renderer::container_key`]).
    pub containers: Lru<CgroupId, Arc<ContainerStats>>,
}

impl Registry {
    /// Empty maps within `budget`; namespaces are resolved below `roots`.
    pub fn new(roots: HostRoots, budget: Budget, freshness: Freshness) -> Result<Self> {
        Ok(Registry {
            readers: ReaderCache::new(budget.readers, freshness.reader_ttl),
            pid_namespaces: PidNamespaces::new(roots, budget.pid_namespaces)?,
            memory_usage: Lru::new(budget.usage_cgroups, freshness.usage_ttl),
            cpu_usage: Lru::new(budget.usage_cgroups, freshness.usage_ttl),
            stat_history: Lru::new(budget.stat_history, STAT_HISTORY_TTL),
            disk_history: Lru::new(budget.stat_history, STAT_HISTORY_TTL),
            load: Lru::new(budget.load_cgroups, LOAD_SAMPLED_FOR),
            task_counts: Lru::new(budget.load_cgroups, TASK_COUNTS_KEPT),
            containers: Lru::new(MAX_CONTAINERS, CONTAINER_KEPT),
        })
    }

    /// The counters to show for `cgroup`: `times`, raised to what was shown before where lower.
    pub fn monotonic_stat(&self, cgroup: CgroupId, times: CpuTimes) -> CpuTimes {
        self.stat_history.update(cgroup, |previous| match previous {
            Some(previous) => times.at_least(previous),
            None => times,
        })
    }

    /// The devices to show for `cgroup`: `devices`, each counter raised to what was shown before where
    /// lower (a device once shown stays).
    pub fn monotonic_disks(&self, cgroup: CgroupId, devices: Vec<DeviceIo>) -> Vec<DeviceIo> {
        self.disk_history.update(cgroup, |previous| {
            let mut shown: Vec<DeviceIo> = devices
                .iter()
                .map(|now| {
                    let before = previous.and_then(|p| {
                        p.iter()
                            .find(|d| d.major == now.major && d.minor == now.minor)
                    });
                    before.map_or(*now, |before| now.at_least(before))
                })
                .collect();
            for before in previous.into_iter().flatten() {
                if !shown
                    .iter()
                    .any(|d| d.major == before.major && d.minor == before.minor)
                {
                    shown.push(*before);
                }
            }
            shown
        })
    }

    /// Drops every expired entry; returns how many went.
    pub fn sweep(&self) -> usize {
        self.readers.sweep()
            + self.pid_namespaces.sweep()
            + self.memory_usage.sweep()
            + self.cpu_usage.sweep()
            + self.stat_history.sweep()
            + self.disk_history.sweep()
            + self.load.sweep()
            + self.task_counts.sweep()
            + self.containers.sweep()
    }

    /// Every map's occupancy, budget and evictions, for the metrics.
    pub fn caches(&self) -> Vec<CacheState> {
        fn state<K: std::hash::Hash + Eq + Clone, V: Clone>(
            name: &'static str,
            map: &Lru<K, V>,
        ) -> CacheState {
            CacheState {
                name,
                entries: map.len(),
                capacity: map.capacity(),
                evictions: map.evictions(),
            }
        }
        vec![
            CacheState {
                name: "readers",
                entries: self.readers.len(),
                capacity: self.readers.capacity(),
                evictions: self.readers.evictions(),
            },
            CacheState {
                name: "pid_namespaces",
                entries: self.pid_namespaces.len(),
                capacity: self.pid_namespaces.capacity(),
                evictions: self.pid_namespaces.evictions(),
            },
            state("memory_usage", &self.memory_usage),
            state("cpu_usage", &self.cpu_usage),
            state("stat_history", &self.stat_history),
            state("disk_history", &self.disk_history),
            state("load", &self.load),
            state("task_counts", &self.task_counts),
            state("containers", &self.containers),
        ]
    }

    /// How full the maps are.
    pub fn occupancy(&self) -> Occupancy {
        Occupancy {
            readers: self.readers.len(),
            reader_capacity: self.readers.capacity(),
            pid_namespaces: self.pid_namespaces.len(),
            usage_cgroups: self.memory_usage.len().max(self.cpu_usage.len()),
            stat_history: self.stat_history.len(),
            load_cgroups: self.load.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::stat::CpuTicks;

    #[test]
    fn the_reader_budget_follows_the_open_file_limit() {
        assert_eq!(Budget::for_open_files(1024).readers, 384);
        assert_eq!(Budget::for_open_files(524_288).readers, MAX_READERS);
        assert_eq!(Budget::for_open_files(100).readers, 1);
    }

    fn times(user: u64) -> CpuTimes {
        CpuTimes {
            per_cpu: vec![CpuTicks {
                user,
                system: 0,
                idle: 0,
            }],
        }
    }

    #[test]
    fn stat_history_is_kept_per_cgroup_identity_not_per_path() {
        let roots = HostRoots::default();
        let freshness = Freshness {
            reader_ttl: Duration::from_secs(1),
            usage_ttl: Duration::from_secs(1),
        };
        let registry = Registry::new(roots, Budget::for_open_files(1024), freshness).unwrap();
        let old = CgroupId { dev: 30, ino: 7 };
        let new = CgroupId { dev: 30, ino: 9 };
        assert_eq!(registry.monotonic_stat(old, times(156)), times(156));
        assert_eq!(registry.monotonic_stat(old, times(100)), times(156));
        assert_eq!(
            registry.monotonic_stat(new, times(3)),
            times(3),
            "a cgroup re-created on the old path starts from its own usage"
        );
    }

    #[test]
    fn a_costly_count_is_reused_longer() {
        let counted = |cost_ms: u64, age_ms: u64| CountedTasks {
            counts: TaskCounts::default(),
            last_pid: 0,
            at: Instant::now() - Duration::from_millis(age_ms),
            cost: Duration::from_millis(cost_ms),
            failed: false,
        };
        assert!(counted(1, 500).is_fresh());
        assert!(!counted(1, 1500).is_fresh(), "a cheap count lives 1 s");
        assert!(
            counted(100, 4000).is_fresh(),
            "100 ms of counting is reused for 5 s"
        );
        assert!(!counted(100, 5500).is_fresh());
    }
}
