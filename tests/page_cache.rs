//! The views mount (`MOUNTPOINT/.by-pid/PID/...`, where vproc's own binds come from): each container's
//! files are inodes of their own, read through the kernel's page cache (no OPEN or RELEASE reaches the
//! daemon, and most reads nothing at all), fresh within a tick, whole, and never another container's.
//! Real mounts and cgroup v1.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;

use common::{Daemon, Limits, MIB, TestCgroup, stdout};

fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The value of the series `name` (its full text, labels included) on the daemon's endpoint, 0 when
/// absent.
fn metric(address: SocketAddr, name: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{address}/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn limited(megabytes: u64) -> TestCgroup {
    TestCgroup::new(Limits {
        memory_bytes: Some(megabytes * MIB),
        ..Limits::default()
    })
}

/// A shell script for `group` that binds `files` of its own view over /proc and /sys (as `vproc run`
/// does: `.by-pid/` and its own pid) in a mount namespace of its own, then runs `script`.
fn container_script(daemon: &Daemon, files: &[&str], script: &str) -> tempfile::NamedTempFile {
    let m = daemon.mountpoint.display();
    let binds: String = files
        .iter()
        .map(|f| format!("mount --bind {m}/.by-pid/$$/{f} /{f}\n"))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("set -e\n{binds}{script}\n")).unwrap();
    file
}

/// `script` in `group` with `files` of its view bound (see [`container_script`]); its stdout.
fn in_container(group: &TestCgroup, daemon: &Daemon, files: &[&str], script: &str) -> String {
    let file = container_script(daemon, files, script);
    stdout(group.run_in_host_pidns(&format!(
        "exec unshare -m --propagation private sh {}",
        file.path().display()
    )))
}

#[test]
fn a_bound_containers_reads_come_from_the_page_cache() {
    let address = free_address();
    let daemon = Daemon::start(&["--metrics-address", &address.to_string()]);
    let group = limited(64);
    let out = in_container(
        &group,
        &daemon,
        &["proc/meminfo"],
        "for i in $(seq 2000); do head -1 /proc/meminfo; done | sort | uniq -c",
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["2000", "MemTotal:", "65536", "kB"],
        "{out}"
    );
    let reads = metric(
        address,
        "vproc_fuse_requests_total{operation=\"read\",file=\"proc/meminfo\"}",
    );
    let opens = metric(
        address,
        "vproc_fuse_requests_total{operation=\"open\",file=\"proc/meminfo\"}",
    );
    // 2000 reads over a few seconds: at most one READ per tick reaches the daemon, and OPEN only
    // until the kernel has its ENOSYS (the first few opens of the mount).
    assert!(
        (1.0..1000.0).contains(&reads),
        "{reads} READs for 2000 reads"
    );
    assert!(opens <= 3.0, "{opens} OPENs");
}

#[test]
fn sizes_match_the_bytes_and_sendfile_reads_them_whole() {
    let daemon = Daemon::start(&[]);
    let group = limited(64);
    let script = r#"
import os, sys
for path in sys.argv[1:]:
    # Read once first: a generation never read is provisional (rendered again when asked for more
    # than 1 ms later), so a stat and a read far apart may see two renderings of different lengths.
    open(path, "rb").read()
    for _ in range(200):
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            data = f.read()
        assert size == len(data), (path, size, len(data))
        assert data.endswith(b"\n") and b"\0" not in data, path
print("ok")
"#;
    let files = [
        "proc/meminfo",
        "proc/cpuinfo",
        "proc/stat",
        "proc/uptime",
        "proc/loadavg",
        "sys/devices/system/cpu/online",
    ];
    let args: Vec<String> = files.iter().map(|f| format!("/{f}")).collect();
    let out = in_container(
        &group,
        &daemon,
        &files,
        &format!(
            "python3 -c '{script}' {} && busybox cat /proc/meminfo | head -1",
            args.join(" ")
        ),
    );
    assert_eq!(out, "ok\nMemTotal:          65536 kB\n");
}

#[test]
fn one_line_files_are_never_padded() {
    // Scripts split loadavg and uptime on single spaces: only /proc/stat and diskstats keep room to
    // grow, at the end of their last line.
    let daemon = Daemon::start(&[]);
    let group = limited(64);
    let out = in_container(
        &group,
        &daemon,
        &["proc/loadavg", "proc/uptime", "proc/stat"],
        "for i in 1 2 3; do cat /proc/loadavg /proc/uptime >/dev/null; sleep 0.05; done; \
         tr ' ' '_' < /proc/loadavg; tr ' ' '_' < /proc/uptime; tail -1 /proc/stat | tr -cd ' ' | wc -c",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].split('_').count(), 5, "{out}");
    assert_eq!(lines[1].split('_').count(), 2, "{out}");
    assert!(
        !lines[0].ends_with('_') && !lines[1].ends_with('_'),
        "{out}"
    );
    // softirq's eleven numbers, then the room to grow.
    assert!(lines[2].trim().parse::<usize>().unwrap() > 20, "{out}");
}

#[test]
fn a_limit_change_reaches_a_bound_reader_within_a_second() {
    let daemon = Daemon::start(&[]);
    let group = limited(64);
    let limit = group.dir("memory").join("memory.limit_in_bytes");
    let out = in_container(
        &group,
        &daemon,
        &["proc/meminfo"],
        &format!(
            "head -1 /proc/meminfo; echo {} > {}; sleep 1; head -1 /proc/meminfo",
            96 * MIB,
            limit.display()
        ),
    );
    assert_eq!(
        out,
        "MemTotal:          65536 kB\nMemTotal:          98304 kB\n"
    );
}

