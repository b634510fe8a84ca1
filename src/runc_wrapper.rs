//! `vproc-runc`: a runc wrapper that gives every container it creates vprocd's views with no hostPath
//! and no flag (the nvidia-container-runtime shape: edit the bundle's config.json, exec runc). Chosen per
//! container by the engine (`podman --runtime`, `ctr run --runc-binary`, a Kubernetes RuntimeClass).
//!
//! For `create` and `run` it adds to the bundle's spec, then execs the real runc with the same arguments:
//! - read-only binds of vprocd's files over /proc/{meminfo,cpuinfo,stat,uptime,swaps,loadavg,diskstats}
//!   and /sys/devices/system/cpu, for each the daemon serves and the spec does not already mount, with
//!   a createRuntime hook (the wrapper itself, `--vproc-hook`) that replaces them with the container's
//!   own files on the views mount once its process exists (page-cached; see `vproc::fs::views`);
//! - where `vproc seccomp-agent` listens, sysinfo and sched_getaffinity as `SCMP_ACT_NOTIFY` merged into
//!   the spec's own seccomp profile, with its `listenerPath`.
//!
//! Every other subcommand goes to runc untouched. Whatever goes wrong here (no daemon, an unreadable
//! spec), the bundle is left as it was and runc runs anyway, with a line on stderr saying why: a
//! container runc would have started always starts. The spec is rewritten atomically (a new file renamed
//! over it); the original is kept only in memory.
//!
//! Settings, for runtimes that pass no flags: `VPROC_LXCFS` (where vprocd is mounted, default
//! /var/lib/lxcfs), `VPROC_SECCOMP_SOCKET` (default /run/vproc/seccomp.sock) and `VPROC_RUNC_BINARY`
//! (default `runc` on PATH). The same as global options before the subcommand, removed before runc
//! sees them (`podman --runtime-flag vproc-lxcfs=DIR`): `--vproc-lxcfs`, `--vproc-seccomp-socket`,
//! `--runtime-binary`.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The /proc files runc lets a container bind over (its `checkProcMount` allowlist, made for LXCFS):
/// of vprocd's bind targets only these, or runc would refuse the container (pressure, for one).
const RUNC_ALLOWED_PROC: [&str; 10] = [
    "proc/cpuinfo",
    "proc/diskstats",
    "proc/meminfo",
    "proc/stat",
    "proc/swaps",
    "proc/uptime",
    "proc/loadavg",
    "proc/slabinfo",
    "proc/net/dev",
    "proc/sys/kernel/ns_last_pid",
];

/// What the wrapper binds: the daemon's bind targets (files.rs) that runc allows.
fn targets() -> Vec<&'static str> {
    crate::files::bind_targets()
        .into_iter()
        .filter(|t| !t.starts_with("proc/") || RUNC_ALLOWED_PROC.contains(t))
        .collect()
}

/// Where the wrapper looks and what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub lxcfs: PathBuf,
    pub seccomp_socket: PathBuf,
    /// The real runc; `None`: `runc` on PATH.
    pub runtime: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Settings {
            lxcfs: var("VPROC_LXCFS").map_or_else(
                || PathBuf::from(crate::cli::DEFAULT_MOUNTPOINT),
                PathBuf::from,
            ),
            seccomp_socket: var("VPROC_SECCOMP_SOCKET").map_or_else(
                || PathBuf::from(crate::notify::agent::DEFAULT_SOCKET),
                PathBuf::from,
            ),
            runtime: var("VPROC_RUNC_BINARY").map(PathBuf::from),
        }
    }
}

/// The wrapper's own global options, taken out of runc's command line (`--name=VALUE` or
/// `--name VALUE`, before the subcommand).
fn take_own_options(args: Vec<OsString>, settings: &mut Settings) -> Vec<OsString> {
    let mut kept = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    let mut before_subcommand = true;
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if before_subcommand && bytes.starts_with(b"--") {
            let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
                Some(at) => (&bytes[2..at], Some(OsStr::from_bytes(&bytes[at + 1..]))),
                None => (&bytes[2..], None),
            };
            let slot = match name {
                b"vproc-lxcfs" => Some(&mut settings.lxcfs),
                b"vproc-seccomp-socket" => Some(&mut settings.seccomp_socket),
                b"runtime-binary" => None,
                _ => {
                    let takes_value = RUNC_GLOBAL_VALUES.contains(&name) && inline.is_none();
                    kept.push(arg);
                    if takes_value && let Some(value) = args.next() {
                        kept.push(value);
                    }
                    continue;
                }
            };
            let value = match inline {
                Some(value) => Some(value.to_os_string()),
                None => args.next(),
            };
            if let Some(value) = value {
                match slot {
                    Some(slot) => *slot = PathBuf::from(value),
                    None => settings.runtime = Some(PathBuf::from(value)),
                }
            }
            continue;
        }
        if before_subcommand && !bytes.starts_with(b"-") {
            before_subcommand = false;
        }
        kept.push(arg);
    }
    kept
}

