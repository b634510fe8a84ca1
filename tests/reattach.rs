//! Surviving daemon crashes and restarts: containers whose files went dead with the old daemon read again
//! once a new daemon starts, without restarting. Containers here are processes with their own mount
//! namespace and cgroup, with the files attached by `vproc attach` (as the OCI hook does).
//! Run with --nocapture to see the measured windows.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Limits, MIB, TestCgroup, stdout};
use vproc::reattach;

/// CLOCK_MONOTONIC in seconds, the clock Python's time.monotonic() reads.
fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Reads /proc/meminfo in a loop at full speed inside the container; on SIGTERM prints
/// `reads failed first_failure last_failure first_success_after` (monotonic seconds, -1 if none).
const READER: &str = r#"
import signal, sys, time
reads = failed = 0; first_fail = last_fail = healed = -1.0
def report(*_):
    print(reads, failed, first_fail, last_fail, healed, flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, report)
print("ready", flush=True)
while True:
    try:
        with open("/proc/meminfo") as f:
            ok = f.readline().startswith("MemTotal:          65536 kB")
    except OSError:
        ok = False
    now = time.monotonic(); reads += 1
    if not ok:
        failed += 1; last_fail = now
        if first_fail < 0: first_fail = now
    elif last_fail >= 0 and healed < last_fail:
        healed = now
"#;

/// A container (own mount namespace, in `group`) with the daemon's files attached, running `command`
/// (which prints `ready` first).
fn container(group: &TestCgroup, daemon: &Daemon, command: &str) -> Child {
    let child = group.container(command);
    let attached = Command::new(env!("CARGO_BIN_EXE_vproc"))
        .args(["attach", "--pid", &child.id().to_string(), "--mountpoint"])
        .arg(&daemon.mountpoint)
        .output()
        .unwrap();
    stdout(attached);
    child
}

/// The reader as a container command.
fn python_reader() -> String {
    format!("python3 -c '{}'", READER.replace('\'', "'\\''"))
}

/// Stops the reader and returns (reads, failed, first failure, last failure, healed).
fn report(mut reader: Child) -> (u64, u64, f64, f64, f64) {
    // SAFETY: kill on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(reader.id() as libc::pid_t, libc::SIGTERM) };
    let mut text = String::new();
    reader
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let _ = reader.wait();
    let f: Vec<f64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(f.len(), 5, "reader report: {text:?}");
    (f[0] as u64, f[1] as u64, f[2], f[3], f[4])
}

/// Stops the daemon with `signal` while a reader loops, starts a new one, and checks the reader heals.
fn restart_heals(signal: libc::c_int, name: &str) {
    let mut daemon = Daemon::start(&[]);
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    let reader = container(&group, &daemon, &python_reader());
    let reader_pid = reader.id();
    std::thread::sleep(Duration::from_millis(200));

    daemon.stop_with(signal);
    std::thread::sleep(Duration::from_millis(100));
    let restarted = monotonic();
    let _new = Daemon::start_at(&daemon.mountpoint.clone(), &daemon.pidfile.clone(), &[]);
    let deadline = Instant::now() + Duration::from_secs(1);
    // Wait for the reader to see the container's file again (or the 1 s budget to run out).
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(reader.id(), reader_pid);
    let (reads, failed, first_fail, last_fail, healed) = report(reader);
    println!(
        "{name}: {reads} reads, {failed} failed; reads failed for {:.0} ms; healed {:.0} ms after the new daemon started",
        (last_fail - first_fail) * 1e3,
        (healed - restarted) * 1e3
    );
    assert!(failed > 0, "the reader never saw the outage");
    assert!(
        healed > last_fail,
        "the reader never read the container's file again"
    );
    assert!(
        healed - restarted < 1.0,
        "healed {:.3} s after the restart",
        healed - restarted
    );
}

#[test]
fn kill_9_then_a_new_daemon_heals_a_reading_container() {
    restart_heals(libc::SIGKILL, "kill -9 + restart");
}

#[test]
fn sigterm_restart_heals_a_reading_container() {
    restart_heals(libc::SIGTERM, "SIGTERM + restart");
}

