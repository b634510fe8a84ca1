//! The container's mount tree, built by the init in its new mount namespace: the root (a directory, or
//! an overlay over an unpacked image), fresh /proc, /dev, /sys, the daemon's files, volumes, masked and
//! read-only paths, then pivot_root. Every mount but /dev and /dev/pts is `nodev`: a device node works
//! only where the container's own /dev made it. Every target is resolved inside the root (`RESOLVE_IN_ROOT`), and
//! the system mount points refuse symlinks, so nothing in the image can send a mount to the host.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, FileType, Mode, OFlags};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
    fsconfig_set_string, fsmount, fsopen, move_mount, open_tree,
};

use super::LaunchError;
use super::image::{Image, ImageConfig};
use super::options::{Network, RootSource, RunSpec};
use super::process::Command;
use crate::cgroup::{Hierarchy, Version};
use crate::files::bind_pairs;
use crate::in_root::{self, Symlinks};

/// Hidden like runc/Docker: a bind of /dev/null over files, an empty read-only tmpfs over directories.
pub const MASKED_PATHS: &[&str] = &[
    "proc/asound",
    "proc/acpi",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Made read-only like runc/Docker.
pub const READ_ONLY_PATHS: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Character devices created in the container's /dev: name, major, minor.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// What the host side prepared before the fork: where the root comes from, and the image's defaults.
#[derive(Debug)]
pub struct Prepared {
    root: Root,
    image: Option<ImageConfig>,
    /// `<state dir>/<name>`: the overlay's layers and the container's /etc/hosts, hostname and
    /// resolv.conf while it runs.
    state: PathBuf,
}

#[derive(Debug)]
enum Root {
    /// `--rootfs DIR`, mounted over itself in the container's namespace.
    Dir(PathBuf),
    /// An unpacked image under an overlay whose upper layer lives in the state directory.
    Overlay { lower: PathBuf },
}

/// Host-side preparation: checks the root directory, or unpacks the image and makes the container's
/// writable layer.
pub fn prepare(spec: &RunSpec) -> Result<Prepared, LaunchError> {
    let (root, image) = match &spec.root {
        RootSource::Dir(dir) => {
            let meta = std::fs::metadata(dir)
                .map_err(|e| LaunchError::io("--rootfs: cannot use", dir, e))?;
            if !meta.is_dir() {
                return Err(LaunchError::Refused(format!(
                    "--rootfs {}: not a directory",
                    dir.display()
                )));
            }
            (Root::Dir(dir.clone()), None)
        }
        RootSource::Image(archive) => {
            let Image { rootfs, config } = super::image::load(archive, &spec.image_cache)?;
            (Root::Overlay { lower: rootfs }, Some(config))
        }
    };
    let state = spec.state_dir.join(&spec.name);
    // A killed `vproc run` of the same name may have left its state; the name is ours now.
    let _ = std::fs::remove_dir_all(&state);
    let prepared = Prepared { root, image, state };
    // Root's alone: the container's root may write setuid binaries into its upper layer.
    let is_default = spec.state_dir == Path::new(super::options::DEFAULT_STATE_DIR);
    super::private_dir::private_root(&spec.state_dir, is_default)
        .map_err(|e| LaunchError::io("--state-dir: cannot use", &spec.state_dir, e))?;
    let private = |dir: &Path| {
        super::private_dir::private_dir(dir).map_err(|e| LaunchError::io("cannot create", dir, e))
    };
    private(&prepared.state)?;
    if let Root::Overlay { lower } = &prepared.root {
        for sub in ["upper", "work", "merged"] {
            private(&prepared.state.join(sub))?;
        }
        // The upper directory is the container's `/`: it keeps the image's mode (0755), so that users
        // in the container can walk it; the 0700 directory around it keeps the host's users out.
        let upper = prepared.state.join("upper");
        let mode = std::fs::metadata(lower).map(|m| m.permissions());
        if let Ok(mode) = mode {
            std::fs::set_permissions(&upper, mode)
                .map_err(|e| LaunchError::io("cannot set the mode of", &upper, e))?;
        }
    }
    for (file, content) in ETC_FILES.into_iter().zip(etc_contents(spec)) {
        let path = prepared.state.join(file);
        std::fs::write(&path, content).map_err(|e| LaunchError::io("cannot write", &path, e))?;
    }
    Ok(prepared)
}

/// The files Docker gives every container below /etc: its hostname, a hosts file that resolves it (the
/// JVM's `InetAddress.getLocalHost()` fails without), and the host's resolver configuration.
const ETC_FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// The contents of [`ETC_FILES`], in order.
fn etc_contents(spec: &RunSpec) -> [String; 3] {
    let hostname = spec.hostname();
    let hosts = match spec.network {
        Network::None => {
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string()
        }
        Network::Host => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
    };
    [
        format!("{hostname}\n"),
        format!("{hosts}127.0.1.1\t{hostname}\n"),
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    ]
}

impl Prepared {
    /// The command, environment, directory and user the payload runs with: the options over the image's
    /// defaults (arguments replace Cmd and keep Entrypoint, as `docker run`).
    pub fn command(&self, spec: &RunSpec) -> Result<Command, LaunchError> {
        let default = ImageConfig::default();
        let image = self.image.as_ref().unwrap_or(&default);
        let mut argv = image.entrypoint.clone().unwrap_or_default();
        if spec.args.is_empty() {
            argv.extend(image.cmd.clone().unwrap_or_default());
        } else {
            argv.extend(spec.args.iter().cloned());
        }
        if argv.is_empty() {
            return Err(LaunchError::Refused(
                "no command given, and the image names none (Entrypoint/Cmd): add one after the options"
                    .into(),
            ));
        }
        let hostname = spec.hostname().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), Command::DEFAULT_PATH.into()),
            ("HOSTNAME".into(), hostname),
            ("HOME".into(), "/root".into()),
        ];
        let image_env_has_home = image.env.iter().flatten().any(|kv| kv.starts_with("HOME="));
        let image_env = image.env.iter().flatten().filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        });
        for (key, value) in image_env.chain(spec.env.iter().cloned()) {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        let user_spec = spec
            .user
            .as_deref()
            .or(image.user.as_deref().filter(|u| !u.is_empty()))
            .unwrap_or("0");
        let user = super::user::resolve(user_spec, self.root_dir()).map_err(|e| {
            let option = if spec.user.is_some() {
                "-u"
            } else {
                "the image's User"
            };
            LaunchError::Refused(format!("{option} {user_spec}: {e}"))
        })?;
        // HOME follows the user unless the image or -e sets it.
        if let Some(home) = env.iter_mut().find(|(k, _)| k == "HOME")
            && !image_env_has_home
            && !spec.env.iter().any(|(k, _)| k == "HOME")
        {
            home.1 = user.home.clone();
        }
        let workdir = spec
            .workdir
            .clone()
            .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        Ok(Command {
            argv,
            env,
            workdir,
            user,
            interactive: spec.interactive,
            seccomp: None,
        })
    }

    /// The directory holding the container's files before it starts (its /etc/passwd is read here).
    fn root_dir(&self) -> &Path {
        match &self.root {
            Root::Dir(dir) => dir,
            Root::Overlay { lower } => lower,
        }
    }

    /// Removes the container's writable layer (the image stays cached).
    pub fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// In the init, after it joined the cgroup: new namespaces, the mount tree, pivot_root, hostname, lo.
