//! `al_worker`: requesting files and getting entries.

use std::ffi::{c_char, c_int, c_void};
use std::time::Duration;

use super::entry::{al_batch_item, al_entry};
use super::handles::Table;
use super::panic::{Errno, ffi_boundary};
use super::ptr::{put, put_span, try_bytes, try_cstr, try_out, try_path_bytes};

use crate::error::Result;
use crate::loader::LoaderState;
use crate::process::fork_epoch;
use crate::worker::{Dest, Entry, Worker};

/// A worker's handle: requests files and receives entries.
///
/// Thread-safety: every function taking an `al_worker *` may run in several
/// threads at once (the queues are multi-producer/multi-consumer), except
/// `al_worker_free`; the usual pattern is still one worker id per thread or
/// process.
///
/// Lifetime: from `al_loader_worker` to `al_worker_free`. It does not need
/// its `al_loader` handle to stay alive (it maps the shared memory itself),
/// and entries it delivered stay valid after `al_worker_free` until each is
/// released. A process forked while holding it gets its own copy, usable in
/// the child; entries are per copy, and entries inherited across `fork`
/// stay the parent's (see `al_entry_release`).
pub struct al_worker {
    // Opaque to C; an `al_worker *` is really the `Arc::into_raw` pointer
    // of a `handles::Table<Worker>` (see src/ffi/handles.rs).
    _opaque: [u8; 0],
}

/// The table behind `al_worker *`.
type WorkerTable = Table<Worker>;

/// A new worker handle for `worker`.
pub(crate) fn new_handle(worker: Worker) -> *mut al_worker {
    let first = worker.entry_indices().start;
    let qd = worker.queue_depth();
    Table::new_raw(worker, first, qd).cast_mut().cast()
}

/// Turns an engine `Entry` into a handle in `w`'s table (the handle owns
/// it from then on: `al_entry_release` gives it back). On failure (an entry
/// of another worker: only a tampered region) the entry is dropped, which
/// releases it.
fn deliver(w: &WorkerTable, e: Entry) -> Result<*mut al_entry, Errno> {
    let (g, generation) = e.raw_parts();
    let slot = w.deliver(g, generation, fork_epoch())?;
    let _ = e.into_raw_parts();
    Ok(slot.cast_mut().cast())
}

/// A worker handle that is not NULL and not freed.
///
/// # Safety
///
/// `w` is NULL or a worker handle that still exists.
unsafe fn handle<'a>(w: *const al_worker) -> Result<&'a WorkerTable, Errno> {
    // SAFETY: the caller's promise; `al_worker *` is a table pointer.
    unsafe { Table::get(w.cast::<WorkerTable>()) }
}

fn wait(w: &Worker, timeout_ns: i64) -> Result<Entry> {
    if timeout_ns < 0 {
        w.wait_get()
    } else {
        w.wait_get_timeout(Duration::from_nanos(timeout_ns as u64))
    }
}

/// `try_get` that tells "nothing yet" (`EAGAIN`) from "nothing ever again".
fn try_get(w: &Worker) -> Result<Option<Entry>, Errno> {
    if let Some(e) = w.try_get() {
        return Ok(Some(e));
    }
    let st = w.loader_state();
    if st == LoaderState::Stopped || st == LoaderState::Dead {
        // A completion may have landed just before the state changed.
        return match w.try_get() {
            Some(e) => Ok(Some(e)),
            None if st == LoaderState::Dead => Err(Errno(libc::EOWNERDEAD)),
            None => Err(Errno(libc::ESHUTDOWN)),
        };
    }
    Ok(None)
}

/// Runs `f` with a counter starting at 0 and stores the final count in
/// `count` whether `f` succeeds or fails: the "how many were done" output
/// of the batch calls.
fn counted(
    count: Option<&mut usize>,
    f: impl FnOnce(&mut usize) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let mut n = 0usize;
    let r = f(&mut n);
    if let Some(c) = count {
        *c = n;
    }
    r
}

