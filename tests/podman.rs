//! Real container engine: Debian's podman with runc (crun refuses this machine's hybrid cgroups), an
//! image imported offline from a busybox rootfs, vprocd's files given with `-v` or by the OCI hook.
//! Needs root, podman, runc, busybox-static and `default_ulimits = []` in containers.conf (.ci/run sets
//! all of this up).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::{Daemon, stdout};

const IMAGE: &str = "localhost/vproc-test-busybox:latest";

/// Imports a busybox rootfs as IMAGE once per test process.
fn image() -> &'static str {
    static IMPORTED: OnceLock<()> = OnceLock::new();
    IMPORTED.get_or_init(|| {
        let podman = Command::new("podman").arg("--version").output();
        assert!(
            podman.is_ok_and(|o| o.status.success()),
            "podman is not installed: apt-get install podman runc busybox-static (or run .ci/run)"
        );
        let rootfs = tempfile::tempdir().unwrap();
        common::busybox_rootfs(rootfs.path());
        for dir in ["proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.path().join(dir)).unwrap();
        }
        let tar = rootfs.path().with_extension("tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(rootfs.path())
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success());
        // The previous run's image would stay behind as a dangling `<none>` image once the tag moves.
        let _ = Command::new("podman").args(["rmi", IMAGE]).output();
        stdout(
            Command::new("podman")
                .arg("import")
                .arg(&tar)
                .arg(IMAGE)
                .output()
                .unwrap(),
        );
        std::fs::remove_file(&tar).unwrap();
    });
    IMAGE
}

/// What the checks print inside the container: MemTotal, online, processors, cpu lines, uptime.
const REPORT: &str = "head -1 /proc/meminfo; cat /sys/devices/system/cpu/online; \
                      grep -c ^processor /proc/cpuinfo; grep -c ^cpu /proc/stat; cut -d. -f1 /proc/uptime";

/// Runs `command` in a container of IMAGE (runc, 256 MiB, half a CPU) with `hooks` as podman's hooks
/// directory and `extra` flags, and returns its stdout (the container must succeed).
fn podman_run(hooks: Option<&Path>, extra: &[String], command: &[&str]) -> String {
    let mut podman = Command::new("podman");
    if let Some(hooks) = hooks {
        podman.arg(format!("--hooks-dir={}", hooks.display()));
    }
    podman.args([
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--memory",
        "256m",
        "--cpus",
        "0.5",
    ]);
    stdout(
        podman
            .args(extra)
            .arg(image())
            .args(command)
            .output()
            .unwrap(),
    )
}

fn annotation(value: &str) -> Vec<String> {
    vec![
        "--annotation".to_string(),
        format!("io.vproc.enable={value}"),
    ]
}

fn host_mem_total() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    meminfo.lines().next().unwrap().to_string()
}

#[test]
fn docker_style_volume_flags_give_the_container_its_view() {
    let daemon = Daemon::start(&[]);
    let m = daemon.mountpoint.display();
    let mut flags = Vec::new();
    for file in [
        "proc/meminfo",
        "proc/cpuinfo",
        "proc/stat",
        "proc/uptime",
        "sys/devices/system/cpu/online",
    ] {
        flags.push("-v".to_string());
        flags.push(format!("{m}/{file}:/{file}:ro"));
    }
    let out = podman_run(None, &flags, &["sh", "-c", REPORT]);
    // 256 MiB, half a CPU: one CPU; cpu + cpu0 in stat; uptime near 0.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        ["MemTotal:         262144 kB", "0", "1", "2"],
        "{out}"
    );
    assert!(
        lines[4].parse::<u32>().unwrap() < 5,
        "uptime starts near 0: {out}"
    );
}

