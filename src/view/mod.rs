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
/// to 16 columns, the value right-aligned in 8, then ` kB`. Written without `format!`: this runs for
/// every line of every read.
pub(crate) fn meminfo_line(out: &mut String, key: &str, kb: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut value = kb;
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    out.push_str(key);
    out.push(':');
    for _ in key.len() + 1..16 {
        out.push(' ');
    }
    for _ in digits.len()..8 {
        out.push(' ');
    }
    // The digits are ASCII.
    out.extend(digits.iter().map(|&d| d as char));
    out.push_str(" kB\n");
}

#[cfg(test)]
mod tests {
    use super::meminfo_line;

    #[test]
    fn meminfo_lines_match_the_kernel_layout() {
        let mut out = String::new();
        meminfo_line(&mut out, "MemTotal", 65536);
        meminfo_line(&mut out, "Inactive(file)", 0);
        meminfo_line(&mut out, "DirectMap4k", 123456789);
        meminfo_line(&mut out, "VmallocTotal", u64::MAX);
        assert_eq!(
            out,
            "MemTotal:          65536 kB\nInactive(file):        0 kB\nDirectMap4k:    123456789 kB\n\
VmallocTotal:   18446744073709551615 kB\n"
        );
    }
}
