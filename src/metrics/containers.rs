//! The containers the daemon knows, for `vproc status`: per container (its memory cgroup, else its
//! cpuacct cgroup, the key the daemon's shares are counted under), the reads it made, the reads that got
//! the host's file and why, and what it was last seen as. Entries live in the registry's `containers`
//! map ([`crate::reader::Registry`]: 4096 at most, forgotten 15 minutes after their last read).
//!
//! The table travels as JSON in pages, each the value of an extended attribute of the mount's root
//! ([`CONTAINERS_XATTR`], then [`CONTAINERS_XATTR`]`.after.DEV.INO` for the page after that key), so
//! it needs no socket of its own, reaches wherever the mount does, and stays CAP_SYS_ADMIN's
//! (`trusted.`): a container sees no other container's name.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Fallback;
use crate::cgroup::{CgroupId, MemoryLimits};
use crate::reader::Container;

/// The extended attribute of the mount's root that holds the first page of the containers table.
pub const CONTAINERS_XATTR: &str = "trusted.vproc.containers";

/// A page's JSON stays below the kernel's 64 KiB limit on an attribute's value.
pub const PAGE_BYTES: usize = 60 << 10;

/// Reader pids remembered per container (the most recent, distinct).
const RECENT_PIDS: usize = 4;

/// The rate of reads is taken over this window, sliding.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// One container's counts.
#[derive(Debug)]
pub struct ContainerStats {
    key: Option<CgroupId>,
    /// The cgroup it is counted under, as its hierarchy names it (`/system.slice/libpod-abc.scope`).
    cgroup: String,
    reads: AtomicU64,
    fallbacks: [AtomicU64; Fallback::ALL.len()],
    recent: Mutex<Recent>,
}

#[derive(Debug)]
struct Recent {
    /// The resolution its figures were taken from: compared with each read's (by address; the weak
    /// reference keeps the address from being reused while kept), not kept alive by it.
    resolved_from: Weak<Container>,
    /// What its last reader was resolved to: small and fixed, whatever the cgroup paths.
    resolved: Option<Resolved>,
    pids: VecDeque<u32>,
    rate: RateWindow,
    last_read: Instant,
}

impl ContainerStats {
    /// The counts of the container under `key`, whose cgroup is `cgroup`.
    pub fn new(key: CgroupId, cgroup: String) -> Self {
        ContainerStats::with_key(Some(key), cgroup)
    }

    /// The counts of readers in no container (or not resolvable).
    pub fn outside() -> Self {
        ContainerStats::with_key(None, String::new())
    }

    fn with_key(key: Option<CgroupId>, cgroup: String) -> Self {
        ContainerStats {
            key,
            cgroup,
            reads: AtomicU64::new(0),
            fallbacks: Default::default(),
            recent: Mutex::new(Recent {
                resolved_from: Weak::new(),
                resolved: None,
                pids: VecDeque::with_capacity(RECENT_PIDS),
                rate: RateWindow::default(),
                last_read: Instant::now(),
            }),
        }
    }

    /// Counts one read by `pid`, resolved to `container`, that got the host's file for `fallback`;
    /// `resolve` takes the figures `vproc status` shows from a resolution not seen before.
    pub fn read(
        &self,
        pid: u32,
        container: Option<&Arc<Container>>,
        resolve: impl FnOnce(&Container) -> Resolved,
        fallback: Option<Fallback>,
    ) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if let Some(cause) = fallback {
            self.fallbacks[cause.index()].fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut recent = self.recent.lock();
        recent.last_read = now;
        recent.rate.count(now);
        if let Some(container) = container {
            if recent.resolved_from.as_ptr() != Arc::as_ptr(container) {
                recent.resolved_from = Arc::downgrade(container);
                recent.resolved = Some(resolve(container));
            }
        }
        if pid != 0 && recent.pids.front() != Some(&pid) {
            recent.pids.retain(|&p| p != pid);
            if recent.pids.len() == RECENT_PIDS {
                recent.pids.pop_back();
            }
            recent.pids.push_front(pid);
        }
    }

    pub fn key(&self) -> Option<CgroupId> {
        self.key
    }

