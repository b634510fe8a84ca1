//! `vproc run` while the container runs: waits for pid 1 to end, relays what must not be handed to the
//! container as it is (the pty's master with -t; pipes in place of `vproc run`'s own terminal without
//! -t), forwards window size changes, and kills pid 1 `--stop-timeout` after a SIGTERM was passed on.
//!
//! Nothing here blocks but the wait itself: every fd is polled, buffers are bounded (a command that
//! reads nothing, or a stdout nobody drains, stalls the container's side, never the stop timeout), and
//! signal handlers only set flags and write a byte to a pipe the wait includes, so none is missed
//! between a look at the flags and the wait.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rustix::event::{PollFd, PollFlags};

use super::{LaunchError, terminal};

/// What is relayed.
#[derive(Default)]
pub struct Relay {
    /// From the container to `vproc run`'s stdout or stderr: the pty's master, or a pipe's read end.
    pub outputs: Vec<(OwnedFd, BorrowedFd<'static>)>,
    /// `vproc run`'s stdin into the container (-i): the pty's master, or a pipe's write end.
    pub input: Option<InputSink>,
    /// -t: the pty's master, whose window size follows `vproc run`'s terminal.
    pub terminal: Option<OwnedFd>,
}

/// Where stdin goes, and how its end is told.
pub struct InputSink {
    pub fd: OwnedFd,
    /// A terminal gets its end-of-file character (^D); a pipe is closed.
    pub is_terminal: bool,
}

/// Per stream, what waits to be written; its source is not read while this much waits.
const MAX_PENDING: usize = 64 << 10;

/// At most this much is written when poll says a sink takes more: a pipe then takes it without
/// blocking (PIPE_BUF).
const WRITE_CHUNK: usize = 4096;

/// Without pidfds (Linux < 5.3), how often pid 1 is looked at.
const POLL_WITHOUT_PIDFD: Duration = Duration::from_millis(100);

/// The write end of the wake-up pipe while [`supervise`] runs; -1 otherwise.
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// A SIGTERM was passed on: the stop timeout starts.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// From a signal handler: interrupts the wait so the loop looks at the flags again.
pub(crate) fn wake() {
    let fd = WAKE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking, a full pipe wakes anyway.
        unsafe { libc::write(fd, b"w".as_ptr().cast(), 1) };
    }
}

/// From the signal handler: a SIGTERM went to the container.
pub(crate) fn request_stop() {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
    wake();
}

/// Returns once pid 1 (`child`) has ended and what it wrote is passed on, leaving it to be reaped.
pub fn supervise(child: Pid, relay: Relay, stop_timeout: Duration) -> Result<(), LaunchError> {
    let (wake_read, wake_write) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )
    .map_err(|e| LaunchError::os("cannot create a pipe for vproc run", e))?;
    WAKE_WRITE.store(wake_write.as_raw_fd(), Ordering::SeqCst);
    // A SIGTERM that came before the pipe existed is in the flag.
    wake();
    let mut supervisor = Supervisor::new(child, relay, stop_timeout);
    let result = supervisor.run(&wake_read);
    if result.is_ok() {
        supervisor.flush(&wake_read);
    }
    WAKE_WRITE.store(-1, Ordering::SeqCst);
    // Never closed: a handler that loaded the fd just before must not write into a reused number.
    std::mem::forget(wake_write);
    result
}

/// One direction of one stream: a source read when there is room, a sink written when it takes more.
struct Stream<'a> {
    source: Option<OwnedFd>,
    sink: Option<Sink<'a>>,
    pending: Vec<u8>,
    /// stdin: what to do at its end.
    end: AtEnd,
}

enum Sink<'a> {
    Ours(BorrowedFd<'a>),
    Container(OwnedFd),
}

