//! vprocd's life: lock the pidfile, see the host's cgroups, clear a stale mountpoint, mount, serve until
//! SIGTERM/SIGINT (or until someone unmounts us), then unmount, detaching if the mount is busy. The
//! signals LXCFS's tooling sends mean what they mean to LXCFS: SIGUSR2 switches the per-container views
//! off (every reader gets the host's files) and on again; SIGUSR1 (reload) and SIGHUP are logged, never
//! fatal (there is nothing to reload).

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use fuser::{Config, MountOption, Session, SessionACL};
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{SigSet, Signal};

use crate::cgroup::CgroupLayout;
use crate::fs::views::Views;
use crate::fs::{OpenFiles, VprocFs};
use crate::host::HostRoots;
use crate::metrics::ReattachReport;
use crate::metrics::exporter::{Exporter, NodeState};
use crate::reader::{Budget, SWEEP_PERIOD};
use crate::render::{Options, Renderer};
use crate::view::loadavg::LOAD_PERIOD;

/// What the daemon is asked to do.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub mountpoint: PathBuf,
    pub pidfile: PathBuf,
    /// FUSE worker threads (at least 2: one slow host read must not stall every container).
    pub threads: usize,
    pub options: Options,
    /// Where to serve the Prometheus metrics (`None`: not served).
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// Why the daemon could not start or run, with what to do about it.
#[derive(Debug)]
pub enum DaemonError {
    Pidfile { path: PathBuf, source: io::Error },
    AlreadyRunning { path: PathBuf, pid: String },
    CgroupNamespace { source: io::Error },
    Mountpoint { path: PathBuf, source: io::Error },
    Mount { path: PathBuf, source: io::Error },
    Setup(crate::error::Error),
    Signals(nix::Error),
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Pidfile { path, source } => {
                write!(f, "cannot open pidfile {}: {source}", path.display())
            }
            DaemonError::AlreadyRunning { path, pid } => write!(
                f,
                "another vprocd (pid {pid}) holds {}; stop it first, or give this one its own --pidfile and mountpoint",
                path.display()
            ),
            DaemonError::CgroupNamespace { source } => write!(
                f,
                "vprocd runs in a private cgroup namespace and cannot join the host's (/proc/1/ns/cgroup): {source}; \
                 run it with the host's pid namespace and CAP_SYS_ADMIN (Kubernetes: hostPID: true, privileged)"
            ),
            DaemonError::Mountpoint { path, source } => {
                write!(f, "cannot prepare mountpoint {}: {source}", path.display())
            }
            DaemonError::Mount { path, source } => write!(
                f,
                "cannot mount FUSE at {}: {source} (is /dev/fuse present and are we root?)",
                path.display()
            ),
            DaemonError::Setup(e) => write!(f, "{e}"),
            DaemonError::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
        }
    }
}

impl std::error::Error for DaemonError {}

