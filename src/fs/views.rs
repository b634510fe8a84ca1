//! Views: the mount's files as one container sees them, each with inodes of its own, so that the
//! kernel can keep their content in its page cache without one container's pages reaching another.
//! They are served on a second mount, stacked on the shared mount's `.by-pid`: `.by-pid/PID/proc/meminfo`
//! is PID's container's meminfo. vproc's own binds come from there (`vproc run`, `attach`, the OCI hook,
//! `reattach`); container runtimes' binds of the shared paths stay on the shared mount ([`super::shared`]
//! says why).
//!
//! An inode number is `view << 32 | local`, where `local` numbers the tree as [`super::NodeTable`] does
//! and view 0 is the views mount's root, whose entries are pids. Each pid named gets a view of its own
//! (a directory is reachable under one name only), keyed also by its container's identities, so a
//! pid reused by another container names another view.
//!
//! The daemon answers OPEN with ENOSYS: the kernel then sends no OPEN or RELEASE for any file of the
//! mount again and reads through the page cache. What keeps a cached file fresh and whole:
//! - a **generation** is one rendering of one inode; GETATTR and LOOKUP describe it (its size and, as
//!   mtime, when it was rendered) and READ serves exactly it, so the size the kernel holds and the bytes
//!   it reads agree;
//! - each [`TICK`], the daemon drops the kernel's pages and attributes of every inode READ since it
//!   last did (`Notifier::inval_inode`), and only then marks the generation stale: the next
//!   description renders afresh, and until then READs still serve what was described;
//! - an inode is dropped no sooner than [`QUIET`] after its last READ: the reader that caused that
//!   READ has by then made its next read(2) (the one that finds the end of the file), so a new
//!   generation cannot hand it the tail of a longer file;
//! - a generation older than a tick is never described again; attributes live one tick;
//! - a generation no READ was served from yet is provisional (see [`Generation::was_read`]);
//! - a file's size only grows, with room to spare where counters gain digits ([`Views::describe`]).
//!
//! Idle inodes cost nothing per tick. Generations unread for [`IDLE`] are dropped (the kernel's copy
//! first); a view goes when the kernel has forgotten all its inodes (FORGET).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fuser::Errno;
use parking_lot::{Mutex, RwLock};

use crate::cgroup::CgroupId;
use crate::error::Result;
use crate::metrics::Fallback;
use crate::reader::{Container, PidNamespace};
use crate::render::Sight;

/// How often inodes read are dropped from the kernel's cache: one USER_HZ tick, the daemon's usage
/// freshness ([`crate::render::DAEMON_USAGE_TTL`]).
pub const TICK: Duration = Duration::from_millis(10);
/// How long after its last READ an inode is left alone (see the module's documentation).
pub const QUIET: Duration = Duration::from_millis(1);
/// Generations unread this long are dropped.
pub const IDLE: Duration = Duration::from_secs(2);
/// Views at most (one per process named in `.by-pid` whose binds are alive): a LOOKUP that needs one
/// more is refused with ENFILE. Each costs ~300 bytes plus ~100 per inode described.
pub const MAX_VIEWS: usize = 65_536;
/// Views of one container at most (its processes named at once): one container naming its own
/// processes in a loop cannot take the others' room.
pub const MAX_VIEWS_PER_CONTAINER: usize = 256;
/// The view of the views mount's root (and the inode space of the shared mount).
pub const SHARED: u32 = 0;

/// The inode `local` of view `view`.
pub fn ino_in(view: u32, local: u64) -> u64 {
    (u64::from(view) << 32) | (local & 0xffff_ffff)
}

/// The view of inode `ino`.
pub fn view_of(ino: u64) -> u32 {
    (ino >> 32) as u32
}

/// The tree-wide number of inode `ino` (what [`super::NodeTable`] knows it by).
pub fn local_of(ino: u64) -> u64 {
    ino & 0xffff_ffff
}

/// A view: the process it is named by (its `.by-pid` entry) and what its files are a function of.
/// Two processes of one container get two views: a directory must be reachable under one name only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewKey {
    pub named: u32,
    pub identity: Identity,
}

/// The identities of a container's cgroups and pid namespace, or why its process could not be told
/// (it gets the host's files).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Unresolved(Fallback),
    Container {
        cgroups: [Option<CgroupId>; 5],
        /// The pid namespace's init and its start time (bits of the f64), `None` for the host's.
        init: Option<(u32, u64)>,
    },
}