/// runc's global options that take a value as the next argument.
const RUNC_GLOBAL_VALUES: [&[u8]; 5] = [b"root", b"log", b"log-format", b"criu", b"rootless"];

/// The subcommand and the arguments after it.
fn subcommand(args: &[OsString]) -> Option<(&OsStr, &[OsString])> {
    let mut i = 0;
    while i < args.len() {
        let bytes = args[i].as_bytes();
        if !bytes.starts_with(b"-") {
            return Some((args[i].as_os_str(), &args[i + 1..]));
        }
        let name = bytes.trim_ascii_start().strip_prefix(b"--").unwrap_or(b"");
        if RUNC_GLOBAL_VALUES.contains(&name) {
            i += 1;
        }
        i += 1;
    }
    None
}

/// `--bundle DIR`, `--bundle=DIR`, `-b DIR` of `create`/`run`; the current directory by default.
fn bundle(args: &[OsString]) -> PathBuf {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            break;
        }
        if bytes == b"--bundle" || bytes == b"-b" {
            if let Some(dir) = args.next() {
                return PathBuf::from(dir);
            }
        } else if let Some(dir) = bytes
            .strip_prefix(b"--bundle=")
            .or_else(|| bytes.strip_prefix(b"-b="))
        {
            return PathBuf::from(OsStr::from_bytes(dir));
        }
    }
    PathBuf::from(".")
}

/// What was added to a spec, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Added {
    pub mounts: Vec<String>,
    pub seccomp: bool,
    /// The createRuntime hook that puts the container's views over the binds.
    pub hook: bool,
}

/// Annotations recording what the wrapper added, so that a bundle created again (a restart, a restore)
/// is first put back as the engine wrote it and then edited for what serves now.
const MOUNTS_ANNOTATION: &str = "io.vproc.runc/mounts";
const SECCOMP_ANNOTATION: &str = "io.vproc.runc/seccomp";
const HOOK_ANNOTATION: &str = "io.vproc.runc/hook";

/// The argument that makes the wrapper the createRuntime hook it adds (`vproc-runc --vproc-hook`).
pub const HOOK_ARGUMENT: &str = "--vproc-hook";

/// The createRuntime hook the wrapper adds beside its binds: itself (`exe`) with [`HOOK_ARGUMENT`], the
/// mountpoint and runc's log settings (a hook gets no environment). runc binds the shared files, whose
/// every read is answered per reader; once the container's process exists, the hook replaces them with
/// the container's own files on the views mount, which the kernel serves from its page cache. `None`
/// where a path is not UTF-8.
fn hook_entry(exe: &Path, lxcfs: &Path, log: &Log) -> Option<Value> {
    let mut args = vec![
        "vproc-runc".to_string(),
        HOOK_ARGUMENT.to_string(),
        format!("--vproc-lxcfs={}", lxcfs.to_str()?),
    ];
    if let Some(file) = &log.file {
        args.extend(["--log".to_string(), file.to_str()?.to_string()]);
    }
    if log.json {
        args.extend(["--log-format".to_string(), "json".to_string()]);
    }
    Some(json!({"path": exe.to_str()?, "args": args}))
}

/// The path this executable runs from, if that path still names it: runc fails a container whose
/// hook it cannot run, so none is added when the wrapper was replaced or removed since it started
/// (its path would run another file, or none).
fn own_path() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::env::current_exe().ok()?;
    let (named, running) = (
        std::fs::metadata(&exe).ok()?,
        std::fs::metadata("/proc/self/exe").ok()?,
    );
    (named.dev() == running.dev() && named.ino() == running.ino()).then_some(exe)
}

/// Whether `hook` (an entry of a spec's hooks) is one [`hook_entry`] made, wherever the wrapper was.
fn is_our_hook(hook: &Value) -> bool {
    let arg = |i: usize| hook["args"].get(i).and_then(Value::as_str);
    arg(1) == Some(HOOK_ARGUMENT) && arg(2).is_some_and(|a| a.starts_with("--vproc-lxcfs="))
}

