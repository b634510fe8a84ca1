//! sysinfo(2)'s `struct sysinfo`, taken from the container's own proc/meminfo, proc/uptime and
//! proc/loadavg as rendered for the caller: one source of truth, so busybox `free` and `uptime` (which
//! call sysinfo) print what procps `free` and `uptime` (which read the files) print.

use crate::host::{meminfo_kb, uptime_seconds};

/// `sizeof(struct sysinfo)` on x86_64, what the kernel copies out.
pub const SIZE: usize = 112;

/// The fields of `struct sysinfo` (include/uapi/linux/sysinfo.h), in bytes (`mem_unit` 1, as the
/// kernel gives on 64-bit machines).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sysinfo {
    /// Seconds since boot (here: since the container started), rounded up as the kernel does.
    pub uptime: i64,
    /// 1, 5 and 15 minute load averages, fixed point with 16 bits of fraction (`SI_LOAD_SHIFT`).
    pub loads: [u64; 3],
    pub totalram: u64,
    pub freeram: u64,
    pub sharedram: u64,
    pub bufferram: u64,
    pub totalswap: u64,
    pub freeswap: u64,
    /// Tasks (threads) in the container; the kernel's field is 16 bits and wraps as it does.
    pub procs: u16,
}

/// `1 << SI_LOAD_SHIFT`.
const SI_LOAD_ONE: u64 = 1 << 16;

impl Sysinfo {
    /// The struct from the three files' text; `None` when one of them is not in the kernel's format.
    pub fn from_views(meminfo: &str, uptime: &str, loadavg: &str) -> Option<Sysinfo> {
        let bytes = |key: &str| meminfo_kb(meminfo, key).map(|v| v.saturating_mul(1024));
        let mut fields = loadavg.split_ascii_whitespace();
        let mut loads = [0u64; 3];
        for load in &mut loads {
            *load = si_load(fields.next()?)?;
        }
        let procs = fields.next()?.split_once('/')?.1.parse::<u64>().ok()?;
        Some(Sysinfo {
            // Rounded up, as the kernel does (`tv_sec + (tv_nsec ? 1 : 0)`).
            uptime: uptime_seconds(uptime)?.ceil() as i64,
            loads,
            totalram: bytes("MemTotal")?,
            freeram: bytes("MemFree")?,
            sharedram: bytes("Shmem").unwrap_or(0),
            bufferram: bytes("Buffers").unwrap_or(0),
            totalswap: bytes("SwapTotal").unwrap_or(0),
            freeswap: bytes("SwapFree").unwrap_or(0),
            procs: procs as u16,
        })
    }

    /// The struct's bytes as the kernel lays it out on x86_64 (padding zeroed).
    pub fn to_bytes(&self) -> [u8; SIZE] {
        let mut out = [0u8; SIZE];
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &self.uptime.to_ne_bytes());
        for (i, load) in self.loads.iter().enumerate() {
            put(8 + 8 * i, &load.to_ne_bytes());
        }
        let memory = [
            self.totalram,
            self.freeram,
            self.sharedram,
            self.bufferram,
            self.totalswap,
            self.freeswap,
        ];
        for (i, value) in memory.iter().enumerate() {
            put(32 + 8 * i, &value.to_ne_bytes());
        }
        put(80, &self.procs.to_ne_bytes());
        // totalhigh and freehigh (88, 96) stay 0; mem_unit at 104.
        put(104, &1u32.to_ne_bytes());
        out
    }
}

/// "0.57" as sysinfo's fixed point, rounded up so that busybox's truncating `LOAD_FRAC` prints 0.57
/// again.
fn si_load(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let whole: u64 = whole.parse().ok()?;
    let digits = fraction.get(..2).unwrap_or(fraction);
    let mut hundredths: u64 = digits.parse().ok()?;
    if digits.len() == 1 {
        hundredths *= 10;
    }
    let fixed = whole.saturating_mul(SI_LOAD_ONE);
    Some(fixed.saturating_add((hundredths * SI_LOAD_ONE).div_ceil(100)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:         262144 kB\nMemFree:          200000 kB\n\
        MemAvailable:     230000 kB\nBuffers:               0 kB\nCached:            30000 kB\n\
        SwapTotal:        262144 kB\nSwapFree:         262000 kB\nShmem:               128 kB\n";

    #[test]
    fn the_struct_carries_the_files_numbers() {
        let info =
            Sysinfo::from_views(MEMINFO, "42.50 80.00\n", "0.57 1.00 2.10 3/97 1234\n").unwrap();
        assert_eq!(info.totalram, 262144 * 1024);
        assert_eq!(info.freeram, 200000 * 1024);
        assert_eq!(info.sharedram, 128 * 1024);
        assert_eq!(info.bufferram, 0);
        assert_eq!(info.totalswap, 262144 * 1024);
        assert_eq!(info.freeswap, 262000 * 1024);
        assert_eq!(info.uptime, 43);
        assert_eq!(info.procs, 97);
        // busybox prints LOAD_INT(x).LOAD_FRAC(x) = x >> 16 . ((x & 0xffff) * 100) >> 16.
        let shown: Vec<(u64, u64)> = info
            .loads
            .iter()
            .map(|x| (x >> 16, ((x & 0xffff) * 100) >> 16))
            .collect();
        assert_eq!(shown, vec![(0, 57), (1, 0), (2, 10)]);
        // Every two-decimal value prints back as itself.
        for hundredths in 0..1000u64 {
            let text = format!("{}.{:02}", hundredths / 100, hundredths % 100);
            let x = si_load(&text).unwrap();
            assert_eq!(((x >> 16) * 100) + (((x & 0xffff) * 100) >> 16), hundredths);
        }
    }

    #[test]
    fn the_bytes_are_the_kernel_s_layout() {
        let info = Sysinfo {
            uptime: 7,
            loads: [1, 2, 3],
            totalram: 10,
            freeram: 11,
            sharedram: 12,
            bufferram: 13,
            totalswap: 14,
            freeswap: 15,
            procs: 16,
        };
        let bytes = info.to_bytes();
        // SAFETY: libc's struct sysinfo is plain data; every byte pattern is a valid value.
        let theirs: libc::sysinfo = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        assert_eq!(std::mem::size_of::<libc::sysinfo>(), SIZE);
        assert_eq!(theirs.uptime, 7);
        assert_eq!(theirs.loads, [1, 2, 3]);
        assert_eq!(
            [
                theirs.totalram,
                theirs.freeram,
                theirs.sharedram,
                theirs.bufferram,
                theirs.totalswap,
                theirs.freeswap
            ],
            [10, 11, 12, 13, 14, 15]
        );
        assert_eq!(theirs.procs, 16);
        assert_eq!(
            (theirs.totalhigh, theirs.freehigh, theirs.mem_unit),
            (0, 0, 1)
        );
    }

    #[test]
    fn files_not_in_the_kernel_s_format_give_nothing() {
        assert!(Sysinfo::from_views("", "1.00 1.00", "0.00 0.00 0.00 1/1 1").is_none());
        assert!(Sysinfo::from_views(MEMINFO, "x", "0.00 0.00 0.00 1/1 1").is_none());
        assert!(Sysinfo::from_views(MEMINFO, "1.00 1.00", "0.00 0.00 1/1").is_none());
    }
}