/// Ten containers started at once, each with its own memory limit, bind the same shared paths (as
/// `docker run -v` does): runc looks each bind's source up from inside the container's cgroup, and
/// each gets its container's own inodes, read through the page cache, never a neighbour's.
#[test]
fn ten_containers_started_at_once_each_bind_their_own_view() {
    let daemon = Daemon::start(&[]);
    let m = daemon.mountpoint.display().to_string();
    image();
    let started: Vec<(u64, std::thread::JoinHandle<String>)> = (0..10u64)
        .map(|i| {
            let megabytes = 64 + 16 * i;
            let m = m.clone();
            let thread = std::thread::spawn(move || {
                let mut podman = Command::new("podman");
                podman.args(["run", "--rm", "--runtime", "runc"]);
                podman.arg(format!("--memory={megabytes}m"));
                for file in ["proc/meminfo", "proc/stat", "sys/devices/system/cpu/online"] {
                    podman.arg("-v").arg(format!("{m}/{file}:/{file}:ro"));
                }
                // Read many times (the page cache serves most), each time whole.
                let script = "for i in $(seq 200); do head -1 /proc/meminfo; done | sort | uniq -c; \
                              for i in $(seq 50); do tail -1 /proc/stat | cut -d' ' -f1; done | sort | uniq -c";
                stdout(podman.arg(IMAGE).args(["sh", "-c", script]).output().unwrap())
            });
            (megabytes, thread)
        })
        .collect();
    for (megabytes, thread) in started {
        let out = thread.join().unwrap();
        let words: Vec<&str> = out.split_whitespace().collect();
        let kb = (megabytes * 1024).to_string();
        assert_eq!(
            words,
            ["200", "MemTotal:", kb.as_str(), "kB", "50", "softirq"],
            "the {megabytes} MiB container: {out}"
        );
    }
}

/// A hooks directory holding the shipped hook file `name`, pointed at this build, `mountpoint` and `log`.
fn hooks_dir(name: &str, mountpoint: &Path, log: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/oci-hooks")
        .join(name);
    let hook = std::fs::read_to_string(shipped)
        .unwrap()
        .replace("/usr/bin/vproc", env!("CARGO_BIN_EXE_vproc"))
        .replace("/var/lib/lxcfs", &mountpoint.display().to_string())
        .replace("/var/log/vproc-hook.log", &log.display().to_string());
    std::fs::write(dir.path().join(name), hook).unwrap();
    dir
}

#[test]
fn oci_hook_attaches_annotated_containers_without_any_volume() {
    let daemon = Daemon::start(&[]);
    let log = tempfile::NamedTempFile::new().unwrap();
    let hooks = hooks_dir("vproc.json", &daemon.mountpoint, log.path());
    let opted_in = podman_run(
        Some(hooks.path()),
        &annotation("true"),
        &["sh", "-c", REPORT],
    );
    let first_four: Vec<&str> = opted_in.lines().take(4).collect();
    assert_eq!(
        first_four,
        ["MemTotal:         262144 kB", "0", "1", "2"],
        "{opted_in}"
    );

    let plain = podman_run(Some(hooks.path()), &[], &["head", "-1", "/proc/meminfo"]);
    assert_eq!(
        plain.trim(),
        host_mem_total(),
        "no annotation: the host's files"
    );
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(
        logged.lines().count(),
        1,
        "the hook ran for the annotated container only: {logged}"
    );
    assert!(
        logged.contains("/proc/meminfo") && logged.contains("sys/devices/system/cpu"),
        "{logged}"
    );
}

#[test]
fn failing_hook_reports_and_the_container_still_starts_with_host_files() {
    let nowhere = std::env::temp_dir().join(common::unique("vproc-test-nodaemon"));
    std::fs::create_dir_all(&nowhere).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let hooks = hooks_dir("vproc-all-containers.json", &nowhere, log.path());
    let out = podman_run(Some(hooks.path()), &[], &["head", "-1", "/proc/meminfo"]);
    std::fs::remove_dir(&nowhere).unwrap();
    assert_eq!(out.trim(), host_mem_total());
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        logged.contains("error:") && logged.contains("no vprocd is serving"),
        "{logged}"
    );
}

#[test]
fn all_containers_hook_respects_an_opt_out() {
    let daemon = Daemon::start(&[]);
    let log = tempfile::NamedTempFile::new().unwrap();
    let hooks = hooks_dir("vproc-all-containers.json", &daemon.mountpoint, log.path());
    let run =
        |extra: &[String]| podman_run(Some(hooks.path()), extra, &["head", "-1", "/proc/meminfo"]);
    assert_eq!(run(&[]).trim(), "MemTotal:         262144 kB");
    assert_eq!(run(&annotation("false")).trim(), host_mem_total());
}

#[test]
fn vproc_run_takes_the_archives_podman_saves() {
    let daemon = Daemon::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    for format in ["docker-archive", "oci-archive", "oci-dir"] {
        let archive = work.path().join(format);
        let out = Command::new("podman")
            .args(["save", "--quiet", "--format", format, "-o"])
            .arg(&archive)
            .arg(image())
            .output()
            .unwrap();
        assert!(out.status.success(), "podman save {format}: {out:?}");
        let out = Command::new(env!("CARGO_BIN_EXE_vproc"))
            .args(["run", "--memory", "256m", "--cpus", "0.5", "--lxcfs"])
            .arg(&daemon.mountpoint)
            .arg("--image")
            .arg(&archive)
            .arg("--image-cache")
            .arg(&cache)
            .args(["sh", "-c", REPORT])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let lines: Vec<String> = stdout(out).lines().map(String::from).collect();
        assert_eq!(
            lines[..4],
            ["MemTotal:         262144 kB", "0", "1", "2"],
            "{format}"
        );
    }
}

