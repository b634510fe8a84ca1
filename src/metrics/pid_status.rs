//! `vproc status --pid N`: the questions of "free shows the host's memory in my pod", for one process,
//! in the order they are asked: are its /proc files vprocd's at all (its mountinfo), which container
//! the daemon counts it under and what its files say there, and what the daemon saw of that container
//! (reads, and reads that got the host's files, with why).

use std::path::Path;

use serde::Serialize;

use super::containers::{StatusRow, fetch};
use crate::cgroup::CgroupLayout;
use crate::files::{Content, bind_targets};
use crate::host::{HostRoots, meminfo_kb};
use crate::mountinfo::MountinfoLine;
use crate::render::{Options, Renderer};

/// Who serves one of the process's /proc or /sys paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ServedBy {
    /// This daemon's file of the same name, live (its fsname, `vprocd:MOUNTPOINT`).
    Vprocd {
        source: String,
    },
    /// A vprocd mount that is not this daemon's live file of that name: a predecessor's, dead since
    /// it stopped (`vproc reattach` heals it), another daemon's, another of its files, or a
    /// filesystem that only calls itself vprocd.
    OtherVprocd {
        source: String,
        file: String,
    },
    /// This daemon's live file on the views mount, but named by process `named`, which is of another
    /// container: that container's figures.
    AnotherContainersView {
        source: String,
        named: u32,
    },
    /// This daemon's live file on the views mount, named by process `named`, which has exited: whose
    /// figures they are cannot be told (most often its own container's: a view outlives its namer).
    UnverifiedView {
        source: String,
        named: u32,
    },
    Lxcfs,
    /// Something else is mounted there.
    Other {
        fstype: String,
        source: String,
    },
    /// Nothing is mounted over it: the kernel's own file, the host's figures.
    Kernel,
}

/// The daemon a process's mounts are checked against: its fsname and the device of its connection
/// (`major:minor`, as mountinfo shows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub fs_name: String,
    pub device: Option<String>,
    /// The same for its views mount (`.by-pid`, where vproc's own binds come from).
    pub views_fs_name: String,
    pub views_device: Option<String>,
}

impl Daemon {
    /// The daemon mounted at `mountpoint`; its device is unknown when nothing is mounted there.
    pub fn at(mountpoint: &Path) -> Daemon {
        use std::os::unix::fs::MetadataExt;
        let mountpoint = crate::reattach::canonical_mountpoint(mountpoint);
        let device = |path: &Path| {
            std::fs::metadata(path).ok().map(|meta| {
                let dev = meta.dev();
                format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))
            })
        };
        let views = mountpoint.join(crate::files::BY_PID_DIR);
        Daemon {
            fs_name: crate::reattach::fs_name(&mountpoint),
            device: device(&mountpoint),
            views_fs_name: crate::reattach::fs_name(&views),
            views_device: device(&views),
        }
    }
}

/// A mountinfo line on one of the paths looked at.
#[derive(Debug, Clone)]
struct Mount {
    id: String,
    parent: String,
    device: String,
    root: String,
    mount_point: String,
    fstype: String,
    source: String,
}

impl Mount {
    fn from_line(line: &MountinfoLine) -> Mount {
        Mount {
            id: line.id.to_string(),
            parent: line.parent.to_string(),
            device: line.device.to_string(),
            root: line.root.clone(),
            mount_point: line.mount_point.clone(),
            fstype: line.fstype.to_string(),
            source: line.source.clone(),
        }
    }
}

/// The mounts of `mountinfo` (read as bytes: paths need not be UTF-8) on one of `targets`, one line
/// at a time, so a process with a million mounts costs a line's memory, not its table's.
fn mounts_on(mountinfo: impl std::io::BufRead, targets: &[String]) -> std::io::Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for line in mountinfo.split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        if let Some(parsed) = MountinfoLine::parse(&line) {
            if targets.contains(&parsed.mount_point) {
                mounts.push(Mount::from_line(&parsed));
            }
        }
    }
    Ok(mounts)
}