/// Frees the handle. Entries it delivered stay valid until released. NULL
/// and a second call (while its entries keep it alive) are ignored.
///
/// # Safety
///
/// `w` is NULL or a worker handle that still exists and that no other
/// thread is using; afterwards only its entries may be used.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_free(w: *mut al_worker) {
    ffi_boundary!(() => {
        // SAFETY: NULL or existing, used by nobody else (caller).
        unsafe { Table::free(w.cast_const().cast::<WorkerTable>()) };
    })
}

/// This worker's id; `UINT32_MAX` for NULL or a freed handle.
///
/// # Safety
///
/// `w` is NULL or a worker handle that still exists.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_id(w: *const al_worker) -> u32 {
    ffi_boundary!(u32::MAX => {
        // SAFETY: the caller's promise.
        unsafe { handle(w) }.map_or(u32::MAX, |w| w.payload().id())
    })
}

/// Requests outstanding on this worker id (queued, in flight, or delivered
/// and not released; at most `queue_depth`): `queue_depth` minus this is
/// how many `al_worker_request` calls can succeed now. 0 for NULL.
///
/// # Safety
///
/// `w` is NULL or a worker handle that still exists.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_outstanding(w: *const al_worker) -> u32 {
    ffi_boundary!(0 => {
        // SAFETY: the caller's promise.
        unsafe { handle(w) }.map_or(0, |w| w.payload().outstanding())
    })
}

/// Requests the file at `path` (a NUL-terminated byte string, any encoding).
/// Returns 0 when queued; `-EAGAIN` when `queue_depth` requests are
/// outstanding (get and release entries, then retry); `-ENAMETOOLONG`
/// (4096 bytes or more); `-EINVAL` (NULL, empty path, freed handle);
/// `-ESHUTDOWN`/`-EOWNERDEAD` when the loader is gone. A file that cannot
/// be loaded is not an error here: its entry carries the errno.
/// The path is copied; the caller keeps ownership of `path`.
///
/// # Safety
///
/// `w` is NULL or a worker handle that still exists; `path` is NULL or
/// NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_request(w: *mut al_worker, path: *const c_char) -> c_int {
    ffi_boundary!(int {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        // SAFETY: NULL or NUL-terminated (caller).
        let p = unsafe { try_cstr(path) }?;
        Ok(w.payload().request_bytes(p.to_bytes())?)
    })
}

/// As `al_worker_request`, for a path given as `len` bytes at `path`, with
/// no terminating NUL needed (a NUL inside is `-EINVAL`).
///
/// # Safety
///
/// `w` as for `al_worker_request`; `path` is NULL or valid for reading
/// `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_request_bytes(
    w: *mut al_worker,
    path: *const u8,
    len: usize,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        // SAFETY: NULL or `len` readable bytes (caller).
        let p = unsafe { try_path_bytes(path, len) }?;
        Ok(w.payload().request_bytes(p)?)
    })
}

/// As `al_worker_request_bytes`, with a `tag` of the caller's (an index
/// into its own list of paths, a sample id...) that the entry returns
/// (`al_entry_tag`, `al_batch_item.tag`), so that a consumer matches
/// entries to requests without comparing paths.
///
/// # Safety
///
/// As `al_worker_request_bytes`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_request_tagged(
    w: *mut al_worker,
    path: *const u8,
    len: usize,
    tag: u64,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        // SAFETY: NULL or `len` readable bytes (caller).
        let p = unsafe { try_path_bytes(path, len) }?;
        Ok(w.payload().request_tagged(p, tag)?)
    })
}

