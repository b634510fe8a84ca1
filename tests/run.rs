//! `vproc run` on the real kernel: a busybox root filesystem built from Debian's busybox-static, image
//! archives built from it here (an OCI layout, as a directory and as a tar, and a `docker save` tar, with
//! two layers and whiteouts), and a vprocd on a private mountpoint. Needs root and cgroup v1 or v2.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Daemon, unique};
use sha2::{Digest, Sha256};

/// A busybox root filesystem shared by the tests of this process.
fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        remove_stale_roots();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("vproc-run-rootfs"));
        common::busybox_rootfs(&dir);
        dir
    })
}

/// Roots left in the target directory by earlier test processes (statics are never dropped).
fn remove_stale_roots() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // unique() names end in -<pid>-<counter>.
        let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if name.starts_with("vproc-run-")
            && let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `vproc run --no-lxcfs --rootfs <the busybox root> ARGS`, stdin closed, not started yet.
fn busybox_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vproc"));
    command
        .args(["run", "--no-lxcfs", "--rootfs"])
        .arg(rootfs())
        .args(args)
        .stdin(Stdio::null());
    command
}

/// [`busybox_command`], run to its end.
fn run_busybox(args: &[&str]) -> Output {
    busybox_command(args).output().unwrap()
}

/// `vproc run ARGS`, stdin closed.
fn vproc_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vproc"))
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The exit code, with the output shown when the test fails on it.
fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("vproc run died: {out:?}"))
}

/// The container's cgroup directories on the host, v1 or v2.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    ["memory", "cpu", "cpuset", "pids", ""]
        .iter()
        .map(|h| Path::new("/sys/fs/cgroup").join(h).join("vproc").join(name))
        .collect()
}

#[test]
fn the_container_sees_its_limits_through_vprocd() {
    let daemon = Daemon::start(&[]);
    let name = unique("vproc-run");
    let out = vproc_run(&[
        "--lxcfs",
        daemon.mountpoint.to_str().unwrap(),
        "--rootfs",
        rootfs().to_str().unwrap(),
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "--cpuset-cpus",
        "0",
        "--hostname",
        "vproc-box",
        "--name",
        &name,
        "--",
        "sh",
        "-c",
        "grep MemTotal /proc/meminfo; cat /sys/devices/system/cpu/online; \
         grep -c ^processor /proc/cpuinfo; cat /proc/uptime; hostname; nproc; \
         cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
         ps -o pid,args; grep ' /proc/meminfo ' /proc/self/mountinfo | cut -d' ' -f4,9; true",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["MemTotal:", "65536", "kB"]
    );
    // Bound from its own view on the views mount (the page cache): `/PID/proc/meminfo` there.
    let bound = stdout.lines().last().unwrap_or_default();
    let (root, source) = bound.split_once(' ').unwrap_or_default();
    assert!(
        root.ends_with("/proc/meminfo")
            && root
                .trim_start_matches('/')
                .starts_with(|c: char| c.is_ascii_digit()),
        "{stdout}"
    );
    assert!(source.ends_with("/.by-pid"), "{stdout}");
    assert_eq!(lines[1], "0");
    assert_eq!(lines[2], "1");
    assert!(lines[3].starts_with("0."), "uptime {:?}", lines[3]);
    assert_eq!(lines[4], "vproc-box");
    assert_eq!(lines[5], "1");
    // Its own cgroup at the root of /sys/fs/cgroup, like Docker's.
    assert_eq!(lines[6], "67108864");
    // The command is pid 1, as with docker run (ps itself is a child of sh).
    assert!(
        lines[8].trim_start().starts_with("1 sh -c"),
        "the command is pid 1: {stdout}"
    );
    for dir in cgroup_dirs(&name) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn the_container_sees_its_own_load_and_disk_io() {
    let daemon = Daemon::start(&[]);
    let volume = std::env::temp_dir().join(unique("vproc-run-io"));
    std::fs::create_dir(&volume).unwrap();
    // The disk under the volume, as /sys/block names it (a partition's disk).
    let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&volume).unwrap());
    let sysfs = std::fs::canonicalize(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ))
    .unwrap();
    let disk = if sysfs.join("partition").exists() {
        sysfs.parent().unwrap().to_path_buf()
    } else {
        sysfs
    };
    let disk_name = disk.file_name().unwrap().to_str().unwrap().to_string();
    let out = vproc_run(&[
        "--lxcfs",
        daemon.mountpoint.to_str().unwrap(),
        "--rootfs",
        rootfs().to_str().unwrap(),
        "--cpus",
        "1",
        "-v",
        &format!("{}:/v", volume.display()),
        "--",
        "sh",
        "-c",
        &format!(
            "cut -d' ' -f1-3 /proc/loadavg; \
             dd if=/dev/zero of=/v/f bs=4096 count=32 oflag=direct 2>/dev/null; \
             grep ' {disk_name} ' /proc/diskstats; cat /sys/block/{disk_name}/stat"
        ),
    ]);
    let _ = std::fs::remove_dir_all(&volume);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0], "0.00 0.00 0.00",
        "an idle container's load: {stdout}"
    );
    // At least its 32 direct writes (a filesystem adds its own), counted from the container's start:
    // far fewer than the host's disk has done.
    let fields: Vec<u64> = lines[1]
        .split_whitespace()
        .skip(3)
        .map(|f| f.parse().unwrap())
        .collect();
    assert!((32..1000).contains(&fields[4]), "writes: {stdout}");
    let sysfs: Vec<u64> = lines[2]
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(sysfs[4], fields[4], "iostat's file says the same: {stdout}");
}

