//! `al_entry`: a delivered file, as a checked handle.
//!
//! An `al_entry *` points to a slot of its worker's handle table
//! (`handles::Slot`; src/ffi/handles.rs has the ownership and generation
//! rules). Everything else goes through the Rust API: accessors read the
//! entry through `Worker::entry_ref`, which re-checks the entry's state
//! word (generation and DONE) in the shared region, and release goes
//! through `Worker::release_raw_parts`, which re-checks it with a
//! compare-and-swap, so even an aliasing stale handle can never free an
//! entry twice. Entries inherited across `fork` are never given back by the
//! child (`crate::process::fork_epoch`).
//!
//! Handles are made in `ffi::worker` (`al_worker_*_get`), which uses this
//! module; this module does not use `ffi::worker`.

use std::ffi::{c_char, c_int};

use super::handles::{Held, Slot};
use super::panic::{Errno, ffi_boundary};
use super::ptr::try_out;
use super::sized::{self, give, span};
use crate::process::fork_epoch;
use crate::worker::{EntryRef, Worker};

/// A loaded (or failed) file, delivered by `al_worker_try_get`,
/// `al_worker_wait_get` or `al_worker_get_many`.
///
/// Ownership: the caller holds the entry until `al_entry_release`; while it
/// does, the entry's buffer is reserved (it counts against the worker's
/// `queue_depth`) and its path and data pointers stay valid and unchanged.
/// Release every entry, soon: a worker that holds `queue_depth` entries
/// cannot request more.
///
/// After release: every accessor returns NULL/0/`-EINVAL` and another
/// release does nothing, as long as the `al_worker` it came from has not
/// been freed with all its entries released (then the handle is dangling).
///
/// Fork: a process forked while holding an entry inherits a copy of the
/// handle, but the entry stays the parent's. In the child, accessors read
/// the parent's entry while the parent holds it (NULL/0/`-EINVAL` once the
/// parent released it), and `al_entry_release` returns `-EPERM` and does
/// not give the entry back.
///
/// Thread-safety: accessors may run in several threads at once; release
/// once, after the other threads are done with the data.
pub struct al_entry {
    // Opaque to C; an `al_entry *` is really a `handles::Slot<Worker>`.
    _opaque: [u8; 0],
}

type EntrySlot = Slot<Worker>;

/// Everything about an entry in one call (`al_entry_get_info`), for bindings
/// where each call costs (Python ctypes). Set `struct_size =
/// sizeof(al_entry_info)` before the call (see `al_config` for how the
/// struct grows). Pointers are valid until the entry is released. Plain
/// data.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct al_entry_info {
    /// `sizeof(al_entry_info)` as the caller compiled it; never written by
    /// the library.
    pub struct_size: u32,
    /// 0 or the positive errno of the failed load.
    pub error: i32,
    /// The requested path, NUL-terminated (see `al_entry_path`).
    pub path: *const c_char,
    /// Bytes in `path`, without the NUL.
    pub path_len: usize,
    /// The file's bytes (see `al_entry_data`).
    pub data: *const u8,
    /// Bytes at `data`; 0 for a failed load.
    pub size: usize,
    /// Nanoseconds from the request to the completion.
    pub latency_ns: u64,
    /// The request's tag (`al_worker_request_tagged`; 0 if untagged).
    pub tag: u64,
    /// The requested byte offset (`al_entry_offset`; 0 for a whole file).
    /// Not written for callers with the 56-byte struct of older headers.
    pub offset: u64,
}

const _: () = assert!(std::mem::size_of::<al_entry_info>() == 64);
const _: () = assert!(std::mem::align_of::<al_entry_info>() == 8);

const INFO_SIZE: usize = std::mem::size_of::<al_entry_info>();

