//! What the daemon counts, for operators: requests by FUSE operation and file, the read latency, errors,
//! and every read served the host's file with why ([`Fallback`]). The counts are always kept (a few
//! atomic adds per request, on counters resolved once at start); `vprocd --metrics-address` serves them
//! in the Prometheus formats ([`exporter`]), and `vproc status` reads the per-container table
//! ([`containers`]) through an extended attribute of the mount's root.
//!
//! Label values come from fixed lists (operations, the files of [`crate::files::FILES`], causes,
//! errnos), never from a container: a node's series count does not grow with its containers.

pub mod containers;
pub mod exporter;
pub mod http;
pub mod pid_status;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::files::{Content, FILES, VirtualFile};
pub use containers::{ContainerStats, ContainersPage, StatusRow};

/// The FUSE operations counted; others (statfs, opendir, ...) are not served with content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Lookup,
    Getattr,
    Open,
    Read,
    Release,
    Readdir,
    Readlink,
    Getxattr,
}

impl Operation {
    pub const ALL: [Operation; 8] = [
        Operation::Lookup,
        Operation::Getattr,
        Operation::Open,
        Operation::Read,
        Operation::Release,
        Operation::Readdir,
        Operation::Readlink,
        Operation::Getxattr,
    ];

    /// The `operation` label: the FUSE opcode's name in lower case.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Lookup => "lookup",
            Operation::Getattr => "getattr",
            Operation::Open => "open",
            Operation::Read => "read",
            Operation::Release => "release",
            Operation::Readdir => "readdir",
            Operation::Readlink => "readlink",
            Operation::Getxattr => "getxattr",
        }
    }
}

/// What a request concerns: a virtual file of the table, or one of the trees the daemon passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The index of a file in [`FILES`].
    File(usize),
    /// `sys/devices/system/cpu/cpuK/...` and the host's entries beside them.
    CpuTree,
    /// `sys/block/NAME` and its `stat`.
    BlockTree,
    /// A directory of the table (the mount's root included).
    Directory,
}

/// The `file` label of the trees; files are labelled with their path.
const CPU_TREE_LABEL: &str = "sys/devices/system/cpu/*";
const BLOCK_TREE_LABEL: &str = "sys/block/*";
const DIRECTORY_LABEL: &str = "directory";

impl Target {
    /// The target of the table's file `file`.
    pub fn of_file(file: &VirtualFile) -> Target {
        FILES
            .iter()
            .position(|f| f.ino == file.ino)
            .map_or(Target::Directory, Target::File)
    }

    /// The target of the table's file holding `content`.
    pub fn of_content(content: Content) -> Target {
        FILES
            .iter()
            .position(|f| f.content == content)
            .map_or(Target::Directory, Target::File)
    }

    const COUNT: usize = FILES.len() + 3;

    fn index(self) -> usize {
        match self {
            Target::File(i) => i.min(FILES.len() - 1),
            Target::CpuTree => FILES.len(),
            Target::BlockTree => FILES.len() + 1,
            Target::Directory => FILES.len() + 2,
        }
    }

    fn all() -> impl Iterator<Item = Target> {
        (0..FILES.len()).map(Target::File).chain([
            Target::CpuTree,
            Target::BlockTree,
            Target::Directory,
        ])
    }

    /// The `file` label: the path below the mountpoint.
    pub fn label(self) -> &'static str {
        match self {
            Target::File(i) => FILES[i.min(FILES.len() - 1)].path,
            Target::CpuTree => CPU_TREE_LABEL,
            Target::BlockTree => BLOCK_TREE_LABEL,
            Target::Directory => DIRECTORY_LABEL,
        }
    }
}

/// Why a read got the host's file instead of its container's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// The request carried pid 0: the reader lives in a pid namespace the daemon cannot see (a daemon
    /// not started in the host's pid namespace: Kubernetes needs `hostPID: true`).
    NoPid,
    /// The reader is in the host's root cgroups: not in a container at all.
    HostProcess,
    /// The reader's container sets no limit this file shows (no cpu or cpuset cgroup for cpuinfo, the
    /// host's pid namespace for uptime, ...): the host's file is its view.
    NotLimited,
    /// The views are switched off (SIGUSR2, LXCFS's switch).
    ViewsOff,
    /// The reader exited before it could be resolved.
    ReaderGone,
    /// The reader's cgroups or limits could not be read (a reader-side cause, logged once per cause).
    ReaderError,
    /// The daemon ran out of fds or memory: its own fault, which `vproc check` reports.
    DaemonError,
}

