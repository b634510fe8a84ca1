//! proc/diskstats: the host's lines of the devices the container did I/O on, with the container's
//! counters, in the kernel's layout (`%4d %7d %s` then as many counters as the host's own lines have:
//! 11 before Linux 4.18, 15 to 5.4, 17 since). Devices the container never used are left out, as
//! LXCFS does; device names come from the host's file.
//!
//! What a cgroup's statistics do not know is 0: merges, requests in flight, and (without BFQ's
//! statistics) the times. iostat's IOPS and throughput are right; its await and %util read 0.

use std::fmt::Write as _;

use crate::cgroup::DeviceIo;

/// One line of the host's diskstats: a device and how many counters the kernel prints for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLine<'a> {
    pub major: u32,
    pub minor: u32,
    pub name: &'a str,
    pub counters: usize,
}

impl<'a> DiskLine<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let (major, minor, name) = (fields.next()?, fields.next()?, fields.next()?);
        Some(DiskLine {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
            name,
            counters: fields.count(),
        })
    }

    /// The line of the host's diskstats naming the device `name`.
    pub fn find(host_diskstats: &'a str, name: &str) -> Option<Self> {
        host_diskstats
            .lines()
            .filter_map(DiskLine::parse)
            .find(|disk| disk.name == name)
    }
}

/// Renders diskstats for a container that did `devices`' I/O.
pub fn render_diskstats(host_diskstats: &str, devices: &[DeviceIo]) -> String {
    let mut out = String::new();
    for disk in host_diskstats.lines().filter_map(DiskLine::parse) {
        let DiskLine {
            major,
            minor,
            name,
            counters,
        } = disk;
        let Some(io) = devices
            .iter()
            .find(|d| d.major == major && d.minor == minor && d.is_used())
        else {
            continue;
        };
        let _ = write!(out, "{major:4} {minor:7} {name}");
        for value in counters_of(io).iter().take(counters) {
            let _ = write!(out, " {value}");
        }
        out.push('\n');
    }
    out
}

/// The kernel's counters in diskstats order (the same order as sysfs `stat`).
fn counters_of(io: &DeviceIo) -> [u64; 17] {
    let busy_ms = io.read_ms.saturating_add(io.write_ms);
    [
        io.reads,
        0,
        io.read_bytes / 512,
        io.read_ms,
        io.writes,
        0,
        io.write_bytes / 512,
        io.write_ms,
        0,
        busy_ms,
        busy_ms,
        io.discards,
        0,
        io.discard_bytes / 512,
        0,
        0,
        0,
    ]
}

/// A block device's sysfs `stat` (`%8lu` per counter, `counters` of them: as many as the kernel's
/// diskstats line of the device has) for a container that did `io` on it; zeros where it did none.
pub fn render_block_stat(counters: usize, io: Option<&DeviceIo>) -> String {
    let values = counters_of(&io.copied().unwrap_or_default());
    let mut out = String::with_capacity(9 * counters + 1);
    for (i, value) in values.iter().take(counters).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{value:8}");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "   7       0 loop0 5 0 10 1 0 0 0 0 0 1 1 0 0 0 0 0 0\n \
 254       0 vda 2877274 91216 109392698 9950163 338336 388864 224677448 1057266 0 362452 11060072 242126 71 137703520 50691 43284 1952\n \
 254       1 vda1 100 0 800 1 0 0 0 0 0 1 1 0 0 0 0 0 0\n";

    #[test]
    fn only_used_devices_with_the_container_s_counters() {
        let devices = [
            DeviceIo {
                major: 254,
                minor: 0,
                reads: 3,
                read_bytes: 12288,
                writes: 100,
                write_bytes: 409600,
                ..DeviceIo::default()
            },
            DeviceIo {
                major: 7,
                minor: 0,
                ..DeviceIo::default()
            },
        ];
        assert_eq!(
            render_diskstats(HOST, &devices),
            " 254       0 vda 3 0 24 0 100 0 800 0 0 0 0 0 0 0 0 0 0\n"
        );
    }

    #[test]
    fn the_host_s_field_count_is_kept() {
        let old_kernel = "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n";
        let devices = [DeviceIo {
            major: 8,
            minor: 0,
            writes: 2,
            write_bytes: 1024,
            ..DeviceIo::default()
        }];
        assert_eq!(
            render_diskstats(old_kernel, &devices),
            "   8       0 sda 0 0 0 0 2 0 2 0 0 0 0\n"
        );
    }

    #[test]
    fn sysfs_stat_has_the_kernel_s_widths() {
        let io = DeviceIo {
            writes: 64,
            write_bytes: 262144,
            ..DeviceIo::default()
        };
        assert_eq!(
            render_block_stat(17, Some(&io)),
            "       0        0        0        0       64        0      512        0        0        0        0        0        0        0        0        0        0\n"
        );
        assert_eq!(render_block_stat(3, None), "       0        0        0\n");
        assert_eq!(
            DiskLine::find(HOST, "vda").map(|d| (d.major, d.minor, d.counters)),
            Some((254, 0, 17))
        );
    }

    #[test]
    fn no_io_is_an_empty_file() {
        assert_eq!(render_diskstats(HOST, &[]), "");
    }
}
