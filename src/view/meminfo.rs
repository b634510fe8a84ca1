//! proc/meminfo: MemTotal from the effective memory limit, the rest from the cgroup's usage and
//! memory.stat; lines we do not virtualize pass through from the host in the host's order.

use super::meminfo_line;
use crate::cgroup::{MemoryLimits, MemoryUsage, SwapLimit};
use crate::host::meminfo_kb;

/// What the meminfo and swaps views know about the reader's memory cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFacts {
    pub limits: MemoryLimits,
    pub usage: MemoryUsage,
    /// False with `--disable-swap`: the container sees no swap at all.
    pub swap_enabled: bool,
}

/// The container's swap as meminfo and swaps show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapView {
    pub total_kb: u64,
    pub used_kb: u64,
}

/// The container's MemTotal in kB: min(limit, host MemTotal).
pub fn mem_total_kb(host_total_kb: u64, limits: &MemoryLimits) -> u64 {
    limits
        .limit_bytes
        .map_or(host_total_kb, |limit| (limit / 1024).min(host_total_kb))
}

/// SwapTotal and used swap: v2 min(swap.max, host); v1 memsw limit minus memory limit; 0 without
/// swap accounting or with swap disabled.
pub fn swap_view(host_meminfo: &str, facts: &MemoryFacts) -> SwapView {
    let host_swap_kb = meminfo_kb(host_meminfo, "SwapTotal").unwrap_or(0);
    let host_total_kb = meminfo_kb(host_meminfo, "MemTotal").unwrap_or(0);
    let total_kb = if !facts.swap_enabled {
        0
    } else {
        match facts.limits.swap {
            SwapLimit::NotAccounted => 0,
            SwapLimit::SwapOnly(limit) => {
                limit.map_or(host_swap_kb, |l| (l / 1024).min(host_swap_kb))
            }
            SwapLimit::MemoryPlusSwap(None) => host_swap_kb,
            SwapLimit::MemoryPlusSwap(Some(memsw)) => {
                let memory_kb = mem_total_kb(host_total_kb, &facts.limits);
                (memsw / 1024).saturating_sub(memory_kb).min(host_swap_kb)
            }
        }
    };
    let used_kb = facts.usage.swap_used_bytes.unwrap_or(0) / 1024;
    SwapView {
        total_kb,
        used_kb: used_kb.min(total_kb),
    }
}

/// Renders the container's meminfo from the host's.
pub fn render_meminfo(host_meminfo: &str, facts: &MemoryFacts) -> String {
    let host_total_kb = meminfo_kb(host_meminfo, "MemTotal").unwrap_or(0);
    let stat = &facts.usage.stat;
    let kb = |bytes: u64| bytes / 1024;

    let total = mem_total_kb(host_total_kb, &facts.limits);
    let free = total.saturating_sub(kb(facts.usage.usage_bytes));
    let reclaimable = stat
        .active_file
        .saturating_add(stat.inactive_file)
        .saturating_add(stat.slab_reclaimable.unwrap_or(0));
    let available = free.saturating_add(kb(reclaimable)).min(total);
    let swap = swap_view(host_meminfo, facts);
    let slab_reclaimable = kb(stat.slab_reclaimable.unwrap_or(0));
    let slab_unreclaimable = kb(stat.slab_unreclaimable.unwrap_or(0));

    let mut out = String::with_capacity(host_meminfo.len());
    for line in host_meminfo.lines() {
        let key = line
            .as_bytes()
            .iter()
            .position(|&b| b == b':')
            .map_or("", |colon| &line[..colon]);
        let value = match key {
            "MemTotal" => total,
            "MemFree" => free,
            "MemAvailable" => available,
            "Buffers" | "SwapCached" => 0,
            "Cached" => kb(stat.file),
            "Active" => kb(stat.active_anon.saturating_add(stat.active_file)),
            "Inactive" => kb(stat.inactive_anon.saturating_add(stat.inactive_file)),
            "Active(anon)" => kb(stat.active_anon),
            "Inactive(anon)" => kb(stat.inactive_anon),
            "Active(file)" => kb(stat.active_file),
            "Inactive(file)" => kb(stat.inactive_file),
            "Unevictable" => kb(stat.unevictable),
            "SwapTotal" => swap.total_kb,
            "SwapFree" => swap.total_kb.saturating_sub(swap.used_kb),
            "Dirty" => kb(stat.dirty),
            "Writeback" => kb(stat.writeback),
            "AnonPages" => kb(stat.anon),
            "Mapped" => kb(stat.mapped),
            "Shmem" => kb(stat.shmem),
            "Slab" => slab_reclaimable.saturating_add(slab_unreclaimable),
            "SReclaimable" | "KReclaimable" => slab_reclaimable,
            "SUnreclaim" => slab_unreclaimable,
            _ => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        meminfo_line(&mut out, key, value);
    }
    out
}
