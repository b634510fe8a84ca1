//! Whether the daemon does its job. A live mount is not enough: a daemon out of fds or memory still
//! answers every read, with the host's files, and every container silently sees the host again. Such
//! fallbacks by the daemon's own fault (it ran out of fds or memory, or cannot read the host's own
//! files) are counted here, and so are, apart, the errors a reader may cause (which never fail the
//! check: one container must not be able to get the node's daemon restarted); the report is served as the extended attribute [`HEALTH_XATTR`] of the mount's root, which `vproc check`
//! (the DaemonSet's liveness probe) reads and fails on.

use std::fmt::{self, Display, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::reader::Occupancy;

/// The extended attribute of the mount's root that holds the health report. `trusted.` keeps it to
/// CAP_SYS_ADMIN (the kernel answers ENODATA to others without asking us).
pub const HEALTH_XATTR: &str = "trusted.vproc.health";

/// How long after its last own error the daemon reports itself degraded. A liveness probe every 10 s
/// (failureThreshold 3) then restarts a daemon whose errors go on for 30 s, not one that had a blip.
pub const HEALTH_WINDOW: Duration = Duration::from_secs(10);

/// The kernel's limit on an extended attribute's size.
pub const XATTR_SIZE_MAX: u32 = 64 << 10;

/// Fds in use, as a share of the limit, from which the daemon reports itself degraded before it fails.
const FD_ALARM_PERCENT: u64 = 90;

/// Counts the daemon's own errors.
#[derive(Debug, Default)]
pub struct Health {
    own_errors_total: AtomicU64,
    other_errors_total: AtomicU64,
    streak: Mutex<Option<Streak>>,
}

/// Characters of the last error kept for the report (a cgroup path can be long).
const LAST_ERROR_CHARS: usize = 300;

/// Own errors with less than [`HEALTH_WINDOW`] between each and the next.
#[derive(Debug, Clone)]
struct Streak {
    first: Instant,
    last: Instant,
    count: u64,
    last_error: String,
}

impl Health {
    /// Counts a fallback caused by the daemon itself; the first of a streak is logged as an error.
    pub fn record(&self, error: &dyn Display) {
        self.own_errors_total.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let message: String = error.to_string().chars().take(LAST_ERROR_CHARS).collect();
        let mut streak = self.streak.lock();
        let starts = match streak.as_mut() {
            Some(s) if now.duration_since(s.last) < HEALTH_WINDOW => {
                s.last = now;
                s.count += 1;
                s.last_error = message.clone();
                false
            }
            _ => {
                *streak = Some(Streak {
                    first: now,
                    last: now,
                    count: 1,
                    last_error: message.clone(),
                });
                true
            }
        };
        drop(streak);
        if starts {
            log::error!(
                "serving the host's files because of the daemon's own error: {message}; \
                 `vproc check` fails until none happened for {} s",
                HEALTH_WINDOW.as_secs()
            );
        }
    }

    /// Counts a fallback or refusal a reader may have caused (logged where it happens).
    pub fn record_other(&self) {
        self.other_errors_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Own errors since the daemon started.
    pub fn own_errors_total(&self) -> u64 {
        self.own_errors_total.load(Ordering::Relaxed)
    }

    /// The report on the daemon now, with what the caller adds about the maps and handles it keeps.
    pub fn report(&self, registry: Occupancy, held: Held) -> Report {
        let fds = FdUse::now();
        let now = Instant::now();
        let streak = self
            .streak
            .lock()
            .clone()
            .filter(|s| now.duration_since(s.last) < HEALTH_WINDOW);
        let mut problems = Vec::new();
        if let Some(s) = &streak {
            problems.push(format!(
                "{} reads got the host's files because of the daemon's own errors in the last {:.0} s \
                 (last {:.1} s ago: {})",
                s.count,
                now.duration_since(s.first).as_secs_f64(),
                now.duration_since(s.last).as_secs_f64(),
                s.last_error
            ));
        }
        if let (Some(open), Some(limit)) = (fds.open, fds.limit) {
            if open * 100 >= limit * FD_ALARM_PERCENT {
                problems.push(format!(
                    "{open} of {limit} file descriptors in use (raise LimitNOFILE)"
                ));
            }
        }
        Report {
            problems,
            own_errors_total: self.own_errors_total(),
            other_errors_total: self.other_errors_total.load(Ordering::Relaxed),
            fds,
            registry,
            held,
        }
    }
}

/// What the mounts hold for readers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Files open on the shared mount now.
    pub open_handles: usize,
    /// Bytes of rendered files kept for those handles.
    pub buffered_bytes: usize,
    /// Views of the views mount the kernel holds inodes of (one per process named in `.by-pid`
    /// whose binds are alive).
    pub views: usize,
    /// Bytes of the renderings kept to fill the page cache of the views mount.
    pub cached_bytes: usize,
}

/// The daemon's fds: how many are open and how many may be (its soft RLIMIT_NOFILE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdUse {
    pub open: Option<u64>,
    pub limit: Option<u64>,
}