impl Fallback {
    pub const ALL: [Fallback; 7] = [
        Fallback::NoPid,
        Fallback::HostProcess,
        Fallback::NotLimited,
        Fallback::ViewsOff,
        Fallback::ReaderGone,
        Fallback::ReaderError,
        Fallback::DaemonError,
    ];

    /// The `cause` label.
    pub fn name(self) -> &'static str {
        match self {
            Fallback::NoPid => "no_pid",
            Fallback::HostProcess => "host_process",
            Fallback::NotLimited => "not_limited",
            Fallback::ViewsOff => "views_off",
            Fallback::ReaderGone => "reader_gone",
            Fallback::ReaderError => "reader_error",
            Fallback::DaemonError => "daemon_error",
        }
    }

    /// The position in `ALL`, which lists the causes in declaration order.
    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds of the read latency buckets, in seconds: a read served from cached figures takes tens
/// of microseconds, one that reads a cgroup's files a few hundred, a task count or a slow host
/// milliseconds.
const READ_SECONDS_BUCKETS: [f64; 12] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 250e-3,
];

/// Upper bounds of the load sampler's pass durations, in seconds.
const SAMPLER_SECONDS_BUCKETS: [f64; 8] = [1e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 2.5];

/// Errnos named in the error counter's `errno` label; others count as `other`.
const ERRNOS: [(i32, &str); 12] = [
    (libc::ENOENT, "ENOENT"),
    (libc::EIO, "EIO"),
    (libc::EMFILE, "EMFILE"),
    (libc::ENFILE, "ENFILE"),
    (libc::EROFS, "EROFS"),
    (libc::EBADF, "EBADF"),
    (libc::EISDIR, "EISDIR"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EINVAL, "EINVAL"),
    (libc::ENODATA, "ENODATA"),
    (libc::ERANGE, "ERANGE"),
    (libc::EACCES, "EACCES"),
];

/// The label of `errno` in the error counter.
pub fn errno_label(errno: i32) -> &'static str {
    ERRNOS
        .iter()
        .find(|(code, _)| *code == errno)
        .map_or("other", |(_, name)| name)
}

pub(crate) type Labels = [(&'static str, &'static str); 2];
pub(crate) type Label = [(&'static str, &'static str); 1];

/// The daemon's counters. The request path adds to atomics in fixed tables (and, for the latency
/// histogram, takes a short lock); a scrape shows the series that counted something, in a stable order.
#[derive(Debug)]
pub struct Metrics {
    /// By operation and target: `operation * Target::COUNT + target`.
    requests: Vec<AtomicU64>,
    pub(crate) errors_family: Family<Labels, Counter>,
    /// By target and cause: `target * Fallback::ALL.len() + cause`.
    fallbacks: Vec<AtomicU64>,
    /// By target.
    read_seconds: Vec<Histogram>,
    reads_timed: Vec<AtomicU64>,
    pub(crate) reattach_runs: Family<Label, Counter>,
    pub(crate) reattach_namespaces: Family<Label, Counter>,
    pub(crate) reattach_mounts_healed: Counter,
    pub(crate) sampler_seconds: Histogram,
    pub(crate) sampler_cgroups: Gauge,
    /// Reads by processes in no container (or not resolvable), for `vproc status`.
    pub(crate) outside: Arc<ContainerStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Metrics {
            requests: zeros(Operation::ALL.len() * Target::COUNT),
            errors_family: Family::default(),
            fallbacks: zeros(Target::COUNT * Fallback::ALL.len()),
            read_seconds: (0..Target::COUNT)
                .map(|_| Histogram::new(READ_SECONDS_BUCKETS))
                .collect(),
            reads_timed: zeros(Target::COUNT),
            reattach_runs: Family::default(),
            reattach_namespaces: Family::default(),
            reattach_mounts_healed: Counter::default(),
            sampler_seconds: Histogram::new(SAMPLER_SECONDS_BUCKETS),
            sampler_cgroups: Gauge::default(),
            outside: Arc::new(ContainerStats::outside()),
        }
    }
}