impl Sink<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Sink::Ours(fd) => *fd,
            Sink::Container(fd) => fd.as_fd(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AtEnd {
    /// Output: nothing to do.
    Nothing,
    /// stdin into a pty: ^D.
    SendEof,
    /// stdin into a pipe: close it once what is pending is written.
    Close,
}

impl Stream<'_> {
    fn wants_input(&self) -> bool {
        self.source.is_some() && self.sink.is_some() && self.pending.len() < MAX_PENDING
    }

    fn wants_output(&self) -> bool {
        self.sink.is_some() && !self.pending.is_empty()
    }

    /// Reads what the source has; at its end, the stream's end.
    fn read(&mut self, buffer: &mut [u8]) {
        let Some(source) = &self.source else {
            return;
        };
        let room = (MAX_PENDING - self.pending.len()).min(buffer.len());
        if room == 0 {
            return;
        }
        match rustix::io::read(source, &mut buffer[..room]) {
            Ok(n @ 1..) => self.pending.extend_from_slice(&buffer[..n]),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            // 0 is the end of a pipe or of stdin; EIO is a pty whose slaves are all closed.
            _ => {
                self.source = None;
                if self.end == AtEnd::SendEof {
                    self.pending.push(terminal::END_OF_INPUT);
                }
            }
        }
    }

    /// Writes a chunk of what is pending; a sink that takes nothing more is given up.
    fn write(&mut self) {
        let Some(sink) = &self.sink else {
            return;
        };
        let chunk = self.pending.len().min(WRITE_CHUNK);
        match rustix::io::write(sink.fd(), &self.pending[..chunk]) {
            Ok(n) => {
                self.pending.drain(..n);
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(_) => {
                self.sink = None;
                self.pending.clear();
            }
        }
        if self.source.is_none() && self.pending.is_empty() && self.end == AtEnd::Close {
            self.sink = None;
        }
    }
}

struct Supervisor {
    child: Pid,
    pidfd: Option<OwnedFd>,
    /// Container to `vproc run`, then `vproc run`'s stdin to the container (last, if -i).
    streams: Vec<Stream<'static>>,
    terminal: Option<OwnedFd>,
    stop_timeout: Duration,
    kill_at: Option<Instant>,
    buffer: Vec<u8>,
}

/// What an entry of the poll set is.
#[derive(Clone, Copy)]
enum Polled {
    Wake,
    Pid,
    Source(usize),
    Sink(usize),
}

impl Supervisor {
    fn new(child: Pid, relay: Relay, stop_timeout: Duration) -> Self {
        let mut streams: Vec<Stream<'static>> = relay
            .outputs
            .into_iter()
            .map(|(source, sink)| Stream {
                source: Some(source),
                sink: Some(Sink::Ours(sink)),
                pending: Vec::new(),
                end: AtEnd::Nothing,
            })
            .collect();
        if let Some(input) = relay.input {
            streams.push(Stream {
                source: rustix::io::dup(rustix::stdio::stdin()).ok(),
                sink: Some(Sink::Container(input.fd)),
                pending: Vec::new(),
                end: if input.is_terminal {
                    AtEnd::SendEof
                } else {
                    AtEnd::Close
                },
            });
        }
        // The container's ends are ours alone: they may be non-blocking (stdin's is not touched).
        for stream in &streams {
            if let Some(Sink::Container(fd)) = &stream.sink {
                let _ = rustix::io::ioctl_fionbio(fd, true);
            }
            if let (Some(source), AtEnd::Nothing) = (&stream.source, stream.end) {
                let _ = rustix::io::ioctl_fionbio(source, true);
            }
        }
        Supervisor {
            child,
            pidfd: crate::pidfd::open(child.as_raw(), 0),
            streams,
            terminal: relay.terminal,
            stop_timeout,
            kill_at: None,
            buffer: vec![0u8; 16 << 10],
        }
    }

    /// Relays until pid 1 ends.
    fn run(&mut self, wake: &OwnedFd) -> Result<(), LaunchError> {
        loop {
            self.look_at_flags();
            if self.ended() {
                return Ok(());
            }
            let mut roles = vec![Polled::Wake];
            let mut fds = vec![PollFd::new(wake, PollFlags::IN)];
            if let Some(pidfd) = &self.pidfd {
                roles.push(Polled::Pid);
                fds.push(PollFd::new(pidfd, PollFlags::IN));
            }
            for (i, stream) in self.streams.iter().enumerate() {
                if stream.wants_input()
                    && let Some(source) = &stream.source
                {
                    roles.push(Polled::Source(i));
                    fds.push(PollFd::new(source, PollFlags::IN));
                }
                if stream.wants_output()
                    && let Some(sink) = &stream.sink
                {
                    roles.push(Polled::Sink(i));
                    fds.push(PollFd::from_borrowed_fd(sink.fd(), PollFlags::OUT));
                }
            }
            match rustix::event::poll(&mut fds, self.timeout().as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(LaunchError::os("cannot wait for the container", e)),
            }
            let ready: Vec<Polled> = roles
                .into_iter()
                .zip(fds.iter().map(|fd| !fd.revents().is_empty()))
                .filter_map(|(role, ready)| ready.then_some(role))
                .collect();
            drop(fds);
            for role in ready {
                match role {
                    Polled::Wake => drain(wake),
                    Polled::Pid => {}
                    Polled::Source(i) => self.streams[i].read(&mut self.buffer),
                    Polled::Sink(i) => self.streams[i].write(),
                }
            }
        }
    }

    /// After pid 1 ended: what is left in the container's ends is read and written out. Only a SIGTERM
    /// gives up on a sink that does not take it.
    fn flush(&mut self, wake: &OwnedFd) {
        // The command's input no longer matters.
        if let Some(last) = self.streams.last_mut()
            && last.end != AtEnd::Nothing
        {
            last.source = None;
            last.sink = None;
        }
        loop {
            for stream in &mut self.streams {
                while stream.source.is_some() && stream.pending.len() < MAX_PENDING {
                    let before = stream.pending.len();
                    stream.read(&mut self.buffer);
                    if stream.pending.len() == before {
                        // Nothing more now (EAGAIN); the rest, if any, is gone with the container.
                        stream.source = None;
                    }
                }
            }
            let mut fds = vec![PollFd::new(wake, PollFlags::IN)];
            let mut sinks = Vec::new();
            for (i, stream) in self.streams.iter().enumerate() {
                if stream.wants_output()
                    && let Some(sink) = &stream.sink
                {
                    sinks.push(i);
                    fds.push(PollFd::from_borrowed_fd(sink.fd(), PollFlags::OUT));
                }
            }
            if sinks.is_empty() {
                return;
            }
            if let Err(e) = rustix::event::poll(&mut fds, None)
                && e != rustix::io::Errno::INTR
            {
                return;
            }
            let woken = !fds[0].revents().is_empty();
            let writable: Vec<bool> = fds[1..].iter().map(|fd| !fd.revents().is_empty()).collect();
            drop(fds);
            if woken {
                drain(wake);
                if STOP_REQUESTED.swap(false, Ordering::SeqCst) {
                    return;
                }
            }
            for (i, ready) in sinks.into_iter().zip(writable) {
                if ready {
                    self.streams[i].write();
                }
            }
        }
    }

    /// A window size change or a SIGTERM since the last look; the stop timeout when it is due.
    fn look_at_flags(&mut self) {
        if terminal::take_resize()
            && let Some(master) = &self.terminal
        {
            terminal::copy_window_size(master);
        }
        if STOP_REQUESTED.swap(false, Ordering::SeqCst) && self.kill_at.is_none() {
            // A timeout too large for the clock never comes.
            self.kill_at = Instant::now().checked_add(self.stop_timeout);
        }
        if let Some(at) = self.kill_at
            && Instant::now() >= at
        {
            let _ = nix::sys::signal::kill(self.child, Signal::SIGKILL);
            self.kill_at = None;
        }
    }

    /// How long the next wait may last: until the stop timeout, or a while without a pidfd.
    fn timeout(&self) -> Option<rustix::event::Timespec> {
        let until_kill = self
            .kill_at
            .map(|at| at.saturating_duration_since(Instant::now()));
        let without_pidfd = self.pidfd.is_none().then_some(POLL_WITHOUT_PIDFD);
        let wait = match (until_kill, without_pidfd) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(rustix::event::Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        })
    }

    /// Whether pid 1 has ended (it stays a zombie until the caller reaps it).
    fn ended(&self) -> bool {
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.child), flags) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => false,
            Ok(_) | Err(_) => true,
        }
    }
}

/// Empties the non-blocking wake-up pipe.
fn drain(pipe: &OwnedFd) {
    let mut bytes = [0u8; 64];
    while matches!(rustix::io::read(pipe, &mut bytes), Ok(1..)) {}
}
