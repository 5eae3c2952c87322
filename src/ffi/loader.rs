//! `al_loader`, `al_config` and `al_stats`: creating, running, attaching to
//! and stopping a loader.

use std::ffi::{CString, c_char, c_int};
use std::sync::atomic::Ordering;

use super::panic::{Errno, ffi_boundary};
use super::ptr::{put, try_cstr, try_out, try_ref};
use super::worker::{al_worker, new_handle};
use crate::config::{BackendKind, Config};
use crate::loader::Loader;

/// Stats/config backend value: pick io_uring, fall back to threads (config);
/// no backend running yet (stats).
pub const AL_BACKEND_AUTO: u32 = 0;
/// Backend value: io_uring.
pub const AL_BACKEND_IO_URING: u32 = 1;
/// Backend value: the `pread` thread-pool fallback.
pub const AL_BACKEND_THREADS: u32 = 2;

/// Loader state (`al_stats.state`): created, no loader runs yet.
pub const AL_STATE_CREATED: u32 = 0;
/// Loader state: a loader runs.
pub const AL_STATE_RUNNING: u32 = 1;
/// Loader state: shutdown requested, files in flight finish.
pub const AL_STATE_STOPPING: u32 = 2;
/// Loader state: the loader exited after a shutdown.
pub const AL_STATE_STOPPED: u32 = 3;
/// Loader state: the loader died without a shutdown.
pub const AL_STATE_DEAD: u32 = 4;

/// How a loader is sized and how it batches. Fill it with
/// `al_config_default` first, then change fields: fields may be added at
/// the end in a later ABI version (see `AL_ABI_VERSION`).
///
/// Plain data: no ownership, any thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct al_config {
    /// Requests a worker may have outstanding (queued, in flight, or
    /// delivered and not released); each owns a `max_file_size` buffer.
    pub queue_depth: u32,
    /// Largest file, in bytes, that loads; a larger one completes with EFBIG.
    pub max_file_size: u64,
    /// Number of worker contexts (ids `0 .. n_workers - 1`).
    pub n_workers: u32,
    /// A batch is submitted once this many requests are waiting ...
    pub dispatch_n: u32,
    /// ... or once the loader loop ran this many passes without a request.
    pub idle_iters: u32,
    /// Read with O_DIRECT where the file system allows it.
    pub direct: bool,
    /// Loader threads, each with its own io_uring; 0 = one per core.
    pub loader_threads: u32,
    /// Files in flight per loader thread; 0 = default (32, 128 with direct).
    pub ring_window: u32,
    /// `AL_BACKEND_AUTO`, `AL_BACKEND_IO_URING` or `AL_BACKEND_THREADS`.
    pub backend: u32,
}

const _: () = assert!(std::mem::size_of::<al_config>() == 48);
const _: () = assert!(std::mem::align_of::<al_config>() == 8);

impl al_config {
    fn from_config(c: &Config) -> al_config {
        al_config {
            queue_depth: c.queue_depth,
            max_file_size: c.max_file_size,
            n_workers: c.n_workers,
            dispatch_n: c.dispatch_n,
            idle_iters: c.idle_iters,
            direct: c.direct,
            loader_threads: c.loader_threads,
            ring_window: c.ring_window,
            backend: c.backend as u32,
        }
    }

    /// Reads a C `al_config` without trusting its `bool` byte.
    ///
    /// # Safety
    ///
    /// `p` is non-NULL and points to a readable, aligned `al_config`.
    unsafe fn read(p: *const al_config) -> Result<Config, Errno> {
        // SAFETY: `p` is valid for reads (caller). Every field but `direct`
        // is an integer, valid for any bit pattern; `direct` is read as a
        // byte, so a C caller that stored 2 there cannot create an invalid
        // Rust `bool`.
        let (c, direct) = unsafe {
            let direct = std::ptr::addr_of!((*p).direct).cast::<u8>().read();
            let c = al_config {
                queue_depth: (*p).queue_depth,
                max_file_size: (*p).max_file_size,
                n_workers: (*p).n_workers,
                dispatch_n: (*p).dispatch_n,
                idle_iters: (*p).idle_iters,
                direct: false,
                loader_threads: (*p).loader_threads,
                ring_window: (*p).ring_window,
                backend: (*p).backend,
            };
            (c, direct != 0)
        };
        Ok(Config {
            queue_depth: c.queue_depth,
            max_file_size: c.max_file_size,
            n_workers: c.n_workers,
            dispatch_n: c.dispatch_n,
            idle_iters: c.idle_iters,
            direct,
            loader_threads: c.loader_threads,
            ring_window: c.ring_window,
            backend: BackendKind::from_u32(c.backend).ok_or(Errno::INVAL)?,
        })
    }
}

