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

use std::cell::{Cell, RefCell};
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

    /// `code`, with a message for `al_last_error_message`.
    pub(crate) fn msg(code: c_int, msg: impl Into<String>) -> Errno {
        set_last_error(msg.into());
        Errno(code)
    }
}

impl From<Error> for Errno {
    fn from(e: Error) -> Self {
        // The engine's message says what failed (a config error names the
        // field); drop Rust's " (os error N)" tail.
        let mut m = e.to_string();
        if let Some(i) = m.rfind(" (os error") {
            m.truncate(i);
        }
        Errno::msg(e.errno(), m)
    }
}

thread_local! {
    /// The message of the last failed `int` call of this thread.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
    /// Whether the running call set `LAST_ERROR` itself.
    static FRESH: Cell<bool> = const { Cell::new(false) };
}

/// Sets this thread's last error message.
pub(crate) fn set_last_error(msg: String) {
    LAST_ERROR.with(|l| *l.borrow_mut() = msg);
    FRESH.with(|f| f.set(true));
}

/// Runs `f` with this thread's last error message.
pub(crate) fn with_last_error<R>(f: impl FnOnce(&str) -> R) -> R {
    LAST_ERROR.with(|l| f(&l.borrow()))
}

/// `0` or `-errno`.
pub(crate) fn rc(r: Result<(), Errno>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(Errno(e)) => -e.abs().max(1),
    }
}

/// Runs an `int` export's body; see the module docs.
///
/// A failure sets this thread's last error message: the one the body gave
/// (`Errno::msg`, an engine `Error`), else the errno's description.
pub(crate) fn catch_int(f: impl FnOnce() -> Result<(), Errno>) -> c_int {
    FRESH.with(|x| x.set(false));
    let r = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => rc(r),
        Err(_) => {
            set_last_error("internal error in asyncloader (a panic: please report it)".into());
            -PANIC_ERRNO
        }
    };
    if r < 0 && !FRESH.with(Cell::get) {
        set_last_error(super::describe(r));
    }
    r
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
