//! vprocd through a real FUSE mount on this machine's cgroup v1, read by processes in limited cgroups.
//! Needs root, /dev/fuse and writable cgroup v1 hierarchies (CI has them).

mod common;

use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;

use common::{Daemon, Limits, MIB, TestCgroup, small_box, stdout};

#[test]
fn limited_container_sees_its_box() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    let m = daemon.mountpoint.display();
    let out = stdout(group.run(&format!(
        "cat {m}/proc/uptime; echo ---; cat {m}/proc/meminfo; echo ---; cat {m}/proc/cpuinfo; echo ---; \
         cat {m}/sys/devices/system/cpu/online; echo ---; cat {m}/proc/stat"
    )));
    let parts: Vec<&str> = out.split("---\n").collect();
    let [uptime, meminfo, cpuinfo, online, stat] = parts[..] else {
        panic!("{out}")
    };

    let uptime_re = uptime.split(' ').next().unwrap();
    assert!(
        uptime_re.starts_with("0.") && uptime_re.len() == 4,
        "uptime right after start: {uptime}"
    );
    assert!(
        meminfo.contains("MemTotal:          65536 kB\n"),
        "{meminfo}"
    );
    assert_eq!(cpuinfo.matches("processor\t: ").count(), 1, "{cpuinfo}");
    assert!(cpuinfo.contains("processor\t: 0\n"));
    assert_eq!(online, "0\n");
    let cpu_labels: Vec<&str> = stat
        .lines()
        .filter(|l| l.starts_with("cpu"))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(cpu_labels, ["cpu", "cpu0"], "{stat}");
    assert!(stat.lines().any(|l| l.starts_with("btime ")), "{stat}");
}

#[test]
fn unlimited_child_of_a_limited_parent_sees_the_parent_limit() {
    let daemon = Daemon::start(&[]);
    let parent = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    let child = parent.child(Limits::default());
    let out = stdout(child.run(&format!(
        "grep MemTotal {}/proc/meminfo",
        daemon.mountpoint.display()
    )));
    assert_eq!(out, "MemTotal:          65536 kB\n");
}

#[test]
fn quota_of_one_and_a_half_on_two_cpus_shows_two() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(Limits {
        quota_us: Some(150_000),
        cpus: Some("0-1"),
        ..Limits::default()
    });
    let m = daemon.mountpoint.display();
    let out = stdout(group.run(&format!(
        "cat {m}/sys/devices/system/cpu/online; grep -c ^processor {m}/proc/cpuinfo; grep -c ^cpu {m}/proc/stat; ls -d {m}/sys/devices/system/cpu/cpu[0-9]*"
    )));
    assert_eq!(
        out,
        format!("0-1\n2\n3\n{m}/sys/devices/system/cpu/cpu0\n{m}/sys/devices/system/cpu/cpu1\n")
    );
}

#[test]
fn cpuset_view_ignores_the_quota() {
    let daemon = Daemon::start(&["--cpu-view", "cpuset"]);
    let group = TestCgroup::new(Limits {
        quota_us: Some(50_000),
        cpus: Some("0-1"),
        ..Limits::default()
    });
    let out = stdout(group.run(&format!(
        "cat {}/sys/devices/system/cpu/online",
        daemon.mountpoint.display()
    )));
    assert_eq!(out, "0-1\n");
}

#[test]
fn chunked_reads_see_one_consistent_file() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    // One handle, read in 1-byte and in 1024-byte chunks, against one whole read.
    let script = format!(
        r#"
import sys
def read(path, chunk):
    out = b""
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(chunk)
            if not b:
                return out
            out += b
for name in ["proc/cpuinfo", "proc/meminfo", "proc/stat"]:
    path = "{m}/" + name
    whole, ones, kilos = read(path, 1 << 20), read(path, 1), read(path, 1024)
    keys = lambda t: [l.split()[0] for l in t.decode().splitlines() if l.strip()]
    assert len(whole) > 0, name
    assert keys(whole) == keys(ones) == keys(kilos), name
    if name == "proc/cpuinfo":
        assert whole == ones == kilos, name
    assert b"MemTotal:          65536 kB\n" in whole or name != "proc/meminfo"
print("ok")
"#,
        m = daemon.mountpoint.display()
    );
    let out = stdout(group.run(&format!("python3 -c '{}'", script.replace('\'', "'\\''"))));
    assert_eq!(out, "ok\n");
}

