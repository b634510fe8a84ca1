//! Per-container load, task counts, I/O, pressure and CPU topology, read by the programs people run:
//! procps `uptime` and `top`, Python's `os.getloadavg()`, Node's `os.loadavg()`, sysstat's `iostat`,
//! `lscpu`, psutil and hwloc, each inside a container whose /proc and /sys/devices/system/cpu files are
//! vprocd's. cgroup v1 here; the v2 half is in the VM lane (tests/vm/guest-init). Needs root, /dev/fuse,
//! writable cgroup v1 hierarchies and the Debian packages scripts/test installs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Limits, TestCgroup, small_box, stdout};

/// Debian's Python, which has psutil (the PATH may lead to another).
const PYTHON: &str = "/usr/bin/python3";

/// A shell prefix binding the daemon's files over /proc and /sys/devices/system/cpu, as a container
/// runtime does.
fn bind_all(mountpoint: &std::path::Path) -> String {
    let m = mountpoint.display();
    let mut script = String::new();
    for file in [
        "meminfo",
        "cpuinfo",
        "stat",
        "uptime",
        "loadavg",
        "diskstats",
    ] {
        script += &format!("mount --bind {m}/proc/{file} /proc/{file} && ");
    }
    script += &format!("mount --bind {m}/sys/devices/system/cpu /sys/devices/system/cpu && ");
    // Each block device's sysfs stat, where iostat reads (sys/block holds symlinks to them). Best
    // effort, as vproc run binds them: another test's loop device may be gone by now.
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(real) = std::fs::canonicalize(entry.path()) else {
            continue;
        };
        script += &format!(
            "{{ mount --bind {m}/sys/block/{name}/stat {}/stat 2>/dev/null || true; }} && ",
            real.display()
        );
    }
    script
}

/// The first three fields of a loadavg line.
fn averages(loadavg: &str) -> [f64; 3] {
    let fields: Vec<f64> = loadavg
        .split_whitespace()
        .take(3)
        .map(|f| f.parse().unwrap_or_else(|_| panic!("loadavg: {loadavg:?}")))
        .collect();
    [fields[0], fields[1], fields[2]]
}