#[test]
fn podman_exec_is_the_first_reader_of_its_namespace_and_sees_the_container() {
    // `podman exec` enters the container with setns: its parent is outside the namespace until runc
    // exits and it is re-parented to the container's init. Each round, a fresh daemon, whose first
    // reader of the container's namespace is the exec'd process.
    for round in 0..20 {
        let daemon = Daemon::start(&[]);
        let m = daemon.mountpoint.display();
        let volume = format!("{m}/proc/meminfo:/proc/meminfo:ro");
        let name = common::unique("vproc-exec");
        let started = Command::new("podman")
            .args(["run", "-d", "--rm", "--runtime", "runc", "--memory", "256m"])
            .args(["--name", &name, "-v", &volume])
            .arg(image())
            .args(["sleep", "120"])
            .output()
            .unwrap();
        assert!(started.status.success(), "{started:?}");
        let seen = Command::new("podman")
            .args(["exec", &name, "head", "-1", "/proc/meminfo"])
            .output()
            .unwrap();
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &name])
            .output();
        assert_eq!(
            String::from_utf8_lossy(&seen.stdout),
            "MemTotal:         262144 kB\n",
            "round {round}: {seen:?}"
        );
    }
}

/// `vproc seccomp-agent` on a socket of the test's own, and the shipped profile pointed at it.
struct Agent {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("seccomp.sock");
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/seccomp/vproc-docker.json"),
        )
        .unwrap();
        let profile = shipped.replace("/run/vproc/seccomp.sock", socket.to_str().unwrap());
        assert_ne!(
            profile, shipped,
            "the shipped profile names /run/vproc/seccomp.sock"
        );
        std::fs::write(dir.path().join("profile.json"), profile).unwrap();
        let child = Agent::spawn(&socket, &dir.path().join("agent.log"));
        Agent { child, dir }
    }

    fn spawn(socket: &Path, log: &Path) -> std::process::Child {
        let child = Command::new(env!("CARGO_BIN_EXE_vproc"))
            .arg("seccomp-agent")
            .arg("--socket")
            .arg(socket)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child
    }

    /// `--security-opt seccomp=<the profile>`.
    fn option(&self) -> Vec<String> {
        vec![
            "--security-opt".to_string(),
            format!("seccomp={}", self.dir.path().join("profile.json").display()),
        ]
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// busybox free's total, from sysinfo(2). The container's /proc/meminfo is the host's here (no
/// vprocd files bound), and busybox takes its cache figure from it, so `used` can run into the total's
/// column: the total is cut out by its place (right-aligned to column 19).
const FREE_TOTAL: &str = "free | awk '/^Mem:/ { print substr($0, 5, 15) + 0 }'";

#[test]
fn the_shipped_profile_gives_runc_containers_their_sysinfo_and_cpu_count() {
    let agent = Agent::start();
    let mut flags = agent.option();
    flags.extend(["--cpuset-cpus".to_string(), "0-1".to_string()]);
    if std::thread::available_parallelism().unwrap().get() < 2 {
        flags.truncate(2);
    }
    // glibc's getconf and Python from the host's /usr, through its loader (the image has no /lib64).
    // PATH=/bin: busybox's applets, not the host's /usr/bin ones, which cannot start here.
    flags.extend(["-v", "/usr:/usr:ro", "--env", "PATH=/bin"].map(String::from));
    let glibc =
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path /usr/lib/x86_64-linux-gnu";
    let script = format!(
        "sleep 0.3; uptime > /tmp/uptime; {FREE_TOTAL}; cat /tmp/uptime; nproc; \
         {glibc} /usr/bin/getconf _PHYS_PAGES; {glibc} /usr/bin/getconf PAGESIZE; \
         {glibc} /usr/bin/python3 -c 'import os; print(len(os.sched_getaffinity(0)))'"
    );
    let out = podman_run(None, &flags, &["sh", "-c", &script]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "262144", "busybox free: {out}\n{}", agent.log());
    // The container's uptime and load, not the host's (hours, and these tests' load). The first call
    // starts the averages at what runs then: uptime alone (it waits for the answer, uncounted), not
    // free with awk beside it in a pipeline.
    assert!(lines[1].contains(" up 0 min"), "busybox uptime: {out}");
    assert!(
        lines[1].ends_with("load average: 0.00, 0.00, 0.00"),
        "busybox uptime: {out}"
    );
    assert_eq!(lines[2], "1", "nproc: {out}");
    let pages: u64 = lines[3].parse().unwrap();
    let page_size: u64 = lines[4].parse().unwrap();
    assert_eq!(pages * page_size, 256 << 20, "getconf: {out}");
    assert_eq!(lines[5], "1", "Python's sched_getaffinity: {out}");
    // A process outside is untouched.
    let host = Command::new("/bin/busybox").arg("nproc").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&host.stdout).trim(),
        std::thread::available_parallelism()
            .unwrap()
            .get()
            .to_string()
    );
}

