//! vprocd on node-like load: its fds, memory and per-cgroup state stay within their budget, and
//! `vproc check` notices when it serves the host's files by its own fault. Real mounts and cgroup v1.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, HandleHolders, Limits, MIB, Sleeper, TestCgroup, stdout};

const LIMITED_MEMTOTAL: &str = "MemTotal:          65536 kB";

fn limited() -> Limits {
    Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    }
}

/// Samples the daemon's fd count every few ms while `work` runs; returns (work's result, the most fds).
fn with_fd_watch<T>(daemon: &Daemon, work: impl FnOnce() -> T) -> (T, usize) {
    let most = Arc::new(AtomicUsize::new(daemon.open_fds()));
    let done = Arc::new(AtomicBool::new(false));
    let pid = daemon.pid();
    let watcher = {
        let (most, done) = (Arc::clone(&most), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
                most.fetch_max(fds, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let result = work();
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    (result, most.load(Ordering::Relaxed))
}

/// Waits up to `within` for the daemon to hold at most `fds` fds; returns what it holds then.
fn fds_settle(daemon: &Daemon, fds: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let now = daemon.open_fds();
        if now <= fds || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fd budget under `ulimit -n 1024` (systemd's default soft limit): 384 reader pidfds plus what
/// the daemon holds anyway, far below the limit.
const MOST_FDS_AT_1024: usize = 512;

/// Runs `script(meminfo path)` in a 64 MiB cgroup against a daemon under `ulimit -n 1024` (in a pid
/// namespace of its own when `own_pidns`), checks that the daemon's fds stayed within the budget and
/// went back to where they were once the readers were gone, and returns the script's output.
fn readers_under_ulimit_1024(script: impl Fn(&Path) -> String, own_pidns: bool) -> String {
    let daemon = Daemon::start_with_open_files(&[], 1024);
    let baseline = daemon.open_fds();
    let group = TestCgroup::new(limited());
    let script = script(&daemon.path("proc/meminfo"));
    let started = Instant::now();
    let (out, most) = with_fd_watch(&daemon, || {
        stdout(if own_pidns {
            group.run(&script)
        } else {
            group.run_in_host_pidns(&script)
        })
    });
    println!(
        "readers done in {:.1} s, at most {most} daemon fds",
        started.elapsed().as_secs_f64()
    );
    assert!(
        most <= MOST_FDS_AT_1024,
        "the daemon held {most} fds (limit 1024)"
    );
    let settled = fds_settle(&daemon, baseline + 4, Duration::from_secs(5));
    assert!(
        settled <= baseline + 4,
        "readers gone, the daemon still holds {settled} fds (started with {baseline})"
    );
    let (healthy, report) = daemon.check();
    assert!(healthy, "{report}");
    out
}

#[test]
fn five_thousand_short_lived_readers_under_ulimit_1024_all_see_their_limit() {
    let out = readers_under_ulimit_1024(
        |meminfo| {
            format!(
                "for i in $(seq 5000); do head -n1 {}; done",
                meminfo.display()
            )
        },
        true,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5000);
    let host = lines.iter().filter(|l| **l != LIMITED_MEMTOTAL).count();
    assert_eq!(host, 0, "{host} of 5000 readers got another MemTotal");
}

/// Reads the file in argv[1] from argv[2] threads one after another, 8 at a time, each a new task id
/// (what FUSE names the reader); prints how many saw a first line other than argv[3].
const THREAD_READERS: &str = r#"
import sys, threading
path, count, expected = sys.argv[1], int(sys.argv[2]), sys.argv[3]
other = 0
def read():
    global other
    with open(path) as f:
        if f.readline().rstrip("\n") != expected:
            other += 1
for _ in range(0, count, 8):
    batch = [threading.Thread(target=read) for _ in range(8)]
    for t in batch: t.start()
    for t in batch: t.join()
print(other)
"#;

#[test]
fn a_hundred_thousand_reader_threads_under_ulimit_1024_keep_the_fd_count_flat() {
    let out = readers_under_ulimit_1024(
        |meminfo| {
            format!(
                "python3 -c '{THREAD_READERS}' {} 100000 '{LIMITED_MEMTOTAL}'",
                meminfo.display()
            )
        },
        false,
    );
    assert_eq!(out.trim(), "0", "readers that saw another MemTotal");
}

/// Burns `secs` of CPU time in the calling process.
fn burn(secs: f64) -> String {
    format!("python3 -c 'import time\nwhile time.process_time() < {secs}: pass'")
}

/// `user + system` of the `cpu` line of a /proc/stat, in ticks.
fn busy_ticks(stat: &str) -> u64 {
    let cpu = stat.lines().next().unwrap();
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    fields[0] + fields[2]
}

#[test]
fn a_container_recreated_on_the_same_cgroup_path_shows_its_own_cpu_time_growing() {
    let daemon = Daemon::start(&[]);
    let stat = daemon.path("proc/stat");
    let read_stat = format!("head -n1 {}", stat.display());
    let old = TestCgroup::new(limited());
    let relative = old.relative.clone();
    let old_busy = busy_ticks(&stdout(old.run(&format!("{} && {read_stat}", burn(1.5)))));
    assert!(
        old_busy >= 140,
        "the first run burned 1.5 s: {old_busy} ticks"
    );
    drop(old);

    let new = TestCgroup::at(&relative, limited());
    let first = busy_ticks(&stdout(new.run(&read_stat)));
    let then = busy_ticks(&stdout(new.run(&format!("{} && {read_stat}", burn(0.5)))));
    assert!(
        first < old_busy,
        "the new cgroup starts from its own usage: {first} ticks, the old run had {old_busy}"
    );
    assert!(
        then >= first + 40,
        "0.5 s of CPU burned: /proc/stat went from {first} to {then} ticks"
    );
}

/// README's budget: at most 200 bytes of table per open handle (~120 measured), rendered bytes shared
/// and capped at 16 MiB.
const RSS_BOUND_FOR_100K_HANDLES: u64 = 100_000 * 200 + 16 * MIB;

#[test]
fn a_hundred_thousand_open_handles_keep_rss_under_the_bound_and_each_container_to_its_share() {
    let daemon = Daemon::start(&[]);
    // Room for the Pythons and the kernel's open files, still each container's own meminfo.
    let group = || {
        TestCgroup::new(Limits {
            memory_bytes: Some(2048 * MIB),
            ..Limits::default()
        })
    };
    let (full, other) = (group(), group());
    for _ in 0..100 {
        std::fs::read(daemon.path("proc/meminfo")).unwrap();
    }
    let meminfo = daemon.path("proc/meminfo");
    let before = daemon.rss_bytes();
    let share = vproc::fs::MAX_HANDLES_PER_CONTAINER;
    let holders = [
        HandleHolders::open(&full, &meminfo, share),
        HandleHolders::open(&other, &meminfo, 100_000 - share),
    ];
    let during = daemon.rss_bytes();
    let (healthy, report) = daemon.check();
    let open_one = format!(
        "python3 -c 'import os, sys\ntry: os.open(sys.argv[1], os.O_RDONLY); print(\"opened\")\n\
         except OSError as e: print(e.strerror)' {}",
        meminfo.display()
    );
    let in_full = stdout(full.run_in_host_pidns(&open_one));
    let in_other = stdout(other.run_in_host_pidns(&open_one));
    for holder in holders {
        holder.close();
    }
    assert_eq!(
        in_full.trim(),
        "Too many open files",
        "a container at its share of {share} handles"
    );
    assert_eq!(in_other.trim(), "opened", "another container still opens");
    println!(
        "RSS before {} KiB, with 100000 open handles {} KiB ({} bytes per handle)\n{report}",
        before / 1024,
        during / 1024,
        during.saturating_sub(before) / 100_000
    );
    assert!(
        during.saturating_sub(before) <= RSS_BOUND_FOR_100K_HANDLES,
        "RSS grew by {} MiB for 100000 handles",
        during.saturating_sub(before) / MIB
    );
    assert!(report.contains("open_handles: 100000"), "{report}");
    assert!(healthy, "{report}");
}

/// README's budget: a view (a container's inodes) with its meminfo read costs at most 16 KiB of RSS.
const RSS_BOUND_PER_VIEW: u64 = 16 * 1024;
const VIEWS: usize = 1000;

#[test]
fn a_thousand_containers_inodes_stay_under_the_bound_and_go_when_the_kernel_forgets_them() {
    let daemon = Daemon::start(&[]);
    for _ in 0..100 {
        std::fs::read(daemon.path("proc/meminfo")).unwrap();
    }
    let before = daemon.rss_bytes();
    let sleepers: Vec<Sleeper> = (0..VIEWS).map(|_| Sleeper::start()).collect();
    for sleeper in &sleepers {
        let path = daemon.path(&format!(".by-pid/{}/proc/meminfo", sleeper.pid));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("MemTotal:"), "{}: {text}", path.display());
    }
    let during = daemon.rss_bytes();
    let (healthy, report) = daemon.check();
    // A container may not name its neighbours' files.
    let from_a_container = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "cat"])
        .arg(daemon.path(&format!(".by-pid/{}/proc/meminfo", sleepers[0].pid)))
        .output()
        .unwrap();
    drop(sleepers);
    println!(
        "RSS before {} KiB, with {VIEWS} views {} KiB ({} bytes per view)\n{report}",
        before / 1024,
        during / 1024,
        during.saturating_sub(before) / VIEWS as u64
    );
    assert!(common::views_in(&report) >= VIEWS, "{report}");
    assert!(healthy, "{report}");
    assert!(
        during.saturating_sub(before) <= RSS_BOUND_PER_VIEW * VIEWS as u64,
        "RSS grew by {} KiB for {VIEWS} views",
        during.saturating_sub(before) / 1024
    );
    assert!(!from_a_container.status.success());
    assert!(
        String::from_utf8_lossy(&from_a_container.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&from_a_container.stderr)
    );
    // The kernel forgets the inodes (FORGET) when its caches are dropped: so does the daemon.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, report) = daemon.check();
        let views = common::views_in(&report);
        if views < 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{views} views left\n{report}");
        std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn check_fails_while_the_daemon_serves_the_hosts_files_for_lack_of_fds() {
    let daemon = Daemon::start(&[]);
    let (healthy, report) = daemon.check();
    assert!(healthy, "{report}");
    let group = TestCgroup::new(limited());

    // As if the daemon had run out: no fd can be opened any more (the lowest free fd is above 2, and
    // the count it holds moves as its sweeper closes pidfds).
    let before = soft_open_files(daemon.pid(), None);
    soft_open_files(daemon.pid(), Some(3));
    let _ = group.run(&format!(
        "head -n1 {}",
        daemon.path("proc/meminfo").display()
    ));
    let (healthy, report) = daemon.check();
    soft_open_files(daemon.pid(), Some(before));
    assert!(!healthy, "check passed while out of fds:\n{report}");
    assert!(
        report.contains("degraded") && report.contains("Too many open files"),
        "{report}"
    );

    let out = stdout(group.run(&format!(
        "head -n1 {}",
        daemon.path("proc/meminfo").display()
    )));
    assert_eq!(out.trim_end(), LIMITED_MEMTOTAL);
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let (healthy, report) = daemon.check();
        if healthy {
            break report;
        }
        assert!(Instant::now() < deadline, "still degraded:\n{report}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(report.starts_with("status: ok"), "{report}");
}

/// Process `pid`'s soft RLIMIT_NOFILE, set to `soft` when given (the hard limit stays: raising it
/// needs CAP_SYS_RESOURCE, which CI's root may not have). Returns the soft limit before.
fn soft_open_files(pid: u32, soft: Option<u64>) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on a pid we started, reading into a struct we own.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    if let Some(soft) = soft {
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: as above, with a valid new limit.
        let rc = unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_NOFILE,
                &new,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
    old.rlim_cur
}

#[test]
fn check_says_why_when_nothing_is_mounted() {
    let dir = std::env::temp_dir().join(common::unique("vproc-test-nomount"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vproc"))
        .args(["check", "--mountpoint"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a FUSE mount"), "{stderr}");
}
