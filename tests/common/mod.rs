//! Test harness for real-kernel tests: a vprocd on a private mountpoint and cgroup v1 groups, both
//! removed when the guard drops, also when the test panics. Names carry the test process's pid and a
//! counter so tests can run in parallel.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running vprocd.
pub struct Daemon {
    pub mountpoint: PathBuf,
    pub pidfile: PathBuf,
    pub child: Option<Child>,
}

impl Daemon {
    /// Starts vprocd with `args` on a fresh mountpoint and waits until it serves.
    pub fn start(args: &[&str]) -> Daemon {
        let (mountpoint, pidfile) = Daemon::fresh_paths();
        Daemon::start_at(&mountpoint, &pidfile, args)
    }

    /// A unique mountpoint and its pidfile beside it.
    fn fresh_paths() -> (PathBuf, PathBuf) {
        let mountpoint = std::env::temp_dir().join(unique("vproc-test-mnt"));
        let pidfile = mountpoint.with_extension("pid");
        (mountpoint, pidfile)
    }

    /// Starts vprocd with soft and hard RLIMIT_NOFILE at `open_files` (what `ulimit -n` sets).
    pub fn start_with_open_files(args: &[&str], open_files: u64) -> Daemon {
        let (mountpoint, pidfile) = Daemon::fresh_paths();
        let mut command = Command::new(env!("CARGO_BIN_EXE_vprocd"));
        // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                let limit = libc::rlimit {
                    rlim_cur: open_files,
                    rlim_max: open_files,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            })
        };
        Daemon::start_command(command, &mountpoint, &pidfile, args)
    }

    /// Starts the vprocd at `binary` (another build) on a fresh mountpoint.
    pub fn start_binary(binary: &Path, args: &[&str]) -> Daemon {
        let (mountpoint, pidfile) = Daemon::fresh_paths();
        Daemon::start_command(Command::new(binary), &mountpoint, &pidfile, args)
    }

    /// Starts vprocd at a given mountpoint and pidfile.
    pub fn start_at(mountpoint: &Path, pidfile: &Path, args: &[&str]) -> Daemon {
        let command = Command::new(env!("CARGO_BIN_EXE_vprocd"));
        Daemon::start_command(command, mountpoint, pidfile, args)
    }

    fn start_command(
        mut command: Command,
        mountpoint: &Path,
        pidfile: &Path,
        args: &[&str],
    ) -> Daemon {
        let child = command
            .args(args)
            .arg("--pidfile")
            .arg(pidfile)
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(match std::env::var_os("VPROC_TEST_DAEMON_LOG") {
                // Set it to a file to keep the daemons' logs of a test run.
                Some(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_or(Stdio::null(), Stdio::from),
                None => Stdio::null(),
            })
            .spawn()
            .expect("spawn vprocd");
        let mut daemon = Daemon {
            mountpoint: mountpoint.to_path_buf(),
            pidfile: pidfile.to_path_buf(),
            child: Some(child),
        };
        daemon.wait_until_serving();
        daemon
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // A real request: stat of a dead mount is answered from the kernel's attribute cache.
            // The views mount is stacked on `.by-pid` right after (a daemon too old to have one has
            // no `.by-pid`).
            let views = self.path(".by-pid");
            if is_mounted(&self.mountpoint)
                && std::fs::File::open(self.path("proc/meminfo")).is_ok()
                && (is_mounted(&views) || std::fs::metadata(&views).is_err())
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vprocd exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("vprocd did not mount {}", self.mountpoint.display());
    }

    /// A path below the mountpoint.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// File descriptors the daemon holds now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The daemon's resident memory in bytes (VmRSS).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }

    /// `vproc check --verbose` on this daemon: (exit status success, stdout + stderr).
    pub fn check(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_vproc"))
            .args(["check", "--verbose", "--mountpoint"])
            .arg(&self.mountpoint)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Sends `signal` and waits for the exit status.
    pub fn stop_with(&mut self, signal: libc::c_int) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: kill on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop_with(libc::SIGTERM);
        }
        if is_mounted(&self.mountpoint) {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&self.mountpoint);
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

/// True when `path` is a mount point in /proc/self/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*path))
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "cpuset", "blkio"];

