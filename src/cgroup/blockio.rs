//! A cgroup's block I/O per device, for its proc/diskstats: v2 `io.stat`, v1 blkio's throttle
//! statistics (`blkio.throttle.io_serviced_recursive`, `blkio.throttle.io_service_bytes_recursive`;
//! BFQ's `blkio.bfq.*` of the same names for disks the throttle layer knows of no I/O on),
//! plus BFQ's service and wait times where the kernel has them (`blkio.bfq.io_service_time_recursive`
//! and `blkio.bfq.io_wait_time_recursive`, with CONFIG_BFQ_CGROUP_DEBUG).
//!
//! v1 caveat, measured on Linux 6.18: the throttle statistics count only on disks where throttling is
//! active, which is once any blkio throttle rule was written for the disk (in any cgroup; a rule of 0,
//! "no limit", is enough). `vproc run` writes such a rule for each disk; other runtimes do when a
//! `--device-read-bps` style limit is set.

use super::{CgroupDir, Version};
use crate::error::Result;

/// One device's I/O by a cgroup (and the cgroups below it), since the cgroup was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceIo {
    pub major: u32,
    pub minor: u32,
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub discards: u64,
    pub discard_bytes: u64,
    /// Milliseconds spent on reads and writes, where the kernel tells (v1 BFQ debug statistics).
    pub read_ms: u64,
    pub write_ms: u64,
}

impl DeviceIo {
    /// True when the cgroup did any I/O on the device.
    pub fn is_used(&self) -> bool {
        self.reads != 0 || self.writes != 0 || self.discards != 0
    }

    /// Every counter at least `previous`'s (the same device): counters never go backwards.
    pub fn at_least(self, previous: &DeviceIo) -> DeviceIo {
        DeviceIo {
            reads: self.reads.max(previous.reads),
            read_bytes: self.read_bytes.max(previous.read_bytes),
            writes: self.writes.max(previous.writes),
            write_bytes: self.write_bytes.max(previous.write_bytes),
            discards: self.discards.max(previous.discards),
            discard_bytes: self.discard_bytes.max(previous.discard_bytes),
            read_ms: self.read_ms.max(previous.read_ms),
            write_ms: self.write_ms.max(previous.write_ms),
            ..self
        }
    }
}

/// The devices the cgroup's statistics name; `Ok(None)` when the kernel keeps none for it (no io
/// controller in this cgroup).
pub(super) fn device_io(cgroup: &CgroupDir) -> Result<Option<Vec<DeviceIo>>> {
    match cgroup.version {
        Version::V2 => {
            let Some(text) = cgroup.read_optional("io.stat")? else {
                return Ok(None);
            };
            Ok(Some(parse_io_stat(&text)))
        }
        Version::V1 => {
            // The throttle layer counts on disks with a throttle rule; BFQ counts on disks it
            // schedules, rule or not. A disk the first knows of no I/O on takes the second's counts.
            let Some(mut devices) = v1_counts(cgroup, "blkio.throttle")? else {
                return Ok(None);
            };
            for bfq in v1_counts(cgroup, "blkio.bfq")?.into_iter().flatten() {
                let same = |d: &&mut DeviceIo| d.major == bfq.major && d.minor == bfq.minor;
                match devices.iter_mut().find(same) {
                    Some(throttled) if throttled.is_used() => {}
                    Some(throttled) => *throttled = bfq,
                    None => devices.push(bfq),
                }
            }
            // A request's time is its wait in the scheduler plus its service by the device, as the
            // kernel's own per-disk times count from submission to completion.
            for file in [
                "blkio.bfq.io_service_time_recursive",
                "blkio.bfq.io_wait_time_recursive",
            ] {
                if let Some(times) = cgroup.read_optional(file)? {
                    add_v1(&mut devices, &times, |d, op, ns| match op {
                        "Read" => d.read_ms = d.read_ms.saturating_add(ns / 1_000_000),
                        "Write" => d.write_ms = d.write_ms.saturating_add(ns / 1_000_000),
                        _ => {}
                    });
                }
            }
            Ok(Some(devices))
        }
    }
}

