//! What LXCFS's own test suite checks (tests/ in lxc/lxcfs: test_proc, test_read_proc with test-read.c,
//! test_meminfo_hierarchy, test_cpuset_hierarchy, test_cpu_cfs_hierarchy), as tests of ours against
//! vprocd on this machine's cgroup v1. test_sigusr2 is in tests/mount.rs; the v2 half of each runs in
//! the VM lane (tests/vm/guest-init). Needs root, /dev/fuse and writable cgroup v1 hierarchies.

mod common;

use common::{Daemon, Limits, MIB, TestCgroup, small_box, stdout};

#[test]
fn test_proc_the_mount_and_each_file_of_a_fresh_container() {
    let daemon = Daemon::start(&[]);
    let m = daemon.mountpoint.display();
    // readdir of the mount: LXCFS's layout.
    let top: Vec<String> = std::fs::read_dir(&daemon.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        top.contains(&"proc".into()) && top.contains(&"sys".into()),
        "{top:?}"
    );
    let proc: Vec<String> = std::fs::read_dir(daemon.mountpoint.join("proc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for file in ["cpuinfo", "meminfo", "stat", "uptime", "swaps"] {
        assert!(
            proc.contains(&file.to_string()),
            "proc/ lacks {file}: {proc:?}"
        );
    }
    // A fresh container (its own pid namespace): uptime near 0, one processor, cpu 0 online, its memory.
    let group = TestCgroup::new(small_box());
    let out = stdout(group.run(&format!(
        "cut -d. -f1 {m}/proc/uptime; grep -c ^processor {m}/proc/cpuinfo; \
         cat {m}/sys/devices/system/cpu/online; grep MemTotal {m}/proc/meminfo"
    )));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].parse::<u32>().unwrap() < 5, "uptime: {out}");
    assert_eq!(
        &lines[1..],
        ["1", "0", "MemTotal:          65536 kB"],
        "{out}"
    );

    // /proc/stat over 100 reads while the container burns CPU: always `cpu` and `cpu0`, each with the
    // kernel's 10 counters, none ever going back (top divides deltas).
    let reads = stdout(group.run(&format!(
        "(while :; do :; done) & for i in $(seq 100); do cat {m}/proc/stat; echo ===; done; kill $!"
    )));
    let mut last: Vec<Vec<u64>> = Vec::new();
    for (i, read) in reads.split("===\n").filter(|r| !r.is_empty()).enumerate() {
        let cpu_lines: Vec<Vec<u64>> = read
            .lines()
            .filter(|l| l.starts_with("cpu"))
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(fields.len(), 11, "read {i}: {l}");
                fields[1..].iter().map(|f| f.parse().unwrap()).collect()
            })
            .collect();
        assert_eq!(cpu_lines.len(), 2, "read {i}: {read}");
        if !last.is_empty() {
            for (now, before) in cpu_lines.iter().zip(&last) {
                for (n, b) in now.iter().zip(before) {
                    assert!(
                        n >= b,
                        "read {i}: a counter went back: {now:?} < {before:?}"
                    );
                }
            }
        }
        last = cpu_lines;
    }
}

#[test]
fn test_read_proc_every_file_in_odd_chunks_by_many_readers_at_once() {
    // test-read.c reads each file with a small buffer from many threads. Here eight readers of one
    // container read every file with dd in chunks of 1 to 4096 bytes, at the same time; each read must
    // be whole: as many lines as a plain read, ending in a newline.
    let daemon = Daemon::start(&[]);
    let m = daemon.mountpoint.display();
    let group = TestCgroup::new(small_box());
    let files = "proc/meminfo proc/cpuinfo proc/stat proc/uptime proc/swaps \
                 sys/devices/system/cpu/online";
    let reader = format!(
        "for f in {files}; do want=$(wc -l < {m}/$f); \
           for bs in 1 3 7 13 64 1000 4096; do for i in 1 2; do \
             got=$(dd if={m}/$f bs=$bs 2>/dev/null | wc -l); \
             last=$(dd if={m}/$f bs=$bs 2>/dev/null | tail -c 1 | od -An -c | tr -d ' '); \
             [ \"$got\" = \"$want\" ] && [ \"$last\" = '\\n' ] || echo BAD $f bs=$bs got=$got want=$want last=$last; \
           done; done; done; echo done"
    );
    let script = (0..8)
        .map(|_| format!("( {reader} ) &"))
        .collect::<Vec<_>>()
        .join(" ")
        + " wait";
    let out = stdout(group.run(&script));
    assert!(!out.contains("BAD"), "{out}");
    assert_eq!(out.lines().filter(|l| *l == "done").count(), 8, "{out}");
}

#[test]
fn hierarchy_tests_a_reader_deep_in_a_sub_cgroup_sees_its_container_swap_included() {
    // test_meminfo_hierarchy, test_cpuset_hierarchy, test_cpu_cfs_hierarchy: the container has 512 MiB
    // with 256 MiB of swap, two CPUs of quota and cpuset 0-1; a sub-cgroup in it has 400 MiB, no swap,
    // one CPU and cpuset 0. Readers of the container's pid namespace see the container wherever they
    // are; a reader of the sub-cgroup in the host's pid namespace sees the sub-cgroup.
    let daemon = Daemon::start(&[]);
    let container = TestCgroup::new(Limits {
        memory_bytes: Some(512 * MIB),
        quota_us: Some(200_000),
        cpus: Some("0-1"),
    });
    container.set(
        "memory",
        "memory.memsw.limit_in_bytes",
        &(768 * MIB).to_string(),
    );
    let sub = container.child(Limits {
        memory_bytes: Some(400 * MIB),
        quota_us: Some(100_000),
        cpus: Some("0"),
    });
    sub.set(
        "memory",
        "memory.memsw.limit_in_bytes",
        &(400 * MIB).to_string(),
    );
    let (mut init, init_pid) = container.container_init();
    let m = daemon.mountpoint.display();
    let report = format!(
        "grep -E '^(MemTotal|SwapTotal):' {m}/proc/meminfo | tr -s ' '; \
         cat {m}/sys/devices/system/cpu/online; grep -c ^processor {m}/proc/cpuinfo; \
         grep -c '^cpu[0-9]' {m}/proc/stat"
    );
    let in_namespace = |group: &TestCgroup| {
        stdout(group.run_in_host_pidns(&format!("nsenter -t {init_pid} -p -- sh -c \"{report}\"")))
    };
    let at_the_top = in_namespace(&container);
    let deep = in_namespace(&sub);
    let host_pid = stdout(sub.run_in_host_pidns(&report));
    let _ = init.kill();
    let _ = init.wait();
    // Swap is capped by the host's (none on this machine kind: the VM lane's zram covers the swap half).
    let host_swap_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let container_view = format!(
        "MemTotal: 524288 kB\nSwapTotal: {} kB\n0-1\n2\n2\n",
        host_swap_kb.min(262_144)
    );
    assert_eq!(at_the_top, container_view);
    assert_eq!(deep, container_view, "deep in the sub-cgroup");
    assert_eq!(host_pid, "MemTotal: 409600 kB\nSwapTotal: 0 kB\n0\n1\n1\n");
}