/// Limits for a test cgroup; `None` leaves the kernel's default (unlimited / inherited).
#[derive(Default, Clone)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub quota_us: Option<u64>,
    pub cpus: Option<&'static str>,
}

/// The box most tests use: 64 MiB, half a CPU, cpuset 0.
pub fn small_box() -> Limits {
    Limits {
        memory_bytes: Some(64 * MIB),
        quota_us: Some(50_000),
        cpus: Some("0"),
    }
}

/// Moves the calling process into `group` until dropped, then back to where it was.
pub struct Entered {
    original: Vec<(&'static str, String)>,
}

impl TestCgroup {
    /// Moves this whole process (all threads) into the group.
    pub fn enter(&self) -> Entered {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let original = CONTROLLERS
            .iter()
            .map(|c| {
                let path = own
                    .lines()
                    .find_map(|l| {
                        let mut f = l.splitn(3, ':');
                        let (_, names, path) = (f.next()?, f.next()?, f.next()?);
                        names.split(',').any(|n| n == *c).then(|| path.to_string())
                    })
                    .unwrap_or_else(|| "/".into());
                (*c, path)
            })
            .collect();
        for controller in CONTROLLERS {
            write(
                &self.dir(controller).join("cgroup.procs"),
                &std::process::id().to_string(),
            );
        }
        Entered { original }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        for (controller, path) in &self.original {
            let dir = Path::new(CGROUP_ROOT)
                .join(controller)
                .join(path.trim_start_matches('/'));
            let _ = std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string());
        }
    }
}

/// A cgroup v1 group in memory, cpu, cpuacct and cpuset, removed (children first) on drop.
pub struct TestCgroup {
    /// Path relative to each controller's root, e.g. `vproc-test-12-3/child`.
    pub relative: String,
    owns_root: bool,
}

impl TestCgroup {
    /// A new top-level group.
    pub fn new(limits: Limits) -> TestCgroup {
        let group = TestCgroup {
            relative: unique("vproc-test"),
            owns_root: true,
        };
        group.create(&limits);
        group
    }

    /// A new top-level group at `relative`, e.g. where an earlier group was removed.
    pub fn at(relative: &str, limits: Limits) -> TestCgroup {
        let group = TestCgroup {
            relative: relative.to_string(),
            owns_root: true,
        };
        group.create(&limits);
        group
    }

    /// A child of this group.
    pub fn child(&self, limits: Limits) -> TestCgroup {
        let group = TestCgroup {
            relative: format!("{}/child", self.relative),
            owns_root: false,
        };
        group.create(&limits);
        group
    }

    pub fn dir(&self, controller: &str) -> PathBuf {
        Path::new(CGROUP_ROOT).join(controller).join(&self.relative)
    }

    fn create(&self, limits: &Limits) {
        for controller in CONTROLLERS {
            std::fs::create_dir(self.dir(controller))
                .unwrap_or_else(|e| panic!("mkdir {controller}: {e}"));
        }
        // A v1 cpuset needs cpus and mems before a task may join; inherit the parent's unless told.
        let parent = self.dir("cpuset").parent().unwrap().to_path_buf();
        let cpus = limits
            .cpus
            .map(str::to_string)
            .unwrap_or_else(|| std::fs::read_to_string(parent.join("cpuset.cpus")).unwrap());
        let mems = std::fs::read_to_string(parent.join("cpuset.mems")).unwrap();
        write(&self.dir("cpuset").join("cpuset.cpus"), cpus.trim());
        write(&self.dir("cpuset").join("cpuset.mems"), mems.trim());
        if let Some(bytes) = limits.memory_bytes {
            write(
                &self.dir("memory").join("memory.limit_in_bytes"),
                &bytes.to_string(),
            );
        }
        if let Some(quota) = limits.quota_us {
            write(
                &self.dir("cpu").join("cpu.cfs_quota_us"),
                &quota.to_string(),
            );
        }
    }

