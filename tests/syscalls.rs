//! sysinfo(2) and sched_getaffinity(2) answered for the container through seccomp user notification,
//! in `vproc run` (cgroup v1 here; the VM lane repeats these on v2): busybox `free`, `uptime` and
//! `nproc` (named as `busybox free`: the host's /usr/bin comes first in PATH, and procps reads files), glibc's `getconf _PHYS_PAGES` and `nproc`, Python's `os.sched_getaffinity`. The podman +
//! runc half, with the shipped profile and `vproc seccomp-agent`, is in tests/podman.rs. Needs root,
//! /dev/fuse, writable cgroup v1 hierarchies, busybox-static and python3.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::{Daemon, unique};

/// A busybox root with the host's /usr bound in (`-v /usr:/usr:ro`), for glibc's tools and Python.
fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("vproc-syscalls-rootfs"));
        common::busybox_rootfs(&dir);
        std::fs::create_dir_all(dir.join("usr")).unwrap();
        for lib in ["lib", "lib64"] {
            std::os::unix::fs::symlink(format!("usr/{lib}"), dir.join(lib)).unwrap();
        }
        dir
    })
}

/// The host's CPUs for the container: two where there are, so that a cut to one shows.
fn cpuset() -> &'static str {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    if online.trim() == "0" { "0" } else { "0-1" }
}

/// `vproc run` of `script` in a 256 MiB, half-CPU container on [`cpuset`], with `extra` options.
fn run(daemon: &Daemon, extra: &[&str], script: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vproc"))
        .arg("run")
        .arg("--lxcfs")
        .arg(&daemon.mountpoint)
        .arg("--rootfs")
        .arg(rootfs())
        .args(["-v", "/usr:/usr:ro", "-m", "256m", "--cpus", "0.5"])
        .args(["--cpuset-cpus", cpuset()])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The words after `key` on its line of `out`.
fn field<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    out.lines()
        .find_map(|line| {
            line.strip_prefix(key)
                .map(|rest| rest.split_whitespace().collect())
        })
        .unwrap_or_else(|| panic!("no {key} line in {out}"))
}

const REPORT: &str = r#"
(sleep 0.3; exec busybox uptime) > /tmp/uptime & wait $!
echo idle $(sed 's/.*load average://; s/,//g' /tmp/uptime)
busybox free | awk '/^Mem:/ { print "free", $2 }'
echo phys $(/usr/bin/getconf _PHYS_PAGES) $(/usr/bin/getconf PAGESIZE)
echo nproc $(/usr/bin/nproc) $(busybox nproc)
/usr/bin/python3 -c '
import ctypes, os, threading
# From a worker thread too: its own id, and the process id (the main thread, as the kernel reads it).
seen = []
worker = threading.Thread(target=lambda: seen.extend(
    [len(os.sched_getaffinity(threading.get_native_id())), len(os.sched_getaffinity(os.getpid()))]))