/// Adds vprocd's binds and the seccomp agent's rules to `spec` (an OCI runtime spec): binds of the
/// files `served` names (below `lxcfs`), over /proc where the spec mounts a /proc and over /sys where it
/// mounts a /sys; `hook` among the createRuntime hooks where binds were added; the two calls to
/// `agent` where the spec has a seccomp profile (a container the engine runs unconfined stays so).
/// What an earlier run added is taken out first.
pub fn edit_spec(
    spec: &mut Value,
    lxcfs: &Path,
    served: &[&str],
    agent: Option<&Path>,
    hook: Option<Value>,
) -> Result<Added, String> {
    undo(spec, lxcfs)?;
    let object = spec
        .as_object_mut()
        .ok_or("config.json is not a JSON object")?;
    let mounts = object
        .entry("mounts")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or("config.json's mounts is not a list")?;
    let mounted: Vec<String> = mounts
        .iter()
        .filter_map(|m| m["destination"].as_str())
        .map(|d| d.trim_end_matches('/').to_string())
        .collect();
    let mut added = Added::default();
    for target in targets() {
        let destination = format!("/{target}");
        // Into the spec's own /proc and /sys only: without them runc would make the file in the
        // image's root (and fail on a read-only one).
        let under = if target.starts_with("proc/") {
            "/proc"
        } else {
            "/sys"
        };
        if mounted.contains(&destination)
            || !mounted.iter().any(|m| m == under)
            || !served.contains(&target)
        {
            continue;
        }
        mounts.push(json!({
            "destination": destination,
            "type": "bind",
            "source": lxcfs.join(target),
            "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
        }));
        added.mounts.push(destination);
    }
    if let Some(socket) = agent
        && let Some(seccomp) = object
            .get_mut("linux")
            .and_then(|linux| linux.get_mut("seccomp"))
            .filter(|seccomp| seccomp.is_object())
    {
        let original = seccomp.clone();
        added.seccomp = merge_seccomp(seccomp, socket);
        if added.seccomp {
            annotate(object, SECCOMP_ANNOTATION, original.to_string());
        }
    }
    if !added.mounts.is_empty() {
        annotate(object, MOUNTS_ANNOTATION, json!(added.mounts).to_string());
        if let Some(hook) = hook
            && let Some(hooks) = object
                .entry("hooks")
                .or_insert_with(|| json!({}))
                .as_object_mut()
            && let Some(create_runtime) = hooks
                .entry("createRuntime")
                .or_insert_with(|| json!([]))
                .as_array_mut()
        {
            create_runtime.push(hook);
            added.hook = true;
            annotate(object, HOOK_ANNOTATION, "true".to_string());
        }
    }
    Ok(added)
}

fn annotate(spec: &mut serde_json::Map<String, Value>, key: &str, value: String) {
    if let Some(annotations) = spec
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
    {
        annotations.insert(key.into(), Value::String(value));
    }
}

/// Takes out what an earlier run of the wrapper added to `spec`, as its annotations say. Annotations
/// come from images and users too, so they are believed only as far as the spec bears them out: a bind
/// is taken out only if its source is the daemon's (`lxcfs`), and the recorded profile is put back only
/// if merging it again gives exactly the spec's profile, so that putting it back can only take out the
/// two notified calls (a forged "original" cannot switch the container's seccomp off).
fn undo(spec: &mut Value, lxcfs: &Path) -> Result<(), String> {
    let Some(annotations) = spec.get_mut("annotations").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let mounts = annotations.remove(MOUNTS_ANNOTATION);
    let seccomp = annotations.remove(SECCOMP_ANNOTATION);
    if annotations.remove(HOOK_ANNOTATION).is_some()
        && let Some(hooks) = spec.get_mut("hooks").and_then(Value::as_object_mut)
    {
        if let Some(list) = hooks.get_mut("createRuntime").and_then(Value::as_array_mut) {
            list.retain(|hook| !is_our_hook(hook));
            if list.is_empty() {
                hooks.remove("createRuntime");
            }
        }
        if hooks.is_empty()
            && let Some(object) = spec.as_object_mut()
        {
            object.remove("hooks");
        }
    }
    if let Some(mounts) = mounts {
        let added: Vec<String> = mounts
            .as_str()
            .and_then(|m| serde_json::from_str(m).ok())
            .ok_or(format!("{MOUNTS_ANNOTATION} is not a list"))?;
        if let Some(list) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
            list.retain(|m| {
                let ours = m["type"] == "bind"
                    && m["source"]
                        .as_str()
                        .is_some_and(|s| Path::new(s).starts_with(lxcfs))
                    && m["destination"]
                        .as_str()
                        .is_some_and(|d| added.iter().any(|a| a == d));
                !ours
            });
        }
    }
    if let Some(seccomp) = seccomp {
        let original: Value = seccomp
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or(format!("{SECCOMP_ANNOTATION} is not a profile"))?;
        if let Some(current) = spec.pointer_mut("/linux/seccomp") {
            let socket = current["listenerPath"].as_str().map(PathBuf::from);
            let mut merged = original.clone();
            let ours = socket.is_some_and(|socket| merge_seccomp(&mut merged, &socket))
                && merged == *current;
            if ours {
                *current = original;
            }
        }
    }
    Ok(())
}

/// The calls the agent answers, by their profile names.
const NOTIFIED: [&str; 2] = ["sched_getaffinity", "sysinfo"];

