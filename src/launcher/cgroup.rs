//! The container's cgroup: `vproc/<name>` in every hierarchy that serves memory, cpu, cpuacct, cpuset,
//! pids or devices (v1: one directory per hierarchy; v2: one directory in the unified tree), with the
//! limits and the device allowlist written before the init joins it, and removed once the container's
//! processes are gone.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{LaunchError, devices};
use crate::cgroup::{CgroupLayout, Controller, Hierarchy, Version};

/// CFS period for `--cpus`, as Docker: quota = cpus x 100000 us.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The directory below each hierarchy's root that holds vproc's containers.
const PARENT: &str = "vproc";

const CGROUP_PROCS: &str = "cgroup.procs";
const V1_MEMORY_LIMIT: &str = "memory.limit_in_bytes";
const V1_MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";
const V1_OOM_CONTROL: &str = "memory.oom_control";
const V1_CFS_PERIOD: &str = "cpu.cfs_period_us";
const V1_CFS_QUOTA: &str = "cpu.cfs_quota_us";
const V1_CPUSET_CPUS: &str = "cpuset.cpus";
const V1_CPUSET_MEMS: &str = "cpuset.mems";
const V2_SUBTREE_CONTROL: &str = "cgroup.subtree_control";
const V2_MEMORY_MAX: &str = "memory.max";
const V2_SWAP_MAX: &str = "memory.swap.max";
const V2_MEMORY_EVENTS: &str = "memory.events";
const V2_CPU_MAX: &str = "cpu.max";
const V2_CPUSET_CPUS: &str = "cpuset.cpus";
const V2_KILL: &str = "cgroup.kill";
const PIDS_MAX: &str = "pids.max";
const V1_DEVICES_DENY: &str = "devices.deny";
const V1_DEVICES_ALLOW: &str = "devices.allow";
const V1_BLKIO_READ_BPS: &str = "blkio.throttle.read_bps_device";

/// What `--memory`, `--cpus`, `--cpuset-cpus` and `--pids-limit` ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub cpuset_cpus: Option<String>,
    pub pids_max: Option<u64>,
}

impl Limits {
    /// `--cpus` as a CFS quota in microseconds per [`CPU_PERIOD_US`]; 1000 us at least (the kernel's floor).
    pub fn cpu_quota_us(&self) -> Option<u64> {
        self.cpus
            .map(|cpus| ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000))
    }
}

/// The cgroup of one running container.
#[derive(Debug)]
pub struct ContainerCgroup {
    dirs: Vec<ContainerDir>,
}

/// The container's directory in one hierarchy, e.g. `/sys/fs/cgroup/memory/vproc/web`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContainerDir {
    hierarchy: Hierarchy,
    /// The controllers this hierarchy serves (v2: all of them; `cpuacct` rides with `cpu`).
    controllers: Vec<Controller>,
    path: PathBuf,
}

impl ContainerDir {
    fn has(&self, controller: Controller) -> bool {
        self.controllers.contains(&controller)
    }
}

/// The distinct hierarchies of `layout`, each with the controllers it serves.
fn hierarchies(layout: &CgroupLayout) -> Vec<(Hierarchy, Vec<Controller>)> {
    let mut found: Vec<(Hierarchy, Vec<Controller>)> = Vec::new();
    for controller in Controller::ALL {
        let Some(hierarchy) = layout.hierarchy(controller) else {
            continue;
        };
        match found.iter_mut().find(|(h, _)| h.mount == hierarchy.mount) {
            Some((_, controllers)) => controllers.push(controller),
            None => found.push((hierarchy.clone(), vec![controller])),
        }
    }
    found
}

