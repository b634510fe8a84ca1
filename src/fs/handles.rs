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

    /// The handle's last rendered bytes, `Ok(None)` when it must render (nothing yet, or `fresh`
    /// asked for), `Err` for an unknown handle.
    pub fn buffer(&self, fh: u64, fresh: bool) -> Result<Option<Arc<[u8]>>, ()> {
        let open = self.open.lock();
        let handle = open.get(&fh).ok_or(())?;
        Ok(if fresh { None } else { handle.buffer.clone() })
    }

    /// What the handle shows.
    pub fn source(&self, fh: u64) -> Option<HandleSource> {
        self.open.lock().get(&fh).map(|h| h.source.clone())
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