worker.start(); worker.join()
print("py", len(os.sched_getaffinity(0)), len(os.sched_getaffinity(os.getpid())), *seen,
      os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
# glibc getloadavg() asks sysinfo(2).
print("getloadavg", "%.2f" % os.getloadavg()[0])
libc = ctypes.CDLL(None, use_errno=True)
# Errors stay the kernel own: a bad address, a mask too small.
print("errors", libc.sysinfo(None), ctypes.get_errno(),
      libc.sched_getaffinity(0, 4, ctypes.create_string_buffer(8)), ctypes.get_errno())
# A read-only page is not written (the kernel: EFAULT), though /proc/PID/mem could.
libc.mmap.restype = ctypes.c_void_p
page = libc.mmap(None, 4096, 1, 0x22, -1, 0)
print("readonly", libc.sysinfo(ctypes.c_void_p(page)), ctypes.get_errno(),
      ctypes.string_at(page, 112).count(0))
'
"#;

fn host_mem_total_kb() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    meminfo.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn sysinfo_and_the_cpu_mask_are_the_container_s() {
    let daemon = Daemon::start(&[]);
    // The first call starts the averages at what runs (as the loadavg file does): a busy loop.
    let script = format!(
        "sh -c 'while :; do :; done' & sleep 0.5; \
         echo busy $(busybox uptime | sed 's/.*load average://; s/,//g'); \
         kill $!; {REPORT}"
    );
    let host_load = std::fs::read_to_string("/proc/loadavg").unwrap();
    let out = run(&daemon, &[], &script);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(field(&stdout, "free"), ["262144"], "busybox free: {stdout}");
    let phys = field(&stdout, "phys");
    let pages: u64 = phys[0].parse().unwrap();
    let page_size: u64 = phys[1].parse().unwrap();
    assert_eq!(pages * page_size, 256 << 20, "getconf: {stdout}");
    assert_eq!(field(&stdout, "nproc"), ["1", "1"], "nproc: {stdout}");
    assert_eq!(
        field(&stdout, "py"),
        ["1", "1", "1", "1", &(256u64 << 20).to_string()],
        "python: {stdout}"
    );
    assert_eq!(
        field(&stdout, "readonly"),
        ["-1", "14", "112"],
        "sysinfo into a read-only page: {stdout}"
    );
    assert_eq!(
        field(&stdout, "errors"),
        ["-1", "14", "-1", "22"],
        "EFAULT and EINVAL: {stdout}"
    );
    // busybox uptime's load is the container's, not the host's.
    let busy: f64 = field(&stdout, "busy")[0].parse().unwrap();
    assert!(busy >= 1.0, "a busy loop runs: {stdout}");
    // Python's os.getloadavg() (glibc asks sysinfo) says the same, a moment later: at most one 5 s
    // step of the averages apart (from 1.00 with nothing running, 0.92).
    let later: f64 = field(&stdout, "getloadavg")[0].parse().unwrap();
    assert!((later - busy).abs() <= 0.1, "{stdout}");
    assert!(
        !host_load.starts_with("0.00 0.00 0.00"),
        "the host is busy running these tests: {host_load}"
    );

    // A process outside the container is untouched.
    let host = Command::new("/bin/busybox").arg("free").output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout).into_owned();
    let total: u64 = host
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        total,
        host_mem_total_kb(),
        "the host's busybox free: {host}"
    );
}

