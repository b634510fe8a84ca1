//! `vproc seccomp-agent`: the `linux.seccomp.listenerPath` server for runc and crun. A container whose
//! seccomp profile names this socket and marks sysinfo and sched_getaffinity `SCMP_ACT_NOTIFY` has its
//! runtime send the listener fd here (with the container's state as JSON) before the container starts.
//!
//! Each container's listener is served by a process of its own, forked for it, which lives as long as
//! the container: when every copy of a listener fd is closed, the kernel fails the notified calls with
//! ENOSYS, so a container must never depend on the agent that accepted it. A kill -9 or restart of the
//! agent (or of vprocd) leaves running containers served. runc connects to the socket for each start
//! and each `runc exec` and fails them when nobody listens: under systemd the socket is the
//! `vproc-seccomp-agent.socket` unit's, held while the agent restarts.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};

use super::{Answers, Calls, Listener, serve};

/// Where the shipped profiles point (`listenerPath`).
pub const DEFAULT_SOCKET: &str = "/run/vproc/seccomp.sock";

/// The most of a runtime's message read (the state carries the container's annotations).
const MAX_MESSAGE: usize = 1 << 20;
/// The most fds a runtime sends at once (runc and crun send one).
const MAX_FDS: usize = 8;
/// How long a runtime gets to send its message.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens on `socket` and serves every container that connects, until killed. Errors are about
/// the socket itself.
pub fn run(socket: &Path, calls: Calls) -> Result<(), String> {
    let listening = match inherited_socket() {
        Some(listening) => listening,
        None => bind(socket)?,
    };
    // Servers are not waited for: the kernel reaps them.
    // SAFETY: setting a signal disposition.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    log::info!(
        "serving seccomp listeners on {} (sysinfo: {}, sched_getaffinity: {})",
        socket.display(),
        if calls.sysinfo { "container" } else { "host" },
        if calls.affinity { "container" } else { "host" }
    );
    loop {
        let connection = match rustix::net::accept_with(&listening, SocketFlags::CLOEXEC) {
            Ok(connection) => connection,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
            Err(e) => return Err(format!("cannot accept on {}: {e}", socket.display())),
        };
        let received = receive(&connection);
        drop(connection);
        match received {
            Ok(Some((listener, who))) => start_server(&listening, listener, &who, calls),
            // A connection closed without a word: a check that the agent listens (vproc-runc).
            Ok(None) => log::debug!("a probe on {}", socket.display()),
            Err(e) => log::warn!(
                "a runtime's message on {} was refused: {e}",
                socket.display()
            ),
        }
    }
}

/// The listening socket systemd passed (socket activation, `vproc-seccomp-agent.socket`:
/// `LISTEN_PID` is ours, `LISTEN_FDS` >= 1, the socket is fd 3). systemd keeps it open while the agent
/// restarts, so a runtime connecting meanwhile (a container's start, each `runc exec` into one) waits
/// in its backlog instead of failing.
fn inherited_socket() -> Option<OwnedFd> {
    let ours = std::env::var("LISTEN_PID").ok()?.parse::<u32>().ok()? == std::process::id();
    let count: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if !ours || count < 1 {
        return None;
    }
    // SAFETY: single-threaded at start; the variables are for this process alone.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    // SAFETY: fd 3 is the socket systemd passed to this process and nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(3) };
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    Some(fd)
}

