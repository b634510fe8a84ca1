//! Parsers for the value formats cgroup files share. Pure functions over text; they never panic on
//! garbage (property-tested below), they return `None` or an error instead.

/// v1 reports "no limit" as a huge page-aligned number (9223372036854771712 = 2^63 - 4096 on x86_64);
/// anything at or above 2^62 is treated as unlimited, as LXCFS and runc do.
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// A limit as the kernel writes it: v2 `max`, v1 `-1` or a value >= 2^62 mean no limit (`Ok(None)`).
pub fn parse_limit(text: &str) -> Option<Option<u64>> {
    let text = text.trim();
    if text == "max" || text == "-1" {
        return Some(None);
    }
    let value: u64 = text.parse().ok()?;
    Some((value < V1_UNLIMITED_FLOOR).then_some(value))
}

/// Looks up `key` in a flat-keyed file (`memory.stat`, `cpu.stat`, `cpuacct.stat`): lines of `key value`.
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The highest CPU number we accept in a list; the kernel's NR_CPUS tops out at 8192.
const MAX_CPU: u32 = 8191;

/// Parses a kernel CPU list (`0-3,5,7-8`; empty for none) into sorted, deduplicated CPU numbers.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let cpu: u32 = part.trim().parse().ok()?;
                (cpu, cpu)
            }
        };
        if first > last || last > MAX_CPU {
            return None;
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits_in_every_unlimited_spelling() {
        assert_eq!(parse_limit("max\n"), Some(None));
        assert_eq!(parse_limit("-1"), Some(None));
        assert_eq!(parse_limit("9223372036854771712\n"), Some(None));
        assert_eq!(parse_limit("67108864\n"), Some(Some(67108864)));
        assert_eq!(parse_limit("lots"), None);
    }

    #[test]
    fn keyed_values() {
        let stat = "anon 4096\nfile 8192\nfile_mapped 0\n";
        assert_eq!(keyed_value(stat, "file"), Some(8192));
        assert_eq!(keyed_value(stat, "file_mapped"), Some(0));
        assert_eq!(keyed_value(stat, "fil"), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,5,7-8\n"),
            Some(vec![0, 1, 2, 3, 5, 7, 8])
        );
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("\n"), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-4294967295"), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_limit(&s);
            let _ = keyed_value(&s, "file");
            let _ = parse_cpu_list(&s);
        }

        #[test]
        fn cpu_list_round_trips(cpus in proptest::collection::btree_set(0u32..512, 0..40)) {
            let text = cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
            prop_assert_eq!(parse_cpu_list(&text), Some(cpus.into_iter().collect::<Vec<_>>()));
        }
    }
}
