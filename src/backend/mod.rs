//! I/O backends: what turns a queued request into a loaded buffer.
//!
//! The loader loop (`crate::engine`) owns the rings and the batching policy
//! (`dispatch_n`, `idle_iters`); a backend only sees jobs and reports
//! completions. io_uring is the backend; a thread-pool fallback stands
//! beside it behind the same trait without touching the rings.
//!
//! Both backends share the rules of [`plan`] (what may be read, and how)
//! and [`after_read`] (when a file is complete), and the lifetime rule of
//! their memory: a job's path and buffer are the backend's from
//! [`Backend::push`] until its [`Done`] (see [`Job::new`]). A backend that is
//! dropped with reads it could not stop (a blocked `pread`, a read in an
//! io-wq thread) keeps a keep-alive guard of that memory, given at
//! construction, for as long as the reads may still write.

pub mod range;
pub mod threads;
pub mod uring;

use std::ffi::CStr;
use std::time::Duration;

use crate::config::BUF_ALIGN;

/// One file to load: an entry index, a path and a destination buffer.
///
/// Built only by [`Job::new`], whose contract makes [`Backend::push`] safe:
/// a backend writes through `buf` and reads `path` while the job is in
/// flight, so those must be valid for as long as it may.
pub struct Job {
    /// Global entry index; handed back in [`Done`].
    g: u32,
    /// NUL-terminated path.
    path: *const libc::c_char,
    /// Destination buffer, `buf_len` bytes.
    buf: *mut u8,
    /// Size of `buf`: `max_file_size + 1` rounded up to 4 KiB, or the
    /// range's length for a destination.
    buf_len: u64,
    /// A byte range instead of the whole file.
    range: Option<Span>,
}

/// A byte range of a file, and where its bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte of the file to read.
    pub offset: u64,
    /// Bytes to read at most (fewer at end of file).
    pub len: u64,
    /// `buf` is the caller's destination, exactly `len` bytes: nothing may
    /// be written around it (no aligned superset for `O_DIRECT`).
    pub exact: bool,
}

impl Job {
    /// A job loading `path` into `buf[..buf_len]`, reported as `g`.
    ///
    /// `buf` should be 4 KiB aligned (direct reads of a misaligned buffer
    /// fail, they do not misbehave) and `buf_len` at least
    /// `max_file_size + 1`: a file that fills the buffer is `EFBIG`.
    ///
    /// # Safety
    ///
    /// From this call until the backend reports the job's [`Done`] — or, if
    /// the backend is dropped first, for as long as the keep-alive guard
    /// given to the backend's constructor lives (a blocked read may still
    /// complete into the buffer then):
    /// - `path` points to a NUL-terminated string that stays valid and
    ///   unchanged;
    /// - `buf` is valid for writes of `buf_len` bytes, and nothing else
    ///   reads or writes that memory (it is exclusively the backend's);
    /// - `buf_len` fits in `isize`.
    pub unsafe fn new(g: u32, path: *const libc::c_char, buf: *mut u8, buf_len: u64) -> Job {
        Job {
            g,
            path,
            buf,
            buf_len,
            range: None,
        }
    }

    /// This job reads `span` instead of the whole file. With `span.exact`,
    /// `buf_len` must be `span.len` (the destination); otherwise `buf` is an
    /// entry buffer and the data lands at [`Done::skip`] in it.
    pub fn with_range(mut self, span: Span) -> Job {
        debug_assert!(!span.exact || span.len == self.buf_len);
        self.range = Some(span);
        self
    }

    /// The path, for diagnostics.
    pub fn path(&self) -> &CStr {
        // SAFETY: `Job::new`'s contract: `path` is NUL-terminated and valid
        // while the job is in flight, and a Job exists only then.
        unsafe { CStr::from_ptr(self.path) }
    }
}

/// Keeps alive the memory jobs point into (for the loader: the shared
/// region, which holds the paths and buffers). A backend holds a clone for
/// as long as a read it abandoned at shutdown may still write into a
/// buffer, so that memory is never unmapped or handed to anyone else under
/// a late write. See [`Job::new`].
pub type KeepAlive = std::sync::Arc<dyn Send + Sync>;

