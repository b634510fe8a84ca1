//! The pid namespace of a reader and the start time of that namespace's init, which is where the
//! container's uptime counts from.
//!
//! Finding the init: the kernel says which host pid is pid 1 of a namespace (`NS_GET_TGID_FROM_PIDNS`
//! on the namespace's fd, Linux 6.10+). Before that, the reader's parents are walked up to the
//! namespace's pid 1; a process that entered the namespace with setns (`docker exec`, `kubectl exec`,
//! `nsenter`) has its parent outside, so then the init is looked for among the processes of the
//! reader's cgroups and their ancestors (runtimes put exec'd processes in the container's cgroup).

use std::path::Path;
use std::time::Duration;

use crate::cgroup::ProcessCgroups;
use crate::error::{Error, Result, read_to_string};
use crate::host::{HostRoots, proc_path};
use crate::lru::Lru;

/// Where a reader's pid namespace stands relative to the daemon's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PidNamespace {
    /// The daemon's own (the host's): the reader gets the host's uptime.
    Host,
    /// A container's: its init is host pid `init_pid`, started `init_start_secs` after boot
    /// (CLOCK_BOOTTIME).
    Container { init_pid: u32, init_start_secs: f64 },
}

/// Finds pid-namespace inits, caching them per namespace (validated by the init's start time, since the
/// init's pid can be reused once the namespace is gone).
#[derive(Debug)]
pub struct PidNamespaces {
    roots: HostRoots,
    /// `pid:[4026531836]`, the daemon's own namespace.
    own: String,
    /// Keyed by the namespace's identity, `pid:[4026532301]` (its inode).
    inits: Lru<String, Init>,
    /// Namespaces whose init no way found, for [`UNFOUND_TTL`]: the cgroup search is not run again on
    /// every read from them.
    unfound: Lru<String, ()>,
}

#[derive(Debug, Clone, Copy)]
struct Init {
    pid: u32,
    start_ticks: u64,
}

/// What the init walk reads from /proc/PID/status.
struct Status {
    /// Number of nested pid namespaces the process is visible in.
    depth: usize,
    /// Its pid in its own (innermost) namespace.
    innermost_pid: u32,
    parent: u32,
    /// Its thread group (process) id, in this namespace and in its own (only [`TaskIds`] needs them,
    /// so the walk does not fail without them).
    tgid: Option<u32>,
    innermost_tgid: Option<u32>,
}

/// A task's ids: its process id (`Tgid`), and its thread and process ids in its own pid namespace
/// (the last of `NSpid` and `NStgid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskIds {
    pub tgid: u32,
    pub innermost_tid: u32,
    pub innermost_tgid: u32,
}

/// How long a namespace whose init was not found is not searched again (its readers get the host's
/// files meanwhile).
const UNFOUND_TTL: Duration = Duration::from_secs(2);

/// Cgroup directories [`PidNamespaces::init_in_cgroups`] reads at most, once per namespace.
const MAX_CGROUPS_SEARCHED: usize = 256;

/// How long a namespace's init is trusted without a check; each use re-validates it anyway (its start
/// time and namespace), so this only bounds how long a gone namespace is remembered.
const INIT_TTL: Duration = Duration::from_secs(600);

impl PidNamespaces {
    /// Reads the daemon's own namespace from `<proc>/self/ns/pid`; remembers at most `capacity` others.
    pub fn new(roots: HostRoots, capacity: usize) -> Result<Self> {
        let own = ns_link(&roots.proc.join("self/ns/pid"))?;
        Ok(PidNamespaces {
            roots,
            own,
            inits: Lru::new(capacity, INIT_TTL),
            unfound: Lru::new(capacity, UNFOUND_TTL),
        })
    }