impl FdUse {
    fn now() -> FdUse {
        // read_dir needs an fd itself: at the limit, the count is unknown (and the errors say why).
        let open = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count().saturating_sub(1) as u64);
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        FdUse { open, limit }
    }
}

/// What `vproc check` and an operator read.
#[derive(Debug, Clone)]
pub struct Report {
    /// Empty when healthy.
    pub problems: Vec<String>,
    pub own_errors_total: u64,
    /// Errors a reader may have caused (its file fell back to the host's, or an open was refused).
    pub other_errors_total: u64,
    pub fds: FdUse,
    pub registry: Occupancy,
    pub held: Held,
}

impl Display for Report {
    /// `key: value` lines, `status` first: `ok`, or `degraded` followed by one `problem:` line each.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        let status = if self.problems.is_empty() {
            "ok"
        } else {
            "degraded"
        };
        let _ = writeln!(text, "status: {status}");
        for problem in &self.problems {
            let _ = writeln!(text, "problem: {problem}");
        }
        let known = |n: Option<u64>| n.map_or("unknown".to_string(), |n| n.to_string());
        let _ = writeln!(text, "own_errors_total: {}", self.own_errors_total);
        let _ = writeln!(text, "other_errors_total: {}", self.other_errors_total);
        let _ = writeln!(text, "open_fds: {}", known(self.fds.open));
        let _ = writeln!(text, "open_files_limit: {}", known(self.fds.limit));
        let r = &self.registry;
        let _ = writeln!(text, "readers: {} of {}", r.readers, r.reader_capacity);
        let _ = writeln!(text, "pid_namespaces: {}", r.pid_namespaces);
        let _ = writeln!(text, "usage_cgroups: {}", r.usage_cgroups);
        let _ = writeln!(text, "stat_history_cgroups: {}", r.stat_history);
        let _ = writeln!(text, "load_cgroups: {}", r.load_cgroups);
        let _ = writeln!(text, "open_handles: {}", self.held.open_handles);
        let _ = writeln!(text, "buffered_bytes: {}", self.held.buffered_bytes);
        let _ = writeln!(text, "views: {}", self.held.views);
        let _ = writeln!(text, "cached_bytes: {}", self.held.cached_bytes);
        f.write_str(&text)
    }
}

/// `vproc check`: the daemon at `mountpoint` is mounted, answers a read, and reports no problem.
/// Returns its health report, or why it is not healthy.
pub fn check(mountpoint: &Path) -> Result<String, String> {
    crate::attach::check_daemon(mountpoint).map_err(|e| e.to_string())?;
    let report = read_report(mountpoint)?;
    let problems = problems_in(&report)?;
    if !problems.is_empty() {
        return Err(format!(
            "vprocd at {} is degraded: {}",
            mountpoint.display(),
            problems.join("; ")
        ));
    }
    std::fs::read_to_string(mountpoint.join("proc/uptime"))
        .map_err(|e| format!("{}/proc/uptime: {e}", mountpoint.display()))?;
    Ok(report)
}