/// Who serves each of `targets` (`/proc/meminfo`, ...) among `mounts`: the top mount on the path, the
/// one no other mount on it is mounted over (not the last line: a mount moved beneath another has the
/// newer id), checked against `daemon`'s fsname and device and against the file it should be, and a
/// views file against `ours` (whether the process that names it is of the inspected one's container;
/// `None`: it has exited).
fn served_by(
    mounts: &[Mount],
    targets: &[String],
    daemon: &Daemon,
    ours: impl Fn(u32) -> Option<bool>,
) -> Vec<(String, ServedBy)> {
    targets
        .iter()
        .map(|target| {
            let on_target: Vec<&Mount> =
                mounts.iter().filter(|m| &m.mount_point == target).collect();
            let top = on_target
                .iter()
                .rev()
                .find(|m| !on_target.iter().any(|other| other.parent == m.id));
            let served = match top {
                None => ServedBy::Kernel,
                Some(m) if m.fstype == "fuse" && crate::reattach::is_fs_name(&m.source) => {
                    let device = if m.source == daemon.fs_name {
                        daemon.device.as_deref()
                    } else if m.source == daemon.views_fs_name {
                        daemon.views_device.as_deref()
                    } else {
                        None
                    };
                    let live = device == Some(m.device.as_str())
                        && crate::files::file_of_mount_root(&m.root)
                            == target.trim_start_matches('/');
                    // A views file's root is `/PID/...`: PID's container's file.
                    let named = (m.source == daemon.views_fs_name)
                        .then(|| crate::files::pid_of_mount_root(&m.root))
                        .flatten();
                    let source = m.source.clone();
                    match (live, named.map(|named| (named, ours(named)))) {
                        (true, Some((named, Some(false)))) => {
                            ServedBy::AnotherContainersView { source, named }
                        }
                        (true, Some((named, None))) => ServedBy::UnverifiedView { source, named },
                        (true, _) => ServedBy::Vprocd { source },
                        (false, _) => ServedBy::OtherVprocd {
                            source,
                            file: m.root.clone(),
                        },
                    }
                }
                Some(m) if m.fstype == "fuse.lxcfs" || m.source == "lxcfs" => ServedBy::Lxcfs,
                Some(m) => ServedBy::Other {
                    fstype: m.fstype.clone(),
                    source: m.source.clone(),
                },
            };
            (target.clone(), served)
        })
        .collect()
}

/// What `vproc status --pid` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PidStatus {
    pub pid: u32,
    pub comm: String,
    /// Its files and who serves them.
    pub files: Vec<(String, ServedBy)>,
    /// What its meminfo and CPU files say through vprocd (computed as `vproc show` does).
    pub mem_total_kb: Option<u64>,
    pub cpus: usize,
    /// The container the daemon counts it under (`DEV:INO` of the cgroup), if any.
    pub container_key: Option<String>,
    /// That container's row in the daemon's table; `None` when it read nothing in 15 minutes.
    pub daemon_row: Option<StatusRow>,
    /// Why the row could not be read (an unreachable daemon), if it could not.
    pub daemon_error: Option<String>,
}

