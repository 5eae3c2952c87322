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
use std::sync::OnceLock;

pub(crate) mod handles;
pub(crate) mod panic;
pub(crate) mod ptr;

// In this order in the header: loader, worker, entry.
pub mod loader;

pub mod worker;

pub mod entry;

pub use entry::{al_entry, al_entry_info};
pub use loader::{al_config, al_loader, al_stats};
pub use worker::al_worker;

use panic::ffi_boundary;

/// Version of the C ABI: bumped on every incompatible change of a function
/// or struct in this header. Compare with `al_abi_version()` at run time.
/// (`AL_VERSION_MAJOR`/`_MINOR`/`_PATCH`/`_STRING`, the library version,
/// are written into the header by `build.rs` from Cargo.toml.)
pub const AL_ABI_VERSION: u32 = 1;

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
        libc::EFBIG => "file larger than max_file_size (EFBIG)",
        libc::ENOTRECOVERABLE => {
            "internal error in asyncloader (a bug: please report it) (ENOTRECOVERABLE)"
        }
        _ => return None,
    })
}

const STRERROR_MAX: usize = 4096;

/// A description of `code`, an errno or negated errno (both work, so
/// `al_strerror(rc)` is fine for any result). The string is static: valid
/// forever, never to be freed. Thread-safe. Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn al_strerror(code: c_int) -> *const c_char {
    ffi_boundary!(c"unknown error".as_ptr() => {
        static TABLE: OnceLock<Vec<CString>> = OnceLock::new();
        let e = code.unsigned_abs() as usize;
        if e >= STRERROR_MAX {
            return c"unknown error".as_ptr();
        }
        let table = TABLE.get_or_init(|| {
            (0..STRERROR_MAX as c_int)
                .map(|e| {
                    let s = own_message(e).map(str::to_owned).unwrap_or_else(|| {
                        let s = std::io::Error::from_raw_os_error(e).to_string();
                        // Drop Rust's " (os error N)" suffix.
                        match s.rfind(" (os error") {
                            Some(i) => s[..i].to_owned(),
                            None => s,
                        }
                    });
                    CString::new(s).unwrap_or_default()
                })
                .collect()
        });
        table[e].as_ptr()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

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