impl Identity {
    pub fn of(sight: &Sight) -> Identity {
        match sight {
            Sight::Unresolved(cause) => Identity::Unresolved(*cause),
            Sight::Container(container) => Identity::Container {
                cgroups: container.identity,
                init: match container.pidns {
                    PidNamespace::Host => None,
                    PidNamespace::Container {
                        init_pid,
                        init_start_secs,
                    } => Some((init_pid, init_start_secs.to_bits())),
                },
            },
        }
    }
}

/// What a rendering gives: the file's bytes, and how much room to keep for it to grow (see
/// [`Views::describe`]).
#[derive(Debug)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub slack: usize,
}

/// `bytes` made `size` long (at least its length) by spaces before its final newline: the end of its
/// last line, where every reader of /proc's formats takes them for the field separator they are.
fn fit(mut bytes: Vec<u8>, size: usize) -> Vec<u8> {
    let missing = size.saturating_sub(bytes.len());
    if missing > 0 {
        let at = if bytes.last() == Some(&b'\n') {
            bytes.len() - 1
        } else {
            bytes.len()
        };
        bytes.splice(at..at, std::iter::repeat_n(b' ', missing));
    }
    bytes
}

/// One rendering of one inode.
#[derive(Debug)]
pub struct Generation {
    pub bytes: Vec<u8>,
    /// When it was rendered: its mtime.
    pub rendered: SystemTime,
    born: Instant,
    /// A READ was served from it. Until then it is provisional: described with attributes that expire
    /// at once, and rendered again when described more than [`QUIET`] later. A runtime's lookup of a
    /// bind's source comes before it sets the container's limits: the container's first read must not
    /// get what the file said then.
    read: std::sync::atomic::AtomicBool,
}

impl Generation {
    /// True once a READ was served from it.
    pub fn was_read(&self) -> bool {
        self.read.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Slot {
    current: Option<Arc<Generation>>,
    /// When a READ was last answered, if one was since the kernel's pages were last dropped.
    read_at: Option<Instant>,
    /// The kernel's pages were dropped since `current` was described: describe a new one.
    stale: bool,
    /// Descriptions so far: a drop is undone by one made between the kernel's invalidation and it.
    described: u64,
    /// The file's size: it only grows once a READ was answered. A rendering shorter is padded to it,
    /// one longer grows it with room to spare; see [`Views::describe`].
    size: usize,
    /// A READ was answered since the slot was made: a reader may be between two read(2) calls of
    /// `size` bytes, whichever generation is current now.
    was_read: bool,
    used_at: Instant,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            current: None,
            read_at: None,
            stale: false,
            described: 0,
            size: 0,
            was_read: false,
            used_at: Instant::now(),
        }
    }
}

/// A container's files.
#[derive(Debug)]
pub struct View {
    id: u32,
    key: ViewKey,
    /// Whom the files are rendered for, and when its limits were last read.
    sight: Mutex<(Sight, Instant)>,
    /// Lookups the kernel holds of the view's inodes (LOOKUP replies less FORGETs).
    lookups: AtomicU64,
    slots: Mutex<HashMap<u64, Slot>>,
    /// The kernel was told its named process is gone (once, until it is looked up again).
    gone_told: std::sync::atomic::AtomicBool,
}

impl View {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn key(&self) -> &ViewKey {
        &self.key
    }

    /// Whom the view shows its files to, its container's limits read again (with `refresh`) when they
    /// are older than `ttl`. A container gone keeps its last limits (its files fall back to the
    /// host's as its cgroup files go).
    pub fn sight(
        &self,
        ttl: Duration,
        refresh: impl FnOnce(&Container) -> Result<Container>,
    ) -> Sight {
        let mut sight = self.sight.lock();
        if let (Sight::Container(container), true) = (&sight.0, sight.1.elapsed() >= ttl) {
            if let Ok(fresh) = refresh(container) {
                sight.0 = Sight::Container(Arc::new(fresh));
            }
            sight.1 = Instant::now();
        }
        sight.0.clone()
    }
}

/// An inode to drop from the kernel's cache, and how many descriptions it had when chosen.
#[derive(Debug, Clone)]
pub struct Due {
    pub view: Arc<View>,
    pub local: u64,
    described: u64,
}

