//! Open file handles: what each shows and, while it is read in pieces, the bytes it rendered.
//!
//! Budget: a handle costs ~100 bytes in the table; its rendered bytes are kept only between its first
//! read and the read that reaches the end (then only the length stays), and identical renderings (the
//! same container's file within one tick) share one buffer. Each container (the cgroup that opened the
//! handle) has its own share, so no container can spend what the others need:
//! [`MAX_HANDLES_PER_CONTAINER`] handles (then its opens fail with EMFILE) and
//! [`KEPT_BYTES_PER_CONTAINER`] of kept bytes (then its own pieces are rendered afresh). The whole
//! table stays under [`MAX_OPEN_HANDLES`] (ENFILE) and [`BUFFER_BUDGET`].

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::cgroup::CgroupId;
use crate::files::Content;
use crate::lru::{Lru, NO_EXPIRY};

/// Open handles at most (the kernel's `file-max` for this filesystem): ~100 MiB of table at the limit.
pub const MAX_OPEN_HANDLES: usize = 1 << 20;
/// Open handles of one container at most: ~8 MiB of table.
pub const MAX_HANDLES_PER_CONTAINER: usize = 1 << 16;
/// Rendered bytes kept for handles read in pieces, at most.
pub const BUFFER_BUDGET: usize = 16 << 20;
/// Rendered bytes kept for one container's handles, at most (counted per handle, so a buffer shared by
/// two handles counts twice): room for dozens of large cpuinfo files read in pieces at once.
pub const KEPT_BYTES_PER_CONTAINER: usize = 1 << 20;
/// Distinct renderings remembered for sharing.
const INTERNED: usize = 4096;

/// What an open handle reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HandleSource {
    Virtual(Content),
    /// A host sysfs file passed through, resolved for the reader at open.
    Host(PathBuf),
    /// `sys/block/NAME/stat` in the reader's container's numbers.
    BlockStat(String),
    /// A topology or cache file below the reader's `cpu{slot}` directory, rewritten for its visible
    /// host CPUs (see [`crate::view::topology`]).
    CpuTopology {
        path: PathBuf,
        relative: PathBuf,
        slot: u32,
        visible: Vec<u32>,
    },
}

/// Rendered bytes, counted in [`Handles::buffered_bytes`] while they exist.
#[derive(Debug)]
pub struct Buffer {
    bytes: Box<[u8]>,
    counter: Arc<AtomicUsize>,
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

/// The bytes a read was served from.
#[derive(Debug)]
pub enum Served {
    /// What the handle kept from an earlier read.
    Kept(Arc<Buffer>),
    /// Rendered for this read.
    Fresh(HandleSource, Vec<u8>),
}

impl std::ops::Deref for Served {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Served::Kept(buffer) => buffer,
            Served::Fresh(_, bytes) => bytes,
        }
    }
}

/// What a read of a handle starts from (see [`Handles::lookup`]).
#[derive(Debug)]
pub enum Lookup {
    /// The bytes the handle rendered, to slice.
    Rendered(Arc<Buffer>),
    /// The handle read to its end already; a read past that is empty.
    Ended,
    /// Nothing kept: render this.
    Render(HandleSource),
}

#[derive(Debug)]
struct Handle {
    source: HandleSource,
    kept: Kept,
    /// The container that opened it; `None` for the host's own processes, which have no share.
    owner: Option<CgroupId>,
}

/// Why an open was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The opener's container holds [`MAX_HANDLES_PER_CONTAINER`].
    Container,
    /// The table holds [`MAX_OPEN_HANDLES`].
    Table,
}

/// The open handles and what each container holds of them.
#[derive(Debug, Default)]
struct Table {
    handles: HashMap<u64, Handle>,
    shares: HashMap<CgroupId, Share>,
}

/// What one container holds.
#[derive(Debug, Default)]
struct Share {
    handles: usize,
    kept_bytes: usize,
}

