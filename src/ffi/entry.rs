//! `al_entry`: a delivered file, as a checked handle.
//!
//! Design. An `al_entry *` points to a slot in a handle table owned by the
//! `al_worker` that delivered it, never to freshly allocated memory, so
//! using a released entry again reads a live slot and is caught instead of
//! being a use-after-free. The table has `window` slots per entry of the
//! worker (`queue_depth * window` in all): an entry delivered with
//! generation `gen` (the engine bumps an entry's generation on every
//! release) lands in slot `local_index * window + gen % window`, and the
//! slot's token records `gen` and whether the handle is live. So:
//!
//! - releasing twice, or reading after release, finds a dead token (or a
//!   token of another generation) and gets `-EINVAL`/NULL/0;
//! - a stale handle only aliases a newer delivery after the same entry was
//!   delivered again `window` more times (16 times for `queue_depth` up to
//!   4096): a handle kept that long past its release is not caught;
//! - each live handle holds a reference on its table, so `al_worker_free`
//!   with entries outstanding leaves them usable; the table goes with the
//!   last of them.
//!
//! Release also re-checks the generation against the shared entry word with
//! a compare-and-swap (`worker::release_raw`), so even an aliasing stale
//! handle can never free an entry twice in the shared region.

use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicU64, Ordering};

use super::panic::{Errno, ffi_boundary};
use super::ptr::{put, try_out, try_ref};
use super::worker::al_worker;
use crate::region::{PATH_CAP, entry_state};
use crate::worker::{Entry, release_raw};

const LIVE: u64 = 1;

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
/// Thread-safety: accessors may run in several threads at once; release
/// once, after the other threads are done with the data.
pub struct al_entry {
    owner: *const al_worker,
    /// Global entry index this slot stands for.
    g: u32,
    /// `generation << 32 | LIVE` while delivered, `generation << 32` after.
    token: AtomicU64,
}

/// Everything about an entry in one call (`al_entry_get_info`), for bindings
/// where each call costs (Python ctypes). Pointers are valid until the
/// entry is released. Plain data.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct al_entry_info {
    /// The requested path, NUL-terminated (see `al_entry_path`).
    pub path: *const c_char,
    /// Bytes in `path`, without the NUL.
    pub path_len: usize,
    /// The file's bytes (see `al_entry_data`).
    pub data: *const u8,
    /// Bytes at `data`; 0 for a failed load.
    pub size: usize,
    /// 0 or the positive errno of the failed load.
    pub error: i32,
    /// Always 0.
    pub reserved: u32,
    /// Nanoseconds from the request to the completion.
    pub latency_ns: u64,
}

const _: () = assert!(std::mem::size_of::<al_entry_info>() == 48);
const _: () = assert!(std::mem::align_of::<al_entry_info>() == 8);

/// Generations per entry in a worker's handle table.
pub(crate) fn window_for(queue_depth: u32) -> u32 {
    if queue_depth <= 4096 { 16 } else { 2 }
}

/// The table of `queue_depth * window` slots for worker `w` of a loader.
pub(crate) fn new_table(owner: *const al_worker, id: u32, qd: u32, window: u32) -> Box<[al_entry]> {
    (0..qd as u64 * window as u64)
        .map(|i| al_entry {
            owner,
            g: id * qd + (i / window as u64) as u32,
            token: AtomicU64::new(0),
        })
        .collect()
}

/// Turns an engine `Entry` into a handle in `w`'s table.
pub(crate) fn deliver(w: &al_worker, e: Entry) -> *mut al_entry {
    let (g, generation) = e.into_raw_parts();
    let first = w.id() * w.queue_depth();
    debug_assert!(g >= first && g < first + w.queue_depth());
    let idx = (g - first) as usize * w.window() as usize + (generation % w.window()) as usize;
    let slot = &w.slots()[idx];
    debug_assert_eq!(slot.g, g);
    debug_assert_eq!(slot.token.load(Ordering::Relaxed) & LIVE, 0);
    w.add_ref();
    slot.token
        .store(((generation as u64) << 32) | LIVE, Ordering::Release);
    (slot as *const al_entry).cast_mut()
}

