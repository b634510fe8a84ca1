//! Who is reading: a FUSE request's pid (a thread id in the daemon's pid namespace) resolved to its
//! cgroups and to the init of its pid namespace. Resolution costs several /proc reads (~10 us each),
//! so results are cached per pid, validated with a pidfd (pids are reused) and kept for a short TTL
//! (processes move between cgroups).

mod cache;
mod pidns;
mod registry;

pub use cache::ReaderCache;
pub use pidns::{PidNamespace, PidNamespaces};
pub use registry::{
    Budget, CountedTasks, FD_RESERVE, Freshness, LoadEntry, MAX_READERS, Occupancy, Registry,
    SWEEP_PERIOD,
};

use crate::cgroup::{CgroupId, CgroupLayout, MemoryLimits, ProcessCgroups};
use crate::error::{Result, read_to_string};
use crate::host::{HostRoots, proc_path};

/// Reads and resolves /proc/PID/cgroup.
pub fn process_cgroups(
    roots: &HostRoots,
    layout: &CgroupLayout,
    pid: u32,
) -> Result<ProcessCgroups> {
    let path = proc_path(roots, pid, "cgroup");
    let text = read_to_string(&path)?;
    layout.resolve(&text, &path)
}

/// Field `n` of a /proc/PID/stat line, numbered as proc(5) numbers them (3 is the state, 22 the start
/// time). The command name (field 2) may hold spaces and parentheses, so fields are counted after its
/// last `)`; `None` for a field the line does not have (or for 1 and 2).
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_whitespace().nth(n.checked_sub(3)?)
}

/// sysconf(_SC_CLK_TCK), the unit of /proc/PID/stat times (100 everywhere in practice).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// A resolved reader: its cgroups and the limits that apply to it. Limits are cached with the reader
/// (they change rarely); usage is read on every render (within the usage TTL).
#[derive(Debug)]
pub struct Container {
    pub cgroups: ProcessCgroups,
    /// The memory cgroup's identity and effective limits; `None` when the reader's memory cgroup is the
    /// root: it gets the host's meminfo.
    pub memory: Option<(CgroupId, MemoryLimits)>,
    /// The cpuacct cgroup's identity (what its CPU time and /proc/stat history are kept under).
    pub cpuacct: Option<CgroupId>,
    /// The host CPUs it sees; `None` when its cpu and cpuset cgroups are the root: host CPU files.
    pub cpus: Option<Vec<u32>>,
    pub pidns: PidNamespace,
    /// The identities of its memory, cpu, cpuacct, cpuset and io cgroups, in that order: with the pid
    /// namespace, what its files are a function of (a view of the mount, see `fs::views`).
    pub identity: [Option<CgroupId>; 5],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_s_last_parenthesis() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 7 0 1000 123456789 300";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 14), Some("250"));
        assert_eq!(stat_field(stat, 22), Some("1000"));
        assert_eq!(stat_field(stat, 24), Some("300"));
        assert_eq!(stat_field(stat, 25), None);
        assert_eq!(stat_field(stat, 2), None);
        assert_eq!(stat_field("no parenthesis", 3), None);
    }
}