#[test]
fn limits_are_written_before_the_payload_runs_and_removed_after_sigterm() {
    let name = unique("vproc-run");
    // --init: vproc-init is pid 1 and passes SIGTERM to the command, which dies of it.
    let (mut child, line) = spawn_until_line(&[
        "--init",
        "--memory",
        "64m",
        "--cpus",
        "1.5",
        "--pids-limit",
        "50",
        "--name",
        &name,
        "--",
        "sh",
        "-c",
        "echo started; exec sleep 100",
    ]);
    assert_eq!(line, "started\n");
    let v1 = Path::new("/sys/fs/cgroup/memory/vproc").join(&name);
    if v1.exists() {
        let read = |path: &str| std::fs::read_to_string(path.replace("NAME", &name)).unwrap();
        assert_eq!(
            read("/sys/fs/cgroup/memory/vproc/NAME/memory.limit_in_bytes"),
            "67108864\n"
        );
        assert_eq!(
            read("/sys/fs/cgroup/cpu/vproc/NAME/cpu.cfs_quota_us"),
            "150000\n"
        );
        assert_eq!(
            read("/sys/fs/cgroup/cpu/vproc/NAME/cpu.cfs_period_us"),
            "100000\n"
        );
        assert_eq!(read("/sys/fs/cgroup/pids/vproc/NAME/pids.max"), "50\n");
        let procs = read("/sys/fs/cgroup/memory/vproc/NAME/cgroup.procs");
        assert_eq!(procs.lines().count(), 2, "init and payload: {procs}");
    } else {
        let dir = Path::new("/sys/fs/cgroup/vproc").join(&name);
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            "67108864\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "150000 100000\n"
        );
    }
    // SAFETY: kill of the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "SIGTERM reaches the payload");
    for dir in cgroup_dirs(&name) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn sigterm_during_setup_still_ends_the_container() {
    // The delays sweep the setup window (about 1-10 ms after spawn in a debug build), with the command
    // as pid 1 and under --init in turn.
    for delay_ms in 0..16 {
        let name = unique("vproc-run-term");
        let mut args = vec!["--name", &name, "--stop-timeout", "1"];
        let with_init = delay_ms % 2 == 1;
        if with_init {
            args.push("--init");
        }
        args.extend(["sleep", "30"]);
        let mut child = busybox_command(&args).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(delay_ms * 700));
        // SAFETY: kill of the child we spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "a SIGTERM sent during setup was lost"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // 143 once vproc run handles signals (before the command starts it stops the container at
        // once); before that the default action ends it. A signal that comes once `sleep` runs as pid 1
        // is ignored by it, as with docker run, and the stop timeout kills it: 137.
        let by_signal = std::os::unix::process::ExitStatusExt::signal(&status);
        let late = !with_init && status.code() == Some(137);
        assert!(
            status.code() == Some(143) || by_signal == Some(libc::SIGTERM) || late,
            "{status:?} (--init: {with_init})"
        );
        // Nothing left behind, wherever the signal landed.
        for dir in cgroup_dirs(&name) {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        let state = Path::new("/var/lib/vproc/containers").join(&name);
        assert!(!state.exists(), "{} left behind", state.display());
    }
}

/// Spawns `vproc run` with `args` and stdout piped; waits for its first line.
fn spawn_until_line(args: &[&str]) -> (std::process::Child, String) {
    let mut child = busybox_command(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    (child, line)
}

/// Waits for `child` at most `limit`; its exit code and how long it took.
fn wait_at_most(child: &mut std::process::Child, limit: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vproc run did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_command_is_pid_1_unless_init_is_asked_for() {
    let script = "echo $$; cat /proc/1/comm; readlink /proc/1/exe >/dev/null 2>&1 && echo exe-readable \
                  || echo exe-hidden; grep SigIgn /proc/self/status";
    // SIGPIPE as a program expects it, not ignored as vproc's Rust runtime (and this test) has it.
    let pipe_ignored = |status: &str| {
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .unwrap();
        mask & (1 << (libc::SIGPIPE - 1)) != 0
    };
    assert!(pipe_ignored(
        &std::fs::read_to_string("/proc/self/status").unwrap()
    ));
    let out = run_busybox(&["sh", "-c", script]);
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("1\nsh\nexe-readable\n"), "{out:?}");
    assert!(!pipe_ignored(&stdout), "{stdout}");
    // --init: vproc-init is pid 1, not dumpable, so the command cannot open the host's vproc binary
    // through /proc/1/exe.
    let out = run_busybox(&["--init", "sh", "-c", script]);
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("2\nvproc-init\nexe-hidden\n"), "{out:?}");
    assert!(!pipe_ignored(&stdout), "{stdout}");
}

#[test]
fn sigterm_reaches_a_pid_1_that_handles_it_and_the_stop_timeout_ends_one_that_does_not() {
    let (mut child, line) = spawn_until_line(&[
        "sh",
        "-c",
        "trap 'exit 7' TERM; echo started; while :; do sleep 0.1; done",
    ]);
    assert_eq!(line, "started\n");
    // SAFETY: kill of the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, _) = wait_at_most(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(7), "the command's handler ran");

    let (mut child, line) = spawn_until_line(&[
        "--stop-timeout",
        "1",
        "sh",
        "-c",
        "echo started; exec sleep 100",
    ]);
    assert_eq!(line, "started\n");
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, took) = wait_at_most(&mut child, Duration::from_secs(20));
    assert_eq!(code, Some(137), "killed after the stop timeout");
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

#[test]
fn a_command_that_reads_nothing_cannot_stall_the_relay_or_the_stop_timeout() {
    // With -i -t the input goes into the pty; `sleep` reads none of it. vproc run must neither block
    // writing to the full pty nor stop watching for the SIGTERM and the stop timeout.
    let mut child = busybox_command(&[
        "-i",
        "-t",
        "--stop-timeout",
        "1",
        "sh",
        "-c",
        // Raw: the pty keeps all input (canonical mode drops what overflows a line) until it is full.
        "stty raw -echo; echo started; exec sleep 100",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut input = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'y'; 4096];
        while input.write_all(&chunk).is_ok() {}
    });
    // The pty echoes the input: read all of it, passing on the first line.
    let (first_line, lines) = std::sync::mpsc::channel();
    let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut output, &mut line).unwrap();
        let _ = first_line.send(line);
        std::io::copy(&mut output, &mut std::io::sink()).unwrap();
    });
    let line = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(line.contains("started"), "{line:?}");
    // Let the pty's input fill up.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill of the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, _) = wait_at_most(&mut child, Duration::from_secs(20));
    assert_eq!(code, Some(137), "killed after the stop timeout");
    // vproc run is gone, so the feeder's pipe breaks and the reader's ends.
    feeder.join().unwrap();
    reader.join().unwrap();
}

