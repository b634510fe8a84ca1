//! `vproc attach` and `vproc hook` against "containers" made with unshare (a mount namespace of their own,
//! a limited cgroup): the files appear from outside, nothing in the container is needed.

mod common;

use std::process::{Child, Command, Stdio};

use common::{Daemon, Limits, MIB, TestCgroup, stdout};

fn vproc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vproc"))
        .args(args)
        .output()
        .unwrap()
}

/// A container that idles (own mount namespace, in `group`).
fn container(group: &TestCgroup) -> Child {
    group.container("sh -c \"echo ready; exec sleep 120\"")
}

/// Reads `path` as a process of the container: in its cgroup and mount namespace.
fn read_inside(group: &TestCgroup, container: &Child, path: &str) -> std::process::Output {
    group.run_in_host_pidns(&format!("exec nsenter -t {} -m cat {path}", container.id()))
}

fn mem_total(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap_or("")
        .to_string()
}

#[test]
fn attach_gives_a_running_container_its_files() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        quota_us: Some(50_000),
        cpus: Some("0"),
    });
    let mut c = container(&group);
    let m = daemon.mountpoint.to_str().unwrap();
    let pid = c.id().to_string();

    assert_ne!(
        mem_total(&stdout(read_inside(&group, &c, "/proc/meminfo"))),
        "MemTotal:          65536 kB"
    );
    let out = stdout(vproc(&["attach", "--pid", &pid, "--mountpoint", m]));
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("mounted ") && !l.contains("/block/"))
            .count(),
        vproc::files::bind_targets().len(),
        "{out}"
    );
    assert_eq!(
        mem_total(&stdout(read_inside(&group, &c, "/proc/meminfo"))),
        "MemTotal:          65536 kB"
    );
    assert_eq!(
        stdout(read_inside(&group, &c, "/sys/devices/system/cpu/online")),
        "0\n"
    );
    assert_eq!(
        stdout(read_inside(&group, &c, "/proc/cpuinfo"))
            .matches("processor\t: ")
            .count(),
        1
    );
    // The host's own files are untouched.
    assert_ne!(
        mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap()),
        "MemTotal:          65536 kB"
    );

    let again = stdout(vproc(&["attach", "--pid", &pid, "--mountpoint", m]));
    assert_eq!(
        again
            .lines()
            .filter(|l| l.starts_with("already attached ") && !l.contains("/block/"))
            .count(),
        vproc::files::bind_targets().len(),
        "{again}"
    );
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn a_new_daemon_heals_an_attached_container_and_attach_is_then_a_no_op() {
    let mut daemon = Daemon::start(&[]);
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    let mut c = container(&group);
    let (mountpoint, pidfile) = (daemon.mountpoint.clone(), daemon.pidfile.clone());
    let m = mountpoint.to_str().unwrap().to_string();
    let pid = c.id().to_string();
    stdout(vproc(&["attach", "--pid", &pid, "--mountpoint", &m]));

    daemon.stop_with(libc::SIGKILL);
    let dead = read_inside(&group, &c, "/proc/meminfo");
    assert!(String::from_utf8_lossy(&dead.stderr).contains("Transport endpoint is not connected"));

    let _new = Daemon::start_at(&mountpoint, &pidfile, &[]);
    let started = std::time::Instant::now();
    while mem_total(&String::from_utf8_lossy(
        &read_inside(&group, &c, "/proc/meminfo").stdout,
    )) != "MemTotal:          65536 kB"
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "not healed within 1 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = stdout(vproc(&["attach", "--pid", &pid, "--mountpoint", &m]));
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("already attached ") && !l.contains("/block/"))
            .count(),
        vproc::files::bind_targets().len(),
        "{out}"
    );
    assert_eq!(c.try_wait().unwrap(), None, "the container kept running");
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn attach_without_a_daemon_says_so() {
    let dir = std::env::temp_dir().join(common::unique("vproc-test-empty"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = vproc(&[
        "attach",
        "--pid",
        &std::process::id().to_string(),
        "--mountpoint",
        dir.to_str().unwrap(),
    ]);
    std::fs::remove_dir(&dir).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no vprocd is serving") && stderr.contains("not a FUSE mount"),
        "{stderr}"
    );
}

/// Runs `command` with `input` on its stdin; its output.
fn fed(command: &mut Command, input: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Runs `vproc hook` with `state` on stdin.
fn hook(mountpoint: &str, log: &std::path::Path, state: &str) -> std::process::Output {
    fed(
        Command::new(env!("CARGO_BIN_EXE_vproc"))
            .args(["hook", "--mountpoint", mountpoint, "--log"])
            .arg(log),
        state,
    )
}

#[test]
fn hook_attaches_from_the_oci_state_and_never_fails_the_container() {
    let daemon = Daemon::start(&[]);
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    let mut c = container(&group);
    let bundle = tempfile::tempdir().unwrap();
    // A running container's root is `/` in its namespace.
    std::fs::write(
        bundle.path().join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"/"}}"#,
    )
    .unwrap();
    let log = bundle.path().join("hook.log");
    let state = |pid: u32, annotation: &str| {
        format!(
            r#"{{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":{pid},"bundle":"{}","annotations":{{"io.vproc.enable":"{annotation}"}}}}"#,
            bundle.path().display()
        )
    };

    let opted_out = hook(
        daemon.mountpoint.to_str().unwrap(),
        &log,
        &state(c.id(), "false"),
    );
    assert!(opted_out.status.success());
    assert_ne!(
        mem_total(&stdout(read_inside(&group, &c, "/proc/meminfo"))),
        "MemTotal:          65536 kB"
    );

    let no_daemon = hook("/nonexistent/vproc", &log, &state(c.id(), "true"));
    assert!(
        no_daemon.status.success(),
        "a hook failure must not fail the container"
    );
    assert!(
        String::from_utf8_lossy(&no_daemon.stderr)
            .contains("no vprocd is serving /nonexistent/vproc")
    );

    let garbage = hook(daemon.mountpoint.to_str().unwrap(), &log, "{not json");
    assert!(garbage.status.success());

    let attached = hook(
        daemon.mountpoint.to_str().unwrap(),
        &log,
        &state(c.id(), "true"),
    );
    assert!(attached.status.success());
    assert_eq!(
        mem_total(&stdout(read_inside(&group, &c, "/proc/meminfo"))),
        "MemTotal:          65536 kB"
    );

    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = logged.lines().collect();
    assert_eq!(lines.len(), 4, "{logged}");
    assert!(
        lines[0].contains("io.vproc.enable=false, left alone"),
        "{logged}"
    );
    assert!(
        lines[1].contains("error: container c1: no vprocd is serving"),
        "{logged}"
    );
    assert!(
        lines[2].contains("error: cannot parse the OCI state"),
        "{logged}"
    );
    assert!(lines[3].contains("mounted /proc/meminfo"), "{logged}");
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn check_passes_on_a_live_mount_and_fails_on_a_dead_one() {
    let mut daemon = Daemon::start(&[]);
    let m = daemon.mountpoint.to_str().unwrap().to_string();
    assert!(vproc(&["check", "--mountpoint", &m]).status.success());
    daemon.stop_with(libc::SIGKILL);
    let dead = vproc(&["check", "--mountpoint", &m]);
    assert!(!dead.status.success());
    assert!(String::from_utf8_lossy(&dead.stderr).contains("Transport endpoint is not connected"));
    let _ = nix::mount::umount2(
        daemon.mountpoint.as_path(),
        nix::mount::MntFlags::MNT_DETACH,
    );
}

/// `vproc-runc --vproc-hook` as runc runs it at createRuntime (the state on stdin, no environment);
/// what it logged.
fn runc_hook(mountpoint: &str, log: &std::path::Path, state: &str) -> String {
    let out = fed(
        Command::new(env!("CARGO_BIN_EXE_vproc-runc"))
            .arg("--vproc-hook")
            .arg(format!("--vproc-lxcfs={mountpoint}"))
            .arg("--log")
            .arg(log)
            .env_clear(),
        state,
    );
    assert!(
        out.status.success(),
        "the hook never fails a container: {out:?}"
    );
    std::fs::read_to_string(log).unwrap()
}

/// Whether this kernel mounts beneath a mount (MOVE_MOUNT_BENEATH, Linux 6.5).
fn beneath() -> bool {
    let release = nix::sys::utsname::uname().unwrap();
    let release = release.release().to_string_lossy();
    let mut numbers = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 5)
}

