//! vproc: tools around the daemon. `vproc show FILE --pid N` prints what process N reads through the
//! mount, computed directly, without FUSE.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vproc::attach::Attached;
use vproc::cgroup::CgroupLayout;
use vproc::cli::{VprocArgs as Args, VprocCommand as Command};
use vproc::files::file_by_show_name;
use vproc::host::HostRoots;
use vproc::oci::State;
use vproc::reattach::Outcome;
use vproc::render::{Options, Renderer};
use vproc::view::cpus::CpuCountRule;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            // `vproc run` passes the payload's exit codes through; its own usage errors are 125, as Docker's.
            let is_run = std::env::args().nth(1).as_deref() == Some("run");
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ if is_run => ExitCode::from(vproc::launcher::EXIT_SETUP_FAILED),
                _ => ExitCode::from(2),
            };
        }
    };
    match args.command {
        Command::Run(args) => run(args.into_spec()),
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
                ..Options::default()
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
        Command::Attach {
            pid,
            root,
            mountpoint,
        } => match attach(pid, &root, &mountpoint) {
            Ok(done) => {
                print_lines(&done);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vproc attach: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check {
            mountpoint,
            verbose,
        } => match vproc::health::check(&mountpoint) {
            Ok(report) => {
                if verbose {
                    print!("{report}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vproc check: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Status {
            mountpoint,
            json,
            pid: Some(pid),
        } => match vproc::metrics::pid_status::pid_status(&mountpoint, pid) {
            Ok(status) if json => match serde_json::to_string_pretty(&status) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vproc status: {e}");
                    ExitCode::FAILURE
                }
            },
            Ok(status) => {
                print!("{}", status.text());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vproc status: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Status {
            mountpoint, json, ..
        } => match vproc::metrics::containers::status(&mountpoint, json) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vproc status: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Reattach { mountpoint } => {
            let mountpoint = vproc::reattach::canonical_mountpoint(&mountpoint);
            if let Err(e) = vproc::attach::check_daemon(&mountpoint) {
                eprintln!("vproc reattach: {e}");
                return ExitCode::FAILURE;
            }
            // One fd per namespace with the daemon's mounts is held between the scan and its heal.
            vproc::daemon::raise_open_file_limit();
            let outcomes =
                vproc::reattach::reattach_all(std::path::Path::new("/proc"), &mountpoint);
            let mut failed = false;
            let mut lines = Vec::new();
            for outcome in outcomes {
                match outcome {
                    Outcome::Healed { pid, mounts: 0 } => {
                        lines.push(format!("pid {pid}: every mount live"))
                    }
                    Outcome::Healed { pid, mounts } => {
                        lines.push(format!("healed pid {pid}: {mounts} mounts"))
                    }
                    Outcome::TimedOut { pid } => eprintln!(
                        "vproc reattach: skipped pid {pid}: its mount namespace did not answer within {} s \
                         (a FUSE mount there hangs); run vproc reattach again once it answers",
                        vproc::reattach::NAMESPACE_TIMEOUT.as_secs()
                    ),
                    Outcome::Failed { pid, error } => {
                        failed = true;
                        // Paths in it come from a container's mountinfo: no line of theirs.
                        let error: String = error
                            .chars()
                            .map(|c| if c.is_control() { ' ' } else { c })
                            .collect();
                        eprintln!("vproc reattach: pid {pid}: {error}");
                    }
                }
            }
            print_lines(&lines);
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::SeccompAgent {
            socket,
            host_affinity,
            host_sysinfo,
        } => {
            let calls = vproc::notify::Calls {
                sysinfo: !host_sysinfo,
                affinity: !host_affinity,
            };
            match vproc::notify::agent::run(&socket, calls) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vproc seccomp-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::SeccompProfile { format, socket } => {
            print!("{}", vproc::notify::profile::profile(format, &socket));
            ExitCode::SUCCESS
        }
        Command::InstallRuncWrapper { dest } => {
            match vproc::runc_wrapper::install_next_to_self(&dest) {
                Ok(()) => {
                    println!("installed {}", dest.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vproc install-runc-wrapper: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Man { dir } => match vproc::cli::write_man_pages(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vproc man: cannot write to {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Hook { mountpoint, log } => {
            let mut stdin = String::new();
            let outcome = std::io::Read::read_to_string(&mut std::io::stdin(), &mut stdin)
                .map_err(|e| format!("cannot read the OCI state on stdin: {e}"))
                .and_then(|_| hook(&stdin, &mountpoint));
            let line = match &outcome {
                Ok(message) => message.clone(),
                Err(e) => {
                    eprintln!("vproc hook: {e}; the container keeps the host's /proc files");
                    format!("error: {e}; the container keeps the host's /proc files")
                }
            };
            append_log(&log, &line);
            // A hook that fails makes the runtime refuse the container; ours never does.
            ExitCode::SUCCESS
        }
    }
}

/// `vproc run`: the payload's exit code; 125 with the reason when the container could not start.
fn run(spec: vproc::launcher::RunSpec) -> ExitCode {
    let memory = spec.limits.memory_bytes;
    match vproc::launcher::run(&spec) {
        Ok(outcome) => {
            if outcome.oom_kills > 0 {
                let limit = memory.map_or(String::new(), |b| {
                    format!(" (memory limit {} MiB)", b >> 20)
                });
                eprintln!(
                    "vproc run: container {}: the kernel's OOM killer ended {} process(es){limit}; exit code {}",
                    spec.name, outcome.oom_kills, outcome.exit_code
                );
            }
            ExitCode::from(outcome.exit_code)
        }
        Err(e) => {
            eprintln!("vproc run: {e}");
            ExitCode::from(vproc::launcher::EXIT_SETUP_FAILED)
        }
    }
}

/// `vproc attach`: one line per target.
fn attach(
    pid: u32,
    root: &std::path::Path,
    mountpoint: &std::path::Path,
) -> Result<Vec<String>, String> {
    let done = vproc::attach::attach(pid, root, mountpoint).map_err(|e| e.to_string())?;
    Ok(done
        .into_iter()
        .map(|a| match a {
            Attached::Mounted(p) => format!("mounted {}", p.display()),
            Attached::AlreadyAttached(p) => format!("already attached {}", p.display()),
            Attached::Missing(p) => format!("skipped {} (not in the container)", p.display()),
            Attached::LeftAlone(p) => {
                format!("left {} alone (not a dead vprocd mount)", p.display())
            }
            Attached::Kept(p, why) => format!("kept the shared file at {} ({why})", p.display()),
        })
        .collect())
}

/// `vproc hook`: attaches the container described by the OCI state unless it opted out.
fn hook(state_json: &str, mountpoint: &std::path::Path) -> Result<String, String> {
    let state = State::parse(state_json).map_err(|e| e.to_string())?;
    if state.enabled() == Some(false) {
        return Ok(format!(
            "container {}: {}=false, left alone",
            state.id,
            vproc::oci::ENABLE_ANNOTATION
        ));
    }
    let pid = state.pid().map_err(|e| e.to_string())?;
    let rootfs = state.rootfs().map_err(|e| e.to_string())?;
    let done =
        attach(pid, &rootfs, mountpoint).map_err(|e| format!("container {}: {e}", state.id))?;
    Ok(format!(
        "container {} (pid {pid}): {}",
        state.id,
        done.join(", ")
    ))
}

/// Prints report lines; a closed pipe (`vproc attach ... | head -1`) ends the output quietly.
fn print_lines(lines: &[String]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        if writeln!(stdout, "{line}").is_err() {
            return;
        }
    }
}

fn append_log(path: &std::path::Path, line: &str) {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut file) = file {
        let _ = writeln!(file, "{} vproc hook: {line}", unix_time());
    }
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