#[test]
fn containers_reading_at_once_each_see_their_own_file_whole() {
    let daemon = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("reader.py");
    std::fs::write(&program, READER).unwrap();
    let script = container_script(
        &daemon,
        &["proc/meminfo", "proc/stat"],
        &format!("exec python3 {}", program.display()),
    );
    let reader = |group: &TestCgroup| {
        group.spawn(&format!(
            "exec unshare -m --propagation private sh {}",
            script.path().display()
        ))
    };
    let (small, large) = (limited(64), limited(128));
    let children = [reader(&small), reader(&large)];
    let outs: Vec<String> = children
        .into_iter()
        .map(|c| stdout(c.wait_with_output().unwrap()))
        .collect();
    assert_eq!(outs[0].trim(), "MemTotal:          65536 kB", "{}", outs[0]);
    assert_eq!(outs[1].trim(), "MemTotal:         131072 kB", "{}", outs[1]);
}

/// Two threads read meminfo and stat for two seconds through binds; every read must be one whole
/// generation (the size the kernel was told, the lines of the format), and meminfo always the
/// container's. Prints the one MemTotal seen.
const READER: &str = r#"
import threading, time
seen, bad = set(), []
def work():
    end = time.time() + 2
    while time.time() < end:
        with open("/proc/meminfo", "rb") as f:
            m = f.read()
        with open("/proc/stat", "rb") as f:
            s = f.read()
        seen.add(m.split(b"\n")[0].decode())
        for data, first in ((m, b"MemTotal:"), (s, b"cpu ")):
            lines = data.split(b"\n")
            if not data.startswith(first) or lines[-1] != b"" or any(len(l.split()) < 2 for l in lines[:-1]):
                bad.append(data[-80:])
threads = [threading.Thread(target=work) for _ in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
assert not bad, bad[:3]
print("\n".join(sorted(seen)))
"#;

#[test]
fn only_root_names_views_and_only_by_the_pid_s_own_spelling() {
    let daemon = Daemon::start(&[]);
    let me = std::process::id();
    let own = daemon.path(&format!(".by-pid/{me}/proc/meminfo"));
    assert!(
        std::fs::read_to_string(&own)
            .unwrap()
            .starts_with("MemTotal:")
    );
    for name in [format!("0{me}"), format!("+{me}"), "0".to_string()] {
        let other = daemon.path(&format!(".by-pid/{name}/proc/meminfo"));
        assert_eq!(
            std::fs::read(&other).unwrap_err().kind(),
            std::io::ErrorKind::NotFound,
            "{name}"
        );
    }
    let unprivileged = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "cat",
        ])
        .arg(&own)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&unprivileged.stderr).contains("Permission denied"),
        "{unprivileged:?}"
    );
    // The views mount is not listed, and lists nobody.
    let root: Vec<_> = std::fs::read_dir(&daemon.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(root.len(), 2, "{root:?}");
    assert_eq!(
        std::fs::read_dir(daemon.path(".by-pid")).unwrap().count(),
        0
    );
}

#[test]
fn sigusr2_switches_a_cached_view_off_and_on() {
    let daemon = Daemon::start(&[]);
    let group = limited(64);
    let mut sleeper = group.spawn("exec sleep 300");
    let meminfo = daemon.path(&format!(".by-pid/{}/proc/meminfo", sleeper.id()));
    let memtotal = || {
        std::fs::read_to_string(&meminfo)
            .unwrap()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let host = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let until = |wanted: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let seen = memtotal();
            if seen == wanted || std::time::Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let container = "MemTotal:          65536 kB";
    assert_eq!(until(container), container);
    let signal = || {
        // SAFETY: a signal to the daemon this test started.
        assert_eq!(unsafe { libc::kill(daemon.pid() as i32, libc::SIGUSR2) }, 0);
    };
    // The pages the kernel keeps are dropped when the views are switched, both ways.
    signal();
    assert_eq!(until(&host), host, "off: the host's file");
    signal();
    assert_eq!(until(container), container, "on again");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// A process of another pid namespace naming itself: refused until a process of the daemon's pid
/// namespace made its view (as `vproc run` does for its pid 1), then its own files.
fn self_named_from_a_pid_namespace(daemon: &Daemon, made_first: bool) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "sh", "-c"])
        .arg(format!(
            "read pid; exec cat {}/.by-pid/$pid/proc/meminfo",
            daemon.mountpoint.display()
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let sh = loop {
        let listed = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = listed.split_whitespace().next() {
            break pid.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "unshare started no child"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    if made_first {
        std::fs::metadata(daemon.path(&format!(".by-pid/{sh}"))).unwrap();
    }
    writeln!(child.stdin.take().unwrap(), "{sh}").unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_container_cannot_make_views_only_look_up_the_one_made_for_it() {
    let daemon = Daemon::start(&[]);
    let refused = self_named_from_a_pid_namespace(&daemon, false);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "{refused:?}"
    );
    let allowed = self_named_from_a_pid_namespace(&daemon, true);
    assert!(
        String::from_utf8_lossy(&allowed.stdout).starts_with("MemTotal:"),
        "{allowed:?}"
    );
}
