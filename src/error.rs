//! The crate's error type: every error names the file and, for parse errors, the value it could not read.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// An error from reading kernel files or from resolving a reader.
#[derive(Debug)]
pub enum Error {
    /// A kernel file could not be read.
    Io { path: PathBuf, source: io::Error },
    /// A kernel file held a value we could not parse.
    Parse {
        path: PathBuf,
        field: &'static str,
        value: String,
    },
    /// A required field was missing from a kernel file.
    MissingField { path: PathBuf, field: &'static str },
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: &Path, source: io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A value in `path` that is not what the kernel documents for `field`.
    pub fn parse(path: &Path, field: &'static str, value: &str) -> Self {
        Error::Parse {
            path: path.to_path_buf(),
            field,
            value: value.chars().take(64).collect(),
        }
    }

    /// True when the error means the process (or its /proc entry) is gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. }
            if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH))
    }

    /// True when the daemon itself ran out of something (its fds, memory): its own fault, whatever the
    /// reader did. Other errors (an odd cgroup name, a process that entered a namespace with setns) can
    /// be caused by a container and must not make the daemon look unhealthy; so can ENFILE, the node's
    /// file table, which any container can fill.
    pub fn is_resource_exhaustion(&self) -> bool {
        matches!(self, Error::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENOMEM)))
    }

    /// A short, stable description of the cause, without the pid-specific path, used to log a cause once.
    pub fn cause_key(&self) -> String {
        match self {
            Error::Io { path, source } => format!("io:{}:{}", file_name(path), source.kind()),
            Error::Parse { path, field, .. } => format!("parse:{}:{field}", file_name(path)),
            Error::MissingField { path, field } => format!("missing:{}:{field}", file_name(path)),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Parse { path, field, value } => {
                write!(f, "{}: cannot parse {field} from {value:?}", path.display())
            }
            Error::MissingField { path, field } => {
                write!(f, "{}: no {field} field", path.display())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Reads a whole kernel file into a string, naming the path on error.
pub fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}