#[test]
fn a_kill_9_of_the_agent_and_of_vprocd_fails_no_call_of_a_running_container() {
    let mut daemon = Daemon::start(&[]);
    let mut agent = Agent::start();
    let signals = tempfile::tempdir().unwrap();
    let name = common::unique("vproc-seccomp");
    // Calls busybox free until told to stop; any answer but the container's ends it with BAD.
    let script = format!(
        "n=0; while [ ! -e /signals/stop ]; do t=$({FREE_TOTAL}); \
         [ \"$t\" = 262144 ] || {{ echo BAD $n $t; exit 1; }}; n=$((n+1)); touch /signals/started; done; \
         echo calls $n"
    );
    let mut flags = agent.option();
    flags.extend([
        "--name".to_string(),
        name.clone(),
        "-v".to_string(),
        format!("{}:/signals", signals.path().display()),
    ]);
    let container = std::thread::spawn(move || podman_run(None, &flags, &["sh", "-c", &script]));
    let started = signals.path().join("started");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline && !container.is_finished(),
            "the container did not start calling: {}",
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    agent.kill();
    daemon.stop_with(libc::SIGKILL);
    // Calls go on for a while with neither running.
    std::thread::sleep(std::time::Duration::from_secs(2));
    // The last call answered is recent: they did not stop at the kill.
    let last_call = std::fs::metadata(&started).unwrap().modified().unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(last_call)
        .unwrap_or_default();
    std::fs::write(signals.path().join("stop"), "").unwrap();
    let out = container.join();
    let _ = Command::new("podman")
        .args(["rm", "-f", "-t", "0", &name])
        .output();
    let out = out.expect("the container failed (BAD or an error)");
    let calls: u32 = out.trim().strip_prefix("calls ").unwrap().parse().unwrap();
    assert!(calls > 10, "{out}");
    assert!(
        age < std::time::Duration::from_millis(1500),
        "no call for {age:?} after the kill: {out}"
    );

    // A new agent takes the stale socket over and serves the next container.
    let socket = agent.dir.path().join("seccomp.sock");
    agent.child = Agent::spawn(&socket, &agent.dir.path().join("agent.log"));
    let out = podman_run(None, &agent.option(), &["sh", "-c", FREE_TOTAL]);
    assert_eq!(out.trim(), "262144", "{}", agent.log());
}

/// `podman --runtime <vproc-runc>` with the daemon and agent of a test (as runtime flags, removed by
/// the wrapper before runc sees them).
fn vproc_runc_flags(daemon: &Path, agent: Option<&Path>) -> Vec<String> {
    let mut flags = vec![
        "--runtime".to_string(),
        env!("CARGO_BIN_EXE_vproc-runc").to_string(),
        "--runtime-flag".to_string(),
        format!("vproc-lxcfs={}", daemon.display()),
    ];
    if let Some(socket) = agent {
        flags.push("--runtime-flag".to_string());
        flags.push(format!("vproc-seccomp-socket={}", socket.display()));
    }
    flags
}

/// Prints the source filesystem of each mount over the files the runc wrapper binds, one line each.
const MOUNTED_FROM: &str = "grep -E ' /(proc/(meminfo|cpuinfo|stat|loadavg)|sys/devices/system/cpu) ' \
     /proc/self/mountinfo | sed 's/.* - [^ ]* \\([^ ]*\\) .*/\\1/'";

/// Each of the four /proc files and the cpu directory is mounted once, from the views mount of the
/// daemon at `mountpoint` (its hook replaced the shared binds runc made): `sources` as
/// [`MOUNTED_FROM`] prints them.
fn assert_views_mounted(sources: &[&str], mountpoint: &Path) {
    let views = format!("vprocd:{}/.by-pid", mountpoint.display());
    assert_eq!(sources, [views.as_str(); 5], "{sources:?}");
}