/// Hands sysinfo and sched_getaffinity to the agent at `socket` in `seccomp` (the spec's
/// `linux.seccomp` profile): each call the profile allows unconditionally becomes
/// `SCMP_ACT_NOTIFY`; a call it refuses or allows only with conditions stays as it is. A profile that
/// already has a listener is left alone. Whether anything changed.
fn merge_seccomp(seccomp: &mut Value, socket: &Path) -> bool {
    let Some(profile) = seccomp.as_object_mut() else {
        return false;
    };
    if profile
        .get("listenerPath")
        .and_then(Value::as_str)
        .is_some_and(|p| !p.is_empty())
    {
        return false;
    }
    let default_allows =
        profile.get("defaultAction").and_then(Value::as_str) == Some("SCMP_ACT_ALLOW");
    let rules = match profile
        .entry("syscalls")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
    {
        Some(rules) => rules,
        None => return false,
    };
    let mut notified = Vec::new();
    for call in NOTIFIED {
        let naming: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| {
                rule["names"]
                    .as_array()
                    .is_some_and(|names| names.iter().any(|n| n == call))
            })
            .map(|(i, _)| i)
            .collect();
        let allowed = if naming.is_empty() {
            default_allows
        } else {
            naming.iter().all(|&i| {
                let rule = &rules[i];
                rule["action"] == "SCMP_ACT_ALLOW"
                    && rule["args"].as_array().is_none_or(|a| a.is_empty())
            })
        };
        if !allowed {
            continue;
        }
        for &i in &naming {
            if let Some(names) = rules[i]["names"].as_array_mut() {
                names.retain(|n| n != call);
            }
        }
        notified.push(call);
    }
    rules.retain(|rule| rule["names"].as_array().is_none_or(|n| !n.is_empty()));
    if notified.is_empty() {
        return false;
    }
    rules.push(json!({"names": notified, "action": "SCMP_ACT_NOTIFY"}));
    profile.insert("listenerPath".into(), json!(socket));
    true
}

/// How long the daemon may take to say what it serves: a hung FUSE daemon must not hang every
/// container's start (runc then runs with the bundle as it was).
const DAEMON_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// The files below `lxcfs` the daemon serves (of those the wrapper binds), asked with a deadline.
fn served_files(lxcfs: &Path) -> Result<Vec<&'static str>, String> {
    let lxcfs = lxcfs.to_path_buf();
    let (answer, answered) = std::sync::mpsc::channel();
    // The thread may stay stuck in a hung mount; exec ends it with the process.
    std::thread::spawn(move || {
        let served = crate::attach::check_daemon(&lxcfs)
            .map_err(|e| e.to_string())
            .map(|()| {
                targets()
                    .into_iter()
                    .filter(|target| lxcfs.join(target).exists())
                    .collect()
            });
        let _ = answer.send(served);
    });
    answered.recv_timeout(DAEMON_DEADLINE).unwrap_or_else(|_| {
        Err(format!(
            "the daemon did not answer within {} s",
            DAEMON_DEADLINE.as_secs()
        ))
    })
}

/// Whether `runc` can hand a call to a listener (`runc features`: runc >= 1.1 with libseccomp >= 2.5).
fn runc_notifies(runc: &Path) -> bool {
    std::process::Command::new(runc)
        .arg("features")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| serde_json::from_slice::<Value>(&out.stdout).ok())
        .and_then(|features| {
            features["linux"]["seccomp"]["actions"]
                .as_array()
                .map(|actions| actions.iter().any(|a| a == "SCMP_ACT_NOTIFY"))
        })
        .unwrap_or(false)
}

/// Edits the bundle's config.json for `settings`, with `hook` where binds are added; what was added, or
/// why nothing was.
fn edit_bundle(
    bundle: &Path,
    settings: &Settings,
    runc: &Path,
    hook: Option<Value>,
) -> Result<Added, String> {
    let served = served_files(&settings.lxcfs)?;
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut spec: Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let before = spec.clone();
    let agent = (agent_listening(&settings.seccomp_socket) && runc_notifies(runc))
        .then_some(settings.seccomp_socket.as_path());
    let added = edit_spec(&mut spec, &settings.lxcfs, &served, agent, hook)?;
    if spec == before {
        return Ok(added);
    }
    let mut bytes = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    let permissions = std::fs::metadata(&path)
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .permissions();
    write_atomically(&path, &bytes, permissions)?;
    Ok(added)
}

/// Whether `vproc seccomp-agent` answers at `socket`: runc connects there for the container's start
/// and for each `runc exec` into it, and fails them when nobody listens.
fn agent_listening(socket: &Path) -> bool {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    // Without blocking: a wedged agent with a full backlog must not hang the container's start (it
    // does listen: runc will wait on it as it would without the wrapper).
    let Ok(address) = SocketAddrUnix::new(socket) else {
        return false;
    };
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .is_ok_and(|probe| {
        matches!(
            rustix::net::connect(&probe, &address),
            Ok(()) | Err(rustix::io::Errno::AGAIN)
        )
    })
}

/// `path` replaced by `bytes`, with `permissions`, in one rename.
fn write_atomically(
    path: &Path,
    bytes: &[u8],
    permissions: std::fs::Permissions,
) -> Result<(), String> {
    use std::io::Write;
    let shown = path.display();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temporary = path.with_file_name(format!(".{name}.vproc-{}", std::process::id()));
    let written = {
        use std::os::unix::fs::OpenOptionsExt;
        // Not through a link planted at the name, and private until it has its permissions (the
        // spec holds the container's environment).
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)
    }
    .and_then(|mut file| {
        file.write_all(bytes)?;
        file.set_permissions(permissions)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&temporary);
        return Err(format!("cannot rewrite {shown}: {e}"));
    }
    Ok(())
}