impl al_entry_info {
    /// Writes the fields a caller's `al_entry_info` of `struct_size` bytes
    /// has.
    ///
    /// # Safety
    ///
    /// `p` is non-NULL, aligned, valid for writing `struct_size` bytes (at
    /// least 4), the first 4 readable.
    unsafe fn write(&self, p: *mut al_entry_info) -> Result<(), Errno> {
        let spans = [
            span!(al_entry_info, struct_size),
            span!(al_entry_info, error),
            span!(al_entry_info, path),
            span!(al_entry_info, path_len),
            span!(al_entry_info, data),
            span!(al_entry_info, size),
            span!(al_entry_info, latency_ns),
            span!(al_entry_info, tag),
            span!(al_entry_info, offset),
        ];
        // SAFETY: at least the 4 bytes of struct_size are readable (caller).
        let size = unsafe { sized::struct_size(p.cast_const().cast()) };
        let n = sized::covered("al_entry_info", size, INFO_SIZE, &spans)?;
        give!(p, n, al_entry_info, error, self.error);
        give!(p, n, al_entry_info, path, self.path);
        give!(p, n, al_entry_info, path_len, self.path_len);
        give!(p, n, al_entry_info, data, self.data);
        give!(p, n, al_entry_info, size, self.size);
        give!(p, n, al_entry_info, latency_ns, self.latency_ns);
        give!(p, n, al_entry_info, tag, self.tag);
        give!(p, n, al_entry_info, offset, self.offset);
        Ok(())
    }
}

/// Checks a handle: the entry it stands for, if delivered and not released.
///
/// # Safety
///
/// `e` is NULL or an `al_entry *` whose worker table still exists (see
/// `al_entry`'s lifetime rules), and nobody releases it while the result is
/// in use (the C caller's promise: no release while another thread reads
/// the entry).
unsafe fn live<'a>(e: *const al_entry) -> Result<EntryRef<'a>, Errno> {
    // SAFETY: NULL or a slot of a live table (caller).
    let Held {
        table,
        g,
        generation,
    } = unsafe { EntrySlot::held(e.cast()) }?;
    // SAFETY: not released while the view is in use (caller); a stale or
    // aliasing handle is refused by the generation check inside.
    unsafe { table.payload().entry_ref(g, generation) }.ok_or(Errno::INVAL)
}

/// The path as C sees it: a pointer to the NUL-terminated bytes as
/// requested, and their length.
fn path_of(l: &EntryRef<'_>) -> (*const c_char, usize) {
    let p = l.path_bytes();
    (p.as_ptr().cast(), p.len())
}

/// Releases a handle: marks the slot dead, hands the entry back to the
/// engine, drops the table reference. `EINVAL` when not live; `EPERM` in a
/// process forked after the delivery (the entry is not handed back).
///
/// # Safety
///
/// `e` is NULL or an `al_entry *` whose worker table still exists, and no
/// other thread reads the entry (the C caller's promise).
unsafe fn release(e: *const al_entry) -> Result<(), Errno> {
    let give_back = |w: &Worker, g: u32, generation: u32| -> Result<(), Errno> {
        // SAFETY: the handle owned these raw parts (ffi::worker made it from
        // `Entry::into_raw_parts`) and `Slot::release` lets only one call win
        // them; nobody reads the entry any more (caller).
        Ok(unsafe { w.release_raw_parts(g, generation) }?)
    };
    // SAFETY: NULL or a slot of a live table (caller).
    unsafe { EntrySlot::release(e.cast(), fork_epoch(), give_back) }
}

/// The requested path, NUL-terminated, exactly the bytes that were
/// requested (not necessarily UTF-8). Owned by the entry, valid until
/// release. NULL for NULL or a released entry.
///
/// # Safety
///
/// `e` is NULL or an entry handle (see `al_entry` for how long one stays
/// checkable).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_path(e: *const al_entry) -> *const c_char {
    ffi_boundary!(std::ptr::null() => {
        // SAFETY: the caller's promise.
        match unsafe { live(e) } {
            Ok(l) => path_of(&l).0,
            Err(_) => std::ptr::null(),
        }
    })
}

/// Length of `al_entry_path` in bytes, without the NUL; 0 for NULL or a
/// released entry.
///
/// # Safety
///
/// As `al_entry_path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_path_len(e: *const al_entry) -> usize {
    ffi_boundary!(0 => {
        // SAFETY: the caller's promise.
        unsafe { live(e) }.map_or(0, |l| path_of(&l).1)
    })
}