/// Requests `len` bytes of the file at `path` (NUL-terminated, as for
/// `al_worker_request`) starting at byte `offset`. The entry holds the bytes
/// actually read: `len` of them, fewer when the range crosses the end of the
/// file, none for a range at or past it (a short or empty entry with error
/// 0, as `pread` gives); `al_entry_offset` returns `offset`. `len` 0 is a
/// valid, empty range. A failure to open or read the file is the entry's
/// error, as for a whole file.
///
/// Returns 0 when queued; as `al_worker_request` otherwise, plus
/// `-EINVAL` when `offset + len` is past `INT64_MAX` (no file offset goes
/// there) and `-EFBIG` when `len` is more than `max_file_size` (an entry's
/// buffer holds at most that: split the range, or read it into destination
/// memory with `al_worker_request_into`, which has no such limit). Nothing
/// is queued on failure. Ranges of one file requested close together share
/// one open of the file. With `direct`, the loader reads the aligned span
/// around the range with O_DIRECT: the data then starts inside the entry's
/// buffer, not at its beginning (`al_entry_data` points at it).
///
/// # Safety
///
/// As `al_worker_request`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_request_range(
    w: *mut al_worker,
    path: *const c_char,
    offset: u64,
    len: u64,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        // SAFETY: NULL or NUL-terminated (caller).
        let p = unsafe { try_cstr(path) }?;
        Ok(w.payload().request_range_tagged(p.to_bytes(), offset, len, 0)?)
    })
}

/// As `al_worker_request_range`, for a path given as `path_len` bytes at
/// `path` (no terminating NUL needed; a NUL inside is `-EINVAL`), with a
/// `tag` that the entry returns (`al_entry_tag`, `al_batch_item.tag`; see
/// `al_worker_request_tagged`).
///
/// # Safety
///
/// As `al_worker_request_bytes`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_request_range_bytes(
    w: *mut al_worker,
    path: *const u8,
    path_len: usize,
    offset: u64,
    len: u64,
    tag: u64,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        // SAFETY: NULL or `path_len` readable bytes (caller).
        let p = unsafe { try_path_bytes(path, path_len) }?;
        Ok(w.payload().request_range_tagged(p, offset, len, tag)?)
    })
}

/// Requests `len` bytes of the file at `path` (`path_len` bytes, as for
/// `al_worker_request_range_bytes`) starting at byte `offset`, read
/// straight into destination memory instead of the entry's buffer: to
/// `dst_offset .. dst_offset + len` of memory `mem`, either the loader's
/// arena (`AL_ARENA`, sized by `al_config.arena_size`: reachable from every
/// process that maps the loader) or memory this process registered with
/// `al_loader_register_memory` (reachable only from this process, and
/// only while the loads run here: loader threads started here with
/// `al_loader_start`, or workers that drive their own loads). There is no
/// `max_file_size` limit: files of any size load this way, in reads of
/// 1 MiB (several in flight on io_uring).
///
/// The entry's `al_entry_data` is the destination (`dst_offset` bytes into
/// the memory, as mapped in the process that reads the entry) and
/// `al_entry_size` the bytes read: fewer than `len` at the end of the file,
/// 0 past it; `al_entry_offset` returns `offset`. Nothing outside the span
/// is written. Inside it, the bytes past those read are left as they were
/// by a buffered read, but with `direct` an aligned read across the end of
/// the file writes zeros up to the span's end; after a failed load (the
/// entry's error) the span may hold part of the data.
///
/// Returns 0 when queued. `-EINVAL`: NULL, an empty path or one holding a
/// NUL, a freed handle, `offset + len` past `INT64_MAX`, `mem` naming no
/// memory (`AL_ARENA` of a loader without an arena, an id not registered),
/// or the span `dst_offset .. dst_offset + len` not inside the memory. `-EXDEV`: `mem` was registered by another
/// process, or the loader runs in another process (`al_loader_spawn`, an
/// attached loader), which cannot reach this process's memory: use the
/// arena there. And as `al_worker_request`: `-EAGAIN`, `-ENAMETOOLONG`,
/// `-ESHUTDOWN`, `-EOWNERDEAD`. Nothing is queued or written on failure.
/// A request made before the loader runs is checked when it loads: an
/// entry with error `EXDEV` if it runs elsewhere.
///
/// # Safety
///
/// `w` and `path` as for `al_worker_request_bytes`. From a successful call
/// until the entry is released, the destination span belongs to the
/// loader: nothing else may write it (no other request into an overlapping
/// span) nor read it before the entry is delivered. Registered memory stays
/// valid as `al_loader_register_memory` requires.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_request_into(
    w: *mut al_worker,
    path: *const u8,
    path_len: usize,
    offset: u64,
    len: u64,
    mem: u32,
    dst_offset: u64,
    tag: u64,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        // SAFETY: NULL or `path_len` readable bytes (caller).
        let p = unsafe { try_path_bytes(path, path_len) }?;
        let dest = Dest {
            mem,
            offset: dst_offset,
        };
        // SAFETY: the destination span is the loader's until the entry is
        // released, and registered memory stays valid (caller).
        Ok(unsafe { w.payload().request_into(p, offset, len, dest, tag) }?)
    })
}