/// A live (delivered, not released) entry.
struct Live<'a> {
    w: &'a al_worker,
    g: u32,
}

/// Checks a handle.
///
/// # Safety
///
/// `e` is NULL or an `al_entry *` whose worker table still exists (see
/// `al_entry`'s lifetime rules).
unsafe fn live<'a>(e: *const al_entry) -> Result<Live<'a>, Errno> {
    // SAFETY: NULL or a slot of a live table (caller).
    let slot = unsafe { try_ref(e) }?;
    let t = slot.token.load(Ordering::Acquire);
    if t & LIVE == 0 {
        return Err(Errno::INVAL);
    }
    // SAFETY: a live token holds a reference on the table, which owns the
    // slot and points back to its al_worker; both outlive the token.
    let w = unsafe { &*slot.owner };
    let region = w.worker().region();
    let expect = (t & !LIVE) | entry_state::DONE as u64;
    if region.entry(slot.g).state.load(Ordering::Acquire) != expect {
        return Err(Errno::INVAL);
    }
    Ok(Live { w, g: slot.g })
}

impl Live<'_> {
    fn path(&self) -> (*const c_char, usize) {
        let r = self.w.worker().region();
        let len = (r.entry(self.g).path_len.load(Ordering::Relaxed) as usize).min(PATH_CAP - 1);
        (r.path_ptr(self.g).cast_const().cast(), len)
    }
    fn error(&self) -> i32 {
        self.w
            .worker()
            .region()
            .entry(self.g)
            .status
            .load(Ordering::Relaxed)
    }
    fn data(&self) -> *const u8 {
        self.w.worker().region().buffer(self.g).cast_const()
    }
    fn size(&self) -> usize {
        if self.error() != 0 {
            return 0;
        }
        let r = self.w.worker().region();
        r.entry(self.g)
            .size
            .load(Ordering::Relaxed)
            .min(r.buf_size()) as usize
    }
    fn latency_ns(&self) -> u64 {
        let m = self.w.worker().region().entry(self.g);
        m.t_done
            .load(Ordering::Relaxed)
            .saturating_sub(m.t_request.load(Ordering::Relaxed))
    }
}

/// Releases a handle: marks the slot dead, hands the entry back to the
/// engine, drops the table reference. `Err` when not live.
///
/// # Safety
///
/// As for [`live`].
unsafe fn release(e: *const al_entry) -> Result<(), Errno> {
    // SAFETY: NULL or a slot of a live table (caller).
    let slot = unsafe { try_ref(e) }?;
    let t = slot.token.load(Ordering::Acquire);
    if t & LIVE == 0 {
        return Err(Errno::INVAL);
    }
    // Only one releaser wins; a concurrent second release sees Err.
    slot.token
        .compare_exchange(t, t & !LIVE, Ordering::AcqRel, Ordering::Acquire)
        .map_err(|_| Errno::INVAL)?;
    let owner = slot.owner;
    // SAFETY: we held the live token, so the table (and worker) are alive
    // until the unref below; the slot is not touched after it.
    let w = unsafe { &*owner };
    let r = release_raw(w.worker().region(), slot.g, (t >> 32) as u32);
    // SAFETY: drops the reference taken in `deliver`; `w` is not used after.
    unsafe { al_worker::unref(owner) };
    r.map_err(Errno::from)
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
            Ok(l) => l.path().0,
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
        unsafe { live(e) }.map_or(0, |l| l.path().1)
    })
}

/// The file's bytes (`al_entry_size` of them), in shared memory owned by the
/// loader; valid and unchanged until release. Never NULL for a live entry
/// (also when the size is 0); NULL for NULL or a released entry. The buffer
/// is 4096-byte aligned.
///
/// # Safety
///
/// As `al_entry_path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_data(e: *const al_entry) -> *const u8 {
    ffi_boundary!(std::ptr::null() => {
        // SAFETY: the caller's promise.
        match unsafe { live(e) } {
            Ok(l) => l.data(),
            Err(_) => std::ptr::null(),
        }
    })
}

