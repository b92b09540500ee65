//! The error type shared by every crate, and its mapping to process exit codes.

use std::path::PathBuf;

use crate::hint::Hint;

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
    /// A box whose tags do not prove it is the lease's (or crabbox's): exit 4. Never used,
    /// never deleted.
    #[error("{0}")]
    NotOurs(String),
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
    /// Another error with what to do about it; keeps that error's kind and exit code. Front
    /// ends render the hint in their own terms (a command line, a tool call).
    #[error("{error}")]
    Hinted { error: Box<Error>, hint: Hint },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config { .. } => exit::USAGE,
            Error::NotFound(_) | Error::NotOurs(_) => exit::NOT_FOUND,
            Error::WaitTimeout(_) => exit::WAIT_TIMEOUT,
            Error::Sync(_) => exit::SYNC,
            Error::Transport(_) | Error::Io { .. } => exit::TRANSPORT,
            Error::Interrupted => exit::INTERRUPTED,
            Error::Hinted { error, .. } => error.exit_code(),
        }
    }

    /// This error with `hint` attached; kind and exit code unchanged.
    pub fn with_hint(self, hint: Hint) -> Error {
        Error::Hinted {
            error: Box::new(self),
            hint,
        }
    }

    /// The error under any hints.
    pub fn root(&self) -> &Error {
        match self {
            Error::Hinted { error, .. } => error.root(),
            other => other,
        }
    }

    /// Every hint attached, outermost first.
    pub fn hints(&self) -> Vec<&Hint> {
        let mut out = Vec::new();
        let mut e = self;
        while let Error::Hinted { error, hint } = e {
            out.push(hint);
            e = error;
        }
        out
    }

    /// The user interrupted, whatever hints are attached.
    pub fn is_interrupted(&self) -> bool {
        matches!(self.root(), Error::Interrupted)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_keeps_the_kind_and_exit_code() {
        let e = Error::Config {
            path: "/r/.crabbox.yaml".into(),
            line: Some(3),
            message: "bad".into(),
        }
        .with_hint(Hint::List {
            provider: "e2b".into(),
        });
        assert_eq!(e.exit_code(), exit::USAGE);
        assert_eq!(e.to_string(), "/r/.crabbox.yaml:3: bad");
        assert_eq!(e.hints().len(), 1);
        assert!(matches!(e.root(), Error::Config { .. }));
        assert!(Error::Interrupted
            .with_hint(Hint::List {
                provider: "local".into()
            })
            .is_interrupted());
    }
}
