//! One read, end to end: resolve the reader (cached), read its cgroup's limits and usage and the host's
//! file, and hand both to the view. The FUSE layer and `vproc show` both call [`Renderer::render`].
//!
//! A reader that cannot be resolved (pid 0, gone, in an unknown cgroup) gets the host's own file, what it
//! would have read without us, and the cause is logged once rather than on every read.

use std::sync::Arc;
use std::time::Duration;

use crate::cgroup::{
    CgroupDir, CgroupId, CgroupLayout, CpuUsage, DeviceIo, ProcessCgroups, TaskCounter, TaskCounts,
};
use crate::error::{Error, Result};
use crate::files::Content;
use crate::health::Health;
use crate::host::{Host, HostFile, HostRoots, boottime_now, meminfo_kb, uptime_seconds};
use crate::lru::Lru;
use crate::metrics::containers::{Resolved, Seen};
use crate::metrics::{self, ContainerStats, ContainersPage, Fallback, Metrics, Target};
use crate::reader::{
    Budget, Container, CountedTasks, Freshness, LoadEntry, PidNamespace, Registry, process_cgroups,
};
use crate::view::cpuinfo::render_cpuinfo;
use crate::view::cpus::{CpuCountRule, render_cpu_range, visible_cpus};
use crate::view::diskstats::{DiskLine, render_block_stat, render_diskstats};
use crate::view::loadavg::{LOAD_PERIOD, LoadAverages, LoadTasks, host_last_pid, render_loadavg};
use crate::view::meminfo::{MemoryFacts, mem_total_kb, render_meminfo, swap_view};
use crate::view::stat::{CpuTimes, Procs, render_stat};
use crate::view::swaps::render_swaps;
use crate::view::uptime::render_uptime;

/// How the daemon renders, from its command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub cpu_rule: CpuCountRule,
    /// False with `--disable-swap`.
    pub swap_enabled: bool,
    /// How long a resolved reader (cgroups, limits, pid-namespace init) is reused; zero: never.
    pub reader_ttl: Duration,
    /// How old a cgroup's usage figures and the host's files may be; zero: read them on every render.
    pub usage_ttl: Duration,
    /// How much per-reader and per-cgroup state may be kept.
    pub budget: Budget,
}

/// The daemon's usage freshness: one USER_HZ tick, the granularity at which /proc/stat itself moves, so
/// no reader can tell the window from the kernel's own. At thousands of reads a second it turns four
/// kernel file reads (~60 us) per read into about one per tick per cgroup.
pub const DAEMON_USAGE_TTL: Duration = Duration::from_millis(10);

impl Default for Options {
    fn default() -> Self {
        Options {
            cpu_rule: CpuCountRule::default(),
            swap_enabled: true,
            reader_ttl: Duration::from_millis(250),
            usage_ttl: DAEMON_USAGE_TTL,
            budget: Budget::for_open_files(1024),
        }
    }
}

/// Causes of fallbacks remembered, so each is logged once (again after [`LOG_AGAIN_AFTER`]).
const MAX_LOGGED_CAUSES: usize = 1024;
/// A cause still happening is logged again after this long, so an ongoing problem stays in the log.
const LOG_AGAIN_AFTER: Duration = Duration::from_secs(600);

/// Who a rendering is for.
#[derive(Debug, Clone)]
pub enum Sight {
    /// A reader resolved to its container (for the host's own processes, the host's cgroups).
    Container(Arc<Container>),
    /// A reader that cannot be told: it gets the host's files, for this reason.
    Unresolved(Fallback),
}