/// Runs the daemon in the foreground until SIGTERM/SIGINT or until the mount goes away.
pub fn run(config: &DaemonConfig) -> Result<(), DaemonError> {
    // Block the stop signals before any thread exists, so every thread inherits the mask and only our
    // waiting thread receives them.
    let mut handled_signals = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        handled_signals.add(signal);
    }
    handled_signals
        .thread_block()
        .map_err(DaemonError::Signals)?;

    let pidfile = Pidfile::lock(&config.pidfile)?;
    let roots = HostRoots::default();
    join_host_cgroup_namespace(&roots.proc)?;
    let layout = CgroupLayout::detect(&roots.proc).map_err(DaemonError::Setup)?;
    log::info!("cgroup layout: {layout:?}");
    let mut options = config.options.clone();
    options.budget = Budget::for_open_files(raise_open_file_limit());
    log::info!("budget: {:?}", options.budget);
    let renderer = Arc::new(Renderer::new(roots, layout, options).map_err(DaemonError::Setup)?);
    sweep_periodically(Arc::clone(&renderer));
    sample_loads_periodically(Arc::clone(&renderer));

    prepare_mountpoint(&config.mountpoint)?;
    let mountpoint = crate::reattach::canonical_mountpoint(&config.mountpoint);
    let mut fuse_config = Config::default();
    // The fsname names the mountpoint: a successor heals exactly the mounts of its predecessors.
    let mount_options = |at: &Path| {
        vec![
            MountOption::FSName(crate::reattach::fs_name(at)),
            MountOption::RO,
            MountOption::NoSuid,
            MountOption::NoDev,
            MountOption::DefaultPermissions,
        ]
    };
    fuse_config.mount_options = mount_options(&mountpoint);
    fuse_config.acl = SessionACL::All;
    fuse_config.n_threads = Some(config.threads.max(2));
    // One /dev/fuse fd per worker (FUSE_DEV_IOC_CLONE): workers do not contend on one fd.
    fuse_config.clone_fd = true;
    let mount_error = |source| DaemonError::Mount {
        path: config.mountpoint.clone(),
        source,
    };
    let renderer_for_signals = Arc::clone(&renderer);
    let (fs, views_fs) = VprocFs::pair(Arc::clone(&renderer));
    if let Some(address) = config.metrics_address {
        serve_metrics(
            address,
            Arc::clone(&renderer),
            fs.open_files(),
            views_fs.views(),
        );
    }
    let views = views_fs.views();
    let session = Session::new(fs, &config.mountpoint, &fuse_config).map_err(mount_error)?;
    let mut background = session.spawn().map_err(mount_error)?;
    // The views mount, stacked on the shared mount's `.by-pid` (answered by the session just
    // spawned), with a name of its own so reattach and `vproc status --pid` tell its binds apart.
    let views_point = config.mountpoint.join(crate::fs::BY_PID_DIR);
    let mut views_config = fuse_config.clone();
    views_config.mount_options = mount_options(&mountpoint.join(crate::fs::BY_PID_DIR));
    let views_session = Session::new(views_fs, &views_point, &views_config).map_err(|source| {
        DaemonError::Mount {
            path: views_point.clone(),
            source,
        }
    })?;
    let views_background = views_session.spawn().map_err(|source| DaemonError::Mount {
        path: views_point.clone(),
        source,
    })?;
    crate::fs::invalidate_periodically(views, Arc::clone(&renderer), views_background.notifier());
    // Ends with the shared mount: unmounting that detaches this one too.
    std::mem::forget(views_background);
    log::info!(
        "serving {} with {} threads",
        config.mountpoint.display(),
        config.threads.max(2)
    );
    reattach_containers(&mountpoint, Arc::clone(&renderer_for_signals));
    notify_service_manager("READY=1");

    let (events, stop) = mpsc::channel();
    let signal_events = events.clone();
    let signal_renderer = Arc::clone(&renderer_for_signals);
    std::thread::spawn(move || {
        while let Ok(signal) = handled_signals.wait() {
            if !on_signal(signal, &signal_renderer) {
                let _ = signal_events.send(Some(signal));
                return;
            }
        }
    });
    // Watch the session thread alone: fuser's mount guard, dropped after a join, would unmount again
    // (possibly a successor's mount at the same path), so the guard is never dropped.
    let session_thread = std::mem::replace(&mut background.guard, std::thread::spawn(|| Ok(())));
    std::thread::spawn(move || {
        match session_thread.join() {
            Ok(Err(e)) => log::error!("FUSE session ended: {e}"),
            Err(_) => log::error!("FUSE session thread panicked"),
            Ok(Ok(())) => {}
        }
        let _ = events.send(None);
    });
    match stop.recv() {
        Ok(Some(signal)) => {
            notify_service_manager("STOPPING=1");
            log::info!("{signal}: unmounting {}", config.mountpoint.display());
            unmount(&config.mountpoint);
        }
        _ => log::warn!(
            "{} was unmounted from outside; exiting",
            config.mountpoint.display()
        ),
    }
    std::mem::forget(background);
    pidfile.remove();
    Ok(())
}

