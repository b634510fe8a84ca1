//! `vproc run`: starts a program in a container (pid, mount, uts, ipc, cgroup and optionally net
//! namespaces, a cgroup with the given limits, a root filesystem or an unpacked image) with the daemon's
//! files bound over /proc and /sys/devices/system/cpu, so everything inside sees the container's limits.
//!
//! The processes, all forks of `vproc run` (it never executes itself again):
//! ```text
//!  vproc run (host)          creates the cgroup, forwards SIGTERM/SIGINT/SIGHUP, waits, reports, cleans up
//!   └─ init (pid 1 inside)   joins the cgroup, unshares, mounts, pivots; reaps zombies, forwards signals
//!       └─ payload (pid 2)   user, capabilities, no_new_privs, fds closed, seccomp, exec
//! ```
//! [`cgroup`] makes the cgroup, [`image`] unpacks archives, [`rootfs`] builds the mount tree and
//! [`process`] turns the last fork into the payload.

pub mod cgroup;
pub mod devices;
pub mod image;
pub mod options;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod user;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

pub use options::{Network, RunSpec, Volume};

/// Exit code of `vproc run` when the container could not be set up (Docker's convention).
pub const EXIT_SETUP_FAILED: u8 = 125;

/// Why a container could not be started, naming the option, file or path concerned.
#[derive(Debug)]
pub enum LaunchError {
    /// A file, directory or kernel interface failed: what we were doing, on which path.
    Io {
        action: String,
        path: PathBuf,
        source: io::Error,
    },
    /// A system call failed that concerns no particular path (fork, unshare, sethostname).
    Os { action: String, source: io::Error },
    /// The request cannot be carried out as given (a bad image, no daemon mounted, a taken name).
    Refused(String),
}

impl LaunchError {
    pub fn os(action: impl Into<String>, source: impl Into<io::Error>) -> Self {
        LaunchError::Os {
            action: action.into(),
            source: source.into(),
        }
    }