/// One range of `al_worker_request_ranges`. Plain data, 32 bytes; this
/// struct never changes (a larger one would come with a new function).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct al_range {
    /// First byte of the file to read.
    pub offset: u64,
    /// Bytes to read at most (fewer at the end of the file).
    pub len: u64,
    /// Where in memory `mem` the bytes go (not read with `AL_NO_DEST`).
    pub dst_offset: u64,
    /// `AL_NO_DEST`: into the entry's buffer, as `al_worker_request_range`
    /// (`len` at most `max_file_size`); otherwise destination memory, as
    /// `al_worker_request_into` (`AL_ARENA` or a registered id).
    pub mem: u32,
    /// Zero.
    pub reserved: u32,
}

const _: () = assert!(std::mem::size_of::<al_range>() == 32);
const _: () = assert!(std::mem::align_of::<al_range>() == 8);

/// `al_range.mem` of a range read into the entry's own buffer.
pub const AL_NO_DEST: u32 = u32::MAX;

const _: () = assert!(AL_NO_DEST == crate::region::NO_DEST);

/// Requests `ranges[0 .. n-1]` of the one file at `path` (`path_len` bytes,
/// as for `al_worker_request_range_bytes`), in order; range i (from 0) gets
/// the tag `first_tag + i` (modulo 2^64). One call for a whole window of a
/// shard's members, for bindings where each call costs (Python builds the
/// array once for a shard's index). Each range is requested as
/// `al_worker_request_range` (`mem` = `AL_NO_DEST`) or
/// `al_worker_request_into` (any other `mem`) would request it, with the
/// same results and errors; a non-zero `reserved` is `-EINVAL`.
///
/// Stops at the first range that fails; `*accepted` (if not NULL) always
/// receives the number queued. Returns 0 when all were queued, otherwise
/// the error of `ranges[*accepted]` (`-EAGAIN`: the queue is full, retry
/// from there later; `-EINVAL`, `-EFBIG`, `-EXDEV`: skip or fix that one).
///
/// # Safety
///
/// `w` and `path` as for `al_worker_request_bytes`; `ranges` is NULL (with
/// `n` 0) or valid for reading `n` records; `accepted` is NULL or valid for
/// writing a `size_t`. Ranges with a destination: as
/// `al_worker_request_into`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_request_ranges(
    w: *mut al_worker,
    path: *const u8,
    path_len: usize,
    ranges: *const al_range,
    n: usize,
    first_tag: u64,
    accepted: *mut usize,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or valid for writing a size_t (caller).
        let count = unsafe { accepted.as_mut() };
        counted(count, |done| {
            // SAFETY: the caller's promise.
            let w = unsafe { handle(w) }?;
            if ranges.is_null() && n != 0 {
                return Err(Errno::INVAL);
            }
            // SAFETY: NULL or `path_len` readable bytes (caller).
            let p = unsafe { try_path_bytes(path, path_len) }?;
            let ranges = if n == 0 {
                &[][..]
            } else {
                if n > isize::MAX as usize / std::mem::size_of::<al_range>() {
                    return Err(Errno::INVAL);
                }
                // SAFETY: non-NULL, aligned (caller's array) and valid for
                // reading `n` records (caller); plain data.
                unsafe { std::slice::from_raw_parts(ranges, n) }
            };
            let w = w.payload();
            for r in ranges {
                let tag = first_tag.wrapping_add(*done as u64);
                if r.reserved != 0 {
                    return Err(Errno::INVAL);
                }
                if r.mem == AL_NO_DEST {
                    w.request_range_tagged(p, r.offset, r.len, tag)?;
                } else {
                    let dest = Dest {
                        mem: r.mem,
                        offset: r.dst_offset,
                    };
                    // SAFETY: the destination span is the loader's until
                    // the entry is released, and registered memory stays
                    // valid (caller).
                    unsafe { w.request_into(p, r.offset, r.len, dest, tag) }?;
                }
                *done += 1;
            }
            Ok(())
        })
    })
}

