//! Open file handles: what each shows and, while it is read in pieces, the bytes it rendered.
//!
//! Budget: a handle costs ~100 bytes in the table (at most [`MAX_OPEN_HANDLES`]); its rendered bytes are
//! kept only between its first read and the read that reaches the end (then only the length stays), and
//! identical renderings (the same container's file within one tick) share one buffer. All buffers
//! together stay under [`BUFFER_BUDGET`]: past it, a handle read in pieces renders each piece afresh.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::files::Content;
use crate::lru::{Lru, NO_EXPIRY};

/// Open handles at most (the kernel's `file-max` for this filesystem): ~100 MiB of table at the limit.
pub const MAX_OPEN_HANDLES: usize = 1 << 20;
/// Rendered bytes kept for handles read in pieces, at most.
pub const BUFFER_BUDGET: usize = 16 << 20;
/// Distinct renderings remembered for sharing.
const INTERNED: usize = 4096;

/// What an open handle reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HandleSource {
    Virtual(Content),
    /// A host sysfs file passed through, resolved for the reader at open.
    Host(PathBuf),
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
    open: Mutex<HashMap<u64, Handle>>,
    interned: Lru<u64, Weak<Buffer>>,
    buffered: Arc<AtomicUsize>,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            interned: Lru::new(INTERNED, NO_EXPIRY),
            buffered: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Handles {
    /// Registers a new handle; `None` when [`MAX_OPEN_HANDLES`] are open.
    pub fn open(&self, source: HandleSource) -> Option<u64> {
        let mut open = self.open.lock();
        if open.len() >= MAX_OPEN_HANDLES {
            return None;
        }
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        open.insert(
            fh,
            Handle {
                source,
                kept: Kept::Nothing,
            },
        );
        Some(fh)
    }

    /// What a read of handle `fh` at `offset` starts from. A read at offset 0 always renders afresh
    /// (tools like top rewind and re-read). `None` for an unknown handle.
    pub fn lookup(&self, fh: u64, offset: u64) -> Option<Lookup> {
        let open = self.open.lock();
        let handle = open.get(&fh)?;
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
                let kept = if self.buffered_bytes() <= BUFFER_BUDGET {
                    Kept::Buffer(Arc::clone(&buffer))
                } else {
                    Kept::Nothing
                };
                (kept, Served::Kept(buffer))
            }
        };
        let previous = self
            .open
            .lock()
            .get_mut(&fh)
            .map(|handle| std::mem::replace(&mut handle.kept, kept));
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
        let mut open = self.open.lock();
        let handle = open.remove(&fh);
        let shrink = open.capacity() > 4096 && open.len() * 8 < open.capacity();
        if shrink {
            let keep = open.len() * 2;
            open.shrink_to(keep);
        }
        drop(open);
        drop(handle);
        if shrink {
            // glibc keeps freed pages in its arenas; hand them back after a burst went away.
            // SAFETY: malloc_trim only releases free memory of the allocator.
            unsafe { libc::malloc_trim(0) };
        }
    }

    /// Handles open now.
    pub fn len(&self) -> usize {
        self.open.lock().len()
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
        let fh = handles.open(MEMINFO).unwrap();
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
            let fh = handles.open(MEMINFO).unwrap();
            read(&handles, fh, 0, 1, &content);
        }
        assert_eq!(handles.buffered_bytes(), 1000);
        let other = handles.open(HandleSource::Virtual(Content::Stat)).unwrap();
        read(&handles, other, 0, 1, &content);
        assert_eq!(
            handles.buffered_bytes(),
            2000,
            "another file is another buffer"
        );
    }

    #[test]
    fn past_the_budget_pieces_are_rendered_afresh() {
        let handles = Handles::default();
        let big = |n: u8| vec![n; BUFFER_BUDGET / 2 + 1];
        let first = handles.open(MEMINFO).unwrap();
        let second = handles.open(MEMINFO).unwrap();
        let third = handles.open(MEMINFO).unwrap();
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
