//! The metrics in the Prometheus text format (0.0.4, what `promtool check metrics` reads) or
//! OpenMetrics (what a Prometheus server asks for), encoded by the official client, prometheus-client.
//! Counters come from [`Metrics`]; what the daemon holds (handles, maps, fds, memory, CPU) is read at
//! each scrape from a [`NodeState`] the daemon supplies.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::Metrics;
use crate::health::Report;

/// One of the daemon's bounded maps: what it holds, may hold, and pushed out for room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheState {
    pub name: &'static str,
    pub entries: usize,
    pub capacity: usize,
    pub evictions: u64,
}

/// What the daemon holds at a scrape.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub report: Report,
    pub caches: Vec<CacheState>,
    /// Containers read from in the last 15 minutes.
    pub containers: usize,
    /// False after SIGUSR2 switched the views off.
    pub views_enabled: bool,
}

/// A source of [`NodeState`], called at each scrape.
pub type StateSource = Box<dyn Fn() -> NodeState + Send + Sync>;

/// The registry a scrape encodes.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    /// Registers `metrics`' counters and the scrape-time state from `state`.
    pub fn new(metrics: Arc<Metrics>, state: StateSource) -> Exporter {
        let mut registry = Registry::default();
        registry.register(
            "vproc_build",
            "The running vprocd's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "vproc_fuse_errors",
            "FUSE requests answered with an error, by operation and errno",
            metrics.errors_family.clone(),
        );
        registry.register(
            "vproc_reattach_runs",
            "Runs of vproc reattach (at each daemon start), by result",
            metrics.reattach_runs.clone(),
        );
        registry.register(
            "vproc_reattach_namespaces",
            "Mount namespaces vproc reattach went through, by outcome (healed, live, failed, skipped)",
            metrics.reattach_namespaces.clone(),
        );
        registry.register(
            "vproc_reattach_mounts_healed",
            "Dead bind mounts vproc reattach replaced with the running daemon's files",
            metrics.reattach_mounts_healed.clone(),
        );
        registry.register_with_unit(
            "vproc_load_sampler_duration",
            "Time one pass of the load sampler took (every 5 s, or less often when it is costly)",
            Unit::Seconds,
            metrics.sampler_seconds.clone(),
        );
        registry.register(
            "vproc_load_sampler_cgroups",
            "Cgroups whose load the last pass of the sampler stepped",
            metrics.sampler_cgroups.clone(),
        );
        registry.register_collector(Box::new(RequestCollector {
            metrics: Arc::clone(&metrics),
        }));
        registry.register_collector(Box::new(StateCollector { state }));
        Exporter { registry }
    }

    /// The metrics in OpenMetrics (`openmetrics`) or the Prometheus text format 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> Result<String, fmt::Error> {
        let mut text = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        }
        Ok(text)
    }
}

/// The request counters and latencies, series that counted something only: a file never read is
/// not 17 empty histograms.
#[derive(Debug)]
struct RequestCollector {
    metrics: Arc<Metrics>,
}