/// Copies the `vproc-runc` next to the running executable to `dest` (mode 0755), atomically: a
/// runtime starting a container meanwhile runs the old wrapper or the new one, never half of one.
pub fn install_next_to_self(dest: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let source = exe.with_file_name("vproc-runc");
    let bytes =
        std::fs::read(&source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    write_atomically(dest, &bytes, std::fs::Permissions::from_mode(0o755))
}

/// Set in runc's environment: a wrapper started under it has found itself (or a copy of itself) as
/// runc, and would otherwise exec itself forever.
const WRAPPED: &str = "VPROC_RUNC_WRAPPED";

/// The real runc: as set, else the first executable `runc` on PATH (absolute directories only) that is
/// not this wrapper.
fn real_runc(settings: &Settings) -> Result<PathBuf, String> {
    if let Some(runtime) = &settings.runtime {
        return Ok(runtime.clone());
    }
    let ours = std::fs::canonicalize("/proc/self/exe").ok();
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("runc"))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                && std::fs::canonicalize(candidate).ok() != ours
        })
        .ok_or_else(|| {
            "no runc on PATH: install runc or name it with VPROC_RUNC_BINARY".to_string()
        })
}

/// Where runc itself logs (`--log FILE`, `--log-format text|json`; stderr without `--log`): the
/// wrapper's lines go there too. Never to stderr when runc has a log: engines hand `runc create` the
/// container's own stdio, so a line there would open the container's log.
struct Log {
    file: Option<PathBuf>,
    json: bool,
}

impl Log {
    fn of(args: &[OsString]) -> Log {
        let mut log = Log {
            file: None,
            json: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let bytes = arg.as_bytes();
            if !bytes.starts_with(b"-") {
                break;
            }
            let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
                Some(at) => (&bytes[..at], Some(OsStr::from_bytes(&bytes[at + 1..]))),
                None => (bytes, None),
            };
            let mut value = || {
                inline
                    .map(OsStr::to_os_string)
                    .or_else(|| args.next().cloned())
            };
            match name {
                b"--log" => log.file = value().map(PathBuf::from),
                b"--log-format" => log.json = value().is_some_and(|v| v == "json"),
                _ if RUNC_GLOBAL_VALUES
                    .contains(&name.trim_ascii_start().strip_prefix(b"--").unwrap_or(b"")) =>
                {
                    value();
                }
                _ => {}
            }
        }
        log
    }

    /// One warning, in runc's format.
    fn warn(&self, message: &str) {
        self.write("warning", message);
    }

    /// One line at `level` (runc's: `info`, `warning`), in runc's format.
    fn write(&self, level: &str, message: &str) {
        let line = if self.json {
            format!(
                "{}\n",
                json!({"level": level, "msg": message, "time": now_rfc3339()})
            )
        } else {
            format!(
                "time=\"{}\" level={level} msg={:?}\n",
                now_rfc3339(),
                message
            )
        };
        let Some(file) = &self.file else {
            eprint!("{line}");
            return;
        };
        use std::io::Write;
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
}

/// The time now as RFC 3339 in UTC, as runc's logs write it.
fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// How long the hook may take: runc waits for it before the container can start.
const HOOK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// `vproc-runc --vproc-hook`, which runc runs at createRuntime with the container's state on stdin:
/// puts the container's views over the shared files runc bound. Never fails the container (runc would
/// refuse it): a file whose view cannot be had keeps its shared bind, and a line in runc's log says why.
fn hook(args: Vec<OsString>) -> ! {
    let mut settings = Settings::from_env();
    let args = take_own_options(args, &mut settings);
    let log = Log::of(&args);
    let mut stdin = String::new();
    let (level, line) = match std::io::Read::read_to_string(&mut std::io::stdin(), &mut stdin) {
        Ok(_) => upgrade(&stdin, &settings.lxcfs),
        Err(e) => (
            "warning",
            format!(
                "cannot read the OCI state on stdin: {e}; the container reads the shared files"
            ),
        ),
    };
    log.write(level, &format!("vproc-runc hook: {line}"));
    std::process::exit(0)
}

