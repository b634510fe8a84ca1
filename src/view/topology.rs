//! The CPU topology a container sees: its N visible CPUs as one package of N cores, one thread each,
//! numbered 0..N-1. The same model is written into proc/cpuinfo (`physical id`, `siblings`, `core id`,
//! `cpu cores`, `apicid`) and into `cpuK/topology/*` below sys/devices/system/cpu, so lscpu, psutil's
//! `cpu_count(logical=False)` and hwloc all count N cores: the host's SMT pairs and packages cannot be
//! told apart once the container sees only part of them, and a count of N is what sizes thread pools
//! right. Cache `shared_cpu_list`/`shared_cpu_map` keep the host's sharing, translated to the visible
//! CPUs' numbers.

use std::path::Path;

use crate::cgroup::parse::parse_cpu_list;

/// Which CPUs of the container a `cpuK/...` file names, in the one-package model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// Only CPU K itself (its core, its thread siblings, its cluster).
    Own,
    /// All N visible CPUs (its package, die, core siblings).
    All,
    /// The host's set translated to visible numbers (cache sharing).
    Translated,
}

/// How a file's set is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    List,
    Mask,
}

/// What a file below `cpuK/` says, when the container's view differs from the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rewrite {
    /// A single id: `core_id` = K, `physical_package_id` and `die_id` = 0.
    Id(IdOf),
    Set(Span, Format),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdOf {
    Core,
    Package,
}

/// The rewrite of the file at `relative` below a `cpuK` directory; `None` passes the host's through.
fn rewrite_of(relative: &Path) -> Option<Rewrite> {
    let name = relative.file_name()?.to_str()?;
    let parent = relative.parent()?;
    if parent == Path::new("topology") {
        let format = if name.ends_with("_list") {
            Format::List
        } else {
            Format::Mask
        };
        return match name.trim_end_matches("_list") {
            "core_id" => Some(Rewrite::Id(IdOf::Core)),
            "physical_package_id" | "die_id" => Some(Rewrite::Id(IdOf::Package)),
            "core_cpus" | "thread_siblings" | "cluster_cpus" => {
                Some(Rewrite::Set(Span::Own, format))
            }
            "core_siblings" | "package_cpus" | "die_cpus" => Some(Rewrite::Set(Span::All, format)),
            _ => None,
        };
    }
    let in_cache = parent.parent() == Some(Path::new("cache"))
        && parent
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("index"));
    match name {
        "shared_cpu_list" if in_cache => Some(Rewrite::Set(Span::Translated, Format::List)),
        "shared_cpu_map" if in_cache => Some(Rewrite::Set(Span::Translated, Format::Mask)),
        _ => None,
    }
}

/// True when the file at `relative` below a `cpuK` directory is rewritten for the container.
pub fn is_rewritten(relative: &Path) -> bool {
    rewrite_of(relative).is_some()
}

/// The file at `relative` below the container's `cpu{slot}` directory, given the host's text of it
/// (from the host directory of `visible[slot]`) and the container's visible host CPUs.
pub fn render_topology_file(
    relative: &Path,
    host_text: &str,
    slot: u32,
    visible: &[u32],
) -> String {
    let count = visible.len() as u32;
    let Some(rewrite) = rewrite_of(relative) else {
        return host_text.to_string();
    };
    let (span, format) = match rewrite {
        Rewrite::Id(IdOf::Core) => return format!("{slot}\n"),
        Rewrite::Id(IdOf::Package) => return "0\n".to_string(),
        Rewrite::Set(span, format) => (span, format),
    };
    let cpus: Vec<u32> = match span {
        Span::Own => vec![slot],
        Span::All => (0..count).collect(),
        Span::Translated => {
            let Some(host_set) = parse_host_set(host_text, format) else {
                return host_text.to_string();
            };
            let mut cpus: Vec<u32> = visible
                .iter()
                .enumerate()
                .filter(|(_, cpu)| host_set.contains(cpu))
                .map(|(k, _)| k as u32)
                .collect();
            if !cpus.contains(&slot) {
                cpus.push(slot);
                cpus.sort_unstable();
            }
            cpus
        }
    };
    match format {
        Format::List => format!("{}\n", cpu_list(&cpus)),
        Format::Mask => format!("{}\n", cpu_mask(&cpus, mask_digits(host_text))),
    }
}

/// The host's set in a list (`0-3,8`) or mask (`ff,00000000`) file.
fn parse_host_set(text: &str, format: Format) -> Option<Vec<u32>> {
    match format {
        Format::List => parse_cpu_list(text),
        Format::Mask => {
            let mut cpus = Vec::new();
            let digits: Vec<u32> = text
                .trim()
                .chars()
                .filter(|c| *c != ',')
                .map(|c| c.to_digit(16))
                .collect::<Option<_>>()?;
            for (position, digit) in digits.iter().rev().enumerate() {
                for bit in 0..4 {
                    if digit & (1 << bit) != 0 {
                        cpus.push(position as u32 * 4 + bit);
                    }
                }
            }
            cpus.sort_unstable();
            Some(cpus)
        }
    }
}