impl Metrics {
    /// Counts one request.
    pub fn request(&self, operation: Operation, target: Target) {
        // `ALL` lists the operations in declaration order: the discriminant is the index.
        if let Some(counter) = self
            .requests
            .get(operation as usize * Target::COUNT + target.index())
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request answered with `errno`.
    pub fn error(&self, operation: Operation, errno: i32) {
        self.errors_family
            .get_or_create(&[
                ("operation", operation.name()),
                ("errno", errno_label(errno)),
            ])
            .inc();
    }

    /// Records how long a read took.
    pub fn read_took(&self, target: Target, took: Duration) {
        if let Some(histogram) = self.read_seconds.get(target.index()) {
            histogram.observe(took.as_secs_f64());
            self.reads_timed[target.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a read of `target` served the host's file because of `cause`.
    pub fn fallback(&self, target: Target, cause: Fallback) {
        if let Some(counter) = self
            .fallbacks
            .get(target.index() * Fallback::ALL.len() + cause.index())
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads served the host's file because of `cause`, over every file.
    pub fn fallbacks_total(&self, cause: Fallback) -> u64 {
        Target::all()
            .filter_map(|t| {
                self.fallbacks
                    .get(t.index() * Fallback::ALL.len() + cause.index())
            })
            .map(|counter| counter.load(Ordering::Relaxed))
            .sum()
    }

    /// Requests counted, by operation and file, that counted something.
    pub(crate) fn requests(&self) -> Vec<(Labels, u64)> {
        let mut counted = Vec::new();
        for (op_index, op) in Operation::ALL.iter().enumerate() {
            for target in Target::all() {
                let n = self.requests[op_index * Target::COUNT + target.index()]
                    .load(Ordering::Relaxed);
                if n > 0 {
                    counted.push(([("operation", op.name()), ("file", target.label())], n));
                }
            }
        }
        counted
    }

    /// Fallbacks counted, by file and cause, that counted something.
    pub(crate) fn fallbacks(&self) -> Vec<(Labels, u64)> {
        let mut counted = Vec::new();
        for target in Target::all() {
            for cause in Fallback::ALL {
                let n = self.fallbacks[target.index() * Fallback::ALL.len() + cause.index()]
                    .load(Ordering::Relaxed);
                if n > 0 {
                    counted.push(([("file", target.label()), ("cause", cause.name())], n));
                }
            }
        }
        counted
    }

    /// The read latency histograms of the files read at least once.
    pub(crate) fn read_seconds(&self) -> Vec<(Label, &Histogram)> {
        Target::all()
            .filter(|t| self.reads_timed[t.index()].load(Ordering::Relaxed) > 0)
            .map(|t| ([("file", t.label())], &self.read_seconds[t.index()]))
            .collect()
    }

    /// Counts one run of `vproc reattach` and what it did.
    pub fn reattach_ran(&self, report: &ReattachReport) {
        let result = if report.succeeded { "ok" } else { "failed" };
        self.reattach_runs
            .get_or_create(&[("result", result)])
            .inc();
        for (outcome, count) in [
            ("healed", report.healed),
            ("live", report.live),
            ("failed", report.failed),
            ("skipped", report.skipped),
        ] {
            self.reattach_namespaces
                .get_or_create(&[("outcome", outcome)])
                .inc_by(count);
        }
        self.reattach_mounts_healed.inc_by(report.mounts_healed);
    }

    /// Records one pass of the load sampler.
    pub fn sampler_ran(&self, took: Duration, cgroups: usize) {
        self.sampler_seconds.observe(took.as_secs_f64());
        self.sampler_cgroups
            .set(i64::try_from(cgroups).unwrap_or(i64::MAX));
    }

    /// Reads by processes in no container, or not resolvable.
    pub fn outside(&self) -> &Arc<ContainerStats> {
        &self.outside
    }
}

/// What one run of `vproc reattach` did, from its output (one line per mount namespace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReattachReport {
    pub succeeded: bool,
    /// Namespaces whose dead mounts were replaced, and how many mounts that was.
    pub healed: u64,
    pub mounts_healed: u64,
    /// Namespaces whose mounts were all live.
    pub live: u64,
    pub failed: u64,
    /// Namespaces that did not answer in time.
    pub skipped: u64,
}

impl ReattachReport {
    /// Reads `vproc reattach`'s stdout (`healed pid N: M mounts`, `pid N: every mount live`) and stderr
    /// (`vproc reattach: skipped pid N: ...`, `vproc reattach: pid N: error`).
    pub fn parse(succeeded: bool, stdout: &str, stderr: &str) -> ReattachReport {
        let mut report = ReattachReport {
            succeeded,
            ..ReattachReport::default()
        };
        for line in stdout.lines() {
            if let Some(rest) = line.strip_prefix("healed pid ") {
                report.healed += 1;
                report.mounts_healed += rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            } else if line.ends_with(": every mount live") {
                report.live += 1;
            }
        }
        for line in stderr.lines() {
            if line.starts_with("vproc reattach: skipped pid ") {
                report.skipped += 1;
            } else if line.starts_with("vproc reattach: pid ") {
                report.failed += 1;
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_of_operations_and_causes_are_in_declaration_order() {
        for (i, operation) in Operation::ALL.iter().enumerate() {
            assert_eq!(*operation as usize, i, "{operation:?}");
        }
        for (i, cause) in Fallback::ALL.iter().enumerate() {
            assert_eq!(cause.index(), i, "{cause:?}");
        }
    }

    #[test]
    fn every_request_counts_under_its_own_labels() {
        let metrics = Metrics::default();
        let meminfo = Target::File(0);
        assert_eq!(FILES[0].path, "proc/meminfo");
        metrics.request(Operation::Read, meminfo);
        metrics.request(Operation::Read, meminfo);
        metrics.request(Operation::Open, Target::CpuTree);
        assert_eq!(
            metrics.requests(),
            vec![
                (
                    [("operation", "open"), ("file", "sys/devices/system/cpu/*")],
                    1
                ),
                ([("operation", "read"), ("file", "proc/meminfo")], 2),
            ],
            "only what counted, in a stable order"
        );
    }

    #[test]
    fn fallbacks_count_by_file_and_cause() {
        let metrics = Metrics::default();
        metrics.fallback(Target::File(0), Fallback::NoPid);
        metrics.fallback(Target::File(1), Fallback::NoPid);
        metrics.fallback(Target::File(1), Fallback::DaemonError);
        assert_eq!(metrics.fallbacks_total(Fallback::NoPid), 2);
        assert_eq!(metrics.fallbacks_total(Fallback::DaemonError), 1);
        assert_eq!(metrics.fallbacks_total(Fallback::ReaderGone), 0);
        assert_eq!(
            metrics.fallbacks(),
            vec![
                ([("file", "proc/meminfo"), ("cause", "no_pid")], 1),
                ([("file", FILES[1].path), ("cause", "no_pid")], 1),
                ([("file", FILES[1].path), ("cause", "daemon_error")], 1),
            ]
        );
    }

    #[test]
    fn unknown_errnos_share_one_label() {
        assert_eq!(errno_label(libc::ENOENT), "ENOENT");
        assert_eq!(errno_label(libc::EXDEV), "other");
    }

    #[test]
    fn reattach_output_is_read_line_by_line() {
        let report = ReattachReport::parse(
            false,
            "healed pid 10: 3 mounts\npid 11: every mount live\nhealed pid 12: 1 mounts\n",
            "vproc reattach: skipped pid 13: its mount namespace did not answer within 5 s\n\
             vproc reattach: pid 14: cannot enter\nunrelated\n",
        );
        assert_eq!(
            report,
            ReattachReport {
                succeeded: false,
                healed: 2,
                mounts_healed: 4,
                live: 1,
                failed: 1,
                skipped: 1,
            }
        );
    }
}