/// Requests the paths packed in `len` bytes at `paths`, each ended by a
/// NUL byte (`"a/1.jpg\0b/2.jpg\0"`; a last path without its NUL counts
/// too), in order; the i-th path (from 0) gets the tag `first_tag + i`
/// (modulo 2^64).
/// One call for a whole batch, for bindings where each call costs: Python
/// packs a list with one `"\0".join(...)`. Stops at the first path that
/// fails; `*accepted` (if not NULL) always receives the number queued.
/// Returns 0 when all were queued, otherwise the error of the path after
/// the accepted ones, as `al_worker_request` would (`-EAGAIN`: the queue
/// is full, retry from there later; `-EINVAL` for an empty path, i.e. two
/// NULs in a row; `-ENAMETOOLONG`).
///
/// # Safety
///
/// `w` as for `al_worker_request`; `paths` is NULL (with `len` 0) or valid
/// for reading `len` bytes; `accepted` is NULL or valid for writing a
/// `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_request_packed(
    w: *mut al_worker,
    paths: *const u8,
    len: usize,
    first_tag: u64,
    accepted: *mut usize,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or valid for writing a size_t (caller).
        let count = unsafe { accepted.as_mut() };
        counted(count, |done| {
            // SAFETY: the caller's promise.
            let w = unsafe { handle(w) }?;
            // SAFETY: NULL with len 0, or `len` readable bytes (caller).
            let mut rest = unsafe { try_bytes(paths, len) }?;
            let w = w.payload();
            while !rest.is_empty() {
                let (p, after) = match memchr(rest) {
                    Some(i) => (&rest[..i], &rest[i + 1..]),
                    None => (rest, &rest[rest.len()..]),
                };
                w.request_tagged(p, first_tag.wrapping_add(*done as u64))?;
                *done += 1;
                rest = after;
            }
            Ok(())
        })
    })
}

/// Index of the first NUL byte.
fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == 0)
}

/// Requests `paths[0 .. n-1]` in order, stopping at the first that fails.
/// `*accepted` (if not NULL) receives the number queued, always. Returns 0
/// when all were queued, otherwise the error of `paths[*accepted]` as
/// `al_worker_request` would (typically `-EAGAIN`: retry from there later;
/// for `-EINVAL`/`-ENAMETOOLONG`, skip that path).
///
/// # Safety
///
/// `w` as for `al_worker_request`; `paths` is NULL or points to `n`
/// readable pointers, each NULL or NUL-terminated; `accepted` is NULL or
/// valid for writing a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_request_many(
    w: *mut al_worker,
    paths: *const *const c_char,
    n: usize,
    accepted: *mut usize,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or valid for writing a size_t (caller).
        let count = unsafe { accepted.as_mut() };
        counted(count, |done| {
            // SAFETY: the caller's promise.
            let w = unsafe { handle(w) }?;
            if paths.is_null() && n > 0 {
                return Err(Errno::INVAL);
            }
            if n > isize::MAX as usize / std::mem::size_of::<*const c_char>() {
                return Err(Errno::INVAL);
            }
            let ps: &[*const c_char] = if n == 0 {
                &[]
            } else {
                // SAFETY: non-NULL, `n` readable pointers (caller), the byte
                // size fits isize (checked).
                unsafe { std::slice::from_raw_parts(paths, n) }
            };
            for &p in ps {
                // SAFETY: NULL or NUL-terminated (caller).
                let p = unsafe { try_cstr(p) }?;
                w.payload().request_bytes(p.to_bytes())?;
                *done += 1;
            }
            Ok(())
        })
    })
}

