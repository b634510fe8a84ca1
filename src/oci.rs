//! The parts of the OCI runtime spec an OCI hook needs: the state a runtime passes on the hook's stdin
//! (`{"ociVersion", "id", "status", "pid", "bundle", "annotations"}`) and the bundle's `config.json`
//! (`root.path`, absolute or relative to the bundle).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The annotation that opts a container in (`true`) or, with the all-containers hook, out (`false`).
pub const ENABLE_ANNOTATION: &str = "io.vproc.enable";

/// The container state a runtime writes to a hook's stdin.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct State {
    pub id: String,
    /// The container's init in the runtime's pid namespace; absent before creation and after exit.
    pub pid: Option<u32>,
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Config {
    root: Option<Root>,
}

#[derive(Debug, Deserialize)]
struct Root {
    path: PathBuf,
}

/// Why the OCI input could not be used.
#[derive(Debug)]
pub enum OciError {
    State(serde_json::Error),
    Config { path: PathBuf, detail: String },
    NoPid { id: String },
}

impl fmt::Display for OciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OciError::State(e) => write!(f, "cannot parse the OCI state on stdin: {e}"),
            OciError::Config { path, detail } => {
                write!(f, "cannot read root.path from {}: {detail}", path.display())
            }
            OciError::NoPid { id } => write!(
                f,
                "the OCI state of container {id} has no pid (wrong hook stage?)"
            ),
        }
    }
}

impl std::error::Error for OciError {}

impl State {
    /// Parses the state JSON.
    pub fn parse(json: &str) -> Result<State, OciError> {
        serde_json::from_str(json).map_err(OciError::State)
    }

    /// The container's init pid, required at the createRuntime and createContainer stages.
    pub fn pid(&self) -> Result<u32, OciError> {
        self.pid.filter(|p| *p > 0).ok_or_else(|| OciError::NoPid {
            id: self.id.clone(),
        })
    }

    /// `Some(false)` when the container says `io.vproc.enable=false`, `Some(true)` for `true`.
    pub fn enabled(&self) -> Option<bool> {
        match self
            .annotations
            .get(ENABLE_ANNOTATION)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            Some(v) if v == "false" || v == "0" || v == "no" => Some(false),
            Some(v) if v == "true" || v == "1" || v == "yes" => Some(true),
            _ => None,
        }
    }

    /// The container's root filesystem path, as the runtime's (and, before pivot_root, the container's)
    /// mount namespace sees it.
    pub fn rootfs(&self) -> Result<PathBuf, OciError> {
        let path = self.bundle.join("config.json");
        let error = |detail: String| OciError::Config {
            path: path.clone(),
            detail,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
        rootfs_from_config(&self.bundle, &text).map_err(error)
    }
}

/// `root.path` of a config.json, resolved against the bundle; the spec's default is `rootfs`.
pub fn rootfs_from_config(bundle: &Path, config_json: &str) -> Result<PathBuf, String> {
    let config: Config = serde_json::from_str(config_json).map_err(|e| e.to_string())?;
    let path = config
        .root
        .map_or_else(|| PathBuf::from("rootfs"), |r| r.path);
    Ok(if path.is_absolute() {
        path
    } else {
        bundle.join(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_runc_state() {
        let state = State::parse(
            r#"{"ociVersion":"1.0.2-dev","id":"c1","status":"creating","pid":4242,
                "bundle":"/run/containers/c1/userdata","annotations":{"io.vproc.enable":"true","x":"y"}}"#,
        )
        .unwrap();
        assert_eq!(state.pid().unwrap(), 4242);
        assert_eq!(state.enabled(), Some(true));
        assert_eq!(state.bundle, PathBuf::from("/run/containers/c1/userdata"));
    }

    #[test]
    fn missing_pid_and_annotations() {
        let state =
            State::parse(r#"{"ociVersion":"1.0.2","id":"c2","status":"stopped","bundle":"/b"}"#)
                .unwrap();
        assert!(state.pid().is_err());
        assert_eq!(state.enabled(), None);
        assert!(State::parse("not json").is_err());
    }

    #[test]
    fn root_paths() {
        let bundle = Path::new("/b");
        assert_eq!(
            rootfs_from_config(bundle, r#"{"root":{"path":"rootfs"}}"#).unwrap(),
            PathBuf::from("/b/rootfs")
        );
        assert_eq!(
            rootfs_from_config(bundle, r#"{"root":{"path":"/var/lib/containers/storage/overlay/x/merged","readonly":false}}"#).unwrap(),
            PathBuf::from("/var/lib/containers/storage/overlay/x/merged")
        );
        assert_eq!(
            rootfs_from_config(bundle, "{}").unwrap(),
            PathBuf::from("/b/rootfs")
        );
    }
}
