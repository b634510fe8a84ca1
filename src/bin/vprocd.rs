//! vprocd: the FUSE daemon. Accepts LXCFS's flags so existing manifests only swap the binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use vproc::daemon::{DaemonConfig, run};
use vproc::render::Options;
use vproc::view::cpus::CpuCountRule;

/// Serves per-container /proc/{meminfo,cpuinfo,stat,uptime,swaps} and /sys/devices/system/cpu over FUSE.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where to mount (the LXCFS layout: bind MOUNTPOINT/proc/meminfo over a container's /proc/meminfo).
    #[arg(default_value = "/var/lib/lxcfs")]
    mountpoint: PathBuf,
    /// Run in the foreground (always the case; accepted for LXCFS compatibility).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Log at debug level (RUST_LOG, when set, wins).
    #[arg(short = 'd', long)]
    debug: bool,
    /// Accepted for LXCFS compatibility; per-container load averages are not implemented yet.
    #[arg(short = 'l', long = "enable-loadavg")]
    enable_loadavg: bool,
    /// Accepted for LXCFS compatibility; quota-aware CPU counts are the default (see --cpu-view).
    #[arg(long = "enable-cfs")]
    enable_cfs: bool,
    /// How the visible CPU count is chosen: `quota` = min(cpuset, ceil(quota/period)); `cpuset` ignores quota.
    #[arg(long = "cpu-view", value_enum, default_value_t = CpuView::Quota)]
    cpu_view: CpuView,
    /// Containers see no swap (SwapTotal 0).
    #[arg(short = 'u', long = "disable-swap")]
    disable_swap: bool,
    /// Pidfile, locked while the daemon runs.
    #[arg(short = 'p', long, default_value = "/run/vprocd.pid")]
    pidfile: PathBuf,
    /// FUSE mount options (accepted for LXCFS compatibility and ignored).
    #[arg(short = 'o', value_name = "OPTS")]
    mount_options: Vec<String>,
    /// FUSE worker threads (at least 2).
    #[arg(long, value_parser = clap::value_parser!(u16).range(2..=256))]
    threads: Option<u16>,
    /// LXCFS's single-threaded mode; accepted and ignored (vprocd always uses worker threads).
    #[arg(short = 's', hide = true)]
    single_threaded: bool,
    /// LXCFS's pidfd switch; accepted and ignored (vprocd always validates readers with pidfds).
    #[arg(long = "enable-pidfd", hide = true)]
    enable_pidfd: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CpuView {
    Quota,
    Cpuset,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let default_level = if args.debug { "debug" } else { "info" };
    // fuser logs "[Not Implemented]" once for flush, which vprocd leaves unimplemented on purpose.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(format!("{default_level},fuser=error")),
    )
    .init();
    for opts in &args.mount_options {
        log::info!("ignoring -o {opts} (LXCFS mount options do not apply to vprocd)");
    }
    if args.enable_loadavg {
        log::info!("--enable-loadavg: proc/loadavg shows the host's load averages for now");
    }
    let threads = args.threads.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2)
    });
    let config = DaemonConfig {
        mountpoint: args.mountpoint,
        pidfile: args.pidfile,
        threads,
        options: Options {
            cpu_rule: match args.cpu_view {
                CpuView::Quota => CpuCountRule::QuotaAndCpuset,
                CpuView::Cpuset => CpuCountRule::Cpuset,
            },
            swap_enabled: !args.disable_swap,
            ..Options::default()
        },
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vprocd: {e}");
            ExitCode::FAILURE
        }
    }
}
