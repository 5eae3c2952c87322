//! Byte-range jobs (`Worker::request_range`, `Worker::request_into`): what
//! both backends share.
//!
//! A range is read from a file opened once for all the ranges of it that
//! arrive close together: a [`FileCache`] keeps each file open while a
//! range of it is in flight and for [`IDLE_CLOSE`] after the last one, so a
//! tar shard's thousand members cost one path walk and one open, not a
//! thousand. The open itself is the careful one (`O_NONBLOCK`, so a FIFO
//! cannot block it, then a `statx` of the open file that refuses anything
//! but a regular file), done once per file.
//!
//! A range is read in pieces of at most [`CHUNK`] bytes (several at once on
//! io_uring), each continued after a short read until it is complete or a
//! read returns 0 (end of file, also for a file that shrank meanwhile). The
//! result is the bytes actually read from the range's start, never more than
//! asked. With `O_DIRECT`, a range into an entry buffer reads the aligned
//! span around it and reports where the range starts in the buffer
//! ([`RangePlan::skip`]); a destination (exact memory) is read directly only
//! when its offset, length and address are all aligned, and buffered
//! otherwise (counted as a buffered fallback).

use std::ffi::{CStr, OsStr};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{BackendCounters, Span};
use crate::config::BUF_ALIGN;

/// Largest single read of a range (direct reads stay aligned: a multiple of
/// every `STATX_DIOALIGN` offset alignment we accept).
pub const CHUNK: u64 = 1 << 20;
/// How long a file stays open after its last range completed, for the
/// ranges that follow (ns).
pub const IDLE_CLOSE_NS: u64 = 2_000_000;
/// Idle files kept open at most (files with ranges in flight are not
/// counted).
const IDLE_KEEP: usize = 8;

/// A file opened for ranges.
pub struct RangeFile {
    pub file: File,
    /// Opened with `O_DIRECT`.
    pub direct: bool,
    /// `STATX_DIOALIGN` of the file (memory, offset), when direct.
    pub mem_align: u64,
    pub off_align: u64,
}

/// Opens `path` for range reads: read-only, `O_NOCTTY | O_NONBLOCK`
/// (`O_CLOEXEC` from std), `O_DIRECT` when asked and the file system can
/// do it with our 4 KiB alignment (a buffered open otherwise, counted as a
/// fallback). `EISDIR` for a directory, `EINVAL` for anything else that is
/// not a regular file.
pub fn open(path: &CStr, direct: bool, c: &mut BackendCounters) -> Result<RangeFile, i32> {
    let p = Path::new(OsStr::from_bytes(path.to_bytes()));
    let open_with = |direct: bool, c: &mut BackendCounters| -> Result<File, i32> {
        let mut flags = libc::O_NOCTTY | libc::O_NONBLOCK;
        if direct {
            flags |= libc::O_DIRECT;
        }
        c.syscalls += 1;
        OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(p)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    };
    let (file, opened_direct) = match open_with(direct, c) {
        Err(libc::EINVAL) if direct => {
            c.buffered_fallbacks += 1;
            (open_with(false, c)?, false)
        }
        r => (r?, direct),
    };
    let stx = fstatx(&file, opened_direct, c)?;
    let fmt = stx.stx_mode as u32 & libc::S_IFMT;
    if fmt == libc::S_IFDIR {
        return Err(libc::EISDIR);
    }
    if fmt != libc::S_IFREG {
        return Err(libc::EINVAL);
    }
    if opened_direct {
        let (mem, off) = (
            stx.stx_dio_mem_align as u64,
            stx.stx_dio_offset_align as u64,
        );
        let usable = stx.stx_mask & libc::STATX_DIOALIGN != 0
            && mem != 0
            && off != 0
            && mem <= BUF_ALIGN
            && off <= BUF_ALIGN;
        if usable {
            return Ok(RangeFile {
                file,
                direct: true,
                mem_align: mem,
                off_align: off,
            });
        }
        c.buffered_fallbacks += 1;
        let file = open_with(false, c)?;
        return Ok(RangeFile {
            file,
            direct: false,
            mem_align: 1,
            off_align: 1,
        });
    }
    Ok(RangeFile {
        file,
        direct: false,
        mem_align: 1,
        off_align: 1,
    })
}

