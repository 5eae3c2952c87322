//! Structs that can grow: `al_config`, `al_stats`, `al_entry_info`.
//!
//! Each starts with `uint32_t struct_size`, which the caller sets to
//! `sizeof` the struct it was compiled with (as Linux's `open_how` and
//! `clone_args` carry their size). The library then reads and writes only
//! the fields that lie wholly inside `min(struct_size, its own size)`:
//!
//! - an older caller (smaller struct): nothing is read or written past its
//!   size, and fields it does not have take their defaults;
//! - a newer caller (larger struct): accepted as input only if the bytes
//!   the library does not know are all zero (`E2BIG` otherwise: the caller
//!   set a field this library cannot honour); as output, only the
//!   library's fields are written;
//! - `struct_size` below 4, or cutting a field in two: `EINVAL`; above
//!   [`MAX_STRUCT_SIZE`]: `E2BIG`.

use super::panic::Errno;

/// Largest `struct_size` accepted (one page, as the kernel's limit).
pub(crate) const MAX_STRUCT_SIZE: usize = 4096;

/// Offset of the first byte past field `$f` of `$t`, and its offset.
macro_rules! span {
    ($t:ty, $f:ident) => {{
        #[allow(clippy::extra_unused_type_parameters)]
        fn len<T, F>(_: fn(&T) -> &F) -> usize {
            ::std::mem::size_of::<F>()
        }
        let off = ::std::mem::offset_of!($t, $f);
        (off, off + len::<$t, _>(|s: &$t| &s.$f))
    }};
}
pub(crate) use span;

/// Reads field `$f` of the caller's `*$p` (a `*const $t`) when it lies
/// inside the first `$n` bytes; `None` otherwise.
macro_rules! take {
    ($p:expr, $n:expr, $t:ty, $f:ident) => {{
        let (off, end) = $crate::ffi::sized::span!($t, $f);
        if end <= $n {
            // SAFETY: the caller's struct holds at least `$n` readable bytes
            // (its struct_size, checked by `covered`) and the field lies
            // inside them, at its natural alignment within an aligned struct.
            Some(unsafe {
                $crate::ffi::sized::field_ptr(($p).cast_mut(), off, |s: &$t| &s.$f).read()
            })
        } else {
            None
        }
    }};
}
pub(crate) use take;

/// Writes `$v` to field `$f` of the caller's `*$p` (a `*mut $t`) when it
/// lies inside the first `$n` bytes.
macro_rules! give {
    ($p:expr, $n:expr, $t:ty, $f:ident, $v:expr) => {{
        let (off, end) = $crate::ffi::sized::span!($t, $f);
        if end <= $n {
            let v = $v;
            // SAFETY: the caller's struct holds at least `$n` writable bytes
            // (its struct_size, checked by `covered`) and the field lies
            // inside them, at its natural alignment within an aligned struct.
            unsafe { $crate::ffi::sized::field_ptr($p, off, |s: &$t| &s.$f).write(v) };
        }
    }};
}
pub(crate) use give;

/// The field at byte `off` of `*p`, typed by `_field` (which only names it).
pub(crate) fn field_ptr<T, F>(p: *mut T, off: usize, _field: fn(&T) -> &F) -> *mut F {
    p.cast::<u8>().wrapping_add(off).cast()
}

/// The caller's `struct_size` (the struct's first `u32`).
///
/// # Safety
///
/// `p` is non-NULL, aligned, and points to at least 4 readable bytes.
pub(crate) unsafe fn struct_size(p: *const u8) -> usize {
    // SAFETY: the caller's promise.
    unsafe { p.cast::<u32>().read() as usize }
}

/// Bytes of the library's struct (`ours` bytes, fields at `spans`) that a
/// caller's struct of `size` bytes covers, with the errors of the module
/// docs. `name` is the struct's name for the messages.
pub(crate) fn covered(
    name: &str,
    size: usize,
    ours: usize,
    spans: &[(usize, usize)],
) -> Result<usize, Errno> {
    if size < 4 {
        return Err(Errno::msg(
            libc::EINVAL,
            format!("{name}.struct_size is {size}: set it to sizeof({name})"),
        ));
    }
    if size > MAX_STRUCT_SIZE {
        return Err(Errno::msg(
            libc::E2BIG,
            format!("{name}.struct_size is {size}: more than {MAX_STRUCT_SIZE}, not a size"),
        ));
    }
    let n = size.min(ours);
    if let Some(&(off, end)) = spans.iter().find(|&&(off, end)| off < n && n < end) {
        return Err(Errno::msg(
            libc::EINVAL,
            format!("{name}.struct_size is {size}: it cuts the field at bytes {off}..{end}"),
        ));
    }
    Ok(n)
}

/// Checks that the bytes `ours .. size` of a newer caller's input struct
/// are zero (fields this library does not know, left unset).
///
/// # Safety
///
/// `p` points to at least `size` readable bytes.
pub(crate) unsafe fn unknown_tail_is_zero(
    name: &str,
    p: *const u8,
    size: usize,
    ours: usize,
) -> Result<(), Errno> {
    for i in ours..size {
        // SAFETY: i < size, inside the caller's struct (caller's promise).
        if unsafe { p.add(i).read() } != 0 {
            return Err(Errno::msg(
                libc::E2BIG,
                format!(
                    "{name}: byte {i} is set, past the {ours} bytes this library knows \
                     (a field of a newer header): use a newer libasyncloader or leave it 0"
                ),
            ));
        }
    }
    Ok(())
}

/// `E2BIG`'s meaning for `al_strerror`.
pub(crate) const E2BIG_MESSAGE: &str =
    "struct from a newer header with fields this library does not know (E2BIG)";

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    struct S {
        struct_size: u32,
        a: u32,
        b: u64,
        c: u8,
    }

    #[test]
    fn spans_are_field_ranges() {
        assert_eq!(span!(S, struct_size), (0, 4));
        assert_eq!(span!(S, b), (8, 16));
        assert_eq!(span!(S, c), (16, 17));
    }

    #[test]
    fn covered_sizes() {
        let spans = [span!(S, struct_size), span!(S, a), span!(S, b), span!(S, c)];
        let ours = std::mem::size_of::<S>();
        assert_eq!(covered("S", 8, ours, &spans), Ok(8));
        assert_eq!(covered("S", 4, ours, &spans), Ok(4));
        assert_eq!(covered("S", 64, ours, &spans), Ok(ours));
        assert_eq!(covered("S", 3, ours, &spans), Err(Errno(libc::EINVAL)));
        assert_eq!(covered("S", 12, ours, &spans), Err(Errno(libc::EINVAL)));
        assert_eq!(covered("S", 4097, ours, &spans), Err(Errno(libc::E2BIG)));
    }
}
