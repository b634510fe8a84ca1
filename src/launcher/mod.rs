//! `vproc run`: starts a program in a container (pid, mount, uts, ipc, cgroup and optionally net
//! namespaces, a cgroup with the given limits, a root filesystem or an unpacked image) with the daemon's
//! files bound over /proc and /sys/devices/system/cpu, so everything inside sees the container's limits.
//!
//! The processes, all forks of `vproc run` (it never executes itself again):
//! ```text
//!  vproc run (host)          creates the cgroup, forwards SIGTERM/SIGINT/SIGHUP, relays the terminal,
//!   │                        waits, kills after --stop-timeout, reports, cleans up
//!   └─ pid 1 inside          joins the cgroup, unshares, mounts, pivots, opens the pty (-t); then
//!                            becomes the command (user, capabilities, no_new_privs, fds closed,
//!                            seccomp, exec), as with docker run
//!  with --init:
//!   └─ vproc-init (pid 1)    the same setup; then reaps zombies and forwards signals to
//!       └─ the command (pid 2)
//! ```
//! A command that is pid 1 gets only the signals it has a handler for (the kernel's rule for a pid
//! namespace's init): SIGTERM to `vproc run` is passed on, and if the container has not ended
//! `--stop-timeout` seconds later (10 by default, as `docker stop`), it is killed. A signal that comes
//! before the command has started stops the container at once (exit 128 + N).
//!
//! [`cgroup`] makes the cgroup, [`image`] unpacks archives, [`rootfs`] builds the mount tree, [`process`]
//! turns pid 1 (or its fork) into the command and [`terminal`] gives it a pty.

pub mod cgroup;
pub mod devices;
pub mod image;
pub mod options;
pub mod private_dir;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod supervise;
pub mod terminal;
pub mod user;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
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

/// The process `vproc run` forwards SIGTERM, SIGINT and SIGHUP to: pid 1 (in `vproc run`) or the
/// command (in `vproc-init`, which is a fork and so has its own copy).
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

/// A signal that came before there was anyone to forward it to (during the container's setup).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// In `vproc run`: pid 1 while it may still be being set up; a signal then kills it at once (its
/// command has not started, and as pid 1 it might ignore the signal).
static IN_SETUP: AtomicI32 = AtomicI32::new(0);

/// In `vproc run`: the read end of pid 1's error pipe, whose write end its exec closes: how the signal
/// handler tells setup (still open) from a started command (hung up).
static SETUP_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Whether pid 1 has exec'd the command (or ended): its end of the error pipe is closed (or the pipe
/// is gone, once `vproc run` has read it to its end).
fn setup_over() -> bool {
    let fd = SETUP_PIPE.load(Ordering::SeqCst);
    if fd < 0 {
        return true;
    }
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) with a zero timeout is async-signal-safe.
    unsafe { libc::poll(&mut poll, 1, 0) };
    poll.revents & (libc::POLLHUP | libc::POLLNVAL) != 0
}