/// Starts `count` busy loops in `group` and waits until they are in it; they end with the group.
fn busy_loops(group: &TestCgroup, count: usize) -> Vec<std::process::Child> {
    let loops = (0..count)
        .map(|_| group.spawn("exec sh -c 'while :; do :; done'"))
        .collect();
    let procs = format!("/sys/fs/cgroup/cpuacct/{}/cgroup.procs", group.relative);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&procs).unwrap().lines().count() < count {
        assert!(
            Instant::now() < deadline,
            "the loops did not join the group"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    loops
}

fn end(children: Vec<std::process::Child>) {
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The three averages a tool printed as `load average: 2.00, 2.00, 2.00`.
fn printed_averages(line: &str) -> [f64; 3] {
    let tail = line
        .rsplit_once("load average: ")
        .unwrap_or_else(|| panic!("no load average in {line:?}"))
        .1;
    let values: Vec<f64> = tail
        .split(", ")
        .map(|v| v.trim().parse().unwrap())
        .collect();
    [values[0], values[1], values[2]]
}

/// True when each average is `want` or one 5 s step above it (a task of the reading shell caught
/// runnable by the sampler on a loaded machine adds 0.08 to the 1-minute average).
fn near(got: [f64; 3], want: f64) -> bool {
    got.iter().all(|&v| v >= want && v <= want + 0.1)
}

#[test]
fn load_is_the_container_s_from_the_first_read_for_every_consumer() {
    let daemon = Daemon::start(&[]);
    let m = daemon.mountpoint.display();
    let group = TestCgroup::new(small_box());
    let loops = busy_loops(&group, 2);
    // The first read of a container sets its averages at what runs then: here read by a process alone
    // in the group besides the two loops (a shell waiting for its child could be caught runnable on a
    // loaded machine, and would count, as the kernel counts it). The host's load is whatever this
    // machine does; LXCFS says 0.00 until minutes of sampling have passed.
    let first = stdout(group.run_in_host_pidns(&format!("exec cat {m}/proc/loadavg")));
    assert_eq!(averages(&first), [2.0, 2.0, 2.0], "{first}");
    // Running: the two loops and the reader; total: those three.
    assert_eq!(first.split_whitespace().nth(3), Some("3/3"), "{first}");
    // Every consumer inside the container sees those averages.
    // (Python's os.getloadavg() is not here: glibc's getloadavg() asks sysinfo(2), as strace shows,
    // which no file can change: tests/syscalls.rs has it, answered by vproc run's seccomp listener.)
    let out = stdout(group.run(&format!(
        "{} uptime; top -bn1 | head -1; \
         node -e 'console.log(require(\"os\").loadavg().map(l => l.toFixed(2)).join(\", \"))' \
           | sed 's/^/load average: /'; \
         grep ^procs_ /proc/stat",
        bind_all(&daemon.mountpoint)
    )));
    end(loops);
    let lines: Vec<&str> = out.lines().collect();
    for (tool, line) in ["uptime", "top", "node"].iter().zip(&lines) {
        assert!(near(printed_averages(line), 2.0), "{tool}: {out}");
    }
    // The loops and the reader, and perhaps the shell that started it, caught runnable.
    let running: u32 = lines[3]
        .strip_prefix("procs_running ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("/proc/stat: {out}"));
    assert!((3..=5).contains(&running), "/proc/stat: {out}");
    assert_eq!(lines[4], "procs_blocked 0", "/proc/stat: {out}");

    // An idle container beside it: nothing runs but the reader.
    let idle = TestCgroup::new(small_box());
    let out = stdout(idle.run_in_host_pidns(&format!("exec cat {m}/proc/loadavg")));
    assert_eq!(averages(&out), [0.0, 0.0, 0.0], "{out}");
    assert_eq!(out.split_whitespace().nth(3), Some("1/1"), "{out}");
}

#[test]
fn a_stat_before_the_first_read_does_not_start_the_averages() {
    // A runtime looks the bind's source up (a stat, whose size is rendered for the asker) from the
    // container's cgroup while it sets the container up, before anything runs there; the first read,
    // later, is what starts the averages. Before, a fresh daemon's first container read 0.00 beside a
    // busy loop.
    let daemon = Daemon::start(&[]);
    let m = daemon.mountpoint.display();
    let group = TestCgroup::new(small_box());
    stdout(group.run_in_host_pidns(&format!("exec stat -c %s {m}/proc/loadavg")));
    let loops = busy_loops(&group, 1);
    let first = stdout(group.run_in_host_pidns(&format!("exec cat {m}/proc/loadavg")));
    end(loops);
    assert_eq!(averages(&first), [1.0, 1.0, 1.0], "{first}");
}

#[test]
fn the_averages_follow_the_kernel_s_formula_every_five_seconds() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    let path = daemon.path("proc/loadavg");
    let read = || stdout(group.run_in_host_pidns(&format!("exec cat {}", path.display())));
    assert_eq!(averages(&read()), [0.0, 0.0, 0.0]);
    let loops = busy_loops(&group, 1);
    // One step of the kernel's formula with one task takes the 1-minute average from 0 to 0.08, the
    // 5-minute to 0.01 and the 15-minute to 0.00 (1 - EXP_n / 2048, rounded). The sampler steps every
    // 5 s; a loaded runner may delay it, so wait up to a minute for the first step.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let now = averages(&read());
        if now[0] > 0.0 {
            break now;
        }
        assert!(Instant::now() < deadline, "no step in a minute: {now:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    end(loops);
    assert!(first[0] >= 0.08 && first[0] < 1.0, "{first:?}");
    assert!(first[0] > first[1] && first[1] >= first[2], "{first:?}");
}

#[test]
fn the_last_pid_is_the_newest_of_the_container_s_namespace() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    // The kernel's /proc/loadavg in a pid namespace names that namespace's last pid: the first cat's.
    // The second cat is the next pid, and the newest task of the container when it reads.
    let out = stdout(group.run(&format!(
        "cat /proc/loadavg; cat {}/proc/loadavg",
        daemon.mountpoint.display()
    )));
    let last = |line: &str| -> u32 { line.split_whitespace().nth(4).unwrap().parse().unwrap() };
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(last(lines[1]), last(lines[0]) + 1, "{out}");
}

#[test]
fn topology_is_one_package_of_the_visible_cores_for_lscpu_psutil_and_hwloc() {
    let daemon = Daemon::start(&[]);
    // Host CPU 1 alone: it becomes CPU 0, and its host core id (1) must not show through.
    let group = TestCgroup::new(Limits {
        cpus: Some("1"),
        ..small_box()
    });
    let out = stdout(group.run(&format!(
        "{} lscpu | grep -E '^(CPU\\(s\\)|Thread\\(s\\) per core|Core\\(s\\) per socket|Socket\\(s\\)):'; \
         {PYTHON} -c 'import psutil; print(psutil.cpu_count(), psutil.cpu_count(logical=False))'; \
         grep -E '^(physical id|siblings|core id|cpu cores|apicid)' /proc/cpuinfo | tr -d '\\t'; \
         cd /sys/devices/system/cpu/cpu0 && cat topology/core_id topology/core_siblings_list \
           topology/thread_siblings_list topology/package_cpus cache/index0/shared_cpu_list",
        bind_all(&daemon.mountpoint)
    )));
    let squeezed: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let mut expected: Vec<&str> = vec![
        "CPU(s): 1",
        "Thread(s) per core: 1",
        "Core(s) per socket: 1",
        "Socket(s): 1",
        "1 1",
        "physical id: 0",
        "siblings: 1",
        "core id: 0",
        "cpu cores: 1",
        "apicid: 0",
        "0",
        "0",
        "0",
    ];
    // The host's mask width (one hex digit per 4 possible CPUs) is kept.
    let mask_digits = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/topology/package_cpus")
        .unwrap()
        .trim()
        .replace(',', "")
        .len();
    let mask = format!("{}1", "0".repeat(mask_digits - 1));
    expected.push(&mask);
    expected.push("0");
    assert_eq!(squeezed, expected, "{out}");

    // hwloc also takes the process's CPU affinity, which names host CPUs: a cpuset from CPU 0 with a
    // quota of one CPU shows CPU 0, which the affinity allows.
    let group = TestCgroup::new(Limits {
        cpus: Some("0-1"),
        quota_us: Some(100_000),
        ..small_box()
    });
    let out = stdout(group.run(&format!(
        "{} hwloc-calc --number-of core all; hwloc-calc --number-of pu all; \
         {PYTHON} -c 'import psutil; print(psutil.cpu_count(logical=False))'",
        bind_all(&daemon.mountpoint)
    )));
    // (`nproc --all` is not here: glibc's get_nprocs_conf() also counts sched_getaffinity(2), which no
    // file can change; the seccomp agent's issue.)
    assert_eq!(out, "1\n1\n1\n", "hwloc cores, PUs, psutil cores");
}

/// A loop device over a file, detached on drop.
struct Loop {
    device: String,
    number: String,
    image: std::path::PathBuf,
    /// The loop number the test made the device at, removed again after use.
    made: Option<u32>,
}

impl Loop {
    fn new() -> Loop {
        Loop::at(None)
    }

    /// A loop device at `/dev/loopN` when given (a disk that has never had a throttle rule, if N is
    /// new), else the first free one.
    fn at(number_asked: Option<u32>) -> Loop {
        let number = number_asked;
        let image = std::env::temp_dir().join(common::unique("vproc-test-loop"));
        std::fs::write(&image, vec![0u8; 8 << 20]).unwrap();
        let mut losetup = Command::new("losetup");
        match number {
            Some(n) => losetup.arg(format!("/dev/loop{n}")).arg("--show"),
            None => losetup.args(["-f", "--show"]),
        };
        let out = losetup.arg(&image).output().unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let device = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let name = device.trim_start_matches("/dev/").to_string();
        let number = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .unwrap()
            .trim()
            .to_string();
        Loop {
            device,
            number,
            image,
            made: number_asked,
        }
    }

    fn name(&self) -> &str {
        self.device.trim_start_matches("/dev/")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        let _ = std::fs::remove_file(&self.image);
        if let (Some(n), Ok(control)) = (self.made, std::fs::File::open("/dev/loop-control")) {
            const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
            // SAFETY: an ioctl taking an integer on the loop control device.
            unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&control),
                    LOOP_CTL_REMOVE,
                    n as libc::c_ulong,
                )
            };
        }
    }
}

