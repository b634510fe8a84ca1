//! Where the cgroup hierarchies are: discovered from /proc/self/mountinfo on a live system, or from the
//! shape of a fixture directory in tests. Also turns the paths of /proc/PID/cgroup into directories.

use std::path::{Component, Path, PathBuf};

use super::{CgroupDir, Controller, ProcessCgroups, Version};
use crate::error::{Error, Result};
use crate::mountinfo::MountinfoLine;

/// One mounted hierarchy: its version, where it is mounted and which cgroup its mount shows as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// Mount point, e.g. `/sys/fs/cgroup/memory`.
    pub mount: PathBuf,
    /// The cgroup path (as /proc/PID/cgroup spells it) that the mount point shows; `/` on a host.
    pub root: String,
    /// v1: the super options that name the hierarchy (`cpu`, `cpuacct`), to mount it again in a
    /// container; empty for v2.
    pub options: Vec<String>,
}

/// The hierarchy that serves each controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    memory: Option<Hierarchy>,
    cpu: Option<Hierarchy>,
    cpuacct: Option<Hierarchy>,
    cpuset: Option<Hierarchy>,
    pids: Option<Hierarchy>,
    devices: Option<Hierarchy>,
    io: Option<Hierarchy>,
}

impl CgroupLayout {
    /// Discovers the layout of the running system from `<proc_root>/self/mountinfo`.
    pub fn detect(proc_root: &Path) -> Result<Self> {
        let path = proc_root.join("self/mountinfo");
        let mountinfo = crate::error::read_to_string(&path)?;
        Ok(Self::from_mountinfo(&mountinfo, |mount| {
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
        }))
    }

    /// Builds the layout from mountinfo text. A v1 mount (type `cgroup`) names its controllers in its
    /// super options (`rw,cpu,cpuacct`); a v2 mount (`cgroup2`) serves the controllers listed in its
    /// root's `cgroup.controllers`, which `v2_controllers` reads. A controller with a v1 mount uses it.
    pub fn from_mountinfo(mountinfo: &str, v2_controllers: impl Fn(&Path) -> String) -> Self {
        let mut layout = CgroupLayout::default();
        let mut unified: Option<Hierarchy> = None;
        for line in mountinfo.lines() {
            let Some(mount) = MountinfoLine::parse(line) else {
                continue;
            };
            match mount.fstype {
                "cgroup" => {
                    for controller in Controller::ALL {
                        if mount
                            .super_options
                            .split(',')
                            .any(|o| o == controller.name())
                        {
                            let hierarchy = Hierarchy {
                                version: Version::V1,
                                mount: PathBuf::from(&mount.mount_point),
                                root: mount.root.clone(),
                                options: mount
                                    .super_options
                                    .split(',')
                                    .filter(|o| {
                                        !matches!(*o, "rw" | "ro")
                                            && !o.starts_with("release_agent=")
                                    })
                                    .map(String::from)
                                    .collect(),
                            };
                            layout.offer(controller, hierarchy);
                        }
                    }
                }
                "cgroup2" if unified.is_none() || mount.root == "/" => {
                    unified = Some(Hierarchy {
                        version: Version::V2,
                        mount: PathBuf::from(&mount.mount_point),
                        root: mount.root.clone(),
                        options: Vec::new(),
                    });
                }
                _ => {}
            }
        }
        if let Some(unified) = unified {
            let controllers = v2_controllers(&unified.mount);
            for controller in Controller::ALL {
                let name = controller.v2_name();
                let enabled = controllers.split_whitespace().any(|c| c == name);
                if enabled && layout.hierarchy(controller).is_none() {
                    layout.offer(controller, unified.clone());
                }
            }
        }
        layout
    }

    /// The layout of a fixture tree: v2 when `root/cgroup.controllers` exists (every controller it
    /// lists), else v1 with one directory per controller (`root/memory`, `root/cpu,cpuacct`, ...).
    pub fn from_root_dir(root: &Path) -> Self {
        let mountinfo = if root.join("cgroup.controllers").exists() {
            format!("1 0 0:1 / {} rw - cgroup2 cgroup2 rw\n", escape(root))
        } else {
            let mut lines = String::new();
            for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() {
                    lines += &format!(
                        "1 0 0:1 / {} rw - cgroup cgroup rw,{name}\n",
                        escape(&entry.path())
                    );
                }
            }
            lines
        };
        Self::from_mountinfo(&mountinfo, |mount| {
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// The hierarchy serving `controller`.
    pub fn hierarchy(&self, controller: Controller) -> Option<&Hierarchy> {
        match controller {
            Controller::Memory => self.memory.as_ref(),
            Controller::Cpu => self.cpu.as_ref(),
            Controller::Cpuacct => self.cpuacct.as_ref(),
            Controller::Cpuset => self.cpuset.as_ref(),
            Controller::Pids => self.pids.as_ref(),
            Controller::Devices => self.devices.as_ref(),
            Controller::Io => self.io.as_ref(),
        }
    }

    /// Keeps the first mount of a hierarchy, unless a later one shows its root `/` (the full tree).
    fn offer(&mut self, controller: Controller, hierarchy: Hierarchy) {
        let slot = match controller {
            Controller::Memory => &mut self.memory,
            Controller::Cpu => &mut self.cpu,
            Controller::Cpuacct => &mut self.cpuacct,
            Controller::Cpuset => &mut self.cpuset,
            Controller::Pids => &mut self.pids,
            Controller::Devices => &mut self.devices,
            Controller::Io => &mut self.io,
        };
        if slot
            .as_ref()
            .is_none_or(|h| h.root != "/" && hierarchy.root == "/")
        {
            *slot = Some(hierarchy);
        }
    }

    /// Resolves the text of /proc/PID/cgroup (`4:memory:/docker/abc`, `0::/kubepods/pod1/c1`) into the
    /// process's cgroup directories. `source` names the file for errors.
    pub fn resolve(&self, proc_cgroup: &str, source: &Path) -> Result<ProcessCgroups> {
        let mut cgroups = ProcessCgroups::default();
        for line in proc_cgroup.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(Error::parse(source, "hierarchy line", line));
            };
            for controller in Controller::VIEWED {
                let Some(hierarchy) = self.hierarchy(controller) else {
                    continue;
                };
                let matches = match hierarchy.version {
                    Version::V1 => controllers.split(',').any(|c| c == controller.name()),
                    Version::V2 => controllers.is_empty(),
                };
                if matches {
                    let dir = hierarchy
                        .directory_of(path)
                        .ok_or_else(|| Error::parse(source, "cgroup path", path))?;
                    if let Some(slot) = cgroups.slot(controller) {
                        *slot = Some(dir);
                    }
                }
            }
        }
        Ok(cgroups)
    }
}

