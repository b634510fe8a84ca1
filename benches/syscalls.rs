//! The cost of sysinfo(2) and sched_getaffinity(2) answered through the seccomp agent, against the
//! native calls, measured side by side: rounds interleave the contenders, and each figure is the
//! median over rounds with its spread. Three contenders per call:
//! - native: no filter;
//! - continue: the notification's round trip alone (the agent answers "run the real call", the floor
//!   of any answer through a listener, as a bare fuser server is for FUSE);
//! - agent: the container's answer, rendered and written into the caller's memory.
//!
//! The calling threads sit in a cgroup of their own with a 256 MiB limit (the agent answers only
//! callers in a container). Needs root and a writable cgroup v1 memory hierarchy (or v2).
//! `cargo bench --bench syscalls`

use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vproc::notify::{Answers, Calls, Listener, install_listener_filter, serve};

const ROUNDS: usize = 7;

#[derive(Clone, Copy, Debug)]
enum Call {
    Sysinfo,
    Affinity,
}

fn call(which: Call) {
    match which {
        Call::Sysinfo => {
            // SAFETY: sysinfo(2) writes one struct sysinfo into ours.
            let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            assert_eq!(unsafe { libc::sysinfo(&mut info) }, 0);
            std::hint::black_box(info.totalram);
        }
        Call::Affinity => {
            let mut mask = [0u8; 128];
            // SAFETY: the kernel writes at most 128 bytes into `mask`.
            let got = unsafe {
                libc::syscall(
                    libc::SYS_sched_getaffinity,
                    0,
                    mask.len(),
                    mask.as_mut_ptr(),
                )
            };
            assert!(got > 0);
            std::hint::black_box(mask);
        }
    }
}

/// Nanoseconds per call over `count` calls.
fn per_call(which: Call, count: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..count {
        call(which);
    }
    started.elapsed().as_nanos() as f64 / f64::from(count)
}

/// A thread whose calls go through a listener served by `calls`; it runs `count` calls of the
/// asked kind on request and answers with the time per call.
fn filtered_thread(calls: Calls) -> mpsc::Sender<(Call, u32, mpsc::Sender<f64>)> {
    let (requests, incoming) = mpsc::channel::<(Call, u32, mpsc::Sender<f64>)>();
    let (listener_tx, listener_rx) = mpsc::channel::<OwnedFd>();
    std::thread::spawn(move || {
        let listener = install_listener_filter().expect("install the notify filter (root?)");
        listener_tx.send(listener).unwrap();
        for (which, count, reply) in incoming {
            reply.send(per_call(which, count)).unwrap();
        }
    });
    let listener = listener_rx.recv().unwrap();
    let name = if calls.sysinfo {
        "agent"
    } else {
        "passthrough"
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // No CPU budget: the figure is what one answer costs.
            let answers = Answers::new(calls).unlimited();
            let _ = serve(&Listener::new(listener), &answers);
        })
        .unwrap();
    requests
}

/// A cgroup with a 256 MiB limit holding this process, removed on drop.
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn enter() -> Option<Cgroup> {
        let base = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.join("cgroup.procs").exists())?;
        let dir = base.join(format!("vproc-bench-syscalls-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let limit = if base.ends_with("memory") {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        let group = Cgroup(dir);
        std::fs::write(group.0.join(limit), "268435456").ok()?;
        std::fs::write(group.0.join("cgroup.procs"), std::process::id().to_string()).ok()?;
        Some(group)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let parent = self.0.parent().unwrap();
        let _ = std::fs::write(parent.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn median_and_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes --bench; under `cargo test --benches` one short round checks that it runs.
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, native_calls, filtered_calls) = if full {
        (ROUNDS, 200_000, 5_000)
    } else {
        (1, 1_000, 100)
    };
    let Some(_cgroup) = Cgroup::enter() else {
        eprintln!("syscalls bench: needs root and a writable memory cgroup; skipped");
        return;
    };
    let agent = filtered_thread(Calls::default());
    let passthrough = filtered_thread(Calls {
        sysinfo: false,
        affinity: false,
    });
    for which in [Call::Sysinfo, Call::Affinity] {
        let mut native = Vec::new();
        let mut through_continue = Vec::new();
        let mut through_agent = Vec::new();
        let (reply, replies) = mpsc::channel();
        // Warm up: the agent's first answer resolves the caller's cgroups.
        agent.send((which, 200, reply.clone())).unwrap();
        replies.recv().unwrap();
        for _ in 0..rounds {
            native.push(per_call(which, native_calls));
            passthrough
                .send((which, filtered_calls, reply.clone()))
                .unwrap();
            through_continue.push(replies.recv().unwrap());
            agent.send((which, filtered_calls, reply.clone())).unwrap();
            through_agent.push(replies.recv().unwrap());
        }
        let (n, n_lo, n_hi) = median_and_spread(native);
        let (c, c_lo, c_hi) = median_and_spread(through_continue);
        let (a, a_lo, a_hi) = median_and_spread(through_agent);
        println!("{which:?}, ns per call, median of {rounds} interleaved rounds (min-max):");
        println!("  native             {n:9.0} ({n_lo:.0}-{n_hi:.0})");
        println!(
            "  listener, continue {c:9.0} ({c_lo:.0}-{c_hi:.0})  {:.0}x native",
            c / n
        );
        println!(
            "  agent's answer     {a:9.0} ({a_lo:.0}-{a_hi:.0})  {:.0}x native, {:.2}x the listener's round trip",
            a / n,
            a / c
        );
    }
    // Let the serving threads see nothing more; the process ends here.
    std::thread::sleep(Duration::from_millis(10));
}