/// What a signal does to the running daemon; false when it stops it (SIGTERM, SIGINT).
fn on_signal(signal: Signal, renderer: &Renderer) -> bool {
    match signal {
        Signal::SIGUSR2 => {
            let was_on = renderer.set_virtualizing(false);
            if was_on {
                log::warn!("SIGUSR2: per-container views off, every reader gets the host's files");
            } else {
                renderer.set_virtualizing(true);
                log::warn!("SIGUSR2: per-container views on again");
            }
            true
        }
        Signal::SIGUSR1 | Signal::SIGHUP => {
            log::info!("{signal}: nothing to reload, ignored");
            true
        }
        _ => false,
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (systemd starts services at a soft 1024 whatever
/// the hard limit) and returns the soft limit in force.
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if limit.current != limit.maximum {
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            log::warn!("cannot raise the open file limit to the hard limit: {e}");
        }
    }
    let current = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    log::info!("open file limit: {current}");
    current
}

/// Serves the metrics at `address` (see [`crate::metrics::http`]): counters from the renderer, and at
/// each scrape what the daemon holds.
fn serve_metrics(
    address: std::net::SocketAddr,
    renderer: Arc<Renderer>,
    open_files: OpenFiles,
    views: Arc<Views>,
) {
    let metrics_renderer = Arc::clone(&renderer);
    let state = move || NodeState {
        report: renderer.health().report(
            renderer.registry().occupancy(),
            crate::health::Held {
                open_handles: open_files.handles(),
                buffered_bytes: open_files.buffered_bytes(),
                views: views.len(),
                cached_bytes: views.bytes(),
            },
        ),
        caches: renderer.registry().caches(),
        containers: renderer.registry().containers.len(),
        views_enabled: renderer.virtualizing(),
    };
    let exporter = Arc::new(Exporter::new(
        Arc::clone(metrics_renderer.metrics()),
        Box::new(state),
    ));
    if let Err(e) = crate::metrics::http::spawn(address, exporter) {
        log::error!("cannot start the metrics server: {e}");
    }
}

/// Drops what readers and cgroups gone have left in the registry (closing their pidfds), also while
/// no read comes to do it.
fn sweep_periodically(renderer: Arc<Renderer>) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(SWEEP_PERIOD);
            renderer.registry().sweep();
        }
    });
}

/// The share of one core the load sampler may take: past it, its period stretches beyond 5 s.
const SAMPLER_CPU_SHARE: f64 = 0.015;

/// Steps the load averages of the containers read recently, every 5 s as the kernel does, or less often
/// when a pass costs more than [`SAMPLER_CPU_SHARE`] of a core over the period (the averages then take
/// the steps due in one go): the sampler's cost stays bounded however many containers a node runs.
fn sample_loads_periodically(renderer: Arc<Renderer>) {
    let spawned = std::thread::Builder::new()
        .name("load sampler".into())
        .spawn(move || {
            let mut wait = LOAD_PERIOD;
            loop {
                std::thread::sleep(wait);
                let cpu_before = thread_cpu_time();
                let started = std::time::Instant::now();
                let sampled = renderer.sample_loads();
                renderer.metrics().sampler_ran(started.elapsed(), sampled);
                let cpu = thread_cpu_time().saturating_sub(cpu_before);
                let period = LOAD_PERIOD.max(cpu.div_f64(SAMPLER_CPU_SHARE));
                wait = period.saturating_sub(started.elapsed());
                log::trace!(
                    "sampled the load of {sampled} cgroups with {cpu:?} of CPU; next in {wait:?}"
                );
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the load sampler, load averages stay where they start: {e}");
    }
}

/// CPU time the calling thread has used.
pub(crate) fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Tells systemd (Type=notify) about our state through $NOTIFY_SOCKET, a unix datagram socket given as
/// a path or, with a leading `@`, an abstract name. Without the variable there is no service manager.
fn notify_service_manager(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = socket.to_string_lossy().into_owned();
    let address = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&socket),
    };
    let sent = address.and_then(|address| {
        let datagram = UnixDatagram::unbound()?;
        datagram.send_to_addr(
            format!("{state}\nMAINPID={}", std::process::id()).as_bytes(),
            &address,
        )
    });
    if let Err(e) = sent {
        log::warn!("cannot notify the service manager at {socket}: {e}");
    }
}