/// Takes a completed entry if one is ready and stores it in `*out` (written
/// only on success; the caller owns it until `al_entry_release`). Returns
/// 0; `-EAGAIN` when none is ready; `-ESHUTDOWN`/`-EOWNERDEAD` when none is
/// ready and none will come (the loader stopped or died); `-EINVAL`.
///
/// # Safety
///
/// `w` is NULL or a worker handle that still exists; `out` is NULL or
/// valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_try_get(w: *mut al_worker, out: *mut *mut al_entry) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        let e = try_get(w.payload())?.ok_or(Errno(libc::EAGAIN))?;
        let e = deliver(w, e)?;
        // SAFETY: non-NULL and writable (caller).
        unsafe { put(out, e) };
        Ok(())
    })
}

/// Waits for a completed entry and stores it in `*out` (written only on
/// success). `timeout_ns < 0` waits without limit; 0 only checks. Returns
/// 0; `-ETIMEDOUT`; `-ESHUTDOWN` when the loader was shut down and nothing
/// is left to deliver; `-EOWNERDEAD` when the loader died (noticed within
/// about 20 ms); `-EINVAL`. Sleeps on a futex, not a spin.
///
/// # Safety
///
/// As `al_worker_try_get`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_wait_get(
    w: *mut al_worker,
    timeout_ns: i64,
    out: *mut *mut al_entry,
) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        let e = wait(w.payload(), timeout_ns)?;
        let e = deliver(w, e)?;
        // SAFETY: non-NULL and writable (caller).
        unsafe { put(out, e) };
        Ok(())
    })
}

/// Gets up to `max` entries: waits as `al_worker_wait_get` for the first,
/// then takes those ready without waiting. Stores them in `out[0 .. *got-1]`
/// (the caller owns each); `*got` (if not NULL) is always written, 0 on
/// error. Returns 0 with `*got >= 1`, or the error of the wait (`-ETIMEDOUT`,
/// `-ESHUTDOWN`, ...); `-EINVAL` for NULL `out` or `max == 0`.
///
/// # Safety
///
/// `w` as for `al_worker_try_get`; `out` is NULL or valid for writing `max`
/// pointers; `got` is NULL or valid for writing a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_get_many(
    w: *mut al_worker,
    out: *mut *mut al_entry,
    max: usize,
    timeout_ns: i64,
    got: *mut usize,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or valid for writing a size_t (caller).
        let count = unsafe { got.as_mut() };
        counted(count, |n| {
            let out = try_out(out)?;
            // SAFETY: the caller's promise.
            let w = unsafe { handle(w) }?;
            take_many(w, max, timeout_ns, n, |i, item| {
                // SAFETY: i < max, so out + i is inside the caller's array
                // of `max` pointers.
                unsafe { put(out.add(i), item.entry) }
            })
        })
    })
}