#[test]
fn stdin_is_null_unless_interactive() {
    let mut child = busybox_command(&["-i", "sh", "-c", "read line; echo got:$line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "got:hello\n");
    // Without -i the command reads /dev/null, though vproc run's stdin stays open.
    let mut child = busybox_command(&["sh", "-c", "cat; readlink /proc/self/fd/0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _keep_open = child.stdin.take();
    let (code, _) = wait_at_most(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(stdout, "/dev/null\n");
}

#[test]
fn a_terminal_of_the_container_s_own_with_t() {
    let out = run_busybox(&[
        "-t",
        "sh",
        "-c",
        "tty; test -t 0 && test -t 1 && test -t 2 && echo all-terminals; \
         (: </dev/tty) 2>/dev/null && echo controlling; exit 3",
    ]);
    assert_eq!(code(&out), 3, "{out:?}");
    // The pty turns \n into \r\n, as docker run -t does.
    assert_eq!(
        text(&out.stdout),
        "/dev/pts/0\r\nall-terminals\r\ncontrolling\r\n",
        "{out:?}"
    );
}

/// A pty pair for the test to play the user's terminal: (master, slave).
fn open_pty(rows: u16, cols: u16) -> (std::fs::File, std::fs::File) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty(3) writes two fds; the struct outlives the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    use std::os::fd::FromRawFd;
    // SAFETY: fresh fds from openpty, owned here.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

/// Reads `master` until `needle` shows up (or panics after `limit`); all that was read.
fn read_until(master: &mut std::fs::File, needle: &str, limit: Duration, seen: &mut String) {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + limit;
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {needle:?} in {seen:?}");
        let mut poll = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one fd we own.
        if unsafe { libc::poll(&mut poll, 1, left.as_millis() as i32) } <= 0 {
            continue;
        }
        let mut buffer = [0u8; 4096];
        match std::io::Read::read(master, &mut buffer) {
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
            _ => panic!("the terminal closed before {needle:?}: {seen:?}"),
        }
    }
}

/// `vproc run ARGS` as the leader of a session whose terminal is `slave` (as from a user's shell).
fn spawn_on_terminal(args: &[&str], slave: &std::fs::File) -> std::process::Child {
    use std::os::fd::AsRawFd;
    let mut command = busybox_command(args);
    let slave_fd = slave.as_raw_fd();
    command
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and TIOCSCTTY in the child before exec: vproc run leads a session whose
    // terminal is the test's pty, so SIGWINCH reaches it as it would from a real terminal.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            libc::ioctl(slave_fd, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    command.spawn().unwrap()
}

#[test]
fn without_t_the_user_s_terminal_is_not_the_container_s() {
    // Were it the container's controlling terminal, its root could push keystrokes into the user's
    // shell (TIOCSTI) or read them from /dev/tty.
    // Nor are its stdin (-i), stdout and stderr that terminal: it gets pipes, relayed, so it can
    // neither read what is typed nor change the terminal's settings.
    let (mut master, slave) = open_pty(24, 80);
    let mut child = spawn_on_terminal(
        &[
            "-i",
            "sh",
            "-c",
            "(: </dev/tty) 2>/dev/null && echo has-tty || echo no-tty; \
             for fd in 0 1 2; do readlink /proc/self/fd/$fd | cut -c1-5; done; \
             stty 2>&1 | head -1; read line; echo got:$line; exit 4",
        ],
        &slave,
    );
    drop(slave);
    let mut seen = String::new();
    read_until(&mut master, "stty", Duration::from_secs(10), &mut seen);
    master.write_all(b"typed\n").unwrap();
    read_until(&mut master, "got:typed", Duration::from_secs(10), &mut seen);
    let lines: Vec<&str> = seen.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(
        &lines[..4],
        ["no-tty", "pipe:", "pipe:", "pipe:"],
        "{seen:?}"
    );
    assert!(
        lines[4].contains("stty"),
        "stty finds no terminal: {seen:?}"
    );
    let (code, _) = wait_at_most(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(4));
}

#[test]
fn interactive_terminal_gets_input_and_follows_the_window_size() {
    let (mut master, slave) = open_pty(40, 100);
    let mut child = spawn_on_terminal(
        &[
            "-i",
            "-t",
            "sh",
            "-c",
            "stty size; read line; echo got:$line; stty size; exit 5",
        ],
        &slave,
    );
    drop(slave);
    let mut seen = String::new();
    read_until(&mut master, "40 100", Duration::from_secs(10), &mut seen);
    let size = libc::winsize {
        ws_row: 50,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on our own pty; the kernel sends SIGWINCH to vproc run.
    unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&master),
            libc::TIOCSWINSZ,
            &size,
        )
    };
    // Let vproc run take the SIGWINCH before the line that makes the command look again.
    std::thread::sleep(Duration::from_millis(300));
    master.write_all(b"typed\r").unwrap();
    read_until(&mut master, "50 120", Duration::from_secs(10), &mut seen);
    let (code, _) = wait_at_most(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(5));
    assert!(seen.contains("got:typed"), "{seen:?}");
}

#[test]
fn exit_codes_propagate() {
    let run = |script: &str| run_busybox(&["sh", "-c", script]);
    assert_eq!(code(&run("exit 0")), 0);
    assert_eq!(code(&run("exit 3")), 3);
    // The command is pid 1: a signal it has no handler for does not end it (the kernel's rule for a
    // pid namespace's init, as with docker run). Under --init it is pid 2 and dies of it.
    let ignored = run("kill -TERM $$; echo still-here");
    assert_eq!(
        (code(&ignored), text(&ignored.stdout)),
        (0, "still-here\n".into())
    );
    let under_init = run_busybox(&["--init", "sh", "-c", "kill -TERM $$; echo still-here"]);
    assert_eq!(code(&under_init), 143, "{under_init:?}");
    let missing = run_busybox(&["no-such-command"]);
    assert_eq!(code(&missing), 127);
    assert!(
        text(&missing.stderr).contains("no-such-command: command not found"),
        "{missing:?}"
    );
    let not_executable = run_busybox(&["/etc/passwd"]);
    assert_eq!(code(&not_executable), 126, "{not_executable:?}");
}

#[test]
fn bad_values_name_the_option_and_the_value() {
    for (option, value) in [
        ("--memory", "lots"),
        ("--cpus", "half"),
        ("--cpuset-cpus", "first"),
        ("--pids-limit", "0"),
        ("-u", "a:b:c"),
        ("-v", "relative:/x"),
        ("--name", "a/b"),
    ] {
        let out = run_busybox(&[option, value, "true"]);
        assert_eq!(code(&out), 125, "{option} {value}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(value), "{option} {value}: {stderr}");
        let long = option.trim_start_matches('-');
        assert!(
            stderr.contains(long) || option == "-u" || option == "-v",
            "{stderr}"
        );
    }
    let out = vproc_run(&["--no-lxcfs", "--rootfs", "/no/such/vproc-root", "true"]);
    assert_eq!(code(&out), 125);
    assert!(text(&out.stderr).contains("/no/such/vproc-root"), "{out:?}");
    let out = run_busybox(&["--cpuset-cpus", "1000", "true"]);
    assert_eq!(code(&out), 125);
    assert!(text(&out.stderr).contains("--cpuset-cpus 1000"), "{out:?}");
}

#[test]
fn without_a_daemon_it_says_so_unless_no_lxcfs() {
    let empty = tempfile::tempdir().unwrap();
    let root = rootfs().to_str().unwrap();
    let out = vproc_run(&[
        "--lxcfs",
        empty.path().to_str().unwrap(),
        "--rootfs",
        root,
        "true",
    ]);
    assert_eq!(code(&out), 125);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no vprocd is mounted at"), "{stderr}");
    assert!(stderr.contains("--no-lxcfs"), "{stderr}");
}

#[test]
fn an_oom_killed_container_is_reported() {
    let out = run_busybox(&[
        "--memory",
        "64m",
        "sh",
        "-c",
        "x=$(head -c 209715200 /dev/zero | tr '\\0' a); echo survived",
    ]);
    assert_eq!(code(&out), 137, "{out:?}");
    assert!(!text(&out.stdout).contains("survived"));
    assert!(text(&out.stderr).contains("OOM killer"), "{out:?}");
}

#[test]
fn symlinks_in_the_root_cannot_redirect_mounts() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("vproc-run-links"));
    common::busybox_rootfs(&root);

    // /proc -> /: mounting proc through it would cover the container's root; refused.
    std::os::unix::fs::symlink("/", root.join("proc")).unwrap();
    let out = vproc_run(&["--no-lxcfs", "--rootfs", root.to_str().unwrap(), "true"]);
    assert_eq!(code(&out), 125, "{out:?}");
    assert!(text(&out.stderr).contains("symlink"), "{out:?}");
    std::fs::remove_file(root.join("proc")).unwrap();

    // /etc -> a host path: a volume on /etc/target lands inside the root, the host path stays empty.
    let host_dir = std::env::temp_dir().join(unique("vproc-run-host"));
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::remove_dir_all(root.join("etc")).unwrap();
    std::os::unix::fs::symlink(&host_dir, root.join("etc")).unwrap();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("marker"), "from the volume").unwrap();
    let volume = format!("{}:/etc/target:ro", source.path().display());
    let out = vproc_run(&[
        "--no-lxcfs",
        "--rootfs",
        root.to_str().unwrap(),
        "-v",
        &volume,
        "cat",
        "/etc/target/marker",
    ]);
    assert_eq!(code(&out), 0, "{out:?}");
    assert_eq!(text(&out.stdout), "from the volume");
    assert_eq!(
        std::fs::read_dir(&host_dir).unwrap().count(),
        0,
        "host path touched"
    );
    assert!(
        root.join(host_dir.strip_prefix("/").unwrap())
            .join("target")
            .is_dir()
    );
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for path in [&host_dir, &root] {
        let path = path.to_str().unwrap();
        assert!(
            !mounts_after.contains(path),
            "a mount leaked to the host at {path}"
        );
    }
    std::fs::remove_dir(&host_dir).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_payload_is_confined() {
    let status = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
                  unshare -U -r true 2>/dev/null || echo no-user-namespaces; ls /proc/self/fd; id -u; \
                  cat /proc/kcore | wc -c; echo x > /proc/sys/kernel/hostname || echo ro-proc-sys; \
                  ip -o link | wc -l";
    // An fd the launcher inherits (say a leaked directory of the host) must not reach the payload.
    let leaked = std::fs::File::open("/").unwrap();
    let leaked_fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    let mut command = busybox_command(&["sh", "-c", status]);
    // SAFETY: dup2 in the child before exec; async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            libc::dup2(leaked_fd, 9);
            Ok(())
        });
    }
    let out = command.output().unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // Docker's 14 default capabilities (this machine's bounding set has them all).
    assert_eq!(lines[0], "CapEff:\t00000000a80425fb", "{stdout}");
    assert_eq!(lines[1], "CapBnd:\t00000000a80425fb", "{stdout}");
    assert_eq!(lines[2], "NoNewPrivs:\t1", "{stdout}");
    // Docker's default profile refuses new user namespaces (and more) to a container.
    assert_eq!(lines[3], "Seccomp:\t2", "{stdout}");
    assert_eq!(lines[4], "no-user-namespaces", "{stdout}");
    // ls's own directory fd is 3; nothing else above stderr.
    assert_eq!(&lines[5..9], ["0", "1", "2", "3"], "{stdout}");
    assert_eq!(lines[9], "0", "uid");
    assert_eq!(lines[10], "0", "/proc/kcore is masked");
    assert_eq!(lines[11], "ro-proc-sys");
    assert_eq!(lines[12], "1", "only lo with --net none");

    let out = run_busybox(&[
        "-u",
        "1000:1001",
        "sh",
        "-c",
        "id -u; id -g; grep CapEff /proc/self/status",
    ]);
    assert_eq!(
        text(&out.stdout),
        "1000\n1001\nCapEff:\t0000000000000000\n",
        "{out:?}"
    );
    // Names come from the container's /etc/passwd, with its home.
    let out = run_busybox(&["-u", "nobody", "sh", "-c", "id -u; id -g; echo $HOME"]);
    assert_eq!(text(&out.stdout), "65534\n65534\n/\n", "{out:?}");
    let out = run_busybox(&["-u", "nosuchuser", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("-u nosuchuser: no user"),
        "{out:?}"
    );

    let out = run_busybox(&[
        "--read-only",
        "-w",
        "/tmp",
        "sh",
        "-c",
        "touch /x 2>/dev/null || echo ro-root; pwd; touch /dev/shm/y && echo shm-ok",
    ]);
    assert_eq!(text(&out.stdout), "ro-root\n/tmp\nshm-ok\n", "{out:?}");
}