/// Replaces the shared binds the wrapper added to the container `state_json` describes (its
/// [`MOUNTS_ANNOTATION`]) with the container's views; the level and line for runc's log.
fn upgrade(state_json: &str, lxcfs: &Path) -> (&'static str, String) {
    use crate::attach::{AttachMode, Attached, attach_pairs, view_pairs};
    use crate::reattach::{Ended, in_child};
    let unchanged = |why: String| {
        (
            "warning",
            format!("{why}; the container reads the shared files"),
        )
    };
    let state = match crate::oci::State::parse(state_json) {
        Ok(state) => state,
        Err(e) => return unchanged(e.to_string()),
    };
    let id = &state.id;
    let (pid, rootfs) = match state.pid().and_then(|pid| Ok((pid, state.rootfs()?))) {
        Ok(found) => found,
        Err(e) => return unchanged(format!("container {id}: {e}")),
    };
    let Some(bound) = state
        .annotations
        .get(MOUNTS_ANNOTATION)
        .and_then(|list| serde_json::from_str::<Vec<String>>(list).ok())
    else {
        return unchanged(format!("container {id}: no {MOUNTS_ANNOTATION} annotation"));
    };
    let pairs: Vec<(String, String)> = view_pairs()
        .into_iter()
        .filter(|(_, target)| bound.iter().any(|b| b.strip_prefix('/') == Some(target)))
        .collect();
    // The child reports as JSON: how many files it replaced and why others kept the shared file, or
    // the error that stopped it.
    let ended = in_child(pid, HOOK_DEADLINE, || {
        match attach_pairs(pid, &rootfs, lxcfs, &pairs, AttachMode::Upgrade) {
            Ok(done) => json!({
                "mounted": done.iter().filter(|a| matches!(a, Attached::Mounted(_))).count(),
                "kept": done.iter().filter_map(|a| match a {
                    Attached::Kept(path, why) => Some(format!("{} ({why})", path.display())),
                    _ => None,
                }).collect::<Vec<_>>(),
            }),
            Err(e) => json!({"error": e.to_string()}),
        }
        .to_string()
    });
    let container = format!("container {id} (pid {pid})");
    let partly = |why: String| {
        (
            "warning",
            format!("{container}: {why}; the files not replaced keep runc's binds"),
        )
    };
    let report = match ended {
        Ended::Reported(report) => match serde_json::from_str::<Value>(&report) {
            Ok(report) => report,
            Err(_) => return partly(format!("unreadable report {report:?}")),
        },
        Ended::TimedOut => {
            return partly(format!("no answer within {} s", HOOK_DEADLINE.as_secs()));
        }
        Ended::Failed(why) => return partly(why),
    };
    if let Some(error) = report["error"].as_str() {
        return partly(error.to_string());
    }
    let mounted = report["mounted"].as_u64().unwrap_or(0);
    let kept: Vec<&str> = report["kept"]
        .as_array()
        .map(|kept| kept.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if kept.is_empty() {
        (
            "info",
            format!("{container}: {mounted} files from its views"),
        )
    } else {
        (
            "warning",
            format!(
                "{container}: {mounted} files from its views; the shared file stays at {}",
                kept.join(", ")
            ),
        )
    }
}

/// The wrapper: edits the bundle for `create`, `run` and `restore`, then becomes runc. Never returns.
pub fn main(args: Vec<OsString>) -> ! {
    let args: Vec<OsString> = args.into_iter().skip(1).collect();
    if args.first().is_some_and(|a| a == HOOK_ARGUMENT) {
        hook(args.into_iter().skip(1).collect());
    }
    let mut settings = Settings::from_env();
    let args = take_own_options(args, &mut settings);
    let log = Log::of(&args);
    if std::env::var_os(WRAPPED).is_some() {
        log.warn(
            "vproc-runc: started by itself as runc (a copy of the wrapper is first on PATH as runc): \
             name the real runc with VPROC_RUNC_BINARY",
        );
        std::process::exit(127);
    }
    let runc = match real_runc(&settings) {
        Ok(runc) => runc,
        Err(why) => {
            log.warn(&format!("vproc-runc: {why}"));
            std::process::exit(127);
        }
    };
    if let Some((command, rest)) = subcommand(&args)
        && (command == "create" || command == "run" || command == "restore")
    {
        let bundle = bundle(rest);
        // Not for a restore: CRIU puts back the mounts the container had.
        let hook = (command != "restore")
            .then(own_path)
            .flatten()
            .and_then(|exe| hook_entry(&exe, &settings.lxcfs, &log));
        if let Err(why) = edit_bundle(&bundle, &settings, &runc, hook) {
            log.warn(&format!(
                "vproc-runc: the container keeps the host's /proc files: {why}"
            ));
        }
    }
    // SAFETY: single-threaded but for a daemon probe that may be stuck, which touches no environment.
    unsafe { std::env::set_var(WRAPPED, "1") };
    let to_c = |s: &OsStr| CString::new(s.as_bytes()).unwrap_or_default();
    let argv: Vec<CString> = std::iter::once(to_c(runc.as_os_str()))
        .chain(args.iter().map(|a| to_c(a)))
        .collect();
    let error = nix::unistd::execv(&to_c(runc.as_os_str()), &argv).unwrap_err();
    log.warn(&format!(
        "vproc-runc: cannot run {}: {}",
        runc.display(),
        std::io::Error::from(error)
    ));
    std::process::exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn own_options_are_taken_out_and_runc_s_kept() {
        let mut settings = Settings {
            lxcfs: "/var/lib/lxcfs".into(),
            seccomp_socket: "/run/vproc/seccomp.sock".into(),
            runtime: None,
        };
        let args = os(&[
            "--root",
            "/run/runc",
            "--vproc-lxcfs=/tmp/m",
            "--log",
            "/x.log",
            "--vproc-seccomp-socket",
            "/tmp/s.sock",
            "--runtime-binary=/usr/sbin/runc",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "--vproc-lxcfs=/not/ours",
            "id",
        ]);
        let kept = take_own_options(args, &mut settings);
        assert_eq!(
            kept,
            os(&[
                "--root",
                "/run/runc",
                "--log",
                "/x.log",
                "--systemd-cgroup",
                "create",
                "--bundle",
                "/b",
                "--vproc-lxcfs=/not/ours",
                "id"
            ])
        );
        assert_eq!(settings.lxcfs, Path::new("/tmp/m"));
        assert_eq!(settings.seccomp_socket, Path::new("/tmp/s.sock"));
        assert_eq!(
            settings.runtime.as_deref(),
            Some(Path::new("/usr/sbin/runc"))
        );
        let (command, rest) = subcommand(&kept).unwrap();
        assert_eq!(command, "create");
        assert_eq!(bundle(rest), Path::new("/b"));
        // A global option's value is not the subcommand.
        let args = os(&["--log-format", "json", "run", "-b=/c", "x"]);
        let (command, rest) = subcommand(&args).unwrap();
        assert_eq!(
            (command, bundle(rest)),
            (OsStr::new("run"), PathBuf::from("/c"))
        );
        assert_eq!(bundle(&os(&["x"])), Path::new("."));
        assert!(subcommand(&os(&["--version"])).is_none());
    }

    /// A spec as podman writes it: /proc, /sys, a volume over /proc/uptime, Docker's profile (cut).
    fn podman_spec() -> Value {
        json!({
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
                {"destination": "/proc/uptime", "type": "bind", "source": "/elsewhere"}
            ],
            "linux": {"seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {"names": ["read", "sysinfo", "sched_getaffinity"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["sched_getaffinity"], "action": "SCMP_ACT_ALLOW"}
                ]
            }}
        })
    }

    #[test]
    fn binds_are_added_after_proc_and_sys_unless_the_spec_has_them() {
        let mut spec = podman_spec();
        let served: Vec<&str> = targets()
            .into_iter()
            .filter(|target| *target != "proc/diskstats")
            .collect();
        let added = edit_spec(&mut spec, Path::new("/m"), &served, None, None).unwrap();
        assert_eq!(
            added.mounts,
            [
                "/proc/meminfo",
                "/proc/cpuinfo",
                "/proc/stat",
                "/proc/swaps",
                "/proc/loadavg",
                "/sys/devices/system/cpu"
            ]
        );
        assert!(!added.seccomp);
        let mounts = spec["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 9);
        assert_eq!(
            mounts[3],
            json!({"destination": "/proc/meminfo", "type": "bind", "source": "/m/proc/meminfo",
                   "options": ["bind", "ro", "nosuid", "nodev", "noexec"]})
        );
        // Pressure files are vprocd's but not runc's to bind (it refuses /proc paths beyond these).
        assert!(
            mounts
                .iter()
                .all(|m| !m["destination"].as_str().unwrap().contains("pressure"))
        );
        // Edited again (a bundle created anew, a restore), with the daemon gone: as the engine wrote it.
        let edited = spec.clone();
        let added = edit_spec(&mut spec, Path::new("/m"), &[], None, None).unwrap();
        assert_eq!(added, Added::default());
        assert_eq!(spec["mounts"], podman_spec()["mounts"]);
        // And with it back: the same as the first time.
        edit_spec(&mut spec, Path::new("/m"), &served, None, None).unwrap();
        assert_eq!(spec, edited);

        // A spec without its own /proc or /sys gets no binds there (runc would write into the image).
        let mut bare =
            json!({"mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]});
        let added = edit_spec(&mut bare, Path::new("/m"), &served, None, None).unwrap();
        assert!(
            added.mounts.iter().all(|m| m.starts_with("/proc/")),
            "{added:?}"
        );
        assert_eq!(added.mounts.len(), 6);
    }

    #[test]
    fn the_hook_that_puts_views_over_the_binds_comes_with_them_and_goes_with_them() {
        let log = Log {
            file: Some("/run/x/log.json".into()),
            json: true,
        };
        let hook = hook_entry(
            Path::new("/opt/vproc/bin/vproc-runc"),
            Path::new("/m"),
            &log,
        );
        let theirs = json!({"path": "/usr/bin/other", "args": ["other", "--vproc-hook"]});
        let mut spec = podman_spec();
        spec["hooks"] = json!({"createRuntime": [theirs.clone()], "poststop": []});
        let original = spec.clone();
        let served = targets();
        let added = edit_spec(&mut spec, Path::new("/m"), &served, None, hook.clone()).unwrap();
        assert!(added.hook);
        assert_eq!(
            spec["hooks"]["createRuntime"],
            json!([theirs, {
                "path": "/opt/vproc/bin/vproc-runc",
                "args": ["vproc-runc", "--vproc-hook", "--vproc-lxcfs=/m",
                         "--log", "/run/x/log.json", "--log-format", "json"]
            }])
        );
        // Once only, however often the bundle is edited; gone with the binds when the daemon is.
        let edited = spec.clone();
        edit_spec(&mut spec, Path::new("/m"), &served, None, hook.clone()).unwrap();
        assert_eq!(spec, edited);
        let added = edit_spec(&mut spec, Path::new("/m"), &[], None, hook.clone()).unwrap();
        assert!(!added.hook);
        spec.as_object_mut().unwrap().remove("annotations");
        assert_eq!(spec, original);
        // A spec with no hooks of its own has none left either.
        let mut bare = podman_spec();
        edit_spec(&mut bare, Path::new("/m"), &served, None, hook.clone()).unwrap();
        assert_eq!(bare["hooks"]["createRuntime"].as_array().unwrap().len(), 1);
        edit_spec(&mut bare, Path::new("/m"), &[], None, hook).unwrap();
        assert!(bare.get("hooks").is_none(), "{bare}");
        // A path runc could not be given stays out (the binds stay in).
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/m\xff"));
        assert!(hook_entry(Path::new("/x"), odd, &log).is_none());
    }

    #[test]
    fn the_two_calls_go_to_the_agent_where_the_profile_allows_them() {
        let mut spec = podman_spec();
        let socket = Path::new("/run/vproc/seccomp.sock");
        let original = spec.clone();
        let added = edit_spec(&mut spec, Path::new("/m"), &[], Some(socket), None).unwrap();
        assert!(added.seccomp);
        let seccomp = &spec["linux"]["seccomp"];
        assert_eq!(seccomp["listenerPath"], "/run/vproc/seccomp.sock");
        assert_eq!(
            seccomp["syscalls"],
            json!([
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["sched_getaffinity", "sysinfo"], "action": "SCMP_ACT_NOTIFY"}
            ])
        );

        // Without the agent (it stopped) on the next edit: the engine's profile again.
        edit_spec(&mut spec, Path::new("/m"), &[], None, None).unwrap();
        assert_eq!(spec["linux"], original["linux"]);

        // Unconfined stays unconfined (no filter where the engine wanted none).
        let mut spec = json!({"mounts": [], "linux": {}});
        let added = edit_spec(&mut spec, Path::new("/m"), &[], Some(socket), None).unwrap();
        assert!(!added.seccomp);
        assert!(spec["linux"].get("seccomp").is_none());

        // A call the profile refuses stays refused; a profile with a listener of its own is left alone.
        let mut refused = json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["sched_getaffinity"], "action": "SCMP_ACT_ALLOW"}]}}});
        edit_spec(&mut refused, Path::new("/m"), &[], Some(socket), None).unwrap();
        assert_eq!(
            refused["linux"]["seccomp"]["syscalls"],
            json!([{"names": ["sched_getaffinity"], "action": "SCMP_ACT_NOTIFY"}])
        );
        // A forged record of "the original profile" (an image's or a user's annotation) is not
        // believed: the spec's profile does not come from merging it, so it stays.
        let mut forged = json!({
            "annotations": {"io.vproc.runc/seccomp": "{\"defaultAction\": \"SCMP_ACT_ALLOW\"}",
                            "io.vproc.runc/mounts": "[\"/etc/hosts\"]"},
            "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/host/hosts"}],
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}}
        });
        edit_spec(&mut forged, Path::new("/m"), &[], None, None).unwrap();
        assert_eq!(
            forged["linux"]["seccomp"]["defaultAction"],
            "SCMP_ACT_ERRNO"
        );
        assert_eq!(forged["mounts"][0]["source"], "/host/hosts");

        let mut theirs = json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/other.sock", "syscalls": []}}});
        let before = theirs.clone();
        let added = edit_spec(&mut theirs, Path::new("/m"), &[], Some(socket), None).unwrap();
        assert_eq!(added, Added::default());
        assert_eq!(theirs["linux"], before["linux"]);
    }

    #[test]
    fn warnings_go_where_runc_logs_in_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log.json");
        let args = os(&[
            "--root",
            "/run/r",
            "--log",
            file.to_str().unwrap(),
            "--log-format=json",
            "create",
            "--log",
            "/not/this",
        ]);
        let log = Log::of(&args);
        assert_eq!(log.file.as_deref(), Some(file.as_path()));
        assert!(log.json);
        log.warn("vproc-runc: a \"quoted\" reason");
        let line: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(line["level"], "warning");
        assert_eq!(line["msg"], "vproc-runc: a \"quoted\" reason");
        let time = line["time"].as_str().unwrap();
        assert_eq!(
            (time.len(), &time[10..11], &time[19..]),
            (20, "T", "Z"),
            "{time}"
        );
        assert!(!Log::of(&os(&["--log", "/x", "create"])).json);
    }

    #[test]
    fn the_spec_is_replaced_whole_with_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, b"{}").unwrap();
        write_atomically(
            &path,
            b"{\"a\": 1}\n",
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\": 1}\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