/// Counters of a loader (`al_loader_stats`), summed over its threads and
/// workers. Plain data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct al_stats {
    /// Requests accepted from workers.
    pub requests: u64,
    /// Requests completed (loaded or failed).
    pub completions: u64,
    /// Bytes loaded.
    pub bytes: u64,
    /// Completions that carry an error.
    pub errors: u64,
    /// Batches submitted to the backend.
    pub batches: u64,
    /// Files that asked for O_DIRECT and were read buffered.
    pub buffered_fallbacks: u64,
    /// Reads done with O_DIRECT.
    pub direct_reads: u64,
    /// System calls the backend made (submits and waits).
    pub syscalls: u64,
    /// Backend in use: `AL_BACKEND_IO_URING`, `AL_BACKEND_THREADS`, or 0
    /// before a loader runs.
    pub backend: u32,
    /// `AL_STATE_CREATED` ... `AL_STATE_DEAD`.
    pub state: u32,
    /// Loader threads configured.
    pub loader_threads: u32,
    /// Loader threads running now.
    pub loader_threads_alive: u32,
    /// Pid of the process running the loader (0 before it starts).
    pub loader_pid: i32,
    /// Always 0.
    pub reserved: u32,
}

const _: () = assert!(std::mem::size_of::<al_stats>() == 88);
const _: () = assert!(std::mem::align_of::<al_stats>() == 8);

/// A loader: its shared-memory region and, in the process that runs it,
/// the loader threads or loader child process.
///
/// Thread-safety: every function taking an `al_loader *` may be called from
/// several threads at once (`al_loader_become` blocks its thread while
/// others call `al_loader_shutdown`), except `al_loader_free`.
///
/// Lifetime: from `al_loader_new`/`al_loader_attach` to `al_loader_free`.
/// Workers obtained from it stay valid after `al_loader_free` (they keep
/// the shared memory mapped) but fail with `-ESHUTDOWN` once the loader is
/// shut down. A process forked after `al_loader_new` inherits a copy of the
/// handle; freeing that copy only unmaps, it never stops the loader.
pub struct al_loader {
    loader: Loader,
    name: CString,
}

impl al_loader {
    fn boxed(loader: Loader) -> *mut al_loader {
        // Names are "asyncloader-<pid>-<fd>-<hex>": never hold a NUL.
        let name = CString::new(loader.name()).unwrap_or_default();
        Box::into_raw(Box::new(al_loader { loader, name }))
    }
}

/// Fills `*out` with the default configuration: queue_depth 64,
/// max_file_size 4 MiB, n_workers 1, dispatch_n 8, idle_iters 16, direct
/// false, loader_threads 0 (one per core), ring_window 0 (default),
/// backend `AL_BACKEND_AUTO`. Does nothing when `out` is NULL.
///
/// # Safety
///
/// `out` is NULL or valid for writing an `al_config`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_config_default(out: *mut al_config) {
    ffi_boundary!(() => {
        if let Ok(out) = try_out(out) {
            // SAFETY: non-NULL and writable (caller).
            unsafe { put(out, al_config::from_config(&Config::default())) };
        }
    })
}

/// Creates a loader for `*cfg` and stores it in `*out` (written only on
/// success). No loader runs yet: call `al_loader_start`, `al_loader_spawn`
/// or `al_loader_become`; requests made before wait in the queues.
///
/// Returns 0, `-EINVAL` (NULL argument, a field out of range), or the
/// errno of a failed `memfd_create`/`mmap` (`-ENOMEM`, `-EMFILE`, ...).
/// The caller owns `*out` and frees it with `al_loader_free`.
///
/// # Safety
///
/// `cfg` is NULL or points to a readable `al_config`; `out` is NULL or
/// valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_new(cfg: *const al_config, out: *mut *mut al_loader) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        if cfg.is_null() {
            return Err(Errno::INVAL);
        }
        // SAFETY: non-NULL and readable (caller).
        let cfg = unsafe { al_config::read(cfg) }?;
        let loader = Loader::new(cfg)?;
        // SAFETY: non-NULL and writable (caller).
        unsafe { put(out, al_loader::boxed(loader)) };
        Ok(())
    })
}