#[test]
fn under_init_too_and_the_host_s_answers_when_asked() {
    let daemon = Daemon::start(&[]);
    let out = run(&daemon, &["--init"], REPORT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(field(&stdout, "free"), ["262144"], "{stdout}");
    assert_eq!(field(&stdout, "nproc"), ["1", "1"], "{stdout}");
    // Nothing runs but busybox uptime, which is not counted (it waits for the answer): the init and
    // the shell have been asleep in waitpid for 0.3 s (a shell that had just forked busybox could
    // still be runnable on a loaded machine, and count).
    assert_eq!(field(&stdout, "idle"), ["0.00", "0.00", "0.00"], "{stdout}");
    // Python a moment later: at most two 5 s steps of one running task (0.08, then 0.16).
    let later: f64 = field(&stdout, "getloadavg")[0].parse().unwrap();
    assert!(later <= 0.16, "{stdout}");

    // sched_setaffinity is the kernel's: the container may pin itself to its second CPU.
    if cpuset() == "0-1" {
        let out = run(
            &daemon,
            &[],
            "/usr/bin/python3 -c 'import os; os.sched_setaffinity(0, {1}); print(\"pinned\", *sorted(os.sched_getaffinity(0)))'",
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(field(&stdout, "pinned"), ["1"], "{out:?}");
    }

    let host_cpus = std::thread::available_parallelism().unwrap().get();
    let out = run(&daemon, &["--host-sysinfo", "--host-affinity"], REPORT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        field(&stdout, "free"),
        [host_mem_total_kb().to_string()],
        "{stdout}"
    );
    let phys = field(&stdout, "phys");
    let bytes = phys[0].parse::<u64>().unwrap() * phys[1].parse::<u64>().unwrap();
    assert_eq!(bytes / 1024, host_mem_total_kb(), "{stdout}");
    let visible = if cpuset() == "0-1" { 2 } else { 1 };
    assert_eq!(
        field(&stdout, "nproc")[0],
        visible.min(host_cpus).to_string(),
        "{stdout}"
    );
}

/// CPU time (user + system) of `pid`'s thread named `name`, from /proc/PID/task/*/stat.
fn thread_cpu_seconds(pid: u32, name: &str) -> Option<f64> {
    let ticks = 100.0; // USER_HZ
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        if comm == name {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let (user, system): (f64, f64) = (fields[11].parse().ok()?, fields[12].parse().ok()?);
            return Some((user + system) / ticks);
        }
    }
    None
}

#[test]
fn a_container_calling_in_a_loop_gets_a_tenth_of_a_core_of_answers() {
    use std::io::BufRead;
    let daemon = Daemon::start(&[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vproc"))
        .arg("run")
        .arg("--lxcfs")
        .arg(&daemon.mountpoint)
        .arg("--rootfs")
        .arg(rootfs())
        .args(["-v", "/usr:/usr:ro", "-m", "256m", "--", "sh", "-c"])
        .arg(
            "/usr/bin/python3 -c '
import ctypes, time
libc = ctypes.CDLL(None)
buffer = ctypes.create_string_buffer(112)
calls, end = 0, time.monotonic() + 3
while time.monotonic() < end:
    assert libc.sysinfo(buffer) == 0
    calls += 1
print(\"calls\", calls, flush=True)
'; sleep 1",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let cpu = thread_cpu_seconds(child.id(), "seccomp");
    // Let it end by itself: a killed vproc run would leave its cgroup behind.
    assert!(child.wait().unwrap().success());
    let calls: u64 = line
        .trim()
        .strip_prefix("calls ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let cpu = cpu.expect("vproc run's seccomp thread");
    // 3 s at 10% plus a 50 ms burst is 0.35 s; unthrottled it would be most of a core (2-3 s).
    assert!(
        cpu < 0.7,
        "the answers took {cpu} s of CPU in 3 s ({calls} calls)"
    );
    // (About 1,800 answers a second in a release build; this debug build's are several times dearer.)
    assert!(calls > 100, "{calls} calls in 3 s");
}

#[test]
fn signals_during_the_calls_do_not_make_them_fail() {
    let daemon = Daemon::start(&[]);
    // A timer signal every 0.5 ms while sysinfo is called 3000 times: with SA_RESTART (C's
    // signal(), most runtimes) an interrupted call restarts unseen; without it (Python's default)
    // a call interrupted before the listener takes it fails with EINTR, which the real call never
    // gives. Once taken, only a fatal signal ends the wait (the filter's WAIT_KILLABLE_RECV), and
    // calls are taken at once even while answers wait for the CPU budget; before, most failed.
    let script = r#"/usr/bin/python3 -c '
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGALRM, lambda *a: None)
buffer = ctypes.create_string_buffer(112)
for restart in (True, False):
    signal.siginterrupt(signal.SIGALRM, not restart)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    failed = sum(libc.sysinfo(buffer) != 0 for _ in range(3000))
    signal.setitimer(signal.ITIMER_REAL, 0)
    print("restart" if restart else "interrupt", failed)
'"#;
    let out = run(&daemon, &[], script);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(field(&stdout, "restart"), ["0"], "{stdout}");
    let interrupted: u32 = field(&stdout, "interrupt")[0].parse().unwrap();
    assert!(
        interrupted < 1000,
        "{interrupted} of 3000 calls failed: {stdout}"
    );
}