fn fstatx(file: &File, direct: bool, c: &mut BackendCounters) -> Result<libc::statx, i32> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let mut mask = libc::STATX_TYPE;
    if direct {
        mask |= libc::STATX_DIOALIGN;
    }
    c.syscalls += 1;
    // SAFETY: an open descriptor, an empty C string with AT_EMPTY_PATH (the
    // descriptor itself) and a local statx buffer.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            mask,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(stx)
}

/// How a range is read: the file span `start..end` into the buffer's
/// first `end - start` bytes, the range's data at `skip` in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangePlan {
    pub start: u64,
    pub end: u64,
    pub skip: u64,
    pub direct: bool,
}

impl RangePlan {
    /// The plan for `span` into `buf` (`buf_len` bytes) from `file`.
    /// `Err(EFBIG)` when the range does not fit an entry buffer.
    pub fn new(span: Span, buf: *const u8, buf_len: u64, file: &RangeFile) -> Result<Self, i32> {
        let want_end = span.offset + span.len;
        if span.len > buf_len {
            return Err(libc::EFBIG);
        }
        let buffered = RangePlan {
            start: span.offset,
            end: want_end,
            skip: 0,
            direct: false,
        };
        if !file.direct || span.len == 0 {
            return Ok(buffered);
        }
        let a = file.off_align;
        if span.exact {
            let aligned = span.offset.is_multiple_of(a)
                && span.len.is_multiple_of(a)
                && (buf as u64).is_multiple_of(file.mem_align);
            return Ok(if aligned {
                RangePlan {
                    direct: true,
                    ..buffered
                }
            } else {
                buffered
            });
        }
        let start = span.offset / a * a;
        let end = want_end.div_ceil(a) * a;
        if end - start > buf_len || !(buf as u64).is_multiple_of(file.mem_align) {
            return Ok(buffered);
        }
        Ok(RangePlan {
            start,
            end,
            skip: span.offset - start,
            direct: true,
        })
    }

    /// The range's result once every byte below `eof` (the first end of
    /// file seen, `u64::MAX` if none) up to `end` was read: its length.
    pub fn result(&self, span: Span, eof: u64) -> u64 {
        (span.offset + span.len)
            .min(eof)
            .saturating_sub(span.offset)
    }
}

struct Cached {
    path: Box<[u8]>,
    want_direct: bool,
    rf: RangeFile,
    /// Ranges in flight using it.
    users: u32,
    /// When the last user finished (ns, CLOCK_MONOTONIC).
    idle_since: u64,
}

/// Files open for ranges, by path (see the module doc). Indices are stable
/// while a file has users.
#[derive(Default)]
pub struct FileCache {
    files: Vec<Option<Cached>>,
    /// Every range opens its own file, closed when it completes
    /// (`ASYNCLOADER_RANGE_OPEN=each`, for measurements).
    open_each: bool,
}

impl FileCache {
    /// A cache that shares opens, or (`open_each`) one that opens a file
    /// per range.
    pub fn new(open_each: bool) -> Self {
        FileCache {
            files: Vec::new(),
            open_each,
        }
    }

    /// The open file for `path` (opening it if needed), with one more user.
    pub fn get(
        &mut self,
        path: &CStr,
        want_direct: bool,
        c: &mut BackendCounters,
    ) -> Result<usize, i32> {
        let key = path.to_bytes();
        let shared = if self.open_each {
            None
        } else {
            self.files.iter().position(|f| {
                f.as_ref()
                    .is_some_and(|f| f.want_direct == want_direct && *f.path == *key)
            })
        };
        if let Some(i) = shared {
            if let Some(f) = self.files[i].as_mut() {
                f.users += 1;
            }
            return Ok(i);
        }
        let rf = open(path, want_direct, c)?;
        let entry = Cached {
            path: key.into(),
            want_direct,
            rf,
            users: 1,
            idle_since: 0,
        };
        match self.files.iter().position(Option::is_none) {
            Some(i) => {
                self.files[i] = Some(entry);
                Ok(i)
            }
            None => {
                self.files.push(Some(entry));
                Ok(self.files.len() - 1)
            }
        }
    }