#[test]
fn environment_workdir_and_host_network() {
    let out = run_busybox(&[
        "-e",
        "GREETING=hello there",
        "-w",
        "/work/deep",
        "--net",
        "host",
        "sh",
        "-c",
        "echo $GREETING; pwd; echo $HOSTNAME; ip -o link | wc -l",
    ]);
    assert_eq!(code(&out), 0, "{out:?}");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "hello there");
    assert_eq!(lines[1], "/work/deep");
    assert_eq!(
        lines[2].len(),
        12,
        "the hostname defaults to the container id"
    );
    let host_links = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(lines[3], host_links.to_string(), "the host's interfaces");
    // Docker's /etc files: the hostname resolves inside (the JVM's getLocalHost needs it).
    let out = run_busybox(&[
        "--hostname",
        "web1",
        "sh",
        "-c",
        "cat /etc/hostname; grep -c web1 /etc/hosts; ping -c1 -W1 web1 >/dev/null && echo resolves",
    ]);
    assert_eq!(text(&out.stdout), "web1\n1\nresolves\n", "{out:?}");
}

#[test]
fn dev_sys_lo_and_read_only_volumes() {
    let source = tempfile::tempdir().unwrap();
    let volume = format!("{}:/data:ro", source.path().display());
    let out = run_busybox(&[
        "-v",
        &volume,
        "sh",
        "-c",
        "ls /dev | tr '\\n' ' '; echo; cat /sys/class/net/lo/flags; \
         touch /sys/x 2>/dev/null || echo ro-sys; touch /data/x 2>/dev/null || echo ro-volume; \
         head -c 4 /dev/urandom | wc -c; test -c /dev/pts/ptmx && echo devpts",
    ]);
    assert_eq!(code(&out), 0, "{out:?}");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let dev: Vec<&str> = lines[0].split_whitespace().collect();
    for name in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
    ] {
        assert!(dev.contains(&name), "/dev lacks {name}: {dev:?}");
    }
    // IFF_UP | IFF_LOOPBACK: lo is up in the new network namespace.
    assert_eq!(lines[1], "0x9");
    assert_eq!(
        &lines[2..6],
        ["ro-sys", "ro-volume", "4", "devpts"],
        "{stdout}"
    );
    assert_eq!(std::fs::read_dir(source.path()).unwrap().count(), 0);
}