impl Kept {
    fn bytes(&self) -> usize {
        match self {
            Kept::Buffer(buffer) => buffer.len(),
            _ => 0,
        }
    }
}

#[derive(Debug)]
enum Kept {
    Nothing,
    Buffer(Arc<Buffer>),
    /// Read to the end; the length of what it read.
    Ended(usize),
}

/// The table of open handles.
#[derive(Debug)]
pub struct Handles {
    next: AtomicU64,
    open: Mutex<Table>,
    interned: Lru<u64, Weak<Buffer>>,
    buffered: Arc<AtomicUsize>,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            next: AtomicU64::new(0),
            open: Mutex::new(Table::default()),
            interned: Lru::new(INTERNED, NO_EXPIRY),
            buffered: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Handles {
    /// Registers a new handle opened by `owner`'s process (`None`: the host's), unless its container or
    /// the table is full.
    pub fn open(&self, source: HandleSource, owner: Option<CgroupId>) -> Result<u64, Refused> {
        let mut table = self.open.lock();
        if table.handles.len() >= MAX_OPEN_HANDLES {
            return Err(Refused::Table);
        }
        if let Some(owner) = owner {
            let share = table.shares.entry(owner).or_default();
            if share.handles >= MAX_HANDLES_PER_CONTAINER {
                return Err(Refused::Container);
            }
            share.handles += 1;
        }
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        table.handles.insert(
            fh,
            Handle {
                source,
                kept: Kept::Nothing,
                owner,
            },
        );
        Ok(fh)
    }

    /// What a read of handle `fh` at `offset` starts from. A read at offset 0 always renders afresh
    /// (tools like top rewind and re-read). `None` for an unknown handle.
    pub fn lookup(&self, fh: u64, offset: u64) -> Option<Lookup> {
        let table = self.open.lock();
        let handle = table.handles.get(&fh)?;
        Some(match &handle.kept {
            Kept::Buffer(buffer) if offset != 0 => Lookup::Rendered(Arc::clone(buffer)),
            Kept::Ended(len) if offset != 0 && offset >= *len as u64 => Lookup::Ended,
            _ => Lookup::Render(handle.source.clone()),
        })
    }

    /// Records that handle `fh` is being served `served` up to byte `end`, and returns the bytes to
    /// reply with. Call it before replying: once the reply is out, the reader's next piece may already
    /// be asked for, and it must find this rendering. At the end only the length is kept (the common
    /// whole-file read never keeps a buffer); before it, the buffer for the next piece, shared with an
    /// identical rendering of the same source, unless over [`BUFFER_BUDGET`].
    pub fn record(&self, fh: u64, served: Served, end: usize) -> Served {
        let (kept, served) = match served {
            Served::Kept(buffer) if end >= buffer.len() => {
                (Kept::Ended(buffer.len()), Served::Kept(buffer))
            }
            Served::Kept(buffer) => (Kept::Buffer(Arc::clone(&buffer)), Served::Kept(buffer)),
            Served::Fresh(source, bytes) if end >= bytes.len() => {
                (Kept::Ended(bytes.len()), Served::Fresh(source, bytes))
            }
            Served::Fresh(source, bytes) => {
                let buffer = self.buffer(&source, bytes);
                (Kept::Buffer(Arc::clone(&buffer)), Served::Kept(buffer))
            }
        };
        let over_budget = self.buffered_bytes() > BUFFER_BUDGET;
        let mut table = self.open.lock();
        let Table { handles, shares } = &mut *table;
        let Some(handle) = handles.get_mut(&fh) else {
            return served;
        };
        let share = handle.owner.and_then(|owner| shares.get_mut(&owner));
        // What the container holds besides this handle.
        let others = share
            .as_ref()
            .map(|s| s.kept_bytes.saturating_sub(handle.kept.bytes()));
        let kept = match kept {
            Kept::Buffer(buffer)
                if over_budget
                    && !matches!(&handle.kept, Kept::Buffer(b) if Arc::ptr_eq(b, &buffer))
                    || others.is_some_and(|o| o + buffer.len() > KEPT_BYTES_PER_CONTAINER) =>
            {
                Kept::Nothing
            }
            kept => kept,
        };
        if let (Some(share), Some(others)) = (share, others) {
            share.kept_bytes = others + kept.bytes();
        }
        let previous = std::mem::replace(&mut handle.kept, kept);
        drop(table);
        // A buffer let go is freed outside the lock.
        drop(previous);
        served
    }

    /// Wraps freshly rendered bytes, sharing an identical earlier rendering of the same source.
    fn buffer(&self, source: &HandleSource, bytes: Vec<u8>) -> Arc<Buffer> {
        let mut hasher = DefaultHasher::new();
        source.hash(&mut hasher);
        bytes.hash(&mut hasher);
        let key = hasher.finish();
        if let Some(shared) = self.interned.get(&key).and_then(|weak| weak.upgrade()) {
            if *shared.bytes == *bytes {
                return shared;
            }
        }
        self.buffered.fetch_add(bytes.len(), Ordering::Relaxed);
        let buffer = Arc::new(Buffer {
            bytes: bytes.into_boxed_slice(),
            counter: Arc::clone(&self.buffered),
        });
        self.interned.insert(key, Arc::downgrade(&buffer));
        buffer
    }

    /// Forgets the handle and its buffer. A table that grew for a burst of handles shrinks once most
    /// are closed (a hash map keeps its capacity otherwise).
    pub fn release(&self, fh: u64) {
        let mut table = self.open.lock();
        let handle = table.handles.remove(&fh);
        if let Some(owner) = handle.as_ref().and_then(|h| h.owner) {
            if let Some(share) = table.shares.get_mut(&owner) {
                share.handles = share.handles.saturating_sub(1);
                let bytes = handle.as_ref().map_or(0, |h| h.kept.bytes());
                share.kept_bytes = share.kept_bytes.saturating_sub(bytes);
                if share.handles == 0 {
                    table.shares.remove(&owner);
                }
            }
        }
        let capacity = table.handles.capacity();
        let shrink = capacity > 4096 && table.handles.len() * 8 < capacity;
        if shrink {
            let keep = table.handles.len() * 2;
            table.handles.shrink_to(keep);
            table.shares.shrink_to(keep);
        }
        drop(table);
        drop(handle);
        if shrink {
            // glibc keeps freed pages in its arenas; hand them back after a burst went away.
            // SAFETY: malloc_trim only releases free memory of the allocator.
            unsafe { libc::malloc_trim(0) };
        }
    }

    /// Handles open now.
    pub fn len(&self) -> usize {
        self.open.lock().handles.len()
    }

    /// Bytes of all rendered buffers alive now (each shared buffer once).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: HandleSource = HandleSource::Virtual(Content::Meminfo);

    fn read(handles: &Handles, fh: u64, offset: u64, size: usize, render: &[u8]) -> Vec<u8> {
        let served = match handles.lookup(fh, offset).unwrap() {
            Lookup::Rendered(buffer) => Served::Kept(buffer),
            Lookup::Ended => return Vec::new(),
            Lookup::Render(source) => Served::Fresh(source, render.to_vec()),
        };
        let start = (offset as usize).min(served.len());
        let end = (start + size).min(served.len());
        let served = handles.record(fh, served, end);
        served[start..end].to_vec()
    }

    #[test]
    fn a_handle_read_in_pieces_sees_one_rendering_and_lets_it_go_at_the_end() {
        let handles = Handles::default();
        let fh = handles.open(MEMINFO, None).unwrap();
        assert_eq!(read(&handles, fh, 0, 4, b"first version"), b"firs");
        assert_eq!(handles.buffered_bytes(), 13);
        assert_eq!(read(&handles, fh, 4, 100, b"second version"), b"t version");
        assert_eq!(handles.buffered_bytes(), 0, "released at the end");
        assert_eq!(read(&handles, fh, 13, 100, b"third"), b"");
        assert_eq!(
            read(&handles, fh, 0, 100, b"fourth"),
            b"fourth",
            "a rewind renders"
        );
        handles.release(fh);
        assert_eq!(handles.len(), 0);
    }

    #[test]
    fn identical_renderings_share_one_buffer() {
        let handles = Handles::default();
        let content = vec![b'x'; 1000];
        for _ in 0..100 {
            let fh = handles.open(MEMINFO, None).unwrap();
            read(&handles, fh, 0, 1, &content);
        }
        assert_eq!(handles.buffered_bytes(), 1000);
        let other = handles
            .open(HandleSource::Virtual(Content::Stat), None)
            .unwrap();
        read(&handles, other, 0, 1, &content);
        assert_eq!(
            handles.buffered_bytes(),
            2000,
            "another file is another buffer"
        );
    }

    const ONE: Option<CgroupId> = Some(CgroupId { dev: 1, ino: 1 });
    const OTHER: Option<CgroupId> = Some(CgroupId { dev: 1, ino: 2 });

    #[test]
    fn a_container_at_its_share_of_handles_is_refused_and_others_are_not() {
        let handles = Handles::default();
        let fhs: Vec<u64> = (0..MAX_HANDLES_PER_CONTAINER)
            .map(|_| handles.open(MEMINFO, ONE).unwrap())
            .collect();
        assert_eq!(handles.open(MEMINFO, ONE), Err(Refused::Container));
        assert!(handles.open(MEMINFO, OTHER).is_ok());
        assert!(handles.open(MEMINFO, None).is_ok(), "the host has no share");
        handles.release(fhs[0]);
        assert!(
            handles.open(MEMINFO, ONE).is_ok(),
            "a closed handle frees its place"
        );
    }

    #[test]
    fn a_container_past_its_kept_bytes_renders_its_own_pieces_afresh_only() {
        let handles = Handles::default();
        let piece = KEPT_BYTES_PER_CONTAINER / 4 + 1;
        let mut hog = Vec::new();
        for n in 0..4u8 {
            let fh = handles.open(MEMINFO, ONE).unwrap();
            read(&handles, fh, 0, 1, &vec![n; piece]);
            hog.push(fh);
        }
        assert!(matches!(
            handles.lookup(hog[2], 1),
            Some(Lookup::Rendered(_))
        ));
        assert!(
            matches!(handles.lookup(hog[3], 1), Some(Lookup::Render(_))),
            "the fourth piece is past the container's share"
        );
        let other = handles.open(MEMINFO, OTHER).unwrap();
        read(&handles, other, 0, 1, &vec![9; piece]);
        assert!(
            matches!(handles.lookup(other, 1), Some(Lookup::Rendered(_))),
            "another container keeps its own"
        );
        for fh in hog {
            handles.release(fh);
        }
        let again = handles.open(MEMINFO, ONE).unwrap();
        read(&handles, again, 0, 1, &vec![7; piece]);
        assert!(matches!(
            handles.lookup(again, 1),
            Some(Lookup::Rendered(_))
        ));
    }

    #[test]
    fn past_the_budget_pieces_are_rendered_afresh() {
        let handles = Handles::default();
        let big = |n: u8| vec![n; BUFFER_BUDGET / 2 + 1];
        let first = handles.open(MEMINFO, None).unwrap();
        let second = handles.open(MEMINFO, None).unwrap();
        let third = handles.open(MEMINFO, None).unwrap();
        read(&handles, first, 0, 1, &big(1));
        read(&handles, second, 0, 1, &big(2));
        read(&handles, third, 0, 1, &big(3));
        assert!(handles.buffered_bytes() <= BUFFER_BUDGET + BUFFER_BUDGET / 2 + 1);
        assert!(matches!(handles.lookup(third, 1), Some(Lookup::Render(_))));
        assert!(matches!(
            handles.lookup(first, 1),
            Some(Lookup::Rendered(_))
        ));
    }
}