impl Due {
    pub fn ino(&self) -> u64 {
        ino_in(self.view.id, self.local)
    }
}

/// All views.
#[derive(Debug)]
pub struct Views {
    table: RwLock<HashMap<u32, Arc<View>>>,
    /// Key to view, and the lock under which views come and go.
    keys: Mutex<HashMap<ViewKey, u32>>,
    /// Views per container (identity), under the `keys` lock.
    per_container: Mutex<HashMap<Identity, usize>>,
    next: AtomicU32,
    /// Bytes of all generations kept.
    bytes: AtomicUsize,
    /// Inodes READ since the kernel's pages were last dropped.
    dirty: Mutex<Vec<(Arc<View>, u64)>>,
    shared: Arc<View>,
}

impl Default for Views {
    fn default() -> Self {
        Views {
            table: RwLock::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            per_container: Mutex::new(HashMap::new()),
            next: AtomicU32::new(SHARED + 1),
            bytes: AtomicUsize::new(0),
            dirty: Mutex::new(Vec::new()),
            shared: Arc::new(View {
                id: SHARED,
                key: ViewKey {
                    named: 0,
                    identity: Identity::Unresolved(Fallback::HostProcess),
                },
                sight: Mutex::new((Sight::Unresolved(Fallback::HostProcess), Instant::now())),
                lookups: AtomicU64::new(0),
                slots: Mutex::new(HashMap::new()),
                gone_told: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

/// Refused: [`MAX_VIEWS`] views exist, or [`MAX_VIEWS_PER_CONTAINER`] of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    All,
    Container,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::All => write!(f, "{MAX_VIEWS} views exist"),
            Full::Container => write!(f, "its container has {MAX_VIEWS_PER_CONTAINER} views"),
        }
    }
}

impl Views {
    /// View `id`, while the kernel holds an inode of it.
    pub fn get(&self, id: u32) -> Option<Arc<View>> {
        if id == SHARED {
            return Some(Arc::clone(&self.shared));
        }
        self.table.read().get(&id).cloned()
    }

    /// The view of process `named`, which `sight` resolves it to, made if new, with one more lookup
    /// counted (the caller answers a LOOKUP with one of its inodes, or gives it back with
    /// [`Views::forget`]).
    pub fn looked_up(&self, sight: Sight, named: u32) -> std::result::Result<Arc<View>, Full> {
        self.lookup(sight, named, true)
            .map(|view| view.expect("made when missing"))
    }

    /// The view of process `named` if it exists (one more lookup counted), never a new one: what a
    /// process outside the daemon's pid namespace may have when it names itself.
    pub fn existing(&self, sight: Sight, named: u32) -> Option<Arc<View>> {
        self.lookup(sight, named, false).ok().flatten()
    }

    fn lookup(
        &self,
        sight: Sight,
        named: u32,
        make: bool,
    ) -> std::result::Result<Option<Arc<View>>, Full> {
        let key = ViewKey {
            named,
            identity: Identity::of(&sight),
        };
        let mut keys = self.keys.lock();
        if let Some(view) = keys
            .get(&key)
            .and_then(|id| self.table.read().get(id).cloned())
        {
            view.lookups.fetch_add(1, Ordering::SeqCst);
            view.gone_told.store(false, Ordering::SeqCst);
            return Ok(Some(view));
        }
        if !make {
            return Ok(None);
        }
        if keys.len() >= MAX_VIEWS {
            return Err(Full::All);
        }
        let mut per_container = self.per_container.lock();
        let count = per_container.entry(key.identity.clone()).or_insert(0);
        if *count >= MAX_VIEWS_PER_CONTAINER {
            return Err(Full::Container);
        }
        *count += 1;
        drop(per_container);
        // Ids are not reused while in use (inode numbers of a view the kernel holds), nor is 0.
        let id = {
            let table = self.table.read();
            loop {
                let id = self.next.fetch_add(1, Ordering::SeqCst);
                if id != SHARED && !table.contains_key(&id) {
                    break id;
                }
            }
        };
        let view = Arc::new(View {
            id,
            key: key.clone(),
            sight: Mutex::new((sight, Instant::now())),
            lookups: AtomicU64::new(1),
            slots: Mutex::new(HashMap::new()),
            gone_told: std::sync::atomic::AtomicBool::new(false),
        });
        keys.insert(key, id);
        self.table.write().insert(id, Arc::clone(&view));
        Ok(Some(view))
    }

    /// One more lookup of an inode of `view` the kernel holds (a LOOKUP below the view's own tree).
    pub fn looked_up_again(&self, view: &View) {
        view.lookups.fetch_add(1, Ordering::SeqCst);
    }

    /// The kernel forgot `count` lookups of an inode of view `id`; the view goes with its last one.
    pub fn forget(&self, id: u32, count: u64) {
        if id == SHARED {
            return;
        }
        let mut keys = self.keys.lock();
        let Some(view) = self.table.read().get(&id).cloned() else {
            return;
        };
        let before = view
            .lookups
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(count))
            })
            .unwrap_or(0);
        if before > count {
            return;
        }
        if keys.get(&view.key) == Some(&id) {
            keys.remove(&view.key);
        }
        let mut per_container = self.per_container.lock();
        if let Some(count) = per_container.get_mut(&view.key.identity) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_container.remove(&view.key.identity);
            }
        }
        drop(per_container);
        self.table.write().remove(&id);
        drop(keys);
        let kept: usize = view
            .slots
            .lock()
            .drain()
            .filter_map(|(_, slot)| slot.current.map(|g| g.bytes.len()))
            .sum();
        self.bytes.fetch_sub(kept, Ordering::SeqCst);
    }

    /// The generation of inode `local` of `view` to describe (GETATTR, LOOKUP): the current one,
    /// unless it is stale or older than a tick, then a new one from `render`.
    ///
    /// A size that grows is the one change the page cache cannot make whole for a reader between two
    /// read(2) calls: having read the old size, its next read (the one that finds the end) would get
    /// the new rendering's tail. A rendering with slack (/proc/stat and diskstats, whose counters gain
    /// digits as they run) therefore keeps the file's size once it was read: a shorter one is padded
    /// with spaces at the end of its last line, and one that outgrows it takes its length plus the
    /// slack, which makes growing rare. Without slack, the size is the rendering's.
    pub fn describe(
        &self,
        view: &View,
        local: u64,
        render: impl FnOnce() -> std::result::Result<Rendered, Errno>,
    ) -> std::result::Result<Arc<Generation>, Errno> {
        let asked = Instant::now();
        {
            let mut slots = view.slots.lock();
            let slot = slots.entry(local).or_insert_with(Slot::new);
            if let Some(current) = &slot.current
                && !slot.stale
                && current.born.elapsed() < if current.was_read() { TICK } else { QUIET }
            {
                slot.described += 1;
                slot.used_at = asked;
                return Ok(Arc::clone(current));
            }
        }
        let bytes = render()?;
        let mut slots = view.slots.lock();
        let slot = slots.entry(local).or_insert_with(Slot::new);
        slot.described += 1;
        slot.used_at = Instant::now();
        // Another description rendered meanwhile: the kernel may hold either, and READ serves the
        // newest described; both came from this very moment.
        if let Some(current) = &slot.current
            && !slot.stale
            && current.born >= asked
        {
            return Ok(Arc::clone(current));
        }
        Ok(self.install(slot, bytes))
    }

    /// The generation inode `local` of `view` is read from: the one described last (made with
    /// `render` only when none is kept, which the kernel's attributes then cannot disagree with
    /// unless they were dropped as well).
    pub fn read(
        &self,
        view: &Arc<View>,
        local: u64,
        render: impl FnOnce() -> std::result::Result<Rendered, Errno>,
    ) -> std::result::Result<Arc<Generation>, Errno> {
        {
            let mut slots = view.slots.lock();
            if let Some(slot) = slots.get_mut(&local)
                && let Some(current) = slot.current.clone()
            {
                self.mark_read(view, local, slot);
                return Ok(current);
            }
        }
        let bytes = render()?;
        let mut slots = view.slots.lock();
        let slot = slots.entry(local).or_insert_with(Slot::new);
        let generation = match slot.current.clone() {
            Some(current) => current,
            None => self.install(slot, bytes),
        };
        self.mark_read(view, local, slot);
        Ok(generation)
    }

    fn install(&self, slot: &mut Slot, rendered: Rendered) -> Arc<Generation> {
        // A size nobody read from may change freely: no reader can be between two read(2) calls
        // of it (of any generation: a reader of one read before may be, though the current one was
        // only described). Without slack the size is the rendering's, always.
        if rendered.slack == 0 || !slot.was_read || rendered.bytes.len() > slot.size {
            slot.size = rendered.bytes.len() + rendered.slack;
        }
        let bytes = fit(rendered.bytes, slot.size);
        self.bytes.fetch_add(bytes.len(), Ordering::SeqCst);
        let generation = Arc::new(Generation {
            bytes,
            rendered: SystemTime::now(),
            born: Instant::now(),
            read: std::sync::atomic::AtomicBool::new(false),
        });
        if let Some(old) = slot.current.replace(Arc::clone(&generation)) {
            self.bytes.fetch_sub(old.bytes.len(), Ordering::SeqCst);
        }
        slot.stale = false;
        generation
    }

    fn mark_read(&self, view: &Arc<View>, local: u64, slot: &mut Slot) {
        if let Some(current) = &slot.current {
            current.read.store(true, Ordering::SeqCst);
        }
        slot.was_read = true;
        let now = Instant::now();
        slot.used_at = now;
        if slot.read_at.replace(now).is_none() {
            self.dirty.lock().push((Arc::clone(view), local));
        }
    }

    /// The inodes to drop from the kernel's cache now: READ since they last were, and not within
    /// [`QUIET`]. The rest wait for a later tick.
    pub fn due(&self) -> Vec<Due> {
        let dirty = std::mem::take(&mut *self.dirty.lock());
        let mut due = Vec::new();
        let mut later = Vec::new();
        for (view, local) in dirty {
            let mut slots = view.slots.lock();
            let Some(slot) = slots.get_mut(&local) else {
                continue;
            };
            match slot.read_at {
                Some(at) if at.elapsed() < QUIET => {
                    drop(slots);
                    later.push((view, local));
                }
                Some(_) => {
                    slot.read_at = None;
                    let described = slot.described;
                    drop(slots);
                    due.push(Due {
                        view,
                        local,
                        described,
                    });
                }
                None => {}
            }
        }
        if !later.is_empty() {
            self.dirty.lock().extend(later);
        }
        due
    }

    /// The kernel dropped what `due` names: their next descriptions render afresh.
    pub fn dropped(&self, due: &[Due]) {
        for due in due {
            if let Some(slot) = due.view.slots.lock().get_mut(&due.local) {
                slot.stale = true;
            }
        }
    }

    /// Generations unused for `idle` (or all, with zero), to drop from the kernel's cache and then
    /// here ([`Views::evict`]).
    pub fn idle(&self, idle: Duration) -> Vec<Due> {
        let views: Vec<Arc<View>> = std::iter::once(Arc::clone(&self.shared))
            .chain(self.table.read().values().cloned())
            .collect();
        let mut found = Vec::new();
        for view in views {
            let slots = view.slots.lock();
            for (&local, slot) in slots.iter() {
                if slot.current.is_some() && slot.used_at.elapsed() >= idle {
                    found.push(Due {
                        view: Arc::clone(&view),
                        local,
                        described: slot.described,
                    });
                }
            }
        }
        found
    }

    /// Forgets the generations of `idle` the kernel has dropped, unless one was described since. The
    /// slot stays, with the size readers were given: one paused between two read(2) calls for longer
    /// than that still finds the size it read.
    pub fn evict(&self, idle: &[Due]) {
        for due in idle {
            let mut slots = due.view.slots.lock();
            if let Some(slot) = slots.get_mut(&due.local)
                && slot.described == due.described
                && slot.read_at.is_none()
                && let Some(current) = slot.current.take()
            {
                self.bytes.fetch_sub(current.bytes.len(), Ordering::SeqCst);
            }
        }
    }

    /// The pids named by views whose process is gone: their `.by-pid` entries are dropped from the
    /// kernel's cache, so the kernel forgets what no bind holds (and the views go).
    /// Each view is told once (again only after it is looked up again); no lock is held while the
    /// pids are checked.
    pub fn gone(&self) -> Vec<u32> {
        let views: Vec<Arc<View>> = self
            .table
            .read()
            .values()
            .filter(|view| !view.gone_told.load(Ordering::SeqCst))
            .cloned()
            .collect();
        views
            .into_iter()
            // SAFETY: kill with signal 0 only checks that the pid exists.
            .filter(|view| unsafe { libc::kill(view.key.named as libc::pid_t, 0) } != 0)
            .map(|view| {
                view.gone_told.store(true, Ordering::SeqCst);
                view.key.named
            })
            .collect()
    }

    /// Every inode with a generation, to drop all (the views were switched off or on).
    pub fn everything(&self) -> Vec<Due> {
        self.idle(Duration::ZERO)
    }

    /// Views the kernel holds inodes of (not counting the shared tree).
    pub fn len(&self) -> usize {
        self.table.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the generations kept.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unresolved(cause: Fallback) -> Sight {
        Sight::Unresolved(cause)
    }

    fn text(s: &str) -> impl FnOnce() -> std::result::Result<Rendered, Errno> + '_ {
        move || {
            Ok(Rendered {
                bytes: s.as_bytes().to_vec(),
                slack: 0,
            })
        }
    }

    #[test]
    fn a_file_keeps_its_size_padding_its_last_line_and_grows_with_room() {
        let views = Views::default();
        let view = views.looked_up(unresolved(Fallback::NoPid), 1).unwrap();
        let rendered = |s: &'static str, slack| {
            move || {
                Ok(Rendered {
                    bytes: s.as_bytes().to_vec(),
                    slack,
                })
            }
        };
        let first = views
            .describe(&view, 3, rendered("a 10\nb 20\n", 4))
            .unwrap();
        assert_eq!(first.bytes, b"a 10\nb 20    \n", "room to grow");
        std::thread::sleep(QUIET * 2);
        let unread = views.describe(&view, 3, rendered("a 1\nb 2\n", 4)).unwrap();
        assert_eq!(unread.bytes, b"a 1\nb 2    \n", "never read: sized afresh");
        let due = |views: &Views| {
            views.read(&view, 3, text("x")).unwrap();
            std::thread::sleep(QUIET * 2);
            let due = views.due();
            views.dropped(&due);
        };
        due(&views);
        let shorter = views.describe(&view, 3, rendered("a 9\nb\n", 4)).unwrap();
        assert_eq!(shorter.bytes, b"a 9\nb      \n", "read: kept");
        // Described again before any READ of that one: a reader of the one before may still be
        // between its read(2) calls, so the size read stays (CI once read 3 bytes of a newer tail).
        std::thread::sleep(QUIET * 2);
        let again = views
            .describe(&view, 3, rendered("a 1000\nb 2\n", 4))
            .unwrap();
        assert_eq!(again.bytes, b"a 1000\nb 2 \n", "read once: kept");
        due(&views);
        let longer = views
            .describe(&view, 3, rendered("a 100000\nb 200000\n", 4))
            .unwrap();
        assert_eq!(longer.bytes, b"a 100000\nb 200000    \n");
        due(&views);
        let exact = views.describe(&view, 3, rendered("a\n", 0)).unwrap();
        assert_eq!(exact.bytes, b"a\n", "no slack, no padding");
        assert_eq!(fit(b"no newline".to_vec(), 12), b"no newline  ");
    }

    #[test]
    fn inode_numbers_carry_their_view() {
        let ino = ino_in(7, 42);
        assert_eq!((view_of(ino), local_of(ino)), (7, 42));

        assert_eq!(ino_in(SHARED, 1), 1, "the root stays inode 1");
    }

    #[test]
    fn a_container_has_its_share_of_views_and_no_more() {
        let views = Views::default();
        let held: Vec<_> = (1..=MAX_VIEWS_PER_CONTAINER as u32)
            .map(|pid| views.looked_up(unresolved(Fallback::NoPid), pid).unwrap())
            .collect();
        assert_eq!(
            views
                .looked_up(unresolved(Fallback::NoPid), 99_999)
                .unwrap_err(),
            Full::Container
        );
        assert!(
            views
                .looked_up(unresolved(Fallback::ReaderGone), 99_999)
                .is_ok()
        );
        views.forget(held[0].id(), 1);
        assert!(views.looked_up(unresolved(Fallback::NoPid), 99_999).is_ok());
    }

    #[test]
    fn one_view_per_key_and_it_goes_with_the_last_forget() {
        let views = Views::default();
        let a = views.looked_up(unresolved(Fallback::NoPid), 1).unwrap();
        let again = views.looked_up(unresolved(Fallback::NoPid), 1).unwrap();
        let b = views
            .looked_up(unresolved(Fallback::ReaderGone), 1)
            .unwrap();
        assert_eq!(a.id(), again.id());
        assert_ne!(a.id(), b.id());
        assert_eq!(views.len(), 2);
        views.describe(&a, 5, text("abc")).unwrap();
        assert_eq!(views.bytes(), 3);
        views.forget(a.id(), 1);
        assert!(views.get(a.id()).is_some(), "one lookup is still held");
        views.forget(a.id(), 1);
        assert!(views.get(a.id()).is_none());
        assert_eq!(views.bytes(), 0);
        let renewed = views.looked_up(unresolved(Fallback::NoPid), 1).unwrap();
        assert_ne!(
            renewed.id(),
            a.id(),
            "inode numbers of a forgotten view are not reused"
        );
    }

    #[test]
    fn a_read_serves_what_was_described_until_the_kernel_dropped_it() {
        let views = Views::default();
        let view = views.looked_up(unresolved(Fallback::NoPid), 1).unwrap();
        let described = views.describe(&view, 9, text("first")).unwrap();
        let read = views.read(&view, 9, text("second")).unwrap();
        assert_eq!(read.bytes, described.bytes);
        // Not due within QUIET of the read, due after it.
        assert!(views.due().is_empty());
        std::thread::sleep(QUIET * 2);
        let due = views.due();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].ino(), ino_in(view.id(), 9));
        // Until the kernel has dropped it, descriptions and reads stay on the same generation.
        assert_eq!(
            views.describe(&view, 9, text("third")).unwrap().bytes,
            b"first"
        );
        views.dropped(&due);
        assert_eq!(views.read(&view, 9, text("x")).unwrap().bytes, b"first");
        assert_eq!(
            views.describe(&view, 9, text("fourth")).unwrap().bytes,
            b"fourth"
        );
        assert_eq!(views.read(&view, 9, text("x")).unwrap().bytes, b"fourth");
        assert_eq!(views.bytes(), 6);
    }

    #[test]
    fn a_generation_older_than_a_tick_is_not_described_again() {
        let views = Views::default();
        let view = views.looked_up(unresolved(Fallback::NoPid), 1).unwrap();
        views.describe(&view, 1, text("old")).unwrap();
        std::thread::sleep(TICK + TICK / 2);
        assert_eq!(views.describe(&view, 1, text("new")).unwrap().bytes, b"new");
    }

    #[test]
    fn idle_generations_go_unless_described_meanwhile() {
        let views = Views::default();
        let view = views.looked_up(unresolved(Fallback::NoPid), 1).unwrap();
        views.describe(&view, 1, text("one")).unwrap();
        views.describe(&view, 2, text("two")).unwrap();
        let idle = views.idle(Duration::ZERO);
        assert_eq!(idle.len(), 2);
        views.describe(&view, 2, text("again")).unwrap();
        views.evict(&idle);
        assert_eq!(views.bytes(), 3, "the one described since stays");
        assert_eq!(views.read(&view, 2, text("x")).unwrap().bytes, b"two");
    }

    #[test]
    fn a_file_read_keeps_its_size_after_its_generation_went_idle() {
        let views = Views::default();
        let view = views.looked_up(unresolved(Fallback::NoPid), 1).unwrap();
        let rendered = |s: &'static str| {
            move || {
                Ok(Rendered {
                    bytes: s.as_bytes().to_vec(),
                    slack: 4,
                })
            }
        };
        views.describe(&view, 3, rendered("a 10\nb 20\n")).unwrap();
        views.read(&view, 3, text("x")).unwrap();
        std::thread::sleep(QUIET * 2);
        let due = views.due();
        views.dropped(&due);
        let idle = views.idle(Duration::ZERO);
        views.evict(&idle);
        assert_eq!(views.bytes(), 0, "the bytes go");
        let after = views.describe(&view, 3, rendered("a 1\nb\n")).unwrap();
        assert_eq!(after.bytes, b"a 1\nb        \n", "the size stays");
    }

    #[test]
    fn idle_views_cost_nothing_per_tick() {
        let views = Views::default();
        let view = views.looked_up(unresolved(Fallback::NoPid), 1).unwrap();
        views.describe(&view, 1, text("one")).unwrap();
        assert!(views.due().is_empty(), "described, never read");
        views.read(&view, 1, text("x")).unwrap();
        std::thread::sleep(QUIET * 2);
        assert_eq!(views.due().len(), 1);
        assert!(views.due().is_empty(), "not read again");
    }
}
