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
}
