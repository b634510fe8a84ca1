//! Inodes of the mount: the fixed ones from [`crate::files`], the `cpuK` slots of
//! sys/devices/system/cpu, and host sysfs entries passed through below it, numbered on first sight.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use crate::files::{self, Content, FIRST_DYNAMIC_INO};
use crate::metrics::Target;

/// Slot inodes `cpu0..cpu8191` come first in the dynamic range; the kernel's NR_CPUS tops out at 8192.
const CPU_SLOTS: u64 = 8192;
/// Block devices below sys/block numbered at most (two inodes each: the directory and its `stat`).
pub const MAX_BLOCK_DEVICES: u64 = 4096;
const FIRST_BLOCK_INO: u64 = FIRST_DYNAMIC_INO + CPU_SLOTS;

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir(&'static files::VirtualDir),
    File(&'static files::VirtualFile),
    /// `cpuK` in sys/devices/system/cpu: the host directory of the reader's K-th visible CPU.
    CpuSlot(u32),
    /// A host entry below sys/devices/system/cpu.
    Host(HostEntry),
    /// `sys/block/NAME`, the K-th block device name seen (see [`NodeTable::block_name`]).
    BlockDevice(u32),
    /// `sys/block/NAME/stat`: the device's I/O statistics as the reader's container did them.
    BlockStat(u32),
}

/// A host entry, named relative to where it hangs so that the same inode serves every reader.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostEntry {
    /// `None`: relative to the host's sys/devices/system/cpu; `Some(K)`: relative to the host directory
    /// of the reader's K-th visible CPU.
    pub slot: Option<u32>,
    pub relative: PathBuf,
}

impl HostEntry {
    /// The host path of this entry for a reader whose visible CPUs are `visible`; `None` when the slot is
    /// past the reader's CPUs.
    pub fn host_path(&self, host_cpu_dir: &Path, visible: &[u32]) -> Option<PathBuf> {
        let base = match self.slot {
            None => host_cpu_dir.to_path_buf(),
            Some(k) => host_cpu_dir.join(format!("cpu{}", visible.get(k as usize)?)),
        };
        Some(base.join(&self.relative))
    }

    /// True when what the entry shows depends on the reader (it sits below a `cpuK` slot).
    pub fn per_reader(&self) -> bool {
        self.slot.is_some()
    }
}

/// Inode numbers of host entries, handed out once and kept (the set is bounded by the host's sysfs).
#[derive(Debug, Default)]
pub struct NodeTable {
    host: RwLock<HostInodes>,
    /// Names of the host's block devices, numbered on first sight (bounded by
    /// [`MAX_BLOCK_DEVICES`]; only names the host's /sys/block has get one).
    block: RwLock<Vec<String>>,
}

#[derive(Debug, Default)]
struct HostInodes {
    by_ino: Vec<HostEntry>,
    by_entry: HashMap<HostEntry, u64>,
}

const FIRST_HOST_INO: u64 = FIRST_BLOCK_INO + 2 * MAX_BLOCK_DEVICES;

impl NodeTable {
    /// What the metrics count a request on `ino` under (without looking the inode up).
    pub fn target(ino: u64) -> Target {
        if files::dir_by_ino(ino).is_some() {
            Target::Directory
        } else if let Some(file) = files::file_by_ino(ino) {
            Target::of_file(file)
        } else if (FIRST_BLOCK_INO..FIRST_HOST_INO).contains(&ino) {
            Target::BlockTree
        } else {
            Target::CpuTree
        }
    }

    /// What inode `ino` is.
    pub fn node(&self, ino: u64) -> Option<Node> {
        if let Some(dir) = files::dir_by_ino(ino) {
            return Some(Node::Dir(dir));
        }
        if let Some(file) = files::file_by_ino(ino) {
            return Some(Node::File(file));
        }
        if (FIRST_DYNAMIC_INO..FIRST_BLOCK_INO).contains(&ino) {
            return Some(Node::CpuSlot((ino - FIRST_DYNAMIC_INO) as u32));
        }
        if (FIRST_BLOCK_INO..FIRST_HOST_INO).contains(&ino) {
            let offset = ino - FIRST_BLOCK_INO;
            let index = (offset / 2) as u32;
            if index as usize >= self.block.read().len() {
                return None;
            }
            return Some(if offset % 2 == 0 {
                Node::BlockDevice(index)
            } else {
                Node::BlockStat(index)
            });
        }
        let index = usize::try_from(ino.checked_sub(FIRST_HOST_INO)?).ok()?;
        self.host.read().by_ino.get(index).cloned().map(Node::Host)
    }

    /// The inode of slot `cpuK`.
    pub fn slot_ino(k: u32) -> u64 {
        FIRST_DYNAMIC_INO + u64::from(k)
    }

