//! Cost of the pure renderers on the host files of tests/fixtures (no I/O): what a read adds on top of
//! the kernel file reads and the FUSE round trip.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use vproc::cgroup::{CpuUsage, MemoryLimits, MemoryStat, MemoryUsage, SwapLimit};
use vproc::view::cpuinfo::render_cpuinfo;
use vproc::view::meminfo::{MemoryFacts, render_meminfo};
use vproc::view::stat::{CpuTimes, render_stat};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/proc/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn renderers(c: &mut Criterion) {
    let meminfo = fixture("meminfo");
    let cpuinfo = fixture("cpuinfo");
    let stat = fixture("stat");
    let facts = MemoryFacts {
        limits: MemoryLimits {
            limit_bytes: Some(64 << 20),
            swap: SwapLimit::SwapOnly(None),
        },
        usage: MemoryUsage {
            usage_bytes: 20 << 20,
            swap_used_bytes: Some(0),
            stat: MemoryStat {
                file: 4 << 20,
                active_file: 1 << 20,
                inactive_file: 3 << 20,
                ..MemoryStat::default()
            },
        },
        swap_enabled: true,
    };
    c.bench_function("render_meminfo", |b| {
        b.iter(|| render_meminfo(black_box(&meminfo), black_box(&facts)))
    });
    c.bench_function("render_cpuinfo_1_of_2", |b| {
        b.iter(|| render_cpuinfo(black_box(&cpuinfo), black_box(&[1])))
    });
    let usage = CpuUsage {
        user_ns: 123_456_789_000,
        system_ns: 23_456_789_000,
    };
    c.bench_function("render_stat_2_cpus", |b| {
        b.iter(|| render_stat(black_box(&stat), &CpuTimes::spread(usage, 2, 1000.0), None))
    });
}

criterion_group!(benches, renderers);
criterion_main!(benches);
