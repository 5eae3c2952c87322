//! `al_probe`: what this machine can do for the loader (see
//! `crate::probe`), as JSON or text for people.

use std::ffi::{OsStr, c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::panic::{Errno, ffi_boundary};
use super::ptr::try_cstr;

/// `al_probe` flag: write JSON (one object; see docs/c-api.md) instead of
/// the text `asyncloader info` prints.
pub const AL_PROBE_JSON: u32 = 1;

/// Probes this machine and each of `paths[0 .. n_paths-1]` (files or
/// directories that data will be loaded from): the kernel, whether io_uring
/// can be set up and if not why (errno; seccomp, the
/// `kernel.io_uring_disabled` sysctl, kernel age or `RLIMIT_MEMLOCK`), the
/// io_uring opcodes the engine needs, the backend `AL_BACKEND_AUTO` picks
/// (with `ASYNCLOADER_BACKEND`), and per path the file system, whether
/// `O_DIRECT` works there with its `STATX_DIOALIGN`, and the block
/// device's queue depth and read-ahead. Writes the report to `buf`,
/// NUL-terminated and cut to `len - 1` bytes, and returns its full length
/// in bytes (without the NUL), as `snprintf` does: a result `>= len` means
/// it was cut (call again with a larger buffer; `len == 0` writes nothing
/// and `buf` may be NULL). `flags`: 0 for text, `AL_PROBE_JSON` for JSON.
/// Returns `-EINVAL` for unknown flags, NULL `paths` with `n_paths > 0`, a
/// NULL path, or NULL `buf` with `len > 0`. Thread-safe; changes nothing
/// (sets up and closes two small io_uring instances, opens and reads one
/// file per path with `O_DIRECT`).
///
/// # Safety
///
/// `paths` is NULL or points to `n_paths` readable pointers, each NULL or
/// NUL-terminated; `buf` is NULL or valid for writing `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_probe(
    paths: *const *const c_char,
    n_paths: usize,
    flags: u32,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    ffi_boundary!(-super::panic::PANIC_ERRNO => {
        let r = (|| -> Result<c_int, Errno> {
            if flags & !AL_PROBE_JSON != 0
                || (paths.is_null() && n_paths > 0)
                || (buf.is_null() && len > 0)
                || n_paths > isize::MAX as usize / std::mem::size_of::<*const c_char>()
            {
                return Err(Errno::INVAL);
            }
            let ps: &[*const c_char] = if n_paths == 0 {
                &[]
            } else {
                // SAFETY: non-NULL, `n_paths` readable pointers (caller), the
                // byte size fits isize (checked).
                unsafe { std::slice::from_raw_parts(paths, n_paths) }
            };
            let mut owned = Vec::with_capacity(ps.len());
            for &p in ps {
                // SAFETY: NULL or NUL-terminated (caller).
                let c = unsafe { try_cstr(p) }?;
                owned.push(Path::new(OsStr::from_bytes(c.to_bytes())).to_path_buf());
            }
            let probe = crate::probe::probe(&owned);
            let text = if flags & AL_PROBE_JSON != 0 {
                probe.to_json()
            } else {
                probe.to_string()
            };
            if len > 0 {
                let n = text.len().min(len - 1);
                // SAFETY: `buf` is valid for `len > n` bytes (caller); the
                // text is a separate Rust allocation.
                unsafe {
                    std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
                    buf.add(n).write(0);
                }
            }
            Ok(text.len().min(c_int::MAX as usize) as c_int)
        })();
        match r {
            Ok(n) => n,
            Err(Errno(e)) => -e,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lengths_and_errors() {
        let p = [c"/".as_ptr()];
        // SAFETY: a valid path array; NULL buffer with len 0.
        let need = unsafe { al_probe(p.as_ptr(), 1, AL_PROBE_JSON, std::ptr::null_mut(), 0) };
        assert!(need > 2);
        let mut buf = vec![0 as c_char; need as usize + 1];
        // SAFETY: `buf` holds need + 1 bytes.
        let got = unsafe { al_probe(p.as_ptr(), 1, AL_PROBE_JSON, buf.as_mut_ptr(), buf.len()) };
        // The report may differ by a few bytes between calls (read-ahead,
        // a file appearing): it is complete when got < len.
        assert!(got > 2 && (got as usize) < buf.len() + 64);
        assert_eq!(buf[0] as u8, b'{');
        let mut small = [1 as c_char; 4];
        // SAFETY: `small` holds 4 bytes.
        let n = unsafe { al_probe(std::ptr::null(), 0, 0, small.as_mut_ptr(), 4) };
        assert!(n >= 4);
        assert_eq!(small[3], 0, "cut and NUL-terminated");
        // SAFETY: invalid arguments are refused before any pointer is read.
        unsafe {
            assert_eq!(
                al_probe(std::ptr::null(), 1, 0, small.as_mut_ptr(), 4),
                -libc::EINVAL
            );
            assert_eq!(
                al_probe(std::ptr::null(), 0, 2, small.as_mut_ptr(), 4),
                -libc::EINVAL
            );
            assert_eq!(
                al_probe(std::ptr::null(), 0, 0, std::ptr::null_mut(), 4),
                -libc::EINVAL
            );
            let np = [std::ptr::null::<c_char>()];
            assert_eq!(
                al_probe(np.as_ptr(), 1, 0, small.as_mut_ptr(), 4),
                -libc::EINVAL
            );
        }
    }
}