/// Heals containers whose bind mounts still point at a dead predecessor: runs `vproc reattach` (found next
/// to vprocd), a single-threaded process, since entering mount namespaces is not possible from a
/// multi-threaded one. Runs in the background; its outcome is logged.
fn reattach_containers(mountpoint: &Path, renderer: Arc<Renderer>) {
    let vproc = std::env::current_exe().map(|exe| exe.with_file_name("vproc"));
    let Ok(vproc) = vproc.map_err(|e| log::warn!("cannot re-attach containers: {e}")) else {
        return;
    };
    let mut command = std::process::Command::new(&vproc);
    command.arg("reattach").arg("--mountpoint").arg(mountpoint);
    std::thread::spawn(move || match command.output() {
        Ok(out) => {
            renderer.metrics().reattach_ran(&ReattachReport::parse(
                out.status.success(),
                &String::from_utf8_lossy(&out.stdout),
                &String::from_utf8_lossy(&out.stderr),
            ));
            let report = String::from_utf8_lossy(&out.stdout);
            if !report.trim().is_empty() {
                log::info!("re-attached: {}", report.trim().replace('\n', "; "));
            }
            // Failures and skipped namespaces, whether or not it succeeded overall.
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                log::warn!("{line}");
            }
        }
        Err(e) => log::warn!(
            "cannot run {} to re-attach containers: {e}",
            vproc.display()
        ),
    });
}

/// Unmounts, detaching the mount if readers still hold it open (they get ENOTCONN once we exit).
fn unmount(mountpoint: &Path) {
    match umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => {}
        Err(nix::errno::Errno::EBUSY) => {
            if let Err(e) = umount2(mountpoint, MntFlags::MNT_DETACH) {
                log::error!("cannot detach {}: {e}", mountpoint.display());
            }
        }
        Err(e) => log::error!("cannot unmount {}: {e}", mountpoint.display()),
    }
}

/// Creates the mountpoint if missing; detaches a dead FUSE mount a crashed daemon left there. The check
/// is statfs: stat would be answered from the kernel's attribute cache even on a dead connection, while
/// statfs always asks the (dead) daemon and fails with ENOTCONN.
pub fn prepare_mountpoint(mountpoint: &Path) -> Result<(), DaemonError> {
    let error = |source| DaemonError::Mountpoint {
        path: mountpoint.to_path_buf(),
        source,
    };
    match nix::sys::statfs::statfs(mountpoint) {
        Err(nix::errno::Errno::ENOTCONN) => {
            log::warn!(
                "{} is a dead FUSE mount (a previous daemon died); detaching it",
                mountpoint.display()
            );
            umount2(mountpoint, MntFlags::MNT_DETACH).map_err(|e| error(e.into()))?;
            prepare_mountpoint(mountpoint)
        }
        Err(nix::errno::Errno::ENOENT) => std::fs::create_dir_all(mountpoint).map_err(error),
        Err(e) => Err(error(e.into())),
        Ok(_) if !mountpoint.is_dir() => Err(error(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ))),
        Ok(_) => Ok(()),
    }
}

/// The inode of the initial cgroup namespace, fixed by the kernel (`PROC_CGROUP_INIT_INO`).
const INITIAL_CGROUP_NS: &str = "cgroup:[4026531835]";

/// /proc/PID/cgroup paths are relative to the reader of /proc's cgroup namespace; a daemon started in a
/// private one (Kubernetes on cgroup v2) must join the host's (pid 1's) to resolve other containers.
fn join_host_cgroup_namespace(proc_root: &Path) -> Result<(), DaemonError> {
    let error = |source| DaemonError::CgroupNamespace { source };
    let own = std::fs::read_link(proc_root.join("self/ns/cgroup")).map_err(error)?;
    if own == Path::new(INITIAL_CGROUP_NS) {
        return Ok(());
    }
    let host_path = proc_root.join("1/ns/cgroup");
    if std::fs::read_link(&host_path).map_err(error)? == own {
        return Ok(());
    }
    let ns = File::open(&host_path).map_err(error)?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(|e| error(e.into()))?;
    log::info!("joined the host's cgroup namespace (was {})", own.display());
    Ok(())
}

/// An exclusively locked pidfile holding our pid; the lock dies with the process, so a crash never
/// leaves a stale lock behind.
struct Pidfile {
    path: PathBuf,
    _file: File,
}

impl Pidfile {
    fn lock(path: &Path) -> Result<Self, DaemonError> {
        let error = |source| DaemonError::Pidfile {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(error)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let pid = std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                return Err(DaemonError::AlreadyRunning {
                    path: path.to_path_buf(),
                    pid,
                });
            }
            return Err(error(err));
        }
        file.set_len(0).map_err(error)?;
        writeln!(file, "{}", std::process::id()).map_err(error)?;
        Ok(Pidfile {
            path: path.to_path_buf(),
            _file: file,
        })
    }

    fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