impl ContainerCgroup {
    /// Creates `vproc/<name>` in every hierarchy found in `<proc_root>/self/mountinfo` and writes the
    /// limits. Fails if a container of that name is running (its cgroup exists).
    /// `io_paths` are where the container's files live (its root, its layers, its volumes): on cgroup v1
    /// the disks under them get the rule that makes the kernel count the container's I/O.
    pub fn create(
        proc_root: &Path,
        name: &str,
        limits: &Limits,
        io_paths: &[PathBuf],
    ) -> Result<Self, LaunchError> {
        let layout = CgroupLayout::detect(proc_root)
            .map_err(|e| LaunchError::Refused(format!("cannot find the cgroup mounts: {e}")))?;
        let hierarchies = hierarchies(&layout);
        for (controller, asked) in [
            (Controller::Memory, limits.memory_bytes.is_some()),
            (Controller::Cpu, limits.cpus.is_some()),
            (Controller::Cpuset, limits.cpuset_cpus.is_some()),
            (Controller::Pids, limits.pids_max.is_some()),
        ] {
            if asked && layout.hierarchy(controller).is_none() {
                return Err(LaunchError::Refused(format!(
                    "the {} cgroup controller is not available on this host, so its limit cannot be set",
                    controller.name()
                )));
            }
        }
        // No container starts with the host's devices open to it.
        let v2_present = hierarchies.iter().any(|(h, _)| h.version == Version::V2);
        if layout.hierarchy(Controller::Devices).is_none() && !v2_present {
            return Err(LaunchError::Refused(
                "neither a v1 devices cgroup nor a cgroup v2 hierarchy is mounted here, so the \
                 container's device access cannot be confined; mount one (as systemd does)"
                    .into(),
            ));
        }
        let mut cgroup = ContainerCgroup { dirs: Vec::new() };
        for (hierarchy, controllers) in hierarchies {
            let made = make_dir(&hierarchy, &controllers, name).and_then(|path| {
                let dir = ContainerDir {
                    hierarchy,
                    controllers,
                    path,
                };
                // Kept before the limits are written, so a failure removes it again.
                cgroup.dirs.push(dir.clone());
                write_limits(&dir, limits, io_paths)?;
                confine_devices(&dir)
            });
            if let Err(e) = made {
                let _ = cgroup.remove();
                return Err(e);
            }
        }
        Ok(cgroup)
    }

    /// The hierarchies the container is in, to mount them in its /sys/fs/cgroup.
    pub fn hierarchies(&self) -> Vec<Hierarchy> {
        self.dirs.iter().map(|d| d.hierarchy.clone()).collect()
    }

    /// Moves process `pid` into the container's cgroup in every hierarchy.
    pub fn add(&self, pid: i32) -> Result<(), LaunchError> {
        for dir in &self.dirs {
            let path = dir.path.join(CGROUP_PROCS);
            std::fs::write(&path, pid.to_string())
                .map_err(|e| LaunchError::io(format!("cannot move pid {pid} into"), &path, e))?;
        }
        Ok(())
    }

