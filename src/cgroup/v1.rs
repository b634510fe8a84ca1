//! cgroup v1: the memory, cpu, cpuacct and cpuset controllers, each in its own hierarchy (or co-mounted).

use super::parse::keyed_value;
use super::{
    CgroupDir, CpuQuota, CpuUsage, MemoryLimits, MemoryStat, MemoryUsage, SwapLimit, parse_number,
};
use crate::error::{Error, Result};
// Also the unit of `cpuacct.stat`.
use crate::view::USER_HZ;

const MEMORY_LIMIT: &str = "memory.limit_in_bytes";
const MEMORY_USAGE: &str = "memory.usage_in_bytes";
const MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";
const MEMSW_USAGE: &str = "memory.memsw.usage_in_bytes";
const MEMORY_STAT: &str = "memory.stat";
const CFS_QUOTA: &str = "cpu.cfs_quota_us";
const CFS_PERIOD: &str = "cpu.cfs_period_us";
const CPUSET_CPUS: &str = "cpuset.cpus";
const CPUACCT_USAGE_ALL: &str = "cpuacct.usage_all";
const CPUACCT_STAT: &str = "cpuacct.stat";

/// memsw files exist only when the kernel accounts swap (CONFIG_MEMCG_SWAP and swapaccount=1); the memsw
/// limit covers memory plus swap.
pub(super) fn memory_limits(cgroup: &CgroupDir) -> Result<MemoryLimits> {
    cgroup.memory_limits_from(MEMORY_LIMIT, MEMSW_LIMIT, SwapLimit::MemoryPlusSwap)
}

pub(super) fn memory_usage(cgroup: &CgroupDir) -> Result<MemoryUsage> {
    let usage_path = cgroup.path.join(MEMORY_USAGE);
    let usage_bytes = parse_number(&usage_path, "usage", &cgroup.read(MEMORY_USAGE)?)?;
    let swap_used_bytes = match cgroup.read_optional(MEMSW_USAGE)? {
        Some(text) => {
            let memsw = parse_number(&cgroup.path.join(MEMSW_USAGE), "usage", &text)?;
            Some(memsw.saturating_sub(usage_bytes))
        }
        None => None,
    };
    let stat = cgroup.read(MEMORY_STAT)?;
    // The hierarchical `total_*` keys include descendants, like v2's memory.stat does.
    let key = |name: &str| keyed_value(&stat, name).unwrap_or(0);
    let stat = MemoryStat {
        anon: key("total_rss"),
        file: key("total_cache"),
        active_anon: key("total_active_anon"),
        inactive_anon: key("total_inactive_anon"),
        active_file: key("total_active_file"),
        inactive_file: key("total_inactive_file"),
        unevictable: key("total_unevictable"),
        shmem: key("total_shmem"),
        mapped: key("total_mapped_file"),
        dirty: key("total_dirty"),
        writeback: key("total_writeback"),
        slab_reclaimable: None,
        slab_unreclaimable: None,
    };
    Ok(MemoryUsage {
        usage_bytes,
        swap_used_bytes,
        stat,
    })
}

/// `cpu.cfs_quota_us` is -1 for no limit, else microseconds per `cpu.cfs_period_us`
/// (50000 over 100000 -> half a CPU).
pub(super) fn cpu_quota(cgroup: &CgroupDir) -> Result<Option<CpuQuota>> {
    cgroup.min_over_ancestors(
        |dir| {
            let quota_path = dir.join(CFS_QUOTA);
            let Some(quota) = super::read_optional(&quota_path)? else {
                return Ok(None);
            };
            let quota = quota.trim();
            if quota == "-1" {
                return Ok(None);
            }
            let quota_us = quota
                .parse()
                .map_err(|_| Error::parse(&quota_path, "quota", quota))?;
            let period_path = dir.join(CFS_PERIOD);
            let period = crate::error::read_to_string(&period_path)?;
            let period_us = parse_number(&period_path, "period", &period)?;
            Ok(Some(CpuQuota {
                quota_us,
                period_us,
            }))
        },
        |a, b| a.is_tighter_than(*b),
    )
}

/// `cpuset.cpus` of the nearest level that names any CPU.
pub(super) fn cpuset(cgroup: &CgroupDir) -> Result<Option<Vec<u32>>> {
    cgroup.nearest_cpu_list(CPUSET_CPUS)
}

/// `cpuacct.usage_all` has a header `cpu user system`, then one line per CPU in nanoseconds;
/// older kernels lack it, so fall back to `cpuacct.stat` (`user N` / `system N` in USER_HZ).
pub(super) fn cpu_usage(cgroup: &CgroupDir) -> Result<CpuUsage> {
    if let Some(text) = cgroup.read_optional(CPUACCT_USAGE_ALL)? {
        let path = cgroup.path.join(CPUACCT_USAGE_ALL);
        let mut usage = CpuUsage::default();
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace().skip(1).map(str::parse::<u64>);
            match (fields.next(), fields.next()) {
                (Some(Ok(user)), Some(Ok(system))) => {
                    usage.user_ns = usage.user_ns.saturating_add(user);
                    usage.system_ns = usage.system_ns.saturating_add(system);
                }
                _ => return Err(Error::parse(&path, "per-cpu usage", line)),
            }
        }
        return Ok(usage);
    }
    let path = cgroup.path.join(CPUACCT_STAT);
    let text = cgroup.read(CPUACCT_STAT)?;
    let ticks = |field: &'static str| {
        keyed_value(&text, field).ok_or_else(|| Error::MissingField {
            path: path.clone(),
            field,
        })
    };
    let ns_per_tick = 1_000_000_000 / USER_HZ;
    Ok(CpuUsage {
        user_ns: ticks("user")?.saturating_mul(ns_per_tick),
        system_ns: ticks("system")?.saturating_mul(ns_per_tick),
    })
}
