//! Open file handles: what each shows and the bytes it rendered last.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::files::Content;

/// What an open handle reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleSource {
    Virtual(Content),
    /// A host sysfs file passed through, resolved for the reader at open.
    Host(PathBuf),
}

/// The outcome of [`Handles::lookup`].
#[derive(Debug)]
pub enum Lookup {
    Rendered(Arc<[u8]>),
    Render(HandleSource),
}

#[derive(Debug)]
struct Handle {
    source: HandleSource,
    buffer: Option<Arc<[u8]>>,
}

/// The table of open handles.
#[derive(Debug, Default)]
pub struct Handles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Handle>>,
}

impl Handles {
    /// Registers a new handle.
    pub fn open(&self, source: HandleSource) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.lock().insert(
            fh,
            Handle {
                source,
                buffer: None,
            },
        );
        fh
    }

    /// What a read of handle `fh` starts from: its last rendered bytes, or, when it has none yet or a
    /// `fresh` rendering is asked for, what to render. `None` for an unknown handle.
    pub fn lookup(&self, fh: u64, fresh: bool) -> Option<Lookup> {
        let open = self.open.lock();
        let handle = open.get(&fh)?;
        Some(match (&handle.buffer, fresh) {
            (Some(buffer), false) => Lookup::Rendered(Arc::clone(buffer)),
            _ => Lookup::Render(handle.source.clone()),
        })
    }

    /// Keeps freshly rendered bytes for later reads at other offsets, and returns them.
    pub fn store(&self, fh: u64, bytes: Vec<u8>) -> Arc<[u8]> {
        let buffer: Arc<[u8]> = bytes.into();
        if let Some(handle) = self.open.lock().get_mut(&fh) {
            handle.buffer = Some(Arc::clone(&buffer));
        }
        buffer
    }

    /// Forgets the handle and its buffer.
    pub fn release(&self, fh: u64) {
        self.open.lock().remove(&fh);
    }
}