/// A finished job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub g: u32,
    /// Bytes loaded, or the positive errno.
    pub result: Result<u64, i32>,
    /// Where in the buffer the data starts (an `O_DIRECT` range read the
    /// aligned span around the range into an entry buffer); 0 otherwise.
    pub skip: u32,
}

impl Done {
    /// A whole-file job's result (data at the start of the buffer).
    pub fn new(g: u32, result: Result<u64, i32>) -> Done {
        Done { g, result, skip: 0 }
    }
}

/// Counters a backend reports to the loader's stats.
#[derive(Default, Debug, Clone, Copy)]
pub struct BackendCounters {
    /// Files that asked for O_DIRECT but were read buffered.
    pub buffered_fallbacks: u64,
    /// Reads done with O_DIRECT.
    pub direct_reads: u64,
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
    /// Asks in-flight work to stop early (shutdown that takes too long):
    /// jobs not started yet and jobs interrupted by it complete with
    /// `ECANCELED` (or the errno the interrupted call returned), nothing is
    /// retried or continued afterwards.
    fn cancel_all(&mut self);
    /// Counters since the last call (then reset).
    fn take_counters(&mut self) -> BackendCounters;
    /// True for the io_uring backend.
    fn is_uring(&self) -> bool {
        false
    }
}

/// How to read a file, decided from its statx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Read with O_DIRECT.
    pub direct: bool,
    /// Length of the first read.
    pub req_len: u64,
    /// The size statx reported (procfs reports 0 for files with content).
    pub stat_size: u64,
    /// Direct I/O was asked for and the file system cannot do it.
    pub fallback: bool,
}

/// Classifies a statx result: `Err(errno)` for what must not be read
/// (`EISDIR`, `EINVAL` for anything not a regular file, `EFBIG` over the
/// limit), otherwise the plan for the first read into a `buf_len` buffer.
/// A direct read is sized to the file plus one byte, rounded up to the
/// file's offset alignment, so it neither zero-fills a large buffer nor
/// misses growth; it is used only when our 4 KiB-aligned buffers satisfy
/// the alignments statx reports.
pub fn plan(
    stx: &libc::statx,
    direct: bool,
    max_file_size: u64,
    buf_len: u64,
) -> Result<Plan, i32> {
    let fmt = stx.stx_mode as u32 & libc::S_IFMT;
    if fmt == libc::S_IFDIR {
        return Err(libc::EISDIR);
    }
    if fmt != libc::S_IFREG {
        return Err(libc::EINVAL);
    }
    let size = stx.stx_size;
    if size > max_file_size {
        return Err(libc::EFBIG);
    }
    let mut p = Plan {
        direct: false,
        req_len: buf_len,
        stat_size: size,
        fallback: false,
    };
    if direct {
        let has = stx.stx_mask & libc::STATX_DIOALIGN != 0;
        let (mem, off) = (
            stx.stx_dio_mem_align as u64,
            stx.stx_dio_offset_align as u64,
        );
        if has && mem != 0 && off != 0 && mem <= BUF_ALIGN && off <= BUF_ALIGN {
            p.direct = true;
            p.req_len = ((size + 1).div_ceil(off) * off).min(buf_len);
        } else {
            p.fallback = true;
        }
    }
    Ok(p)
}

/// What to do after a read of `n` bytes at `offset` that asked for `req_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The file is complete: `total` bytes.
    Done(u64),
    /// Read on, buffered, at `offset` for `len` bytes.
    Continue { offset: u64, len: u64 },
    /// The file holds more than `max_file_size` bytes.
    TooBig,
}