/// The listening socket at `path` (0600, its directory made if missing); a stale socket left by a
/// killed agent is replaced, a live one is refused.
fn bind(path: &Path) -> Result<OwnedFd, String> {
    let shown = path.display();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let address =
        SocketAddrUnix::new(path).map_err(|e| format!("{shown} cannot be a socket path: {e}"))?;
    let socket = || {
        rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| format!("cannot create a socket: {e}"))
    };
    if path.exists() {
        let probe = socket()?;
        if rustix::net::connect(&probe, &address).is_ok() {
            return Err(format!(
                "another agent already serves {shown}: stop it first (systemctl stop vproc-seccomp-agent)"
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale {shown}: {e}"))?;
    }
    let listening = socket()?;
    // Made private from the start (then chmod'ed to the same), not after a window at the umask's mode.
    let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = rustix::net::bind(&listening, &address);
    rustix::process::umask(umask);
    bound.map_err(|e| format!("cannot bind {shown}: {e}"))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("cannot make {shown} private: {e}"))?;
    rustix::net::listen(&listening, 128).map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    Ok(listening)
}

/// The listener fd a runtime sent and who it is for (container id and pid, for the log): runc's and
/// crun's `ContainerProcessState`, JSON with the fds' names in `fds`. `None` for a connection closed
/// with nothing sent (a probe).
fn receive(connection: &OwnedFd) -> Result<Option<(OwnedFd, String)>, String> {
    // One deadline for the whole message: a runtime trickling bytes cannot hold the accept loop
    // (and every other container's start) longer than this.
    let deadline = std::time::Instant::now() + SEND_TIMEOUT;
    let mut message = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the message did not come within {} s",
                SEND_TIMEOUT.as_secs()
            ));
        }
        rustix::net::sockopt::set_socket_timeout(
            connection,
            rustix::net::sockopt::Timeout::Recv,
            Some(left),
        )
        .map_err(|e| format!("cannot set a timeout: {e}"))?;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = match rustix::net::recvmsg(
            connection,
            &mut [IoSliceMut::new(&mut buffer)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => got,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("cannot read the message: {e}")),
        };
        for ancillary in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = ancillary {
                fds.extend(received);
            }
        }
        if got.bytes == 0 {
            break;
        }
        message.extend_from_slice(&buffer[..got.bytes]);
        if message.len() > MAX_MESSAGE {
            return Err(format!("the message is longer than {MAX_MESSAGE} bytes"));
        }
    }
    if message.is_empty() && fds.is_empty() {
        return Ok(None);
    }
    let state: serde_json::Value = serde_json::from_slice(&message)
        .map_err(|e| format!("the message is not the runtime's state JSON: {e}"))?;
    let names = state["fds"]
        .as_array()
        .ok_or("the state JSON has no `fds` list")?;
    let index = names
        .iter()
        .position(|name| name == "seccompFd")
        .ok_or("the state JSON's `fds` has no seccompFd")?;
    if names.len() != fds.len() {
        return Err(format!(
            "the state JSON names {} fds but {} came",
            names.len(),
            fds.len()
        ));
    }
    let who = format!(
        "container {} (pid {})",
        state["state"]["id"].as_str().unwrap_or("?"),
        state["pid"]
    );
    Ok(Some((fds.swap_remove(index), who)))
}

/// Forks the process that serves `listener` as long as the container uses it.
fn start_server(listening: &OwnedFd, listener: OwnedFd, who: &str, calls: Calls) {
    // SAFETY: this process is single-threaded (the accept loop); the child only goes on with its own
    // state.
    match unsafe { nix::unistd::fork() } {
        Err(e) => log::error!(
            "cannot fork a server for {who}: {e}; its sysinfo and sched_getaffinity calls fail with ENOSYS"
        ),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            log::info!("serving {who} in process {child}");
        }
        Ok(nix::unistd::ForkResult::Child) => {
            // Its own session: a signal to the agent's process group leaves it alone.
            let _ = rustix::process::setsid();
            let _ = rustix::io::fcntl_setfd(listening.as_fd(), rustix::io::FdFlags::CLOEXEC);
            // SAFETY: the listening socket is the parent's; this process never uses it.
            unsafe { libc::close(std::os::fd::AsRawFd::as_raw_fd(listening)) };
            // SAFETY: restoring the default disposition.
            unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
            let _ = rustix::thread::set_name(c"vproc-seccomp");
            // Not the agent's OOM protection (-1000 in its unit): one of these per container and per
            // `runc exec` into it, so a container could otherwise make root processes the OOM killer
            // never picks.
            let _ = std::fs::write("/proc/self/oom_score_adj", "0");
            let answers = Answers::new(calls);
            let code = match serve(&Listener::new(listener), &answers) {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("the seccomp listener of {who} failed: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
    }
}