/// A directory holding `probe`, a static binary for the busybox root: `probe syscall NR [ARG0]` makes
/// system call NR and prints `ok` or the errno's name; `probe int80 NR` makes i386 call NR through
/// `int 0x80` and prints what eax holds after it.
fn probe_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("vproc-run-probe"));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("probe.c");
        std::fs::write(
            &source,
            r#"#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long nr = strtol(argv[2], 0, 0);
    if (strcmp(argv[1], "int80") == 0) {
        long eax;
        __asm__ volatile("int $0x80" : "=a"(eax) : "a"(nr) : "memory");
        printf("%ld\n", eax);
        return 0;
    }
    unsigned long arg0 = argc > 3 ? strtoul(argv[3], 0, 0) : 0;
    long r = syscall(nr, arg0, 0, 0, 0, 0, 0);
    if (r < 0) printf("%s\n", strerrorname_np(errno)); else printf("ok\n");
    return 0;
}
"#,
        )
        .unwrap();
        let out = Command::new("cc")
            .args(["-static", "-O1", "-o"])
            .arg(dir.join("probe"))
            .arg(&source)
            .output()
            .unwrap();
        assert!(out.status.success(), "cc: {out:?}");
        dir
    })
}

#[test]
fn seccomp_is_docker_s_allowlist_unless_told_otherwise() {
    let volume = format!("{}:/probe:ro", probe_dir().display());
    let script = "/probe/probe syscall 323 1; /probe/probe syscall 39; \
                  /probe/probe syscall 135 0xffffffff; /probe/probe syscall 135 0x0040000; \
                  /probe/probe syscall 1073741863; /probe/probe int80 20; \
                  /probe/probe syscall 1000; /probe/probe syscall 250 0; \
                  mkdir /tmp/seccomp-probe 2>&1 && rmdir /tmp/seccomp-probe; true";
    let run = |extra: &[&str]| {
        let mut args = vec!["-v", &volume];
        args.extend_from_slice(extra);
        args.extend(["sh", "-c", script]);
        let out = run_busybox(&args);
        assert_eq!(code(&out), 0, "{out:?}");
        text(&out.stdout)
    };
    let lines = |text: &str| text.lines().map(String::from).collect::<Vec<_>>();
    // Default: userfaultfd (user-mode only, which root may make) is not on Docker's list: EPERM;
    // getpid works; personality only with the values Docker allows; x32 and int 0x80 refused (-1 is
    // -EPERM); a number above every call the profile names (a later kernel's) ENOSYS, so libc falls
    // back, as runc does; keyctl refused (no user namespace: the host root's keyrings).
    assert_eq!(
        lines(&run(&[])),
        [
            "EPERM", "ok", "ok", "EPERM", "EPERM", "-1", "ENOSYS", "EPERM"
        ]
    );
    // Unconfined: the kernel answers.
    let unconfined = lines(&run(&["--security-opt", "seccomp=unconfined"]));
    assert_eq!(&unconfined[..4], ["ok", "ok", "ok", "ok"], "{unconfined:?}");
    assert_ne!(unconfined[5], "-1", "int 0x80 getpid returns the pid");

    // A profile of the user's, in Docker's format: everything but mkdir, which gets EACCES.
    let work = tempfile::tempdir().unwrap();
    let profile = work.path().join("profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .unwrap();
    let custom = run(&["--security-opt", &format!("seccomp={}", profile.display())]);
    assert!(
        custom.ends_with("mkdir: can't create directory '/tmp/seccomp-probe': Permission denied\n"),
        "{custom}"
    );
    // A bad profile is refused before anything is created, naming the file and the field.
    std::fs::write(&profile, r#"{"defaultAction": "SCMP_ACT_SOMETIMES"}"#).unwrap();
    let out = run_busybox(&[
        "--security-opt",
        &format!("seccomp={}", profile.display()),
        "true",
    ]);
    assert_eq!(code(&out), 125, "{out:?}");
    assert!(
        text(&out.stderr).contains(&format!("seccomp={}: defaultAction", profile.display())),
        "{out:?}"
    );
}

#[test]
fn devices_are_docker_s_allowlist_and_no_bind_carries_device_nodes() {
    // A node the container's cgroup allows (null), made by the host in a volume and in the root: only
    // nodev can stop them.
    let volume = tempfile::tempdir().unwrap();
    common::mknod(&volume.path().join("null"), libc::S_IFCHR | 0o666, 1, 3);
    let in_root = rootfs().join(unique("tmp/null"));
    common::mknod(&in_root, libc::S_IFCHR | 0o666, 1, 3);
    let in_root_name = in_root.file_name().unwrap().to_string_lossy().into_owned();
    let out = run_busybox(&[
        "-v",
        &format!("{}:/vol", volume.path().display()),
        "sh",
        "-c",
        &format!(
            "cat /sys/fs/cgroup/devices/devices.list; echo --; \
             mknod /tmp/disk b 254 0 2>&1; mknod /dev/mem c 1 1 2>&1; mknod /tmp/console c 5 1 2>&1; \
             mknod /dev/null2 c 1 3 && echo made-null; \
             head -c 0 /vol/null 2>/dev/null && echo volume-opened || echo volume-nodev; \
             head -c 0 /tmp/{in_root_name} 2>/dev/null && echo root-opened || echo root-nodev; \
             head -c 3 /dev/zero | wc -c"
        ),
    ]);
    let _ = std::fs::remove_file(&in_root);
    assert_eq!(code(&out), 0, "{out:?}");
    let stdout = text(&out.stdout);
    let (list, rest) = stdout.split_once("--\n").unwrap();
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        [
            "c 1:3 rwm",
            "c 1:8 rwm",
            "c 1:7 rwm",
            "c 5:0 rwm",
            "c 1:5 rwm",
            "c 1:9 rwm",
            "c 5:1 rw",
            "c 136:* rw",
            "c 5:2 rw",
            "c 10:200 rw",
        ],
        "{stdout}"
    );
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(
        lines,
        [
            "mknod: /tmp/disk: Operation not permitted",
            "mknod: /dev/mem: Operation not permitted",
            "mknod: /tmp/console: Operation not permitted",
            "made-null",
            "volume-nodev",
            "root-nodev",
            "3"
        ],
        "{stdout}"
    );
    assert!(!rootfs().join("tmp/disk").exists());
}

// ---- image archives ----

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A tar of `entries` (path, Some(content) for a file, None for a directory).
fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        let data = content.unwrap_or("").as_bytes();
        header.set_entry_type(if content.is_some() {
            tar::EntryType::Regular
        } else {
            tar::EntryType::Directory
        });
        header.set_size(data.len() as u64);
        header.set_mode(if content.is_some() { 0o644 } else { 0o755 });
        builder.append_data(&mut header, path, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The two layers: busybox plus files to delete, then a layer that adds, deletes and makes /opt opaque.
fn layers() -> &'static (Vec<u8>, Vec<u8>) {
    static LAYERS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    LAYERS.get_or_init(build_layers)
}

fn build_layers() -> (Vec<u8>, Vec<u8>) {
    // A root of its own: containers run on rootfs() add directories to it while this is built.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("vproc-run-image-root"));
    common::busybox_rootfs(&root);
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", &root).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    let mut extra = tar::Header::new_gnu();
    extra.set_uid(0);
    extra.set_gid(0);
    extra.set_mtime(0);
    for (path, data) in [("etc/removed", "old"), ("opt/old/file", "old")] {
        extra.set_entry_type(tar::EntryType::Regular);
        extra.set_size(data.len() as u64);
        extra.set_mode(0o644);
        builder
            .append_data(&mut extra, path, data.as_bytes())
            .unwrap();
    }
    let lower = builder.into_inner().unwrap();
    let upper = tar_of(&[
        ("etc/hello", Some("from layer 2\n")),
        ("etc/.wh.removed", Some("")),
        ("opt", None),
        ("opt/.wh..wh..opq", Some("")),
        ("opt/new", Some("new\n")),
    ]);
    (lower, upper)
}

fn image_config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "GREETING=from the image"],
            "WorkingDir": "/opt",
            "Cmd": ["sh", "-c", "echo $GREETING; pwd; cat /etc/hello; test -e /etc/removed || echo removed; ls /opt; test -e /opt/old || echo opaque"],
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| format!("sha256:{d}")).collect::<Vec<_>>()},
    }))
    .unwrap()
}

