//! The few audited places that turn C pointers into Rust references.
//!
//! Every one checks for NULL and returns `EINVAL`; what a check cannot see
//! (a dangling or misaligned pointer) is the caller's `# Safety` promise.

use std::ffi::{CStr, c_char};

use super::panic::Errno;

/// `&T` from a pointer the caller promises valid (or NULL).
///
/// # Safety
///
/// `p` is NULL or points to a live, aligned `T` that nobody mutates
/// (other than through atomics) for `'a`.
pub(crate) unsafe fn try_ref<'a, T>(p: *const T) -> Result<&'a T, Errno> {
    // SAFETY: non-NULL `p` is valid for `'a` by the caller's promise.
    unsafe { p.as_ref() }.ok_or(Errno::INVAL)
}

/// Checks that an output pointer is not NULL; write it with [`put`].
pub(crate) fn try_out<T>(p: *mut T) -> Result<*mut T, Errno> {
    if p.is_null() {
        Err(Errno::INVAL)
    } else {
        Ok(p)
    }
}

/// Writes `v` to an output pointer checked by [`try_out`].
///
/// # Safety
///
/// `p` is non-NULL, aligned and valid for a write of a `T`.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) {
    debug_assert!(!p.is_null());
    // SAFETY: the caller's promise; `write` does not drop the old value,
    // which is uninitialised C memory.
    unsafe { p.write(v) }
}

/// Writes a span (start, length) to two output pointers checked by
/// [`try_out`].
///
/// # Safety
///
/// As [`put`], for both pointers.
pub(crate) unsafe fn put_span<P>(base: *mut P, len: *mut usize, span: (P, usize)) {
    // SAFETY: the caller's promise, for each pointer.
    unsafe {
        put(base, span.0);
        put(len, span.1);
    }
}

/// A NUL-terminated C string.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn try_cstr<'a>(p: *const c_char) -> Result<&'a CStr, Errno> {
    if p.is_null() {
        return Err(Errno::INVAL);
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's promise.
    Ok(unsafe { CStr::from_ptr(p) })
}

/// A path given as `len` bytes at `p`: as [`try_bytes`], except that a
/// NULL path is `EINVAL` whatever `len` (no request names the empty path
/// by NULL).
///
/// # Safety
///
/// As [`try_bytes`].
pub(crate) unsafe fn try_path_bytes<'a>(p: *const u8, len: usize) -> Result<&'a [u8], Errno> {
    if p.is_null() {
        return Err(Errno::INVAL);
    }
    // SAFETY: forwarded from this function's contract.
    unsafe { try_bytes(p, len) }
}

/// `len` bytes at `p`; NULL is `EINVAL` unless `len` is 0.
///
/// # Safety
///
/// `p` is NULL or valid for reads of `len` bytes for `'a`.
pub(crate) unsafe fn try_bytes<'a>(p: *const u8, len: usize) -> Result<&'a [u8], Errno> {
    if p.is_null() {
        return if len == 0 { Ok(&[]) } else { Err(Errno::INVAL) };
    }
    if len > isize::MAX as usize {
        return Err(Errno::INVAL);
    }
    // SAFETY: non-NULL, valid for `len` bytes by the caller's promise, and
    // `len` fits a slice.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}
