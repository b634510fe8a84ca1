//! `-t`: the command's terminal. The pty is made inside the container, from its own devpts instance after
//! pivot_root (so `tty` prints `/dev/pts/0` and the host's ptys stay out of reach); its slave becomes the
//! command's controlling terminal and stdin, stdout and stderr; its master is passed to `vproc run` over a
//! unix socket (SCM_RIGHTS), which relays it to its own stdout (and its stdin with `-i`) and forwards
//! window size changes (SIGWINCH). With `-i -t` on a terminal, `vproc run`'s terminal is raw meanwhile,
//! so keys like ^C reach the container's terminal, which turns them into signals there.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use rustix::pty::OpenptFlags;
use rustix::termios::{OptionalActions, Termios};

/// A pty of the container's devpts.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a new pty from /dev/ptmx (the container's `pts/ptmx` once the root is pivoted).
pub fn open_pty() -> io::Result<Pty> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::unlockpt(&master)?;
    // The slave by the master's own reference, not by a path in /dev/pts that the root could replace.
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
    Ok(Pty { master, slave })
}

/// In the command's process: a new session whose controlling terminal is `slave`, owned by the
/// command's user (as runc does), on stdin, stdout and stderr.
pub fn become_controlling(slave: OwnedFd, uid: u32) -> io::Result<()> {
    rustix::process::setsid()?;
    rustix::process::ioctl_tiocsctty(&slave)?;
    rustix::fs::fchown(&slave, Some(rustix::fs::Uid::from_raw(uid)), None)?;
    for target in 0..=2 {
        // SAFETY: dup2(2) onto the standard fds of this process, which it is about to exec.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `fd` over the unix socket `socket`.
pub fn send_fd(socket: &OwnedFd, fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        socket,
        &[io::IoSlice::new(b"m")],
        &mut control,
        // A peer gone is an error to report, not a SIGPIPE that kills the sender without a word.
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives the pty master sent by [`send_fd`]; `None` when the other end closed without sending
/// one. Anything but one pty master is refused.
pub fn receive_master(socket: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let fd = receive_fd(socket)?;
    if let Some(fd) = &fd {
        // A master answers TIOCGPTN (its pty's number); a slave or any other file does not.
        rustix::pty::ptsname(fd, Vec::new()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "not a pty master".to_string())
        })?;
    }
    Ok(fd)
}

/// Receives the one fd sent by [`send_fd`]; `None` when the other end closed without sending one.
pub fn receive_fd(socket: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let received = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [io::IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(message) => break message,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let refused = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if received.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(refused("more than one fd came"));
    }
    Ok(control.drain().find_map(|message| match message {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    }))
}

/// `vproc run`'s terminal, if stdin or stdout is one: where the window size is read.
fn own_terminal() -> Option<BorrowedFd<'static>> {
    [rustix::stdio::stdin(), rustix::stdio::stdout()]
        .into_iter()
        .find(|fd| rustix::termios::isatty(fd))
}

/// Gives the container's terminal the size of `vproc run`'s, if it has one.
pub fn copy_window_size(master: &OwnedFd) {
    if let Some(terminal) = own_terminal()
        && let Ok(size) = rustix::termios::tcgetwinsize(terminal)
    {
        let _ = rustix::termios::tcsetwinsize(master, size);
    }
}

static RESIZED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_resize(_: libc::c_int) {
    // SAFETY: errno of this thread, saved for the code the signal interrupted.
    let errno = unsafe { *libc::__errno_location() };
    RESIZED.store(true, Ordering::SeqCst);
    super::supervise::wake();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// From now on a SIGWINCH is remembered for [`take_resize`] (and interrupts `poll`).
pub fn watch_resizes() -> io::Result<()> {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(note_resize),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only stores an atomic.
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGWINCH, &action) }
        .map(drop)
        .map_err(io::Error::from)
}

/// Whether the window changed size since the last call.
pub fn take_resize() -> bool {
    RESIZED.swap(false, Ordering::SeqCst)
}

/// `vproc run`'s stdin in raw mode while it lives, if stdin is a terminal; restored when dropped.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    pub fn enable() -> RawMode {
        let stdin = rustix::stdio::stdin();
        let saved = rustix::termios::tcgetattr(stdin)
            .ok()
            .filter(|_| rustix::termios::isatty(stdin));
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(stdin, OptionalActions::Now, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = rustix::termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, saved);
        }
    }
}

/// Writes all of `bytes` to `fd`; false if it cannot take them (closed, EPIPE).
pub fn write_all(fd: impl AsFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match rustix::io::write(&fd, bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
    true
}

/// The byte a terminal in canonical mode takes as end of input (^D), sent when `vproc run`'s stdin ends.
pub const END_OF_INPUT: u8 = 0x04;