/// In `vproc run`: the signal that stopped the container during its setup.
static STOPPED_IN_SETUP: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(signal: libc::c_int) {
    // SAFETY: errno of this thread, saved for the code the signal interrupted.
    let errno = unsafe { *libc::__errno_location() };
    let in_setup = IN_SETUP.load(Ordering::SeqCst);
    if in_setup > 0 && !setup_over() {
        STOPPED_IN_SETUP.store(signal, Ordering::SeqCst);
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(in_setup, libc::SIGKILL) };
    } else {
        let pid = FORWARD_TO.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe.
            unsafe { libc::kill(pid, signal) };
            if signal == libc::SIGTERM {
                supervise::request_stop();
            }
        } else {
            PENDING.store(signal, Ordering::SeqCst);
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// From now on signals go to `pid` (or, while `in_setup`, end it); one that came while there was
/// nobody is handled now.
fn forward_to(pid: Pid, in_setup: bool) {
    if in_setup {
        IN_SETUP.store(pid.as_raw(), Ordering::SeqCst);
    }
    FORWARD_TO.store(pid.as_raw(), Ordering::SeqCst);
    let pending = PENDING.swap(0, Ordering::SeqCst);
    if pending != 0 {
        forward_signal(pending);
    }
}

/// Forks with the forwarded signals blocked, so none is handled by a copy of the handler that has
/// nowhere to send it: the parent starts forwarding to the child before it unblocks, the child
/// forgets what the parent had pending and unblocks once its handlers are what it wants
/// ([`child_signals`]).
fn fork_holding_signals(in_setup: bool) -> nix::Result<ForkResult> {
    hold_signals(nix::sys::signal::SigmaskHow::SIG_BLOCK);
    // SAFETY: vproc run and its init are single-threaded; the children go on with plain syscalls.
    let forked = unsafe { fork() };
    match forked {
        Ok(ForkResult::Parent { child }) => {
            forward_to(child, in_setup);
            hold_signals(nix::sys::signal::SigmaskHow::SIG_UNBLOCK);
        }
        Ok(ForkResult::Child) => PENDING.store(0, Ordering::Relaxed),
        Err(_) => hold_signals(nix::sys::signal::SigmaskHow::SIG_UNBLOCK),
    }
    forked
}

/// In a child of [`fork_holding_signals`]: keep forwarding (the init) or take the default actions (the
/// command; SIGPIPE too, which Rust's runtime ignores), then let the signals that came meanwhile in.
pub(crate) fn child_signals(keep_forwarding: bool) {
    if !keep_forwarding {
        for signal in FORWARDED_SIGNALS.into_iter().chain([Signal::SIGPIPE]) {
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
        // SAFETY: the handler only loads and stores atomics and calls kill(2).
        unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Runs the container to its end. Prints nothing; the caller reports the outcome.
pub fn run(spec: &RunSpec) -> Result<Outcome, LaunchError> {
    // First: a SIGTERM from here on waits for the container (and is passed to it) instead of killing
    // vproc run halfway, which would leave the cgroup and the state directory behind.
    install_forwarding().map_err(|e| LaunchError::os("cannot handle signals for vproc run", e))?;
    // An ignored SIGCHLD, inherited from whoever started us, would reap pid 1 by itself and lose its
    // exit code.
    // SAFETY: restoring the default disposition.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
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
    let mut io_paths: Vec<PathBuf> = spec.volumes.iter().map(|v| v.source.clone()).collect();
    match &spec.root {
        options::RootSource::Dir(dir) => io_paths.push(dir.clone()),
        options::RootSource::Image(_) => {
            io_paths.push(spec.image_cache.clone());
            io_paths.push(spec.state_dir.clone());
        }
    }
    let cgroup =
        cgroup::ContainerCgroup::create(Path::new("/proc"), &spec.name, &spec.limits, &io_paths)?;
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

/// Forks pid 1 into a new pid namespace, puts it into the cgroup, lets it go on, relays what it needs
/// relayed and waits for it.
fn start_and_wait(
    spec: &RunSpec,
    prepared: &rootfs::Prepared,
    command: &process::Command,
    cgroup: &cgroup::ContainerCgroup,
) -> Result<u8, LaunchError> {
    let (parent, child_ends) = channels(spec)?;
    // Only children land in the new pid namespace: the fork is its pid 1.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
        .map_err(|e| LaunchError::os("cannot create a pid namespace for vproc run", e))?;
    match fork_holding_signals(true).map_err(|e| LaunchError::os("cannot fork vproc run", e))? {
        ForkResult::Child => {
            child_signals(true);
            drop(parent);
            pid_one(spec, prepared, command, &cgroup.hierarchies(), child_ends)
        }
        ForkResult::Parent { child } => {
            drop(child_ends);
            // New threads (the seccomp listener's) need our children's pid namespace to be our own
            // again: clone(CLONE_THREAD) refuses a thread whose pid namespace would differ.
            if let Err(e) = std::fs::File::open("/proc/self/ns/pid").and_then(|ns| {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWPID).map_err(io::Error::from)
            }) {
                log::warn!("cannot return to vproc run's own pid namespace: {e}");
            }
            watch(spec, cgroup, child, parent)
        }
    }
}

/// What pid 1 talks to `vproc run` through, pid 1's ends.
struct Ends {
    /// One byte once pid 1 is in the container's cgroup.
    go: OwnedFd,
    /// Why setup failed; closed without a word by exec.
    error: OwnedFd,
    /// -t: where the pty's master goes.
    console: Option<OwnedFd>,
    /// stdin, stdout and stderr where `vproc run`'s are a terminal and there is no -t: pipes.
    stdio: [Option<OwnedFd>; 3],
    /// Where the command sends its seccomp listener (sysinfo, sched_getaffinity), unless both calls
    /// stay the host's.
    listener: Option<OwnedFd>,
}

/// `vproc run`'s ends of the same.
struct ParentEnds {
    go: OwnedFd,
    error: OwnedFd,
    console: Option<OwnedFd>,
    relay: supervise::Relay,
    listener: Option<OwnedFd>,
}

/// The pipes and the socket between `vproc run` and pid 1. Without -t, `vproc run`'s stdin (-i),
/// stdout and stderr are handed to the container as they are unless they are a terminal: a terminal
/// would let the container read what the user types and change its settings, so the container gets
/// pipes, relayed (as Docker does).
fn channels(spec: &RunSpec) -> Result<(ParentEnds, Ends), LaunchError> {
    let (go_read, go_write) = pipe()?;
    let (error_read, error_write) = pipe()?;
    SETUP_PIPE.store(error_read.as_raw_fd(), Ordering::SeqCst);
    let mut relay = supervise::Relay::default();
    let mut stdio: [Option<OwnedFd>; 3] = [None, None, None];
    let mut console = None;
    if spec.tty {
        let (ours, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| LaunchError::os("cannot create a socket for the terminal", e))?;
        terminal::watch_resizes()
            .map_err(|e| LaunchError::os("cannot handle SIGWINCH for the terminal", e))?;
        console = Some((ours, theirs));
    } else {
        if spec.interactive && rustix::termios::isatty(rustix::stdio::stdin()) {
            let (read, write) = pipe()?;
            stdio[0] = Some(read);
            relay.input = Some(supervise::InputSink {
                fd: write,
                is_terminal: false,
            });
        }
        for (n, ours) in [(1, rustix::stdio::stdout()), (2, rustix::stdio::stderr())] {
            if rustix::termios::isatty(ours) {
                let (read, write) = pipe()?;
                stdio[n] = Some(write);
                relay.outputs.push((read, ours));
            }
        }
    }
    let (console_ours, console_theirs) = console.unzip();
    let (listener_ours, listener_theirs) = if spec.calls.sysinfo || spec.calls.affinity {
        let (ours, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| LaunchError::os("cannot create a socket for the seccomp listener", e))?;
        (Some(ours), Some(theirs))
    } else {
        (None, None)
    };
    Ok((
        ParentEnds {
            go: go_write,
            error: error_read,
            console: console_ours,
            relay,
            listener: listener_ours,
        },
        Ends {
            go: go_read,
            error: error_write,
            console: console_theirs,
            stdio,
            listener: listener_theirs,
        },
    ))
}

/// In `vproc run`: pid 1 into the cgroup, the terminal handed over (-t), setup awaited, then the
/// container supervised until it ends. Its exit code.
fn watch(
    spec: &RunSpec,
    cgroup: &cgroup::ContainerCgroup,
    child: Pid,
    ends: ParentEnds,
) -> Result<u8, LaunchError> {
    let ParentEnds {
        go,
        error,
        console,
        mut relay,
        listener,
    } = ends;
    if let Some(socket) = listener {
        serve_calls(socket, spec.calls);
    }
    if let Err(e) = cgroup.add(child.as_raw()) {
        IN_SETUP.store(0, Ordering::SeqCst);
        SETUP_PIPE.store(-1, Ordering::SeqCst);
        FORWARD_TO.store(0, Ordering::SeqCst);
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        let _ = wait_for(child);
        return Err(e);
    }
    // Pid 1's view on the daemon's views mount is made from here (a process of the daemon's pid
    // namespace may make one; pid 1 may then look up its own). Where it fails, pid 1 binds the shared
    // paths.
    if let Some(lxcfs) = &spec.lxcfs {
        let view = crate::attach::view_dir(lxcfs, child.as_raw() as u32);
        if let Err(e) = std::fs::metadata(&view) {
            log::debug!("no view at {}: {e}", view.display());
        }
    }
    // Go, with pid 1's pid as the daemon sees it: pid 1 names its container's files by it.
    let _ = File::from(go).write_all(format!("{child}\n").as_bytes());
    // -t: the pty's master, sized like our terminal before the command starts.
    let mut raw_mode = None;
    if let Some(socket) = &console
        && let Ok(Some(master)) = terminal::receive_master(socket)
    {
        terminal::copy_window_size(&master);
        if spec.interactive {
            raw_mode = Some(terminal::RawMode::enable());
            relay.input = master.try_clone().ok().map(|fd| supervise::InputSink {
                fd,
                is_terminal: true,
            });
        }
        relay.terminal = master.try_clone().ok();
        relay.outputs.push((master, rustix::stdio::stdout()));
        let _ = terminal::write_all(socket, b"1");
    }
    drop(console);
    let mut message = String::new();
    let error = File::from(error);
    let _ = (&error).read_to_string(&mut message);
    // The command runs (or setup failed): from here on signals are passed on.
    IN_SETUP.store(0, Ordering::SeqCst);
    SETUP_PIPE.store(-1, Ordering::SeqCst);
    drop(error);
    let supervised = supervise::supervise(child, relay, spec.stop_timeout);
    drop(raw_mode);
    // Before it is reaped: its pid may then go to another process.
    FORWARD_TO.store(0, Ordering::SeqCst);
    if supervised.is_err() {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
    }
    let code = wait_for(child);
    supervised?;
    let stopped = STOPPED_IN_SETUP.swap(0, Ordering::SeqCst);
    if stopped != 0 {
        return Ok(128 + stopped as u8);
    }
    if !message.is_empty() {
        return Err(LaunchError::Refused(message));
    }
    code
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

/// The container's pid 1. Never returns: becomes the command (or, with --init, exits with its code),
/// or exits 125 after writing why the setup failed to the error pipe.
fn pid_one(
    spec: &RunSpec,
    prepared: &rootfs::Prepared,
    command: &process::Command,
    cgroups: &[crate::cgroup::Hierarchy],
    ends: Ends,
) -> ! {
    // SAFETY: plain prctls. It must not outlive `vproc run`, which removes the cgroup; and nothing in
    // the container may read its memory or its /proc/1/exe (the host's vproc binary) before it execs,
    // nor ever with --init.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
    }
    // `ps -o comm` tells the init from the command.
    let _ = rustix::thread::set_name(c"vproc-init");
    for (target, fd) in ends.stdio.iter().enumerate() {
        if let Some(fd) = fd {
            // SAFETY: dup2(2) onto this process's own standard fds.
            unsafe { libc::dup2(fd.as_raw_fd(), target as libc::c_int) };
        }
    }
    drop(ends.stdio);
    let mut go = [0u8; 16];
    let host_pid = match File::from(ends.go).read(&mut go) {
        Ok(n) if n > 0 => std::str::from_utf8(&go[..n])
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok()),
        // vproc run died before placing us in the cgroup.
        _ => std::process::exit(EXIT_SETUP_FAILED.into()),
    };
    let mut error_pipe = File::from(ends.error);
    let fail = |error_pipe: &mut File, e: LaunchError| -> ! {
        let _ = error_pipe.write_all(e.to_string().as_bytes());
        std::process::exit(EXIT_SETUP_FAILED.into())
    };
    if let Err(e) = rootfs::enter(spec, prepared, &command.workdir, cgroups, host_pid) {
        fail(&mut error_pipe, e);
    }
    let terminal = match ends.console {
        Some(console) => match hand_over_terminal(&console) {
            Ok(slave) => Some(slave),
            Err(e) => fail(&mut error_pipe, e),
        },
        None => None,
    };
    if !spec.init {
        process::exec_payload(command, terminal, ends.listener);
    }
    match fork_holding_signals(false) {
        Err(e) => fail(
            &mut error_pipe,
            LaunchError::os("cannot fork the command", e),
        ),
        Ok(ForkResult::Child) => process::exec_payload(command, terminal, ends.listener),
        Ok(ForkResult::Parent { child }) => {
            drop(terminal);
            drop(error_pipe);
            process::become_reaper();
            let code = reap_until(child);
            std::process::exit(code.into());
        }
    }
}

/// In `vproc run`: a thread that takes the command's seccomp listener from `socket` and answers its
/// sysinfo and sched_getaffinity calls for as long as the container makes them. The thread ends with
/// the container (the listener hangs up) or with `vproc run`, whose end ends the container too.
fn serve_calls(socket: OwnedFd, calls: crate::notify::Calls) {
    let spawned = std::thread::Builder::new()
        .name("seccomp".into())
        .spawn(move || {
            // vproc run's signals are for its main thread: one arriving here could only interrupt
            // the listener's poll (POLLERR) and ioctls.
            let _ = nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_BLOCK,
                Some(&SigSet::all()),
                None,
            );
            let answers = crate::notify::Answers::new(calls);
            match terminal::receive_fd(&socket) {
                Ok(Some(fd)) => {
                    drop(socket);
                    if let Err(e) =
                        crate::notify::serve(&crate::notify::Listener::new(fd), &answers)
                    {
                        log::error!("the container's seccomp listener failed: {e}");
                    }
                }
                Ok(None) => {}
                Err(e) => log::error!("cannot take the container's seccomp listener: {e}"),
            }
        });
    if let Err(e) = spawned {
        // The command's send fails once this end is gone, and it stops before it runs.
        log::error!("cannot start the thread that serves sysinfo and sched_getaffinity: {e}");
    }
}

/// -t, in pid 1 after pivot_root: opens the pty, sends its master to `vproc run` and waits until it
/// has sized it; the slave, for the command.
fn hand_over_terminal(console: &OwnedFd) -> Result<OwnedFd, LaunchError> {
    let pty = terminal::open_pty()
        .map_err(|e| LaunchError::io("cannot open a terminal from", Path::new("/dev/ptmx"), e))?;
    terminal::send_fd(console, std::os::fd::AsFd::as_fd(&pty.master))
        .map_err(|e| LaunchError::os("cannot pass the terminal to vproc run", e))?;
    let mut ack = [0u8; 1];
    loop {
        match rustix::io::read(console, &mut ack) {
            Ok(1) => break,
            Err(rustix::io::Errno::INTR) => continue,
            _ => {
                return Err(LaunchError::Refused(
                    "vproc run did not take the terminal".into(),
                ));
            }
        }
    }
    Ok(pty.slave)
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