/// Decides whether a file is complete after a read of `n` bytes at
/// `offset` that asked for `req_len`.
///
/// A short read is end of file only when a further read returns 0: procfs,
/// sysfs, FUSE and network file systems return less than asked (procfs at
/// most a page per read) long before the end. So the file is complete when
/// a read returns 0, or — the common case, which must not pay one more
/// read — when a short read reaches a nonzero stat size. A read that filled
/// its request (a file that grew, or a direct read sized to the file), a
/// short read before the stat size, and any read of a file whose stat size
/// is 0 continue at the offset reached. Anything past `max_file_size` is
/// `TooBig`; since `buf_len > max_file_size`, a continuation always has
/// room to read one byte more than the limit.
pub fn after_read(
    offset: u64,
    n: u64,
    req_len: u64,
    stat_size: u64,
    max_file_size: u64,
    buf_len: u64,
) -> Next {
    let total = offset + n;
    if total > max_file_size || total >= buf_len {
        return Next::TooBig;
    }
    let filled = n == req_len;
    let eof = n == 0 || (!filled && stat_size > 0 && total >= stat_size);
    if eof {
        return Next::Done(total);
    }
    Next::Continue {
        offset: total,
        len: buf_len - total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stx(mode: u32, size: u64, dio: Option<(u32, u32)>) -> libc::statx {
        // SAFETY: statx is plain old data.
        let mut s: libc::statx = unsafe { std::mem::zeroed() };
        s.stx_mode = mode as u16;
        s.stx_size = size;
        if let Some((m, o)) = dio {
            s.stx_mask |= libc::STATX_DIOALIGN;
            s.stx_dio_mem_align = m;
            s.stx_dio_offset_align = o;
        }
        s
    }

    #[test]
    fn plans() {
        let reg = libc::S_IFREG | 0o644;
        assert_eq!(
            plan(&stx(libc::S_IFDIR, 0, None), false, 100, 4096),
            Err(libc::EISDIR)
        );
        assert_eq!(
            plan(&stx(libc::S_IFIFO, 0, None), false, 100, 4096),
            Err(libc::EINVAL)
        );
        assert_eq!(
            plan(&stx(libc::S_IFCHR, 0, None), false, 100, 4096),
            Err(libc::EINVAL)
        );
        assert_eq!(
            plan(&stx(reg, 101, None), false, 100, 4096),
            Err(libc::EFBIG)
        );
        let p = plan(&stx(reg, 100, None), false, 100, 4096).unwrap();
        assert_eq!((p.direct, p.req_len, p.fallback), (false, 4096, false));
        let p = plan(&stx(reg, 100, None), true, 100, 4096).unwrap();
        assert_eq!((p.direct, p.fallback), (false, true));
        let p = plan(&stx(reg, 5000, Some((512, 512))), true, 1 << 20, 1 << 21).unwrap();
        assert_eq!((p.direct, p.req_len), (true, 5120));
        let p = plan(&stx(reg, 4096, Some((4, 4096))), true, 1 << 20, 1 << 21).unwrap();
        assert_eq!(p.req_len, 8192, "one byte more than the size, aligned");
        let p = plan(&stx(reg, 4096, Some((8192, 8192))), true, 1 << 20, 1 << 21).unwrap();
        assert!(!p.direct && p.fallback, "alignment our buffers cannot meet");
    }

    #[test]
    fn reads_complete_continue_or_overflow() {
        // EOF before the request is filled, at the stat size: no extra read.
        assert_eq!(after_read(0, 10, 4096, 10, 100, 4096), Next::Done(10));
        // A file that grew a little since its statx: still one read.
        assert_eq!(after_read(0, 12, 4096, 10, 100, 4096), Next::Done(12));
        // procfs: stat size 0, content found; only a read of 0 ends it.
        assert_eq!(
            after_read(0, 700, 4096, 0, 4000, 4096),
            Next::Continue {
                offset: 700,
                len: 3396
            }
        );
        assert_eq!(after_read(700, 0, 3396, 0, 4000, 4096), Next::Done(700));
        // procfs over the limit, page by page.
        assert_eq!(after_read(3000, 1001, 1096, 0, 4000, 4096), Next::TooBig);
        // Filled a direct request sized to the file: there may be more.
        assert_eq!(
            after_read(0, 512, 512, 100, 4000, 4096),
            Next::Continue {
                offset: 512,
                len: 3584
            }
        );
        // Interrupted before the stat size.
        assert_eq!(
            after_read(0, 100, 4096, 300, 4000, 4096),
            Next::Continue {
                offset: 100,
                len: 3996
            }
        );
        // The file shrank: a read of 0 before the stat size ends it.
        assert_eq!(after_read(100, 0, 3996, 300, 4000, 4096), Next::Done(100));
        assert_eq!(after_read(0, 4001, 4096, 10, 4000, 4096), Next::TooBig);
        assert_eq!(after_read(4000, 0, 96, 4000, 4000, 4096), Next::Done(4000));
        // An empty file: one read of 0.
        assert_eq!(after_read(0, 0, 4096, 0, 4000, 4096), Next::Done(0));
    }
}