    /// Starts `sleep` as pid 1 of a new pid namespace in this group: the child to end, and sleep's host
    /// pid.
    pub fn container_init(&self) -> (Child, u32) {
        let mut init = self.spawn("echo ready; exec unshare --pid --fork sleep 120");
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(init.stdout.as_mut().unwrap()),
            &mut ready,
        )
        .unwrap();
        match first_child(init.id()) {
            Some(pid) => (init, pid),
            None => {
                let _ = init.kill();
                let _ = init.wait();
                panic!("no init in the namespace");
            }
        }
    }

    /// Writes `value` to `file` of this group in `controller`'s hierarchy (a limit [`Limits`] has no
    /// field for, such as `memory.memsw.limit_in_bytes`).
    pub fn set(&self, controller: &str, file: &str, value: &str) {
        write(&self.dir(controller).join(file), value);
    }

    /// Moves process `pid` (one the test started) into this group.
    pub fn adopt(&self, pid: u32) {
        for controller in CONTROLLERS {
            write(&self.dir(controller).join("cgroup.procs"), &pid.to_string());
        }
    }

    /// A shell prefix that moves the shell into this group.
    fn join_script(&self) -> String {
        CONTROLLERS
            .iter()
            .map(|c| format!("echo $$ > {}/cgroup.procs", self.dir(c).display()))
            .collect::<Vec<_>>()
            .join(" && ")
    }

    /// Runs `script` with sh inside this group, in a fresh pid and mount namespace with its own /proc.
    pub fn run(&self, script: &str) -> Output {
        self.run_with(&["unshare", "-fpm", "--mount-proc", "sh", "-c", script])
    }

    /// Runs `script` with sh inside this group, in the host's pid namespace.
    pub fn run_in_host_pidns(&self, script: &str) -> Output {
        self.run_with(&["sh", "-c", script])
    }

    fn run_with(&self, argv: &[&str]) -> Output {
        let quoted: Vec<String> = argv
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let script = format!("{} && exec {}", self.join_script(), quoted.join(" "));
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("run sh")
    }

    /// A "container": `command` in this group with a mount namespace of its own (like a container's init
    /// after pivot_root). `command` prints `ready` first; since it prints it from inside the new
    /// namespace, the namespace exists when this returns.
    pub fn container(&self, command: &str) -> Child {
        let mut child = self.spawn(&format!("exec unshare -m --propagation private {command}"));
        let mut ready = String::new();
        let mut out = std::io::BufReader::new(child.stdout.as_mut().expect("piped stdout"));
        std::io::BufRead::read_line(&mut out, &mut ready).expect("read ready");
        assert_eq!(ready, "ready\n", "the container did not start");
        child
    }

    /// Starts `sh -c script` in this group (host pid namespace) and returns the child.
    pub fn spawn(&self, script: &str) -> Child {
        self.spawn_command(script).spawn().expect("spawn sh")
    }

    /// Like [`TestCgroup::spawn`], with the child's stdin piped too.
    pub fn spawn_with_stdin(&self, script: &str) -> Child {
        self.spawn_command(script)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh")
    }

    fn spawn_command(&self, script: &str) -> Command {
        let script = format!(
            "{} && exec sh -c '{}'",
            self.join_script(),
            script.replace('\'', "'\\''")
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).stdout(Stdio::piped());
        command
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Children first: the root guard removes its `child` directory too, in case the child guard leaked.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut dirs: Vec<String> = Vec::new();
        if self.owns_root {
            dirs.push(format!("{}/child", self.relative));
        }
        dirs.push(self.relative.clone());
        for relative in dirs {
            for controller in CONTROLLERS {
                let dir = Path::new(CGROUP_ROOT).join(controller).join(&relative);
                while dir.exists() {
                    // Only processes the test started live in its own uniquely named group.
                    for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                    {
                        if let Ok(pid) = pid.parse::<i32>() {
                            // SAFETY: kill on a pid in our own test cgroup.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                    if std::fs::remove_dir(&dir).is_ok() || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

fn write(path: &Path, value: &str) {
    std::fs::write(path, value)
        .unwrap_or_else(|e| panic!("write {value} to {}: {e}", path.display()));
}

/// stdout of a command that must succeed.
pub fn stdout(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub const MIB: u64 = 1 << 20;

/// A root filesystem of Debian's busybox-static with every applet, a passwd with root and nobody.
pub fn busybox_rootfs(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    for sub in ["bin", "etc", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    // Copied by a child process, never by this one: a file this process holds open for writing is
    // inherited by every child another test thread forks meanwhile, and exec of it fails with ETXTBSY
    // until they all exec (seen on a fresh machine's first CI run).
    let copied = Command::new("cp")
        .arg("/bin/busybox")
        .arg(dir.join("bin/busybox"))
        .status()
        .expect("run cp");
    assert!(
        copied.success(),
        "busybox-static's /bin/busybox: apt-get install busybox-static (or run .ci/run)"
    );
    let list = Command::new(dir.join("bin/busybox"))
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// mknod(2) of `path` with `mode` (type and permissions) and the device numbers; panics on failure.
pub fn mknod(path: &Path, mode: libc::mode_t, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: plain mknod(2) with a valid C string.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) };
    let error = std::io::Error::last_os_error();
    assert_eq!(rc, 0, "mknod {}: {error}", path.display());
}

/// The first child of process `pid`, once it has one (10 s at most).
pub fn first_child(pid: u32) -> Option<u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().ok();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

/// A process alone in a pid namespace of its own (a container to the daemon: its own view), gone with
/// `unshare` when it is killed.
pub struct Sleeper {
    unshare: Child,
    pub pid: u32,
}

impl Sleeper {
    pub fn start() -> Sleeper {
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            let listed = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = listed.split_whitespace().next() {
                break pid.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "unshare started no child");
            std::thread::sleep(Duration::from_millis(2));
        };
        Sleeper { unshare, pid }
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// The `views:` figure of a `vproc check --verbose` report.
pub fn views_in(report: &str) -> usize {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix("views: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no views line in\n{report}"))
}

/// Opens argv[2] handles of argv[1], reads one byte of each (so each is read in pieces), prints
/// `ready`, waits for a line on stdin, then closes them.
const HANDLE_HOLDER: &str = r#"
import os, resource, sys
path, count = sys.argv[1], int(sys.argv[2])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
fds = []
for _ in range(count):
    fd = os.open(path, os.O_RDONLY)
    assert len(os.read(fd, 1)) == 1
    fds.append(fd)
print("ready", flush=True)
sys.stdin.readline()
for fd in fds:
    os.close(fd)
"#;

/// Processes in a cgroup holding many open handles of one file, each read one byte into it.
pub struct HandleHolders {
    children: Vec<Child>,
}

/// Handles one holder process opens: below the hard RLIMIT_NOFILE here (20000), which CI's root
/// cannot raise (no CAP_SYS_RESOURCE).
const HANDLES_PER_HOLDER: usize = 10_000;

impl HandleHolders {
    /// Opens `count` handles of `path` from processes in `group`; returns once all are open.
    pub fn open(group: &TestCgroup, path: &Path, count: usize) -> HandleHolders {
        let mut holders = HandleHolders {
            children: Vec::new(),
        };
        let mut left = count;
        while left > 0 {
            let here = left.min(HANDLES_PER_HOLDER);
            let script = format!(
                "exec python3 -c '{HANDLE_HOLDER}' {} {here}",
                path.display()
            );
            holders.children.push(group.spawn_with_stdin(&script));
            left -= here;
        }
        for holder in &mut holders.children {
            let mut ready = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
                &mut ready,
            )
            .unwrap();
            assert_eq!(ready, "ready\n", "a holder did not open its handles");
        }
        holders
    }

    /// Closes every handle and waits for the holders to exit.
    pub fn close(mut self) {
        for mut holder in std::mem::take(&mut self.children) {
            std::io::Write::write_all(holder.stdin.as_mut().unwrap(), b"\n").unwrap();
            assert!(holder.wait().unwrap().success());
        }
    }
}

impl Drop for HandleHolders {
    fn drop(&mut self) {
        for holder in &mut self.children {
            let _ = holder.kill();
            let _ = holder.wait();
        }
    }
}
