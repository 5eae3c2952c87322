//! The crate's error type: an errno plus a human explanation.
//!
//! Every failure the engine reports maps to one errno, because the C ABI
//! returns `-errno` and Python raises the matching `OSError` subclass. The
//! kind is an enum that may grow (`#[non_exhaustive]`).

use std::borrow::Cow;
use std::fmt;

use crate::config::ConfigError;

/// What went wrong, in categories a caller may act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The worker has `queue_depth` requests outstanding (`EAGAIN`).
    QueueFull,
    /// The path does not fit in an entry (`ENAMETOOLONG`).
    PathTooLong,
    /// The path is empty or holds a NUL byte (`EINVAL`).
    InvalidPath,
    /// A configuration field is out of range (`EINVAL`).
    InvalidConfig,
    /// An argument such as a worker id is out of range (`EINVAL`).
    InvalidArgument,
    /// The loader was shut down (`ESHUTDOWN`).
    Shutdown,
    /// The loader process or threads died (`EOWNERDEAD`).
    LoaderDead,
    /// A wait ran out of time (`ETIMEDOUT`).
    TimedOut,
    /// The loader is already running, or cannot run in this state (`EBUSY`).
    Busy,
    /// A system call failed; see the errno.
    Os,
}

/// An error with its errno (positive) and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    errno: i32,
    msg: Cow<'static, str>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, msg: impl Into<Cow<'static, str>>) -> Self {
        let errno = match kind {
            ErrorKind::QueueFull => libc::EAGAIN,
            ErrorKind::PathTooLong => libc::ENAMETOOLONG,
            ErrorKind::InvalidPath | ErrorKind::InvalidConfig | ErrorKind::InvalidArgument => {
                libc::EINVAL
            }
            ErrorKind::Shutdown => libc::ESHUTDOWN,
            ErrorKind::LoaderDead => libc::EOWNERDEAD,
            ErrorKind::TimedOut => libc::ETIMEDOUT,
            ErrorKind::Busy => libc::EBUSY,
            ErrorKind::Os => libc::EIO,
        };
        Error {
            kind,
            errno,
            msg: msg.into(),
        }
    }

    /// An OS error with its errno, `what` says which operation failed.
    pub(crate) fn os(errno: i32, what: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind: ErrorKind::Os,
            errno,
            msg: what.into(),
        }
    }

    /// The category.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The errno, positive (the C ABI returns its negation).
    pub fn errno(&self) -> i32 {
        self.errno
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.msg,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::new(ErrorKind::InvalidConfig, e.to_string())
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(
            std::io::Error::from_raw_os_error(e.errno).kind(),
            e.to_string(),
        )
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