#[test]
fn diskstats_shows_the_devices_the_container_used_with_its_own_counts() {
    let daemon = Daemon::start(&[]);
    let disk = Loop::new();
    let group = TestCgroup::new(small_box());
    // What `vproc run` does on cgroup v1: a rule of 0 ("no limit") makes the kernel count the group's
    // I/O on the disk.
    group.set(
        "blkio",
        "blkio.throttle.read_bps_device",
        &format!("{} 0", disk.number),
    );
    let m = daemon.mountpoint.display();
    let read =
        |group: &TestCgroup| stdout(group.run_in_host_pidns(&format!("cat {m}/proc/diskstats")));
    // (The group's own programs may have been read from the root disk: only the loop device counts.)
    assert!(
        !read(&group).contains(disk.name()),
        "no I/O on the device yet"
    );
    let disks_bound: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let out = stdout(group.run(&format!(
        "dd if=/dev/zero of={dev} bs=4k count=64 oflag=direct 2>/dev/null && \
         dd if={dev} of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null && \
         {} cat /proc/diskstats; echo ===; iostat -d -k",
        bind_all(&daemon.mountpoint),
        dev = disk.device
    )));
    let (diskstats, iostat) = out.split_once("===\n").unwrap();
    // /proc/diskstats: the loop device with the container's 16 reads (128 sectors) and 64 writes
    // (512 sectors) in the kernel's field count; besides it only devices the container itself read
    // (its programs from the root disk), never a device it did not touch.
    let host_fields = std::fs::read_to_string("/proc/diskstats")
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .count();
    let mut seen_loop = false;
    for line in diskstats.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), host_fields, "the kernel's field count: {out}");
        if fields[2] == disk.name() {
            seen_loop = true;
            assert_eq!(
                (fields[3], fields[5], fields[7], fields[9]),
                ("16", "128", "64", "512"),
                "reads, sectors read, writes, sectors written: {out}"
            );
        } else {
            assert!(
                !fields[2].starts_with("loop"),
                "a device it never used: {out}"
            );
        }
    }
    assert!(seen_loop, "{out}");
    // iostat reads each device's sysfs stat: the container's device shows its 64 KiB read and 256 KiB
    // written; the host's other loop devices show nothing, whatever the host did with them.
    let row = |name: &str| -> Vec<String> {
        iostat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in iostat: {iostat}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let own = row(disk.name());
    assert_eq!(
        own[own.len() - 3..],
        ["64", "256", "0"],
        "kB read, written, discarded: {iostat}"
    );
    // (Only disks there before the binds: another test's loop device made since is not bound.)
    for name in &disks_bound {
        if name.starts_with("loop") && name != disk.name() && iostat.contains(name.as_str()) {
            let other = row(name);
            assert_eq!(
                other[other.len() - 3..],
                ["0", "0", "0"],
                "{name}: {iostat}"
            );
        }
    }

    // It only goes up, and another container sees none of it.
    let more = stdout(group.run_in_host_pidns(&format!(
        "dd if=/dev/zero of={} bs=4k count=8 oflag=direct 2>/dev/null; cat {m}/proc/diskstats",
        disk.device
    )));
    assert_eq!(more.split_whitespace().nth(7), Some("72"), "{more}");
    let other = TestCgroup::new(small_box());
    assert!(
        !read(&other).contains(disk.name()),
        "another container did no I/O on it"
    );
}

