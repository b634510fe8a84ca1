//! The v2 device allowlist (a BPF_PROG_TYPE_CGROUP_DEVICE program) on the real kernel. This hybrid host
//! also mounts cgroup2 at /sys/fs/cgroup/unified, and the kernel runs the device programs of a process's
//! v2 cgroup whatever the v1 devices controller says, so the program `vproc run` attaches on a pure v2
//! host is checked here against the host's real disk (the VM lane runs it under `vproc run`). Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use vproc::launcher::devices;

/// A cgroup in the host's v2 hierarchy, removed on drop (its processes are gone by then).
struct UnifiedCgroup(PathBuf);

impl Drop for UnifiedCgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
            // SAFETY: plain kill(2) of a process this test put there.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for _ in 0..500 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// The block devices of /sys/block, disks first: (name, major, minor).
fn block_devices() -> Vec<(String, u32, u32)> {
    let mut found: Vec<(String, u32, u32)> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let numbers = std::fs::read_to_string(e.path().join("dev")).ok()?;
            let (major, minor) = numbers.trim().split_once(':')?;
            Some((name, major.parse().ok()?, minor.parse().ok()?))
        })
        .collect();
    found.sort_by_key(|(name, ..)| {
        (
            ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)),
            name.clone(),
        )
    });
    found
}

#[test]
fn the_device_program_allows_docker_s_list_and_refuses_the_host_disk() {
    let unified = Path::new("/sys/fs/cgroup/unified");
    assert!(
        unified.join("cgroup.procs").exists(),
        "this machine kind mounts cgroup2 at {}",
        unified.display()
    );
    let cgroup = UnifiedCgroup(unified.join(common::unique("vproc-devices")));
    std::fs::create_dir(&cgroup.0).unwrap();
    devices::attach_program(&cgroup.0, devices::DEFAULT_ALLOWED).unwrap();

    let nodes = tempfile::tempdir().unwrap();
    // The first block device this test may open outside the cgroup (the sandbox of this machine kind
    // refuses its own disk, vda, to everyone; zram0 opens).
    let disk = nodes.path().join("disk");
    let opened = block_devices().into_iter().find(|(_, major, minor)| {
        let _ = std::fs::remove_file(&disk);
        common::mknod(&disk, libc::S_IFBLK | 0o600, *major, *minor);
        std::fs::File::open(&disk).is_ok()
    });
    assert!(opened.is_some(), "no block device in /sys/block opens here");
    common::mknod(&nodes.path().join("null"), libc::S_IFCHR | 0o600, 1, 3);
    common::mknod(&nodes.path().join("mem"), libc::S_IFCHR | 0o600, 1, 1);

    let script = "echo $$ > \"$0/cgroup.procs\" || exit 99; cd \"$1\"; \
                  head -c 1 disk >/dev/null 2>&1 && echo disk-open || echo disk-refused; \
                  head -c 1 mem >/dev/null 2>&1 && echo mem-open || echo mem-refused; \
                  head -c 0 null && echo null-open; \
                  head -c 4 /dev/zero | wc -c; \
                  mknod made b 7 0 2>&1 || echo mknod-refused; \
                  mknod made-null c 1 3 && echo mknod-null-made";
    let out = Command::new("sh")
        .args(["-c", script])
        .arg(&cgroup.0)
        .arg(nodes.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(lines[0], "disk-refused", "{stdout}");
    assert_eq!(lines[1], "mem-refused", "{stdout}");
    assert_eq!(lines[2], "null-open", "{stdout}");
    assert_eq!(lines[3].trim(), "4", "{stdout}");
    assert!(lines[4].contains("Operation not permitted"), "{stdout}");
    assert_eq!(lines[5], "mknod-refused", "{stdout}");
    assert_eq!(lines[6], "mknod-null-made", "{stdout}");
}