/// As `al_worker_get_many`, but writes for each entry an `al_batch_item`
/// (handle, data pointer, size, tag, error, path) to `items[0 .. *got-1]`,
/// so that the caller reads a whole batch without a call per entry.
/// Release the entries (`al_batch_item.entry`) as those of
/// `al_worker_get_many`, e.g. all at once with `al_entry_release_many`
/// over the handles. Returns as `al_worker_get_many`.
///
/// # Safety
///
/// `w` as for `al_worker_try_get`; `items` is NULL or valid for writing
/// `max` `al_batch_item`s; `got` is NULL or valid for writing a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_get_batch(
    w: *mut al_worker,
    items: *mut al_batch_item,
    max: usize,
    timeout_ns: i64,
    got: *mut usize,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or valid for writing a size_t (caller).
        let count = unsafe { got.as_mut() };
        counted(count, |n| {
            let items = try_out(items)?;
            // SAFETY: the caller's promise.
            let w = unsafe { handle(w) }?;
            take_many(w, max, timeout_ns, n, |i, item| {
                // SAFETY: i < max, so items + i is inside the caller's
                // array of `max` items.
                unsafe { put(items.add(i), item) }
            })
        })
    })
}

/// Waits as `al_worker_wait_get` for a first entry, then takes those ready
/// without waiting, up to `max`; hands each to `put(i, item)` (its handle
/// in `item.entry`) with `i` counting from 0 and counts them in `*n`. `EINVAL` for `max == 0`.
fn take_many(
    w: &WorkerTable,
    max: usize,
    timeout_ns: i64,
    n: &mut usize,
    mut put: impl FnMut(usize, al_batch_item),
) -> Result<(), Errno> {
    if max == 0 {
        return Err(Errno::INVAL);
    }
    let mut next = Some(wait(w.payload(), timeout_ns)?);
    while let Some(e) = next.take() {
        // Its pointers point into the mapping, which the handle table keeps
        // mapped while the entry is delivered.
        let mut item = al_batch_item::of(&e.view(), std::ptr::null_mut());
        item.entry = match deliver(w, e) {
            Ok(h) => h,
            // A refused delivery gave its entry back; keep what we have
            // (the first one's error is the call's).
            Err(err) if *n == 0 => return Err(err),
            Err(_) => break,
        };
        put(*n, item);
        *n += 1;
        if *n < max {
            next = w.payload().try_get();
        }
    }
    Ok(())
}

/// Stores in `*base` and `*len` the span of this process's memory that
/// holds all of the worker's entry buffers: every `al_entry_data` of the
/// worker lies inside `[*base, *base + *len)`, page aligned, except that of
/// an `al_worker_request_into` (in its destination memory: see
/// `al_worker_arena`). Register it
/// once where memory must be known in advance (`cudaHostRegister`, a
/// binding's buffer export). Read only the bytes of entries you hold: the
/// loader writes the rest at any time. Valid while the handle (or one of
/// its entries) lives. Returns 0; `-EINVAL` (NULL).
///
/// # Safety
///
/// `w` is NULL or a worker handle that still exists; `base` and `len` are
/// NULL or valid for writing a pointer and a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_buffers(
    w: *const al_worker,
    base: *mut *const u8,
    len: *mut usize,
) -> c_int {
    ffi_boundary!(int {
        let base = try_out(base)?;
        let len = try_out(len)?;
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        // SAFETY: both non-NULL and writable (caller).
        unsafe { put_span(base, len, w.payload().buffer_area()) };
        Ok(())
    })
}

/// Stores in `*base` and `*len` the loader's arena as mapped in this
/// process (the destination memory `AL_ARENA` of `al_worker_request_into`;
/// `al_config.arena_size` bytes, 4096-byte aligned): `*len` is 0 for a
/// loader without an arena. The same memory as `al_loader_arena`; every
/// process sees it at its own address. Read only spans of entries you
/// hold: the loader writes the rest at any time. Valid while the handle
/// (or one of its entries) lives. Returns 0; `-EINVAL` (NULL, a freed
/// handle).
///
/// # Safety
///
/// `w` is NULL or a worker handle that still exists; `base` and `len` are
/// NULL or valid for writing a pointer and a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_arena(
    w: *const al_worker,
    base: *mut *mut u8,
    len: *mut usize,
) -> c_int {
    ffi_boundary!(int {
        let base = try_out(base)?;
        let len = try_out(len)?;
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        // SAFETY: both non-NULL and writable (caller).
        unsafe { put_span(base, len, w.payload().arena()) };
        Ok(())
    })
}