/// An OCI image layout in `dir`: the lower layer plain, the upper one gzip.
fn write_oci_layout(dir: &Path) {
    let (lower, upper) = layers();
    let upper_gz = gzip(upper);
    let config = image_config(&[sha256(lower), sha256(upper)]);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for blob in [lower, &upper_gz, &config] {
        std::fs::write(blobs.join(sha256(blob)), blob).unwrap();
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha256(&config)), "size": config.len()},
        "layers": [
            {"mediaType": LAYER_TAR, "digest": format!("sha256:{}", sha256(lower)), "size": lower.len()},
            {"mediaType": LAYER_TAR_GZIP, "digest": format!("sha256:{}", sha256(&upper_gz)), "size": upper_gz.len()},
        ],
    }))
    .unwrap();
    std::fs::write(blobs.join(sha256(&manifest)), &manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256(&manifest)),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// A `docker save` archive (legacy layout: `<id>/layer.tar`, `<config id>.json`, manifest.json).
fn docker_save_tar(path: &Path) {
    let (lower, upper) = layers();
    docker_save_tar_of(path, &[lower, upper], &[lower, upper]);
}

/// A `docker save` archive of `layers` whose config names `named` (the same layers, unless a test
/// crafts an archive that does not match its config).
fn docker_save_tar_of(path: &Path, layers: &[&Vec<u8>], named: &[&Vec<u8>]) {
    let config = image_config(&named.iter().map(|l| sha256(l)).collect::<Vec<_>>());
    let config_name = format!("{}.json", sha256(&config));
    let names: Vec<String> = layers
        .iter()
        .map(|l| format!("{}/layer.tar", sha256(l)))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["vproc-test:latest"],
        "Layers": names,
    }]))
    .unwrap();
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut members: Vec<(&str, &Vec<u8>)> = vec![(config_name.as_str(), &config)];
    members.extend(names.iter().map(String::as_str).zip(layers.iter().copied()));
    members.push(("manifest.json", &manifest));
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, &data[..]).unwrap();
    }
    builder.finish().unwrap();
}

