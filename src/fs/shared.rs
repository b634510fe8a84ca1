//! The shared mount (`/var/lib/lxcfs`, the LXCFS layout): one inode per file for every reader, each
//! read rendered for its reader and served with direct I/O through an open handle. Container runtimes
//! bind its paths (`docker run -v /var/lib/lxcfs/proc/meminfo:/proc/meminfo`); what a bind shows
//! depends on who reads, never on who made the bind.
//!
//! Why it is not served from the page cache like the views mount ([`super::views`]): page-cache
//! content must be a function of the inode, so a shared path would have to answer each looking-up
//! container with its own inode. The kernel then drops the name's dentry each time the answer
//! changes, and a bind whose source path lost a dentry between its walk and its end fails with
//! ENOENT (measured on 6.18: 1 bind in 10 when two cgroups bind in a loop, 1 in 2 when the source
//! is opened first; runc's check of the bind's path also sees `(deleted)`): concurrent container
//! starts on a node would fail. Here nothing a walk uses ever changes.

use std::time::{Duration, Instant};

use fuser::{Errno, FileHandle, FopenFlags, OpenAccMode, OpenFlags, ReplyOpen};

use super::handles::{HandleSource, Lookup, Refused, Served};
use super::{HostEntry, MAX_HANDLES_PER_CONTAINER, MAX_OPEN_HANDLES, Node, NodeTable, VprocFs};
use crate::metrics::{Metrics, Operation, Target};
use crate::render::{Sight, Use};
use crate::view::topology::{self, render_topology_file};

/// Attributes of the shared mount's virtual files: their size is that of the content for the reader
/// who asked, kept 100 ms (LXCFS keeps 1 s). What a read returns never depends on it; only tools that
/// trust st_size (`wc -c`, `tail`) could see another reader's size within that window. Zero would cost
/// two GETATTRs per open+fstat+read+close.
pub(super) const SHARED_FILE_ATTR_TTL: Duration = Duration::from_millis(100);
/// How often a refused open is logged at most.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(60);

impl VprocFs {
    /// The size of file `node` for reader `pid`: the length of its content for this reader.
    ///
    /// Real /proc says 0, and read(2) does not care (direct I/O ignores i_size), but since Linux 6.5
    /// splice/sendfile reads FUSE files through the page cache even with direct I/O, where i_size 0
    /// means EOF: busybox `cat` and Python's shutil.copy would see empty files. With a size, their
    /// page-cache read reaches `read`, which refuses it, and they fall back to read(2). LXCFS reports
    /// sizes the same way. A stat renders without leaving state (see [`Use::Size`]).
    pub(super) fn shared_size(&self, node: &Node, pid: u32) -> Result<usize, Errno> {
        match node {
            Node::File(file) => {
                let sight = self.renderer.sight(pid);
                self.renderer
                    .render_in(file.content, &sight, pid, Use::Size)
                    .map(|bytes| bytes.len())
                    .map_err(|e| {
                        log::error!("cannot read the host's file: {e}");
                        Errno::EIO
                    })
            }
            Node::BlockStat(index) => Ok(self
                .produce(&HandleSource::BlockStat(self.block_name(*index)?), pid)?
                .len()),
            _ => Err(Errno::EISDIR),
        }
    }

    /// What a host entry shows `sight`: the host's file, or below a `cpuK` slot, its topology and cache
    /// files in the container's numbering.
    pub(super) fn host_source(
        &self,
        entry: HostEntry,
        sight: &Sight,
    ) -> Result<HandleSource, Errno> {
        match entry.slot {
            Some(slot) if topology::is_rewritten(&entry.relative) => {
                let visible = self.renderer.visible_cpus_in(sight);
                let path = entry
                    .host_path(&self.host_cpu_dir(), &visible)
                    .ok_or(Errno::ENOENT)?;
                Ok(HandleSource::CpuTopology {
                    path,
                    relative: entry.relative,
                    slot,
                    visible,
                })
            }
            _ => self.host_path(&entry, sight).map(HandleSource::Host),
        }
    }

    /// Renders or reads what handle `fh` shows, for reader `pid`.
    pub(super) fn produce(&self, source: &HandleSource, pid: u32) -> Result<Vec<u8>, Errno> {
        let failed = |e: crate::error::Error| {
            log::error!("cannot read the host's file: {e}");
            Errno::EIO
        };
        match source {
            HandleSource::Virtual(content) => self.renderer.render(*content, pid).map_err(failed),
            HandleSource::Host(path) => std::fs::read(path).map_err(Errno::from),
            HandleSource::BlockStat(name) => {
                self.renderer.render_block_stat(name, pid).map_err(failed)
            }
            HandleSource::CpuTopology {
                path,
                relative,
                slot,
                visible,
            } => {
                let host = std::fs::read_to_string(path).map_err(Errno::from)?;
                Ok(render_topology_file(relative, &host, *slot, visible).into_bytes())
            }
        }
    }