/// Bind-mounts the daemon's files over /proc and /sys in a private mount namespace, then runs `cmd`.
fn with_binds(daemon: &Daemon, cmd: &str) -> String {
    let m = daemon.mountpoint.display();
    format!(
        "for f in meminfo cpuinfo stat uptime swaps; do mount --bind {m}/proc/$f /proc/$f; done; \
         mount --bind {m}/sys/devices/system/cpu /sys/devices/system/cpu; {cmd}"
    )
}

#[test]
fn real_consumers_see_the_container() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    let out = stdout(group.run(&with_binds(
        &daemon,
        "free -k | awk '/^Mem:/ {print $2}'; \
         python3 -c 'import os; print(os.cpu_count())'; \
         getconf _NPROCESSORS_CONF; \
         node -e 'const os = require(\"os\"); console.log(os.cpus().length); console.log(os.totalmem())'; \
         lscpu | grep '^CPU(s):' | tr -s ' '; \
         top -bn1 | grep -o 'Mem : *[0-9.]* total' | tr -s ' '",
    )));
    assert_eq!(
        out,
        "65536\n1\n1\n1\n67108864\nCPU(s): 1\nMem : 64.0 total\n"
    );
}

#[test]
fn reader_outside_any_limit_sees_the_host() {
    let daemon = Daemon::start(&[]);
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap();
    let mem_total = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        mem_total(&read(&daemon.path("proc/meminfo"))),
        mem_total(&read("/proc/meminfo".as_ref()))
    );
    let processors = |text: &str| text.matches("processor\t: ").count();
    assert_eq!(
        processors(&read(&daemon.path("proc/cpuinfo"))),
        processors(&read("/proc/cpuinfo".as_ref()))
    );
    assert_eq!(
        read(&daemon.path("sys/devices/system/cpu/online")),
        read("/sys/devices/system/cpu/online".as_ref())
    );
}

