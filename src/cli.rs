//! The command lines of `vprocd` and `vproc`, in one place: the binaries parse them and `vproc man`
//! renders their man pages from them.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::files::FILES;
use crate::launcher::{self, Network};

/// Serves per-container /proc/{meminfo,cpuinfo,stat,uptime,swaps} and /sys/devices/system/cpu over FUSE.
#[derive(Parser, Debug)]
#[command(name = "vprocd", version, about)]
pub struct VprocdArgs {
    /// Where to mount (the LXCFS layout: bind MOUNTPOINT/proc/meminfo over a container's /proc/meminfo).
    #[arg(default_value = "/var/lib/lxcfs")]
    pub mountpoint: PathBuf,
    /// Run in the foreground (always the case; accepted for LXCFS compatibility).
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Log at debug level (RUST_LOG, when set, wins).
    #[arg(short = 'd', long)]
    pub debug: bool,
    /// Accepted for LXCFS compatibility; per-container load averages are always on.
    #[arg(short = 'l', long = "enable-loadavg")]
    pub enable_loadavg: bool,
    /// Accepted for LXCFS compatibility; quota-aware CPU counts are the default (see --cpu-view).
    #[arg(long = "enable-cfs")]
    pub enable_cfs: bool,
    /// How the visible CPU count is chosen: `quota` = min(cpuset, ceil(quota/period)); `cpuset` ignores quota.
    #[arg(long = "cpu-view", value_enum, default_value_t = CpuView::Quota)]
    pub cpu_view: CpuView,
    /// Containers see no swap (SwapTotal 0).
    #[arg(short = 'u', long = "disable-swap")]
    pub disable_swap: bool,
    /// Pidfile, locked while the daemon runs.
    #[arg(short = 'p', long, default_value = "/run/vprocd.pid")]
    pub pidfile: PathBuf,
    /// FUSE mount options (accepted for LXCFS compatibility and ignored).
    #[arg(short = 'o', value_name = "OPTS")]
    pub mount_options: Vec<String>,
    /// FUSE worker threads (at least 2).
    #[arg(long, value_parser = clap::value_parser!(u16).range(2..=256))]
    pub threads: Option<u16>,
    /// LXCFS's single-threaded mode; accepted and ignored (vprocd always uses worker threads).
    #[arg(short = 's', hide = true)]
    pub single_threaded: bool,
    /// LXCFS's pidfd switch; accepted and ignored (vprocd always validates readers with pidfds).
    #[arg(long = "enable-pidfd", hide = true)]
    pub enable_pidfd: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default; e.g. 127.0.0.1:9844, or
    /// 0.0.0.0:9844 for a scraper on the network: the metrics name no container).
    #[arg(long = "metrics-address", value_name = "ADDR:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CpuView {
    Quota,
    Cpuset,
}

#[derive(Parser, Debug)]
#[command(
    name = "vproc",
    version,
    about = "Tools for vprocd, the per-container /proc"
)]
pub struct VprocArgs {
    #[command(subcommand)]
    pub command: VprocCommand,
}

