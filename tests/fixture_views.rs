//! Every renderer on fixture trees: cgroup v1 files captured from this kernel (6.18, hybrid) and v2 files
//! in the kernel's formats, with the host's /proc files from the same machine (SwapTotal set to 2 GiB).

use std::path::{Path, PathBuf};
use std::time::Duration;

use vproc::cgroup::CgroupLayout;
use vproc::files::Content;
use vproc::host::{HostRoots, boottime_now};
use vproc::render::{Options, Renderer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn renderer(cgroup_tree: &str, options: Options) -> Renderer {
    let roots = HostRoots {
        proc: fixtures().join("proc"),
        sys: fixtures().join("sys"),
    };
    let layout = CgroupLayout::from_root_dir(&fixtures().join(cgroup_tree));
    Renderer::new(roots, layout, options).unwrap()
}

fn uncached() -> Options {
    Options {
        reader_ttl: Duration::ZERO,
        ..Options::default()
    }
}

fn render(cgroup_tree: &str, content: Content, pid: u32) -> String {
    String::from_utf8(
        renderer(cgroup_tree, uncached())
            .render(content, pid)
            .unwrap(),
    )
    .unwrap()
}

fn host_file(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("proc").join(name)).unwrap()
}

/// The lines of `text` for the given meminfo keys, as `key value` pairs.
fn meminfo(text: &str, keys: &[&str]) -> Vec<(String, u64)> {
    keys.iter()
        .map(|key| {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{key}:")))
                .unwrap_or_else(|| panic!("no {key}"));
            let value = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            (key.to_string(), value)
        })
        .collect()
}

