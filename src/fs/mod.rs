//! The FUSE adapter (fuser 0.18): translates requests into calls of [`Renderer`] and the node table, and
//! results back into replies. It never panics on a request and never fails a read of a virtual file
//! while the host's file is readable (unresolvable readers get the host's file).

mod handles;
mod nodes;

use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyXattr, Request,
};

use crate::files::{self, BLOCK_DIR, CPU_DIR, FILES, ROOT_INO};
use crate::health::{HEALTH_XATTR, Report, XATTR_SIZE_MAX};
use crate::metrics::{self, Metrics, Operation, Target};
use crate::render::Renderer;
use crate::view::topology::{self, render_topology_file};
pub use handles::{
    BUFFER_BUDGET, KEPT_BYTES_PER_CONTAINER, MAX_HANDLES_PER_CONTAINER, MAX_OPEN_HANDLES,
};
use handles::{HandleSource, Handles, Lookup, Refused, Served};
pub use nodes::{HostEntry, Node, NodeTable, cpu_slot_number};

/// Names of fixed nodes never change: let the kernel cache them for a day (no LOOKUP per open).
const FIXED_TTL: Duration = Duration::from_secs(86400);
/// Attributes of virtual files: their size is that of the content for the reader who asked (see `attr`),
/// kept 100 ms (LXCFS keeps 1 s). What a read returns never depends on it; only tools that trust st_size
/// (`wc -c`, `tail`) could see another reader's size within that window. Zero would cost two GETATTRs
/// per open+fstat+read+close (3.3x LXCFS instead of 5.5x with one reader).
const VIRTUAL_FILE_ATTR_TTL: Duration = Duration::from_millis(100);
/// `cpuK` and what lies below it differ per reader, and the dentry cache is shared by all readers.
const PER_READER_TTL: Duration = Duration::ZERO;
/// How often a refused open is logged at most.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(60);
/// Host sysfs entries passed through unchanged; they may appear and vanish (CPU hotplug).
const HOST_TTL: Duration = Duration::from_secs(1);

/// The vproc filesystem.
#[derive(Debug)]
pub struct VprocFs {
    renderer: Arc<Renderer>,
    nodes: NodeTable,
    handles: Arc<Handles>,
    /// When a refused open was last logged.
    refusals: parking_lot::Mutex<Option<Instant>>,
    /// Timestamps of the fixed nodes: when the daemon started.
    started: SystemTime,
}

impl VprocFs {
    /// A filesystem that renders through `renderer`.
    pub fn new(renderer: Arc<Renderer>) -> Self {
        VprocFs {
            renderer,
            nodes: NodeTable::default(),
            handles: Arc::new(Handles::default()),
            refusals: parking_lot::Mutex::new(None),
            started: SystemTime::now(),
        }
    }

    /// What the open files hold, for the metrics.
    pub fn open_files(&self) -> OpenFiles {
        OpenFiles(Arc::clone(&self.handles))
    }

    /// Counts a request on `target` and, when it failed, its errno; passes the result on.
    fn counted<T>(
        &self,
        operation: Operation,
        target: Target,
        result: Result<T, Errno>,
    ) -> Result<T, Errno> {
        let metrics = self.renderer.metrics();
        metrics.request(operation, target);
        if let Err(errno) = &result {
            metrics.error(operation, errno.code());
        }
        result
    }

    /// The daemon's health, with what this filesystem holds.
    pub fn health_report(&self) -> Report {
        self.renderer.health().report(
            self.renderer.registry().occupancy(),
            self.handles.len(),
            self.handles.buffered_bytes(),
        )
    }

    fn host_cpu_dir(&self) -> PathBuf {
        self.renderer.host().cpu_dir()
    }

