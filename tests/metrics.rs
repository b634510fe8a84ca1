//! The daemon seen by operators: its metrics scraped by a real Prometheus server (Debian's
//! `prometheus`), checked by `promtool check metrics`, and `vproc status` on containers with limits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Limits, MIB, TestCgroup};

/// A free port on the loopback (bound, then released for the server to take).
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// GET `path` from `address`: (status code, body).
fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    // Prometheus answers its API chunked: the JSON is one chunk between size lines.
    let body = if answer
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A Prometheus server scraping one target every second, removed with its data on drop.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: vproc\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let address = free_address();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package) must be installed: scripts/test installs it");
        let prometheus = Prometheus {
            child,
            address,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if matches!(http_get(address, "/-/ready"), Ok((200, _))) {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus did not get ready");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The value of the instant query `query`'s one series, if it has one now.
    fn value(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) =
            http_get(self.address, &format!("/api/v1/query?query={encoded}")).ok()?;
        assert_eq!(status, 200, "{query}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = json["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{query} names one series: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` has the value `expected` (scrapes come every second).
    fn wait_for(&self, query: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(query);
            if last == Some(expected) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("{query}: {last:?} through Prometheus, expected {expected}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_what_the_daemon_counts() {
    let metrics = free_address();
    let daemon = Daemon::start(&["--metrics-address", &metrics.to_string()]);
    let prometheus = Prometheus::start(metrics);
    prometheus.wait_for("up{job=\"vproc\"}", 1.0);

    let group = TestCgroup::new(Limits {
        memory_bytes: Some(256 * MIB),
        ..Limits::default()
    });
    let swaps = daemon.path("proc/swaps");
    let out = group.run(&format!(
        "for i in $(seq 20); do cat {} > /dev/null || exit 1; done",
        swaps.display()
    ));
    assert!(out.status.success(), "{out:?}");
    prometheus.wait_for(
        "vproc_fuse_requests_total{operation=\"open\",file=\"proc/swaps\"}",
        20.0,
    );
    // Each cat reads twice, its content then the end; only the read that rendered is timed.
    prometheus.wait_for(
        "vproc_read_duration_seconds_count{file=\"proc/swaps\"}",
        20.0,
    );
    prometheus.wait_for(
        "vproc_fuse_requests_total{operation=\"read\",file=\"proc/swaps\"}",
        40.0,
    );
    assert_eq!(
        prometheus.value("vproc_host_fallbacks_total{file=\"proc/swaps\"}"),
        None,
        "a limited container's reads are its own"
    );

    // SIGUSR2 switches the views off: the reads that follow get the host's file, and say why.
    let signal = |daemon: &Daemon| {
        // SAFETY: kill on the pid of the daemon the test started.
        unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGUSR2) };
    };
    signal(&daemon);
    prometheus.wait_for("vproc_views_enabled", 0.0);
    let out = group.run(&format!("cat {} > /dev/null", swaps.display()));
    assert!(out.status.success(), "{out:?}");
    prometheus.wait_for(
        "vproc_host_fallbacks_total{file=\"proc/swaps\",cause=\"views_off\"}",
        1.0,
    );
    signal(&daemon);
    prometheus.wait_for("vproc_views_enabled", 1.0);

    // A read of a file the daemon does not have is an error by its errno.
    assert!(std::fs::File::open(daemon.path("proc/nonexistent")).is_err());
    prometheus.wait_for(
        "vproc_fuse_errors_total{operation=\"lookup\",errno=\"ENOENT\"}",
        1.0,
    );
    for family in [
        "vproc_containers",
        "vproc_degraded",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "vproc_cache_entries{cache=\"readers\"}",
        "vproc_reattach_runs_total",
    ] {
        assert!(
            prometheus.value(family).is_some(),
            "{family} is not in Prometheus"
        );
    }
    assert_eq!(prometheus.value("vproc_degraded"), Some(0.0));
}

#[test]
fn promtool_accepts_the_endpoint_s_output() {
    let metrics = free_address();
    let daemon = Daemon::start(&["--metrics-address", &metrics.to_string()]);
    // Something in every family that counts per file.
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        quota_us: Some(50_000),
        cpus: None,
    });
    let out = group.run(&format!(
        "cat {0}/proc/meminfo {0}/proc/cpuinfo {0}/proc/loadavg {0}/sys/devices/system/cpu/online > /dev/null; \
         ls {0}/sys/devices/system/cpu > /dev/null; cat {0}/proc/nope 2> /dev/null; true",
        daemon.mountpoint.display()
    ));
    assert!(out.status.success(), "{out:?}");
    let (status, text) = http_get(metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("vproc_fuse_requests_total{operation=\"read\",file=\"proc/cpuinfo\"}"));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) must be installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().filter(|l| !l.starts_with('#')).count() < 400,
        "a handful of reads makes no more than a few hundred series"
    );
}

/// `vproc status --json` of `daemon`, parsed.
fn status_json(mountpoint: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vproc"))
        .args(["status", "--json", "--mountpoint"])
        .arg(mountpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn vproc_status_lists_the_containers_most_reads_first() {
    let daemon = Daemon::start(&[]);
    let busy = TestCgroup::new(Limits {
        memory_bytes: Some(256 * MIB),
        quota_us: Some(100_000),
        cpus: None,
    });
    let quiet = TestCgroup::new(Limits {
        memory_bytes: Some(128 * MIB),
        quota_us: None,
        cpus: Some("0"),
    });
    let meminfo = daemon.path("proc/meminfo");
    let loadavg = daemon.path("proc/loadavg");
    let out = busy.run(&format!(
        "cat {} > /dev/null; for i in $(seq 9); do cat {} > /dev/null; done",
        loadavg.display(),
        meminfo.display()
    ));
    assert!(out.status.success(), "{out:?}");
    let out = quiet.run(&format!(
        "for i in 1 2 3; do cat {} > /dev/null; done",
        meminfo.display()
    ));
    assert!(out.status.success(), "{out:?}");

    let status = status_json(&daemon.mountpoint);
    assert_eq!(status["status"], "ok", "{status:#}");
    let rows = status["containers"].as_array().unwrap();
    let row_of = |group: &TestCgroup| {
        let name = format!("/{}", group.relative);
        let position = rows
            .iter()
            .position(|r| r["cgroup"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} not in {status:#}"));
        (position, &rows[position])
    };
    let (busy_at, busy_row) = row_of(&busy);
    let (quiet_at, quiet_row) = row_of(&quiet);
    assert!(busy_at < quiet_at, "most reads first: {status:#}");
    assert_eq!(busy_row["reads_total"], 10, "{busy_row:#}");
    assert_eq!(busy_row["mem_total_kb"], 262144, "{busy_row:#}");
    assert_eq!(busy_row["cpus"], 1, "{busy_row:#}");
    assert_eq!(busy_row["fallbacks_total"], 0, "{busy_row:#}");
    assert!(busy_row["init_pid"].as_u64().is_some(), "{busy_row:#}");
    assert!(busy_row["load"].is_array(), "it read loadavg: {busy_row:#}");
    assert!(!busy_row["pids"].as_array().unwrap().is_empty());
    assert_eq!(quiet_row["reads_total"], 3, "{quiet_row:#}");
    assert_eq!(quiet_row["mem_total_kb"], 131072, "{quiet_row:#}");
    assert_eq!(quiet_row["cpus"], 1, "{quiet_row:#}");
    assert!(quiet_row["load"].is_null(), "it never read loadavg");

    let out = Command::new(env!("CARGO_BIN_EXE_vproc"))
        .args(["status", "--mountpoint"])
        .arg(&daemon.mountpoint)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        table.starts_with(&format!("vprocd at {}: ok\n", daemon.mountpoint.display())),
        "{table}"
    );
    let line = |group: &TestCgroup| {
        table
            .lines()
            .find(|l| l.ends_with(&format!(" /{}", group.relative)))
            .unwrap_or_else(|| panic!("{} not in\n{table}", group.relative))
            .to_string()
    };
    assert!(line(&busy).contains("256.0 MiB"), "{table}");
    assert!(line(&quiet).contains("128.0 MiB"), "{table}");
}

#[test]
fn vproc_status_says_why_reads_got_the_host_s_files() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    let ours = |status: &serde_json::Value| {
        status["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["cgroup"] == format!("/{}", group.relative).as_str())
            .cloned()
    };
    // A reader in the host's pid namespace gets the host's uptime: its container has no uptime of
    // its own. The row says so.
    let uptime = daemon.path("proc/uptime");
    let out = group.run_in_host_pidns(&format!("cat {} > /dev/null", uptime.display()));
    assert!(out.status.success(), "{out:?}");
    let status = status_json(&daemon.mountpoint);
    let row = ours(&status).unwrap_or_else(|| panic!("no row: {status:#}"));
    assert_eq!(row["fallbacks"]["not_limited"], 1, "{row:#}");
    assert_eq!(row["fallbacks_total"], 1, "{row:#}");

    // SIGUSR2 switches the views off: readers are not resolved then, and their reads are counted in
    // the row of readers without a container, with the cause. The signal is taken by the daemon's
    // signal thread: the first reads may still be the container's.
    // SAFETY: kill on the pid of the daemon the test started.
    unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGUSR2) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = group.run(&format!(
            "cat {} > /dev/null",
            daemon.path("proc/meminfo").display()
        ));
        assert!(out.status.success(), "{out:?}");
        let status = status_json(&daemon.mountpoint);
        let outside = status["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"].is_null())
            .cloned();
        if outside.is_some_and(|r| r["fallbacks"]["views_off"].as_u64().is_some()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no views_off fallback: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_serves_while_its_metrics_port_is_taken_and_takes_it_once_free() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let daemon = Daemon::start(&["--metrics-address", &address.to_string()]);
    // The files are served at once, whatever the metrics.
    let meminfo = std::fs::read_to_string(daemon.path("proc/meminfo")).unwrap();
    assert!(meminfo.starts_with("MemTotal:"));
    drop(taken);
    // The daemon tries again every 10 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Ok((200, text)) = http_get(address, "/metrics") {
            assert!(text.contains("vproc_build_info"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never came up on {address}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn vproc_status_tells_a_view_of_another_container_from_the_process_s_own() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    let elsewhere = TestCgroup::new(Limits {
        memory_bytes: Some(128 * MIB),
        ..Limits::default()
    });
    let mut other = elsewhere.container("sh -c 'echo ready; exec sleep 60'");
    // Its stat from its own view; its meminfo from the other container's (named by that one's pid).
    let views = daemon.mountpoint.join(".by-pid");
    let mut container = group.container(&format!(
        "sh -c 'mount --bind {0}/$$/proc/stat /proc/stat && \
         mount --bind {0}/{1}/proc/meminfo /proc/meminfo && echo ready && exec sleep 60'",
        views.display(),
        other.id()
    ));
    let status = || {
        let out = Command::new(env!("CARGO_BIN_EXE_vproc"))
            .args([
                "status",
                "--pid",
                &container.id().to_string(),
                "--mountpoint",
            ])
            .arg(&daemon.mountpoint)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let line = |text: &str, path: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{path} ")))
            .unwrap_or_else(|| panic!("{path} not in\n{text}"))
            .to_string()
    };
    let text = status();
    let other_pid = other.id();
    let _ = other.kill();
    let _ = other.wait();
    // The other container's process gone, whose view it is cannot be told any more.
    let later = status();
    let _ = container.kill();
    let _ = container.wait();
    assert!(
        line(&text, "/proc/stat").ends_with(&format!(" vprocd (vprocd:{})", views.display())),
        "{text}"
    );
    assert!(
        line(&text, "/proc/meminfo").contains(&format!(
            "but the view of pid {other_pid}, which is of another container"
        )),
        "{text}"
    );
    assert!(
        text.contains("its /proc/meminfo is not its own container's"),
        "{text}"
    );
    assert!(
        line(&later, "/proc/meminfo").contains(&format!(
            "the view of pid {other_pid}, which has exited: whose figures cannot be told"
        )),
        "{later}"
    );
    assert!(!later.contains("its /proc/meminfo is not"), "{later}");
}

#[test]
fn vproc_status_of_a_pid_says_which_files_are_vprocd_s() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    // A container with vprocd's meminfo bound over its own, and nothing over its stat.
    let meminfo = daemon.path("proc/meminfo");
    let mut container = group.container(&format!(
        "sh -c 'mount --bind {0} /proc/meminfo && cat /proc/meminfo > /dev/null && echo ready && exec sleep 60'",
        meminfo.display()
    ));
    let pid = container.id();
    let status = |json: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vproc"));
        command
            .args(["status", "--pid", &pid.to_string(), "--mountpoint"])
            .arg(&daemon.mountpoint);
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    let out = status(false);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = status(true);
    let _ = container.kill();
    let _ = container.wait();
    assert!(out.status.success(), "{out:?}");
    let line = |path: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{path} ")))
            .unwrap_or_else(|| panic!("{path} not in\n{text}"))
            .to_string()
    };
    assert!(line("/proc/meminfo").contains("vprocd (vprocd:"), "{text}");
    assert!(line("/proc/stat").contains("not bound"), "{text}");
    assert!(text.contains("MemTotal 65536 kB"), "{text}");
    assert!(
        text.contains(&format!("its container /{}: 1 reads", group.relative)),
        "{text}"
    );
    assert!(json.status.success(), "{json:?}");
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["mem_total_kb"], 65536, "{json:#}");
    assert_eq!(json["daemon_row"]["reads_total"], 1, "{json:#}");

    let gone = Command::new(env!("CARGO_BIN_EXE_vproc"))
        .args(["status", "--pid", "999999999", "--mountpoint"])
        .arg(&daemon.mountpoint)
        .output()
        .unwrap();
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no process 999999999"),
        "{gone:?}"
    );
}