    /// The pid namespace of `pid` and, for a container, when its init started; `reader_cgroups` gives
    /// the reader's cgroups, read only when nothing better finds the init (they are where it is looked
    /// for then).
    pub fn of(
        &self,
        pid: u32,
        reader_cgroups: impl FnOnce() -> Result<ProcessCgroups>,
    ) -> Result<PidNamespace> {
        let ns = ns_link(&proc_path(&self.roots, pid, "ns/pid"))?;
        if ns == self.own {
            return Ok(PidNamespace::Host);
        }
        let cached = self.inits.get(&ns);
        if let Some(init) = cached {
            if self.start_ticks(init.pid).ok() == Some(init.start_ticks)
                && ns_link(&proc_path(&self.roots, init.pid, "ns/pid"))
                    .ok()
                    .as_ref()
                    == Some(&ns)
            {
                return Ok(container(init.pid, init.start_ticks));
            }
        }
        let init_pid = match init_by_ioctl(&proc_path(&self.roots, pid, "ns/pid")) {
            Some(init) => init,
            None => self.walk_to_init(pid).or_else(|e| {
                if self.unfound.get(&ns).is_some() {
                    return Err(e);
                }
                let cgroups = reader_cgroups()?;
                let found = self.init_in_cgroups(pid, &ns, &cgroups);
                if found.is_none() {
                    self.unfound.insert(ns.clone(), ());
                }
                found.ok_or(e)
            })?,
        };
        let start_ticks = self.start_ticks(init_pid)?;
        self.inits.insert(
            ns,
            Init {
                pid: init_pid,
                start_ticks,
            },
        );
        Ok(container(init_pid, start_ticks))
    }

    /// Drops namespaces unused for [`INIT_TTL`].
    pub fn sweep(&self) -> usize {
        self.inits.sweep() + self.unfound.sweep()
    }

    /// Namespaces remembered now.
    pub fn len(&self) -> usize {
        self.inits.len()
    }

    /// The most namespaces remembered.
    pub fn capacity(&self) -> usize {
        self.inits.capacity()
    }

    /// Namespaces pushed out to make room for others.
    pub fn evictions(&self) -> u64 {
        self.inits.evictions()
    }

    /// True when no namespace is remembered.
    pub fn is_empty(&self) -> bool {
        self.inits.is_empty()
    }

    /// Walks up the parents of `pid` to the process that is pid 1 in the same namespace: the last
    /// `NSpid` entry is the pid in the innermost namespace, and the entry count is the nesting depth.
    fn walk_to_init(&self, pid: u32) -> Result<u32> {
        let depth = self.status(pid)?.depth;
        let mut current = pid;
        for _ in 0..4096 {
            let status = self.status(current)?;
            if status.depth != depth {
                break;
            }
            if status.innermost_pid == 1 {
                return Ok(current);
            }
            if status.parent == 0 {
                break;
            }
            current = status.parent;
        }
        Err(Error::MissingField {
            path: proc_path(&self.roots, pid, "status"),
            field: "pid namespace init",
        })
    }

