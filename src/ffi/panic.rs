//! The panic boundary and the error plumbing of the C ABI.
//!
//! Every export runs its body through `ffi_boundary!`: the body runs
//! under `catch_unwind`, so a panic (a bug in this library) becomes a
//! return value instead of unwinding into C, which would be undefined
//! behaviour, or aborting the embedding process (a Python interpreter, say).
//!
//! - `ffi_boundary!(int { body })`: the body returns `Result<(), Errno>` and
//!   the export returns `0` or `-errno`; a panic returns
//!   `-ENOTRECOVERABLE`.
//! - `ffi_boundary!(value => { body })`: the body returns the export's own
//!   type; a panic returns `value` (NULL, 0, ...).

use std::os::raw::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::Error;

/// Returned (negated) by an export whose body panicked.
pub(crate) const PANIC_ERRNO: c_int = libc::ENOTRECOVERABLE;

/// A positive errno, the error type of every export body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Errno(pub(crate) c_int);

impl Errno {
    /// `EINVAL`: a NULL pointer, an id out of range, a stale handle.
    pub const INVAL: Errno = Errno(libc::EINVAL);
}

impl From<Error> for Errno {
    fn from(e: Error) -> Self {
        Errno(e.errno())
    }
}

/// `0` or `-errno`.
pub(crate) fn rc(r: Result<(), Errno>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(Errno(e)) => -e.abs().max(1),
    }
}

/// Runs an `int` export's body; see the module docs.
pub(crate) fn catch_int(f: impl FnOnce() -> Result<(), Errno>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => rc(r),
        Err(_) => -PANIC_ERRNO,
    }
}

/// Runs a value-returning export's body; `on_panic` if it panics.
pub(crate) fn catch_or<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// Wraps the body of every `extern "C"` function; see the module docs.
macro_rules! ffi_boundary {
    (int $body:block) => {
        $crate::ffi::panic::catch_int(
            || -> ::core::result::Result<(), $crate::ffi::panic::Errno> { $body },
        )
    };
    ($on_panic:expr => $body:block) => {
        $crate::ffi::panic::catch_or($on_panic, || $body)
    };
}
pub(crate) use ffi_boundary;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_error_codes() {
        let r = ffi_boundary!(int {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Ok(())
        });
        assert_eq!(r, -PANIC_ERRNO);
        let p = ffi_boundary!(std::ptr::null::<u8>() => {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            c"x".as_ptr().cast::<u8>()
        });
        assert!(p.is_null());
        assert_eq!(
            ffi_boundary!(int { Err(Errno(libc::EAGAIN)) }),
            -libc::EAGAIN
        );
        assert_eq!(ffi_boundary!(int { Ok(()) }), 0);
    }
}
