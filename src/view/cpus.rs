//! Which host CPUs a container sees, and the `0-(N-1)` lists of sys/devices/system/cpu.

use crate::cgroup::CpuQuota;

/// How the visible CPU count is chosen (`--cpu-view`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuCountRule {
    /// min(|cpuset|, ceil(quota / period)): what the container can really use (the default).
    #[default]
    QuotaAndCpuset,
    /// |cpuset| only, ignoring CFS quota (LXCFS without --enable-cfs).
    Cpuset,
}

/// The host CPUs the container sees, in order: the cpuset's CPUs that are online on the host, cut to
/// ceil(quota) when the rule counts quota. Never empty while the host has a CPU online.
pub fn visible_cpus(
    cpuset: Option<&[u32]>,
    quota: Option<CpuQuota>,
    host_online: &[u32],
    rule: CpuCountRule,
) -> Vec<u32> {
    let mut cpus: Vec<u32> = match cpuset {
        Some(set) => set
            .iter()
            .copied()
            .filter(|c| host_online.contains(c))
            .collect(),
        None => host_online.to_vec(),
    };
    if cpus.is_empty() {
        cpus = host_online.to_vec();
    }
    if let (Some(quota), CpuCountRule::QuotaAndCpuset) = (quota, rule) {
        cpus.truncate(quota.cpus_ceil() as usize);
    }
    cpus
}

/// The kernel's list format for CPUs 0..count-1: `0` for one CPU, `0-3` for four.
pub fn render_cpu_range(count: usize) -> String {
    match count {
        0 | 1 => "0\n".to_string(),
        n => format!("0-{}\n", n - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF: CpuQuota = CpuQuota {
        quota_us: 50000,
        period_us: 100000,
    };
    const ONE_AND_HALF: CpuQuota = CpuQuota {
        quota_us: 150000,
        period_us: 100000,
    };

    #[test]
    fn quota_cuts_the_cpuset() {
        let online = [0, 1, 2, 3];
        assert_eq!(
            visible_cpus(
                Some(&[2, 3]),
                Some(HALF),
                &online,
                CpuCountRule::QuotaAndCpuset
            ),
            vec![2]
        );
        assert_eq!(
            visible_cpus(
                None,
                Some(ONE_AND_HALF),
                &online,
                CpuCountRule::QuotaAndCpuset
            ),
            vec![0, 1]
        );
        assert_eq!(
            visible_cpus(
                Some(&[1]),
                Some(ONE_AND_HALF),
                &online,
                CpuCountRule::QuotaAndCpuset
            ),
            vec![1]
        );
    }

    #[test]
    fn cpuset_rule_ignores_quota() {
        assert_eq!(
            visible_cpus(Some(&[0, 1]), Some(HALF), &[0, 1], CpuCountRule::Cpuset),
            vec![0, 1]
        );
    }

    #[test]
    fn offline_cpuset_falls_back_to_host() {
        assert_eq!(
            visible_cpus(Some(&[7]), None, &[0, 1], CpuCountRule::QuotaAndCpuset),
            vec![0, 1]
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(render_cpu_range(1), "0\n");
        assert_eq!(render_cpu_range(2), "0-1\n");
        assert_eq!(render_cpu_range(64), "0-63\n");
    }
}
