//! The daemon's memory under load, as an operator sizing a DaemonSet's limit would measure it:
//! - RSS over 10^6 open+read+close of proc/meminfo by 8 readers in 8 cgroups (one per cgroup, each with
//!   its own limit): sampled every second after a warm-up; must stay flat (within 10%);
//! - RSS before and with 4,000 views (containers, here processes alone in pid namespaces of their own),
//!   each with its meminfo read: must stay under the README's bound (16 KiB per view), and come back
//!   once the kernel forgets their inodes.
//!
//! Needs root and cgroup v1. Run: `cargo bench --bench memory` (VPROC_BENCH_READS sets the total
//! reads). Exits 1 when a bound is missed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{Daemon, Limits, MIB, Sleeper, TestCgroup};

/// Reads argv[1] argv[2] times (open, read all, close) and prints how many did not start with argv[3].
const READER: &str = r#"
import sys
path, count, expected = sys.argv[1], int(sys.argv[2]), sys.argv[3]
other = 0
for _ in range(count):
    with open(path, "rb", buffering=0) as f:
        if not f.read(65536).startswith(expected.encode()):
            other += 1
print(other)
"#;

const READERS: usize = 8;
/// RSS may move this much after the warm-up.
const FLAT_PERCENT: f64 = 10.0;
const VIEWS: usize = 4000;
/// README's bound: RSS per view with its meminfo read.
const VIEW_BYTES_BOUND: u64 = 16 * 1024;

fn main() -> ExitCode {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and expects a quick exit.
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    let reads: usize = std::env::var("VPROC_BENCH_READS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let daemon = Daemon::start(&[]);
    let mut ok = true;

    let groups: Vec<TestCgroup> = (1..=READERS as u64)
        .map(|i| {
            TestCgroup::new(Limits {
                memory_bytes: Some(64 * MIB * i),
                ..Limits::default()
            })
        })
        .collect();
    let started_rss = daemon.rss_bytes();
    let per_reader = reads / READERS;
    let started = Instant::now();
    let readers: Vec<_> = groups
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let expected = format!("MemTotal:{:>15} kB", 65536 * (i + 1));
            group.spawn(&format!(
                "exec python3 -c '{READER}' {} {per_reader} '{expected}'",
                daemon.path("proc/meminfo").display()
            ))
        })
        .collect();
    // Warm-up: the first 5% of the reads (or 3 s), when caches and the allocator's arenas fill.
    let warm = Duration::from_secs(3);
    std::thread::sleep(warm);
    let mut samples = vec![daemon.rss_bytes()];
    let mut readers = readers;
    while readers.iter_mut().any(|r| r.try_wait().unwrap().is_none()) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(daemon.rss_bytes());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut wrong = 0;
    for reader in readers {
        let out = reader.wait_with_output().unwrap();
        wrong += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<usize>()
            .unwrap_or(per_reader);
    }
    let after_warm = samples[0];
    let (low, high) = (
        *samples.iter().min().unwrap(),
        *samples.iter().max().unwrap(),
    );
    let drift = (high as f64 - after_warm as f64) / after_warm as f64 * 100.0;
    println!(
        "{} reads by {READERS} readers in {READERS} cgroups in {elapsed:.1} s ({:.0}/s); {wrong} saw another MemTotal",
        per_reader * READERS,
        (per_reader * READERS) as f64 / elapsed
    );
    println!(
        "RSS: {} KiB before, {} KiB after {warm:?} of reads, then {} to {} KiB over {} samples \
         (max {drift:+.1}% of the post-warm-up value; bound ±{FLAT_PERCENT}%)",
        started_rss / 1024,
        after_warm / 1024,
        low / 1024,
        high / 1024,
        samples.len()
    );
    let series: Vec<String> = samples
        .iter()
        .step_by((samples.len() / 12).max(1))
        .map(|rss| (rss / 1024).to_string())
        .collect();
    println!("RSS over the run (KiB): {}", series.join(" "));
    if drift.abs() > FLAT_PERCENT || wrong > 0 {
        println!("FAILED: RSS is not flat or readers saw another container's file");
        ok = false;
    }

    // Views: one per container the kernel holds inodes of.
    let before = daemon.rss_bytes();
    let sleepers: Vec<Sleeper> = (0..VIEWS).map(|_| Sleeper::start()).collect();
    for sleeper in &sleepers {
        let meminfo = daemon.path(&format!(".by-pid/{}/proc/meminfo", sleeper.pid));
        if std::fs::read(&meminfo).is_err() {
            println!("FAILED: cannot read {}", meminfo.display());
            ok = false;
        }
    }
    let during = daemon.rss_bytes();
    let views = common::views_in(&daemon.check().1);
    drop(sleepers);
    // The kernel forgets the inodes when its caches are dropped (FORGET); the views go with them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
        if common::views_in(&daemon.check().1) < 10 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = daemon.rss_bytes();
    let left = common::views_in(&daemon.check().1);
    let bound = VIEWS as u64 * VIEW_BYTES_BOUND;
    println!(
        "RSS: {} KiB before {VIEWS} views, {} KiB with them ({views} counted; {} bytes each; bound {} KiB \
         of growth), {} KiB once the kernel forgot them ({left} views left)",
        before / 1024,
        during / 1024,
        during.saturating_sub(before) / VIEWS as u64,
        bound / 1024,
        after / 1024
    );
    if during.saturating_sub(before) > bound || views < VIEWS || left >= 10 {
        println!(
            "FAILED: views grew the daemon past the bound, or were not all counted, or stayed"
        );
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