/// Runs the loader in background threads of this process. Returns 0,
/// `-EBUSY` when a loader already runs, `-ESHUTDOWN` after a shutdown,
/// `-EINVAL` for NULL. The threads do not exist in processes forked later:
/// keep this process alive (it serves them) or use `al_loader_spawn`.
///
/// # Safety
///
/// `l` is NULL or a live loader from `al_loader_new`/`al_loader_attach`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_start(l: *mut al_loader) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        Ok(l.loader.start()?)
    })
}

/// Forks a loader process; returns 0 in the parent (the child never
/// returns: it runs the loader and exits at shutdown, or when this process
/// dies). Errors as `al_loader_start`, plus fork's (`-EAGAIN`, `-ENOMEM`).
///
/// # Safety
///
/// As `al_loader_start`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_spawn(l: *mut al_loader) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        Ok(l.loader.spawn()?)
    })
}

/// Runs the loader in the calling thread (plus `loader_threads - 1` more)
/// until a shutdown requested by any participant, then returns 0. Errors as
/// `al_loader_start`; `-EOWNERDEAD`-style errnos when the loader failed.
///
/// # Safety
///
/// As `al_loader_start`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_become(l: *mut al_loader) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        Ok(l.loader.become_loader()?)
    })
}

/// Stops the loader: files in flight finish, waiting workers wake and get
/// `-ESHUTDOWN` once nothing is left to deliver, later requests fail.
/// In the process running the loader, waits for its threads or child to
/// exit. Idempotent; any participant (also an attached process) may call
/// it. Returns 0 or `-EINVAL` for NULL.
///
/// # Safety
///
/// As `al_loader_start`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_shutdown(l: *mut al_loader) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        Ok(l.loader.shutdown()?)
    })
}

/// Allocates all buffer memory of the loader now (`n_workers ×
/// queue_depth × (max_file_size + 1)` bytes, page-rounded) instead of page
/// by page on first use, without changing any data: safe at any time.
/// Returns 0, `-EINVAL` for NULL, or the errno of `madvise`
/// (`-EINVAL` on kernels before 5.14, `-ENOMEM` when memory is short).
///
/// # Safety
///
/// As `al_loader_start`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_prefault(l: *mut al_loader) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        Ok(l.loader.prefault()?)
    })
}

/// Takes back every entry of worker `id` after the process or thread that
/// used it died: its queued requests are dropped, its files in flight are
/// waited for (up to 10 s), entries it held are freed, and its rings are
/// rebuilt, so a new context for `id` starts with `queue_depth` free
/// entries. Writes the number of entries taken back to `*reclaimed` (may be
/// NULL). Returns 0, `-EINVAL` (NULL, id out of range), `-EBUSY` (files
/// still in flight, or a reclaim already running). Only call it when nobody
/// uses worker `id` any more; the loader and other workers keep running.
///
/// # Safety
///
/// As `al_loader_start`; `reclaimed` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_reclaim_worker(
    l: *mut al_loader,
    id: u32,
    reclaimed: *mut u32,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        let n = l.loader.reclaim_worker(id)?;
        if !reclaimed.is_null() {
            // SAFETY: non-NULL and valid for one write (caller).
            unsafe { reclaimed.write(n) };
        }
        Ok(())
    })
}

/// Frees the handle. In the process that created the loader (or runs its
/// threads or child) this also shuts the loader down. NULL is ignored.
/// Call at most once per handle, when no other thread uses it.
///
/// # Safety
///
/// `l` is NULL or a live loader that no other thread is using; it is
/// invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_free(l: *mut al_loader) {
    ffi_boundary!(() => {
        if !l.is_null() {
            // SAFETY: `l` came from Box::into_raw in `al_loader::boxed` and
            // is freed once (caller).
            drop(unsafe { Box::from_raw(l) });
        }
    })
}

/// The name another process passes to `al_loader_attach`. The string is
/// owned by the handle and valid until `al_loader_free`; NULL for NULL.
///
/// # Safety
///
/// `l` is NULL or a live loader.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_name(l: *const al_loader) -> *const c_char {
    ffi_boundary!(std::ptr::null() => {
        // SAFETY: NULL or live (caller).
        match unsafe { try_ref(l) } {
            Ok(l) => l.name.as_ptr(),
            Err(_) => std::ptr::null(),
        }
    })
}