pub fn enter(
    spec: &RunSpec,
    prepared: &Prepared,
    workdir: &str,
    cgroups: &[Hierarchy],
    host_pid: Option<u32>,
) -> Result<(), LaunchError> {
    use nix::sched::CloneFlags as C;
    let mut flags = C::CLONE_NEWNS | C::CLONE_NEWUTS | C::CLONE_NEWIPC | C::CLONE_NEWCGROUP;
    if spec.network == Network::None {
        flags |= C::CLONE_NEWNET;
    }
    nix::sched::unshare(flags)
        .map_err(|e| LaunchError::os("cannot create namespaces for the container", e))?;
    // Nothing mounted from here on may propagate back to the host.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| LaunchError::io("cannot make the mounts private:", Path::new("/"), e))?;
    rustix::process::umask(Mode::empty());

    let (root, mount_at) = mount_root(prepared)?;
    let tree = Tree { root: &root };

    tree.mount_new(
        "proc",
        "proc",
        &[],
        MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    tree.make_dev()?;
    tree.mount_new(
        "sys",
        "sysfs",
        &[],
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    tree.mount_cgroups(cgroups)?;
    if let Some(lxcfs) = &spec.lxcfs {
        // Our own files, named by our pid on the daemon's views mount (served from the page cache);
        // the shared paths (read per reader) where that fails: vproc run could not tell the pid, the
        // daemon is an older one, or could not resolve us yet.
        let views = host_pid.map(|pid| crate::attach::view_dir(lxcfs, pid));
        for (source, target) in bind_pairs() {
            let bound = match &views {
                Some(views) => tree
                    .bind(&views.join(&source), &target, false, Needs::Existing)
                    .or_else(|e| {
                        log::debug!("binding {source} from the shared mount: {e}");
                        tree.bind(&lxcfs.join(&source), &target, false, Needs::Existing)
                    }),
                None => tree.bind(&lxcfs.join(&source), &target, false, Needs::Existing),
            };
            match bound {
                // A disk gone since the list was made is skipped, never a reason not to start.
                Err(e) if crate::files::is_block_stat(&source) => {
                    log::debug!("not binding {source}: {e}");
                }
                other => other?,
            }
        }
    }
    for volume in &spec.volumes {
        let relative = volume.target.trim_start_matches('/');
        let kind = match std::fs::metadata(&volume.source) {
            Ok(meta) if meta.is_dir() => Needs::Dir,
            _ => Needs::File,
        };
        tree.bind(&volume.source, relative, volume.read_only, kind)?;
    }
    // Best effort, as the image may lack /etc and be read-only. Writable, as Docker's: each is a copy.
    for file in ETC_FILES {
        let _ = tree.bind(
            &prepared.state.join(file),
            &format!("etc/{file}"),
            false,
            Needs::File,
        );
    }
    for relative in MASKED_PATHS {
        tree.mask(relative)?;
    }
    for relative in READ_ONLY_PATHS {
        tree.make_read_only(relative)?;
    }
    let workdir = workdir.trim_start_matches('/');
    if !workdir.is_empty() {
        tree.target(workdir, Needs::Dir, Symlinks::InRoot)?;
    }
    if spec.read_only {
        set_attributes(&root, MountAttrFlags::MOUNT_ATTR_RDONLY, false)
            .map_err(|e| LaunchError::io("cannot make read-only:", &mount_at, e))?;
    }

    // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the new.
    rustix::process::fchdir(&root).map_err(|e| LaunchError::io("cannot enter", &mount_at, e))?;
    rustix::process::pivot_root(".", ".")
        .map_err(|e| LaunchError::io("cannot pivot_root into", &mount_at, e))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| LaunchError::io("cannot detach the old root from", &mount_at, e))?;
    rustix::process::chdir("/").map_err(|e| LaunchError::io("cannot enter", Path::new("/"), e))?;

    let hostname = spec.hostname();
    rustix::system::sethostname(hostname.as_bytes()).map_err(|e| {
        LaunchError::os(
            format!("cannot set hostname {hostname:?} for the container"),
            e,
        )
    })?;
    if spec.network == Network::None {
        loopback_up().map_err(|e| LaunchError::os("cannot bring up lo", e))?;
    }
    Ok(())
}

/// The container's root, attached at its place in the init's mount namespace (the `--rootfs` directory
/// bound over itself, or the overlay at `<state>/merged`): the mount's own fd, on which every later
/// step works (never the path again, which a host process could change meanwhile), and its path.
fn mount_root(prepared: &Prepared) -> Result<(OwnedFd, PathBuf), LaunchError> {
    let (root, mount_at) = match &prepared.root {
        Root::Dir(dir) => {
            let tree = open_tree(
                CWD,
                dir,
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::AT_RECURSIVE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC,
            )
            .map_err(|e| LaunchError::io("cannot bind the root", dir, e))?;
            set_attributes(&tree, MountAttrFlags::MOUNT_ATTR_NODEV, true)
                .map_err(|e| LaunchError::io("cannot mount nodev:", dir, e))?;
            (tree, dir.clone())
        }
        Root::Overlay { lower } => {
            let state = &prepared.state;
            let [lower_dir, upper_dir, work_dir] =
                [lower.clone(), state.join("upper"), state.join("work")]
                    .map(|dir| dir.to_string_lossy().into_owned());
            let options = [
                ("lowerdir", lower_dir.as_str()),
                ("upperdir", upper_dir.as_str()),
                ("workdir", work_dir.as_str()),
            ];
            let tree = new_mount("overlay", &options, MountAttrFlags::MOUNT_ATTR_NODEV)
                .map_err(|e| LaunchError::io("cannot mount an overlay over the image", lower, e))?;
            (tree, state.join("merged"))
        }
    };
    move_mount(
        &root,
        "",
        CWD,
        &mount_at,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| LaunchError::io("cannot mount the root at", &mount_at, e))?;
    Ok((root, mount_at))
}

/// What a mount target must be when it does not exist yet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    Dir,
    File,
    /// Skip the mount when the target is missing (a /proc file this kernel does not have).
    Existing,
}

