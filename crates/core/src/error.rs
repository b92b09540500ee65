//! The error type shared by every crate, and its mapping to process exit codes.

use std::path::PathBuf;

/// Process exit codes, as the reference CLI defines them.
pub mod exit {
    pub const OK: i32 = 0;
    pub const TRANSPORT: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 4;
    pub const WAIT_TIMEOUT: i32 = 5;
    pub const SYNC: i32 = 6;
    pub const INTERRUPTED: i32 = 130;
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure crabbox reports. Messages name the file, lease or sandbox involved and,
/// where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags, bad config values, unsupported options: exit 2.
    #[error("{0}")]
    Usage(String),
    /// A config file that does not parse or has a value of the wrong type: exit 2.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Config {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// Unknown lease/sandbox, or one that is not ours: exit 4.
    #[error("{0}")]
    NotFound(String),
    /// `status --wait` gave up: exit 5.
    #[error("{0}")]
    WaitTimeout(String),
    /// The working tree could not be synced (too large, unreadable, extraction failed): exit 6.
    #[error("{0}")]
    Sync(String),
    /// Network or provider failure: exit 1.
    #[error("{0}")]
    Transport(String),
    /// Local I/O failure while doing something to a path: exit 1.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The user interrupted (Ctrl-C / SIGTERM): exit 130.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config { .. } => exit::USAGE,
            Error::NotFound(_) => exit::NOT_FOUND,
            Error::WaitTimeout(_) => exit::WAIT_TIMEOUT,
            Error::Sync(_) => exit::SYNC,
            Error::Transport(_) | Error::Io { .. } => exit::TRANSPORT,
            Error::Interrupted => exit::INTERRUPTED,
        }
    }

    /// Wraps an I/O error with what was being done to which path.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}