/// The bytes loaded (`al_entry_size` of them): the file, or the requested
/// range of it; valid and unchanged until release. Never NULL for a live
/// entry (also when the size is 0); NULL for NULL or a released entry.
/// For a whole file, the entry's buffer in shared memory owned by the
/// loader, 4096-byte aligned; for a range (`al_worker_request_range`) a
/// place inside that buffer, not necessarily aligned (with `direct` the
/// loader reads the aligned span around the range); for
/// `al_worker_request_into`, the destination memory.
///
/// # Safety
///
/// As `al_entry_path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_data(e: *const al_entry) -> *const u8 {
    ffi_boundary!(std::ptr::null() => {
        // SAFETY: the caller's promise.
        match unsafe { live(e) } {
            Ok(l) => l.data().as_ptr(),
            Err(_) => std::ptr::null(),
        }
    })
}

/// Number of bytes loaded: the file's size, for a range the bytes read
/// (fewer than requested at the end of the file, 0 past it); 0 for a
/// failed load, NULL or a released entry.
///
/// # Safety
///
/// As `al_entry_path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_size(e: *const al_entry) -> usize {
    ffi_boundary!(0 => {
        // SAFETY: the caller's promise.
        unsafe { live(e) }.map_or(0, |l| l.len())
    })
}

/// 0 when the file loaded, otherwise the positive errno of the failed load:
/// `ENOENT`, `EACCES`, `EISDIR`, `EINVAL` (not a regular file), `EFBIG`
/// (larger than `max_file_size`), `EIO`, ... Returns `-EINVAL` (negative:
/// a problem with the handle, not the file) for NULL or a released entry.
///
/// # Safety
///
/// As `al_entry_path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_error(e: *const al_entry) -> c_int {
    ffi_boundary!(-super::panic::PANIC_ERRNO => {
        // SAFETY: the caller's promise.
        match unsafe { live(e) } {
            Ok(l) => l.error(),
            Err(Errno(e)) => -e,
        }
    })
}

/// Nanoseconds from the request to the completion; 0 for NULL or a released
/// entry.
///
/// # Safety
///
/// As `al_entry_path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_latency_ns(e: *const al_entry) -> u64 {
    ffi_boundary!(0 => {
        // SAFETY: the caller's promise.
        unsafe { live(e) }.map_or(0, |l| l.latency_ns())
    })
}

/// The tag the entry was requested with (`al_worker_request_tagged`,
/// `al_worker_request_packed`); 0 for an untagged request, NULL or a
/// released entry.
///
/// # Safety
///
/// As `al_entry_path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_tag(e: *const al_entry) -> u64 {
    ffi_boundary!(0 => {
        // SAFETY: the caller's promise.
        unsafe { live(e) }.map_or(0, |l| l.tag())
    })
}

/// The byte offset the entry was requested at (`al_worker_request_range`,
/// `al_worker_request_into`): where `al_entry_data` starts in the file. 0
/// for a whole file, NULL or a released entry.
///
/// # Safety
///
/// As `al_entry_path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_offset(e: *const al_entry) -> u64 {
    ffi_boundary!(0 => {
        // SAFETY: the caller's promise.
        unsafe { live(e) }.map_or(0, |l| l.offset())
    })
}

/// One entry of `al_worker_get_batch`: the handle and what a consumer reads
/// of it, so that a binding where each call costs (Python ctypes) reads a
/// whole batch without a call per entry. Plain data, 48 bytes; this struct
/// never changes (a larger one would come with a new function). Pointers
/// are valid until the entry is released.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct al_batch_item {
    /// The entry: release it (`al_entry_release`, `al_entry_release_many`)
    /// like one from `al_worker_get_many`.
    pub entry: *mut al_entry,
    /// The bytes loaded (`al_entry_data`).
    pub data: *const u8,
    /// Bytes at `data`; 0 for a failed load.
    pub size: u64,
    /// The request's tag (`al_entry_tag`).
    pub tag: u64,
    /// 0 or the positive errno of the failed load.
    pub error: i32,
    /// Bytes in `path`, without the NUL.
    pub path_len: u32,
    /// The requested path, NUL-terminated (`al_entry_path`).
    pub path: *const c_char,
}