/// The root being built, with every target resolved below it.
struct Tree<'a> {
    root: &'a OwnedFd,
}

impl Tree<'_> {
    /// A fresh filesystem of `fstype` (proc, sysfs, tmpfs, ...) on `relative`.
    fn mount_new(
        &self,
        relative: &str,
        fstype: &str,
        options: &[(&str, &str)],
        attributes: MountAttrFlags,
    ) -> Result<(), LaunchError> {
        let shown = Path::new("/").join(relative);
        let target = self.target(relative, Needs::Dir, Symlinks::Refused)?;
        let mount = new_mount(fstype, options, attributes)
            .map_err(|e| LaunchError::io(format!("cannot mount {fstype} on"), &shown, e))?;
        attach(&mount, &target)
            .map_err(|e| LaunchError::io(format!("cannot mount {fstype} on"), &shown, e))
    }

    /// A bind of the host's `source` on `relative`.
    fn bind(
        &self,
        source: &Path,
        relative: &str,
        read_only: bool,
        needs: Needs,
    ) -> Result<(), LaunchError> {
        let shown = Path::new("/").join(relative);
        let resolve = if needs == Needs::Existing {
            Symlinks::Refused
        } else {
            Symlinks::InRoot
        };
        let target = match self.target(relative, needs, resolve) {
            Err(LaunchError::Io { source, .. })
                if needs == Needs::Existing && source.kind() == io::ErrorKind::NotFound =>
            {
                return Ok(());
            }
            other => other?,
        };
        let tree = open_tree(
            CWD,
            source,
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::AT_RECURSIVE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| LaunchError::io("cannot bind", source, e))?;
        // No device node of the host works through a bind: only /dev's own do.
        let mut attributes = MountAttrFlags::MOUNT_ATTR_NODEV;
        if read_only {
            attributes |= MountAttrFlags::MOUNT_ATTR_RDONLY;
        }
        set_attributes(&tree, attributes, true)
            .map_err(|e| LaunchError::io("cannot set nodev or read-only on", source, e))?;
        attach(&tree, &target)
            .map_err(|e| LaunchError::io(format!("cannot bind {} on", source.display()), &shown, e))
    }

    /// Hides `relative` if it exists: /dev/null over a file, an empty read-only tmpfs over a directory.
    fn mask(&self, relative: &str) -> Result<(), LaunchError> {
        let shown = Path::new("/").join(relative);
        let target = match self.existing(relative) {
            Some(target) => target?,
            None => return Ok(()),
        };
        let fail = |e: io::Error| LaunchError::io("cannot mask", &shown, e);
        let is_dir = FileType::from_raw_mode(
            rustix::fs::fstat(&target)
                .map_err(|e| fail(e.into()))?
                .st_mode,
        ) == FileType::Directory;
        let cover = if is_dir {
            new_mount(
                "tmpfs",
                &[("size", "0")],
                MountAttrFlags::MOUNT_ATTR_RDONLY | MountAttrFlags::MOUNT_ATTR_NODEV,
            )
            .map_err(fail)?
        } else {
            open_tree(
                self.root,
                "dev/null",
                OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
            )
            .map_err(|e| fail(e.into()))?
        };
        attach(&cover, &target).map_err(fail)
    }

    /// Binds `relative` over itself, read-only, if it exists.
    fn make_read_only(&self, relative: &str) -> Result<(), LaunchError> {
        let shown = Path::new("/").join(relative);
        let target = match self.existing(relative) {
            Some(target) => target?,
            None => return Ok(()),
        };
        let fail = |e: io::Error| LaunchError::io("cannot make read-only:", &shown, e);
        let tree = open_tree(
            &target,
            "",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::AT_RECURSIVE
                | OpenTreeFlags::AT_EMPTY_PATH
                | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| fail(e.into()))?;
        set_attributes(&tree, MountAttrFlags::MOUNT_ATTR_RDONLY, true).map_err(fail)?;
        attach(&tree, &target).map_err(fail)
    }

    /// /sys/fs/cgroup, read-only, as Docker mounts it: the container's cgroup namespace makes its own
    /// cgroup the root there, so runtimes that read their limits from cgroup files (the JVM, Go's
    /// automaxprocs) find the same numbers vprocd shows. v2: one cgroup2 mount; v1: a tmpfs with one
    /// directory per hierarchy (and `cpu -> cpu,cpuacct` links, as on the host).
    fn mount_cgroups(&self, mounts: &[Hierarchy]) -> Result<(), LaunchError> {
        let read_only = MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC;
        let v1: Vec<&Hierarchy> = mounts.iter().filter(|m| m.version == Version::V1).collect();
        if v1.is_empty() {
            if mounts.iter().any(|m| m.version == Version::V2) {
                return self.mount_new("sys/fs/cgroup", "cgroup2", &[], read_only);
            }
            return Ok(());
        }
        self.mount_new(
            "sys/fs/cgroup",
            "tmpfs",
            &[("mode", "755"), ("size", "64k")],
            MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        )?;
        let shown = Path::new("/sys/fs/cgroup");
        let base = self.target("sys/fs/cgroup", Needs::Dir, Symlinks::Refused)?;
        let dir = rustix::fs::openat(
            &base,
            ".",
            OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LaunchError::io("cannot open", shown, e))?;
        for mount in v1 {
            // The host's name for the hierarchy (`cpu,cpuacct`).
            let name = mount
                .mount
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            let options: Vec<(&str, &str)> = mount
                .options
                .iter()
                .map(|o| o.split_once('=').unwrap_or((o.as_str(), "")))
                .collect();
            self.mount_new(
                &format!("sys/fs/cgroup/{name}"),
                "cgroup",
                &options,
                read_only,
            )?;
            if name.contains(',') {
                for alias in name.split(',') {
                    match rustix::fs::symlinkat(name.as_ref(), &dir, alias) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => {
                            return Err(LaunchError::io("cannot create", &shown.join(alias), e));
                        }
                    }
                }
            }
        }
        set_attributes(&base, MountAttrFlags::MOUNT_ATTR_RDONLY, false)
            .map_err(|e| LaunchError::io("cannot make read-only:", shown, e))
    }

    /// /dev: a tmpfs with the usual devices, devpts with a private ptmx, shm and mqueue.
    fn make_dev(&self) -> Result<(), LaunchError> {
        self.mount_new(
            "dev",
            "tmpfs",
            &[("mode", "755"), ("size", "65536k")],
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_STRICTATIME,
        )?;
        let dev = self.target("dev", Needs::Dir, Symlinks::Refused)?;
        let dev = rustix::fs::openat(
            &dev,
            ".",
            OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LaunchError::io("cannot open", Path::new("/dev"), e))?;
        for (name, major, minor) in DEVICES {
            rustix::fs::mknodat(
                &dev,
                *name,
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o666),
                rustix::fs::makedev(*major, *minor),
            )
            .map_err(|e| LaunchError::io("cannot create", &Path::new("/dev").join(name), e))?;
        }
        for (name, target) in DEV_SYMLINKS {
            rustix::fs::symlinkat(*target, &dev, *name)
                .map_err(|e| LaunchError::io("cannot create", &Path::new("/dev").join(name), e))?;
        }
        self.mount_new(
            "dev/pts",
            "devpts",
            &[
                ("newinstance", ""),
                ("ptmxmode", "0666"),
                ("mode", "0620"),
                ("gid", "5"),
            ],
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        )?;
        self.mount_new(
            "dev/shm",
            "tmpfs",
            &[("mode", "1777"), ("size", "65536k")],
            MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        )?;
        self.mount_new(
            "dev/mqueue",
            "mqueue",
            &[],
            MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV
                | MountAttrFlags::MOUNT_ATTR_NOEXEC,
        )
    }

    /// `relative` opened below the root if it exists (a kernel without /proc/timer_list, say).
    fn existing(&self, relative: &str) -> Option<Result<OwnedFd, LaunchError>> {
        match open_below(self.root, relative, Symlinks::Refused) {
            Ok(fd) => Some(Ok(fd)),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => Some(Err(LaunchError::io(
                "cannot open",
                &Path::new("/").join(relative),
                e,
            ))),
        }
    }

    /// The mount target `relative`, created (with its parents) as `needs` says when it is missing.
    fn target(
        &self,
        relative: &str,
        needs: Needs,
        resolve: Symlinks,
    ) -> Result<OwnedFd, LaunchError> {
        let shown = Path::new("/").join(relative);
        let symlink_refused = |e: rustix::io::Errno| {
            if e == rustix::io::Errno::LOOP && resolve == Symlinks::Refused {
                LaunchError::Refused(format!(
                    "the root filesystem has a symlink at or above {}; refusing to mount there",
                    shown.display()
                ))
            } else {
                LaunchError::io("cannot open the mount target", &shown, e)
            }
        };
        match open_below(self.root, relative, resolve) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOENT) if needs != Needs::Existing => {}
            Err(e) => return Err(symlink_refused(e)),
        }
        let real = self.create(relative, needs, resolve)?;
        open_below(self.root, &real, Symlinks::Refused).map_err(symlink_refused)
    }

    /// Creates the missing parts of `relative`, following symlinks inside the root as `resolve` allows
    /// (a link to `/x` means `<root>/x`); the path it ended at, free of symlinks.
    fn create(
        &self,
        relative: &str,
        needs: Needs,
        resolve: Symlinks,
    ) -> Result<String, LaunchError> {
        let shown = Path::new("/").join(relative);
        let mut pending: std::collections::VecDeque<String> = relative
            .split('/')
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        let mut done: Vec<String> = Vec::new();
        let mut links_followed = 0;
        while let Some(component) = pending.pop_front() {
            match component.as_str() {
                "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            let parent = if done.is_empty() {
                ".".to_string()
            } else {
                done.join("/")
            };
            let parent_dir = open_below(self.root, &parent, Symlinks::Refused)
                .and_then(|fd| {
                    rustix::fs::openat(&fd, ".", OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                })
                .map_err(|e| LaunchError::io("cannot open", &Path::new("/").join(&parent), e))?;
            match rustix::fs::readlinkat(&parent_dir, component.as_str(), Vec::new()) {
                Ok(target) => {
                    links_followed += 1;
                    if resolve == Symlinks::Refused || links_followed > 40 {
                        return Err(LaunchError::Refused(format!(
                            "the root filesystem has a symlink at or above {}; refusing to mount there",
                            shown.display()
                        )));
                    }
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        done.clear();
                    }
                    for part in target.split('/').filter(|c| !c.is_empty()).rev() {
                        pending.push_front(part.to_string());
                    }
                    continue;
                }
                // EINVAL: it exists and is not a symlink.
                Err(rustix::io::Errno::INVAL) => {}
                Err(rustix::io::Errno::NOENT) => {
                    let made = if pending.is_empty() && needs == Needs::File {
                        rustix::fs::openat(
                            &parent_dir,
                            component.as_str(),
                            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                            Mode::from_raw_mode(0o644),
                        )
                        .map(drop)
                    } else {
                        rustix::fs::mkdirat(
                            &parent_dir,
                            component.as_str(),
                            Mode::from_raw_mode(0o755),
                        )
                    };
                    match made {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => {
                            return Err(LaunchError::io(
                                "cannot create the mount target",
                                &shown,
                                e,
                            ));
                        }
                    }
                }
                Err(e) => return Err(LaunchError::io("cannot create the mount target", &shown, e)),
            }
            done.push(component);
        }
        Ok(if done.is_empty() {
            ".".into()
        } else {
            done.join("/")
        })
    }
}