/// The health report of the daemon mounted at `mountpoint`, as it says it.
pub fn read_report(mountpoint: &Path) -> Result<String, String> {
    let read_error = |e: rustix::io::Errno| {
        format!(
            "cannot read the daemon's health ({HEALTH_XATTR} of {}): {e}; is it a vprocd?",
            mountpoint.display()
        )
    };
    // The report is a few hundred bytes; a larger buffer is tried on ERANGE all the same. It is read
    // first: a daemon out of fds may fail the read below, and the report says why.
    let mut buffer = vec![0u8; 16 << 10];
    let len = loop {
        match rustix::fs::getxattr(mountpoint, HEALTH_XATTR, &mut buffer[..]) {
            Ok(len) => break len,
            Err(rustix::io::Errno::RANGE) if buffer.len() < XATTR_SIZE_MAX as usize => {
                buffer.resize(buffer.len() * 2, 0);
            }
            Err(e) => return Err(read_error(e)),
        }
    };
    Ok(String::from_utf8_lossy(&buffer[..len]).into_owned())
}

/// The problems a report's text names; empty when its status is `ok`. Fails on text that is not a
/// report.
pub fn problems_in(report: &str) -> Result<Vec<String>, String> {
    let mut lines = report.lines();
    match lines.next().and_then(|l| l.strip_prefix("status: ")) {
        Some("ok") => Ok(Vec::new()),
        Some("degraded") => Ok(lines
            .filter_map(|l| l.strip_prefix("problem: "))
            .map(str::to_string)
            .collect()),
        _ => Err(format!(
            "not a health report: {:?}",
            report.chars().take(80).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupancy() -> Occupancy {
        Occupancy {
            readers: 3,
            reader_capacity: 384,
            pid_namespaces: 1,
            usage_cgroups: 2,
            stat_history: 2,
            load_cgroups: 1,
        }
    }

    #[test]
    fn a_healthy_daemon_reports_ok() {
        let health = Health::default();
        let text = health
            .report(
                occupancy(),
                Held {
                    open_handles: 5,
                    buffered_bytes: 1500,
                    ..Held::default()
                },
            )
            .to_string();
        assert!(text.starts_with("status: ok\n"), "{text}");
        assert!(text.contains("readers: 3 of 384\n"), "{text}");
        assert_eq!(problems_in(&text), Ok(Vec::new()));
    }

    #[test]
    fn own_errors_make_it_degraded_and_say_why() {
        let health = Health::default();
        health.record(&"/proc/77/cgroup: Too many open files (os error 24)");
        health.record(&"/proc/78/cgroup: Too many open files (os error 24)");
        let text = health.report(occupancy(), Held::default()).to_string();
        let problems = problems_in(&text).unwrap();
        assert_eq!(problems.len(), 1, "{text}");
        assert!(
            problems[0].starts_with("2 reads got the host's files"),
            "{text}"
        );
        assert!(problems[0].contains("/proc/78/cgroup: Too many open files"));
        assert_eq!(health.own_errors_total(), 2);
    }

    #[test]
    fn errors_a_reader_may_cause_are_counted_apart_and_never_degrade() {
        let health = Health::default();
        health.record_other();
        let report = health.report(occupancy(), Held::default());
        assert!(report.problems.is_empty());
        assert_eq!(report.other_errors_total, 1);
    }

    #[test]
    fn a_long_error_is_cut_in_the_report() {
        let health = Health::default();
        health.record(&"x".repeat(100_000));
        let text = health.report(occupancy(), Held::default()).to_string();
        assert!(text.len() < 2000, "{} bytes", text.len());
    }

    #[test]
    fn other_text_is_not_a_report() {
        assert!(problems_in("MemTotal: 1 kB").is_err());
    }
}