    /// The directory inode of block device `name` (one the host has), numbering it if it is new. Once
    /// [`MAX_BLOCK_DEVICES`] names are numbered, the number of a name the host no longer has
    /// (`exists` says) goes to the new one, so loop and dm devices coming and going never run the table
    /// out; `None` only when every numbered device still exists.
    pub fn block_ino(&self, name: &str, exists: impl Fn(&str) -> bool) -> Option<u64> {
        let index = |names: &Vec<String>| names.iter().position(|n| n == name);
        if let Some(i) = index(&self.block.read()) {
            return Some(FIRST_BLOCK_INO + 2 * i as u64);
        }
        let mut names = self.block.write();
        let i = match index(&names) {
            Some(i) => i,
            None if (names.len() as u64) < MAX_BLOCK_DEVICES => {
                names.push(name.to_string());
                names.len() - 1
            }
            None => {
                let gone = names.iter().position(|n| !exists(n))?;
                names[gone] = name.to_string();
                gone
            }
        };
        Some(FIRST_BLOCK_INO + 2 * i as u64)
    }

    /// The inode of `sys/block/NAME/stat` for the device whose directory is `index`.
    pub fn block_stat_ino(index: u32) -> u64 {
        FIRST_BLOCK_INO + 2 * u64::from(index) + 1
    }

    /// The name of the `index`-th block device numbered.
    pub fn block_name(&self, index: u32) -> Option<String> {
        self.block.read().get(index as usize).cloned()
    }

    /// The inode of a host entry, numbering it if it is new.
    pub fn host_ino(&self, entry: HostEntry) -> u64 {
        if let Some(&ino) = self.host.read().by_entry.get(&entry) {
            return ino;
        }
        let mut host = self.host.write();
        if let Some(&ino) = host.by_entry.get(&entry) {
            return ino;
        }
        let ino = FIRST_HOST_INO + host.by_ino.len() as u64;
        host.by_ino.push(entry.clone());
        host.by_entry.insert(entry, ino);
        ino
    }
}

/// `cpu17` -> 17; other names (`cpufreq`, `cpuidle`) -> None.
pub fn cpu_slot_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("cpu")?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok().filter(|&k| u64::from(k) < CPU_SLOTS)
}

/// True for names in sys/devices/system/cpu that vproc serves itself (online, possible, present).
pub fn is_virtual_cpu_file(name: &str) -> bool {
    files::FILES.iter().any(|f| {
        f.parent() == files::CPU_DIR
            && f.name() == name
            && matches!(
                f.content,
                Content::CpuOnline | Content::CpuPossible | Content::CpuPresent
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_names() {
        assert_eq!(cpu_slot_number("cpu0"), Some(0));
        assert_eq!(cpu_slot_number("cpu17"), Some(17));
        assert_eq!(cpu_slot_number("cpufreq"), None);
        assert_eq!(cpu_slot_number("cpu"), None);
        assert_eq!(cpu_slot_number("cpu01"), None);
        assert_eq!(cpu_slot_number("cpu99999"), None);
    }

    #[test]
    fn host_inodes_are_stable() {
        let table = NodeTable::default();
        let entry = HostEntry {
            slot: Some(0),
            relative: PathBuf::from("topology"),
        };
        let ino = table.host_ino(entry.clone());
        assert_eq!(table.host_ino(entry.clone()), ino);
        assert_eq!(table.node(ino), Some(Node::Host(entry)));
        assert_eq!(table.node(NodeTable::slot_ino(3)), Some(Node::CpuSlot(3)));
    }

    #[test]
    fn block_devices_are_numbered_once_each() {
        let table = NodeTable::default();
        let all = |_: &str| true;
        let vda = table.block_ino("vda", all).unwrap();
        let loop0 = table.block_ino("loop0", all).unwrap();
        assert_eq!(table.block_ino("vda", all), Some(vda));
        assert_eq!(table.node(vda), Some(Node::BlockDevice(0)));
        assert_eq!(table.node(loop0 + 1), Some(Node::BlockStat(1)));
        assert_eq!(table.node(loop0 + 2), None, "not numbered yet");
        assert_eq!(table.block_name(1).as_deref(), Some("loop0"));
        assert!(table.node(NodeTable::slot_ino(8191)).is_some());
        assert_ne!(NodeTable::slot_ino(8191), vda);
    }

    #[test]
    fn a_full_block_table_reuses_the_numbers_of_devices_gone() {
        let table = NodeTable::default();
        for i in 0..MAX_BLOCK_DEVICES {
            table.block_ino(&format!("loop{i}"), |_| true).unwrap();
        }
        assert_eq!(table.block_ino("dm-0", |_| true), None, "all still there");
        let loop7 = table.block_ino("loop7", |_| true).unwrap();
        assert_eq!(table.block_ino("dm-0", |n| n != "loop7"), Some(loop7));
        assert_eq!(table.block_name(7).as_deref(), Some("dm-0"));
    }

    #[test]
    fn slot_paths_follow_the_reader() {
        let entry = HostEntry {
            slot: Some(0),
            relative: PathBuf::from("topology/core_id"),
        };
        let base = Path::new("/sys/devices/system/cpu");
        assert_eq!(
            entry.host_path(base, &[3]),
            Some(base.join("cpu3/topology/core_id"))
        );
        assert_eq!(entry.host_path(base, &[]), None);
    }
}