/// Renders virtual files for readers.
#[derive(Debug)]
pub struct Renderer {
    host: Host,
    layout: CgroupLayout,
    registry: Registry,
    options: Options,
    logged_causes: Lru<String, ()>,
    health: Health,
    /// Counts a cgroup's tasks by state (load, procs_running).
    tasks: TaskCounter,
    /// Off after a SIGUSR2 (LXCFS's switch): every reader gets the host's files until the next one.
    virtualizing: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

impl Renderer {
    /// A renderer over the given host roots and cgroup layout.
    pub fn new(roots: HostRoots, layout: CgroupLayout, options: Options) -> Result<Self> {
        let freshness = Freshness {
            reader_ttl: options.reader_ttl,
            usage_ttl: options.usage_ttl,
        };
        let roots_proc = roots.proc.clone();
        Ok(Renderer {
            registry: Registry::new(roots.clone(), options.budget, freshness)?,
            host: Host::new(roots, options.usage_ttl),
            layout,
            options,
            logged_causes: Lru::new(MAX_LOGGED_CAUSES, LOG_AGAIN_AFTER),
            health: Health::default(),
            tasks: TaskCounter::new(&roots_proc),
            virtualizing: std::sync::atomic::AtomicBool::new(true),
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// Switches the per-container views off (every reader gets the host's files) or on again; the
    /// state it was in.
    pub fn set_virtualizing(&self, on: bool) -> bool {
        self.virtualizing
            .swap(on, std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether readers get their containers' views (true unless switched off).
    pub fn virtualizing(&self) -> bool {
        self.virtualizing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The host files this renderer reads.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The state kept between reads.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Whether the daemon serves what it should, or falls back to the host's files by its own fault.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The file `content` as process `pid` sees it. Fails only when the host's own file is unreadable,
    /// which counts against the daemon's health.
    pub fn render(&self, content: Content, pid: u32) -> Result<Vec<u8>> {
        self.render_as(content, pid, Use::Read)
    }

    /// The same bytes as [`Renderer::render`], for a size (a stat): a stat starts no load history.
    /// The first read does: a runtime's stat of a bind's source while it sets the container up
    /// (before the container runs anything) must not start the averages at that moment's count.
    pub fn render_for_size(&self, content: Content, pid: u32) -> Result<Vec<u8>> {
        self.render_as(content, pid, Use::Size)
    }

    fn render_as(&self, content: Content, pid: u32, usage: Use) -> Result<Vec<u8>> {
        // Views switched off resolve nobody.
        let sight = if self.virtualizing() {
            self.sight(pid)
        } else {
            Sight::Unresolved(Fallback::ViewsOff)
        };
        self.render_in(content, &sight, pid, usage)
    }

    /// Who process `pid` is for the files: its container (resolved now, or kept from a read less than
    /// the reader TTL ago), or why it cannot be told (the cause logged once).
    pub fn sight(&self, pid: u32) -> Sight {
        if pid == 0 {
            return Sight::Unresolved(Fallback::NoPid);
        }
        match self.container(pid) {
            Ok(container) => Sight::Container(container),
            Err(e) => Sight::Unresolved(self.log_once(&e)),
        }
    }

    /// The file `content` as `sight` shows it, rendered for reader `pid` (counted as running in
    /// /proc/stat and loadavg; 0 when no reader asked). Fails only when the host's own file is
    /// unreadable, which counts against the daemon's health.
    pub fn render_in(
        &self,
        content: Content,
        sight: &Sight,
        pid: u32,
        usage: Use,
    ) -> Result<Vec<u8>> {
        let (cause, resolved) = match sight {
            _ if !self.virtualizing() => (Fallback::ViewsOff, None),
            Sight::Unresolved(cause) => (*cause, None),
            Sight::Container(container) => {
                let cause = match self.render_for(content, container, pid, usage) {
                    Ok(Some(bytes)) => {
                        if usage != Use::Size {
                            self.count_read(content, pid, Some(container), None);
                        }
                        return Ok(bytes);
                    }
                    Ok(None) if key_of(container).is_none() => Fallback::HostProcess,
                    Ok(None) => Fallback::NotLimited,
                    Err(e) => self.log_once(&e),
                };
                (cause, Some(container))
            }
        };
        if usage != Use::Size {
            self.count_read(content, pid, resolved, Some(cause));
        }
        self.render_host(content)
            .inspect_err(|e| self.health.record(e))
    }

    /// A READ of `content` reached the daemon for `sight`: the container's load averages start now if
    /// they have not (a description before the first read, a runtime's lookup, starts nothing).
    pub fn started_reading(&self, content: Content, sight: &Sight, pid: u32) {
        let (Content::Loadavg, Sight::Container(container), true) =
            (content, sight, self.virtualizing())
        else {
            return;
        };
        // Kept as long as it is read, like a rendering's read kept it.
        if let Ok(Some((cgroup, id, counted))) = self.task_counts(container, pid, Use::Read) {
            let active = counted.counts.active();
            self.registry.load.update(id, |previous| match previous {
                Some(entry) => entry.clone(),
                None => LoadEntry {
                    cgroup: cgroup.clone(),
                    averages: LoadAverages::starting_at(active),
                    stepped_at: std::time::Instant::now(),
                    active,
                    cpu_time_at_count: None,
                    counted_at: std::time::Instant::now(),
                },
            });
        }
    }

    /// `container` with its limits read again (the same cgroups and pid namespace): what a view kept
    /// for longer than a reader shows when a limit changes.
    pub fn refreshed(&self, container: &Container) -> Result<Container> {
        self.limits_of(container.cgroups.clone(), container.pidns)
    }

    /// Counts a read of `content` by `pid` (resolved to `container`), for the metrics and under its
    /// container for `vproc status`; `fallback` says why it got the host's file.
    fn count_read(
        &self,
        content: Content,
        pid: u32,
        container: Option<&Arc<Container>>,
        fallback: Option<Fallback>,
    ) {
        if let Some(cause) = fallback {
            self.metrics.fallback(Target::of_content(content), cause);
        }
        let keyed = container.and_then(|c| key_of(c).map(|key| (key, c)));
        let stats = match keyed {
            Some((key, c)) => self
                .registry
                .containers
                .update(key, |previous| match previous {
                    Some(stats) => Arc::clone(stats),
                    None => Arc::new(ContainerStats::new(key, cgroup_name(c))),
                }),
            None => Arc::clone(self.metrics.outside()),
        };
        stats.read(pid, container, resolved_for_status, fallback);
    }

    /// What the daemon counts.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The page of `vproc status`'s table after the container `after` (`None`: the first page).
    pub fn containers_page(&self, after: Option<CgroupId>) -> ContainersPage {
        let mut stats: Vec<_> = self
            .registry
            .containers
            .snapshot()
            .into_iter()
            .map(|(_, stats)| stats)
            .collect();
        if self.metrics.outside().reads() > 0 {
            stats.push(Arc::clone(self.metrics.outside()));
        }
        let host_total_kb = self
            .host
            .read(HostFile::Meminfo)
            .ok()
            .and_then(|m| meminfo_kb(&m, "MemTotal"));
        let online = self.host.online_cpus().ok().map(|cpus| cpus.len());
        metrics::containers::page(stats, after, |stats| {
            stats.row(|resolved| Seen {
                mem_total_kb: match resolved.memory {
                    Some(limits) => host_total_kb.map(|host| mem_total_kb(host, &limits)),
                    None => host_total_kb,
                },
                cpus: resolved.cpus.or(online),
                load: resolved
                    .load_key
                    .and_then(|id| self.registry.load.peek(&id))
                    .map(|entry| entry.averages.shown()),
            })
        })
    }

    /// The host CPUs process `pid` sees (the host's online CPUs when it is not limited or not resolvable).
    pub fn visible_cpus(&self, pid: u32) -> Vec<u32> {
        if !self.virtualizing() {
            return self.host.online_cpus().unwrap_or_default();
        }
        self.visible_cpus_in(&self.sight(pid))
    }

    /// The host CPUs `sight` shows (the host's online CPUs when it is not limited or not resolved).
    pub fn visible_cpus_in(&self, sight: &Sight) -> Vec<u32> {
        match sight {
            Sight::Container(container) if self.virtualizing() => match &container.cpus {
                Some(cpus) => cpus.clone(),
                None => self.host.online_cpus().unwrap_or_default(),
            },
            _ => self.host.online_cpus().unwrap_or_default(),
        }
    }

    /// The container process `pid` belongs to, as the cgroup its share of the daemon is counted under:
    /// its memory cgroup (or its cpuacct cgroup when memory is not limited); `None` for the host's own
    /// processes. A reader that cannot be resolved shares one key with all such readers, so failing to
    /// resolve never escapes a share.
    pub fn container_key(&self, pid: u32) -> Option<CgroupId> {
        const UNRESOLVED: CgroupId = CgroupId { dev: 0, ino: 0 };
        match self.container(pid) {
            Ok(container) => key_of(&container),
            Err(e) if e.is_not_found() => None,
            Err(_) => Some(UNRESOLVED),
        }
    }

    fn container(&self, pid: u32) -> Result<Arc<Container>> {
        self.registry
            .readers
            .get_or_resolve(pid, || self.resolve(pid))
    }

    /// What process `pid` sees is its container's: for a reader in a container's pid namespace, the
    /// cgroups of that namespace's init (its `init.scope` left out) where they hold the reader's, as
    /// LXCFS: a container is a machine, and a process in a tighter sub-cgroup of it still sees the
    /// machine. Where the init's cgroup does not hold the reader's (a pod sharing one pid namespace
    /// among containers, `kubectl debug --target`), the reader's own. A reader in the host's pid
    /// namespace is seen by its own cgroups (so host-pid containers keep their limits).
    fn resolve(&self, pid: u32) -> Result<Container> {
        let own = process_cgroups(self.host.roots(), &self.layout, pid)?;
        let pidns = self.registry.pid_namespaces.of(pid, || Ok(own.clone()))?;
        let cgroups = match pidns {
            PidNamespace::Container { init_pid, .. } if init_pid != pid => {
                match process_cgroups(self.host.roots(), &self.layout, init_pid) {
                    Ok(init) => own.within(init.without_init_scope()),
                    Err(_) => own,
                }
            }
            _ => own,
        };
        self.limits_of(cgroups, pidns)
    }

    /// The limits that apply to a process in `cgroups` and pid namespace `pidns`.
    fn limits_of(&self, cgroups: ProcessCgroups, pidns: PidNamespace) -> Result<Container> {
        let memory = match &cgroups.memory {
            Some(memory) if !memory.is_root() => Some((memory.id()?, memory.memory_limits()?)),
            _ => None,
        };
        let cpuacct = match &cgroups.cpuacct {
            Some(cpuacct) => Some(cpuacct.id()?),
            None => None,
        };
        let cpu_root = cgroups.cpu.as_ref().is_none_or(|c| c.is_root());
        let cpuset_root = cgroups.cpuset.as_ref().is_none_or(|c| c.is_root());
        let cpus = if cpu_root && cpuset_root {
            None
        } else {
            let quota = match &cgroups.cpu {
                Some(cpu) => cpu.cpu_quota()?,
                None => None,
            };
            let cpuset = match &cgroups.cpuset {
                Some(cpuset) => cpuset.cpuset()?,
                None => None,
            };
            let online = self.host.online_cpus()?;
            Some(visible_cpus(
                cpuset.as_deref(),
                quota,
                &online,
                self.options.cpu_rule,
            ))
        };
        let identity = [
            cgroups.memory.as_ref(),
            cgroups.cpu.as_ref(),
            cgroups.cpuacct.as_ref(),
            cgroups.cpuset.as_ref(),
            cgroups.io.as_ref(),
        ]
        .map(|dir| dir.map(CgroupDir::id).transpose());
        let [memory_id, cpu_id, cpuacct_id, cpuset_id, io_id] = identity;
        let identity = [memory_id?, cpu_id?, cpuacct_id?, cpuset_id?, io_id?];
        Ok(Container {
            cgroups,
            memory,
            cpuacct,
            cpus,
            pidns,
            identity,
        })
    }

    /// The container's view of `content` for reader `pid`; `Ok(None)` where it is the host's.
    fn render_for(
        &self,
        content: Content,
        container: &Container,
        pid: u32,
        usage: Use,
    ) -> Result<Option<Vec<u8>>> {
        let text = match content {
            Content::Meminfo | Content::Swaps => {
                let (Some((id, limits)), Some(memory)) =
                    (container.memory, &container.cgroups.memory)
                else {
                    return Ok(None);
                };
                let facts = MemoryFacts {
                    limits,
                    usage: self
                        .registry
                        .memory_usage
                        .get_or_try_insert(&id, || memory.memory_usage())?,
                    swap_enabled: self.options.swap_enabled,
                };
                let meminfo = self.host.read(HostFile::Meminfo)?;
                if content == Content::Meminfo {
                    render_meminfo(&meminfo, &facts)
                } else {
                    render_swaps(
                        &self.host.read(HostFile::Swaps)?,
                        swap_view(&meminfo, &facts),
                    )
                }
            }
            Content::Cpuinfo => {
                let Some(cpus) = &container.cpus else {
                    return Ok(None);
                };
                render_cpuinfo(&self.host.read(HostFile::Cpuinfo)?, cpus)
            }
            Content::Stat => {
                let Some(cpus) = &container.cpus else {
                    return Ok(None);
                };
                let (Some(cpuacct), Some(id)) = (&container.cgroups.cpuacct, container.cpuacct)
                else {
                    return Ok(None);
                };
                let uptime = self.uptime_secs(container)?;
                let times = CpuTimes::spread(self.cpu_usage_of(cpuacct, id)?, cpus.len(), uptime);
                let times = self.registry.monotonic_stat(id, times);
                // The task counts are a side line: a failure to count keeps the host's and the rest.
                let counts = self.task_counts(container, pid, usage).unwrap_or_else(|e| {
                    self.log_once(&e);
                    None
                });
                let procs = counts.map(|(_, _, counted)| Procs {
                    running: running_with_reader(counted.counts),
                    blocked: counted.counts.uninterruptible,
                });
                render_stat(&self.host.read(HostFile::Stat)?, &times, procs)
            }
            Content::Uptime => {
                if container.pidns == PidNamespace::Host {
                    return Ok(None);
                }
                let uptime = self.uptime_secs(container)?;
                let cpu_count = match &container.cpus {
                    Some(cpus) => cpus.len(),
                    None => self.host.online_cpus()?.len(),
                };
                let used = match (&container.cgroups.cpuacct, container.cpuacct) {
                    (Some(cpuacct), Some(id)) if !cpuacct.is_root() => {
                        let usage = self.cpu_usage_of(cpuacct, id)?;
                        usage.user_ns.saturating_add(usage.system_ns) as f64 / 1e9
                    }
                    _ => 0.0,
                };
                render_uptime(uptime, cpu_count, used)
            }
            Content::CpuOnline | Content::CpuPossible | Content::CpuPresent => {
                let Some(cpus) = &container.cpus else {
                    return Ok(None);
                };
                render_cpu_range(cpus.len())
            }
            Content::Loadavg => {
                if usage == Use::Describe
                    && let Ok(Some((_, id))) = tasks_cgroup(container)
                    && self.registry.load.peek(&id).is_none()
                {
                    // No history yet: the averages will start from a count taken now, not from one
                    // a runtime's lookup took while it set the container up.
                    self.registry.task_counts.remove(&id);
                }
                let Some((cgroup, id, counted)) = self.task_counts(container, pid, usage)? else {
                    return Ok(None);
                };
                let counts = counted.counts;
                let start = |previous: Option<&LoadEntry>| match previous {
                    Some(entry) => entry.clone(),
                    None => LoadEntry {
                        cgroup: cgroup.clone(),
                        averages: LoadAverages::starting_at(counts.active()),
                        stepped_at: std::time::Instant::now(),
                        active: counts.active(),
                        cpu_time_at_count: None,
                        counted_at: std::time::Instant::now(),
                    },
                };
                let entry = match usage {
                    Use::Read => self.registry.load.update(id, start),
                    Use::Size | Use::Describe => start(self.registry.load.get(&id).as_ref()),
                };
                let last_pid = match container.pidns {
                    // The newest task of the container still there when counted (the reader itself,
                    // most often), as its namespace numbers it; the kernel's is the last pid handed out.
                    PidNamespace::Container { .. } => counted.last_pid,
                    PidNamespace::Host => {
                        host_last_pid(&self.host.read(HostFile::Loadavg)?).unwrap_or(0)
                    }
                };
                let tasks = LoadTasks {
                    running: running_with_reader(counts),
                    total: counts.total.max(1),
                    last_pid,
                };
                render_loadavg(entry.averages, tasks)
            }
            Content::Pressure(resource) => {
                // The cgroup's own stall figures exist on v2 only (and are the format of the host's).
                let cgroups = &container.cgroups;
                let Some(cgroup) = [&cgroups.memory, &cgroups.cpu, &cgroups.io]
                    .into_iter()
                    .flatten()
                    .find(|c| c.version == crate::cgroup::Version::V2 && !c.is_root())
                else {
                    return Ok(None);
                };
                let Some(text) = cgroup.pressure(resource.name())? else {
                    return Ok(None);
                };
                text
            }
            Content::Diskstats => {
                let Some(devices) = self.container_disks(container)? else {
                    return Ok(None);
                };
                render_diskstats(&self.host.read(HostFile::Diskstats)?, &devices)
            }
        };
        Ok(Some(text.into_bytes()))
    }

    /// `sys/block/NAME/stat` as process `pid` sees it: its container's I/O on the device (zeros where
    /// it did none), laid out as the kernel's diskstats line of the device (kept for one tick, like
    /// the other host files); the host's own file where the container is the host's or keeps no I/O
    /// statistics.
    pub fn render_block_stat(&self, name: &str, pid: u32) -> Result<Vec<u8>> {
        let sight = if self.virtualizing() {
            self.sight(pid)
        } else {
            Sight::Unresolved(Fallback::ViewsOff)
        };
        self.render_block_stat_in(name, &sight)
    }

    /// `sys/block/NAME/stat` as `sight` shows it (see [`Renderer::render_block_stat`]).
    pub fn render_block_stat_in(&self, name: &str, sight: &Sight) -> Result<Vec<u8>> {
        if let (Sight::Container(container), true) = (sight, self.virtualizing()) {
            let devices = self.container_disks(container);
            match devices {
                Ok(Some(devices)) => {
                    // sysfs writes a `/` in a disk's name as `!` (cciss!c0d0), diskstats does not.
                    let host = self.host.read(HostFile::Diskstats).unwrap_or_default();
                    if let Some(disk) = DiskLine::find(&host, &name.replace('!', "/")) {
                        let io = devices
                            .iter()
                            .find(|d| d.major == disk.major && d.minor == disk.minor);
                        return Ok(render_block_stat(disk.counters, io).into_bytes());
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.log_once(&e);
                }
            }
        }
        let host_stat = self.host.roots().sys.join("block").join(name).join("stat");
        Ok(crate::error::read_to_string(&host_stat)?.into_bytes())
    }

    /// The container's I/O per device, never lower than shown before; `None` where its io cgroup is
    /// the root or keeps no statistics.
    fn container_disks(&self, container: &Container) -> Result<Option<Vec<DeviceIo>>> {
        let Some(cgroup) = container.cgroups.io.as_ref().filter(|c| !c.is_root()) else {
            return Ok(None);
        };
        let Some(devices) = cgroup.device_io()? else {
            return Ok(None);
        };
        Ok(Some(self.registry.monotonic_disks(cgroup.id()?, devices)))
    }

    /// The container's task counts (see [`CountedTasks::is_fresh`] for how old), with the cgroup they
    /// are kept under; `None` for a reader in the host's root cgroups. The reader is not counted as
    /// running (it waits for this answer): [`running_with_reader`] adds it back.
    ///
    /// A stat (`Use::Size`) never counts: its size needs no exact count (reads are direct I/O), and a
    /// container stat'ing in a loop must not make the daemon walk its tasks each time. It takes the
    /// last count kept, however old, or none (zeros); and keeps nothing, so the read after it counts
    /// afresh.
    fn task_counts<'c>(
        &self,
        container: &'c Container,
        reader: u32,
        usage: Use,
    ) -> Result<Option<(&'c CgroupDir, CgroupId, CountedTasks)>> {
        let Some((cgroup, id)) = tasks_cgroup(container)? else {
            return Ok(None);
        };
        if usage == Use::Size {
            let counted = self.registry.task_counts.get(&id).unwrap_or(CountedTasks {
                counts: TaskCounts::default(),
                last_pid: 0,
                at: std::time::Instant::now(),
                cost: std::time::Duration::ZERO,
                failed: false,
            });
            return Ok((!counted.failed).then_some((cgroup, id, counted)));
        }
        if let Some(counted) = self
            .registry
            .task_counts
            .get_if(&id, CountedTasks::is_fresh)
        {
            return Ok((!counted.failed).then_some((cgroup, id, counted)));
        }
        let started = std::time::Instant::now();
        let counts = match self.tasks.count(cgroup, id, true, Some(reader)) {
            Ok(counts) => counts,
            Err(e) => {
                let failed = CountedTasks {
                    counts: TaskCounts::default(),
                    last_pid: 0,
                    at: std::time::Instant::now(),
                    cost: started.elapsed(),
                    failed: true,
                };
                self.registry.task_counts.insert(id, failed);
                return Err(e);
            }
        };
        let last_pid = counts
            .newest
            .iter()
            .filter(|&&tid| tid != 0)
            .find_map(|&tid| self.registry.pid_namespaces.innermost_pid(tid).ok())
            .unwrap_or(0);
        let counted = CountedTasks {
            counts,
            last_pid,
            at: std::time::Instant::now(),
            cost: started.elapsed(),
            failed: false,
        };
        self.registry.task_counts.insert(id, counted);
        Ok(Some((cgroup, id, counted)))
    }

    /// One step of every recently read container's load averages that is due (the daemon calls this
    /// every [`LOAD_PERIOD`]); a cgroup gone is dropped. Returns how many were sampled.
    pub fn sample_loads(&self) -> usize {
        let mut sampled = 0;
        for (id, entry) in self.registry.load.snapshot() {
            let elapsed = entry.stepped_at.elapsed();
            // Steps due, to the nearest: a sampler woken a little early or late still takes one.
            let steps = ((elapsed.as_millis() + LOAD_PERIOD.as_millis() / 2)
                / LOAD_PERIOD.as_millis()) as u32;
            if steps == 0 {
                continue;
            }
            // No task changes state without running, so a container whose CPU time has not moved
            // has the tasks running and waiting it had (a wake-up not yet run is seen once it runs);
            // idle containers cost one small read. A full count at least every minute anyway.
            let cpu_time = entry
                .cgroup
                .cpu_usage()
                .ok()
                .map(|u| u.user_ns.saturating_add(u.system_ns));
            let unchanged = cpu_time.is_some()
                && cpu_time == entry.cpu_time_at_count
                && entry.counted_at.elapsed() < FULL_COUNT_PERIOD;
            let active = if unchanged {
                Ok(entry.active)
            } else {
                self.tasks
                    .count(&entry.cgroup, id, false, None)
                    .map(|counts| counts.active())
            };
            match active {
                Ok(active) => {
                    sampled += 1;
                    let sampled_from = entry.stepped_at;
                    self.registry.load.modify(&id, |entry| {
                        // An entry dropped and made again since the snapshot starts on its own.
                        if entry.stepped_at != sampled_from {
                            return;
                        }
                        entry.averages.step(active, steps);
                        entry.stepped_at += LOAD_PERIOD * steps;
                        if !unchanged {
                            entry.active = active;
                            entry.cpu_time_at_count = cpu_time;
                            entry.counted_at = std::time::Instant::now();
                        }
                    });
                }
                Err(e) => {
                    log::debug!(
                        "no longer averaging the load of {}: {e}",
                        entry.cgroup.path.display()
                    );
                    self.registry.load.remove(&id);
                }
            }
        }
        sampled
    }

    fn cpu_usage_of(&self, cpuacct: &CgroupDir, id: CgroupId) -> Result<CpuUsage> {
        self.registry
            .cpu_usage
            .get_or_try_insert(&id, || cpuacct.cpu_usage())
    }

    /// The host's own file for `content`.
    fn render_host(&self, content: Content) -> Result<Vec<u8>> {
        let file = match content {
            Content::Meminfo => HostFile::Meminfo,
            Content::Cpuinfo => HostFile::Cpuinfo,
            Content::Stat => HostFile::Stat,
            Content::Uptime => HostFile::Uptime,
            Content::Swaps => HostFile::Swaps,
            Content::Loadavg => HostFile::Loadavg,
            Content::Diskstats => HostFile::Diskstats,
            Content::CpuOnline => HostFile::CpuOnline,
            Content::CpuPossible => HostFile::CpuPossible,
            Content::CpuPresent => HostFile::CpuPresent,
            Content::Pressure(resource) => HostFile::Pressure(resource),
        };
        Ok(self.host.read(file)?.as_bytes().to_vec())
    }

    /// Seconds since the reader's pid-namespace init started; the host's uptime in the host namespace.
    fn uptime_secs(&self, container: &Container) -> Result<f64> {
        match container.pidns {
            PidNamespace::Container {
                init_start_secs, ..
            } => Ok(boottime_now() - init_start_secs),
            PidNamespace::Host => {
                let text = self.host.read(HostFile::Uptime)?;
                uptime_seconds(&text).ok_or_else(|| {
                    Error::parse(&self.host.roots().proc.join("uptime"), "uptime", &text)
                })
            }
        }
    }

    /// Logs an error the first time its cause is seen (and again after [`LOG_AGAIN_AFTER`]), and counts
    /// it: against the daemon's health when the daemon ran out of fds or memory, as another error
    /// otherwise; a vanished process is routine, logged at debug and not counted.
    /// Returns the error's kind as a cause of a fallback.
    fn log_once(&self, error: &Error) -> Fallback {
        if error.is_not_found() {
            log::debug!("reader gone, serving the host's file: {error}");
            return Fallback::ReaderGone;
        }
        let cause = if error.is_resource_exhaustion() {
            self.health.record(error);
            Fallback::DaemonError
        } else {
            self.health.record_other();
            Fallback::ReaderError
        };
        let key = error.cause_key();
        if self.logged_causes.get(&key).is_none() {
            self.logged_causes.insert(key, ());
            // Escaped: the message names cgroups, which a container with a delegated subtree names.
            log::warn!(
                "serving the host's file: {} (logged once per cause)",
                error.to_string().escape_debug()
            );
        }
        cause
    }
}

/// The key a container's share of the daemon is counted under (see [`Renderer::container_key`]).
fn key_of(container: &Container) -> Option<CgroupId> {
    container.memory.map(|(id, _)| id).or_else(|| {
        match (&container.cgroups.cpuacct, container.cpuacct) {
            (Some(dir), Some(id)) if !dir.is_root() => Some(id),
            _ => None,
        }
    })
}

/// The cgroup [`key_of`] names, as its hierarchy names it (`/system.slice/libpod-abc.scope`).
fn cgroup_name(container: &Container) -> String {
    let dir = match (&container.memory, &container.cgroups.memory) {
        (Some(_), Some(memory)) => Some(memory),
        _ => container.cgroups.cpuacct.as_ref(),
    };
    dir.map_or_else(String::new, |dir| {
        let relative = dir.path.strip_prefix(&dir.mount).unwrap_or(&dir.path);
        format!("/{}", relative.display())
    })
}

/// What `vproc status` keeps of a container's resolution.
fn resolved_for_status(container: &Container) -> Resolved {
    Resolved {
        memory: container.memory.map(|(_, limits)| limits),
        cpus: container.cpus.as_ref().map(Vec::len),
        load_key: tasks_cgroup(container).ok().flatten().map(|(_, id)| id),
        init_pid: match container.pidns {
            PidNamespace::Container { init_pid, .. } => Some(init_pid),
            PidNamespace::Host => None,
        },
    }
}

/// How long the sampler may go on from a container's last task count while its CPU time stands still.
const FULL_COUNT_PERIOD: Duration = Duration::from_secs(60);

/// The cgroup whose tasks are the container's, with its identity: its cpuacct cgroup (v2: cpu), else
/// its memory cgroup, whose identities were read when the reader was resolved; `None` when they are
/// roots (a host process).
fn tasks_cgroup(container: &Container) -> Result<Option<(&CgroupDir, CgroupId)>> {
    let cgroups = &container.cgroups;
    if let (Some(dir), Some(id)) = (&cgroups.cpuacct, container.cpuacct)
        && !dir.is_root()
    {
        return Ok(Some((dir, id)));
    }
    if let Some(dir) = cgroups.cpu.as_ref().filter(|dir| !dir.is_root()) {
        return Ok(Some((dir, dir.id()?)));
    }
    // The memory cgroup's identity is there only when it is not the root.
    if let (Some(dir), Some((id, _))) = (&cgroups.memory, container.memory) {
        return Ok(Some((dir, id)));
    }
    Ok(None)
}

/// What a rendering is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A read: its content is what the reader gets.
    Read,
    /// A stat: only its length matters, and it leaves no state behind.
    Size,
    /// A generation of a cached file, rendered when the kernel asks for its attributes (a runtime's
    /// LOOKUP while it sets the container up, or a reader's): counted and whole like a read, but it
    /// starts no load history; the first READ of the file does ([`Renderer::started_reading`]).
    Describe,
}

/// The kernel's `procs_running` counts the reader, running while it reads; here the reader waits for
/// the daemon, so it is added.
fn running_with_reader(counts: TaskCounts) -> u32 {
    counts.running.saturating_add(1).min(counts.total.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_cause_is_logged_once_whatever_the_pid() {
        let proc = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc");
        let roots = HostRoots {
            proc: proc.clone(),
            sys: proc.with_file_name("sys"),
        };
        let renderer = Renderer::new(roots, CgroupLayout::default(), Options::default()).unwrap();
        let unreadable = |pid: u32| {
            let path = proc.join(pid.to_string()).join("cgroup");
            Error::io(
                &path,
                std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            )
        };
        let logged = || renderer.logged_causes.len();
        assert_eq!(renderer.log_once(&unreadable(7)), Fallback::ReaderError);
        assert_eq!(logged(), 1);
        assert_eq!(renderer.log_once(&unreadable(8)), Fallback::ReaderError);
        assert_eq!(logged(), 1, "same cause, other pid");
        let gone = Error::io(
            Path::new("/proc/9/cgroup"),
            std::io::ErrorKind::NotFound.into(),
        );
        assert_eq!(renderer.log_once(&gone), Fallback::ReaderGone);
        assert_eq!(logged(), 1, "a reader gone is not a cause to log");
    }
}