fn open_below(root: &OwnedFd, relative: &str, symlinks: Symlinks) -> rustix::io::Result<OwnedFd> {
    in_root::open_at(root, relative, OFlags::PATH, symlinks)
}

/// A new, detached mount of `fstype` with `key = value` options (an empty value sets a flag). Each goes
/// to the kernel on its own (fsconfig), so a path with a comma in it stays one value.
fn new_mount(
    fstype: &str,
    options: &[(&str, &str)],
    attributes: MountAttrFlags,
) -> io::Result<OwnedFd> {
    let context = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?;
    for (key, value) in options {
        if value.is_empty() {
            rustix::mount::fsconfig_set_flag(&context, *key)?;
        } else {
            fsconfig_set_string(&context, *key, *value)?;
        }
    }
    fsconfig_create(&context)?;
    Ok(fsmount(
        &context,
        FsMountFlags::FSMOUNT_CLOEXEC,
        attributes,
    )?)
}

fn attach(mount: &OwnedFd, target: &OwnedFd) -> io::Result<()> {
    let flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
    Ok(move_mount(mount, "", target, "", flags)?)
}

/// mount_setattr(2) (not in rustix): sets `attributes` on the mount at `fd`, and below it if `recursive`.
fn set_attributes(fd: &impl AsFd, attributes: MountAttrFlags, recursive: bool) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: u64::from(attributes.bits()),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: the struct matches `struct mount_attr` (MOUNT_ATTR_SIZE_VER0) and outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Brings the loopback interface of the new network namespace up (SIOCSIFFLAGS with IFF_UP).
fn loopback_up() -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: plain socket(2); the fd is owned right away.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `socket` is a fresh fd we own.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
