//! A pid -> resolved-reader cache. An entry is used only while its pidfd says the process is alive
//! (a reused pid gets a fresh entry) and for at most `ttl` (a process that moved to another cgroup is
//! seen within `ttl`). Checking a held pidfd costs ~0.7 us against ~10 us per /proc read.
//!
//! Each entry holds one pidfd, so the cache's capacity is an fd budget (see
//! [`super::Budget`]): a full cache evicts its least recently used reader, and a reader that exited is
//! dropped (its pidfd closed) at most one TTL after its last read.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::lru::Lru;
use crate::pidfd::{self, PIDFD_THREAD, is_alive};

struct Entry<T> {
    liveness: Liveness,
    value: Arc<T>,
}

/// How an entry checks that its reader is still the task it was resolved for.
enum Liveness {
    /// A pidfd of the task itself (any thread since Linux 6.9, or a thread-group leader).
    Task(OwnedFd),
    /// Before Linux 6.9 a thread that does not lead its group has no pidfd: hold its leader's (which
    /// notices the process going away) and check that the thread id still belongs to that process
    /// (tgkill(tgid, tid, 0) fails once the thread has exited, whoever reuses the id).
    ThreadOf {
        leader: OwnedFd,
        tgid: i32,
        tid: i32,
    },
}

/// Caches one resolved value per pid, holding at most `capacity` pidfds.
pub struct ReaderCache<T> {
    entries: Lru<u32, Arc<Entry<T>>>,
    /// False only in tests, to exercise the pre-6.9 path on a newer kernel.
    thread_pidfds: bool,
}

impl<T> std::fmt::Debug for ReaderCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderCache")
            .field("len", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl<T> ReaderCache<T> {
    /// A cache of at most `capacity` readers, each kept at most `ttl`; a zero TTL disables caching.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        ReaderCache {
            entries: Lru::new(capacity, ttl),
            thread_pidfds: true,
        }
    }

    /// The cached value for `pid`, or the result of `resolve`, which is then cached.
    pub fn get_or_resolve<E>(
        &self,
        pid: u32,
        resolve: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        if let Some(entry) = self.entries.get_if(&pid, |e| e.liveness.holds()) {
            return Ok(Arc::clone(&entry.value));
        }
        // Take the pidfd before resolving: if the pid dies and is reused in between, the pidfd refers to
        // the old task and the entry is never used.
        let liveness = Liveness::of(pid, self.thread_pidfds);
        let value = Arc::new(resolve()?);
        if let Some(liveness) = liveness {
            let entry = Entry {
                liveness,
                value: Arc::clone(&value),
            };
            self.entries.insert(pid, Arc::new(entry));
        }
        Ok(value)
    }

    /// Drops readers unused for a TTL, closing their pidfds.
    pub fn sweep(&self) -> usize {
        self.entries.sweep()
    }

    /// Readers held now (one pidfd each).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Readers pushed out to make room for others (see [`Lru::evictions`]).
    pub fn evictions(&self) -> u64 {
        self.entries.evictions()
    }

    /// The most readers (and so pidfds) held.
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// True when no reader is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Liveness {
    /// How to check task `pid` (a thread id, as FUSE sends); `None` where there is no way (the value is
    /// then not cached).
    fn of(pid: u32, thread_pidfds: bool) -> Option<Liveness> {
        let tid = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0)?;
        if thread_pidfds {
            if let Some(fd) = pidfd::open(tid, PIDFD_THREAD) {
                return Some(Liveness::Task(fd));
            }
        }
        if let Some(fd) = pidfd::open(tid, 0) {
            return Some(Liveness::Task(fd));
        }
        // A thread that does not lead its group, on a kernel without PIDFD_THREAD.
        let tgid = thread_group_of(tid)?;
        let leader = pidfd::open(tgid, 0)?;
        Some(Liveness::ThreadOf { leader, tgid, tid })
    }

    fn holds(&self) -> bool {
        match self {
            Liveness::Task(pidfd) => is_alive(pidfd),
            Liveness::ThreadOf { leader, tgid, tid } => {
                // SAFETY: tgkill with signal 0 only checks that `tid` is a thread of `tgid`.
                let member = unsafe { libc::syscall(libc::SYS_tgkill, *tgid, *tid, 0) } == 0;
                member && is_alive(leader)
            }
        }
    }
}

/// The thread group (process) of thread `tid`, from the `Tgid:` line of /proc/TID/status.
fn thread_group_of(tid: libc::pid_t) -> Option<libc::pid_t> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Tgid:"))?;
    line.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn live_pid_is_resolved_once_within_ttl() {
        let cache = ReaderCache::new(16, Duration::from_secs(60));
        let calls = Cell::new(0);
        let pid = std::process::id();
        for _ in 0..3 {
            let value = cache
                .get_or_resolve(pid, || {
                    calls.set(calls.get() + 1);
                    Ok::<_, ()>(42)
                })
                .unwrap();
            assert_eq!(*value, 42);
        }
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn dead_pid_is_resolved_again() {
        let cache = ReaderCache::new(16, Duration::from_secs(60));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        cache.get_or_resolve(pid, || Ok::<_, ()>(1)).unwrap();
        child.wait().unwrap();
        let value = cache.get_or_resolve(pid, || Ok::<_, ()>(2)).unwrap();
        assert_eq!(*value, 2);
    }

    /// The pre-6.9 path: a non-leader thread is checked through its leader and tgkill.
    #[test]
    fn non_leader_threads_are_cached_without_thread_pidfds() {
        let mut cache = ReaderCache::new(16, Duration::from_secs(60));
        cache.thread_pidfds = false;
        let (tid_sender, tid) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_sender.send(unsafe { libc::gettid() } as u32).unwrap();
            stopped.recv().unwrap();
        });
        let tid = tid.recv().unwrap();
        let calls = Cell::new(0);
        let resolve = || {
            calls.set(calls.get() + 1);
            Ok::<_, ()>(calls.get())
        };
        assert!(matches!(
            Liveness::of(tid, false),
            Some(Liveness::ThreadOf { .. })
        ));
        assert_eq!(*cache.get_or_resolve(tid, resolve).unwrap(), 1);
        assert_eq!(
            *cache.get_or_resolve(tid, resolve).unwrap(),
            1,
            "cached while the thread lives"
        );
        stop.send(()).unwrap();
        thread.join().unwrap();
        assert_eq!(
            *cache.get_or_resolve(tid, resolve).unwrap(),
            2,
            "resolved again once it exited"
        );
    }

    #[test]
    fn a_full_cache_evicts_instead_of_holding_more_pidfds() {
        let cache = ReaderCache::new(3, Duration::from_secs(60));
        let mut children: Vec<_> = (0..8)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("60")
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in &children {
            cache.get_or_resolve(child.id(), || Ok::<_, ()>(0)).unwrap();
        }
        assert_eq!(cache.len(), 3);
        for child in &mut children {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    #[test]
    fn expired_entry_is_resolved_again() {
        let cache = ReaderCache::new(16, Duration::from_millis(1));
        let pid = std::process::id();
        cache.get_or_resolve(pid, || Ok::<_, ()>(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(*cache.get_or_resolve(pid, || Ok::<_, ()>(2)).unwrap(), 2);
    }
}