const _: () = assert!(std::mem::size_of::<al_batch_item>() == 48);
const _: () = assert!(std::mem::align_of::<al_batch_item>() == 8);
// Python's Batch reads the array as 64-bit words at these offsets.
const _: () = assert!(std::mem::offset_of!(al_batch_item, data) == 8);
const _: () = assert!(std::mem::offset_of!(al_batch_item, size) == 16);
const _: () = assert!(std::mem::offset_of!(al_batch_item, tag) == 24);
const _: () = assert!(std::mem::offset_of!(al_batch_item, error) == 32);
const _: () = assert!(std::mem::offset_of!(al_batch_item, path_len) == 36);
const _: () = assert!(std::mem::offset_of!(al_batch_item, path) == 40);

impl al_batch_item {
    /// The item for an entry about to be handed out as `entry`.
    pub(crate) fn of(l: &EntryRef<'_>, entry: *mut al_entry) -> al_batch_item {
        let (path, path_len) = path_of(l);
        al_batch_item {
            entry,
            data: l.data().as_ptr(),
            size: l.len() as u64,
            tag: l.tag(),
            error: l.error(),
            // < PATH_CAP (4096).
            path_len: path_len as u32,
            path,
        }
    }
}

/// Releases the entries of `items[0 .. n-1]` (their `entry` fields), as
/// `al_entry_release_many` would: NULL handles, released entries and
/// entries inherited across `fork` are skipped. Returns the number
/// released now, 0 when `items` is NULL. The batch counterpart of
/// `al_worker_get_batch`, for callers that keep the items array.
///
/// # Safety
///
/// `items` is NULL or points to `n` readable `al_batch_item`s, each
/// `entry` as for `al_entry_release`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_batch_release(items: *const al_batch_item, n: usize) -> usize {
    ffi_boundary!(0 => {
        if items.is_null() || n > isize::MAX as usize / std::mem::size_of::<al_batch_item>() {
            return 0;
        }
        // SAFETY: non-NULL, `n` readable items (caller), size checked.
        let items = unsafe { std::slice::from_raw_parts(items, n) };
        items
            .iter()
            // SAFETY: each entry as for al_entry_release (caller).
            .filter(|i| unsafe { release(i.entry) }.is_ok())
            .count()
    })
}

/// Gives up the handle without releasing the entry, and writes to
/// `*ticket` what stands for the entry from then on: the hand-over of a
/// loaded file to another process (or thread) that takes it with
/// `al_loader_take` (copy out and release) or `al_loader_drop_tickets`.
/// The entry stays delivered and counts against its worker's
/// `queue_depth` until then; the handle is released (accessors return
/// NULL/0 afterwards). Returns 0; `-EINVAL` for NULL or a released entry;
/// `-EPERM` in a process forked after the delivery (the entry is the
/// parent's).
///
/// # Safety
///
/// As `al_entry_release`; `ticket` is NULL or valid for writing a
/// `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_handoff(e: *mut al_entry, ticket: *mut u64) -> c_int {
    ffi_boundary!(int {
        let ticket = try_out(ticket)?;
        // SAFETY: the caller's promise.
        let t = unsafe { handoff(e) }?;
        // SAFETY: non-NULL and writable (caller).
        unsafe { ticket.write(t) };
        Ok(())
    })
}

