//! Pure renderers: (host file, container facts) -> the file the reader sees. No I/O here; the rules are
//! DESIGN.md's "What each file says", one module per file. All arithmetic saturates.

pub mod cpuinfo;
pub mod cpus;
pub mod diskstats;
pub mod loadavg;
pub mod meminfo;
pub mod stat;
pub mod swaps;
pub mod sysinfo;
pub mod topology;
pub mod uptime;

/// USER_HZ, the unit of /proc/stat; 100 on every architecture vproc supports.
pub const USER_HZ: u64 = 100;

/// The decimal ASCII digits of `value`, written into the end of `buffer` without allocating.
pub(crate) fn decimal(mut value: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buffer[start..]
}

/// Formats one meminfo line exactly as the kernel does (`show_val_kb`): the label with its colon padded
/// to 16 columns, the value right-aligned in 8, then ` kB`. Written without `format!`: this runs for
/// every line of every read.
pub(crate) fn meminfo_line(out: &mut String, key: &str, kb: u64) {
    let mut buffer = [0u8; 20];
    let digits = decimal(kb, &mut buffer);
    out.push_str(key);
    out.push(':');
    for _ in key.len() + 1..16 {
        out.push(' ');
    }
    for _ in digits.len()..8 {
        out.push(' ');
    }
    // The digits are ASCII.
    out.extend(digits.iter().map(|&d| d as char));
    out.push_str(" kB\n");
}

#[cfg(test)]
mod tests {
    use super::meminfo_line;

    #[test]
    fn meminfo_lines_match_the_kernel_layout() {
        let mut out = String::new();
        meminfo_line(&mut out, "MemTotal", 65536);
        meminfo_line(&mut out, "Inactive(file)", 0);
        meminfo_line(&mut out, "DirectMap4k", 123456789);
        meminfo_line(&mut out, "VmallocTotal", u64::MAX);
        assert_eq!(
            out,
            "MemTotal:          65536 kB\nInactive(file):        0 kB\nDirectMap4k:    123456789 kB\n\
VmallocTotal:   18446744073709551615 kB\n"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use crate::cgroup::{CpuUsage, MemoryLimits, MemoryStat, MemoryUsage, SwapLimit};
    use crate::view::cpuinfo::render_cpuinfo;
    use crate::view::meminfo::{MemoryFacts, render_meminfo};
    use crate::view::stat::{CpuTimes, render_stat};
    use crate::view::swaps::render_swaps;

    fn facts(limit: Option<u64>, usage: u64, swap: SwapLimit, stat: [u64; 4]) -> MemoryFacts {
        MemoryFacts {
            limits: MemoryLimits {
                limit_bytes: limit,
                swap,
            },
            usage: MemoryUsage {
                usage_bytes: usage,
                swap_used_bytes: Some(usage),
                stat: MemoryStat {
                    file: stat[0],
                    active_file: stat[1],
                    inactive_file: stat[2],
                    slab_reclaimable: Some(stat[3]),
                    ..MemoryStat::default()
                },
            },
            swap_enabled: true,
        }
    }

    fn value(text: &str, key: &str) -> u64 {
        crate::host::meminfo_kb(text, key).unwrap()
    }

    proptest! {
        /// Whatever the host's files hold, renderers return text and never panic.
        #[test]
        fn renderers_never_panic_on_any_host_text(host in "\\PC*", cpus in proptest::collection::vec(0u32..64, 0..8)) {
            let f = facts(Some(1 << 26), 1 << 25, SwapLimit::MemoryPlusSwap(Some(1 << 27)), [1, 2, 3, 4]);
            let _ = render_meminfo(&host, &f);
            let _ = render_cpuinfo(&host, &cpus);
            let _ = render_stat(&host, &CpuTimes::spread(CpuUsage { user_ns: 5, system_ns: 7 }, cpus.len(), 1.0), None);
            let _ = render_swaps(&host, crate::view::meminfo::swap_view(&host, &f));
        }

        /// For any limits and usage: MemFree <= MemAvailable <= MemTotal <= host, SwapFree <= SwapTotal.
        #[test]
        fn meminfo_figures_are_ordered_and_never_underflow(
            limit in proptest::option::of(any::<u64>()),
            usage in any::<u64>(),
            swap in prop_oneof![
                Just(SwapLimit::NotAccounted),
                proptest::option::of(any::<u64>()).prop_map(SwapLimit::SwapOnly),
                proptest::option::of(any::<u64>()).prop_map(SwapLimit::MemoryPlusSwap),
            ],
            stat in proptest::array::uniform4(any::<u64>()),
        ) {
            let host = "MemTotal:       24683656 kB\nMemFree:        1000 kB\nMemAvailable:   2000 kB\nSwapTotal:       2097148 kB\nSwapFree:        2097148 kB\n";
            let text = render_meminfo(host, &facts(limit, usage, swap, stat));
            let (total, free, available) = (value(&text, "MemTotal"), value(&text, "MemFree"), value(&text, "MemAvailable"));
            prop_assert!(free <= available && available <= total && total <= 24683656);
            prop_assert!(value(&text, "SwapFree") <= value(&text, "SwapTotal"));
            prop_assert!(value(&text, "SwapTotal") <= 2097148);
        }

        /// Spreading keeps the total and is monotonic in the usage.
        #[test]
        fn spread_keeps_totals_and_grows(user in 0u64..1 << 50, more in 0u64..1 << 40, count in 1usize..64) {
            let before = CpuTimes::spread(CpuUsage { user_ns: user, system_ns: 0 }, count, 1e6);
            let after = CpuTimes::spread(CpuUsage { user_ns: user + more, system_ns: 0 }, count, 1e6);
            prop_assert_eq!(before.per_cpu.iter().map(|t| t.user).sum::<u64>(), user / 10_000_000);
            for (b, a) in before.per_cpu.iter().zip(&after.per_cpu) {
                prop_assert!(a.user >= b.user);
            }
        }
    }
}