/// Attaches to the loader called `name` (from `al_loader_name`) from any
/// process of the same user while the creating process lives, e.g. one
/// started with `posix_spawn`/`exec` rather than forked. Stores a new handle
/// in `*out` (written only on success; free it with `al_loader_free`, which
/// only unmaps). Returns 0, `-EINVAL` (NULL, not a loader name, a layout
/// of another version), `-EOWNERDEAD` (the creator is gone), or the errno
/// of `open`/`mmap` (`-EACCES`, ...).
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or valid for
/// writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_attach(name: *const c_char, out: *mut *mut al_loader) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: NULL or NUL-terminated (caller).
        let name = unsafe { try_cstr(name) }?;
        let name = name.to_str().map_err(|_| Errno::INVAL)?;
        let loader = Loader::attach(name)?;
        // SAFETY: non-NULL and writable (caller).
        unsafe { put(out, al_loader::boxed(loader)) };
        Ok(())
    })
}

/// Creates a handle for worker `id` (`0 .. n_workers - 1`) and stores it in
/// `*out` (written only on success; free it with `al_worker_free`).
/// Several handles, threads or processes may use one worker id, but the
/// usual pattern is one id per worker thread or process. Returns 0,
/// `-EINVAL` (NULL, id out of range), `-ESHUTDOWN` after a shutdown,
/// `-EOWNERDEAD` when the loader died.
///
/// # Safety
///
/// `l` is NULL or a live loader; `out` is NULL or valid for writing a
/// pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_worker(
    l: *mut al_loader,
    id: u32,
    out: *mut *mut al_worker,
) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        l.loader.health()?;
        let w = l.loader.worker(id)?;
        // SAFETY: non-NULL and writable (caller).
        unsafe { put(out, new_handle(w)) };
        Ok(())
    })
}

/// Writes the loader's configuration (as resolved: `loader_threads` and
/// `ring_window` are never 0) to `*out`; useful after `al_loader_attach`.
/// Returns 0 or `-EINVAL` for NULL.
///
/// # Safety
///
/// `l` is NULL or a live loader; `out` is NULL or valid for writing an
/// `al_config`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_config(l: *const al_loader, out: *mut al_config) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        // SAFETY: non-NULL and writable (caller).
        unsafe { put(out, al_config::from_config(&l.loader.config())) };
        Ok(())
    })
}

/// Writes the loader's counters to `*out`. Any participant may call it, at
/// any time; counters are read without stopping the loader, so they may be
/// a few operations apart. Returns 0 or `-EINVAL` for NULL.
///
/// # Safety
///
/// `l` is NULL or a live loader; `out` is NULL or valid for writing an
/// `al_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_stats(l: *const al_loader, out: *mut al_stats) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        let s = l.loader.stats();
        let h = l.loader.region().header();
        let stats = al_stats {
            requests: s.requests,
            completions: s.completions,
            bytes: s.bytes,
            errors: s.errors,
            batches: s.batches,
            buffered_fallbacks: s.buffered_fallbacks,
            direct_reads: s.direct_reads,
            syscalls: s.syscalls,
            backend: match h.backend_in_use.load(Ordering::Relaxed) {
                b @ (AL_BACKEND_IO_URING | AL_BACKEND_THREADS) => b,
                _ => AL_BACKEND_AUTO,
            },
            state: h.state.load(Ordering::Relaxed).min(AL_STATE_DEAD),
            loader_threads: s.loader_threads,
            loader_threads_alive: s.loader_threads_alive,
            loader_pid: l.loader.loader_pid(),
            reserved: 0,
        };
        // SAFETY: non-NULL and writable (caller).
        unsafe { put(out, stats) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::state;

    #[test]
    fn constants_match_the_engine() {
        assert_eq!(AL_BACKEND_AUTO, BackendKind::Auto as u32);
        assert_eq!(AL_BACKEND_IO_URING, BackendKind::IoUring as u32);
        assert_eq!(AL_BACKEND_THREADS, BackendKind::Threads as u32);
        assert_eq!(AL_STATE_CREATED, state::CREATED);
        assert_eq!(AL_STATE_RUNNING, state::RUNNING);
        assert_eq!(AL_STATE_STOPPING, state::STOPPING);
        assert_eq!(AL_STATE_STOPPED, state::STOPPED);
        assert_eq!(AL_STATE_DEAD, state::DEAD);
    }

    #[test]
    fn config_round_trips() {
        let mut c = std::mem::MaybeUninit::<al_config>::uninit();
        // SAFETY: `c` is writable.
        unsafe { al_config_default(c.as_mut_ptr()) };
        // SAFETY: written by al_config_default.
        let c = unsafe { c.assume_init() };
        // SAFETY: `c` is a valid al_config.
        assert_eq!(unsafe { al_config::read(&c) }.unwrap(), Config::default());
        let bad = al_config { backend: 9, ..c };
        // SAFETY: as above.
        assert_eq!(unsafe { al_config::read(&bad) }, Err(Errno::INVAL));
    }
}
