//! proc/cpuinfo: the host's blocks of the visible CPUs, renumbered `processor : 0..N-1`, with the
//! topology lines (`physical id`, `siblings`, `core id`, `cpu cores`, `apicid`) of one package of N
//! single-thread cores, as in [`super::topology`].

use super::topology::cpuinfo_topology_value;

/// Renders cpuinfo for `visible` host CPUs. Blocks are separated by blank lines and start with
/// `processor\t: K`, K being the host CPU number; blocks without a processor line (the trailing
/// `Hardware` block on some ARM kernels) pass through. Returns the host's text if no visible CPU has
/// a block, rather than an empty file.
pub fn render_cpuinfo(host_cpuinfo: &str, visible: &[u32]) -> String {
    let blocks: Vec<&str> = host_cpuinfo
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    let mut out = String::with_capacity(host_cpuinfo.len());
    let mut emitted = 0u32;
    for &cpu in visible {
        let Some(block) = blocks.iter().find(|b| processor_number(b) == Some(cpu)) else {
            continue;
        };
        for line in block.lines() {
            let (label, _) = line.split_once(':').unwrap_or((line, ""));
            let topology = cpuinfo_topology_value(label.trim_end(), emitted, visible.len() as u32);
            if processor_number(line).is_some() {
                out.push_str(&format!("{label}: {emitted}\n"));
            } else if let Some(value) = topology {
                out.push_str(&format!("{label}: {value}\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push('\n');
        emitted += 1;
    }
    if emitted == 0 {
        return host_cpuinfo.to_string();
    }
    for block in blocks
        .iter()
        .filter(|b| !b.lines().any(|l| processor_number(l).is_some()))
    {
        // Kernel layout: the trailer ends with a single newline.
        out.push_str(block.trim_matches('\n'));
        out.push('\n');
    }
    out
}

/// The K of a `processor\t: K` line, or of the first such line in a block.
fn processor_number(text: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim_end() == "processor")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "processor\t: 0\nmodel name\t: A\n\nprocessor\t: 1\nmodel name\t: B\n\n";

    #[test]
    fn second_cpu_becomes_processor_zero() {
        assert_eq!(
            render_cpuinfo(HOST, &[1]),
            "processor\t: 0\nmodel name\t: B\n\n"
        );
    }

    #[test]
    fn all_cpus_is_the_host_file() {
        assert_eq!(render_cpuinfo(HOST, &[0, 1]), HOST);
    }

    #[test]
    fn arm_trailer_passes_through() {
        let host =
            "processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\nBogoMIPS\t: 50\n\nHardware\t: X\n";
        assert_eq!(
            render_cpuinfo(host, &[1]),
            "processor\t: 0\nBogoMIPS\t: 50\n\nHardware\t: X\n"
        );
    }

    #[test]
    fn unknown_format_falls_back_to_host() {
        assert_eq!(
            render_cpuinfo("vendor_id : IBM/S390\n", &[0]),
            "vendor_id : IBM/S390\n"
        );
    }
}