/// `al_entry_handoff` of `items[0 .. n-1]` (their `entry` fields), writing
/// each ticket to `tickets[i]` (0 for an item that could not be handed
/// over: NULL, released, inherited across `fork`). Returns how many were
/// handed over.
///
/// # Safety
///
/// `items` is NULL or points to `n` readable items, each `entry` as for
/// `al_entry_release`; `tickets` is NULL or valid for writing `n`
/// `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_batch_handoff(
    items: *const al_batch_item,
    n: usize,
    tickets: *mut u64,
) -> usize {
    ffi_boundary!(0 => {
        if items.is_null() || tickets.is_null() || n > isize::MAX as usize / std::mem::size_of::<al_batch_item>() {
            return 0;
        }
        // SAFETY: non-NULL, `n` readable items (caller), size checked.
        let items = unsafe { std::slice::from_raw_parts(items, n) };
        let mut handed = 0;
        for (i, item) in items.iter().enumerate() {
            // SAFETY: each entry as for al_entry_release (caller).
            let t = unsafe { handoff(item.entry) }.unwrap_or(0);
            handed += usize::from(t != 0);
            // SAFETY: i < n, inside the caller's array of `n` u64.
            unsafe { tickets.add(i).write(t) };
        }
        handed
    })
}

/// Gives up a handle without releasing its entry; the ticket of the entry.
///
/// # Safety
///
/// As `release`.
unsafe fn handoff(e: *const al_entry) -> Result<u64, Errno> {
    let mut ticket = 0u64;
    let keep = |_: &Worker, g: u32, generation: u32| -> Result<(), Errno> {
        ticket = crate::worker::ticket(g, generation);
        Ok(())
    };
    // SAFETY: NULL or a slot of a live table (caller).
    unsafe { EntrySlot::release(e.cast(), fork_epoch(), keep) }?;
    Ok(ticket)
}

/// Writes path, data, sizes, error, latency, tag and offset of `e` to `*out` in one call
/// (written only on success; the fields inside `out->struct_size`).
/// Returns 0, `-EINVAL` (NULL, released, a `struct_size` below 4 or
/// cutting a field), `-E2BIG` (`struct_size` above 4096).
///
/// # Safety
///
/// As `al_entry_path`; `out` is NULL or valid for writing
/// `out->struct_size` bytes (at least 4), its `struct_size` set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_get_info(e: *const al_entry, out: *mut al_entry_info) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: the caller's promise.
        let l = unsafe { live(e) }?;
        let (path, path_len) = path_of(&l);
        let info = al_entry_info {
            struct_size: INFO_SIZE as u32,
            path,
            path_len,
            data: l.data().as_ptr(),
            size: l.len(),
            error: l.error(),
            latency_ns: l.latency_ns(),
            tag: l.tag(),
            offset: l.offset(),
        };
        // SAFETY: non-NULL, struct_size set and that many bytes writable
        // (caller).
        unsafe { info.write(out) }
    })
}

/// Gives the entry back to its worker: its buffer may be reused at once, so
/// pointers from `al_entry_path`/`al_entry_data` become invalid. Returns 0;
/// `-EINVAL` for NULL or an already released entry (harmless: nothing
/// happens); `-EPERM` in a process forked after the entry was delivered:
/// the entry is the parent's and stays with it (the parent's path and data
/// do not change), the handle is only forgotten in this process.
///
/// # Safety
///
/// As `al_entry_path`; no other thread may be reading the entry's data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_release(e: *mut al_entry) -> c_int {
    ffi_boundary!(int {
        // SAFETY: the caller's promise.
        unsafe { release(e) }
    })
}

/// Releases `n` entries (as `al_entry_release` each; NULL elements,
/// released entries and entries inherited across `fork` are skipped).
/// Returns the number released now, 0 when `entries` is NULL.
///
/// # Safety
///
/// `entries` is NULL or points to `n` readable pointers, each as for
/// `al_entry_release`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_release_many(entries: *const *mut al_entry, n: usize) -> usize {
    ffi_boundary!(0 => {
        if entries.is_null() || n > isize::MAX as usize / std::mem::size_of::<*mut al_entry>() {
            return 0;
        }
        // SAFETY: non-NULL, `n` readable pointers (caller), size checked.
        let es = unsafe { std::slice::from_raw_parts(entries, n) };
        es.iter()
            // SAFETY: each element as for al_entry_release (caller).
            .filter(|&&e| unsafe { release(e) }.is_ok())
            .count()
    })
}