/// Gathers [`PidStatus`] for process `pid` against the daemon at `mountpoint`.
pub fn pid_status(mountpoint: &Path, pid: u32) -> Result<PidStatus, String> {
    let roots = HostRoots::default();
    let proc_dir = roots.proc.join(pid.to_string());
    let gone = |e: &dyn std::fmt::Display| format!("no process {pid} to look at ({e})");
    // The process's start time, read before and after: a pid reused meanwhile is another process,
    // and the report would mix two.
    let started = || {
        std::fs::read_to_string(proc_dir.join("stat"))
            .ok()
            .and_then(|stat| crate::reader::stat_field(&stat, 22).map(str::to_string))
    };
    let started_before = started().ok_or_else(|| gone(&proc_dir.display()))?;
    let mountinfo = std::fs::File::open(proc_dir.join("mountinfo")).map_err(|e| gone(&e))?;
    let targets: Vec<String> = bind_targets().iter().map(|t| format!("/{t}")).collect();
    let mounts = mounts_on(std::io::BufReader::new(mountinfo), &targets).map_err(|e| gone(&e))?;
    let comm = String::from_utf8_lossy(&std::fs::read(proc_dir.join("comm")).unwrap_or_default())
        .trim()
        .to_string();
    let layout = CgroupLayout::detect(&roots.proc).map_err(|e| e.to_string())?;
    let options = Options {
        reader_ttl: std::time::Duration::ZERO,
        usage_ttl: std::time::Duration::ZERO,
        ..Options::default()
    };
    let renderer = Renderer::new(roots, layout, options).map_err(|e| e.to_string())?;
    // The container the daemon counts the process under (none: the host's).
    let key = renderer.container_key(pid).filter(|k| k.dev != 0);
    let files = served_by(&mounts, &targets, &Daemon::at(mountpoint), |named| {
        if named == pid {
            return Some(true);
        }
        std::fs::metadata(crate::host::proc_path(
            renderer.host().roots(),
            named,
            "stat",
        ))
        .ok()?;
        Some(renderer.container_key(named).filter(|k| k.dev != 0) == key)
    });
    let meminfo = renderer
        .render(Content::Meminfo, pid)
        .map_err(|e| e.to_string())?;
    let mem_total_kb = meminfo_kb(&String::from_utf8_lossy(&meminfo), "MemTotal");
    let cpus = renderer.visible_cpus(pid).len();
    let container_key = key.map(|k| k.to_string());
    if started() != Some(started_before) {
        return Err(format!(
            "process {pid} exited while it was looked at; give a running process"
        ));
    }
    let (daemon_row, daemon_error) = match fetch(mountpoint) {
        Ok(rows) => (
            rows.into_iter()
                .find(|row| row.key.is_some() && row.key == container_key),
            None,
        ),
        Err(e) => (None, Some(e)),
    };
    Ok(PidStatus {
        pid,
        comm,
        files,
        mem_total_kb,
        cpus,
        container_key,
        daemon_row,
        daemon_error,
    })
}