/// `podman GLOBAL run --rm --memory 256m --cpus 0.5 EXTRA IMAGE COMMAND`, its output.
fn podman_with(global: &[String], extra: &[&str], command: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(global)
        .args(["run", "--rm", "--memory", "256m", "--cpus", "0.5"])
        .args(extra)
        .arg(image())
        .args(command)
        .output()
        .unwrap()
}

#[test]
fn vproc_runc_gives_podman_containers_their_views_with_no_flag() {
    let mut daemon = Daemon::start(&[]);
    let agent = Agent::start();
    let socket = agent.dir.path().join("seccomp.sock");
    let global = vproc_runc_flags(&daemon.mountpoint, Some(&socket));
    let script = format!(
        "head -1 /proc/meminfo; nproc; grep -c ^processor /proc/cpuinfo; \
         cat /sys/devices/system/cpu/online; {FREE_TOTAL}; uptime; {MOUNTED_FROM}"
    );
    let out = podman_with(&global, &[], &["sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 6, "{stdout}\n{}", agent.log());
    assert_eq!(
        lines[..5],
        ["MemTotal:         262144 kB", "1", "1", "0", "262144"],
        "{stdout}\n{}",
        agent.log()
    );
    assert!(lines[5].contains(" up 0 min"), "{stdout}");
    assert_views_mounted(&lines[6..], &daemon.mountpoint);

    // Exit codes, ps, kill and rm as with runc.
    let out = podman_with(&global, &[], &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let name = common::unique("vproc-runc");
    let started = Command::new("podman")
        .args(&global)
        .args(["run", "-d", "--name", &name, image(), "sleep", "60"])
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    let listed = Command::new("podman")
        .args(&global)
        .args([
            "ps",
            "--filter",
            &format!("name={name}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    let killed = Command::new("podman")
        .args(&global)
        .args(["kill", &name])
        .output()
        .unwrap();
    let removed = Command::new("podman")
        .args(&global)
        .args(["rm", "-f", &name])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), name);
    assert!(killed.status.success(), "{killed:?}");
    assert!(removed.status.success(), "{removed:?}");

    // With vprocd stopped, the container still starts, with the host's files.
    daemon.stop_with(libc::SIGTERM);
    let out = podman_with(&global, &[], &["head", "-1", "/proc/meminfo"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        host_mem_total()
    );
}

/// Debian's containerd, started by the test with state of its own (root, state, socket in a temporary
/// directory), with `env` (the shim and runc inherit it). Stopped, its leftovers unmounted and the
/// directory removed on drop.
struct Containerd {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start(env: &[(&str, &Path)]) -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let mut command = Command::new("containerd");
        command
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("containerd.log")).unwrap());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .expect("containerd is not installed: apt-get install containerd (or run .ci/run)");
        let containerd = Containerd { child, dir };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while containerd.ctr(&["version"]).status.code() != Some(0) {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not start: {}",
                containerd.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        containerd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(args)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers of a failed test first (their shims, runc's cgroups), then the daemon.
        let listed = self.ctr(&["task", "ls", "-q"]);
        for id in String::from_utf8_lossy(&listed.stdout).lines() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            std::thread::sleep(std::time::Duration::from_millis(200));
            let _ = self.ctr(&["task", "delete", "-f", id]);
        }
        let listed = self.ctr(&["container", "ls", "-q"]);
        for id in String::from_utf8_lossy(&listed.stdout).lines() {
            let _ = self.ctr(&["container", "delete", id]);
        }
        // SAFETY: kill(2) of the containerd this test spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.path().to_string_lossy().into_owned();
        for point in mountinfo
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|p| p.starts_with(&prefix))
        {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
        // The parent cgroup of ctr's containers (namespace `default`), once empty.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(hierarchy.path().join("default"));
        }
    }
}

#[test]
fn vproc_runc_under_containerd_gives_ctr_containers_their_views() {
    let mut daemon = Daemon::start(&[]);
    let agent = Agent::start();
    let socket = agent.dir.path().join("seccomp.sock");
    let containerd = Containerd::start(&[
        ("VPROC_LXCFS", daemon.mountpoint.as_path()),
        ("VPROC_SECCOMP_SOCKET", socket.as_path()),
    ]);
    let archive = containerd.dir.path().join("image.tar");
    let saved = Command::new("podman")
        .args(["save", "--format", "docker-archive", "-o"])
        .arg(&archive)
        .arg(image())
        .output()
        .unwrap();
    assert!(saved.status.success(), "{saved:?}");
    let imported = containerd.ctr(&["images", "import", archive.to_str().unwrap()]);
    assert!(imported.status.success(), "{imported:?}");
    let wrapper = env!("CARGO_BIN_EXE_vproc-runc");
    let run = |id: &str, extra: &[&str], command: &[&str]| {
        // --seccomp: the default profile, which the wrapper hands the two calls from (an unconfined
        // container stays unconfined).
        let mut args = vec!["run", "--seccomp", "--runc-binary", wrapper];
        args.extend_from_slice(&["--memory-limit", "268435456"]);
        args.extend_from_slice(&["--cpus", "0.5"]);
        args.extend_from_slice(extra);
        args.extend_from_slice(&[image(), id]);
        args.extend_from_slice(command);
        containerd.ctr(&args)
    };
    let script = format!("head -1 /proc/meminfo; nproc; {FREE_TOTAL}; {MOUNTED_FROM}; exit 3");
    let out = run("vproc-t1", &["--rm"], &["sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // The command's exit code is ctr's, as with runc.
    assert_eq!(out.status.code(), Some(3), "{out:?}\n{}", containerd.log());
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 3, "{stdout}\n{}", agent.log());
    assert_eq!(
        lines[..3],
        ["MemTotal:         262144 kB", "1", "262144"],
        "{stdout}\n{}",
        agent.log()
    );
    assert_views_mounted(&lines[3..], &daemon.mountpoint);

    // ps, kill and delete as with runc.
    let started = run("vproc-t2", &["-d"], &["sleep", "60"]);
    assert!(started.status.success(), "{started:?}");
    let ps = containerd.ctr(&["task", "ps", "vproc-t2"]);
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).lines().count(),
        2,
        "{ps:?}"
    );
    let killed = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "vproc-t2"]);
    assert!(killed.status.success(), "{killed:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !String::from_utf8_lossy(&containerd.ctr(&["task", "ls"]).stdout).contains("STOPPED") {
        assert!(
            std::time::Instant::now() < deadline,
            "the task did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        containerd
            .ctr(&["task", "delete", "vproc-t2"])
            .status
            .success()
    );
    assert!(
        containerd
            .ctr(&["container", "delete", "vproc-t2"])
            .status
            .success()
    );

    // With vprocd stopped, the container still starts, with the host's files.
    daemon.stop_with(libc::SIGTERM);
    let out = run("vproc-t3", &["--rm"], &["head", "-1", "/proc/meminfo"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        host_mem_total()
    );
}

#[test]
fn with_the_socket_held_as_systemd_holds_it_an_exec_waits_out_an_agent_restart() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // The test holds the listening socket, as vproc-seccomp-agent.socket does; agents come and go on it.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("seccomp.sock");
    let listening = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/seccomp/vproc-docker.json"),
    )
    .unwrap();
    let profile = dir.path().join("profile.json");
    std::fs::write(
        &profile,
        shipped.replace("/run/vproc/seccomp.sock", socket.to_str().unwrap()),
    )
    .unwrap();
    let fd = listening.as_raw_fd();
    let activated = || {
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" seccomp-agent --socket /nonexistent/unused",
                env!("CARGO_BIN_EXE_vproc"),
            ])
            .stderr(std::process::Stdio::null());
        // SAFETY: dup2 and fcntl only, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else if libc::dup2(fd, 3) != 3 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        command.spawn().unwrap()
    };
    let name = common::unique("vproc-activated");
    let mut first = activated();
    let started = Command::new("podman")
        .args(["run", "-d", "--rm", "--runtime", "runc", "--memory", "256m"])
        .args(["--name", &name, "--security-opt"])
        .arg(format!("seccomp={}", profile.display()))
        .args([image(), "sleep", "60"])
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    // The agent dies; an exec comes before its successor (runc connects for each exec).
    first.kill().unwrap();
    first.wait().unwrap();
    let exec_name = name.clone();
    let exec = std::thread::spawn(move || {
        Command::new("podman")
            .args(["exec", &exec_name, "sh", "-c", FREE_TOTAL])
            .output()
            .unwrap()
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut second = activated();
    let out = exec.join().unwrap();
    let _ = Command::new("podman")
        .args(["rm", "-f", "-t", "0", &name])
        .output();
    let _ = second.kill();
    let _ = second.wait();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "262144");
}