/// The mounts at `target` in `pid`'s mount namespace: (root, source) of each, bottom first.
fn mounts_at(pid: u32, target: &str) -> Vec<(String, String)> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    mountinfo
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(target))
        .map(|line| {
            let root = line.split(' ').nth(3).unwrap().to_string();
            let after = line.split_once(" - ").unwrap().1;
            (root, after.split(' ').nth(1).unwrap().to_string())
        })
        .collect()
}

/// A bind of the daemon's shared mount alone (the views mount stacked on it is not carried over):
/// what a daemon without views serves. Unmounted on drop.
struct SharedOnly(std::path::PathBuf);

impl SharedOnly {
    fn of(mountpoint: &std::path::Path) -> SharedOnly {
        let at = std::env::temp_dir().join(common::unique("vproc-test-shared-only"));
        std::fs::create_dir_all(&at).unwrap();
        nix::mount::mount(
            Some(mountpoint),
            &at,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        SharedOnly(at)
    }
}

impl Drop for SharedOnly {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn the_runc_wrappers_hook_puts_views_over_the_shared_binds_and_nothing_else() {
    let daemon = Daemon::start(&[]);
    let m = daemon.mountpoint.to_str().unwrap().to_string();
    let shared = format!("vprocd:{m}");
    let views = format!("vprocd:{m}/.by-pid");
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(
        bundle.path().join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"/"}}"#,
    )
    .unwrap();
    // What the wrapper says it bound: meminfo and stat (uptime too, though runc found it mounted).
    let state = |pid: u32| {
        format!(
            r#"{{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":{pid},"bundle":"{}",
                "annotations":{{"io.vproc.runc/mounts":"[\"/proc/meminfo\",\"/proc/stat\",\"/proc/uptime\"]"}}}}"#,
            bundle.path().display()
        )
    };
    // Containers whose meminfo, stat and cpuinfo runc bound from the shared mount (uptime: its own).
    let bound = || {
        let c = container(&group);
        for file in ["meminfo", "stat", "cpuinfo"] {
            let bind = group.run_in_host_pidns(&format!(
                "exec nsenter -t {} -m mount --bind {m}/proc/{file} /proc/{file}",
                c.id()
            ));
            assert!(bind.status.success(), "{bind:?}");
        }
        c
    };

    let c = bound();
    let log = bundle.path().join("one.log");
    let logged = runc_hook(&m, &log, &state(c.id()));
    assert!(
        logged.contains(&format!(
            "level=info msg=\"vproc-runc hook: container c1 (pid {}): 2 files from its views\"",
            c.id()
        )),
        "{logged}"
    );
    for file in ["/proc/meminfo", "/proc/stat"] {
        let view = (format!("/{}{file}", c.id()), views.clone());
        let mounts = mounts_at(c.id(), file);
        if beneath() {
            // The view went beneath the shared bind, which is gone: one mount, the container's file.
            assert_eq!(mounts, [view], "{file}");
        } else {
            // Mounted over the shared bind, which stays below it.
            assert_eq!(mounts, [(file.to_string(), shared.clone()), view], "{file}");
        }
    }
    // What the wrapper did not bind stays as it is: a shared bind of someone else's, the kernel's file.
    assert_eq!(
        mounts_at(c.id(), "/proc/cpuinfo"),
        [("/proc/cpuinfo".to_string(), shared.clone())]
    );
    assert!(mounts_at(c.id(), "/proc/uptime").is_empty());
    // Run again (a second hook of the same kind): nothing changes.
    let before = mounts_at(c.id(), "/proc/meminfo");
    let logged = runc_hook(&m, &log, &state(c.id()));
    assert!(logged.ends_with(" 0 files from its views\"\n"), "{logged}");
    assert_eq!(mounts_at(c.id(), "/proc/meminfo"), before);

    // A daemon without views (its mount bound alone): the views are refused, and every shared bind
    // stays as runc made it, with a warning naming each.
    let d = bound();
    let old = SharedOnly::of(&daemon.mountpoint);
    let log = bundle.path().join("refused.log");
    let logged = runc_hook(old.0.to_str().unwrap(), &log, &state(d.id()));
    assert!(
        logged.contains("level=warning")
            && logged
                .contains(": 0 files from its views; the shared file stays at /proc/meminfo ("),
        "{logged}"
    );
    for file in ["meminfo", "stat"] {
        assert!(
            logged.contains(&format!(
                "/proc/{file} ({}/.by-pid/{}/proc/{file}: No such file or directory",
                old.0.display(),
                d.id()
            )),
            "{logged}"
        );
    }
    for file in ["/proc/meminfo", "/proc/stat"] {
        assert_eq!(
            mounts_at(d.id(), file),
            [(file.to_string(), shared.clone())],
            "{file}"
        );
    }

    // A state that cannot be used: a warning, exit 0.
    let log = bundle.path().join("garbage.log");
    let logged = runc_hook(&m, &log, "{not json");
    assert!(
        logged.contains("level=warning msg=\"vproc-runc hook: cannot parse the OCI state"),
        "{logged}"
    );
    for mut child in [c, d] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