    /// Reads counted.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The row `vproc status` shows, with what the caller computes from the container's last
    /// resolution (`seen`: MemTotal in kB, CPUs, load averages).
    pub fn row(&self, seen: impl FnOnce(&Resolved) -> Seen) -> StatusRow {
        let now = Instant::now();
        let (resolved, pids, reads_per_second, idle) = {
            let recent = self.recent.lock();
            (
                recent.resolved,
                recent.pids.iter().copied().collect(),
                recent.rate.per_second(now),
                now.saturating_duration_since(recent.last_read),
            )
        };
        let seen = resolved.as_ref().map(seen).unwrap_or_default();
        let fallbacks: BTreeMap<String, u64> = Fallback::ALL
            .iter()
            .map(|c| {
                (
                    c.name().to_string(),
                    self.fallbacks[c.index()].load(Ordering::Relaxed),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        StatusRow {
            key: self.key.map(|k| k.to_string()),
            cgroup: self.cgroup.clone(),
            init_pid: resolved.and_then(|r| r.init_pid),
            pids,
            mem_total_kb: seen.mem_total_kb,
            cpus: seen.cpus,
            load: seen.load,
            reads_total: self.reads(),
            reads_per_second: (reads_per_second * 10.0).round() / 10.0,
            fallbacks_total: fallbacks.values().sum(),
            fallbacks,
            last_read_seconds_ago: (idle.as_secs_f64() * 10.0).round() / 10.0,
        }
    }
}

/// What `vproc status` needs of a container's last resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    /// Its memory limits; `None` when its memory cgroup is the root (the host's MemTotal).
    pub memory: Option<MemoryLimits>,
    /// The CPUs it sees; `None`: the host's.
    pub cpus: Option<usize>,
    /// Where its load averages are kept, if they are.
    pub load_key: Option<CgroupId>,
    /// The host pid of its pid namespace's init (`None`: the host's namespace).
    pub init_pid: Option<u32>,
}

/// What a container was last seen as: computed from its last resolution when the table is asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Seen {
    pub mem_total_kb: Option<u64>,
    pub cpus: Option<usize>,
    pub load: Option<[f64; 3]>,
}

/// Reads in the current and the previous [`RATE_WINDOW`]: the rate is the previous window's share
/// still inside the sliding window plus the current one's, over the window.
#[derive(Debug)]
struct RateWindow {
    started: Instant,
    previous: u64,
    current: u64,
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow {
            started: Instant::now(),
            previous: 0,
            current: 0,
        }
    }
}

impl RateWindow {
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= RATE_WINDOW * 2 {
            self.previous = 0;
            self.current = 0;
            self.started = now;
        } else if elapsed >= RATE_WINDOW {
            self.previous = self.current;
            self.current = 0;
            self.started += RATE_WINDOW;
        }
    }

    fn count(&mut self, now: Instant) {
        self.roll(now);
        self.current += 1;
    }

    fn per_second(&self, now: Instant) -> f64 {
        let mut window = RateWindow {
            started: self.started,
            previous: self.previous,
            current: self.current,
        };
        window.roll(now);
        let into =
            now.saturating_duration_since(window.started).as_secs_f64() / RATE_WINDOW.as_secs_f64();
        let previous_share = window.previous as f64 * (1.0 - into.min(1.0));
        (previous_share + window.current as f64) / RATE_WINDOW.as_secs_f64()
    }
}

/// One line of `vproc status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRow {
    /// The cgroup's identity, `DEV:INO`; `None` for the row of readers in no container.
    pub key: Option<String>,
    /// The cgroup (memory, else cpuacct) as its hierarchy names it; empty for readers in no container.
    pub cgroup: String,
    /// The host pid of the init of its pid namespace (`None`: the host's pid namespace).
    pub init_pid: Option<u32>,
    /// Its most recent readers (host pids), newest first.
    pub pids: Vec<u32>,
    /// The MemTotal and CPU count its /proc shows.
    pub mem_total_kb: Option<u64>,
    pub cpus: Option<usize>,
    /// Its load averages, once it has read loadavg (they are kept from then on).
    pub load: Option<[f64; 3]>,
    pub reads_total: u64,
    pub reads_per_second: f64,
    /// Reads that got the host's file, and by cause (see [`Fallback`]).
    pub fallbacks_total: u64,
    pub fallbacks: BTreeMap<String, u64>,
    pub last_read_seconds_ago: f64,
}