    fn fixed_attr(&self, ino: u64, kind: FileType) -> FileAttr {
        let (perm, nlink) = match (kind, files::file_by_ino(ino)) {
            (_, Some(file)) => (file.mode, 1),
            _ => (files::DIR_MODE, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            // Like /proc: content is rendered per read, so no size is promised (direct I/O reads it all).
            size: 0,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Attributes of an inode for the reader `pid`, with how long the kernel may keep them.
    ///
    /// A virtual file's size is the length of its content for this reader. Real /proc says 0, and
    /// read(2) does not care (direct I/O ignores i_size), but since Linux 6.5 splice/sendfile reads FUSE
    /// files through the page cache even with direct I/O (fixed upstream by "fuse: use
    /// copy_splice_read() for FOPEN_DIRECT_IO"), where i_size 0 means EOF: busybox `cat` and Python's
    /// shutil.copy would see empty files. With a size, their page-cache read reaches `read`, which
    /// refuses it, and they fall back to read(2). LXCFS reports sizes the same way.
    fn attr(&self, ino: u64, pid: u32) -> Result<(FileAttr, Duration), Errno> {
        match self.nodes.node(ino).ok_or(Errno::ENOENT)? {
            Node::Dir(_) => Ok((self.fixed_attr(ino, FileType::Directory), FIXED_TTL)),
            Node::File(file) => {
                let mut attr = self.fixed_attr(ino, FileType::RegularFile);
                attr.size = self
                    .renderer
                    .render_for_size(file.content, pid)
                    .map_err(|e| {
                        log::error!("cannot read the host's file: {e}");
                        Errno::EIO
                    })?
                    .len() as u64;
                Ok((attr, VIRTUAL_FILE_ATTR_TTL))
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
                Ok((attr, VIRTUAL_FILE_ATTR_TTL))
            }
            Node::Host(entry) => {
                let path = self.host_path(&entry, pid)?;
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

    /// How long the kernel may keep the name -> inode mapping of `ino`.
    fn entry_ttl(&self, ino: u64) -> Duration {
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
            _ => self.host_path(&entry, pid).map(HandleSource::Host),
        }
    }

    fn host_path(&self, entry: &HostEntry, pid: u32) -> Result<PathBuf, Errno> {
        let visible = if entry.per_reader() {
            self.renderer.visible_cpus(pid)
        } else {
            Vec::new()
        };
        entry
            .host_path(&self.host_cpu_dir(), &visible)
            .ok_or(Errno::ENOENT)
    }

    /// The inode of `name` in directory `parent`, as reader `pid` sees it.
    fn lookup_ino(&self, parent: u64, name: &str, pid: u32) -> Result<u64, Errno> {
        match self.nodes.node(parent).ok_or(Errno::ENOENT)? {
            Node::Dir(dir) => {
                let child_path = if dir.path.is_empty() {
                    name.to_string()
                } else {
                    format!("{}/{name}", dir.path)
                };
                if let Some(child) = files::dir_by_path(&child_path) {
                    return Ok(child.ino);
                }
                if let Some(file) = FILES.iter().find(|f| f.path == child_path) {
                    return Ok(file.ino);
                }
                if dir.path == BLOCK_DIR {
                    if !files::is_block_name(name) {
                        return Err(Errno::ENOENT);
                    }
                    std::fs::symlink_metadata(self.host_block_dir().join(name))
                        .map_err(Errno::from)?;
                    return self.block_ino(name).ok_or(Errno::ENOENT);
                }
                if dir.path != CPU_DIR {
                    return Err(Errno::ENOENT);
                }
                if let Some(k) = cpu_slot_number(name) {
                    return Ok(NodeTable::slot_ino(k));
                }
                self.existing_host_ino(
                    HostEntry {
                        slot: None,
                        relative: PathBuf::from(name),
                    },
                    pid,
                )
            }
            Node::CpuSlot(k) => self.existing_host_ino(
                HostEntry {
                    slot: Some(k),
                    relative: PathBuf::from(name),
                },
                pid,
            ),
            Node::Host(entry) => {
                let relative = entry.relative.join(name);
                self.existing_host_ino(
                    HostEntry {
                        slot: entry.slot,
                        relative,
                    },
                    pid,
                )
            }
            Node::BlockDevice(index) if name == "stat" => Ok(NodeTable::block_stat_ino(index)),
            Node::BlockDevice(_) => Err(Errno::ENOENT),
            Node::File(_) | Node::BlockStat(_) => Err(Errno::ENOTDIR),
        }
    }

    /// The host's block device called by the `index`-th name numbered, if it is still there.
    fn block_name(&self, index: u32) -> Result<String, Errno> {
        let name = self.nodes.block_name(index).ok_or(Errno::ENOENT)?;
        std::fs::symlink_metadata(self.host_block_dir().join(&name)).map_err(Errno::from)?;
        Ok(name)
    }

    /// The inode of the host's block device `name`, numbered if new (see [`NodeTable::block_ino`]).
    fn block_ino(&self, name: &str) -> Option<u64> {
        let dir = self.host_block_dir();
        self.nodes.block_ino(name, |n| {
            // Only a device surely gone gives up its number: another error keeps it.
            !matches!(
                std::fs::symlink_metadata(dir.join(n)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound
            )
        })
    }

    fn host_block_dir(&self) -> PathBuf {
        self.renderer.host().roots().sys.join("block")
    }

    /// The inode of a host entry that exists for reader `pid`; names that do not exist get no inode,
    /// so lookups of random names cannot grow the table.
    fn existing_host_ino(&self, entry: HostEntry, pid: u32) -> Result<u64, Errno> {
        std::fs::symlink_metadata(self.host_path(&entry, pid)?).map_err(Errno::from)?;
        Ok(self.nodes.host_ino(entry))
    }

    /// The entries of directory `ino` for reader `pid`, without `.` and `..`.
    fn list(&self, ino: u64, pid: u32) -> Result<Vec<(u64, FileType, String)>, Errno> {
        let mut entries = Vec::new();
        match self.nodes.node(ino).ok_or(Errno::ENOENT)? {
            Node::Dir(dir) => {
                for child in files::DIRS
                    .iter()
                    .filter(|d| d.ino != ROOT_INO && d.parent() == dir.path)
                {
                    entries.push((child.ino, FileType::Directory, child.name().to_string()));
                }
                for file in FILES.iter().filter(|f| f.parent() == dir.path) {
                    entries.push((file.ino, FileType::RegularFile, file.name().to_string()));
                }
                if dir.path == BLOCK_DIR {
                    for (name, _) in read_host_dir(&self.host_block_dir())? {
                        if let Some(ino) = self.block_ino(&name) {
                            entries.push((ino, FileType::Directory, name));
                        }
                    }
                }
                if dir.path == CPU_DIR {
                    for k in 0..self.renderer.visible_cpus(pid).len() as u32 {
                        entries.push((
                            NodeTable::slot_ino(k),
                            FileType::Directory,
                            format!("cpu{k}"),
                        ));
                    }
                    let host_dir = self.host_cpu_dir();
                    for (name, kind) in read_host_dir(&host_dir)? {
                        if cpu_slot_number(&name).is_none() && !nodes::is_virtual_cpu_file(&name) {
                            let ino = self.nodes.host_ino(HostEntry {
                                slot: None,
                                relative: PathBuf::from(&name),
                            });
                            entries.push((ino, kind, name));
                        }
                    }
                }
            }
            Node::CpuSlot(k) => self.list_host(Some(k), PathBuf::new(), pid, &mut entries)?,
            Node::BlockDevice(index) => {
                self.block_name(index)?;
                entries.push((
                    NodeTable::block_stat_ino(index),
                    FileType::RegularFile,
                    "stat".to_string(),
                ));
            }
            Node::BlockStat(_) => return Err(Errno::ENOTDIR),
            Node::Host(entry) => self.list_host(entry.slot, entry.relative, pid, &mut entries)?,
            Node::File(_) => return Err(Errno::ENOTDIR),
        }
        Ok(entries)
    }

    /// Lists the host directory `relative` below `slot` (see [`HostEntry`]) for reader `pid`.
    fn list_host(
        &self,
        slot: Option<u32>,
        relative: PathBuf,
        pid: u32,
        entries: &mut Vec<(u64, FileType, String)>,
    ) -> Result<(), Errno> {
        let path = self.host_path(
            &HostEntry {
                slot,
                relative: relative.clone(),
            },
            pid,
        )?;
        for (name, kind) in read_host_dir(&path)? {
            let ino = self.nodes.host_ino(HostEntry {
                slot,
                relative: relative.join(&name),
            });
            entries.push((ino, kind, name));
        }
        Ok(())
    }

    /// Renders or reads what handle `fh` shows, for reader `pid`.
    fn produce(&self, source: &HandleSource, pid: u32) -> Result<Vec<u8>, Errno> {
        match source {
            HandleSource::Virtual(content) => self.renderer.render(*content, pid).map_err(|e| {
                log::error!("cannot read the host's file: {e}");
                Errno::EIO
            }),
            HandleSource::Host(path) => std::fs::read(path).map_err(Errno::from),
            HandleSource::BlockStat(name) => {
                self.renderer.render_block_stat(name, pid).map_err(|e| {
                    log::error!("cannot read the host's file: {e}");
                    Errno::EIO
                })
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
}

impl Filesystem for VprocFs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = name
            .to_str()
            .ok_or(Errno::ENOENT)
            .and_then(|name| self.lookup_ino(parent.0, name, req.pid()));
        let target = NodeTable::target(*found.as_ref().unwrap_or(&parent.0));
        let found = found.and_then(|ino| self.attr(ino, req.pid()).map(|attr| (ino, attr)));
        match self.counted(Operation::Lookup, target, found) {
            Ok((ino, (attr, attr_ttl))) => {
                reply.entry_with_ttls(&attr_ttl, &self.entry_ttl(ino), &attr, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let attr = self.attr(ino.0, req.pid());
        match self.counted(Operation::Getattr, NodeTable::target(ino.0), attr) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = match self.nodes.node(ino.0) {
            Some(Node::Host(entry)) => self
                .host_path(&entry, req.pid())
                .and_then(|p| std::fs::read_link(p).map_err(Errno::from)),
            _ => Err(Errno::EINVAL),
        };
        match self.counted(Operation::Readlink, NodeTable::target(ino.0), target) {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let metrics = self.renderer.metrics();
        metrics.request(Operation::Open, NodeTable::target(ino.0));
        let reply = CountedOpen { reply, metrics };
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let source = match self.nodes.node(ino.0) {
            Some(Node::File(file)) => Ok(HandleSource::Virtual(file.content)),
            Some(Node::Host(entry)) => self.host_source(entry, req.pid()),
            Some(Node::BlockStat(index)) => self.block_name(index).map(HandleSource::BlockStat),
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        };
        let opened = source.map(|source| {
            let owner = self.renderer.container_key(req.pid());
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

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let started = Instant::now();
        let target = NodeTable::target(ino.0);
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
        if lock_owner.is_none() {
            reply.error(Errno::EIO);
            return;
        }
        // A read at offset 0 renders afresh (tools like top rewind and re-read); reads at other offsets
        // slice what the handle rendered last, so a reader reading in chunks sees one consistent file.
        let served = match self.handles.lookup(fh.0, offset) {
            None => return reply.error(Errno::EBADF),
            Some(Lookup::Ended) => return reply.data(&[]),
            Some(Lookup::Rendered(buffer)) => Served::Kept(buffer),
            Some(Lookup::Render(source)) => match self.produce(&source, req.pid()) {
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
        let served = self.handles.record(fh.0, served, end);
        reply.data(&served[start..end]);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.renderer
            .metrics()
            .request(Operation::Release, NodeTable::target(ino.0));
        self.handles.release(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let parent = match self.nodes.node(ino.0) {
            Some(Node::Dir(dir)) => files::dir_by_path(dir.parent()).map_or(ROOT_INO, |d| d.ino),
            _ => ino.0,
        };
        let listed = self.list(ino.0, req.pid());
        let listed = match self.counted(Operation::Readdir, NodeTable::target(ino.0), listed) {
            Ok(listed) => listed,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let dots = [
            (ino.0, FileType::Directory, ".".to_string()),
            (parent, FileType::Directory, "..".to_string()),
        ];
        let all = dots.into_iter().chain(listed);
        for (i, (child, kind, name)) in all
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // Only the root carries attributes: the health report `vproc check` reads and the pages of
        // `vproc status`'s table. The kernel keeps `trusted.` names to CAP_SYS_ADMIN before asking us.
        let metrics = self.renderer.metrics();
        metrics.request(Operation::Getxattr, NodeTable::target(ino.0));
        let known = match (ino.0 == ROOT_INO, name.to_str()) {
            (true, Some(HEALTH_XATTR)) => Some(None),
            (true, Some(name)) => metrics::containers::page_start(name).ok().map(Some),
            _ => None,
        };
        // ENODATA is the answer to every other name (security.* and the like): not an error.
        let Some(page) = known else {
            reply.error(Errno::ENODATA);
            return;
        };
        if size == 0 {
            // Both attributes move between a size probe and the read that follows (counts, rates):
            // a probe is promised the most an attribute may hold, so that read fits, and costs nothing.
            reply.size(XATTR_SIZE_MAX);
            return;
        }
        let value = match page {
            None => self.health_report().to_string(),
            Some(after) => {
                serde_json::to_string(&self.renderer.containers_page(after)).unwrap_or_default()
            }
        };
        if value.len() > size as usize {
            metrics.error(Operation::Getxattr, libc::ERANGE);
            reply.error(Errno::ERANGE);
        } else {
            reply.data(value.as_bytes());
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are the modes we report; the kernel checks them itself (it only asks here for
        // access(2) and chdir). Write access is refused by the read-only mount.
        reply.ok();
    }
}

/// A read's reply that counts what it answers: the latency of a read that rendered (not of the end
/// or a slice of what was rendered before, which would pull the histogram towards nothing), or an
/// error by its errno.
struct CountedRead<'m> {
    reply: ReplyData,
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

/// What the daemon's open files hold, readable while the filesystem itself is owned by the session.
#[derive(Debug, Clone)]
pub struct OpenFiles(Arc<Handles>);

impl OpenFiles {
    /// Handles open now.
    pub fn handles(&self) -> usize {
        self.0.len()
    }

    /// Bytes of the buffers they keep.
    pub fn buffered_bytes(&self) -> usize {
        self.0.buffered_bytes()
    }
}

/// Attributes of a host entry, with our inode number.
fn host_attr(ino: u64, meta: &std::fs::Metadata) -> FileAttr {
    let kind = file_type(meta.file_type());
    let time = |secs: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    FileAttr {
        ino: INodeNo(ino),
        size: if kind == FileType::Symlink {
            meta.size()
        } else {
            0
        },
        blocks: 0,
        atime: time(meta.atime()),
        mtime: time(meta.mtime()),
        ctime: time(meta.ctime()),
        crtime: time(meta.ctime()),
        kind,
        // Read-only view: drop the write bits.
        perm: (meta.mode() & 0o7555) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(kind: std::fs::FileType) -> FileType {
    if kind.is_dir() {
        FileType::Directory
    } else if kind.is_symlink() {
        FileType::Symlink
    } else if kind.is_block_device() {
        FileType::BlockDevice
    } else if kind.is_char_device() {
        FileType::CharDevice
    } else if kind.is_fifo() {
        FileType::NamedPipe
    } else if kind.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

/// The entries of a host directory, sorted by name so listings are stable.
fn read_host_dir(path: &Path) -> Result<Vec<(String, FileType)>, Errno> {
    let mut entries: Vec<(String, FileType)> = std::fs::read_dir(path)
        .map_err(Errno::from)?
        .flatten()
        .filter_map(|e| {
            Some((
                e.file_name().into_string().ok()?,
                file_type(e.file_type().ok()?),
            ))
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}
