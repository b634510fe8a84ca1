//! proc/uptime: the time since the reader's pid-namespace init started, and the container's idle time.

/// `uptime idle` with two decimals, as the kernel writes it. Idle = CPUs x uptime - CPU time used,
/// at least 0.
pub fn render_uptime(uptime_secs: f64, cpu_count: usize, cpu_used_secs: f64) -> String {
    let uptime = uptime_secs.max(0.0);
    let idle = (uptime * cpu_count as f64 - cpu_used_secs).max(0.0);
    format!("{uptime:.2} {idle:.2}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_kernel() {
        assert_eq!(render_uptime(12.345, 2, 4.0), "12.35 20.69\n");
        assert_eq!(render_uptime(0.5, 1, 3.0), "0.50 0.00\n");
        assert_eq!(render_uptime(-1.0, 1, 0.0), "0.00 0.00\n");
    }
}