    /// File `i` (from [`get`](Self::get), not yet [`put`](Self::put)).
    pub fn file(&self, i: usize) -> &RangeFile {
        &self.files[i].as_ref().expect("a file in use").rf
    }

    /// One user of file `i` is done, at `now`.
    pub fn put(&mut self, i: usize, now: u64) {
        if let Some(f) = self.files[i].as_mut() {
            f.users -= 1;
            if f.users == 0 {
                f.idle_since = now;
                if self.open_each {
                    self.files[i] = None;
                }
            }
        }
        self.trim(now);
    }

    /// Closes files idle for [`IDLE_CLOSE_NS`] (all idle ones with `now`
    /// = `u64::MAX`), and the oldest idle ones beyond [`IDLE_KEEP`].
    pub fn trim(&mut self, now: u64) {
        let mut idle = 0;
        for slot in self.files.iter_mut() {
            if let Some(f) = slot
                && f.users == 0
            {
                if now.saturating_sub(f.idle_since) >= IDLE_CLOSE_NS {
                    *slot = None;
                } else {
                    idle += 1;
                }
            }
        }
        while idle > IDLE_KEEP {
            let oldest = self
                .files
                .iter()
                .enumerate()
                .filter_map(|(i, f)| {
                    f.as_ref()
                        .filter(|f| f.users == 0)
                        .map(|f| (f.idle_since, i))
                })
                .min();
            match oldest {
                Some((_, i)) => self.files[i] = None,
                None => break,
            }
            idle -= 1;
        }
    }

    /// True when some file is open.
    pub fn is_empty(&self) -> bool {
        self.files.iter().all(Option::is_none)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rf(direct: bool, a: u64) -> RangeFile {
        RangeFile {
            file: File::open("/proc/self/stat").unwrap(),
            direct,
            mem_align: a,
            off_align: a,
        }
    }

    #[test]
    fn plans_buffered_aligned_and_exact() {
        let buf = 4096 as *const u8;
        let s = |offset, len, exact| Span { offset, len, exact };
        let p = RangePlan::new(s(100, 50, false), buf, 8192, &rf(false, 1)).unwrap();
        assert_eq!((p.start, p.end, p.skip, p.direct), (100, 150, 0, false));
        let p = RangePlan::new(s(5000, 100, false), buf, 8192, &rf(true, 4096)).unwrap();
        assert_eq!((p.start, p.end, p.skip, p.direct), (4096, 8192, 904, true));
        // The aligned span does not fit: buffered.
        let p = RangePlan::new(s(4000, 8000, false), buf, 8192, &rf(true, 4096)).unwrap();
        assert!(!p.direct);
        assert_eq!(
            RangePlan::new(s(0, 8193, false), buf, 8192, &rf(false, 1)),
            Err(libc::EFBIG)
        );
        let p = RangePlan::new(s(8192, 4096, true), buf, 4096, &rf(true, 512)).unwrap();
        assert!(p.direct && p.skip == 0);
        let p = RangePlan::new(s(8192, 4000, true), buf, 4000, &rf(true, 512)).unwrap();
        assert!(
            !p.direct,
            "an unaligned length into exact memory reads buffered"
        );
        assert_eq!(p.result(s(8192, 4000, true), u64::MAX), 4000);
        assert_eq!(p.result(s(8192, 4000, true), 9000), 808);
        assert_eq!(p.result(s(8192, 4000, true), 100), 0);
    }
}