/// The kernel's list format (`%*pbl`): ranges joined by commas, `0-3,5`.
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

/// How many hex digits the host's masks have (the kernel prints nr_cpu_ids bits).
fn mask_digits(host_text: &str) -> usize {
    host_text
        .trim()
        .chars()
        .filter(|c| *c != ',')
        .count()
        .max(1)
}

/// The kernel's mask format (`%*pb`): `digits` hex digits, in comma-separated groups of eight from the
/// right (`3`, `00000000,00000003`).
pub fn cpu_mask(cpus: &[u32], digits: usize) -> String {
    let digits = digits.max(cpus.iter().max().map_or(1, |&m| m as usize / 4 + 1));
    let mut nibbles = vec![0u8; digits];
    for &cpu in cpus {
        nibbles[cpu as usize / 4] |= 1 << (cpu % 4);
    }
    let mut out = String::with_capacity(digits + digits / 8);
    for position in (0..digits).rev() {
        out.push(char::from_digit(u32::from(nibbles[position]), 16).unwrap_or('0'));
        if position > 0 && position % 8 == 0 {
            out.push(',');
        }
    }
    out
}

/// cpuinfo's topology lines for the container's CPU `slot` of `count`, in the one-package model; `None`
/// for lines that stay the host's.
pub fn cpuinfo_topology_value(key: &str, slot: u32, count: u32) -> Option<u32> {
    match key {
        "physical id" => Some(0),
        "siblings" | "cpu cores" => Some(count),
        "core id" | "apicid" | "initial apicid" => Some(slot),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(relative: &str, host: &str, slot: u32, visible: &[u32]) -> String {
        render_topology_file(Path::new(relative), host, slot, visible)
    }

    #[test]
    fn one_package_of_n_single_thread_cores() {
        // Host: CPUs 2 and 3 are SMT siblings of core 1 in package 1.
        let visible = [3, 6, 7];
        assert_eq!(render("topology/core_id", "1\n", 0, &visible), "0\n");
        assert_eq!(render("topology/core_id", "5\n", 2, &visible), "2\n");
        assert_eq!(
            render("topology/physical_package_id", "1\n", 1, &visible),
            "0\n"
        );
        assert_eq!(
            render("topology/thread_siblings_list", "2-3\n", 0, &visible),
            "0\n"
        );
        assert_eq!(
            render("topology/core_cpus_list", "6-7\n", 2, &visible),
            "2\n"
        );
        assert_eq!(
            render("topology/core_siblings_list", "0-7\n", 1, &visible),
            "0-2\n"
        );
        assert_eq!(render("topology/package_cpus", "f0\n", 1, &visible), "07\n");
        assert_eq!(
            render("topology/thread_siblings", "0c\n", 2, &visible),
            "04\n"
        );
        assert_eq!(
            render("cpuidle/state0/name", "POLL\n", 0, &visible),
            "POLL\n"
        );
    }

    #[test]
    fn cache_sharing_is_translated_to_visible_numbers() {
        let visible = [1, 2, 3];
        assert_eq!(
            render("cache/index3/shared_cpu_list", "0-3\n", 1, &visible),
            "0-2\n"
        );
        assert_eq!(
            render("cache/index0/shared_cpu_list", "2\n", 1, &visible),
            "1\n"
        );
        assert_eq!(
            render("cache/index2/shared_cpu_map", "0000000c\n", 1, &visible),
            "00000006\n"
        );
        assert_eq!(render("cache/index0/level", "1\n", 0, &visible), "1\n");
    }

    #[test]
    fn masks_keep_the_kernel_s_width_and_grouping() {
        assert_eq!(cpu_mask(&[0, 1], 1), "3");
        assert_eq!(cpu_mask(&[0, 33], 16), "00000002,00000001");
        assert_eq!(cpu_mask(&[5], 1), "20");
        assert_eq!(cpu_list(&[0, 1, 2, 4, 6, 7]), "0-2,4,6-7");
        assert_eq!(
            parse_host_set("00000002,00000001", Format::Mask),
            Some(vec![0, 33])
        );
    }

    #[test]
    fn cpuinfo_lines_follow_the_same_model() {
        assert_eq!(cpuinfo_topology_value("siblings", 1, 3), Some(3));
        assert_eq!(cpuinfo_topology_value("core id", 1, 3), Some(1));
        assert_eq!(cpuinfo_topology_value("initial apicid", 2, 3), Some(2));
        assert_eq!(cpuinfo_topology_value("model name", 2, 3), None);
    }
}