/// Number of bytes loaded: the file's size, or 0 for a failed load, NULL or
/// a released entry.
///
/// # Safety
///
/// As `al_entry_path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_size(e: *const al_entry) -> usize {
    ffi_boundary!(0 => {
        // SAFETY: the caller's promise.
        unsafe { live(e) }.map_or(0, |l| l.size())
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

/// Writes path, data, sizes, error and latency of `e` to `*out` in one call
/// (written only on success). Returns 0 or `-EINVAL` (NULL, released).
///
/// # Safety
///
/// As `al_entry_path`; `out` is NULL or valid for writing an
/// `al_entry_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_get_info(e: *const al_entry, out: *mut al_entry_info) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: the caller's promise.
        let l = unsafe { live(e) }?;
        let (path, path_len) = l.path();
        let info = al_entry_info {
            path,
            path_len,
            data: l.data(),
            size: l.size(),
            error: l.error(),
            reserved: 0,
            latency_ns: l.latency_ns(),
        };
        // SAFETY: non-NULL and writable (caller).
        unsafe { put(out, info) };
        Ok(())
    })
}

/// Gives the entry back to its worker: its buffer may be reused at once, so
/// pointers from `al_entry_path`/`al_entry_data` become invalid. NULL and
/// an already released entry are ignored (harmless).
///
/// # Safety
///
/// As `al_entry_path`; no other thread may be reading the entry's data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_entry_release(e: *mut al_entry) {
    ffi_boundary!(() => {
        // SAFETY: the caller's promise.
        let _ = unsafe { release(e) };
    })
}

/// Releases `n` entries (as `al_entry_release` each; NULL elements and
/// released entries are skipped). Returns the number released now, 0 when
/// `entries` is NULL.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::loader::{al_config_default, al_loader, al_loader_free, al_loader_new};
    use crate::ffi::loader::{al_loader_start, al_loader_worker};
    use crate::ffi::worker::{al_worker_free, al_worker_request, al_worker_wait_get};

    /// A stale handle stays dead through `window - 1` re-deliveries of its
    /// entry; the `window`-th aliases it (the documented limit).
    #[test]
    fn stale_handles_stay_dead_for_a_window_of_generations() {
        let mut cfg = std::mem::MaybeUninit::uninit();
        let mut l: *mut al_loader = std::ptr::null_mut();
        let mut w: *mut al_worker = std::ptr::null_mut();
        let mut e: *mut al_entry = std::ptr::null_mut();
        // SAFETY: every pointer passed is valid for what each call does
        // with it (see the header); handles are used only while live.
        unsafe {
            al_config_default(cfg.as_mut_ptr());
            let mut cfg = cfg.assume_init();
            cfg.queue_depth = 1;
            cfg.loader_threads = 1;
            assert_eq!(al_loader_new(&cfg, &mut l), 0);
            assert_eq!(al_loader_start(l), 0);
            assert_eq!(al_loader_worker(l, 0, &mut w), 0);
            let window = (*w).window();
            let mut first = std::ptr::null_mut();
            for i in 0..=window {
                assert_eq!(al_worker_request(w, c"/proc/self/stat".as_ptr()), 0);
                assert_eq!(al_worker_wait_get(w, 5_000_000_000, &mut e), 0);
                assert_eq!(al_entry_error(e), 0);
                if i == 0 {
                    first = e;
                } else if i < window {
                    assert_ne!(e, first);
                    assert_eq!(al_entry_error(first), -libc::EINVAL);
                } else {
                    assert_eq!(e, first, "slot reused after `window` generations");
                }
                al_entry_release(e);
                assert_eq!(al_entry_error(e), -libc::EINVAL);
            }
            al_worker_free(w);
            al_loader_free(l);
        }
    }
}
