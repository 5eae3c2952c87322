//! The C ABI: `include/asyncloader.h`, generated from this module by
//! cbindgen (see `build.rs`). This is the only module with `extern "C"`
//! functions.
//!
//! Conventions (shared with the header's users, see `docs/c-api.md`):
//!
//! - Names are `al_<object>_<verb>`; handles are opaque pointers made by
//!   `_new`/`_worker`/`_attach`/`_get` and given back with `_free`/`_release`.
//! - `int` results are 0 or a negative errno (`al_strerror` explains them),
//!   like liburing; `errno` itself is never set.
//! - Inputs first, outputs last; a buffer is followed by its length; an
//!   output pointer is written only on success unless its docs say "always".
//! - NULL is checked everywhere and gives `-EINVAL` (or NULL/0 from
//!   accessors); so do unknown worker ids and released entries.
//! - No panic crosses the boundary: each export runs under
//!   `panic::ffi_boundary!`, and a panic returns `-ENOTRECOVERABLE`.
//! - Paths are bytes: never required to be UTF-8.
//!
//! Modules: `panic` (the boundary), `ptr` (NULL-checked pointer
//! conversions), [`loader`], [`worker`], [`entry`], one per C object.
#![allow(non_camel_case_types)]

use std::ffi::{CString, c_char, c_int};
use std::sync::atomic::{AtomicPtr, Ordering};

pub(crate) mod handles;
pub(crate) mod panic;
pub(crate) mod ptr;
pub(crate) mod sized;

// In this order in the header: loader, worker, entry.
pub mod loader;

pub mod worker;

pub mod entry;

pub mod probe;

pub use entry::{al_batch_item, al_entry, al_entry_info};
pub use loader::{al_config, al_loader, al_stats};
pub use worker::al_worker;

use panic::ffi_boundary;

/// Version of the C ABI: bumped on every incompatible change of a function
/// or struct in this header. Compare with `al_abi_version()` at run time.
/// (`AL_VERSION_MAJOR`/`_MINOR`/`_PATCH`/`_STRING`, the library version,
/// are written into the header by `build.rs` from Cargo.toml.)
///
/// Version 2: `al_config`, `al_stats` and `al_entry_info` start with
/// `struct_size` (set it to `sizeof` the struct before any call that reads
/// or writes one); `al_config_default` and `al_entry_release` return `int`;
/// `al_last_error_message`.
pub const AL_ABI_VERSION: u32 = 2;

/// The C ABI version of the loaded library (`AL_ABI_VERSION` of the header
/// it was built with). A program should refuse to run when it differs from
/// the `AL_ABI_VERSION` it was compiled against. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn al_abi_version() -> u32 {
    AL_ABI_VERSION
}

/// The library version (`AL_VERSION_STRING` of the header it was built
/// with, e.g. "0.1.0"), a static string. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn al_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Errnos explained with our own words where the library gives them a
/// specific meaning.
fn own_message(e: c_int) -> Option<&'static str> {
    Some(match e {
        0 => "success",
        libc::EAGAIN => "queue full, or no entry ready yet (EAGAIN)",
        libc::EINVAL => "invalid argument: NULL, out of range, or a released entry (EINVAL)",
        libc::ENAMETOOLONG => "path too long: at most 4095 bytes (ENAMETOOLONG)",
        libc::ESHUTDOWN => "the loader was shut down (ESHUTDOWN)",
        libc::EOWNERDEAD => "the loader process or threads died (EOWNERDEAD)",
        libc::ETIMEDOUT => "timed out waiting for an entry (ETIMEDOUT)",
        libc::EBUSY => "the loader is already running (EBUSY)",
        libc::EFBIG => "file or range larger than max_file_size (EFBIG)",
        libc::EXDEV => {
            "destination memory registered in another process than the one loading (EXDEV)"
        }
        libc::E2BIG => sized::E2BIG_MESSAGE,
        libc::ENOTRECOVERABLE => {
            "internal error in asyncloader (a bug: please report it) (ENOTRECOVERABLE)"
        }
        _ => return None,
    })
}

const STRERROR_MAX: usize = 4096;