impl Collector for RequestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut requests = encoder.encode_descriptor(
            "vproc_fuse_requests",
            "FUSE requests served, by operation and file (a path below the mountpoint, or a tree)",
            None,
            MetricType::Counter,
        )?;
        for (labels, n) in self.metrics.requests() {
            ConstCounter::new(n).encode(requests.encode_family(&labels)?)?;
        }
        let mut fallbacks = encoder.encode_descriptor(
            "vproc_host_fallbacks",
            "Reads of a virtual file that got the host's file instead of the reader's container's, by file and cause \
             (no_pid: reader in a pid namespace the daemon cannot see; host_process: reader in no container; \
             not_limited: its container sets no limit this file shows; views_off: SIGUSR2; reader_gone; \
             reader_error: its cgroups could not be read; daemon_error: the daemon ran out of fds or memory)",
            None,
            MetricType::Counter,
        )?;
        for (labels, n) in self.metrics.fallbacks() {
            ConstCounter::new(n).encode(fallbacks.encode_family(&labels)?)?;
        }
        let mut reads = encoder.encode_descriptor(
            "vproc_read_duration",
            "Time to answer a FUSE read, by file",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, histogram) in self.metrics.read_seconds() {
            histogram.encode(reads.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

struct StateCollector {
    state: StateSource,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

/// Writes one unlabelled gauge or counter.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: impl EncodeMetric,
) -> fmt::Result {
    let metric_encoder = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(metric_encoder)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    single(encoder, name, help, None, ConstGauge::new(value))
}

fn bytes_gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    single(
        encoder,
        name,
        help,
        Some(&Unit::Bytes),
        ConstGauge::new(value),
    )
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    single(encoder, name, help, None, ConstCounter::new(value))
}

/// One family with a series per map of the registry, labelled `cache`.
fn per_cache(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    caches: &[CacheState],
    encode: impl Fn(&CacheState, MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for cache in caches {
        encode(cache, family.encode_family(&[("cache", cache.name)])?)?;
    }
    Ok(())
}

fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let state = (self.state)();
        let report = &state.report;
        gauge(
            &mut encoder,
            "vproc_degraded",
            "1 while vproc check fails: reads got the host's files by the daemon's own fault in the last 10 s, \
             or 90% of its fds are in use",
            i64::from(!report.problems.is_empty()),
        )?;
        counter(
            &mut encoder,
            "vproc_own_errors",
            "Reads that got the host's files by the daemon's own fault (out of fds or memory, host file unreadable)",
            report.own_errors_total,
        )?;
        counter(
            &mut encoder,
            "vproc_reader_errors",
            "Fallbacks and refusals a reader may have caused (its cgroups unreadable, too many open files)",
            report.other_errors_total,
        )?;
        gauge(
            &mut encoder,
            "vproc_views_enabled",
            "0 after SIGUSR2 switched the per-container views off (every reader gets the host's files)",
            i64::from(state.views_enabled),
        )?;
        gauge(
            &mut encoder,
            "vproc_containers",
            "Containers the daemon served in the last 15 minutes (vproc status lists them)",
            to_i64(state.containers),
        )?;
        gauge(
            &mut encoder,
            "vproc_open_handles",
            "Files open on the shared mount now",
            to_i64(report.held.open_handles),
        )?;
        bytes_gauge(
            &mut encoder,
            "vproc_handle_buffers",
            "Bytes of rendered files kept for open handles",
            report.held.buffered_bytes as u64,
        )?;
        gauge(
            &mut encoder,
            "vproc_views",
            "Views of the .by-pid mount the kernel holds inodes of (one per process named there whose binds are alive)",
            to_i64(report.held.views),
        )?;
        bytes_gauge(
            &mut encoder,
            "vproc_cached",
            "Bytes of rendered files kept to fill the page cache of the .by-pid mount",
            report.held.cached_bytes as u64,
        )?;
        per_cache(
            &mut encoder,
            "vproc_cache_entries",
            "Entries in each of the daemon's bounded maps",
            MetricType::Gauge,
            &state.caches,
            |cache, metric| ConstGauge::new(to_i64(cache.entries)).encode(metric),
        )?;
        per_cache(
            &mut encoder,
            "vproc_cache_capacity_entries",
            "The most entries each of the daemon's maps holds (its budget)",
            MetricType::Gauge,
            &state.caches,
            |cache, metric| ConstGauge::new(to_i64(cache.capacity)).encode(metric),
        )?;
        per_cache(
            &mut encoder,
            "vproc_cache_evictions",
            "Fresh entries pushed out of a full map to make room (a growing count: the budget is small for the node)",
            MetricType::Counter,
            &state.caches,
            |cache, metric| ConstCounter::new(cache.evictions).encode(metric),
        )?;
        if let Some(open) = report.fds.open {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                to_i64(open),
            )?;
        }
        if let Some(limit) = report.fds.limit {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors (the soft RLIMIT_NOFILE)",
                to_i64(limit),
            )?;
        }
        if let Some(process) = ProcessStats::read(Path::new("/proc")) {
            single(
                &mut encoder,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                ConstCounter::new(process.cpu_seconds),
            )?;
            bytes_gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size in bytes",
                process.resident_bytes,
            )?;
            bytes_gauge(
                &mut encoder,
                "process_virtual_memory",
                "Virtual memory size in bytes",
                process.virtual_bytes,
            )?;
            single(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                ConstGauge::new(process.start_time_seconds),
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process",
                process.threads,
            )?;
        }
        Ok(())
    }
}

