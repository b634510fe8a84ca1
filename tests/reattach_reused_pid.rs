//! A heal goes to the namespace the scan found, never to whatever process holds its pid later. Its own
//! test binary: the heal forks, which is safe only while the process runs no other test threads.

mod common;

use std::os::fd::AsRawFd;
use std::process::Child;
use std::time::Duration;

use common::{Daemon, Limits, MIB, TestCgroup, stdout};
use vproc::reattach::{self, Outcome};

/// Mounts of `fs_name` in the mount namespace of process `pid`.
fn fs_mounts_of(pid: u32, fs_name: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(fs_name))
        .count()
}

#[test]
fn a_reattach_whose_pid_was_reused_touches_nothing_but_the_namespace_it_found() {
    let mut daemon = Daemon::start(&[]);
    let mountpoint = reattach::canonical_mountpoint(&daemon.mountpoint);
    let fs_name = reattach::fs_name(&mountpoint);
    let group = TestCgroup::new(Limits {
        memory_bytes: Some(64 * MIB),
        ..Limits::default()
    });
    let mut container: Child = group.container("sh -c \"echo ready; exec sleep 300\"");
    stdout(
        std::process::Command::new(env!("CARGO_BIN_EXE_vproc"))
            .args([
                "attach",
                "--pid",
                &container.id().to_string(),
                "--mountpoint",
            ])
            .arg(&mountpoint)
            .output()
            .unwrap(),
    );
    daemon.stop_with(libc::SIGKILL);

    let mut found: Vec<_> = reattach::find_namespaces(std::path::Path::new("/proc"), &mountpoint)
        .filter(|ns| ns.pid == container.id())
        .collect();
    assert_eq!(found.len(), 1, "the scan finds the container's namespace");
    let namespace = found[0].namespace.try_clone().unwrap();

    // The container's process exits (its namespace lives on through the scan's fd) and its pid now
    // names another process: one in a mount namespace of its own (a copy of the host's, so a heal sent
    // there by pid would find the daemon's mount and its paths).
    let _ = container.kill();
    let _ = container.wait();
    let _new = Daemon::start_at(&daemon.mountpoint.clone(), &daemon.pidfile.clone(), &[]);
    let mut other = group.container("sh -c \"echo ready; exec sleep 300\"");
    // Another process of the container (in a pid namespace of its own, as a container's are) enters its
    // mount namespace after the new daemon's own reattach at start: what the heal names the
    // container's files by, the one found being gone.
    std::thread::sleep(Duration::from_millis(500));
    let mut companion = group.spawn(&format!(
        "exec nsenter --mount=/proc/{}/fd/{} unshare --pid --fork --kill-child sleep 300",
        std::process::id(),
        namespace.as_raw_fd()
    ));
    std::thread::sleep(Duration::from_millis(300));
    found[0].pid = other.id();
    let other_mounts_before = fs_mounts_of(other.id(), &fs_name);
    let host_mounts_before = fs_mounts_of(std::process::id(), &fs_name);

    let outcomes = reattach::heal_all(&mountpoint, found, Duration::from_secs(10));
    assert!(
        matches!(outcomes[..], [Outcome::Healed { mounts, .. }] if mounts > 0),
        "{outcomes:?}"
    );
    assert_eq!(
        fs_mounts_of(other.id(), &fs_name),
        other_mounts_before,
        "the heal mounted something where the pid points now"
    );
    assert_eq!(
        fs_mounts_of(std::process::id(), &fs_name),
        host_mounts_before,
        "the heal mounted something in the host's namespace"
    );
    let _ = other.kill();
    let _ = other.wait();
    let _ = companion.kill();
    let _ = companion.wait();
    let in_found_namespace = group.run_in_host_pidns(&format!(
        "exec nsenter --mount=/proc/{}/fd/{} head -1 /proc/meminfo",
        std::process::id(),
        namespace.as_raw_fd()
    ));
    assert_eq!(
        stdout(in_found_namespace),
        "MemTotal:          65536 kB\n",
        "the namespace the scan found was healed"
    );
}