/// Stores in `*fd` an eventfd that is readable while this worker has
/// completions to take, for `epoll`/`poll`/`select` loops. The first call
/// starts one small notifier thread in the calling process (later calls on
/// the same handle return the same descriptor); handles that never call it
/// cost nothing. Works with loader threads, a spawned loader process and a
/// loader attached by name.
///
/// The descriptor belongs to the handle: do not close it; it is closed by
/// `al_worker_free` (once the handle's entries are released). It is
/// non-blocking, close-on-exec, `EFD_SEMAPHORE`. Contract (level-like):
/// when it polls readable, `read` 8 bytes from it (`EAGAIN` is fine), then
/// call `al_worker_try_get` (or `al_worker_dispatch`) until `-EAGAIN`; a
/// completion landing after that read makes it readable again at once (no
/// lost wake-up); a loop that stops before `-EAGAIN` sees it readable
/// again within 20 ms; readiness may be spurious. Once the loader is shut
/// down or dies it stays readable, and `al_worker_try_get` returns the
/// entries left, then `-ESHUTDOWN`/`-EOWNERDEAD`. In a child forked after
/// the call, call it again for the child's own descriptor.
///
/// Returns 0; `-EINVAL` (NULL); `-EMFILE`/`-EAGAIN` when no descriptor or
/// thread could be made.
///
/// # Safety
///
/// `w` is NULL or a worker handle that still exists; `fd` is NULL or valid
/// for writing an `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_eventfd(w: *mut al_worker, fd: *mut c_int) -> c_int {
    ffi_boundary!(int {
        let fd = try_out(fd)?;
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        let f = w.payload().completion_fd()?;
        // SAFETY: non-NULL and writable (caller).
        unsafe { put(fd, f) };
        Ok(())
    })
}

/// Takes up to `max` ready entries without waiting and calls `cb(entry,
/// ctx)` for each (the callback owns the entry: release it with
/// `al_entry_release`, now or later), from the calling thread (the one that owns the event
/// loop; never a loader thread). Returns how many were delivered (0 when
/// none was ready: the `-EAGAIN` of `al_worker_try_get`); `-ESHUTDOWN` /
/// `-EOWNERDEAD` when none was ready and none will come; `-EINVAL` for
/// NULL `w`/`cb` or `max == 0`. The callback may call any function on
/// other handles and `al_worker_request`/`al_entry_*` on this one.
///
/// # Safety
///
/// `w` is NULL or a worker handle that still exists, not freed by the
/// callback; `cb` is NULL or a function safe to call with each entry and
/// `ctx`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_worker_dispatch(
    w: *mut al_worker,
    max: u32,
    cb: Option<unsafe extern "C" fn(entry: *mut al_entry, ctx: *mut c_void)>,
    ctx: *mut c_void,
) -> c_int {
    let mut n: c_int = 0;
    let rc = ffi_boundary!(int {
        // SAFETY: the caller's promise.
        let w = unsafe { handle(w) }?;
        let cb = cb.ok_or(Errno::INVAL)?;
        if max == 0 {
            return Err(Errno::INVAL);
        }
        let max = max.min(c_int::MAX as u32) as c_int;
        while n < max {
            let e = match try_get(w.payload()) {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            };
            let e = deliver(w, e)?;
            n += 1;
            // SAFETY: `cb` is safe to call with an owned entry and `ctx`
            // (caller).
            unsafe { cb(e, ctx) };
        }
        Ok(())
    });
    if rc < 0 { rc } else { n }
}
