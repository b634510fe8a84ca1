//! proc/swaps: the host's header and, when the container has swap, one virtual line.

use super::meminfo::SwapView;

/// The header and, if the container may swap, a line in the kernel's layout (`swap_show`): name padded
/// to 40 columns, type, size and used in kB, priority. The name and type are LXCFS's `none virtual`.
pub fn render_swaps(host_swaps: &str, swap: SwapView) -> String {
    let header = host_swaps
        .lines()
        .next()
        .unwrap_or("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority");
    let mut out = format!("{header}\n");
    if swap.total_kb > 0 {
        let pad = |n: u64| if n < 10_000_000 { "\t" } else { "" };
        out.push_str(&format!(
            "{:<40}virtual\t{}\t{}{}\t{}0\n",
            "none",
            swap.total_kb,
            pad(swap.total_kb),
            swap.used_kb,
            pad(swap.used_kb)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

    #[test]
    fn no_swap_is_the_header_alone() {
        assert_eq!(
            render_swaps(
                HEADER,
                SwapView {
                    total_kb: 0,
                    used_kb: 0
                }
            ),
            HEADER
        );
    }

    #[test]
    fn swap_line() {
        let out = render_swaps(
            HEADER,
            SwapView {
                total_kb: 65536,
                used_kb: 1024,
            },
        );
        assert_eq!(
            out.lines().nth(1),
            Some("none                                    virtual\t65536\t\t1024\t\t0")
        );
    }
}