/// `al_strerror(code)` as a String.
pub(crate) fn describe(code: c_int) -> String {
    // SAFETY: al_strerror returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(al_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

/// Copies the message of the calling thread's last failed call (one that
/// returned a negative errno) to `buf`, NUL-terminated and cut to `len - 1`
/// bytes, and returns the message's full length in bytes (without the
/// NUL), as `snprintf` does: a result `>= len` means it was cut. With
/// `len == 0` nothing is written (`buf` may be NULL): ask for the length
/// first. The message says more than `al_strerror`: a config error names
/// the field and why (`"invalid config: queue_depth: 0 is not in
/// 1..=65536: Invalid argument"`), a struct-size error says which struct.
/// Empty (returns 0) before any failure in this thread; successful calls
/// leave it alone. Returns `-EINVAL` for NULL `buf` with `len > 0`.
/// Thread-safe (the message is per thread).
///
/// # Safety
///
/// `buf` is NULL or valid for writing `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_last_error_message(buf: *mut c_char, len: usize) -> c_int {
    ffi_boundary!(-panic::PANIC_ERRNO => {
        if buf.is_null() && len > 0 {
            return -libc::EINVAL;
        }
        panic::with_last_error(|m| {
            if len > 0 {
                let n = m.len().min(len - 1);
                // SAFETY: `buf` is valid for `len > n` bytes (caller); the
                // message is a separate Rust allocation.
                unsafe {
                    std::ptr::copy_nonoverlapping(m.as_ptr(), buf.cast::<u8>(), n);
                    buf.add(n).write(0);
                }
            }
            m.len().min(c_int::MAX as usize) as c_int
        })
    })
}

/// A description of `code`, an errno or negated errno (both work, so
/// `al_strerror(rc)` is fine for any result). The string is static: valid
/// forever, never to be freed. Thread-safe. Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn al_strerror(code: c_int) -> *const c_char {
    ffi_boundary!(c"unknown error".as_ptr() => {
        // One leaked string per errno, made on first use and published with
        // a compare-and-swap: no lock, so a child forked while another
        // thread was filling the table never waits for it.
        static TABLE: [AtomicPtr<c_char>; STRERROR_MAX] =
            [const { AtomicPtr::new(std::ptr::null_mut()) }; STRERROR_MAX];
        let e = code.unsigned_abs() as usize;
        if e >= STRERROR_MAX {
            return c"unknown error".as_ptr();
        }
        let slot = &TABLE[e];
        let p = slot.load(Ordering::Acquire);
        if !p.is_null() {
            return p;
        }
        let s = own_message(e as c_int).map(str::to_owned).unwrap_or_else(|| {
            let s = std::io::Error::from_raw_os_error(e as c_int).to_string();
            // Drop Rust's " (os error N)" suffix.
            match s.rfind(" (os error") {
                Some(i) => s[..i].to_owned(),
                None => s,
            }
        });
        let mine = CString::new(s).unwrap_or_default().into_raw();
        match slot.compare_exchange(std::ptr::null_mut(), mine, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => mine,
            Err(theirs) => {
                // SAFETY: `mine` came from CString::into_raw just above and
                // was never published.
                drop(unsafe { CString::from_raw(mine) });
                theirs
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use entry::{al_entry_error, al_entry_release};
    use loader::{
        al_config_default, al_loader_free, al_loader_new, al_loader_start, al_loader_worker,
    };
    use std::ffi::CStr;
    use worker::{al_worker_free, al_worker_request, al_worker_wait_get};

    /// A stale handle stays dead through `window - 1` re-deliveries of its
    /// entry; the `window`-th aliases it (the documented limit).
    #[test]
    fn stale_handles_stay_dead_for_a_window_of_generations() {
        let cfg = std::mem::MaybeUninit::<al_config>::zeroed();
        let mut l: *mut al_loader = std::ptr::null_mut();
        let mut w: *mut al_worker = std::ptr::null_mut();
        let mut e: *mut al_entry = std::ptr::null_mut();
        // SAFETY: every pointer passed is valid for what each call does
        // with it (see the header); handles are used only while live.
        unsafe {
            let mut cfg = cfg.assume_init();
            cfg.struct_size = std::mem::size_of::<al_config>() as u32;
            assert_eq!(al_config_default(&mut cfg), 0);
            cfg.queue_depth = 1;
            cfg.loader_threads = 1;
            assert_eq!(al_loader_new(&cfg, &mut l), 0);
            assert_eq!(al_loader_start(l), 0);
            assert_eq!(al_loader_worker(l, 0, &mut w), 0);
            let window = handles::window_for(1);
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

    #[test]
    fn versions_agree() {
        assert_eq!(al_abi_version(), AL_ABI_VERSION);
        // SAFETY: al_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(al_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn strerror_covers_both_signs() {
        for c in [0, 2, -2, libc::EAGAIN, -libc::ESHUTDOWN, 100_000, i32::MIN] {
            // SAFETY: al_strerror returns static NUL-terminated strings.
            let s = unsafe { CStr::from_ptr(al_strerror(c)) };
            assert!(!s.to_bytes().is_empty());
        }
        // SAFETY: as above.
        let s = unsafe { CStr::from_ptr(al_strerror(-libc::ENOENT)) };
        assert_eq!(s.to_str().unwrap(), "No such file or directory");
    }
}
