//! The FUSE adapter (fuser 0.18): translates requests into calls of [`Renderer`] and the node table, and
//! results back into replies. It never panics on a request and never fails a read of a virtual file
//! while the host's file is readable (unresolvable readers get the host's file).
//!
//! The daemon serves two mounts through this type ([`Mount`]): the shared LXCFS layout, rendered per
//! reader with direct I/O ([`shared`]), and stacked on its `.by-pid`, each container's own inodes served
//! from the kernel's page cache ([`views`]).

mod handles;
mod nodes;
mod shared;
pub mod views;

use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, Notifier,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr,
    Request,
};

pub use crate::files::BY_PID_DIR;
use crate::files::{self, BLOCK_DIR, CPU_DIR, FILES, ROOT_INO};
use crate::health::{HEALTH_XATTR, Report, XATTR_SIZE_MAX};
use crate::metrics::{self, Operation, Target};
use crate::render::{Renderer, Sight, Use};
use handles::Handles;
pub use handles::{
    BUFFER_BUDGET, KEPT_BYTES_PER_CONTAINER, MAX_HANDLES_PER_CONTAINER, MAX_OPEN_HANDLES,
};
pub use nodes::{HostEntry, Node, NodeTable, cpu_slot_number};
use views::{Generation as Rendering, Rendered, SHARED, View, Views, ino_in, local_of, view_of};

/// Names of fixed nodes never change: let the kernel cache them for a day (no LOOKUP per open).
const FIXED_TTL: Duration = Duration::from_secs(86400);
/// Attributes of a view's files: one tick, the age past which a generation is not described again.
const VIRTUAL_FILE_ATTR_TTL: Duration = views::TICK;
/// What differs per reader on the shared mount (`cpuK` and below), and `.by-pid/PID`: looked up on
/// every path walk.
const PER_READER_TTL: Duration = Duration::ZERO;
/// Host sysfs entries passed through unchanged; they may appear and vanish (CPU hotplug).
const HOST_TTL: Duration = Duration::from_secs(1);
/// Inode of [`BY_PID_DIR`] (in the shared tree, far above any other).
pub(super) const BY_PID_INO: u64 = 0x7fff_fff0;

/// Which of the daemon's two mounts a [`VprocFs`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mount {
    /// The LXCFS layout at the mountpoint: one inode per file, rendered per reader, direct I/O
    /// (see [`shared`]).
    Shared,
    /// `MOUNTPOINT/.by-pid`: `PID/proc/meminfo` is PID's container's own inode, served from the page
    /// cache (see [`views`]).
    Views,
}

/// The vproc filesystem.
#[derive(Debug)]
pub struct VprocFs {
    mount: Mount,
    handles: Arc<Handles>,
    /// When a refused open was last logged.
    refusals: parking_lot::Mutex<Option<std::time::Instant>>,
    renderer: Arc<Renderer>,
    nodes: NodeTable,
    views: Arc<Views>,
    /// Timestamps of the fixed nodes: when the daemon started.
    started: SystemTime,
    /// The daemon's own pid namespace (`pid:[N]`): only processes in it may name views by pid.
    own_pidns: Option<PathBuf>,
}

impl VprocFs {
    /// The daemon's two filesystems, rendering through `renderer`: the shared mount and the views
    /// mount stacked on its `.by-pid`. They share what they hold, so either reports it all.
    pub fn pair(renderer: Arc<Renderer>) -> (VprocFs, VprocFs) {
        let handles = Arc::new(Handles::default());
        let views = Arc::new(Views::default());
        let make = |mount| {
            let own_pidns =
                std::fs::read_link(renderer.host().roots().proc.join("self/ns/pid")).ok();
            VprocFs {
                mount,
                handles: Arc::clone(&handles),
                refusals: parking_lot::Mutex::new(None),
                renderer: Arc::clone(&renderer),
                nodes: NodeTable::default(),
                views: Arc::clone(&views),
                started: SystemTime::now(),
                own_pidns,
            }
        };
        (make(Mount::Shared), make(Mount::Views))
    }

