//! I/O backends: what turns a queued request into a loaded buffer.
//!
//! The loader loop (`crate::engine`) owns the rings and the batching policy
//! (`dispatch_n`, `idle_iters`); a backend only sees jobs and reports
//! completions. io_uring is the backend; a thread-pool fallback can stand
//! beside it behind the same trait without touching the rings.

pub mod uring;

use std::ffi::CStr;
use std::time::Duration;

/// One file to load.
pub struct Job {
    /// Global entry index; handed back in [`Done`].
    pub g: u32,
    /// NUL-terminated path. Valid until the job's `Done` is reported.
    pub path: *const libc::c_char,
    /// Destination buffer, `buf_len` bytes, 4 KiB aligned. Valid and
    /// exclusively the backend's until the job's `Done` is reported.
    pub buf: *mut u8,
    /// Size of `buf`: `max_file_size + 1` rounded up to 4 KiB.
    pub buf_len: u64,
}

impl Job {
    /// The path, for diagnostics.
    pub fn path(&self) -> &CStr {
        // SAFETY: `path` is NUL-terminated and valid while the job lives.
        unsafe { CStr::from_ptr(self.path) }
    }
}

/// A finished job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub g: u32,
    /// Bytes loaded, or the positive errno.
    pub result: Result<u64, i32>,
}

/// Counters a backend reports to the loader's stats.
#[derive(Default, Debug, Clone, Copy)]
pub struct BackendCounters {
    /// Files that asked for O_DIRECT but were read buffered.
    pub buffered_fallbacks: u64,
    /// Reads done with O_DIRECT.
    pub direct_reads: u64,
    /// Submissions (io_uring_enter calls that submitted something).
    pub batches: u64,
    /// System calls made.
    pub syscalls: u64,
}

/// The loader loop's view of an I/O engine.
pub trait Backend {
    /// Jobs that may still be pushed before the backend is full.
    fn room(&self) -> usize;
    /// Queues a job; it starts at the next [`Backend::submit`] (or earlier,
    /// for backends that cannot batch). The caller checked `room() > 0`.
    fn push(&mut self, job: Job);
    /// True when work that is not a new request (a follow-up step of a job)
    /// waits to be submitted; the loop submits it without waiting for
    /// `dispatch_n`.
    fn has_followups(&self) -> bool;
    /// Starts everything queued.
    fn submit(&mut self) -> std::io::Result<()>;
    /// Collects finished jobs into `out`, waiting up to `wait` for at least
    /// one when none is ready (`None`: do not wait).
    fn reap(&mut self, out: &mut Vec<Done>, wait: Option<Duration>) -> std::io::Result<()>;
    /// Jobs pushed and not yet reported done.
    fn in_flight(&self) -> usize;
    /// Asks in-flight work to stop early (shutdown that takes too long).
    fn cancel_all(&mut self);
    /// Counters since the last call (then reset).
    fn take_counters(&mut self) -> BackendCounters;
}
