//! `vproc run` while the container runs: waits for pid 1 to end, relays its terminal (-t: the pty's
//! output to stdout, stdin to it with -i, window size changes), and kills it `--stop-timeout` after a
//! SIGTERM was passed on. Signal handlers only set flags and write a byte to a pipe this loop polls, so
//! none is missed between a check and the wait.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rustix::event::{PollFd, PollFlags};

use super::{LaunchError, terminal};

/// What is relayed: the pty's master, and `vproc run`'s stdin into it (-i).
pub struct Relay {
    pub master: Option<OwnedFd>,
    pub stdin: bool,
}

/// Input read from stdin and not yet taken by the pty; stdin is not read while this much waits (a
/// command that reads nothing cannot make `vproc run` block or grow).
const MAX_PENDING_INPUT: usize = 64 << 10;

/// Output read from the pty and not yet taken by stdout; the pty is not read while this much waits, so
/// a stdout that does not drain (a paused pager) stalls the command, not `vproc run`'s stop timeout.
const MAX_PENDING_OUTPUT: usize = 64 << 10;

/// At most this much is written to stdout when poll says it can take more: a pipe then takes it
/// without blocking (PIPE_BUF).
const STDOUT_CHUNK: usize = 4096;

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

/// Returns once pid 1 (`child`) has ended, leaving it to be reaped by the caller.
pub fn supervise(child: Pid, relay: Relay, stop_timeout: Duration) -> Result<(), LaunchError> {
    let (wake_read, wake_write) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )
    .map_err(|e| LaunchError::os("cannot create a pipe for vproc run", e))?;
    WAKE_WRITE.store(wake_write.as_raw_fd(), Ordering::SeqCst);
    // A SIGTERM that came before the pipe existed is in the flag.
    wake();
    let result = Supervisor::new(child, relay, stop_timeout).run(&wake_read);
    WAKE_WRITE.store(-1, Ordering::SeqCst);
    drop(wake_write);
    result
}

struct Supervisor {
    child: Pid,
    pidfd: Option<OwnedFd>,
    master: Option<OwnedFd>,
    stdin_open: bool,
    pending: Vec<u8>,
    output: Vec<u8>,
    stop_timeout: Duration,
    kill_at: Option<Instant>,
    buffer: Vec<u8>,
}

impl Supervisor {
    fn new(child: Pid, relay: Relay, stop_timeout: Duration) -> Self {
        if let Some(master) = &relay.master {
            let _ = rustix::io::ioctl_fionbio(master, true);
        }
        Supervisor {
            child,
            pidfd: crate::pidfd::open(child.as_raw(), 0),
            stdin_open: relay.stdin && relay.master.is_some(),
            master: relay.master,
            pending: Vec::new(),
            output: Vec::new(),
            stop_timeout,
            kill_at: None,
            buffer: vec![0u8; 16 << 10],
        }
    }