    /// Pid 1 of namespace `ns` among the processes of the reader's cgroups, looking from each of them
    /// up through its ancestors below the hierarchy's root, and through each one's subtree: a
    /// container's init is in the container's cgroup, above the reader's sub-cgroup, or (v2, where a
    /// cgroup that delegates holds no process) in a sibling such as `<container>/init.scope`. At most
    /// [`MAX_CGROUPS_SEARCHED`] directories are read.
    fn init_in_cgroups(&self, pid: u32, ns: &str, cgroups: &ProcessCgroups) -> Option<u32> {
        let depth = self.status(pid).ok()?.depth;
        let dirs = [
            &cgroups.memory,
            &cgroups.cpu,
            &cgroups.cpuacct,
            &cgroups.cpuset,
        ];
        let mut searched = std::collections::HashSet::new();
        for dir in dirs.into_iter().flatten() {
            let mut ancestor = dir.path.as_path();
            while ancestor != dir.mount && ancestor.starts_with(&dir.mount) {
                let mut pending = vec![ancestor.to_path_buf()];
                while let Some(cgroup) = pending.pop() {
                    if searched.len() >= MAX_CGROUPS_SEARCHED {
                        return None;
                    }
                    if !searched.insert(cgroup.clone()) {
                        continue;
                    }
                    if let Some(init) = self.init_among(&cgroup, ns, depth) {
                        return Some(init);
                    }
                    for entry in std::fs::read_dir(&cgroup).into_iter().flatten().flatten() {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            pending.push(entry.path());
                        }
                    }
                }
                ancestor = ancestor.parent()?;
            }
        }
        None
    }

    /// The process of `cgroup` that is pid 1 of namespace `ns` (nested `depth` deep).
    fn init_among(&self, cgroup: &Path, ns: &str, depth: usize) -> Option<u32> {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        procs
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .find(|&candidate| {
                self.status(candidate)
                    .is_ok_and(|s| s.innermost_pid == 1 && s.depth == depth)
                    && ns_link(&proc_path(&self.roots, candidate, "ns/pid"))
                        .ok()
                        .as_deref()
                        == Some(ns)
            })
    }

    /// The pid of process `pid` in its own (innermost) pid namespace.
    pub fn innermost_pid(&self, pid: u32) -> Result<u32> {
        Ok(self.status(pid)?.innermost_pid)
    }

    /// Task `tid`'s ids (a thread's too: /proc/TID is there for every thread).
    pub fn task_ids(&self, tid: u32) -> Result<TaskIds> {
        let status = self.status(tid)?;
        let missing = |field| Error::MissingField {
            path: proc_path(&self.roots, tid, "status"),
            field,
        };
        Ok(TaskIds {
            tgid: status.tgid.ok_or_else(|| missing("Tgid"))?,
            innermost_tid: status.innermost_pid,
            innermost_tgid: status.innermost_tgid.ok_or_else(|| missing("NStgid"))?,
        })
    }

    /// The fields of /proc/PID/status the walk and [`Self::task_ids`] need: `NSpid:\t4242\t7`,
    /// `PPid:\t4100`, `Tgid:\t4242`, `NStgid:\t4242\t7`.
    fn status(&self, pid: u32) -> Result<Status> {
        let path = proc_path(&self.roots, pid, "status");
        let text = read_to_string(&path)?;
        let field = |name: &'static str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
                .ok_or_else(|| Error::MissingField {
                    path: path.clone(),
                    field: name,
                })
        };
        let nspid = field("NSpid")?;
        let pids: Vec<&str> = nspid.split_whitespace().collect();
        let innermost_pid = pids
            .last()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Error::parse(&path, "NSpid", nspid))?;
        let ppid = field("PPid")?;
        let parent = ppid
            .trim()
            .parse()
            .map_err(|_| Error::parse(&path, "PPid", ppid))?;
        let last = |name: &'static str| -> Option<u32> {
            field(name)
                .ok()?
                .split_whitespace()
                .next_back()?
                .parse()
                .ok()
        };
        Ok(Status {
            depth: pids.len(),
            innermost_pid,
            parent,
            tgid: last("Tgid"),
            innermost_tgid: last("NStgid"),
        })
    }

    /// Field 22 of /proc/PID/stat, the start time in clock ticks after boot.
    fn start_ticks(&self, pid: u32) -> Result<u64> {
        let path = proc_path(&self.roots, pid, "stat");
        let stat = read_to_string(&path)?;
        let field = super::stat_field(&stat, 22).unwrap_or("");
        field
            .parse()
            .map_err(|_| Error::parse(&path, "starttime", field))
    }
}

fn container(init_pid: u32, start_ticks: u64) -> PidNamespace {
    PidNamespace::Container {
        init_pid,
        init_start_secs: start_ticks as f64 / super::clock_ticks_per_second(),
    }
}

/// `NS_GET_TGID_FROM_PIDNS` = `_IOR(0xb7, 0x7, int)`: the pid, in the caller's namespace, of the
/// process whose pid is the argument in the namespace of the fd.
const NS_GET_TGID_FROM_PIDNS: libc::c_ulong = 0x8004_b707;

/// The host pid of pid 1 of the namespace at `ns_path` (a /proc/PID/ns/pid link), if the kernel can
/// say (Linux 6.10+) and the namespace is the reader's still.
fn init_by_ioctl(ns_path: &Path) -> Option<u32> {
    let fd = rustix::fs::open(
        ns_path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    // SAFETY: an ioctl on our own nsfs fd; the argument is a plain integer, no memory is passed.
    let init = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            NS_GET_TGID_FROM_PIDNS,
            1 as libc::c_ulong,
        )
    };
    u32::try_from(init).ok().filter(|&pid| pid > 0)
}

/// The target of a /proc/PID/ns/* link, `pid:[4026531836]`, which identifies the namespace.
fn ns_link(path: &Path) -> Result<String> {
    std::fs::read_link(path)
        .map(|target| target.to_string_lossy().into_owned())
        .map_err(|e| Error::io(path, e))
}