impl PidStatus {
    /// The report for a person: what is wrong first, then the figures.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "pid {} ({})", self.pid, self.comm.escape_debug());
        let _ = writeln!(out, "its files:");
        for (target, served) in &self.files {
            let by = match served {
                ServedBy::Vprocd { source } => format!("vprocd ({})", source.escape_debug()),
                ServedBy::OtherVprocd { source, file } => format!(
                    "not this daemon's live file: {} of {} (dead since its daemon stopped? \
                     vproc reattach heals that)",
                    file.escape_debug(),
                    source.escape_debug()
                ),
                ServedBy::AnotherContainersView { source, named } => format!(
                    "vprocd ({}), but the view of pid {named}, which is of another container: \
                     that container's figures",
                    source.escape_debug()
                ),
                ServedBy::UnverifiedView { source, named } => format!(
                    "vprocd ({}), the view of pid {named}, which has exited: whose figures cannot be \
                     told",
                    source.escape_debug()
                ),
                ServedBy::Lxcfs => "LXCFS".to_string(),
                ServedBy::Other { fstype, source } => format!(
                    "another mount ({} {}): not vprocd's",
                    fstype.escape_debug(),
                    source.escape_debug()
                ),
                ServedBy::Kernel => "not bound: the kernel's, with the host's figures".to_string(),
            };
            let _ = writeln!(out, "  {target:<34} {by}");
        }
        let meminfo = self
            .files
            .iter()
            .find_map(|(t, s)| (t == "/proc/meminfo").then_some(s));
        match meminfo {
            Some(ServedBy::Vprocd { .. } | ServedBy::UnverifiedView { .. }) => {}
            Some(ServedBy::AnotherContainersView { named, .. }) => {
                let _ = writeln!(
                    out,
                    "=> its /proc/meminfo is not its own container's: free and top there show the memory of \
                     pid {named}'s container (unmount it there; vproc attach --pid {} then binds its own)",
                    self.pid
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "=> its /proc/meminfo is not vprocd's: free and top there show the host's memory, whatever vprocd \
                     serves (bind vprocd's proc/meminfo over it: -v, the injection policy or the vproc RuntimeClass)"
                );
            }
        }
        let memory = self
            .mem_total_kb
            .map_or("unknown".to_string(), |kb| format!("{kb} kB"));
        let _ = writeln!(
            out,
            "through vprocd it reads (or would): MemTotal {memory}, {} CPU{}",
            self.cpus,
            if self.cpus == 1 { "" } else { "s" }
        );
        match (&self.container_key, &self.daemon_row, &self.daemon_error) {
            (None, _, _) => {
                let _ = writeln!(
                    out,
                    "it is in no container the daemon knows of (the host's cgroups, or not resolvable): the host's figures are its view"
                );
            }
            (Some(_), _, Some(error)) => {
                let _ = writeln!(out, "the daemon's counts: unavailable ({error})");
            }
            (Some(key), None, None) => {
                let _ = writeln!(
                    out,
                    "its container ({key}) made no read through the daemon in the last 15 minutes: \
                     its files do not reach this daemon"
                );
            }
            (Some(_), Some(row), None) => {
                let fallbacks = row.fallbacks_text().unwrap_or_else(|| "none".to_string());
                let _ = writeln!(
                    out,
                    "its container {}: {} reads ({:.1}/s), host's files served: {fallbacks}",
                    row.cgroup.escape_debug(),
                    row.reads_total,
                    row.reads_per_second
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAEMON_DEVICE: &str = "0:81";

    fn daemon() -> Daemon {
        Daemon {
            fs_name: "vprocd:/var/lib/lxcfs".to_string(),
            device: Some(DAEMON_DEVICE.to_string()),
            views_fs_name: "vprocd:/var/lib/lxcfs/.by-pid".to_string(),
            views_device: Some("0:82".to_string()),
        }
    }

    fn served(mountinfo: &str, targets: &[&str]) -> Vec<(String, ServedBy)> {
        let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let mounts = mounts_on(mountinfo.as_bytes(), &targets).unwrap();
        served_by(&mounts, &targets, &daemon(), |named| match named {
            666 => Some(false),
            777 => None,
            _ => Some(true),
        })
    }

    fn vprocd() -> ServedBy {
        ServedBy::Vprocd {
            source: "vprocd:/var/lib/lxcfs".to_string(),
        }
    }

    #[test]
    fn the_top_mount_on_a_path_is_what_the_process_reads() {
        let mountinfo = "\
600 500 0:70 / / rw - overlay overlay rw
601 600 0:5 / /proc rw - proc proc rw
602 601 0:80 /proc/meminfo /proc/meminfo ro - fuse lxcfs rw
603 602 0:81 /proc/meminfo /proc/meminfo ro - fuse vprocd:/var/lib/lxcfs rw
604 601 0:81 /proc/cpuinfo /proc/cpuinfo ro - fuse.lxcfs lxcfs rw
605 601 0:9 /null /proc/stat rw - devtmpfs udev rw
";
        assert_eq!(
            served(
                mountinfo,
                &[
                    "/proc/meminfo",
                    "/proc/cpuinfo",
                    "/proc/stat",
                    "/proc/uptime"
                ]
            ),
            vec![
                ("/proc/meminfo".to_string(), vprocd()),
                ("/proc/cpuinfo".to_string(), ServedBy::Lxcfs),
                (
                    "/proc/stat".to_string(),
                    ServedBy::Other {
                        fstype: "devtmpfs".to_string(),
                        source: "udev".to_string()
                    }
                ),
                ("/proc/uptime".to_string(), ServedBy::Kernel),
            ]
        );
    }

    #[test]
    fn a_view_named_by_a_process_of_another_container_is_said_to_be_so() {
        // The test's `ours`: 666 is of another container, 777 has exited, the rest are of the
        // inspected process's.
        let mountinfo = "\
601 600 0:5 / /proc rw - proc proc rw
700 601 0:82 /4242/proc/meminfo /proc/meminfo ro - fuse vprocd:/var/lib/lxcfs/.by-pid rw
701 601 0:82 /666/proc/stat /proc/stat ro - fuse vprocd:/var/lib/lxcfs/.by-pid rw
702 601 0:82 /666/proc/meminfo /proc/uptime ro - fuse vprocd:/var/lib/lxcfs/.by-pid rw
703 601 0:82 /777/proc/cpuinfo /proc/cpuinfo ro - fuse vprocd:/var/lib/lxcfs/.by-pid rw
";
        let views = "vprocd:/var/lib/lxcfs/.by-pid".to_string();
        assert_eq!(
            served(
                mountinfo,
                &[
                    "/proc/meminfo",
                    "/proc/stat",
                    "/proc/uptime",
                    "/proc/cpuinfo"
                ]
            ),
            vec![
                (
                    "/proc/meminfo".to_string(),
                    ServedBy::Vprocd {
                        source: views.clone()
                    }
                ),
                (
                    "/proc/stat".to_string(),
                    ServedBy::AnotherContainersView {
                        source: views.clone(),
                        named: 666
                    }
                ),
                // Another file than its own, whoever named it.
                (
                    "/proc/uptime".to_string(),
                    ServedBy::OtherVprocd {
                        source: views.clone(),
                        file: "/666/proc/meminfo".to_string()
                    }
                ),
                // Named by a process that has exited: cannot be told.
                (
                    "/proc/cpuinfo".to_string(),
                    ServedBy::UnverifiedView {
                        source: views,
                        named: 777
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_mount_moved_beneath_another_is_not_what_the_process_reads() {
        // 700 (vprocd's, newest) was moved beneath 650 (the container's own file): 650 is on top.
        let mountinfo = "\
601 600 0:5 / /proc rw - proc proc rw
700 601 0:81 /proc/meminfo /proc/meminfo ro - fuse vprocd:/var/lib/lxcfs rw
650 700 0:40 /fake /proc/meminfo rw - tmpfs tmpfs rw
";
        assert_eq!(
            served(mountinfo, &["/proc/meminfo"])[0].1,
            ServedBy::Other {
                fstype: "tmpfs".to_string(),
                source: "tmpfs".to_string()
            }
        );
    }

    #[test]
    fn a_dead_forged_or_wrong_vprocd_file_is_not_this_daemon_s() {
        // A predecessor's (another connection: another device), dead since it stopped.
        let dead = "603 601 0:77 /proc/meminfo /proc/meminfo ro - fuse vprocd:/var/lib/lxcfs rw\n";
        // Another of the daemon's files over this one.
        let wrong = "603 601 0:81 /proc/cpuinfo /proc/meminfo ro - fuse vprocd:/var/lib/lxcfs rw\n";
        // A daemon at another mountpoint.
        let elsewhere = "603 601 0:81 /proc/meminfo /proc/meminfo ro - fuse vprocd:/elsewhere rw\n";
        for (line, file, source) in [
            (dead, "/proc/meminfo", "vprocd:/var/lib/lxcfs"),
            (wrong, "/proc/cpuinfo", "vprocd:/var/lib/lxcfs"),
            (elsewhere, "/proc/meminfo", "vprocd:/elsewhere"),
        ] {
            assert_eq!(
                served(line, &["/proc/meminfo"])[0].1,
                ServedBy::OtherVprocd {
                    source: source.to_string(),
                    file: file.to_string()
                },
                "{line}"
            );
        }
    }

    #[test]
    fn mountinfo_that_is_not_utf_8_is_read_all_the_same() {
        let mut mountinfo = b"602 601 0:9 /x /odd\xff\xfe rw - tmpfs tmpfs rw\n".to_vec();
        mountinfo.extend_from_slice(
            b"603 601 0:81 /proc/meminfo /proc/meminfo ro - fuse vprocd:/var/lib/lxcfs rw\n",
        );
        let targets = vec!["/proc/meminfo".to_string()];
        let mounts = mounts_on(&mountinfo[..], &targets).unwrap();
        assert_eq!(
            served_by(&mounts, &targets, &daemon(), |_| Some(true))[0].1,
            vprocd()
        );
    }
}