    fn run(mut self, wake: &OwnedFd) -> Result<(), LaunchError> {
        loop {
            self.look_at_flags();
            if self.ended() {
                self.drain_output();
                return Ok(());
            }
            let (stdin, stdout) = (rustix::stdio::stdin(), rustix::stdio::stdout());
            let mut fds = vec![PollFd::new(wake, PollFlags::IN)];
            let pidfd_at = self.pidfd.as_ref().map(|pidfd| {
                fds.push(PollFd::new(pidfd, PollFlags::IN));
                fds.len() - 1
            });
            let master_at = self.master.as_ref().map(|master| {
                let mut events = PollFlags::empty();
                if self.output.len() < MAX_PENDING_OUTPUT {
                    events |= PollFlags::IN;
                }
                if !self.pending.is_empty() {
                    events |= PollFlags::OUT;
                }
                fds.push(PollFd::new(master, events));
                fds.len() - 1
            });
            let stdout_at = (!self.output.is_empty()).then(|| {
                fds.push(PollFd::new(&stdout, PollFlags::OUT));
                fds.len() - 1
            });
            let stdin_at = (self.stdin_open && self.pending.len() < MAX_PENDING_INPUT).then(|| {
                fds.push(PollFd::new(&stdin, PollFlags::IN));
                fds.len() - 1
            });
            match rustix::event::poll(&mut fds, self.timeout().as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(LaunchError::os("cannot wait for the container", e)),
            }
            let ready = |at: Option<usize>| at.map(|i| fds[i].revents());
            let (woken, exited) = (ready(Some(0)), ready(pidfd_at));
            let (master_events, stdin_events) = (ready(master_at), ready(stdin_at));
            let stdout_events = ready(stdout_at);
            drop(fds);
            if woken.is_some_and(|r| !r.is_empty()) {
                drain(wake);
            }
            if exited.is_some_and(|r| !r.is_empty()) {
                continue;
            }
            if let Some(events) = master_events {
                if events.intersects(PollFlags::OUT) {
                    self.feed_master();
                }
                if events.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                    self.copy_output();
                }
            }
            if stdin_events.is_some_and(|r| !r.is_empty()) {
                self.read_input();
            }
            if stdout_events.is_some_and(|r| !r.is_empty()) {
                self.write_output();
            }
        }
    }

    /// A window size change or a SIGTERM since the last look; the stop timeout when it is due.
    fn look_at_flags(&mut self) {
        if terminal::take_resize()
            && let Some(master) = &self.master
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
        use nix::sys::wait::{Id, WaitPidFlag, waitid};
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.child), flags) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => false,
            Ok(_) => true,
            Err(nix::errno::Errno::EINTR) => false,
            Err(_) => true,
        }
    }

    fn copy_output(&mut self) {
        let Some(master) = &self.master else {
            return;
        };
        let room = (MAX_PENDING_OUTPUT - self.output.len()).min(self.buffer.len());
        match rustix::io::read(master, &mut self.buffer[..room]) {
            Ok(n @ 1..) => self.output.extend_from_slice(&self.buffer[..n]),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            // EIO: every slave is closed, the command and its children are gone.
            _ => {
                self.master = None;
                self.pending.clear();
            }
        }
    }

    fn write_output(&mut self) {
        let chunk = self.output.len().min(STDOUT_CHUNK);
        match rustix::io::write(rustix::stdio::stdout(), &self.output[..chunk]) {
            Ok(n) => {
                self.output.drain(..n);
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            // Nobody reads stdout any more: the output goes nowhere.
            Err(_) => self.output.clear(),
        }
    }

    /// What the command wrote before it ended is still in the pty (and in `output`): written out, even
    /// if stdout makes `vproc run` wait for it.
    fn drain_output(&mut self) {
        terminal::write_all(rustix::stdio::stdout(), &self.output);
        self.output.clear();
        while let Some(master) = &self.master {
            match rustix::io::read(master, &mut self.buffer) {
                Ok(n @ 1..) => {
                    terminal::write_all(rustix::stdio::stdout(), &self.buffer[..n]);
                }
                Err(rustix::io::Errno::INTR) => {}
                _ => self.master = None,
            }
        }
    }

    fn read_input(&mut self) {
        let room = MAX_PENDING_INPUT - self.pending.len();
        match rustix::io::read(
            rustix::stdio::stdin(),
            &mut self.buffer[..room.min(16 << 10)],
        ) {
            Ok(n @ 1..) => self.pending.extend_from_slice(&self.buffer[..n]),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            // End of input: the terminal's end-of-file character tells the command.
            _ => {
                self.pending.push(terminal::END_OF_INPUT);
                self.stdin_open = false;
            }
        }
    }

    fn feed_master(&mut self) {
        let Some(master) = &self.master else {
            return;
        };
        match rustix::io::write(master, &self.pending) {
            Ok(n) => {
                self.pending.drain(..n);
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(_) => self.pending.clear(),
        }
    }
}

/// Empties the non-blocking wake-up pipe.
fn drain(pipe: &OwnedFd) {
    let mut bytes = [0u8; 64];
    while matches!(rustix::io::read(pipe, &mut bytes), Ok(1..)) {}
}
