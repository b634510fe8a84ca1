//! proc/stat: `cpu` and `cpu0..cpu(N-1)` from the cgroup's CPU time spread over the N visible CPUs,
//! idle = container uptime - busy per CPU; every other line is the host's.

use std::fmt::Write;

use super::USER_HZ;
use crate::cgroup::CpuUsage;

/// One CPU's counters, in USER_HZ ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub system: u64,
    pub idle: u64,
}

/// Per-CPU counters for the N visible CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub per_cpu: Vec<CpuTicks>,
}

impl CpuTimes {
    /// Spreads the cgroup's CPU time over `count` CPUs (the remainder goes to the first CPUs, so each
    /// CPU's share only grows as the total grows); idle is `uptime` minus the CPU's busy time.
    pub fn spread(usage: CpuUsage, count: usize, uptime_secs: f64) -> CpuTimes {
        let count = count.max(1);
        let to_ticks = |ns: u64| ns / (1_000_000_000 / USER_HZ);
        let share = |total: u64, i: usize| {
            let n = count as u64;
            total / n + u64::from((i as u64) < total % n)
        };
        let uptime_ticks = (uptime_secs.max(0.0) * USER_HZ as f64) as u64;
        let (user, system) = (to_ticks(usage.user_ns), to_ticks(usage.system_ns));
        let per_cpu = (0..count)
            .map(|i| {
                let (user, system) = (share(user, i), share(system, i));
                CpuTicks {
                    user,
                    system,
                    idle: uptime_ticks.saturating_sub(user.saturating_add(system)),
                }
            })
            .collect();
        CpuTimes { per_cpu }
    }

    /// Keeps every counter at least at its previous value, so tools that divide deltas (top, htop)
    /// never see time run backwards. A change in CPU count starts afresh.
    pub fn at_least(mut self, previous: &CpuTimes) -> CpuTimes {
        if previous.per_cpu.len() == self.per_cpu.len() {
            for (now, before) in self.per_cpu.iter_mut().zip(&previous.per_cpu) {
                now.user = now.user.max(before.user);
                now.system = now.system.max(before.system);
                now.idle = now.idle.max(before.idle);
            }
        }
        self
    }

    fn total(&self) -> CpuTicks {
        self.per_cpu
            .iter()
            .fold(CpuTicks::default(), |sum, t| CpuTicks {
                user: sum.user.saturating_add(t.user),
                system: sum.system.saturating_add(t.system),
                idle: sum.idle.saturating_add(t.idle),
            })
    }
}

/// The container's `procs_running` and `procs_blocked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Procs {
    pub running: u32,
    pub blocked: u32,
}

/// Renders /proc/stat: the host's lines with its `cpu*` lines replaced by the container's, and its
/// `procs_running` / `procs_blocked` too when `procs` is known.
pub fn render_stat(host_stat: &str, times: &CpuTimes, procs: Option<Procs>) -> String {
    let mut out = String::with_capacity(host_stat.len());
    let mut cpu_lines_written = false;
    for line in host_stat.lines() {
        if line.starts_with("cpu") {
            if !cpu_lines_written {
                write_cpu_line(&mut out, "cpu ", times.total());
                for (i, ticks) in times.per_cpu.iter().enumerate() {
                    write_cpu_line(&mut out, &format!("cpu{i}"), *ticks);
                }
                cpu_lines_written = true;
            }
            continue;
        }
        if let Some(procs) = procs {
            if line.starts_with("procs_running ") {
                let _ = writeln!(out, "procs_running {}", procs.running);
                continue;
            }
            if line.starts_with("procs_blocked ") {
                let _ = writeln!(out, "procs_blocked {}", procs.blocked);
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `cpu0 user nice system idle iowait irq softirq steal guest guest_nice`; the aggregate line's label
/// is `cpu ` so that it is followed by two spaces, as the kernel writes it.
fn write_cpu_line(out: &mut String, label: &str, t: CpuTicks) {
    let _ = writeln!(
        out,
        "{label} {} 0 {} {} 0 0 0 0 0 0",
        t.user, t.system, t.idle
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 5 0 5 50 0 0 0 0 0 0\ncpu1 5 0 5 50 0 0 0 0 0 0\n\
intr 1 2\nctxt 3\nbtime 1700000000\nprocesses 9\nprocs_running 1\nprocs_blocked 0\nsoftirq 1 2\n";

    #[test]
    fn one_cpu_container() {
        let usage = CpuUsage {
            user_ns: 1_500_000_000,
            system_ns: 500_000_000,
        };
        let times = CpuTimes::spread(usage, 1, 10.0);
        assert_eq!(
            render_stat(HOST, &times, None),
            "cpu  150 0 50 800 0 0 0 0 0 0\ncpu0 150 0 50 800 0 0 0 0 0 0\n\
intr 1 2\nctxt 3\nbtime 1700000000\nprocesses 9\nprocs_running 1\nprocs_blocked 0\nsoftirq 1 2\n"
        );
    }

    #[test]
    fn spread_keeps_the_total_and_never_underflows() {
        let usage = CpuUsage {
            user_ns: 30_000_000,
            system_ns: 0,
        };
        let times = CpuTimes::spread(usage, 2, 0.0);
        assert_eq!(
            times.per_cpu[0],
            CpuTicks {
                user: 2,
                system: 0,
                idle: 0
            }
        );
        assert_eq!(
            times.per_cpu[1],
            CpuTicks {
                user: 1,
                system: 0,
                idle: 0
            }
        );
    }

    #[test]
    fn counters_never_go_back() {
        let before = CpuTimes {
            per_cpu: vec![CpuTicks {
                user: 5,
                system: 5,
                idle: 90,
            }],
        };
        let now = CpuTimes {
            per_cpu: vec![CpuTicks {
                user: 6,
                system: 5,
                idle: 89,
            }],
        };
        assert_eq!(
            now.at_least(&before).per_cpu[0],
            CpuTicks {
                user: 6,
                system: 5,
                idle: 90
            }
        );
    }

    #[test]
    fn procs_lines_are_the_container_s_when_known() {
        let usage = CpuUsage {
            user_ns: 0,
            system_ns: 0,
        };
        let times = CpuTimes::spread(usage, 1, 1.0);
        let text = render_stat(
            HOST,
            &times,
            Some(Procs {
                running: 3,
                blocked: 2,
            }),
        );
        assert!(
            text.contains("\nprocesses 9\nprocs_running 3\nprocs_blocked 2\nsoftirq"),
            "{text}"
        );
    }
}