    pub fn io(action: impl Into<String>, path: &Path, source: impl Into<io::Error>) -> Self {
        LaunchError::Io {
            action: action.into(),
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Io {
                action,
                path,
                source,
            } => write!(f, "{action} {}: {source}", path.display()),
            LaunchError::Os { action, source } => write!(f, "{action}: {source}"),
            LaunchError::Refused(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for LaunchError {}

/// How the container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The payload's exit code, or 128 + N when signal N ended it.
    pub exit_code: u8,
    /// Processes the kernel's OOM killer ended in the container's cgroup.
    pub oom_kills: u64,
}

/// The process `vproc run` forwards SIGTERM, SIGINT and SIGHUP to: the init (in `vproc run`) or the
/// payload (in the init, which is a fork and so has its own copy).
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

/// A signal that came before there was anyone to forward it to (during the container's setup).
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(signal: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    } else {
        PENDING.store(signal, Ordering::Relaxed);
    }
}

/// From now on signals go to `pid`; one that came while there was nobody goes there now.
fn forward_to(pid: Pid) {
    FORWARD_TO.store(pid.as_raw(), Ordering::Relaxed);
    let pending = PENDING.swap(0, Ordering::Relaxed);
    if pending != 0 {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(pid.as_raw(), pending) };
    }
}

/// Forks with the forwarded signals blocked, so none is handled by a copy of the handler that has
/// nowhere to send it: the parent starts forwarding to the child before it unblocks, the child
/// forgets what the parent had pending and unblocks once its handlers are what it wants
/// ([`child_signals`]).
fn fork_holding_signals() -> nix::Result<ForkResult> {
    hold_signals(nix::sys::signal::SigmaskHow::SIG_BLOCK);
    // SAFETY: vproc run and its init are single-threaded; the children go on with plain syscalls.
    let forked = unsafe { fork() };
    match forked {
        Ok(ForkResult::Parent { child }) => {
            forward_to(child);
            hold_signals(nix::sys::signal::SigmaskHow::SIG_UNBLOCK);
        }
        Ok(ForkResult::Child) => PENDING.store(0, Ordering::Relaxed),
        Err(_) => hold_signals(nix::sys::signal::SigmaskHow::SIG_UNBLOCK),
    }
    forked
}

/// In a child of [`fork_holding_signals`]: keep forwarding (the init) or take the default actions (the
/// payload), then let the signals that came meanwhile in.
pub(crate) fn child_signals(keep_forwarding: bool) {
    if !keep_forwarding {
        for signal in FORWARDED_SIGNALS {
            // SAFETY: restoring the default disposition.
            unsafe { libc::signal(signal as libc::c_int, libc::SIG_DFL) };
        }
    }
    hold_signals(nix::sys::signal::SigmaskHow::SIG_UNBLOCK);
}

fn hold_signals(how: nix::sys::signal::SigmaskHow) {
    let mut set = SigSet::empty();
    for signal in FORWARDED_SIGNALS {
        set.add(signal);
    }
    let _ = nix::sys::signal::sigprocmask(how, Some(&set), None);
}

const FORWARDED_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

fn install_forwarding() -> io::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(forward_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in FORWARDED_SIGNALS {
        // SAFETY: the handler only loads an atomic and calls kill(2).
        unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Runs the container to its end. Prints nothing; the caller reports the outcome.
pub fn run(spec: &RunSpec) -> Result<Outcome, LaunchError> {
    // First: a SIGTERM from here on waits for the container (and is passed to it) instead of killing
    // vproc run halfway, which would leave the cgroup and the state directory behind.
    install_forwarding().map_err(|e| LaunchError::os("cannot handle signals for vproc run", e))?;
    if let Some(mountpoint) = &spec.lxcfs {
        if let Err(crate::attach::AttachError::NotMounted { detail, .. }) =
            crate::attach::check_daemon(mountpoint)
        {
            return Err(LaunchError::Refused(format!(
                "no vprocd is mounted at {} ({detail}): start it (systemctl start vprocd), point \
                 --lxcfs at where it is mounted, or pass --no-lxcfs to keep the host's /proc files",
                mountpoint.display()
            )));
        }
    }
    // Before anything is created: a bad profile changes nothing on the host.
    let seccomp = seccomp::program_for(&spec.seccomp, &process::kept_capability_names())
        .map_err(LaunchError::Refused)?
        .map(|(instructions, flags)| process::SeccompProgram {
            instructions,
            flags,
        });
    // The cgroup claims the name first: the container's state directory is named after it too.
    let cgroup = cgroup::ContainerCgroup::create(Path::new("/proc"), &spec.name, &spec.limits)?;
    let result = run_in(spec, &cgroup, seccomp);
    let oom_kills = cgroup.oom_kills();
    let removed = cgroup.remove();
    let exit_code = result?;
    removed?;
    Ok(Outcome {
        exit_code,
        oom_kills,
    })
}

/// Prepares the root (unpacking an image), runs the container in `cgroup`, removes its writable layer.
fn run_in(
    spec: &RunSpec,
    cgroup: &cgroup::ContainerCgroup,
    seccomp: Option<process::SeccompProgram>,
) -> Result<u8, LaunchError> {
    let prepared = rootfs::prepare(spec)?;
    let result = prepared.command(spec).and_then(|mut command| {
        command.seccomp = seccomp;
        start_and_wait(spec, &prepared, &command, cgroup)
    });
    prepared.cleanup();
    result
}

/// Forks the init into a new pid namespace, puts it into the cgroup, lets it go on and waits for it.
fn start_and_wait(
    spec: &RunSpec,
    prepared: &rootfs::Prepared,
    command: &process::Command,
    cgroup: &cgroup::ContainerCgroup,
) -> Result<u8, LaunchError> {
    let (go_read, go_write) = pipe()?;
    let (error_read, error_write) = pipe()?;
    // Only children land in the new pid namespace: the init is its pid 1.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
        .map_err(|e| LaunchError::os("cannot create a pid namespace for vproc run", e))?;
    match fork_holding_signals().map_err(|e| LaunchError::os("cannot fork vproc run", e))? {
        ForkResult::Child => {
            child_signals(true);
            drop(go_write);
            drop(error_read);
            init(
                spec,
                prepared,
                command,
                &cgroup.hierarchies(),
                go_read,
                error_write,
            )
        }
        ForkResult::Parent { child } => {
            drop(go_read);
            drop(error_write);
            if let Err(e) = cgroup.add(child.as_raw()) {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = wait_for(child);
                return Err(e);
            }
            let mut go = File::from(go_write);
            let _ = go.write_all(b"1");
            drop(go);
            let mut message = String::new();
            let _ = File::from(error_read).read_to_string(&mut message);
            let code = wait_for(child)?;
            FORWARD_TO.store(0, Ordering::Relaxed);
            if !message.is_empty() {
                return Err(LaunchError::Refused(message));
            }
            Ok(code)
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| LaunchError::os("cannot create a pipe for vproc run", e))
}

/// Waits for `child` through signal interruptions; its exit code, or 128 + N for signal N.
fn wait_for(child: Pid) -> Result<u8, LaunchError> {
    loop {
        match waitpid(child, None) {
            Ok(status) => match exit_code(status) {
                Some((_, code)) => return Ok(code),
                None => continue,
            },
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(LaunchError::os("cannot wait for the container's init", e));
            }
        }
    }
}

/// The pid that ended and its code as a shell reports it (128 + N for signal N); `None` if it did
/// not end (stopped, continued).
fn exit_code(status: WaitStatus) -> Option<(Pid, u8)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, code as u8)),
        WaitStatus::Signaled(pid, signal, _) => Some((pid, 128 + signal as u8)),
        _ => None,
    }
}