/// The v1 `<prefix>.io_serviced_recursive` and `<prefix>.io_service_bytes_recursive` counters per
/// device; `None` where the cgroup lacks them.
fn v1_counts(cgroup: &CgroupDir, prefix: &str) -> Result<Option<Vec<DeviceIo>>> {
    let (Some(serviced), Some(bytes)) = (
        cgroup.read_optional(&format!("{prefix}.io_serviced_recursive"))?,
        cgroup.read_optional(&format!("{prefix}.io_service_bytes_recursive"))?,
    ) else {
        return Ok(None);
    };
    let mut devices = Vec::new();
    add_v1(&mut devices, &serviced, set_ios);
    add_v1(&mut devices, &bytes, set_bytes);
    Ok(Some(devices))
}

/// Sets an operation's count of I/Os from a `*io_serviced*` line.
fn set_ios(device: &mut DeviceIo, op: &str, n: u64) {
    match op {
        "Read" => device.reads = n,
        "Write" => device.writes = n,
        "Discard" => device.discards = n,
        _ => {}
    }
}

/// Sets an operation's bytes from a `*io_service_bytes*` line.
fn set_bytes(device: &mut DeviceIo, op: &str, n: u64) {
    match op {
        "Read" => device.read_bytes = n,
        "Write" => device.write_bytes = n,
        "Discard" => device.discard_bytes = n,
        _ => {}
    }
}

/// v2 `io.stat`: `8:0 rbytes=90112 wbytes=0 rios=3 wios=0 dbytes=0 dios=0` per device, other keys
/// (cost.*, debug) ignored.
fn parse_io_stat(text: &str) -> Vec<DeviceIo> {
    let mut devices = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some((major, minor)) = fields.next().and_then(parse_device) else {
            continue;
        };
        let mut device = DeviceIo {
            major,
            minor,
            ..DeviceIo::default()
        };
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "rbytes" => device.read_bytes = value,
                "wbytes" => device.write_bytes = value,
                "rios" => device.reads = value,
                "wios" => device.writes = value,
                "dbytes" => device.discard_bytes = value,
                "dios" => device.discards = value,
                _ => {}
            }
        }
        devices.push(device);
    }
    devices
}

/// Adds a v1 blkio file (`8:0 Read 4096` per device and operation, then `Total N`) into `devices`.
fn add_v1(devices: &mut Vec<DeviceIo>, text: &str, mut set: impl FnMut(&mut DeviceIo, &str, u64)) {
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(op), Some(value)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Some((major, minor)), Ok(value)) = (parse_device(device), value.parse::<u64>()) else {
            continue;
        };
        let index = match devices
            .iter()
            .position(|d| d.major == major && d.minor == minor)
        {
            Some(index) => index,
            None => {
                devices.push(DeviceIo {
                    major,
                    minor,
                    ..DeviceIo::default()
                });
                devices.len() - 1
            }
        };
        set(&mut devices[index], op, value);
    }
}

fn parse_device(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_io_stat_keys_are_read_and_others_ignored() {
        let text = "254:0 rbytes=90112 wbytes=4096 rios=3 wios=1 dbytes=0 dios=0 cost.vrate=100.00\n\
                    7:0 rbytes=0 wbytes=0 rios=0 wios=0 dbytes=512 dios=1\n";
        let devices = parse_io_stat(text);
        assert_eq!(devices.len(), 2);
        assert_eq!(
            devices[0],
            DeviceIo {
                major: 254,
                minor: 0,
                reads: 3,
                read_bytes: 90112,
                writes: 1,
                write_bytes: 4096,
                ..DeviceIo::default()
            }
        );
        assert!(devices[1].is_used(), "a discard is I/O");
    }

    #[test]
    fn v1_files_merge_per_device() {
        let mut devices = Vec::new();
        add_v1(
            &mut devices,
            "254:0 Read 2\n254:0 Write 100\n254:0 Sync 104\n254:0 Async 0\n254:0 Discard 4\n254:0 Total 106\nTotal 106\n",
            set_ios,
        );
        add_v1(
            &mut devices,
            "254:0 Read 8192\n254:0 Write 409600\nTotal 0\n",
            set_bytes,
        );
        assert_eq!(
            devices,
            [DeviceIo {
                major: 254,
                minor: 0,
                reads: 2,
                read_bytes: 8192,
                writes: 100,
                write_bytes: 409600,
                discards: 4,
                ..DeviceIo::default()
            }]
        );
    }
}
