//! Whole-path throughput: open + read + close of proc/meminfo in a loop, by 1 and 2 reader threads of a
//! process inside a limited cgroup, on the kernel's /proc/meminfo, on vprocd's mount and (when Debian's
//! `lxcfs` is installed) on an LXCFS mount, interleaved in rounds in one run. Prints ops/s, p50, p99 and
//! the ratios. Needs root. Run: `cargo bench --bench throughput` (VPROC_BENCH_SECONDS sets a run's length).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Limits, MIB, TestCgroup};

struct Lxcfs {
    mountpoint: PathBuf,
    child: Child,
}

impl Lxcfs {
    fn start() -> Option<Lxcfs> {
        let binary = ["/usr/bin/lxcfs", "/usr/local/bin/lxcfs"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let mountpoint = std::env::temp_dir().join(common::unique("vproc-bench-lxcfs"));
        std::fs::create_dir_all(&mountpoint).ok()?;
        let pidfile = mountpoint.with_extension("pid");
        let child = Command::new(binary)
            .arg("-f")
            .arg("-p")
            .arg(&pidfile)
            .arg(&mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let lxcfs = Lxcfs { mountpoint, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if common::is_mounted(&lxcfs.mountpoint)
                && std::fs::File::open(lxcfs.mountpoint.join("proc/meminfo")).is_ok()
            {
                return Some(lxcfs);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Lxcfs {
    fn drop(&mut self) {
        // SAFETY: kill on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        if common::is_mounted(&self.mountpoint) {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&self.mountpoint);
        let _ = std::fs::remove_file(self.mountpoint.with_extension("pid"));
    }
}

/// Latencies (ns) of open+read+close loops by `readers` threads for `seconds`.
fn run(path: &Path, readers: usize, seconds: f64) -> (f64, Vec<u64>) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..readers)
        .map(|_| {
            let path = path.to_path_buf();
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(200_000);
                let mut buffer = Vec::with_capacity(8192);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut file = std::fs::File::open(&path).expect("open");
                    buffer.clear();
                    file.read_to_end(&mut buffer).expect("read");
                    drop(file);
                    latencies.push(t.elapsed().as_nanos() as u64);
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    (all.len() as f64 / elapsed, all)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and expects a quick exit.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds: f64 = std::env::var("VPROC_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let rounds = 5;
    let vprocd = Daemon::start(&[]);
    let lxcfs = Lxcfs::start();
    if lxcfs.is_none() {
        println!(
            "lxcfs is not installed (apt-get install lxcfs): measuring vprocd and the kernel only"
        );
    }
    // 256 MiB and two CPUs of quota: limited, so both daemons do their full work, yet not throttled.
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(256 * MIB),
        quota_us: Some(200_000),
        cpus: None,
    });
    let entered = group.enter();

    let mut targets: Vec<(&str, PathBuf)> = vec![
        ("kernel /proc", PathBuf::from("/proc/meminfo")),
        ("vprocd", vprocd.path("proc/meminfo")),
    ];
    if let Some(lxcfs) = &lxcfs {
        targets.push(("lxcfs 5.0.3", lxcfs.mountpoint.join("proc/meminfo")));
    }
    // A resolved reader is reused for up to 250 ms, and the daemon saw this process before it moved.
    let limited = || {
        let meminfo = std::fs::read_to_string(vprocd.path("proc/meminfo")).unwrap();
        meminfo.contains("MemTotal:         262144 kB")
    };
    let moved_at = Instant::now();
    while !limited() {
        assert!(
            moved_at.elapsed() < Duration::from_secs(1),
            "the reader is not seen in its cgroup"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    println!(
        "open+read+close of meminfo, {rounds} interleaved rounds of {seconds} s; the median round is shown"
    );
    println!(
        "{:<14} {:>7} {:>10} {:>9} {:>9}",
        "target", "readers", "ops/s", "p50 us", "p99 us"
    );
    let mut results = Vec::new();
    for readers in [1, 2] {
        let mut per_target: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); targets.len()];
        for _ in 0..rounds {
            for (i, (_, path)) in targets.iter().enumerate() {
                let (ops, lat) = run(path, readers, seconds);
                per_target[i].push((ops, percentile(&lat, 0.5), percentile(&lat, 0.99)));
            }
        }
        for (i, (name, _)) in targets.iter().enumerate() {
            let mut rounds = per_target[i].clone();
            rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (ops, p50, p99) = rounds[rounds.len() / 2];
            println!("{name:<14} {readers:>7} {ops:>10.0} {p50:>9.1} {p99:>9.1}");
            results.push((name.to_string(), readers, ops));
        }
    }
    drop(entered);
    let ops = |name: &str, readers: usize| {
        results
            .iter()
            .find(|r| r.0 == name && r.1 == readers)
            .map(|r| r.2)
    };
    for readers in [1, 2] {
        let vprocd = ops("vprocd", readers).unwrap();
        let kernel = ops("kernel /proc", readers).unwrap();
        print!(
            "ratios, {readers} reader(s): vprocd/kernel {:.2}",
            vprocd / kernel
        );
        if let Some(lxcfs) = ops("lxcfs 5.0.3", readers) {
            print!(", vprocd/lxcfs {:.2}", vprocd / lxcfs);
        }
        println!();
    }
}
