//! Pure renderers: (host file, container facts) -> the file the reader sees. No I/O here; the rules are
//! DESIGN.md's "What each file says", one module per file. All arithmetic saturates.

pub mod cpuinfo;
pub mod cpus;
pub mod meminfo;
pub mod stat;
pub mod swaps;
pub mod uptime;

/// USER_HZ, the unit of /proc/stat; 100 on every architecture vproc supports.
pub const USER_HZ: u64 = 100;

/// Formats one meminfo line exactly as the kernel does (`show_val_kb`): the label with its colon padded
/// to 16 columns, the value right-aligned in 8, then ` kB`.
pub(crate) fn meminfo_line(out: &mut String, key: &str, kb: u64) {
    use std::fmt::Write;
    let label = format!("{key}:");
    let _ = writeln!(out, "{label:<16}{kb:>8} kB");
}