impl StatusRow {
    /// The fallbacks by cause, `3 no_pid, 1 reader_gone`; `None` when there were none.
    pub fn fallbacks_text(&self) -> Option<String> {
        (!self.fallbacks.is_empty()).then(|| {
            self.fallbacks
                .iter()
                .map(|(cause, n)| format!("{n} {cause}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}

/// One page of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainersPage {
    pub containers: Vec<StatusRow>,
    /// The attribute holding the next page; `None` on the last.
    pub next: Option<String>,
}

/// An attribute name that names no page of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAPage;

/// Where a page starts: the name after [`CONTAINERS_XATTR`] says after which key (`None`: the first
/// page, which starts with the readers in no container).
pub fn page_start(name: &str) -> Result<Option<CgroupId>, NotAPage> {
    let rest = name.strip_prefix(CONTAINERS_XATTR).ok_or(NotAPage)?;
    if rest.is_empty() {
        return Ok(None);
    }
    let key = rest.strip_prefix(".after.").ok_or(NotAPage)?;
    let (dev, ino) = key.split_once('.').ok_or(NotAPage)?;
    Ok(Some(CgroupId {
        dev: dev.parse().map_err(|_| NotAPage)?,
        ino: ino.parse().map_err(|_| NotAPage)?,
    }))
}

/// The page of `stats` (any order) that starts after `after`: rows in key order, as many as fit in
/// [`PAGE_BYTES`] (at least one). `row` computes a row.
pub fn page(
    stats: Vec<Arc<ContainerStats>>,
    after: Option<CgroupId>,
    row: impl Fn(&ContainerStats) -> StatusRow,
) -> ContainersPage {
    let order = |s: &Arc<ContainerStats>| s.key.map(|k| (k.dev, k.ino));
    let mut stats: Vec<_> = stats
        .into_iter()
        .filter(|s| match (after, s.key) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(after), Some(key)) => (key.dev, key.ino) > (after.dev, after.ino),
        })
        .collect();
    stats.sort_by_key(order);
    let mut containers = Vec::new();
    let mut bytes = 64;
    let mut next = None;
    for stat in &stats {
        let row = row(stat);
        let size = serde_json::to_string(&row).map_or(0, |s| s.len()) + 1;
        if !containers.is_empty() && bytes + size > PAGE_BYTES {
            // The readers in no container sort first and have no key: a page after them starts
            // after 0:0, which no cgroup is.
            let last = stats[containers.len() - 1]
                .key
                .unwrap_or(CgroupId { dev: 0, ino: 0 });
            next = Some(format!(
                "{CONTAINERS_XATTR}.after.{}.{}",
                last.dev, last.ino
            ));
            break;
        }
        bytes += size;
        containers.push(row);
    }
    ContainersPage { containers, next }
}

/// Every row of the daemon mounted at `mountpoint`, read page by page.
pub fn fetch(mountpoint: &Path) -> Result<Vec<StatusRow>, String> {
    let mut rows = Vec::new();
    let mut name = CONTAINERS_XATTR.to_string();
    // Pages are bounded (4096 containers at most): a daemon handing out pages forever is not one of
    // ours.
    for _ in 0..4096 {
        let mut buffer = vec![0u8; 64 << 10];
        let len = rustix::fs::getxattr(mountpoint, name.as_str(), &mut buffer[..]).map_err(|e| {
            format!(
                "cannot read the daemon's containers ({name} of {}): {e}; is it a vprocd of this \
                 version, and are we root?",
                mountpoint.display()
            )
        })?;
        let page: ContainersPage = serde_json::from_slice(&buffer[..len]).map_err(|e| {
            format!(
                "{name} of {}: not a containers page: {e}",
                mountpoint.display()
            )
        })?;
        rows.extend(page.containers);
        match page.next {
            Some(next) if next != name => name = next,
            _ => return Ok(rows),
        }
    }
    Err(format!(
        "{}: the daemon's containers table does not end",
        mountpoint.display()
    ))
}

/// `vproc status`: the daemon's health and its containers, most reads first, as a table or JSON.
pub fn status(mountpoint: &Path, json: bool) -> Result<String, String> {
    crate::attach::check_daemon(mountpoint).map_err(|e| e.to_string())?;
    let report = crate::health::read_report(mountpoint)?;
    let problems = crate::health::problems_in(&report)?;
    let rows = by_reads(fetch(mountpoint)?);
    if json {
        let status = serde_json::json!({
            "mountpoint": mountpoint,
            "status": if problems.is_empty() { "ok" } else { "degraded" },
            "problems": problems,
            "containers": rows,
        });
        return serde_json::to_string_pretty(&status)
            .map(|text| text + "\n")
            .map_err(|e| e.to_string());
    }
    let mut out = format!("vprocd at {}: ", mountpoint.display());
    if problems.is_empty() {
        out.push_str("ok\n");
    } else {
        out.push_str(&format!("degraded: {}\n", problems.join("; ")));
    }
    out.push_str(&format_table(&rows));
    if rows.is_empty() {
        out.push_str("(no reads in the last 15 minutes)\n");
    }
    Ok(out)
}

/// Rows sorted for an operator: most reads first.
pub fn by_reads(mut rows: Vec<StatusRow>) -> Vec<StatusRow> {
    rows.sort_by(|a, b| {
        b.reads_total
            .cmp(&a.reads_total)
            .then_with(|| a.cgroup.cmp(&b.cgroup))
    });
    rows
}

/// The table `vproc status` prints; the cgroup comes last, as `ps` puts the command, since a
/// container runtime's names are long.
pub fn format_table(rows: &[StatusRow]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>10} {:>8} {:<22} {:>10} {:>4} {:>14} {:>8} {:<23} CGROUP",
        "READS", "READS/S", "FALLBACKS", "MEMTOTAL", "CPUS", "LOAD", "INIT", "PIDS"
    );
    let dash = || "-".to_string();
    for row in rows {
        let fallbacks = row.fallbacks_text().unwrap_or_else(|| "0".to_string());
        let memory = row.mem_total_kb.map_or_else(dash, human_kb);
        let cpus = row.cpus.map_or_else(dash, |n| n.to_string());
        let load = row
            .load
            .map_or_else(dash, |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"));
        let init = row.init_pid.map_or_else(dash, |p| p.to_string());
        let pids = if row.pids.is_empty() {
            dash()
        } else {
            row.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        // A container may name its own cgroup: none of its characters may steer the terminal.
        let cgroup = if row.key.is_none() {
            "(no container: host processes, or not resolved)".to_string()
        } else {
            row.cgroup.escape_debug().to_string()
        };
        let _ = writeln!(
            out,
            "{:>10} {:>8.1} {fallbacks:<22} {memory:>10} {cpus:>4} {load:>14} {init:>8} {pids:<23} {cgroup}",
            row.reads_total, row.reads_per_second
        );
    }
    out
}

/// `262144` kB as `256.0 MiB`.
fn human_kb(kb: u64) -> String {
    let mib = kb as f64 / 1024.0;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(ino: u64) -> Arc<ContainerStats> {
        Arc::new(ContainerStats::new(
            CgroupId { dev: 30, ino },
            format!("/box-{ino}-{}", "x".repeat(400)),
        ))
    }

    fn unused(_: &Container) -> Resolved {
        unreachable!("no container is given")
    }

    #[test]
    fn the_figures_are_taken_once_per_resolution() {
        use crate::cgroup::ProcessCgroups;
        let container = Arc::new(Container {
            cgroups: ProcessCgroups::default(),
            memory: None,
            cpuacct: None,
            cpus: Some(vec![0, 1]),
            pidns: crate::reader::PidNamespace::Container {
                init_pid: 77,
                init_start_secs: 1.0,
            },
            identity: [None; 5],
        });
        let s = stats(1);
        let taken = std::cell::Cell::new(0);
        let resolve = |c: &Container| {
            taken.set(taken.get() + 1);
            Resolved {
                memory: None,
                cpus: c.cpus.as_ref().map(Vec::len),
                load_key: None,
                init_pid: Some(77),
            }
        };
        s.read(5, Some(&container), resolve, None);
        s.read(5, Some(&container), resolve, None);
        assert_eq!(taken.get(), 1, "the same resolution is not taken again");
        let row = s.row(|r| Seen {
            cpus: r.cpus,
            ..Seen::default()
        });
        assert_eq!((row.cpus, row.init_pid), (Some(2), Some(77)));
    }

    fn row(s: &ContainerStats) -> StatusRow {
        s.row(|_| Seen::default())
    }

    #[test]
    fn reads_and_fallbacks_are_counted_with_their_readers() {
        let s = stats(1);
        s.read(10, None, unused, None);
        s.read(11, None, unused, Some(Fallback::ReaderGone));
        s.read(10, None, unused, None);
        let row = row(&s);
        assert_eq!(row.reads_total, 3);
        assert_eq!(row.pids, vec![10, 11]);
        assert_eq!(row.fallbacks_total, 1);
        assert_eq!(row.fallbacks.get("reader_gone"), Some(&1));
        assert!(row.reads_per_second > 0.0);
        assert_eq!(row.key.as_deref(), Some("30:1"));
    }

    #[test]
    fn only_the_latest_readers_are_remembered() {
        let s = stats(1);
        for pid in 1..=10 {
            s.read(pid, None, unused, None);
        }
        assert_eq!(row(&s).pids, vec![10, 9, 8, 7]);
    }

    #[test]
    fn the_rate_slides_over_the_window() {
        let start = Instant::now();
        let mut window = RateWindow {
            started: start,
            previous: 0,
            current: 0,
        };
        for _ in 0..100 {
            window.count(start);
        }
        assert_eq!(window.per_second(start), 10.0);
        // Half a window later, all 100 are still inside it.
        assert_eq!(window.per_second(start + RATE_WINDOW / 2), 10.0);
        // One and a half windows later, half of them are.
        let later = window.per_second(start + RATE_WINDOW + RATE_WINDOW / 2);
        assert!((later - 5.0).abs() < 1e-9, "{later}");
        assert_eq!(window.per_second(start + RATE_WINDOW * 3), 0.0);
    }

    #[test]
    fn pages_hold_every_row_once_in_key_order() {
        let mut all: Vec<_> = (1..=400).rev().map(stats).collect();
        all.push(Arc::new(ContainerStats::outside()));
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = page(all.clone(), after, row);
            let json = serde_json::to_string(&page).unwrap();
            assert!(json.len() <= PAGE_BYTES, "{} bytes", json.len());
            pages += 1;
            seen.extend(page.containers.iter().map(|r| r.key.clone()));
            match page.next {
                Some(next) => after = page_start(&next).unwrap(),
                None => break,
            }
        }
        assert!(pages > 1, "400 long rows take more than one page");
        let mut expected = vec![None];
        expected.extend((1..=400).map(|ino| Some(format!("30:{ino}"))));
        assert_eq!(seen, expected);
    }

    #[test]
    fn names_other_than_ours_start_no_page() {
        assert_eq!(page_start(CONTAINERS_XATTR), Ok(None));
        assert_eq!(
            page_start("trusted.vproc.containers.after.30.7"),
            Ok(Some(CgroupId { dev: 30, ino: 7 }))
        );
        assert!(page_start("trusted.vproc.containers.after.30").is_err());
        assert!(page_start("trusted.vproc.health").is_err());
        assert!(page_start("trusted.vproc.containersx").is_err());
    }

    #[test]
    fn the_table_shows_most_reads_first() {
        let busy = stats(1);
        for _ in 0..5 {
            busy.read(7, None, unused, None);
        }
        let quiet = stats(2);
        quiet.read(8, None, unused, Some(Fallback::NotLimited));
        let hostile = Arc::new(ContainerStats::new(
            CgroupId { dev: 30, ino: 3 },
            "/evil\x1b[2J\rname".to_string(),
        ));
        hostile.read(9, None, unused, None);
        let rows = by_reads(vec![row(&quiet), row(&busy), row(&hostile)]);
        assert_eq!(rows[0].reads_total, 5);
        let table = format_table(&rows);
        let lines: Vec<_> = table.lines().collect();
        assert!(lines[0].trim_start().starts_with("READS"), "{table}");
        assert!(lines[0].ends_with("CGROUP"), "{table}");
        assert!(lines[1].trim_start().starts_with("5 "), "{table}");
        assert!(lines[1].contains(" /box-1-"), "{table}");
        assert!(lines.iter().any(|l| l.contains("1 not_limited")), "{table}");
        assert!(
            !table.contains('\x1b') && !table.contains('\r'),
            "{table:?}"
        );
        assert!(table.contains("/evil\\u{1b}[2J\\rname"), "{table}");
    }
}
