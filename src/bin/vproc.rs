//! vproc: tools around the daemon. `vproc show FILE --pid N` prints what process N reads through the
//! mount, computed directly, without FUSE.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vproc::cgroup::CgroupLayout;
use vproc::files::{FILES, file_by_show_name};
use vproc::host::HostRoots;
use vproc::render::{Options, Renderer};
use vproc::view::cpus::CpuCountRule;

#[derive(Parser, Debug)]
#[command(version, about = "Tools for vprocd, the per-container /proc")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a virtual file as process PID sees it through the mount.
    Show {
        /// The file to print.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(FILES.iter().map(|f| f.show_name)))]
        file: String,
        /// The reading process (default: this one).
        #[arg(long)]
        pid: Option<u32>,
        /// Read /proc from here (a fixture tree in tests).
        #[arg(long, default_value = "/proc")]
        proc_root: PathBuf,
        /// Read /sys from here.
        #[arg(long, default_value = "/sys")]
        sys_root: PathBuf,
        /// Read cgroups from this directory instead of the mounts in PROC_ROOT/self/mountinfo: a v2
        /// hierarchy (with cgroup.controllers) or one directory per v1 controller.
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// Count CPUs from the cpuset alone, ignoring CFS quota (like vprocd --cpu-view=cpuset).
        #[arg(long)]
        cpuset_only: bool,
        /// Show no swap (like vprocd --disable-swap).
        #[arg(short = 'u', long)]
        disable_swap: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Args::parse().command {
        Command::Show {
            file,
            pid,
            proc_root,
            sys_root,
            cgroup_root,
            cpuset_only,
            disable_swap,
        } => {
            let options = Options {
                cpu_rule: if cpuset_only {
                    CpuCountRule::Cpuset
                } else {
                    CpuCountRule::QuotaAndCpuset
                },
                swap_enabled: !disable_swap,
                reader_ttl: std::time::Duration::ZERO,
                usage_ttl: std::time::Duration::ZERO,
            };
            let pid = pid.unwrap_or_else(std::process::id);
            show(
                &file,
                pid,
                HostRoots {
                    proc: proc_root,
                    sys: sys_root,
                },
                cgroup_root,
                options,
            )
        }
    }
}

/// `vproc show`: renders one file for `pid` and prints it.
fn show(
    name: &str,
    pid: u32,
    roots: HostRoots,
    cgroup_root: Option<PathBuf>,
    options: Options,
) -> ExitCode {
    let Some(file) = file_by_show_name(name) else {
        eprintln!("vproc show: unknown file {name:?}");
        return ExitCode::from(2);
    };
    if pid != 0 && !roots.proc.join(pid.to_string()).exists() {
        eprintln!(
            "vproc show: no process {pid} in {} (give --pid of a running process)",
            roots.proc.display()
        );
        return ExitCode::FAILURE;
    }
    let layout = match cgroup_root {
        Some(root) => CgroupLayout::from_root_dir(&root),
        None => match CgroupLayout::detect(&roots.proc) {
            Ok(layout) => layout,
            Err(e) => {
                eprintln!("vproc show: cannot find the cgroup mounts: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let rendered = Renderer::new(roots, layout, options).and_then(|r| r.render(file.content, pid));
    match rendered {
        Ok(bytes) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`vproc show stat | head -1`) is not an error.
            let _ = stdout.write_all(&bytes).and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vproc show: {e}");
            ExitCode::FAILURE
        }
    }
}
