//! What `vproc run` was asked for, checked: each parser names the option and the value it refuses.

use std::path::PathBuf;

use super::cgroup::Limits;

/// Where unpacked images are kept unless `--image-cache` says otherwise.
pub const DEFAULT_IMAGE_CACHE: &str = "/var/lib/vproc/images";

/// Where containers' writable layers live unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vproc/containers";

/// Everything `vproc run` needs to start one container.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub root: RootSource,
    /// The command line given after the options; empty: the image's Entrypoint + Cmd.
    pub args: Vec<String>,
    /// The container's name: its hostname's default and its cgroup's name (`vproc/<name>`).
    pub name: String,
    pub hostname: Option<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    /// `-u`: UID[:GID] or NAME[:GROUP], resolved in the container's /etc/passwd and /etc/group.
    pub user: Option<String>,
    pub volumes: Vec<Volume>,
    pub read_only: bool,
    pub network: Network,
    pub limits: Limits,
    /// Where vprocd is mounted; `None` with --no-lxcfs.
    pub lxcfs: Option<PathBuf>,
    /// Which of sysinfo(2) and sched_getaffinity(2) answer with the container's numbers (served by
    /// `vproc run` itself through seccomp user notification).
    pub calls: crate::notify::Calls,
    /// Where unpacked images are kept, one directory per image id.
    pub image_cache: PathBuf,
    /// Where containers' writable layers live while they run.
    pub state_dir: PathBuf,
    /// `--security-opt seccomp=...`.
    pub seccomp: super::seccomp::Policy,
    /// `--init`: vproc's reaper runs as pid 1 and the command under it; else the command is pid 1.
    pub init: bool,
    /// `-i`: the command reads vproc run's stdin; else /dev/null.
    pub interactive: bool,
    /// `-t`: the command's stdin, stdout and stderr are a new pty of the container's.
    pub tty: bool,
    /// How long after passing on a SIGTERM `vproc run` waits before it kills the container.
    pub stop_timeout: std::time::Duration,
}

impl RunSpec {
    /// `--hostname`, by default the container's name.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.name)
    }
}

/// The root filesystem: a directory used as it is, or an image archive unpacked into the cache.
#[derive(Debug, Clone)]
pub enum RootSource {
    Dir(PathBuf),
    Image(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Network {
    /// A new network namespace with only the loopback interface, up.
    None,
    /// The host's network namespace.
    Host,
}

/// `-v SRC:DST[:ro]`: a host path bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// `--memory 256m`: bytes, with an optional b, k, m or g suffix (powers of 1024, as Docker).
pub fn parse_memory(value: &str) -> Result<u64, String> {
    let lower = value.trim().to_ascii_lowercase();
    let (number, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let scale: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err("expected a size like 64m, 512k or 2g".into()),
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| "expected a size like 64m, 512k or 2g".to_string())?;
    // The kernel needs some pages to start anything at all; Docker refuses less than 6 MiB.
    if bytes < 6 << 20 {
        return Err("the minimum is 6m".into());
    }
    Ok(bytes)
}

/// `--cpus 0.5`: a number of CPUs, as CFS quota over a 100000 us period.
pub fn parse_cpus(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(cpus) if cpus.is_finite() && (0.01..=1024.0).contains(&cpus) => Ok(cpus),
        _ => Err("expected a number of CPUs from 0.01 to 1024, like 0.5 or 2".into()),
    }
}

/// `--cpuset-cpus 0-1,3`: a kernel CPU list.
pub fn parse_cpuset(value: &str) -> Result<String, String> {
    match crate::cgroup::parse::parse_cpu_list(value) {
        Some(cpus) if !cpus.is_empty() => Ok(value.trim().to_string()),
        _ => Err("expected a CPU list like 0, 0-1 or 0,2-3".into()),
    }
}

/// `-v SRC:DST[:ro|rw]`: both absolute; SRC must exist.
pub fn parse_volume(value: &str) -> Result<Volume, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        [_, _, mode] => return Err(format!("unknown mode {mode:?}: use ro or rw")),
        _ => return Err("expected SRC:DST or SRC:DST:ro with absolute paths".into()),
    };
    if !source.starts_with('/') || !target.starts_with('/') {
        return Err("SRC and DST must be absolute paths".into());
    }
    let source = PathBuf::from(source);
    if let Err(e) = std::fs::symlink_metadata(&source) {
        return Err(format!("{}: {e}", source.display()));
    }
    Ok(Volume {
        source,
        target: target.to_string(),
        read_only,
    })
}

/// `-e KEY=VALUE`, or `-e KEY` to pass the variable from vproc's own environment.
pub fn parse_env(value: &str) -> Result<(String, String), String> {
    let (key, value) = match value.split_once('=') {
        Some((key, value)) => (key.to_string(), value.to_string()),
        None => (value.to_string(), std::env::var(value).unwrap_or_default()),
    };
    if key.is_empty() || key.contains('\0') || value.contains('\0') {
        return Err("expected KEY=VALUE with a non-empty KEY".into());
    }
    Ok((key, value))
}

