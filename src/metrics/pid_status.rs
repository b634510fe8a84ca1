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
    /// A vprocd mount (its fsname, `vprocd:MOUNTPOINT`).
    Vprocd {
        source: String,
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

/// Who serves each of `targets` (`/proc/meminfo`, ...) in a process's `mountinfo`: the last mount on
/// the path, since a later mount covers an earlier one.
pub fn served_by(mountinfo: &str, targets: &[String]) -> Vec<(String, ServedBy)> {
    let lines: Vec<MountinfoLine> = mountinfo.lines().filter_map(MountinfoLine::parse).collect();
    targets
        .iter()
        .map(|target| {
            let served = match lines.iter().rev().find(|l| &l.mount_point == target) {
                None => ServedBy::Kernel,
                Some(l) if l.fstype == "fuse" && crate::reattach::is_fs_name(&l.source) => {
                    ServedBy::Vprocd {
                        source: l.source.clone(),
                    }
                }
                Some(l) if l.fstype == "fuse.lxcfs" || l.source == "lxcfs" => ServedBy::Lxcfs,
                Some(l) => ServedBy::Other {
                    fstype: l.fstype.to_string(),
                    source: l.source.clone(),
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
    let mountinfo = std::fs::read_to_string(proc_dir.join("mountinfo"))
        .map_err(|e| format!("no process {pid} to look at ({}: {e})", proc_dir.display()))?;
    let comm = std::fs::read_to_string(proc_dir.join("comm"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let targets: Vec<String> = bind_targets().iter().map(|t| format!("/{t}")).collect();
    let files = served_by(&mountinfo, &targets);
    let layout = CgroupLayout::detect(&roots.proc).map_err(|e| e.to_string())?;
    let options = Options {
        reader_ttl: std::time::Duration::ZERO,
        usage_ttl: std::time::Duration::ZERO,
        ..Options::default()
    };
    let renderer = Renderer::new(roots, layout, options).map_err(|e| e.to_string())?;
    let meminfo = renderer
        .render(Content::Meminfo, pid)
        .map_err(|e| e.to_string())?;
    let mem_total_kb = meminfo_kb(&String::from_utf8_lossy(&meminfo), "MemTotal");
    let cpus = renderer.visible_cpus(pid).len();
    let container_key = renderer
        .container_key(pid)
        .filter(|k| k.dev != 0)
        .map(|k| k.to_string());
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
        let meminfo_is_vprocd_s = self
            .files
            .iter()
            .any(|(t, s)| t == "/proc/meminfo" && matches!(s, ServedBy::Vprocd { .. }));
        if !meminfo_is_vprocd_s {
            let _ = writeln!(
                out,
                "=> its /proc/meminfo is not vprocd's: free and top there show the host's memory, whatever vprocd \
                 serves (bind vprocd's proc/meminfo over it: -v, the injection policy or the vproc RuntimeClass)"
            );
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

    #[test]
    fn the_last_mount_on_a_path_is_what_the_process_reads() {
        let mountinfo = "\
600 500 0:70 / / rw - overlay overlay rw
601 600 0:5 / /proc rw - proc proc rw
602 601 0:80 /proc/meminfo /proc/meminfo ro - fuse lxcfs rw
603 601 0:81 /proc/meminfo /proc/meminfo ro - fuse vprocd:/var/lib/lxcfs rw
604 601 0:81 /proc/cpuinfo /proc/cpuinfo ro - fuse.lxcfs lxcfs rw
605 601 0:9 /null /proc/stat rw - devtmpfs udev rw
";
        let targets: Vec<String> = [
            "/proc/meminfo",
            "/proc/cpuinfo",
            "/proc/stat",
            "/proc/uptime",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        assert_eq!(
            served_by(mountinfo, &targets),
            vec![
                (
                    "/proc/meminfo".to_string(),
                    ServedBy::Vprocd {
                        source: "vprocd:/var/lib/lxcfs".to_string()
                    }
                ),
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
}
