//! cgroup v2: one unified hierarchy; the root cgroup has no limit files.

use super::parse::keyed_value;
use super::{
    CgroupDir, CpuQuota, CpuUsage, MemoryLimits, MemoryStat, MemoryUsage, SwapLimit, parse_number,
};
use crate::error::{Error, Result};

const MEMORY_MAX: &str = "memory.max";
const MEMORY_CURRENT: &str = "memory.current";
const MEMORY_SWAP_MAX: &str = "memory.swap.max";
const MEMORY_SWAP_CURRENT: &str = "memory.swap.current";
const MEMORY_STAT: &str = "memory.stat";
const CPU_MAX: &str = "cpu.max";
const CPU_STAT: &str = "cpu.stat";
const CPUSET_CPUS_EFFECTIVE: &str = "cpuset.cpus.effective";
const CPUSET_CPUS: &str = "cpuset.cpus";

/// memory.swap.max exists in non-root cgroups when the kernel accounts swap; it limits swap alone.
pub(super) fn memory_limits(cgroup: &CgroupDir) -> Result<MemoryLimits> {
    cgroup.memory_limits_from(MEMORY_MAX, MEMORY_SWAP_MAX, SwapLimit::SwapOnly)
}

pub(super) fn memory_usage(cgroup: &CgroupDir) -> Result<MemoryUsage> {
    let current_path = cgroup.path.join(MEMORY_CURRENT);
    let usage_bytes = parse_number(&current_path, "usage", &cgroup.read(MEMORY_CURRENT)?)?;
    let swap_used_bytes = match cgroup.read_optional(MEMORY_SWAP_CURRENT)? {
        Some(text) => Some(parse_number(
            &cgroup.path.join(MEMORY_SWAP_CURRENT),
            "swap usage",
            &text,
        )?),
        None => None,
    };
    let stat = cgroup.read(MEMORY_STAT)?;
    let key = |name: &str| keyed_value(&stat, name).unwrap_or(0);
    let stat = MemoryStat {
        anon: key("anon"),
        file: key("file"),
        active_anon: key("active_anon"),
        inactive_anon: key("inactive_anon"),
        active_file: key("active_file"),
        inactive_file: key("inactive_file"),
        unevictable: key("unevictable"),
        shmem: key("shmem"),
        mapped: key("file_mapped"),
        dirty: key("file_dirty"),
        writeback: key("file_writeback"),
        slab_reclaimable: keyed_value(&stat, "slab_reclaimable"),
        slab_unreclaimable: keyed_value(&stat, "slab_unreclaimable"),
    };
    Ok(MemoryUsage {
        usage_bytes,
        swap_used_bytes,
        stat,
    })
}

/// `cpu.max` is "quota period", quota `max` for none: "50000 100000" is half a CPU every 100 ms.
pub(super) fn cpu_quota(cgroup: &CgroupDir) -> Result<Option<CpuQuota>> {
    cgroup.min_over_ancestors(
        |dir| {
            let path = dir.join(CPU_MAX);
            let Some(text) = super::read_optional(&path)? else {
                return Ok(None);
            };
            let mut fields = text.split_whitespace();
            let (Some(quota), Some(period)) = (fields.next(), fields.next()) else {
                return Err(Error::parse(&path, "quota period", &text));
            };
            if quota == "max" {
                return Ok(None);
            }
            let quota_us = quota
                .parse()
                .map_err(|_| Error::parse(&path, "quota", &text))?;
            let period_us = period
                .parse()
                .map_err(|_| Error::parse(&path, "period", &text))?;
            Ok(Some(CpuQuota {
                quota_us,
                period_us,
            }))
        },
        |a, b| a.is_tighter_than(*b),
    )
}

/// `cpuset.cpus.effective` already folds in the ancestors; where the cpuset controller is not enabled
/// for the cgroup it is missing, and the nearest ancestor's `cpuset.cpus(.effective)` applies.
pub(super) fn cpuset(cgroup: &CgroupDir) -> Result<Option<Vec<u32>>> {
    match cgroup.nearest_cpu_list(CPUSET_CPUS_EFFECTIVE)? {
        Some(cpus) => Ok(Some(cpus)),
        None => cgroup.nearest_cpu_list(CPUSET_CPUS),
    }
}

/// `cpu.stat` reports `user_usec` and `system_usec` in microseconds.
pub(super) fn cpu_usage(cgroup: &CgroupDir) -> Result<CpuUsage> {
    let path = cgroup.path.join(CPU_STAT);
    let text = cgroup.read(CPU_STAT)?;
    let usec = |field: &'static str| {
        keyed_value(&text, field).ok_or_else(|| Error::MissingField {
            path: path.clone(),
            field,
        })
    };
    Ok(CpuUsage {
        user_ns: usec("user_usec")?.saturating_mul(1000),
        system_ns: usec("system_usec")?.saturating_mul(1000),
    })
}