#[test]
fn twenty_containers_heal_at_once_and_an_exited_one_is_skipped() {
    let mut daemon = Daemon::start(&[]);
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    // Small containers: 21 Python interpreters would not fit in 64 MiB (the OOM killer takes them).
    let idle = "sh -c \"echo ready; exec sleep 300\"";
    let mut containers: Vec<Child> = (0..21).map(|_| container(&group, &daemon, idle)).collect();
    daemon.stop_with(libc::SIGKILL);
    // One container exits while there is no daemon.
    let mut exited = containers.pop().unwrap();
    let _ = exited.kill();
    let _ = exited.wait();

    let started = Instant::now();
    let _new = Daemon::start_at(&daemon.mountpoint.clone(), &daemon.pidfile.clone(), &[]);
    let mut healed = vec![false; containers.len()];
    while healed.iter().any(|h| !h) {
        for (i, c) in containers.iter().enumerate() {
            if healed[i] {
                continue;
            }
            let out = group.run_in_host_pidns(&format!(
                "exec nsenter -t {} -m head -1 /proc/meminfo",
                c.id()
            ));
            healed[i] = String::from_utf8_lossy(&out.stdout) == "MemTotal:          65536 kB\n";
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "healed {:?}",
            healed
        );
    }
    println!(
        "20 containers healed {:.0} ms after the new daemon started",
        started.elapsed().as_secs_f64() * 1e3
    );
    for mut c in containers {
        assert_eq!(c.try_wait().unwrap(), None, "containers keep running");
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A FUSE server that never answers, mounted at argv[2] under the fsname argv[1]: with argv[3] =
/// `silent` it never reads /dev/fuse (requests wait, killably, for INIT); with `reads` it answers INIT,
/// then reads every request and answers none (the caller then waits uninterruptibly: even SIGKILL
/// does not free it until the server dies).
const HUNG_SERVER: &str = r#"
import os, struct, subprocess, sys, time
fs_name, target, mode = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open("/dev/fuse", os.O_RDWR)
subprocess.run(["mount", "-i", "-t", "fuse", "-o", f"fd={fd},rootmode=40000,user_id=0,group_id=0",
                fs_name, target], pass_fds=[fd], check=True)
print("ready", flush=True)
if mode == "silent":
    time.sleep(3600)
while True:
    request = os.read(fd, 1 << 20)
    length, opcode, unique = struct.unpack_from("<IIQ", request)
    if opcode == 26:
        init = struct.pack("<IIIIHHIIHHII", 7, 31, 0, 0, 0, 0, 4096, 1, 0, 0, 0, 0) + bytes(24)
        os.write(fd, struct.pack("<IiQ", 16 + len(init), 0, unique) + init)
"#;

/// A daemon killed under a container, a FUSE mount that never answers (`mode` of [`HUNG_SERVER`]) in
/// another mount namespace under the daemon's own fsname, so that the heal has to look at it, then a
/// new daemon: the container heals within the per-namespace timeout, and `vproc reattach` by hand ends
/// in bounded time and says which namespace it skipped.
fn heal_beside_a_hung_mount(mode: &str) {
    let mut daemon = Daemon::start(&[]);
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    let mut healthy = container(&group, &daemon, "sh -c \"echo ready; exec sleep 300\"");
    daemon.stop_with(libc::SIGKILL);

    let mountpoint = reattach::canonical_mountpoint(&daemon.mountpoint);
    let hung_dir = std::env::temp_dir().join(common::unique("vproc-test-hung"));
    std::fs::create_dir_all(&hung_dir).unwrap();
    let mut hung = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "python3",
            "-c",
            HUNG_SERVER,
        ])
        .arg(reattach::fs_name(&mountpoint))
        .arg(&hung_dir)
        .arg(mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(hung.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n", "the hung mount was not made");

    let started = Instant::now();
    let new = Daemon::start_at(&daemon.mountpoint.clone(), &daemon.pidfile.clone(), &[]);
    let budget = reattach::NAMESPACE_TIMEOUT + Duration::from_secs(1);
    let healed = loop {
        let out = group.run_in_host_pidns(&format!(
            "exec nsenter -t {} -m head -1 /proc/meminfo",
            healthy.id()
        ));
        if String::from_utf8_lossy(&out.stdout) == "MemTotal:          65536 kB\n" {
            break Some(started.elapsed());
        }
        if started.elapsed() > budget {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // By hand, with its output in a file: a child stuck in the hung mount holding a pipe of ours would
    // block this test instead of failing it.
    let log = tempfile::NamedTempFile::new().unwrap();
    let by_hand = Instant::now();
    let mut manual = Command::new(env!("CARGO_BIN_EXE_vproc"))
        .args(["reattach", "--mountpoint"])
        .arg(&new.mountpoint)
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let manual_status = loop {
        if let Some(status) = manual.try_wait().unwrap() {
            break Some(status);
        }
        if by_hand.elapsed() > budget + Duration::from_secs(5) {
            let _ = manual.kill();
            let _ = manual.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let manual_took = by_hand.elapsed();

    let _ = hung.kill();
    let _ = hung.wait();
    let _ = std::fs::remove_dir(&hung_dir);
    let _ = healthy.kill();
    let _ = healthy.wait();
    let healed = healed.unwrap_or_else(|| {
        panic!("a hung mount elsewhere kept the container from healing for {budget:?}")
    });
    println!(
        "{mode}: healed {:.0} ms after the new daemon started, beside a hung FUSE mount; \
         vproc reattach by hand took {:.0} ms",
        healed.as_secs_f64() * 1e3,
        manual_took.as_secs_f64() * 1e3
    );
    let stderr = std::fs::read_to_string(log.path()).unwrap();
    let manual_status = manual_status.unwrap_or_else(|| panic!("vproc reattach hung: {stderr}"));
    assert!(manual_status.success(), "{stderr}");
    // The hung namespace's child runs out its timeout and grace; the scan and forks add little, but a
    // loaded 2-core runner gets a second more.
    let manual_budget = reattach::NAMESPACE_TIMEOUT + Duration::from_secs(2);
    assert!(
        manual_took < manual_budget,
        "vproc reattach took {manual_took:?} beside the hung mount"
    );
    assert!(
        stderr.contains("skipped pid") && stderr.contains("did not answer"),
        "the skipped namespace is reported: {stderr}"
    );
}

#[test]
fn a_fuse_mount_that_never_reads_delays_no_heal_beyond_the_timeout() {
    heal_beside_a_hung_mount("silent");
}

#[test]
fn a_fuse_mount_that_reads_and_never_answers_delays_no_heal_beyond_the_timeout() {
    heal_beside_a_hung_mount("reads");
}