    /// How many processes the kernel's OOM killer ended in this cgroup (v1 `memory.oom_control`
    /// `oom_kill`, v2 `memory.events` `oom_kill`).
    pub fn oom_kills(&self) -> u64 {
        self.dirs
            .iter()
            .filter(|dir| dir.has(Controller::Memory))
            .map(|dir| {
                let file = match dir.hierarchy.version {
                    Version::V1 => V1_OOM_CONTROL,
                    Version::V2 => V2_MEMORY_EVENTS,
                };
                std::fs::read_to_string(dir.path.join(file))
                    .ok()
                    .and_then(|text| crate::cgroup::parse::keyed_value(&text, "oom_kill"))
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Kills what is left in the cgroup, waits for it to empty and removes its directories (and
    /// `vproc/` when no other container uses it).
    pub fn remove(&self) -> Result<(), LaunchError> {
        let mut first_error = None;
        for dir in self.dirs.iter().rev() {
            if let Err(e) = remove_dir(dir) {
                first_error.get_or_insert(e);
            }
            if let Some(parent) = dir.path.parent() {
                // EBUSY / ENOTEMPTY: another container is running; it removes the parent later.
                let _ = std::fs::remove_dir(parent);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Creates `<mount>/vproc/<name>`, readying `vproc/` first (v1 cpuset: copy the root's cpus and mems,
/// which new cpusets start without; v2: delegate the controllers down to it).
fn make_dir(
    hierarchy: &Hierarchy,
    controllers: &[Controller],
    name: &str,
) -> Result<PathBuf, LaunchError> {
    let parent = hierarchy.mount.join(PARENT);
    let dir = parent.join(name);
    // Another `vproc run` may remove an empty `vproc/` between our two mkdirs: try again.
    for _ in 0..5 {
        match std::fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(LaunchError::io("cannot create the cgroup", &parent, e)),
        }
        ready_parent(hierarchy, controllers, &parent)?;
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left by a `vproc run` that was killed: no process in it, so take it over.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_empty(&dir) => {
                let _ = std::fs::remove_dir(&dir);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(LaunchError::Refused(format!(
                    "a container named {name:?} is already running (its cgroup {} exists); choose another --name",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LaunchError::io("cannot create the cgroup", &dir, e)),
        }
    }
    Err(LaunchError::io(
        "cannot create the cgroup",
        &dir,
        io::Error::from(io::ErrorKind::NotFound),
    ))
}

/// True when no process is in the cgroup at `dir`.
fn is_empty(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(CGROUP_PROCS)).is_ok_and(|procs| procs.trim().is_empty())
}

fn ready_parent(
    hierarchy: &Hierarchy,
    controllers: &[Controller],
    parent: &Path,
) -> Result<(), LaunchError> {
    match hierarchy.version {
        Version::V1 if controllers.contains(&Controller::Cpuset) => {
            for file in [V1_CPUSET_CPUS, V1_CPUSET_MEMS] {
                let current = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
                if current.trim().is_empty() {
                    let root_value = read(&hierarchy.mount.join(file))?;
                    write(&parent.join(file), root_value.trim())?;
                }
            }
        }
        Version::V1 => {}
        Version::V2 => {
            let enable = subtree_control(controllers);
            for dir in [hierarchy.mount.as_path(), parent] {
                write(&dir.join(V2_SUBTREE_CONTROL), &enable)?;
            }
        }
    }
    Ok(())
}

/// What v2 `cgroup.subtree_control` takes to delegate `controllers`: `+memory +cpu ...` (cpuacct is
/// part of v2's cpu controller).
fn subtree_control(controllers: &[Controller]) -> String {
    let mut names: Vec<&str> = controllers.iter().map(|c| c.v2_name()).collect();
    names.dedup();
    names
        .iter()
        .map(|name| format!("+{name}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_limits(
    container: &ContainerDir,
    limits: &Limits,
    io_paths: &[PathBuf],
) -> Result<(), LaunchError> {
    let dir = container.path.as_path();
    let has = |controller| container.has(controller);
    match container.hierarchy.version {
        Version::V1 => {
            if let (true, Some(bytes)) = (has(Controller::Memory), limits.memory_bytes) {
                write(&dir.join(V1_MEMORY_LIMIT), &bytes.to_string())?;
                // No swap beyond the limit (memsw = memory + swap), so the limit is what MemTotal says.
                if dir.join(V1_MEMSW_LIMIT).exists() {
                    write(&dir.join(V1_MEMSW_LIMIT), &bytes.to_string())?;
                }
            }
            if let (true, Some(quota)) = (has(Controller::Cpu), limits.cpu_quota_us()) {
                write(&dir.join(V1_CFS_PERIOD), &CPU_PERIOD_US.to_string())?;
                write(&dir.join(V1_CFS_QUOTA), &quota.to_string())?;
            }
            if has(Controller::Io) {
                count_block_io(dir, io_paths);
            }
            if has(Controller::Cpuset) {
                let parent = dir.parent().unwrap_or(dir);
                let mems = read(&parent.join(V1_CPUSET_MEMS))?;
                write(&dir.join(V1_CPUSET_MEMS), mems.trim())?;
                let cpus = match &limits.cpuset_cpus {
                    Some(cpus) => cpus.clone(),
                    None => read(&parent.join(V1_CPUSET_CPUS))?.trim().to_string(),
                };
                write_cpuset(
                    &dir.join(V1_CPUSET_CPUS),
                    &cpus,
                    &parent.join(V1_CPUSET_CPUS),
                )?;
            }
        }
        Version::V2 => {
            if let (true, Some(bytes)) = (has(Controller::Memory), limits.memory_bytes) {
                write(&dir.join(V2_MEMORY_MAX), &bytes.to_string())?;
                if dir.join(V2_SWAP_MAX).exists() {
                    write(&dir.join(V2_SWAP_MAX), "0")?;
                }
            }
            if let (true, Some(quota)) = (has(Controller::Cpu), limits.cpu_quota_us()) {
                write(&dir.join(V2_CPU_MAX), &format!("{quota} {CPU_PERIOD_US}"))?;
            }
            if let (true, Some(cpus)) = (has(Controller::Cpuset), &limits.cpuset_cpus) {
                let parent = dir.parent().unwrap_or(dir);
                write_cpuset(
                    &dir.join(V2_CPUSET_CPUS),
                    cpus,
                    &parent.join("cpuset.cpus.effective"),
                )?;
            }
        }
    }
    if let (true, Some(max)) = (has(Controller::Pids), limits.pids_max) {
        write(&dir.join(PIDS_MAX), &max.to_string())?;
    }
    Ok(())
}

/// Docker's device allowlist: v1 `devices.deny a` then one `devices.allow` line per rule; v2 a BPF
/// program on the directory (the kernel checks both where both exist).
fn confine_devices(container: &ContainerDir) -> Result<(), LaunchError> {
    let dir = container.path.as_path();
    match container.hierarchy.version {
        Version::V1 if container.has(Controller::Devices) => {
            write(&dir.join(V1_DEVICES_DENY), "a")?;
            for rule in devices::DEFAULT_ALLOWED {
                write(&dir.join(V1_DEVICES_ALLOW), &rule.v1_line())?;
            }
            Ok(())
        }
        Version::V1 => Ok(()),
        Version::V2 => devices::attach_program(dir, devices::DEFAULT_ALLOWED).map_err(|e| {
            LaunchError::io(
                "cannot attach the device allowlist (a BPF program) to",
                dir,
                e,
            )
        }),
    }
}

/// The kernel refuses CPUs outside the parent's set with EINVAL; say which CPUs there are.
fn write_cpuset(path: &Path, cpus: &str, available_from: &Path) -> Result<(), LaunchError> {
    std::fs::write(path, cpus).map_err(|e| {
        if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ERANGE)) {
            let available = std::fs::read_to_string(available_from).unwrap_or_default();
            LaunchError::Refused(format!(
                "--cpuset-cpus {cpus}: not available to containers here (the CPUs are {})",
                available.trim()
            ))
        } else {
            LaunchError::io("cannot write", path, e)
        }
    })
}

/// Empties the directory (SIGKILL to what the init's end left behind) and removes it.
fn remove_dir(container: &ContainerDir) -> Result<(), LaunchError> {
    let dir = container.path.as_path();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(LaunchError::io("cannot remove the cgroup", dir, e));
            }
            Err(_) => {}
        }
        if container.hierarchy.version == Version::V2 && dir.join(V2_KILL).exists() {
            let _ = std::fs::write(dir.join(V2_KILL), "1");
        } else {
            let procs = std::fs::read_to_string(dir.join(CGROUP_PROCS)).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: plain kill(2) of a process in the container's cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read(path: &Path) -> Result<String, LaunchError> {
    std::fs::read_to_string(path).map_err(|e| LaunchError::io("cannot read", path, e))
}

/// Makes the kernel count the container's block I/O (its diskstats). On cgroup v1 the kernel keeps a
/// cgroup's I/O statistics only for disks where blkio throttling is active (Linux 6.7 and later start
/// it with the first rule written for the disk), so a rule of 0, "no limit", is written for the disks
/// holding `paths` (the container's root, layers and volumes): only those, since starting throttling
/// on a disk waits for its I/O in flight once. It limits nothing; a disk that refuses it keeps the
/// container's I/O there uncounted.
fn count_block_io(dir: &Path, paths: &[PathBuf]) {
    let mut disks: Vec<String> = paths.iter().filter_map(|p| whole_disk_of(p)).collect();
    disks.sort();
    disks.dedup();
    for disk in disks {
        let rule = format!("{disk} 0");
        if let Err(e) = std::fs::write(dir.join(V1_BLKIO_READ_BPS), &rule) {
            log::debug!("no I/O accounting on {disk}: {e}");
        }
    }
}

/// `MAJ:MIN` of the disk (not the partition) holding `path`; `None` for a filesystem on no block
/// device (tmpfs, overlay's own device, NFS).
fn whole_disk_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // A directory made later (the first image unpacked) lives on its nearest existing ancestor's disk.
    let dev = path
        .ancestors()
        .find_map(|p| std::fs::metadata(p).ok())?
        .dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    if major == 0 {
        return None;
    }
    let sysfs = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let disk = if sysfs.join("partition").exists() {
        sysfs.parent()?.to_path_buf()
    } else {
        sysfs
    };
    Some(
        std::fs::read_to_string(disk.join("dev"))
            .ok()?
            .trim()
            .to_string(),
    )
}

fn write(path: &Path, value: &str) -> Result<(), LaunchError> {
    std::fs::write(path, value)
        .map_err(|e| LaunchError::io(format!("cannot write {value:?} to"), path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
32 25 0:29 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpuset
33 25 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
34 25 0:31 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn hybrid_hosts_use_one_directory_per_v1_hierarchy() {
        let found = hierarchies(&CgroupLayout::from_mountinfo(HYBRID, |_| String::new()));
        let mounts: Vec<(&str, Vec<&str>, Vec<&str>)> = found
            .iter()
            .map(|(h, controllers)| {
                let names = controllers.iter().map(|c| c.name()).collect();
                let options = h.options.iter().map(String::as_str).collect();
                (h.mount.to_str().unwrap(), names, options)
            })
            .collect();
        assert_eq!(
            mounts,
            [
                ("/sys/fs/cgroup/memory", vec!["memory"], vec!["memory"]),
                (
                    "/sys/fs/cgroup/cpu,cpuacct",
                    vec!["cpu", "cpuacct"],
                    vec!["cpu", "cpuacct"]
                ),
                ("/sys/fs/cgroup/cpuset", vec!["cpuset"], vec!["cpuset"]),
                ("/sys/fs/cgroup/pids", vec!["pids"], vec!["pids"]),
            ]
        );
    }

    #[test]
    fn unified_hosts_use_one_directory_with_the_enabled_controllers() {
        let mountinfo = "26 25 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = CgroupLayout::from_mountinfo(mountinfo, |_| {
            "cpuset cpu io memory hugetlb pids rdma".into()
        });
        let found = hierarchies(&layout);
        assert_eq!(found.len(), 1);
        let (hierarchy, controllers) = &found[0];
        assert_eq!(
            (hierarchy.version, hierarchy.mount.to_str().unwrap()),
            (Version::V2, "/sys/fs/cgroup")
        );
        assert_eq!(
            subtree_control(controllers),
            "+memory +cpu +cpuset +pids +io"
        );
    }

    #[test]
    fn cpus_become_a_quota_over_the_docker_period() {
        let limits = |cpus| Limits {
            cpus: Some(cpus),
            ..Limits::default()
        };
        assert_eq!(limits(0.5).cpu_quota_us(), Some(50_000));
        assert_eq!(limits(1.5).cpu_quota_us(), Some(150_000));
        assert_eq!(limits(0.001).cpu_quota_us(), Some(1000));
        assert_eq!(Limits::default().cpu_quota_us(), None);
    }
}