impl Hierarchy {
    /// The directory of cgroup `path` in this mount; `None` if the path lies outside what the mount shows
    /// or is not a plain absolute path.
    fn directory_of(&self, path: &str) -> Option<CgroupDir> {
        let relative = Path::new(path).strip_prefix(&self.root).ok()?;
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return None;
        }
        Some(CgroupDir {
            version: self.version,
            path: self.mount.join(relative),
            mount: self.mount.clone(),
        })
    }
}

fn escape(path: &Path) -> String {
    path.to_string_lossy().replace(' ', "\\040")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    pub(super) const HYBRID_FOR_PROPERTIES: &str = HYBRID;

    const PURE_V2: &str = "\
30 23 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_host_uses_v1_for_every_controller() {
        let layout = CgroupLayout::from_mountinfo(HYBRID, |_| String::new());
        let memory = layout.hierarchy(Controller::Memory).unwrap();
        assert_eq!(memory.version, Version::V1);
        assert_eq!(memory.mount, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(
            layout.hierarchy(Controller::Cpuacct).unwrap().mount,
            PathBuf::from("/sys/fs/cgroup/cpuacct")
        );
    }

    #[test]
    fn pure_v2_serves_enabled_controllers() {
        let layout =
            CgroupLayout::from_mountinfo(PURE_V2, |_| "cpuset cpu io memory pids\n".into());
        for controller in Controller::ALL {
            if controller == Controller::Devices {
                // Not a v2 controller: device access there is a BPF program.
                assert_eq!(layout.hierarchy(controller), None);
                continue;
            }
            let h = layout.hierarchy(controller).unwrap();
            assert_eq!(
                (h.version, h.mount.as_path()),
                (Version::V2, Path::new("/sys/fs/cgroup"))
            );
        }
    }

    #[test]
    fn resolves_proc_cgroup_lines() {
        let layout = CgroupLayout::from_mountinfo(HYBRID, |_| String::new());
        let text = "9:name=systemd:/\n4:memory:/docker/abc\n3:cpuset:/docker/abc\n2:cpuacct:/docker/abc\n1:cpu:/\n0::/\n";
        let cgroups = layout.resolve(text, Path::new("/proc/7/cgroup")).unwrap();
        let memory = cgroups.memory.unwrap();
        assert_eq!(
            memory.path,
            PathBuf::from("/sys/fs/cgroup/memory/docker/abc")
        );
        assert!(!memory.is_root());
        assert!(cgroups.cpu.unwrap().is_root());
    }

    #[test]
    fn mount_of_a_subtree_strips_its_root() {
        let mountinfo = "30 23 0:27 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let layout = CgroupLayout::from_mountinfo(mountinfo, |_| "memory cpu".into());
        let cgroups = layout
            .resolve("0::/kubepods/pod1/c1\n", Path::new("x"))
            .unwrap();
        assert_eq!(
            cgroups.memory.unwrap().path,
            PathBuf::from("/sys/fs/cgroup/c1")
        );
        assert!(layout.resolve("0::/elsewhere\n", Path::new("x")).is_err());
        assert!(
            layout
                .resolve("0::/kubepods/pod1/../../x\n", Path::new("x"))
                .is_err()
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn discovery_and_resolution_never_panic(mountinfo in "\\PC*", proc_cgroup in "\\PC*") {
            let layout = CgroupLayout::from_mountinfo(&mountinfo, |_| "memory cpu cpuset".into());
            let _ = layout.resolve(&proc_cgroup, Path::new("x"));
            let hybrid = CgroupLayout::from_mountinfo(tests::HYBRID_FOR_PROPERTIES, |_| String::new());
            if let Ok(cgroups) = hybrid.resolve(&proc_cgroup, Path::new("x")) {
                // Whatever the kernel wrote, a resolved directory never escapes its hierarchy.
                for dir in [cgroups.memory, cgroups.cpu, cgroups.cpuacct, cgroups.cpuset].into_iter().flatten() {
                    prop_assert!(dir.path.starts_with(&dir.mount));
                }
            }
        }
    }
}