/// The daemon process's own figures, as the Prometheus clients' process collectors give them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: i64,
}

impl ProcessStats {
    /// Reads `<proc>/self/stat` and the boot time from `<proc>/stat`.
    pub fn read(proc_root: &Path) -> Option<ProcessStats> {
        let stat = std::fs::read_to_string(proc_root.join("self/stat")).ok()?;
        let boot = std::fs::read_to_string(proc_root.join("stat")).ok()?;
        let ticks = crate::reader::clock_ticks_per_second();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        ProcessStats::parse(&stat, &boot, ticks, page)
    }

    /// From /proc/PID/stat (utime is field 14, stime 15, num_threads 20, starttime 22 in ticks after
    /// boot, vsize 23 in bytes, rss 24 in pages) and /proc/stat's `btime`.
    fn parse(stat: &str, proc_stat: &str, ticks: f64, page_bytes: u64) -> Option<ProcessStats> {
        let field = |n: usize| -> Option<u64> { crate::reader::stat_field(stat, n)?.parse().ok() };
        let btime: u64 = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: to_i64(field(20)?),
            start_time_seconds: btime as f64 + field(22)? as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{FdUse, Report};
    use crate::reader::Occupancy;

    fn state() -> NodeState {
        NodeState {
            report: Report {
                problems: Vec::new(),
                own_errors_total: 2,
                other_errors_total: 3,
                fds: FdUse {
                    open: Some(12),
                    limit: Some(1024),
                },
                registry: Occupancy {
                    readers: 1,
                    reader_capacity: 384,
                    pid_namespaces: 1,
                    usage_cgroups: 1,
                    stat_history: 1,
                    load_cgroups: 0,
                },
                held: crate::health::Held {
                    open_handles: 4,
                    buffered_bytes: 1500,
                    views: 2,
                    cached_bytes: 3000,
                },
            },
            caches: vec![CacheState {
                name: "readers",
                entries: 1,
                capacity: 384,
                evictions: 7,
            }],
            containers: 2,
            views_enabled: true,
        }
    }

    #[test]
    fn the_text_format_names_every_family_by_convention() {
        let metrics = Metrics::default();
        metrics.fallback(super::super::Target::File(0), super::super::Fallback::NoPid);
        metrics.request(super::super::Operation::Read, super::super::Target::File(0));
        metrics.read_took(
            super::super::Target::File(0),
            std::time::Duration::from_micros(30),
        );
        let exporter = Exporter::new(Arc::new(metrics), Box::new(state));
        let text = exporter.encode(false).unwrap();
        for line in [
            "vproc_fuse_requests_total{operation=\"read\",file=\"proc/meminfo\"} 1",
            "vproc_read_duration_seconds_bucket{file=\"proc/meminfo\",le=\"5e-05\"} 1",
            "vproc_host_fallbacks_total{file=\"proc/meminfo\",cause=\"no_pid\"} 1",
            "vproc_read_duration_seconds_count{file=\"proc/meminfo\"} 1",
            "vproc_own_errors_total 2",
            "vproc_reader_errors_total 3",
            "vproc_containers 2",
            "vproc_open_handles 4",
            "vproc_handle_buffers_bytes 1500",
            "vproc_views 2",
            "vproc_cached_bytes 3000",
            "vproc_cache_evictions_total{cache=\"readers\"} 7",
            "process_open_fds 12",
            "process_max_fds 1024",
            "vproc_build_info{version=",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(
            !text.contains("# EOF"),
            "the 0.0.4 format has no EOF marker"
        );
        assert!(
            !text.contains("file=\"proc/cpuinfo\""),
            "no series for what was never read:\n{text}"
        );
        let openmetrics = exporter.encode(true).unwrap();
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    }

    #[test]
    fn process_figures_come_from_stat_fields() {
        let stat = "42 (vprocd (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 7 0 \
                    1000 123456789 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let stats = ProcessStats::parse(stat, proc_stat, 100.0, 4096).unwrap();
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 4.0,
                resident_bytes: 300 * 4096,
                virtual_bytes: 123456789,
                start_time_seconds: 1700000010.0,
                threads: 7,
            }
        );
    }
}
