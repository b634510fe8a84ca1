//! vprocd: the FUSE daemon. Accepts LXCFS's flags so existing manifests only swap the binary.

use std::process::ExitCode;

use clap::Parser;
use vproc::cli::{CpuView, VprocdArgs as Args};
use vproc::daemon::{DaemonConfig, run};
use vproc::render::Options;
use vproc::view::cpus::CpuCountRule;

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
        log::info!(
            "-l/--enable-loadavg: accepted for LXCFS; per-container load averages are always on"
        );
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
        metrics_address: args.metrics_address,
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vprocd: {e}");
            ExitCode::FAILURE
        }
    }
}