/// `--name`: letters, digits, `_`, `.` and `-`, starting with a letter or digit (Docker's rule); it
/// becomes a cgroup directory name.
pub fn parse_name(value: &str) -> Result<String, String> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if first_ok && rest_ok && value.len() <= 128 {
        Ok(value.to_string())
    } else {
        Err("use letters, digits, '_', '.' and '-', starting with a letter or digit".into())
    }
}

/// `--hostname`: what sethostname(2) takes (at most 64 bytes).
pub fn parse_hostname(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 64 || value.contains('\0') {
        return Err("expected 1 to 64 characters".into());
    }
    Ok(value.to_string())
}

/// `--security-opt`: `seccomp=unconfined`, `seccomp=FILE.json` (Docker's profile format) and
/// `no-new-privileges` (always on here) are understood.
pub fn parse_security_opt(value: &str) -> Result<SecurityOpt, String> {
    let (key, setting) = value
        .split_once(['=', ':'])
        .map_or((value, None), |(k, v)| (k, Some(v)));
    match (key, setting) {
        ("seccomp", Some("unconfined")) => {
            Ok(SecurityOpt::Seccomp(super::seccomp::Policy::Unconfined))
        }
        ("seccomp", Some(path)) if !path.is_empty() => {
            let path = PathBuf::from(path);
            std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(SecurityOpt::Seccomp(super::seccomp::Policy::File(path)))
        }
        ("no-new-privileges", None | Some("true")) => Ok(SecurityOpt::NoNewPrivileges),
        ("no-new-privileges", Some("false")) => Err(
            "vproc run always sets no_new_privs; no-new-privileges=false is not supported".into(),
        ),
        _ => Err(
            "expected seccomp=unconfined, seccomp=PROFILE.json or no-new-privileges (apparmor and \
             label options are not supported)"
                .into(),
        ),
    }
}

/// One `--security-opt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityOpt {
    Seccomp(super::seccomp::Policy),
    NoNewPrivileges,
}

/// A fresh container id: 12 hex digits from the kernel's random pool.
pub fn new_container_id() -> String {
    let mut bytes = [0u8; 6];
    if rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).is_err() {
        // Never fails on Linux >= 3.17; pid and time are unique enough on this host if it does.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes[..4].copy_from_slice(&(std::process::id() ^ now).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_take_binary_suffixes() {
        assert_eq!(parse_memory("64m"), Ok(64 << 20));
        assert_eq!(parse_memory("64M"), Ok(64 << 20));
        assert_eq!(parse_memory("64mb"), Ok(64 << 20));
        assert_eq!(parse_memory("2g"), Ok(2 << 30));
        assert_eq!(parse_memory("8192k"), Ok(8 << 20));
        assert_eq!(parse_memory("10485760"), Ok(10 << 20));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("64x").is_err());
        assert!(parse_memory("-1").is_err());
        assert!(parse_memory("1k").unwrap_err().contains("minimum"));
        assert!(parse_memory("99999999999999999999g").is_err());
    }

    #[test]
    fn cpus_are_positive_numbers() {
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        assert_eq!(parse_cpus("2"), Ok(2.0));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("half").is_err());
        assert!(parse_cpus("NaN").is_err());
    }

    #[test]
    fn volumes_need_absolute_paths_and_an_existing_source() {
        assert_eq!(
            parse_volume("/tmp:/data:ro"),
            Ok(Volume {
                source: "/tmp".into(),
                target: "/data".into(),
                read_only: true
            })
        );
        assert!(!parse_volume("/tmp:/data").unwrap().read_only);
        assert!(parse_volume("tmp:/data").is_err());
        assert!(parse_volume("/tmp:/data:rx").unwrap_err().contains("rx"));
        assert!(
            parse_volume("/no/such/vproc/path:/data")
                .unwrap_err()
                .contains("/no/such/vproc/path")
        );
    }

    #[test]
    fn names_and_environment() {
        assert!(parse_name("web-1.a_b").is_ok());
        assert!(parse_name("-x").is_err());
        assert!(parse_name("a/b").is_err());
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_cpuset("0-1").is_ok());
        assert!(parse_cpuset("one").is_err());
        assert_eq!(new_container_id().len(), 12);
    }

    #[test]
    fn security_options_are_docker_s() {
        use super::super::seccomp::Policy;
        assert_eq!(
            parse_security_opt("seccomp=unconfined"),
            Ok(SecurityOpt::Seccomp(Policy::Unconfined))
        );
        assert_eq!(
            parse_security_opt("seccomp:/etc/hostname"),
            Ok(SecurityOpt::Seccomp(Policy::File("/etc/hostname".into())))
        );
        assert!(
            parse_security_opt("seccomp=/no/such/profile.json")
                .unwrap_err()
                .contains("/no/such/profile.json")
        );
        assert_eq!(
            parse_security_opt("no-new-privileges"),
            Ok(SecurityOpt::NoNewPrivileges)
        );
        assert!(parse_security_opt("no-new-privileges=false").is_err());
        assert!(parse_security_opt("apparmor=unconfined").is_err());
    }
}