/// What the image's default command prints.
const IMAGE_OUTPUT: &str = "from the image\n/opt\nfrom layer 2\nremoved\nnew\nopaque\n";

#[test]
fn images_run_with_their_defaults_and_whiteouts_applied() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let layout = work.path().join("layout");
    write_oci_layout(&layout);
    let layout_tar = work.path().join("layout.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&layout_tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    let docker = work.path().join("docker-save.tar");
    docker_save_tar(&docker);

    for image in [&layout, &layout_tar, &docker] {
        let out = vproc_run(&[
            "--no-lxcfs",
            "--image",
            image.to_str().unwrap(),
            "--image-cache",
            cache.to_str().unwrap(),
        ]);
        assert_eq!(code(&out), 0, "{}: {out:?}", image.display());
        assert_eq!(text(&out.stdout), IMAGE_OUTPUT, "{}", image.display());
    }
    // One image id (the config's digest), unpacked once.
    let cached: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1, "{cached:?}");

    // Writes go to the container's own layer, not to the cached image.
    let image = docker.to_str().unwrap();
    let cache = cache.to_str().unwrap();
    let run = |script: &str| {
        vproc_run(&[
            "--no-lxcfs",
            "--image",
            image,
            "--image-cache",
            cache,
            "sh",
            "-c",
            script,
        ])
    };
    assert_eq!(code(&run("echo changed > /etc/hello; rm /bin/ls")), 0);
    let out = run("cat /etc/hello; ls /bin/ls");
    assert_eq!(text(&out.stdout), "from layer 2\n/bin/ls\n", "{out:?}");
}

/// A layer with one file of `mode` (say setuid root).
fn layer_with_file(path: &str, mode: u32) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(2);
    header.set_mode(mode);
    builder.append_data(&mut header, path, &b"x\n"[..]).unwrap();
    builder.into_inner().unwrap()
}

/// Whether uid/gid 65534 (nobody) can reach `path` on the host.
fn nobody_reaches(path: &Path) -> bool {
    use std::os::unix::process::CommandExt as _;
    Command::new("sh")
        .args(["-c", "test -e \"$0\""])
        .arg(path)
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap()
        .success()
}