    /// OPEN on the shared mount: a handle, read with direct I/O.
    pub(super) fn open_shared(&self, pid: u32, ino: u64, flags: OpenFlags, reply: ReplyOpen) {
        let metrics = self.renderer.metrics();
        metrics.request(Operation::Open, NodeTable::target(ino));
        let reply = CountedOpen { reply, metrics };
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let source = match self.nodes.node(ino) {
            Some(Node::File(file)) => Ok(HandleSource::Virtual(file.content)),
            Some(Node::Host(entry)) => self.host_source(entry, &self.renderer.sight(pid)),
            Some(Node::BlockStat(index)) => self.block_name(index).map(HandleSource::BlockStat),
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        };
        let opened = source.map(|source| {
            let owner = self.renderer.container_key(pid);
            self.handles.open(source, owner)
        });
        match opened {
            // Direct I/O: content differs per reader and per read, so the page cache must not keep it.
            Ok(Ok(fh)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Ok(Err(refused)) => {
                // Readers hold that many, not the daemon's fault: counted, logged once a minute.
                self.renderer.health().record_other();
                let (errno, why) = match refused {
                    Refused::Container => (
                        Errno::EMFILE,
                        format!("a container holds {MAX_HANDLES_PER_CONTAINER} open files"),
                    ),
                    Refused::Table => (Errno::ENFILE, format!("{MAX_OPEN_HANDLES} files are open")),
                };
                let mut last = self.refusals.lock();
                if last.is_none_or(|at| at.elapsed() > REFUSAL_LOG_PERIOD) {
                    *last = Some(Instant::now());
                    drop(last);
                    log::warn!("refusing opens ({errno:?}): {why} (logged once a minute)");
                }
                reply.error(errno)
            }
            Err(e) => reply.error(e),
        }
    }

    /// READ on the shared mount, through the handle.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read_shared(
        &self,
        pid: u32,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        page_cache: bool,
        reply: fuser::ReplyData,
    ) {
        let started = Instant::now();
        let target = NodeTable::target(ino);
        let metrics = self.renderer.metrics();
        metrics.request(Operation::Read, target);
        let mut reply = CountedRead {
            reply,
            metrics,
            target,
            started,
            rendered: false,
        };
        // Reads from user space (direct I/O) carry the reader's lock owner; page-cache reads do not.
        // Since Linux 6.5 splice/sendfile reads FUSE files through the page cache even with direct I/O,
        // and that cache is shared by every reader of the inode: filled with one container's content it
        // would be served to the next. Failing those reads keeps the cache empty; sendfile users
        // (busybox cat, Python's shutil) then fall back to read(2) and get their own content.
        if page_cache {
            reply.error(Errno::EIO);
            return;
        }
        // A read at offset 0 renders afresh (tools like top rewind and re-read); reads at other offsets
        // slice what the handle rendered last, so a reader reading in chunks sees one consistent file.
        let served = match self.handles.lookup(fh, offset) {
            None => return reply.error(Errno::EBADF),
            Some(Lookup::Ended) => return reply.data(&[]),
            Some(Lookup::Rendered(buffer)) => Served::Kept(buffer),
            Some(Lookup::Render(source)) => match self.produce(&source, pid) {
                Ok(bytes) => {
                    reply.rendered = true;
                    Served::Fresh(source, bytes)
                }
                Err(e) => return reply.error(e),
            },
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(served.len());
        let end = start.saturating_add(size as usize).min(served.len());
        let served = self.handles.record(fh, served, end);
        reply.data(&served[start..end]);
    }
}

/// A read's reply that counts what it answers: the latency of a read that rendered (not of the end
/// or a slice of what was rendered before, which would pull the histogram towards nothing), or an
/// error by its errno.
struct CountedRead<'m> {
    reply: fuser::ReplyData,
    metrics: &'m Metrics,
    target: Target,
    started: Instant,
    rendered: bool,
}

impl CountedRead<'_> {
    fn data(self, data: &[u8]) {
        self.reply.data(data);
        if self.rendered {
            self.metrics.read_took(self.target, self.started.elapsed());
        }
    }

    fn error(self, errno: Errno) {
        self.metrics.error(Operation::Read, errno.code());
        self.reply.error(errno);
    }
}

/// An open's reply that counts an error by its errno.
struct CountedOpen<'m> {
    reply: ReplyOpen,
    metrics: &'m Metrics,
}

impl CountedOpen<'_> {
    fn opened(self, fh: FileHandle, flags: FopenFlags) {
        self.reply.opened(fh, flags);
    }

    fn error(self, errno: Errno) {
        self.metrics.error(Operation::Open, errno.code());
        self.reply.error(errno);
    }
}