fn pairs(values: &[(&str, u64)]) -> Vec<(String, u64)> {
    values.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

const MEMORY_KEYS: &[&str] = &[
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Cached",
    "SwapTotal",
    "SwapFree",
];

#[test]
fn v1_unlimited_child_of_a_64m_parent() {
    // memory.usage_in_bytes 20533248 (20052 kB); memsw limit 128 MiB over a 64 MiB limit: 64 MiB of swap.
    let text = render("cgroup-v1", Content::Meminfo, 100);
    assert_eq!(
        meminfo(&text, MEMORY_KEYS),
        pairs(&[
            ("MemTotal", 65536),
            ("MemFree", 45484),
            ("MemAvailable", 45484),
            ("Cached", 0),
            ("SwapTotal", 65536),
            ("SwapFree", 65536)
        ])
    );
    assert_eq!(
        text.lines().count(),
        host_file("meminfo").lines().count(),
        "every host line is kept"
    );
    assert!(
        text.contains("MemTotal:          65536 kB\n"),
        "kernel field widths"
    );
}

#[test]
fn v1_cpu_files_follow_quota_and_cpuset() {
    // cfs_quota 50000/100000 and cpuset 0 on the parent: one CPU.
    assert_eq!(render("cgroup-v1", Content::CpuOnline, 100), "0\n");
    let cpuinfo = render("cgroup-v1", Content::Cpuinfo, 100);
    assert_eq!(cpuinfo.matches("processor\t: ").count(), 1);
    assert!(cpuinfo.starts_with("processor\t: 0\n"));
    let stat = render("cgroup-v1", Content::Stat, 100);
    let cpu_lines: Vec<&str> = stat.lines().filter(|l| l.starts_with("cpu")).collect();
    // cpuacct.usage_all: 732705593 ns user, 116000000 ns system -> 73 and 11 ticks.
    assert_eq!(cpu_lines.len(), 2);
    assert!(
        cpu_lines[0].starts_with("cpu  73 0 11 "),
        "{}",
        cpu_lines[0]
    );
    assert!(
        cpu_lines[1].starts_with("cpu0 73 0 11 "),
        "{}",
        cpu_lines[1]
    );
    assert!(stat.lines().any(|l| l.starts_with("btime ")));
    let host_stat = host_file("stat");
    let host_other: Vec<&str> = host_stat
        .lines()
        .filter(|l| !l.starts_with("cpu"))
        .collect();
    let ours_other: Vec<&str> = stat.lines().filter(|l| !l.starts_with("cpu")).collect();
    assert_eq!(
        ours_other, host_other,
        "non-cpu lines are the host's, in order"
    );
}

#[test]
fn v1_unlimited_cgroup_sees_host_totals() {
    let text = render("cgroup-v1", Content::Meminfo, 101);
    assert_eq!(
        meminfo(&text, &["MemTotal"]),
        meminfo(&host_file("meminfo"), &["MemTotal"])
    );
    assert_eq!(render("cgroup-v1", Content::CpuOnline, 101), "0-1\n");
}

#[test]
fn root_cgroup_reader_gets_the_host_files_verbatim() {
    for (tree, pid) in [("cgroup-v1", 102), ("cgroup-v2", 204)] {
        assert_eq!(render(tree, Content::Meminfo, pid), host_file("meminfo"));
        assert_eq!(render(tree, Content::Cpuinfo, pid), host_file("cpuinfo"));
        assert_eq!(render(tree, Content::Stat, pid), host_file("stat"));
        assert_eq!(render(tree, Content::Uptime, pid), host_file("uptime"));
    }
}

#[test]
fn unknown_and_zero_pids_get_the_host_files() {
    assert_eq!(
        render("cgroup-v1", Content::Meminfo, 0),
        host_file("meminfo")
    );
    assert_eq!(
        render("cgroup-v1", Content::Meminfo, 999_999),
        host_file("meminfo")
    );
}

#[test]
fn v2_limited_cgroup() {
    // memory.max 64 MiB, current 20 MiB; available adds active_file + inactive_file + slab_reclaimable
    // (2048 + 4096 + 400 kB); memory.swap.max 0.
    let text = render("cgroup-v2", Content::Meminfo, 199);
    assert_eq!(
        meminfo(&text, MEMORY_KEYS),
        pairs(&[
            ("MemTotal", 65536),
            ("MemFree", 45056),
            ("MemAvailable", 51600),
            ("Cached", 6144),
            ("SwapTotal", 0),
            ("SwapFree", 0)
        ])
    );
    assert_eq!(
        meminfo(
            &text,
            &[
                "Slab",
                "SReclaimable",
                "SUnreclaim",
                "AnonPages",
                "Mapped",
                "Buffers"
            ]
        ),
        pairs(&[
            ("Slab", 700),
            ("SReclaimable", 400),
            ("SUnreclaim", 300),
            ("AnonPages", 12288),
            ("Mapped", 2048),
            ("Buffers", 0)
        ])
    );
}

#[test]
fn v2_nested_child_takes_the_tighter_ancestor() {
    // The child has memory.max, swap.max and cpu.max of `max`; its parent has 64 MiB, swap 0, 0.5 CPU.
    let text = render("cgroup-v2", Content::Meminfo, 200);
    assert_eq!(
        meminfo(&text, MEMORY_KEYS),
        pairs(&[
            ("MemTotal", 65536),
            ("MemFree", 49152),
            ("MemAvailable", 53448),
            ("Cached", 4096),
            ("SwapTotal", 0),
            ("SwapFree", 0)
        ])
    );
    assert_eq!(render("cgroup-v2", Content::CpuOnline, 200), "0\n");
    assert_eq!(
        render("cgroup-v2", Content::Cpuinfo, 200)
            .matches("processor\t: ")
            .count(),
        1
    );
    // cpu.stat: user 2 s, system 0.5 s.
    let stat = render("cgroup-v2", Content::Stat, 200);
    assert!(stat.starts_with("cpu  200 0 50 "), "{stat}");
}

#[test]
fn a_container_is_its_init_s_cgroups_and_a_host_pid_reader_its_own() {
    // Namespace 4026532000: init 199 in /limited (64 MiB). Reader 206 is in /limited/tight (32 MiB),
    // a sub-cgroup of the container: it sees the container, as on a machine a process in a tighter
    // systemd slice still sees the machine's memory.
    let container = render("cgroup-v2", Content::Meminfo, 199);
    assert!(
        container.contains("MemTotal:          65536 kB\n"),
        "{container}"
    );
    assert_eq!(render("cgroup-v2", Content::Meminfo, 206), container);
    // Reader 207, in the same sub-cgroup but in the host's pid namespace, is seen by its own cgroup.
    let own = render("cgroup-v2", Content::Meminfo, 207);
    assert!(own.contains("MemTotal:          32768 kB\n"), "{own}");
    // Namespace 4026532001: init 209 runs systemd in /limited/init.scope; the container is /limited.
    assert_eq!(render("cgroup-v2", Content::Meminfo, 210), container);
    // Reader 211 shares init 199's namespace from a cgroup outside /limited (a pod whose containers
    // share one pid namespace): it is seen by its own cgroup, as host-pid reader 201 there is.
    assert_eq!(
        render("cgroup-v2", Content::Meminfo, 211),
        render("cgroup-v2", Content::Meminfo, 201)
    );
}

#[test]
fn v2_uptime_counts_from_the_pid_namespace_init() {
    // Reader 205 is pid 6 in a namespace whose init (host pid 199) started 1199 ticks after boot.
    let text = render("cgroup-v2", Content::Uptime, 205);
    let fields: Vec<f64> = text
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let expected = boottime_now() - 11.99;
    assert!((fields[0] - expected).abs() < 1.0, "{text} vs {expected}");
    assert!(fields[1] >= 0.0);
    assert!(
        text.ends_with('\n')
            && text
                .split(' ')
                .all(|f| f.trim().split('.').nth(1).map(str::len) == Some(2))
    );
}

#[test]
fn v2_unlimited_swap_is_the_hosts() {
    let text = render("cgroup-v2", Content::Meminfo, 201);
    assert_eq!(
        meminfo(&text, &["MemTotal", "SwapTotal", "SwapFree"]),
        pairs(&[
            ("MemTotal", 131072),
            ("SwapTotal", 2097148),
            ("SwapFree", 2096124)
        ])
    );
    let swaps = render("cgroup-v2", Content::Swaps, 201);
    assert_eq!(
        swaps.lines().nth(1),
        Some("none                                    virtual\t2097148\t\t1024\t\t0")
    );
}

#[test]
fn disabled_swap_shows_none() {
    let options = Options {
        swap_enabled: false,
        ..uncached()
    };
    let text = String::from_utf8(
        renderer("cgroup-v2", options)
            .render(Content::Meminfo, 201)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        meminfo(&text, &["SwapTotal", "SwapFree"]),
        pairs(&[("SwapTotal", 0), ("SwapFree", 0)])
    );
    let no_swap = renderer(
        "cgroup-v2",
        Options {
            swap_enabled: false,
            ..uncached()
        },
    );
    let swaps = String::from_utf8(no_swap.render(Content::Swaps, 201).unwrap()).unwrap();
    assert_eq!(swaps.lines().count(), 1);
}

#[test]
fn usage_above_the_limit_never_underflows() {
    // memory.current 80000000 over a 64 MiB limit; swap used 64 MiB over a 32 MiB swap.max.
    let text = render("cgroup-v2", Content::Meminfo, 202);
    assert_eq!(
        meminfo(&text, MEMORY_KEYS),
        pairs(&[
            ("MemTotal", 65536),
            ("MemFree", 0),
            ("MemAvailable", 8192),
            ("Cached", 8192),
            ("SwapTotal", 32768),
            ("SwapFree", 0)
        ])
    );
}

#[test]
fn quota_of_one_and_a_half_with_two_cpus_shows_two() {
    assert_eq!(render("cgroup-v2", Content::CpuOnline, 203), "0-1\n");
    assert_eq!(render("cgroup-v2", Content::CpuPresent, 203), "0-1\n");
    let cpuinfo = render("cgroup-v2", Content::Cpuinfo, 203);
    assert_eq!(cpuinfo.matches("processor\t: ").count(), 2);
    assert_eq!(
        render("cgroup-v2", Content::Stat, 203)
            .lines()
            .filter(|l| l.starts_with("cpu"))
            .count(),
        3
    );
}

/// `(user, idle)` of the `cpu` line of a /proc/stat.
fn user_and_idle(stat: &[u8]) -> (u64, u64) {
    let text = String::from_utf8(stat.to_vec()).unwrap();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    (fields[0], fields[3])
}

#[test]
fn stat_counters_never_go_backwards_and_a_recreated_cgroup_starts_from_its_own() {
    // A copy of the v2 tree whose cpu.stat the test changes between reads.
    let tree = tempfile::tempdir().unwrap();
    let copy = |to: &Path| {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(fixtures().join("cgroup-v2"))
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    let root = tree.path().join("cgroup-v2");
    copy(&root);
    let roots = HostRoots {
        proc: fixtures().join("proc"),
        sys: fixtures().join("sys"),
    };
    let options = Options {
        reader_ttl: Duration::ZERO,
        usage_ttl: Duration::ZERO,
        ..Options::default()
    };
    let renderer = Renderer::new(roots, CgroupLayout::from_root_dir(&root), options).unwrap();
    let stat = || user_and_idle(&renderer.render(Content::Stat, 200).unwrap());
    let cpu_stat = root.join("limited/child/cpu.stat");
    let original = std::fs::read_to_string(&cpu_stat).unwrap();

    let (user, idle) = stat();
    // 1000 s of user time appear at once (accounting catching up): idle = uptime - busy would drop.
    let jumped = original.replace("user_usec 2000000", "user_usec 1002000000");
    std::fs::write(&cpu_stat, jumped).unwrap();
    let (user_after, idle_after) = stat();
    assert!(user_after > user, "user {user} -> {user_after}");
    assert!(idle_after >= idle, "idle went back: {idle} -> {idle_after}");

    // The container is removed and created again on the same path: a new directory, a new cgroup.
    std::fs::rename(&root, tree.path().join("removed")).unwrap();
    copy(&root);
    let (user_new, _) = stat();
    assert_eq!(
        user_new, user,
        "the new cgroup shows its own usage, not the removed one's"
    );
}

#[test]
fn vproc_show_reads_fixture_roots() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vproc"))
        .args(["show", "meminfo", "--pid", "200"])
        .arg("--proc-root")
        .arg(fixtures().join("proc"))
        .arg("--sys-root")
        .arg(fixtures().join("sys"))
        .arg("--cgroup-root")
        .arg(fixtures().join("cgroup-v2"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        render("cgroup-v2", Content::Meminfo, 200),
        "the binary prints what the renderer renders"
    );
    assert!(text.starts_with("MemTotal:          65536 kB\n"));

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_vproc"))
        .args(["show", "meminfo", "--pid", "4000000000"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no process 4000000000"));
}