#[test]
fn diskstats_comes_from_bfq_where_no_throttle_rule_counts() {
    // A loop device no test has written a throttle rule for (a number of this run's own), scheduled
    // by BFQ: the throttle layer counts nothing there, BFQ counts the cgroup's I/O.
    let number = 1000 + std::process::id() % 100_000;
    let disk = Loop::at(Some(number));
    let scheduler = format!("/sys/block/{}/queue/scheduler", disk.name());
    if std::fs::write(&scheduler, "bfq").is_err() {
        eprintln!("no BFQ on this kernel: nothing to check");
        return;
    }
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    // Also some direct I/O on the disk under the temporary directory, which the throttle layer may
    // count (a disk with a rule): each disk takes its counts from the layer that has them.
    let other = std::env::temp_dir().join(common::unique("vproc-test-direct"));
    std::fs::write(&other, vec![0u8; 65536]).unwrap();
    let out = stdout(group.run_in_host_pidns(&format!(
        "dd if={} of=/dev/null bs=4k iflag=direct 2>/dev/null; \
         dd if=/dev/zero of={} bs=4k count=24 oflag=direct 2>/dev/null; \
         grep -c '^{} Write [1-9]' /sys/fs/cgroup/blkio/{}/blkio.throttle.io_serviced_recursive; \
         grep ' {} ' {}/proc/diskstats; true",
        other.display(),
        disk.device,
        disk.number,
        group.relative,
        disk.name(),
        daemon.mountpoint.display()
    )));
    let _ = std::fs::remove_file(&other);
    let lines: Vec<&str> = out.lines().collect();
    if lines[0] != "0" {
        eprintln!("the throttle layer counts this disk already: BFQ's counts are not needed");
        return;
    }
    let fields: Vec<&str> = lines.get(1).unwrap_or(&"").split_whitespace().collect();
    assert_eq!(
        (fields.get(7), fields.get(9)),
        (Some(&"24"), Some(&"192")),
        "writes, sectors: {out}"
    );
}

#[test]
fn pressure_is_the_host_s_on_cgroup_v1() {
    if !std::path::Path::new("/proc/pressure/cpu").exists() {
        eprintln!("this kernel has no PSI: nothing to pass through");
        return;
    }
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    for resource in ["cpu", "io", "memory"] {
        let out = stdout(group.run(&format!(
            "cat {}/proc/pressure/{resource}",
            daemon.mountpoint.display()
        )));
        let keys: Vec<&str> = out
            .lines()
            .map(|l| l.split_whitespace().next().unwrap_or(""))
            .collect();
        assert_eq!(keys, ["some", "full"], "{resource}: {out}");
        assert!(out.contains("avg10=") && out.contains("total="), "{out}");
    }
}