    /// What the open files hold, for the metrics.
    pub fn open_files(&self) -> OpenFiles {
        OpenFiles(Arc::clone(&self.handles))
    }

    /// The views, for the invalidating thread and the metrics.
    pub fn views(&self) -> Arc<Views> {
        Arc::clone(&self.views)
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
            crate::health::Held {
                open_handles: self.handles.len(),
                buffered_bytes: self.handles.buffered_bytes(),
                views: self.views.len(),
                cached_bytes: self.views.bytes(),
            },
        )
    }

    fn host_cpu_dir(&self) -> PathBuf {
        self.renderer.host().cpu_dir()
    }

    fn fixed_attr(&self, ino: u64, kind: FileType) -> FileAttr {
        let (perm, nlink) = match (kind, files::file_by_ino(local_of(ino))) {
            (FileType::RegularFile, Some(file)) => (file.mode, 1),
            _ => (files::DIR_MODE, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
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

    /// How long the kernel may keep the attributes of `generation`: a tick, or none while it is
    /// provisional (no READ served from it yet), so the first read(2) asks again.
    fn generation_ttl(generation: &Rendering) -> Duration {
        if generation.was_read() {
            VIRTUAL_FILE_ATTR_TTL
        } else {
            Duration::ZERO
        }
    }

    /// The attributes of a file whose content is `generation`.
    fn generation_attr(&self, ino: u64, perm: u16, generation: &Rendering) -> FileAttr {
        let mut attr = self.fixed_attr(ino, FileType::RegularFile);
        attr.perm = perm;
        attr.nlink = 1;
        attr.size = generation.bytes.len() as u64;
        attr.blocks = attr.size.div_ceil(512);
        attr.mtime = generation.rendered;
        attr.ctime = generation.rendered;
        attr
    }

    /// Whom the files of `view` are for: the view's container, or in the shared tree, the reader.
    fn sight(&self, view: &View, pid: u32) -> Sight {
        if view.id() == SHARED {
            return self.renderer.sight(pid);
        }
        // Limits are read again for each burst of renderings (one per tick per file read).
        view.sight(views::QUIET, |container| self.renderer.refreshed(container))
    }

    fn view(&self, ino: u64) -> Result<Arc<View>, Errno> {
        self.views.get(view_of(ino)).ok_or(Errno::ESTALE)
    }

    /// Attributes of inode `ino` (asked by `pid`), with how long the kernel may keep them. On the
    /// views mount a file's are those of the generation its next READs serve; on the shared mount,
    /// those of what the asking reader would read (see [`VprocFs::shared_size`]).
    fn attr(&self, ino: u64, pid: u32) -> Result<(FileAttr, Duration), Errno> {
        let local = local_of(ino);
        if local == BY_PID_INO && view_of(ino) == SHARED {
            // The views mount's root on the shared mount (what is seen where it is not stacked).
            return Ok((self.fixed_attr(ino, FileType::Directory), FIXED_TTL));
        }
        let view = self.view(ino)?;
        let node = self.nodes.node(local).ok_or(Errno::ENOENT)?;
        match &node {
            Node::Dir(_) => Ok((self.fixed_attr(ino, FileType::Directory), FIXED_TTL)),
            Node::File(file) => self.file_attr(&view, ino, file.mode, &node, pid),
            Node::BlockStat(_) => self.file_attr(&view, ino, 0o444, &node, pid),
            Node::CpuSlot(k) => {
                let sight = self.sight(&view, pid);
                if (*k as usize) < self.renderer.visible_cpus_in(&sight).len() {
                    Ok((
                        self.fixed_attr(ino, FileType::Directory),
                        self.view_ttl(&view),
                    ))
                } else {
                    Err(Errno::ENOENT)
                }
            }
            Node::BlockDevice(index) => {
                self.block_name(*index)?;
                Ok((self.fixed_attr(ino, FileType::Directory), HOST_TTL))
            }
            Node::Host(entry) => {
                let sight = self.sight(&view, pid);
                let path = self.host_path(entry, &sight)?;
                let meta = std::fs::symlink_metadata(&path).map_err(Errno::from)?;
                let attr = host_attr(ino, &meta);
                if meta.is_file() && self.mount == Mount::Views {
                    // Read through the page cache like every file here: its size is its content's.
                    // A file that cannot be read (write-only, or refused) shows size 0, and its
                    // READ the error.
                    return Ok(self
                        .file_attr(&view, ino, attr.perm, &node, pid)
                        .unwrap_or((attr, VIRTUAL_FILE_ATTR_TTL)));
                }
                let ttl = if entry.per_reader() {
                    self.view_ttl(&view)
                } else {
                    HOST_TTL
                };
                Ok((attr, ttl))
            }
        }
    }

    /// Attributes of the file `node` (inode `ino`): on the views mount, of the generation described
    /// now; on the shared mount, sized for the asking reader.
    fn file_attr(
        &self,
        view: &View,
        ino: u64,
        perm: u16,
        node: &Node,
        pid: u32,
    ) -> Result<(FileAttr, Duration), Errno> {
        if self.mount == Mount::Shared {
            let mut attr = self.fixed_attr(ino, FileType::RegularFile);
            attr.perm = perm;
            attr.nlink = 1;
            attr.size = self.shared_size(node, pid)? as u64;
            return Ok((attr, shared::SHARED_FILE_ATTR_TTL));
        }
        let local = local_of(ino);
        let generation = self
            .views
            .describe(view, local, || self.render(view, local, pid))?;
        Ok((
            self.generation_attr(ino, perm, &generation),
            Self::generation_ttl(&generation),
        ))
    }

    /// How long what depends on a view's limits may be kept: per reader in the shared tree, a tick
    /// in a view's own.
    fn view_ttl(&self, view: &View) -> Duration {
        if view.id() == SHARED {
            PER_READER_TTL
        } else {
            views::TICK
        }
    }

    /// How long the kernel may keep the name -> inode mapping of `local` in `view` (the shared mount's
    /// inodes are the shared view's).
    fn entry_ttl(&self, view: &View, local: u64) -> Duration {
        match self.nodes.node(local) {
            Some(Node::Dir(_) | Node::File(_)) => FIXED_TTL,
            Some(Node::Host(entry)) if !entry.per_reader() => HOST_TTL,
            Some(Node::BlockDevice(_) | Node::BlockStat(_)) => HOST_TTL,
            _ => self.view_ttl(view),
        }
    }

    /// The host path of `entry` as `sight` sees it.
    fn host_path(&self, entry: &HostEntry, sight: &Sight) -> Result<PathBuf, Errno> {
        let visible = if entry.per_reader() {
            self.renderer.visible_cpus_in(sight)
        } else {
            Vec::new()
        };
        entry
            .host_path(&self.host_cpu_dir(), &visible)
            .ok_or(Errno::ENOENT)
    }

    /// A new generation of file `local` of `view`, rendered for reader `pid`, with its slack.
    fn render(&self, view: &View, local: u64, pid: u32) -> Result<Rendered, Errno> {
        let node = self.nodes.node(local).ok_or(Errno::ENOENT)?;
        Ok(Rendered {
            slack: slack(&node),
            bytes: self.render_node(view, node, pid)?,
        })
    }

    fn render_node(&self, view: &View, node: Node, pid: u32) -> Result<Vec<u8>, Errno> {
        let sight = self.sight(view, pid);
        let failed = |e: crate::error::Error| {
            log::error!("cannot read the host's file: {e}");
            Errno::EIO
        };
        match node {
            Node::File(file) => self
                .renderer
                .render_in(file.content, &sight, pid, Use::Describe)
                .map_err(failed),
            Node::BlockStat(index) => {
                let name = self.block_name(index)?;
                self.renderer
                    .render_block_stat_in(&name, &sight)
                    .map_err(failed)
            }
            Node::Host(entry) => self.produce(&self.host_source(entry, &sight)?, pid),
            _ => Err(Errno::EISDIR),
        }
    }

    /// The tree-wide inode of `name` in directory `parent` (tree-wide too), as `sight` sees it.
    fn lookup_local(&self, parent: u64, name: &str, sight: &Sight) -> Result<u64, Errno> {
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
                    sight,
                )
            }
            Node::CpuSlot(k) => self.existing_host_ino(
                HostEntry {
                    slot: Some(k),
                    relative: PathBuf::from(name),
                },
                sight,
            ),
            Node::Host(entry) => {
                let relative = entry.relative.join(name);
                self.existing_host_ino(
                    HostEntry {
                        slot: entry.slot,
                        relative,
                    },
                    sight,
                )
            }
            Node::BlockDevice(index) if name == "stat" => Ok(NodeTable::block_stat_ino(index)),
            Node::BlockDevice(_) => Err(Errno::ENOENT),
            Node::File(_) | Node::BlockStat(_) => Err(Errno::ENOTDIR),
        }
    }

    /// Only a process of the daemon's own pid namespace (the host's: `vproc attach`, `reattach`, an
    /// OCI hook) may name another process's view; a container may not read its neighbours' files.
    fn may_name_views(&self, pid: u32) -> Result<(), Errno> {
        let theirs = std::fs::read_link(
            self.renderer
                .host()
                .roots()
                .proc
                .join(format!("{pid}/ns/pid")),
        )
        .ok();
        match (&self.own_pidns, theirs) {
            (Some(own), Some(theirs)) if pid != 0 && *own == theirs => Ok(()),
            _ => Err(Errno::EACCES),
        }
    }

    /// Answers a LOOKUP: the child's inode (in which view), its attributes and how long each may be
    /// kept. A lookup of the returned inode is counted for its view (given back on failure).
    fn lookup_entry(
        &self,
        parent: u64,
        name: &str,
        pid: u32,
        uid: u32,
    ) -> Result<(u64, FileAttr, Duration, Duration), Errno> {
        match self.mount {
            Mount::Shared => {
                if parent == ROOT_INO && name == BY_PID_DIR {
                    // Where the views mount is stacked.
                    let ino = ino_in(SHARED, BY_PID_INO);
                    let attr = self.fixed_attr(ino, FileType::Directory);
                    return Ok((ino, attr, FIXED_TTL, FIXED_TTL));
                }
                if view_of(parent) != SHARED || parent == BY_PID_INO {
                    return Err(Errno::ENOENT);
                }
                let ino = self.lookup_local(parent, name, &self.renderer.sight(pid))?;
                let (attr, attr_ttl) = self.attr(ino, pid)?;
                Ok((ino, attr, attr_ttl, self.entry_ttl(&*self.view(ino)?, ino)))
            }
            Mount::Views if parent == ROOT_INO => self.lookup_view(name, pid, uid),
            Mount::Views => {
                // Within a view: its own inodes.
                let view = self.view(parent)?;
                let sight = self.sight(&view, pid);
                let local = self.lookup_local(local_of(parent), name, &sight)?;
                self.views.looked_up_again(&view);
                let entry_ttl = self.entry_ttl(&view, local);
                self.entry(&view, ino_in(view.id(), local), pid, entry_ttl)
            }
        }
    }

    /// A LOOKUP of `PID` in the views mount's root: the root of PID's container's files (each named
    /// process its own view, so no directory is ever reachable under two names). Only the process
    /// itself, or one of the daemon's own pid namespace (`vproc attach`, `reattach`, an OCI hook),
    /// may name it: a container may not read its neighbours' files.
    fn lookup_view(
        &self,
        name: &str,
        pid: u32,
        uid: u32,
    ) -> Result<(u64, FileAttr, Duration, Duration), Errno> {
        // One spelling per pid ("0123" and "+123" are not 123): a directory has one name.
        let named: u32 = name
            .parse()
            .ok()
            .filter(|n: &u32| n.to_string() == name && *n != 0)
            .ok_or(Errno::ENOENT)?;
        // Root only, so an unprivileged user cannot make views. Views are made by processes of the
        // daemon's own pid namespace (vproc attach, reattach, the OCI hook, vproc run's parent before
        // it lets pid 1 go); a process elsewhere may only look up its own, once made for it, so a
        // container cannot make views, however many cgroups or pid namespaces it creates.
        if uid != 0 {
            return Err(Errno::EACCES);
        }
        let makes = self.may_name_views(pid).is_ok();
        if !makes && named != pid {
            return Err(Errno::EACCES);
        }
        // Only a container's own files are bound here: a process that cannot be told now would get
        // the host's files for good. It may ask again (EAGAIN), or use the shared paths.
        let sight = match self.renderer.sight(named) {
            Sight::Unresolved(metrics::Fallback::ReaderGone) => return Err(Errno::ENOENT),
            Sight::Unresolved(_) => return Err(Errno::EAGAIN),
            sight => sight,
        };
        let view = if makes {
            self.views.looked_up(sight, named).map_err(|full| {
                self.renderer.health().record_other();
                log::warn!("refusing to name pid {named}: {full}");
                Errno::ENFILE
            })?
        } else {
            self.views.existing(sight, named).ok_or(Errno::EACCES)?
        };
        // Asked again on every walk: a pid reused by another container names another view.
        self.entry(&view, ino_in(view.id(), ROOT_INO), pid, PER_READER_TTL)
    }

    /// The answer to a LOOKUP of `ino` (one lookup of it already counted for `view`, given back when
    /// it fails).
    fn entry(
        &self,
        view: &View,
        ino: u64,
        pid: u32,
        entry_ttl: Duration,
    ) -> Result<(u64, FileAttr, Duration, Duration), Errno> {
        match self.attr(ino, pid) {
            Ok((attr, attr_ttl)) => Ok((ino, attr, attr_ttl, entry_ttl)),
            Err(e) => {
                self.views.forget(view.id(), 1);
                Err(e)
            }
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

    /// The inode of a host entry that exists for `sight`; names that do not exist get no inode,
    /// so lookups of random names cannot grow the table.
    fn existing_host_ino(&self, entry: HostEntry, sight: &Sight) -> Result<u64, Errno> {
        std::fs::symlink_metadata(self.host_path(&entry, sight)?).map_err(Errno::from)?;
        Ok(self.nodes.host_ino(entry))
    }

    /// The entries of directory `ino` for reader `pid`, without `.` and `..`.
    fn list(&self, ino: u64, pid: u32) -> Result<Vec<(u64, FileType, String)>, Errno> {
        let view = self.view(ino)?;
        let sight = self.sight(&view, pid);
        let mut entries = Vec::new();
        let child = |local: u64| ino_in(view.id(), local);
        let child_dir = child;
        // The views mount's root names processes, listed by nobody; the shared mount's `.by-pid` is
        // where it is stacked.
        let views_root = self.mount == Mount::Views && ino == ROOT_INO;
        if views_root || (view.id() == SHARED && local_of(ino) == BY_PID_INO) {
            return Ok(entries);
        }
        match self.nodes.node(local_of(ino)).ok_or(Errno::ENOENT)? {
            Node::Dir(dir) => {
                for sub in files::DIRS
                    .iter()
                    .filter(|d| d.ino != ROOT_INO && d.parent() == dir.path)
                {
                    entries.push((
                        child_dir(sub.ino),
                        FileType::Directory,
                        sub.name().to_string(),
                    ));
                }
                for file in FILES.iter().filter(|f| f.parent() == dir.path) {
                    entries.push((
                        child(file.ino),
                        FileType::RegularFile,
                        file.name().to_string(),
                    ));
                }
                if dir.path == BLOCK_DIR {
                    for (name, _) in read_host_dir(&self.host_block_dir())? {
                        if let Some(local) = self.block_ino(&name) {
                            entries.push((child_dir(local), FileType::Directory, name));
                        }
                    }
                }
                if dir.path == CPU_DIR {
                    for k in 0..self.renderer.visible_cpus_in(&sight).len() as u32 {
                        entries.push((
                            child_dir(NodeTable::slot_ino(k)),
                            FileType::Directory,
                            format!("cpu{k}"),
                        ));
                    }
                    let host_dir = self.host_cpu_dir();
                    for (name, kind) in read_host_dir(&host_dir)? {
                        if cpu_slot_number(&name).is_none() && !nodes::is_virtual_cpu_file(&name) {
                            let local = self.nodes.host_ino(HostEntry {
                                slot: None,
                                relative: PathBuf::from(&name),
                            });
                            let ino = if kind == FileType::Directory {
                                child_dir(local)
                            } else {
                                child(local)
                            };
                            entries.push((ino, kind, name));
                        }
                    }
                }
            }
            Node::CpuSlot(k) => self.list_host(
                Some(k),
                PathBuf::new(),
                &sight,
                ino_in(view.id(), 0),
                &mut entries,
            )?,
            Node::BlockDevice(index) => {
                self.block_name(index)?;
                entries.push((
                    child(NodeTable::block_stat_ino(index)),
                    FileType::RegularFile,
                    "stat".to_string(),
                ));
            }
            Node::BlockStat(_) => return Err(Errno::ENOTDIR),
            Node::Host(entry) => self.list_host(
                entry.slot,
                entry.relative,
                &sight,
                ino_in(view.id(), 0),
                &mut entries,
            )?,
            Node::File(_) => return Err(Errno::ENOTDIR),
        }
        Ok(entries)
    }

    /// Lists the host directory `relative` below `slot` (see [`HostEntry`]) as `sight` sees it.
    fn list_host(
        &self,
        slot: Option<u32>,
        relative: PathBuf,
        sight: &Sight,
        base: u64,
        entries: &mut Vec<(u64, FileType, String)>,
    ) -> Result<(), Errno> {
        let path = self.host_path(
            &HostEntry {
                slot,
                relative: relative.clone(),
            },
            sight,
        )?;
        for (name, kind) in read_host_dir(&path)? {
            let local = self.nodes.host_ino(HostEntry {
                slot,
                relative: relative.join(&name),
            });
            entries.push((ino_in(view_of(base), local), kind, name));
        }
        Ok(())
    }
}

/// Room a file keeps to grow without changing its size (see [`Views::describe`]): the multi-line
/// files whose counters gain digits as they run, kept as spaces at the end of their last line, where
/// their readers split on whitespace. Not loadavg or uptime: one line each, which scripts split on
/// single spaces (`split(' ')`, `cut -d' '`).
fn slack(node: &Node) -> usize {
    use crate::files::Content;
    match node {
        Node::File(file) if matches!(file.content, Content::Stat | Content::Diskstats) => 64,
        _ => 0,
    }
}

/// Drops from the kernel's cache, once per tick, every inode read since it last did, and every second
/// the generations nobody read for a while (see [`views`]). Idle inodes cost nothing. When the views
/// are switched off or on, everything is dropped.
pub fn invalidate_periodically(views: Arc<Views>, renderer: Arc<Renderer>, notifier: Notifier) {
    std::thread::spawn(move || {
        let invalidate = |due: &[views::Due]| {
            for due in due {
                // ENOENT: the kernel no longer has the inode, nothing to drop.
                let _ = notifier.inval_inode(INodeNo(due.ino()), 0, 0);
            }
        };
        let mut virtualizing = renderer.virtualizing();
        let mut swept = std::time::Instant::now();
        loop {
            std::thread::sleep(views::TICK);
            let due = views.due();
            invalidate(&due);
            views.dropped(&due);
            if renderer.virtualizing() != virtualizing {
                virtualizing = renderer.virtualizing();
                let all = views.everything();
                invalidate(&all);
                views.dropped(&all);
            }
            if swept.elapsed() >= Duration::from_secs(1) {
                swept = std::time::Instant::now();
                let idle = views.idle(views::IDLE);
                invalidate(&idle);
                views.evict(&idle);
                // The names of processes gone: the kernel drops their dentries, and FORGETs what no
                // bind holds, which takes their views away.
                for pid in views.gone() {
                    let _ = notifier.inval_entry(INodeNo(ROOT_INO), OsStr::new(&pid.to_string()));
                }
            }
        }
    });
}

impl Filesystem for VprocFs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = name
            .to_str()
            .ok_or(Errno::ENOENT)
            .and_then(|name| self.lookup_entry(parent.0, name, req.pid(), req.uid()));
        let target = NodeTable::target(local_of(*found.as_ref().map_or(&parent.0, |f| &f.0)));
        match self.counted(Operation::Lookup, target, found) {
            Ok((_, attr, attr_ttl, entry_ttl)) => {
                reply.entry_with_ttls(&attr_ttl, &entry_ttl, &attr, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if self.mount == Mount::Views {
            self.views.forget(view_of(ino.0), nlookup);
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let attr = self.attr(ino.0, req.pid());
        match self.counted(Operation::Getattr, NodeTable::target(local_of(ino.0)), attr) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = match (self.view(ino.0), self.nodes.node(local_of(ino.0))) {
            (Ok(view), Some(Node::Host(entry))) => self
                .host_path(&entry, &self.sight(&view, req.pid()))
                .and_then(|p| std::fs::read_link(p).map_err(Errno::from)),
            _ => Err(Errno::EINVAL),
        };
        match self.counted(
            Operation::Readlink,
            NodeTable::target(local_of(ino.0)),
            target,
        ) {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.mount == Mount::Shared {
            self.open_shared(req.pid(), ino.0, flags, reply);
            return;
        }
        // No OPEN, no RELEASE: after this one answer the kernel never sends either again for any file
        // of the mount (FUSE_NO_OPEN_SUPPORT), and reads through the page cache. Content is a
        // function of the inode, so the cache holds nothing another container could read. Writes
        // are refused by the read-only mount before they get here.
        self.renderer
            .metrics()
            .request(Operation::Open, NodeTable::target(local_of(ino.0)));
        reply.error(Errno::ENOSYS);
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
        if self.mount == Mount::Shared {
            let page_cache = lock_owner.is_none();
            self.read_shared(req.pid(), ino.0, fh.0, offset, size, page_cache, reply);
            return;
        }
        let started = std::time::Instant::now();
        let local = local_of(ino.0);
        let target = NodeTable::target(local);
        let metrics = self.renderer.metrics();
        metrics.request(Operation::Read, target);
        let mut rendered = false;
        let generation = self.view(ino.0).and_then(|view| {
            // Only loadavg keeps history: no other READ resolves anything.
            if let Some(Node::File(file)) = self.nodes.node(local)
                && file.content == crate::files::Content::Loadavg
            {
                let sight = self.sight(&view, req.pid());
                self.renderer
                    .started_reading(file.content, &sight, req.pid());
            }
            self.views.read(&view, local, || {
                rendered = true;
                self.render(&view, local, req.pid())
            })
        });
        match generation {
            Ok(generation) => {
                let bytes = &generation.bytes;
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                reply.data(&bytes[start..end]);
                if rendered {
                    metrics.read_took(target, started.elapsed());
                }
            }
            Err(errno) => {
                metrics.error(Operation::Read, errno.code());
                reply.error(errno);
            }
        }
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
        let parent = match self.nodes.node(local_of(ino.0)) {
            Some(Node::Dir(_)) if local_of(ino.0) == ROOT_INO => ino.0,
            Some(Node::Dir(dir)) => {
                let local = files::dir_by_path(dir.parent()).map_or(ROOT_INO, |d| d.ino);
                ino_in(view_of(ino.0), local)
            }
            _ => ino.0,
        };
        let listed = self.list(ino.0, req.pid());
        let target = NodeTable::target(local_of(ino.0));
        let listed = match self.counted(Operation::Readdir, target, listed) {
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
        metrics.request(Operation::Getxattr, NodeTable::target(local_of(ino.0)));
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
