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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fuser::{Errno, FileAttr, FileHandle, FileType, FopenFlags, OpenAccMode, OpenFlags, ReplyOpen};

use super::handles::{HandleSource, Lookup, Refused, Served};
use super::{
    BY_PID_INO, FIXED_TTL, HOST_TTL, HostEntry, MAX_HANDLES_PER_CONTAINER, MAX_OPEN_HANDLES, Node,
    NodeTable, PER_READER_TTL, VprocFs, host_attr,
};
use crate::metrics::{Metrics, Operation, Target};
use crate::render::{Sight, Use};
use crate::view::topology::{self, render_topology_file};

/// Attributes of the shared mount's virtual files: their size is that of the content for the reader
/// who asked, kept 100 ms (LXCFS keeps 1 s). What a read returns never depends on it; only tools that
/// trust st_size (`wc -c`, `tail`) could see another reader's size within that window. Zero would cost
/// two GETATTRs per open+fstat+read+close.
const SHARED_FILE_ATTR_TTL: Duration = Duration::from_millis(100);
/// How often a refused open is logged at most.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(60);

impl VprocFs {
    /// Attributes of inode `ino` of the shared mount for reader `pid`.
    ///
    /// A virtual file's size is the length of its content for this reader. Real /proc says 0, and
    /// read(2) does not care (direct I/O ignores i_size), but since Linux 6.5 splice/sendfile reads FUSE
    /// files through the page cache even with direct I/O, where i_size 0 means EOF: busybox `cat` and
    /// Python's shutil.copy would see empty files. With a size, their page-cache read reaches `read`,
    /// which refuses it, and they fall back to read(2). LXCFS reports sizes the same way.
    pub(super) fn shared_attr(&self, ino: u64, pid: u32) -> Result<(FileAttr, Duration), Errno> {
        let failed = |e: crate::error::Error| {
            log::error!("cannot read the host's file: {e}");
            Errno::EIO
        };
        if ino == BY_PID_INO {
            // Where the views mount is stacked (what is seen where it is not).
            return Ok((self.fixed_attr(ino, FileType::Directory), FIXED_TTL));
        }
        match self.nodes.node(ino).ok_or(Errno::ENOENT)? {
            Node::Dir(_) => Ok((self.fixed_attr(ino, FileType::Directory), FIXED_TTL)),
            Node::File(file) => {
                let mut attr = self.fixed_attr(ino, FileType::RegularFile);
                let sight = self.renderer.sight(pid);
                attr.size = self
                    .renderer
                    .render_in(file.content, &sight, pid, Use::Size)
                    .map_err(failed)?
                    .len() as u64;
                Ok((attr, SHARED_FILE_ATTR_TTL))
            }
            Node::CpuSlot(k) => {
                if (k as usize) < self.renderer.visible_cpus(pid).len() {
                    Ok((self.fixed_attr(ino, FileType::Directory), PER_READER_TTL))
                } else {
                    Err(Errno::ENOENT)
                }
            }
            Node::BlockDevice(index) => {
                self.block_name(index)?;
                Ok((self.fixed_attr(ino, FileType::Directory), HOST_TTL))
            }
            Node::BlockStat(index) => {
                let name = self.block_name(index)?;
                let mut attr = self.fixed_attr(ino, FileType::RegularFile);
                attr.perm = 0o444;
                attr.nlink = 1;
                attr.size = self.produce(&HandleSource::BlockStat(name), pid)?.len() as u64;
                Ok((attr, SHARED_FILE_ATTR_TTL))
            }
            Node::Host(entry) => {
                let path = self.host_path(&entry, &self.renderer.sight(pid))?;
                let meta = std::fs::symlink_metadata(&path).map_err(Errno::from)?;
                let ttl = if entry.per_reader() {
                    PER_READER_TTL
                } else {
                    HOST_TTL
                };
                Ok((host_attr(ino, &meta), ttl))
            }
        }
    }

    /// How long the kernel may keep the name -> inode mapping of `ino` in the shared mount.
    pub(super) fn shared_entry_ttl(&self, ino: u64) -> Duration {
        match self.nodes.node(ino) {
            Some(Node::Dir(_) | Node::File(_)) => FIXED_TTL,
            Some(Node::Host(entry)) if !entry.per_reader() => HOST_TTL,
            Some(Node::BlockDevice(_) | Node::BlockStat(_)) => HOST_TTL,
            _ => PER_READER_TTL,
        }
    }

    /// What a host entry shows reader `pid`: the host's file, or below a `cpuK` slot, its topology and
    /// cache files in the container's numbering.
    fn host_source(&self, entry: HostEntry, pid: u32) -> Result<HandleSource, Errno> {
        match entry.slot {
            Some(slot) if topology::is_rewritten(&entry.relative) => {
                let visible = self.renderer.visible_cpus(pid);
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
            _ => self
                .host_path(&entry, &self.renderer.sight(pid))
                .map(HandleSource::Host),
        }
    }

    /// Renders or reads what handle `fh` shows, for reader `pid`.
    fn produce(&self, source: &HandleSource, pid: u32) -> Result<Vec<u8>, Errno> {
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
            Some(Node::Host(entry)) => self.host_source(entry, pid),
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

    /// The host path of `entry` as `sight` sees it.
    pub(super) fn host_path(&self, entry: &HostEntry, sight: &Sight) -> Result<PathBuf, Errno> {
        let visible = if entry.per_reader() {
            self.renderer.visible_cpus_in(sight)
        } else {
            Vec::new()
        };
        entry
            .host_path(&self.host_cpu_dir(), &visible)
            .ok_or(Errno::ENOENT)
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