/// Paths below `dir` whose mode has the setuid bit (as root sees them).
fn setuid_files(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.permissions().mode() & 0o4000 != 0 {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn unpacked_images_and_container_layers_are_root_s_alone() {
    let work = tempfile::tempdir().unwrap();
    // The host's users reach the work directory, as they would /var/lib.
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (lower, _) = layers();
    let setuid = layer_with_file("bin/su-copy", 0o4755);
    let archive = work.path().join("setuid.tar");
    docker_save_tar_of(&archive, &[lower, &setuid], &[lower, &setuid]);
    let cache = work.path().join("images");
    let state = work.path().join("containers");
    let name = unique("vproc-run-private");
    let mut container = Command::new(env!("CARGO_BIN_EXE_vproc"))
        .args(["run", "--no-lxcfs", "-i", "--name", &name, "--image"])
        .arg(&archive)
        .arg("--image-cache")
        .arg(&cache)
        .arg("--state-dir")
        .arg(&state)
        .args([
            "sh",
            "-c",
            "cp /bin/busybox /tmp/su-upper && chmod 4755 /tmp/su-upper && echo ready && read end; exit 0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(container.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready, "ready\n");
    let in_cache = setuid_files(&cache);
    let in_upper = setuid_files(&state.join(&name).join("upper"));
    // Its stdin closes: the command ends and vproc run removes what it made.
    drop(container.stdin.take());
    assert!(container.wait().unwrap().success());
    assert!(!state.join(&name).exists());
    assert_eq!(in_cache.len(), 1, "{in_cache:?}");
    assert_eq!(in_upper.len(), 1, "{in_upper:?}");
    for path in in_cache.iter().chain(&in_upper) {
        assert!(
            !nobody_reaches(path),
            "{} is reachable by nobody",
            path.display()
        );
    }
    // What stops them: the cache, its entries and the container's state directory are 0700.
    assert!(nobody_reaches(work.path()));
    assert!(!nobody_reaches(&cache.join(".")));
    assert!(!nobody_reaches(&state.join(".")));
    // A cache the user names that others can enter is refused, not changed (it may be shared).
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = vproc_run(&[
        "--no-lxcfs",
        "--image",
        archive.to_str().unwrap(),
        "--image-cache",
        shared.to_str().unwrap(),
        "true",
    ]);
    assert_eq!(code(&out), 125, "{out:?}");
    assert!(
        text(&out.stderr).contains("--image-cache: cannot use")
            && text(&out.stderr).contains("0755"),
        "{out:?}"
    );
    assert!(nobody_reaches(&shared.join(".")));
}

#[test]
fn crafted_archives_are_refused_and_cannot_poison_the_cache() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let run = |archive: &Path| {
        vproc_run(&[
            "--no-lxcfs",
            "--image",
            archive.to_str().unwrap(),
            "--image-cache",
            cache.to_str().unwrap(),
        ])
    };
    let (lower, upper) = layers();
    let trusted = work.path().join("trusted.tar");
    docker_save_tar_of(&trusted, &[lower, upper], &[lower, upper]);
    assert_eq!(text(&run(&trusted).stdout), IMAGE_OUTPUT);

    // The trusted image's config with one more layer: refused, though the image is cached.
    let evil = tar_of(&[("etc/hello", Some("poisoned\n"))]);
    let extra = work.path().join("extra-layer.tar");
    docker_save_tar_of(&extra, &[lower, upper, &evil], &[lower, upper]);
    let out = run(&extra);
    assert_eq!(code(&out), 125, "{out:?}");
    assert!(
        text(&out.stderr).contains("has 3 layer(s) but the image config names 2"),
        "{out:?}"
    );
    // Nor fewer layers than the config names.
    let fewer = work.path().join("fewer.tar");
    docker_save_tar_of(&fewer, &[lower], &[lower, upper]);
    assert_eq!(code(&run(&fewer)), 125);
    assert_eq!(text(&run(&trusted).stdout), IMAGE_OUTPUT);

    // Whiteouts that name the directory itself or its parent.
    for bad in ["etc/.wh..", "etc/.wh...", "etc/.wh."] {
        let layer = tar_of(&[(bad, Some(""))]);
        let archive = work.path().join("whiteout.tar");
        docker_save_tar_of(&archive, &[lower, &layer], &[lower, &layer]);
        let out = run(&archive);
        assert_eq!(code(&out), 125, "{bad}: {out:?}");
        assert!(
            text(&out.stderr).contains("not a whiteout of a name"),
            "{bad}: {out:?}"
        );
    }
    // Nothing half-unpacked stays behind: the trusted entry only.
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
}

/// Runs an OCI layout whose lower layer blob `tamper` replaced (it gets the blob's path and a scratch
/// directory outside the layout).
fn run_with_tampered_lower_layer(tamper: impl Fn(&Path, &Path)) -> Output {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_oci_layout(&layout);
    let (lower, _) = layers();
    tamper(
        &layout.join("blobs/sha256").join(sha256(lower)),
        work.path(),
    );
    vproc_run(&[
        "--no-lxcfs",
        "--image",
        layout.to_str().unwrap(),
        "--image-cache",
        work.path().join("cache").to_str().unwrap(),
        "true",
    ])
}

#[test]
fn a_layer_that_does_not_match_its_digest_is_refused() {
    // Something else under the same name.
    let out = run_with_tampered_lower_layer(|blob, _| {
        std::fs::write(blob, tar_of(&[("evil", Some("x"))])).unwrap();
    });
    assert_eq!(code(&out), 125, "{out:?}");
    assert!(
        text(&out.stderr).contains("layer 1 has content sha256:"),
        "{out:?}"
    );
}

#[test]
fn an_archive_member_cannot_link_to_a_host_file() {
    // A link to a valid layer on the host: it must be read inside the layout, where it is not.
    let out = run_with_tampered_lower_layer(|blob, outside| {
        let host_layer = outside.join("host-layer.tar");
        std::fs::rename(blob, &host_layer).unwrap();
        std::os::unix::fs::symlink(&host_layer, blob).unwrap();
    });
    assert_eq!(code(&out), 125, "{out:?}");
    assert!(text(&out.stderr).contains("cannot read"), "{out:?}");
}

#[test]
fn the_container_is_cleaned_up_when_vproc_run_is_killed() {
    let name = unique("vproc-run");
    // As a user: the uid change clears the parent-death signal, which must be set again.
    let (mut child, line) = spawn_until_line(&[
        "--name",
        &name,
        "-u",
        "1000",
        "sh",
        "-c",
        "echo started; exec sleep 100",
    ]);
    assert_eq!(line, "started\n");
    let procs = cgroup_dirs(&name)
        .into_iter()
        .map(|d| d.join("cgroup.procs"))
        .find(|p| p.exists())
        .expect("the container's cgroup");
    let pids: Vec<i32> = std::fs::read_to_string(&procs)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    // Pid 1 dies with its parent (PDEATHSIG), and with it the whole pid namespace.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(
            Instant::now() < deadline,
            "container processes survived vproc run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // vproc run had no chance to remove its cgroup; the next run of that name takes the empty one over.
    let out = run_busybox(&["--name", &name, "true"]);
    assert_eq!(code(&out), 0, "{out:?}");
    for dir in cgroup_dirs(&name) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
