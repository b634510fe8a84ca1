//! Who is reading: a FUSE request's pid (a thread id in the daemon's pid namespace) resolved to its
//! cgroups and to the init of its pid namespace. Resolution costs several /proc reads (~10 us each),
//! so results are cached per pid, validated with a pidfd (pids are reused) and kept for a short TTL
//! (processes move between cgroups).

mod cache;
mod pidns;

pub use cache::ReaderCache;
pub use pidns::{PidNamespace, PidNamespaces};

use crate::cgroup::{CgroupLayout, ProcessCgroups};
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
