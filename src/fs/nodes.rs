//! Inodes of the mount: the fixed ones from [`crate::files`], the `cpuK` slots of
//! sys/devices/system/cpu, and host sysfs entries passed through below it, numbered on first sight.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use crate::files::{self, Content, FIRST_DYNAMIC_INO};

/// Slot inodes `cpu0..cpu8191` come first in the dynamic range; the kernel's NR_CPUS tops out at 8192.
const CPU_SLOTS: u64 = 8192;

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir(&'static files::VirtualDir),
    File(&'static files::VirtualFile),
    /// `cpuK` in sys/devices/system/cpu: the host directory of the reader's K-th visible CPU.
    CpuSlot(u32),
    /// A host entry below sys/devices/system/cpu.
    Host(HostEntry),
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
}

#[derive(Debug, Default)]
struct HostInodes {
    by_ino: Vec<HostEntry>,
    by_entry: HashMap<HostEntry, u64>,
}

const FIRST_HOST_INO: u64 = FIRST_DYNAMIC_INO + CPU_SLOTS;

impl NodeTable {
    /// What inode `ino` is.
    pub fn node(&self, ino: u64) -> Option<Node> {
        if let Some(dir) = files::dir_by_ino(ino) {
            return Some(Node::Dir(dir));
        }
        if let Some(file) = files::file_by_ino(ino) {
            return Some(Node::File(file));
        }
        if (FIRST_DYNAMIC_INO..FIRST_HOST_INO).contains(&ino) {
            return Some(Node::CpuSlot((ino - FIRST_DYNAMIC_INO) as u32));
        }
        let index = usize::try_from(ino.checked_sub(FIRST_HOST_INO)?).ok()?;
        self.host.read().by_ino.get(index).cloned().map(Node::Host)
    }

    /// The inode of slot `cpuK`.
    pub fn slot_ino(k: u32) -> u64 {
        FIRST_DYNAMIC_INO + u64::from(k)
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