#[test]
fn tree_lists_exactly_what_exists_and_refuses_writes() {
    let daemon = Daemon::start(&[]);
    let names = |dir: &str| {
        let mut names: Vec<String> = std::fs::read_dir(daemon.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(""), ["proc", "sys"]);
    assert_eq!(
        names("proc"),
        [
            "cpuinfo",
            "diskstats",
            "loadavg",
            "meminfo",
            "pressure",
            "stat",
            "swaps",
            "uptime"
        ]
    );
    assert_eq!(names("sys/devices/system"), ["cpu"]);
    let cpu_dir = names("sys/devices/system/cpu");
    for name in ["online", "possible", "present", "cpu0"] {
        assert!(cpu_dir.contains(&name.to_string()), "{cpu_dir:?}");
    }
    assert_eq!(
        std::fs::read_to_string(daemon.path("proc/loadavg"))
            .unwrap()
            .split(' ')
            .count(),
        5
    );
    assert!(
        !std::fs::read_to_string(daemon.path("sys/devices/system/cpu/cpu0/topology/core_id"))
            .unwrap()
            .is_empty()
    );

    let write = std::fs::OpenOptions::new()
        .write(true)
        .open(daemon.path("proc/meminfo"));
    assert!(matches!(
        write.unwrap_err().raw_os_error(),
        Some(libc::EROFS) | Some(libc::EACCES)
    ));
    let create = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(daemon.path("proc/new"));
    assert!(matches!(
        create.unwrap_err().raw_os_error(),
        Some(libc::EROFS) | Some(libc::EACCES)
    ));
    assert_eq!(
        std::fs::metadata(daemon.path("proc/nothing"))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    // st_size is the size of what this reader reads (tools like `wc -c` and `tail` trust it).
    let size = std::fs::metadata(daemon.path("proc/cpuinfo"))
        .unwrap()
        .len();
    let mut cpuinfo = String::new();
    std::fs::File::open(daemon.path("proc/cpuinfo"))
        .unwrap()
        .read_to_string(&mut cpuinfo)
        .unwrap();
    assert_eq!(size, cpuinfo.len() as u64);
}

#[test]
fn show_prints_what_the_mount_serves() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    let mut reader = group.spawn("echo ready; exec sleep 30");
    let mut ready = [0u8; 6];
    reader
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    let pid = reader.id().to_string();
    let show = |file: &str| {
        stdout(
            std::process::Command::new(env!("CARGO_BIN_EXE_vproc"))
                .args(["show", file, "--pid", &pid])
                .output()
                .unwrap(),
        )
    };
    assert_eq!(show("cpu-online"), "0\n");
    assert_eq!(show("cpuinfo").matches("processor\t: ").count(), 1);
    assert!(show("meminfo").contains("MemTotal:          65536 kB\n"));
    let _ = reader.kill();
    let _ = reader.wait();
    drop(daemon);
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let mut daemon = Daemon::start(&[]);
    let status = daemon.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(!common::is_mounted(&daemon.mountpoint));
}

#[test]
fn busy_mount_is_detached_on_stop() {
    let mut daemon = Daemon::start(&[]);
    let held = std::fs::File::open(daemon.path("proc/meminfo")).unwrap();
    let status = daemon.stop_with(libc::SIGINT);
    assert!(status.success(), "{status}");
    assert!(!common::is_mounted(&daemon.mountpoint));
    drop(held);
}

#[test]
fn stale_mountpoint_of_a_killed_daemon_is_reused() {
    let mut first = Daemon::start(&[]);
    first.stop_with(libc::SIGKILL);
    let err = std::fs::File::open(first.path("proc/meminfo")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
    let second = Daemon::start_at(&first.mountpoint.clone(), &first.pidfile.clone(), &[]);
    assert!(
        std::fs::read_to_string(second.path("proc/meminfo"))
            .unwrap()
            .starts_with("MemTotal:")
    );
    drop(second);
    drop(first);
}

#[test]
fn second_daemon_with_the_same_pidfile_is_refused() {
    let daemon = Daemon::start(&[]);
    let other = std::env::temp_dir().join(common::unique("vproc-test-mnt"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vprocd"))
        .arg("--pidfile")
        .arg(&daemon.pidfile)
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another vprocd") && stderr.contains(&daemon.pid().to_string()),
        "{stderr}"
    );
    assert!(!common::is_mounted(&other));
    let _ = std::fs::remove_dir(&other);
}

#[test]
fn non_empty_mountpoint_still_mounts() {
    let dir = std::env::temp_dir().join(common::unique("vproc-test-mnt"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("leftover"), "x").unwrap();
    let pidfile = dir.with_extension("pid");
    let daemon = Daemon::start_at(&dir, &pidfile, &[]);
    assert!(daemon.path("proc/meminfo").exists());
    drop(daemon);
    std::fs::remove_file(dir.join("leftover")).unwrap();
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn a_process_that_moves_cgroups_is_seen_within_half_a_second() {
    let daemon = Daemon::start(&[]);
    let small = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    let large = TestCgroup::new(Limits {
        memory_bytes: Some(128 * MIB),
        ..Limits::default()
    });
    // One long-lived reader polls MemTotal; we move it and time how long the old view survives.
    let m = daemon.mountpoint.display();
    let mut reader = small.spawn(&format!(
        "echo ready; while :; do grep MemTotal {m}/proc/meminfo; sleep 0.01; done"
    ));
    let mut out = std::io::BufReader::new(reader.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    out.read_line(&mut line).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "MemTotal:          65536 kB\n");
    let moved_at = std::time::Instant::now();
    large.adopt(reader.id());
    loop {
        line.clear();
        out.read_line(&mut line).unwrap();
        if line == "MemTotal:         131072 kB\n" {
            break;
        }
        assert!(
            moved_at.elapsed() < std::time::Duration::from_millis(500),
            "still the old view: {line}"
        );
    }
    let _ = reader.kill();
    let _ = reader.wait();
}

#[test]
fn sendfile_readers_get_the_containers_file() {
    // busybox cat and Python's shutil.copy use sendfile; since Linux 6.5 that reads FUSE files through the
    // page cache, where vprocd must neither answer empty nor let one reader's content reach another.
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    let m = daemon.mountpoint.display();
    let dir = std::env::temp_dir().join(common::unique("vproc-test-copy"));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("cpuinfo");
    let out = group.run(&format!(
        "busybox cat {m}/proc/meminfo | head -1; busybox cat {m}/sys/devices/system/cpu/online; \
         python3 -c 'import shutil; shutil.copy(\"{m}/proc/cpuinfo\", \"{c}\")'; grep -c ^processor {c}",
        c = copy.display()
    ));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(stdout(out), "MemTotal:          65536 kB\n0\n1\n");
}

#[test]
fn concurrent_sendfile_readers_never_see_each_others_content() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    let m = daemon.mountpoint.display();
    let host_cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .matches("processor\t: ")
        .count();
    assert!(
        host_cpus > 1,
        "needs a host with more than one CPU to tell the views apart"
    );
    let script = format!(
        "for i in $(seq 100); do busybox cat {m}/proc/cpuinfo | grep -c ^processor; done | sort | uniq -c"
    );
    let host = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let inside = stdout(group.run_in_host_pidns(&script));
    let outside = String::from_utf8(host.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(
        inside.split_whitespace().collect::<Vec<_>>(),
        ["100", "1"],
        "{inside}"
    );
    let host_count = host_cpus.to_string();
    assert_eq!(
        outside.split_whitespace().collect::<Vec<_>>(),
        ["100", host_count.as_str()],
        "{outside}"
    );
}

#[test]
fn tells_systemd_when_it_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mountpoint = dir.path().join("mnt");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vprocd"))
        .arg("--pidfile")
        .arg(dir.path().join("pid"))
        .arg(&mountpoint)
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Whatever fails below, the daemon and its mount go.
    struct Reap(std::process::Child, std::path::PathBuf);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = nix::mount::umount2(&self.1, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let mut child = Reap(child, mountpoint.clone());
    let mut buffer = [0u8; 256];
    let n = socket.recv(&mut buffer).unwrap();
    let ready = String::from_utf8_lossy(&buffer[..n]).to_string();
    // READY=1 comes only once the filesystem serves.
    let serving = std::fs::read_to_string(mountpoint.join("proc/uptime"));
    // SAFETY: kill on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    let n = socket.recv(&mut buffer).unwrap();
    let stopping = String::from_utf8_lossy(&buffer[..n]).to_string();
    let status = child.0.wait().unwrap();
    assert_eq!(ready, format!("READY=1\nMAINPID={}", child.0.id()));
    assert!(serving.is_ok(), "{serving:?}");
    assert_eq!(stopping, format!("STOPPING=1\nMAINPID={}", child.0.id()));
    assert!(status.success());
    assert!(!common::is_mounted(&mountpoint));
}

#[test]
fn sigusr2_switches_the_views_off_and_on_and_usr1_hup_are_harmless() {
    // LXCFS's tooling sends these: SIGUSR2 toggles virtualization, SIGUSR1 asks for a reload.
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    let m = daemon.mountpoint.display();
    let look = || {
        stdout(group.run(&format!(
            "grep MemTotal {m}/proc/meminfo; cat {m}/sys/devices/system/cpu/online; \
             ls {m}/sys/devices/system/cpu | grep -c '^cpu[0-9]'"
        )))
    };
    let host_memtotal = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .to_string();
    let host_online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let host_cpus = std::fs::read_dir("/sys/devices/system/cpu")
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    let container = "MemTotal:          65536 kB\n0\n1\n";
    assert_eq!(look(), container);
    let signal = |signal: libc::c_int| {
        // SAFETY: a signal to the daemon this test started.
        assert_eq!(unsafe { libc::kill(daemon.pid() as i32, signal) }, 0);
    };
    // The daemon's signal thread acts on it: wait for the view to change, 10 s at most.
    let until = |wanted: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let seen = look();
            if seen == wanted || std::time::Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let host = format!("{host_memtotal}\n{host_online}{host_cpus}\n");
    signal(libc::SIGUSR2);
    assert_eq!(until(&host), host, "off: the host's files");
    signal(libc::SIGUSR2);
    assert_eq!(until(container), container, "on again");
    for harmless in [libc::SIGUSR1, libc::SIGHUP] {
        signal(harmless);
        // Time for the signal to end the daemon, were it fatal.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(look(), container, "after signal {harmless}");
    }
}

#[test]
fn an_nsentered_first_reader_sees_its_container() {
    // The container: a pid namespace whose init is `sleep`, in a 64 MiB cgroup. The first reader enters
    // it with nsenter (as docker exec does): its parent is outside the namespace.
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(small_box());
    let (mut init, sleep_pid) = group.container_init();
    let m = daemon.mountpoint.display();
    let out = stdout(group.run_in_host_pidns(&format!(
        "nsenter -t {sleep_pid} -p -- sh -c 'grep MemTotal {m}/proc/meminfo; cut -d. -f1 {m}/proc/uptime'"
    )));
    let _ = init.kill();
    let _ = init.wait();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "MemTotal:          65536 kB", "{out}");
    // The namespace's uptime (seconds since its init started), not the host's.
    assert!(lines[1].parse::<u32>().unwrap() < 30, "{out}");
}