#[derive(Subcommand, Debug)]
pub enum VprocCommand {
    /// Run a command in a new container (pid, mount, uts, ipc, cgroup and network namespaces, a cgroup
    /// with the given limits) whose /proc/{meminfo,cpuinfo,stat,uptime,swaps} and /sys/devices/system/cpu
    /// come from vprocd. Exits with the command's exit code (128+N if signal N ended it; 125 if the
    /// container could not be set up, 126/127 if the command could not be run / was not found).
    Run(Box<RunArgs>),
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
    /// Bind-mount the daemon's files over /proc/{meminfo,cpuinfo,stat,uptime,swaps} and
    /// /sys/devices/system/cpu of a running container, from the host: nothing is needed in its image.
    Attach {
        /// A process of the container (its mount namespace is entered).
        #[arg(long)]
        pid: u32,
        /// The container's root inside its mount namespace (`/` once the container runs).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Where vprocd is mounted.
        #[arg(long, default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
    },
    /// OCI hook (createRuntime stage): reads the container state JSON on stdin and attaches. Never fails
    /// the container: errors are reported on stderr and in --log, and the container keeps the host's files.
    Hook {
        /// Where vprocd is mounted.
        #[arg(long, default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
        /// Where to append what the hook did (besides stderr).
        #[arg(long, default_value = "/var/log/vproc-hook.log")]
        log: PathBuf,
    },
    /// Exit 0 if vprocd serves MOUNTPOINT and is healthy, 1 with the reason otherwise: a liveness probe
    /// that fails on a dead mount (ENOTCONN) and on a daemon that serves the host's files because of its
    /// own errors (out of file descriptors or memory) within the last 10 s, or is near its fd limit.
    Check {
        /// Where vprocd is mounted.
        #[arg(long, default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
        /// Print the daemon's health report (fds, readers, open handles, errors) when healthy too.
        #[arg(long, short)]
        verbose: bool,
    },
    /// List the containers the daemon serves: cgroup, pid-namespace init, latest readers, the MemTotal,
    /// CPU count and load they see, reads per second and in all, and the reads that got the host's
    /// files with why (no_pid: the daemon cannot see the reader's pid namespace; host_process; not_limited;
    /// views_off; reader_gone; reader_error; daemon_error). Most reads first. Needs CAP_SYS_ADMIN.
    Status {
        /// Where vprocd is mounted.
        #[arg(long, default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
        /// Print JSON (one object: the daemon's health report and the containers) instead of a table.
        #[arg(long)]
        json: bool,
        /// One process instead: which of its /proc and /sys files are vprocd's (its mountinfo), what
        /// they say through vprocd, and its container's reads and fallbacks.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Heal containers whose files went dead with a previous vprocd (ENOTCONN): replace each such bind
    /// mount, in every mount namespace, with the same file from the running daemon. vprocd runs this
    /// when it starts; nothing in the containers restarts.
    Reattach {
        /// Where the running vprocd is mounted.
        #[arg(long, default_value = DEFAULT_MOUNTPOINT)]
        mountpoint: PathBuf,
    },
    /// Answer sysinfo(2) and sched_getaffinity(2) for runc and crun containers whose seccomp profile
    /// hands them to SOCKET (`listenerPath`, `SCMP_ACT_NOTIFY`; see `vproc seccomp-profile`): memory,
    /// swap, uptime, load and CPU count as the container's /proc shows them. Each container is served
    /// by a process of its own that lives as long as it does, so a restart of the agent (or of vprocd)
    /// never fails a running container's calls.
    SeccompAgent {
        /// The unix socket the profiles' listenerPath names.
        #[arg(long, default_value = crate::notify::agent::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// sched_getaffinity returns the real CPU mask (thread pools size for the host's CPUs).
        #[arg(long)]
        host_affinity: bool,
        /// sysinfo returns the host's memory, swap, uptime and load.
        #[arg(long)]
        host_sysinfo: bool,
    },
    /// Print the seccomp profile that hands sysinfo and sched_getaffinity to `vproc seccomp-agent`:
    /// Docker's default profile plus those two calls as SCMP_ACT_NOTIFY with a listenerPath.
    SeccompProfile {
        /// docker: for `podman run --security-opt seccomp=FILE`; kubernetes: a Localhost profile
        /// (OCI format, decided for x86_64 and the default capabilities).
        #[arg(long, value_enum, default_value_t = crate::notify::profile::Format::Docker)]
        format: crate::notify::profile::Format,
        /// The agent's socket.
        #[arg(long, default_value = crate::notify::agent::DEFAULT_SOCKET)]
        socket: String,
    },
    /// Copy the vproc-runc installed next to this vproc to DEST, atomically (the DaemonSet's init
    /// container installs the runtime wrapper on each node this way; the image has no shell).
    #[command(hide = true)]
    InstallRuncWrapper {
        /// Where the wrapper goes, e.g. /opt/vproc/bin/vproc-runc.
        dest: PathBuf,
    },
    /// Write the man pages of vprocd and vproc into DIR (for packaging).
    #[command(hide = true)]
    Man {
        /// Where to write vprocd.8 and vproc.1.
        dir: PathBuf,
    },
}

/// `vproc run`'s options.
#[derive(clap::Args, Debug)]
#[command(
    trailing_var_arg = true,
    group = clap::ArgGroup::new("root").required(true).args(["rootfs", "image"])
)]
pub struct RunArgs {
    /// The root filesystem, a directory used in place (writes go to it unless --read-only).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// An image archive: `docker save` output or an OCI image layout (a directory or a tar of one,
    /// gzip layers too). Unpacked once into --image-cache; the container writes to a layer of its own.
    #[arg(long, value_name = "ARCHIVE")]
    pub image: Option<PathBuf>,
    /// Memory limit (bytes, or with a k, m or g suffix); the container gets no swap beyond it.
    #[arg(short = 'm', long, value_name = "BYTES", value_parser = launcher::options::parse_memory)]
    pub memory: Option<u64>,
    /// CPU limit in CPUs (CFS quota over a 100000 us period): 0.5 is half a CPU.
    #[arg(long, value_parser = launcher::options::parse_cpus)]
    pub cpus: Option<f64>,
    /// The CPUs the container may run on, e.g. 0-1 or 0,2.
    #[arg(long, value_name = "LIST", value_parser = launcher::options::parse_cpuset)]
    pub cpuset_cpus: Option<String>,
    /// Most processes (and threads) the container may have.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pids_limit: Option<u64>,
    /// Network: `none` (a new namespace with lo up) or `host`.
    #[arg(long, value_enum, default_value_t = Network::None)]
    pub net: Network,
    /// The container's hostname (default: its name).
    #[arg(long, value_parser = launcher::options::parse_hostname)]
    pub hostname: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass this one's value); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = launcher::options::parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the container (created if missing).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as UID[:GID] or NAME[:GROUP] (names from the container's /etc/passwd and /etc/group); the
    /// default is the image's User, else root with Docker's default capabilities.
    #[arg(short = 'u', long, value_name = "UID[:GID]", value_parser = launcher::user::parse_user_spec)]
    pub user: Option<String>,
    /// Bind-mount a host path: SRC:DST or SRC:DST:ro; repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]", value_parser = launcher::options::parse_volume)]
    pub volumes: Vec<launcher::Volume>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// The container's name (default: a random id); its cgroup is vproc/NAME.
    #[arg(long, value_parser = launcher::options::parse_name)]
    pub name: Option<String>,
    /// Where vprocd is mounted.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_MOUNTPOINT)]
    pub lxcfs: PathBuf,
    /// Start without vprocd's files (the container sees the host's /proc/meminfo and friends).
    #[arg(long)]
    pub no_lxcfs: bool,
    /// sched_getaffinity(2) returns the real CPU mask instead of one cut to the container's CPU count
    /// (nproc, Python's os.sched_getaffinity, Node, OpenMP and OpenBLAS then size for the host's CPUs).
    #[arg(long)]
    pub host_affinity: bool,
    /// sysinfo(2) returns the host's memory, swap, uptime and load instead of the container's
    /// (busybox free and uptime, glibc's sysconf(_SC_PHYS_PAGES)).
    #[arg(long)]
    pub host_sysinfo: bool,
    /// Where unpacked images are kept.
    #[arg(long, value_name = "DIR", default_value = launcher::options::DEFAULT_IMAGE_CACHE)]
    pub image_cache: PathBuf,
    /// Where containers' writable layers live while they run.
    #[arg(
        long,
        value_name = "DIR",
        default_value = launcher::options::DEFAULT_STATE_DIR,
        hide = true
    )]
    pub state_dir: PathBuf,
    /// `seccomp=unconfined`, `seccomp=PROFILE.json` (Docker's profile format; the default is Docker's
    /// default profile) or `no-new-privileges` (always set); repeatable.
    #[arg(long = "security-opt", value_name = "OPT", value_parser = launcher::options::parse_security_opt)]
    pub security_opt: Vec<launcher::options::SecurityOpt>,
    /// Run vproc's init as pid 1 (reaps zombies, forwards signals) with the command under it; without
    /// it the command is pid 1, as with docker run.
    #[arg(long)]
    pub init: bool,
    /// Keep stdin open: the command reads vproc run's stdin (else /dev/null).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal: a pty of the container's, relayed to vproc run's stdin/stdout.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Seconds to wait after passing a SIGTERM on to the container before killing it (SIGKILL).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub stop_timeout: u64,
    /// The command and its arguments (default: the image's Entrypoint and Cmd).
    #[arg(value_name = "CMD", allow_hyphen_values = true)]
    pub command: Vec<String>,
}