/// The container's pid 1. Never returns: exits with the payload's code, or 125 after writing why the
/// setup failed to `error_pipe`.
fn init(
    spec: &RunSpec,
    prepared: &rootfs::Prepared,
    command: &process::Command,
    cgroups: &[crate::cgroup::Hierarchy],
    go: OwnedFd,
    error_pipe: OwnedFd,
) -> ! {
    // SAFETY: plain prctl; the init must not outlive `vproc run`, which removes the cgroup.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // `ps -o comm` tells the init from the payload.
    let _ = rustix::thread::set_name(c"vproc-init");
    let mut byte = [0u8; 1];
    if !matches!(File::from(go).read(&mut byte), Ok(1)) {
        // vproc run died before placing us in the cgroup.
        std::process::exit(EXIT_SETUP_FAILED.into());
    }
    let mut error_pipe = File::from(error_pipe);
    let setup = rootfs::enter(spec, prepared, &command.workdir, cgroups);
    let payload = match setup {
        Ok(()) => fork_holding_signals().map_err(|e| LaunchError::os("cannot fork the payload", e)),
        Err(e) => Err(e),
    };
    match payload {
        Err(e) => {
            let _ = error_pipe.write_all(e.to_string().as_bytes());
            std::process::exit(EXIT_SETUP_FAILED.into());
        }
        Ok(ForkResult::Child) => process::exec_payload(command),
        Ok(ForkResult::Parent { child }) => {
            drop(error_pipe);
            process::become_reaper();
            let code = reap_until(child);
            std::process::exit(code.into());
        }
    }
}

/// Reaps every child (orphans are re-parented to pid 1) until `payload` ends; its exit code.
fn reap_until(payload: Pid) -> u8 {
    loop {
        match waitpid(None, None) {
            Ok(status) => match exit_code(status) {
                Some((pid, code)) if pid == payload => return code,
                _ => continue,
            },
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return EXIT_SETUP_FAILED,
        }
    }
}