impl RunArgs {
    /// The checked request.
    pub fn into_spec(self) -> launcher::RunSpec {
        let root = match (self.rootfs, self.image) {
            (Some(dir), _) => launcher::options::RootSource::Dir(dir),
            (None, Some(image)) => launcher::options::RootSource::Image(image),
            (None, None) => unreachable!("clap requires --rootfs or --image"),
        };
        launcher::RunSpec {
            root,
            args: self.command,
            name: self
                .name
                .unwrap_or_else(launcher::options::new_container_id),
            hostname: self.hostname,
            env: self.env,
            workdir: self.workdir,
            user: self.user,
            volumes: self.volumes,
            read_only: self.read_only,
            network: self.net,
            limits: launcher::cgroup::Limits {
                memory_bytes: self.memory,
                cpus: self.cpus,
                cpuset_cpus: self.cpuset_cpus,
                pids_max: self.pids_limit,
            },
            lxcfs: (!self.no_lxcfs).then_some(self.lxcfs),
            // --no-lxcfs keeps everything the host's, the two calls too.
            calls: crate::notify::Calls {
                sysinfo: !self.host_sysinfo && !self.no_lxcfs,
                affinity: !self.host_affinity && !self.no_lxcfs,
            },
            image_cache: self.image_cache,
            state_dir: self.state_dir,
            seccomp: self
                .security_opt
                .into_iter()
                .filter_map(|opt| match opt {
                    launcher::options::SecurityOpt::Seccomp(policy) => Some(policy),
                    launcher::options::SecurityOpt::NoNewPrivileges => None,
                })
                .next_back()
                .unwrap_or_default(),
            init: self.init,
            interactive: self.interactive,
            tty: self.tty,
            stop_timeout: std::time::Duration::from_secs(self.stop_timeout),
        }
    }
}

pub const DEFAULT_MOUNTPOINT: &str = "/var/lib/lxcfs";

/// Writes `vprocd.8` and `vproc.1` into `dir`.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    for (command, file) in [
        (VprocdArgs::command(), "vprocd.8"),
        (VprocArgs::command(), "vproc.1"),
    ] {
        let section = if file.ends_with(".8") { "8" } else { "1" };
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .section(section)
            .render(&mut page)?;
        std::fs::write(dir.join(file), page)?;
    }
    Ok(())
}
