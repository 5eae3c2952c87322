//! `al_loader`, `al_config` and `al_stats`: creating, running, attaching to
//! and stopping a loader.

use std::ffi::{CString, c_char, c_int, c_void};

use super::panic::{Errno, ffi_boundary};
use super::ptr::{put, put_span, try_cstr, try_out, try_ref};
use super::sized::{self, give, span, take};
use super::worker::{al_worker, new_handle};
use crate::config::{BackendKind, Config, Drive};
use crate::loader::{Loader, LoaderState};

/// How a loader is sized and how it batches.
///
/// Set `struct_size = sizeof(al_config)` first, then fill it with
/// `al_config_default`, then change fields:
///
/// ```c
/// al_config cfg = { .struct_size = sizeof cfg };
/// al_config_default(&cfg);
/// ```
///
/// The struct may grow at the end in a later ABI version; `struct_size`
/// tells the library which fields the caller has. A program built against
/// an older header (smaller struct) gets defaults for the fields it lacks
/// and nothing is written past its struct; a program built against a newer
/// header runs on this library as long as the fields this library does not
/// know are 0 (else `-E2BIG`). See docs/c-api.md.
///
/// Plain data: no ownership, any thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct al_config {
    /// `sizeof(al_config)` as the caller compiled it; read by every call
    /// taking an `al_config *`, never written by the library.
    pub struct_size: u32,
    /// Requests a worker may have outstanding (queued, in flight, or
    /// delivered and not released); each owns a `max_file_size` buffer.
    pub queue_depth: u32,
    /// Largest file, in bytes, that loads; a larger one completes with EFBIG.
    pub max_file_size: u64,
    /// Number of worker contexts (ids `0 .. n_workers - 1`).
    pub n_workers: u32,
    /// A batch is submitted once this many requests are waiting ... 0 = auto
    /// (the default): 8 with loader threads; with the workers driving, about
    /// 1 MiB of files by the sizes loaded lately, 8 to the worker's io_uring
    /// window (`ring_window`, 32 by default, at most `queue_depth`).
    pub dispatch_n: u32,
    /// ... or once the loader loop ran this many passes without a request.
    pub idle_iters: u32,
    /// Read with O_DIRECT where the file system allows it.
    pub direct: bool,
    /// Loader threads, each with its own io_uring; 0 = one per core.
    pub loader_threads: u32,
    /// Files in flight per loader thread; 0 = default (32, 128 with direct).
    pub ring_window: u32,
    /// An `al_backend`: `AL_BACKEND_AUTO`, `AL_BACKEND_IO_URING` or
    /// `AL_BACKEND_THREADS` (`al_backend_name` names it).
    pub backend: u32,
    /// Padding of the 48-byte struct of older versions, where a caller may
    /// have left garbage: never read.
    pub pad0: u32,
    /// An `al_drive`: who loads a worker's requests. `AL_DRIVE_AUTO` (0,
    /// the default): the workers themselves when `al_loader_start` starts
    /// a loader with at least one worker per core, loader threads
    /// otherwise; `AL_DRIVE_LOADER`: loader threads (or the loader process)
    /// in the background; `AL_DRIVE_WORKER`: each worker in the thread that
    /// calls it, on an io_uring of its own (`al_drive_name` names it; see
    /// docs/architecture.md).
    pub drive: u32,
    /// Zero.
    pub reserved: u32,
    /// Bytes of destination memory in the loader's shared memory, the
    /// arena (`AL_ARENA` of `al_worker_request_into`), reachable from every
    /// process that maps the loader; rounded up to 4 KiB, at most 64 GiB.
    /// 0 (the default): no arena. Callers with the 56-byte struct of older
    /// headers get 0.
    pub arena_size: u64,
}

const _: () = assert!(std::mem::size_of::<al_config>() == 64);
const _: () = assert!(std::mem::align_of::<al_config>() == 8);

/// Byte ranges of `al_config`'s fields.
fn config_spans() -> [(usize, usize); 14] {
    [
        span!(al_config, struct_size),
        span!(al_config, queue_depth),
        span!(al_config, max_file_size),
        span!(al_config, n_workers),
        span!(al_config, dispatch_n),
        span!(al_config, idle_iters),
        span!(al_config, direct),
        span!(al_config, loader_threads),
        span!(al_config, ring_window),
        span!(al_config, backend),
        span!(al_config, pad0),
        span!(al_config, drive),
        span!(al_config, reserved),
        span!(al_config, arena_size),
    ]
}

const CONFIG_SIZE: usize = std::mem::size_of::<al_config>();

impl al_config {
    fn from_config(c: &Config) -> al_config {
        al_config {
            struct_size: CONFIG_SIZE as u32,
            queue_depth: c.queue_depth,
            max_file_size: c.max_file_size,
            n_workers: c.n_workers,
            dispatch_n: c.dispatch_n,
            idle_iters: c.idle_iters,
            direct: c.direct,
            loader_threads: c.loader_threads,
            ring_window: c.ring_window,
            backend: c.backend as u32,
            pad0: 0,
            drive: c.drive as u32,
            reserved: 0,
            arena_size: c.arena_size,
        }
    }

    /// Reads a caller's `al_config` of `struct_size` bytes (see
    /// `sized`): fields it lacks take their defaults; its `bool` is read as
    /// a byte, so a C caller that stored 2 there cannot create an invalid
    /// Rust `bool`.
    ///
    /// # Safety
    ///
    /// `p` is non-NULL, aligned, and points to `struct_size` readable bytes
    /// (at least 4).
    unsafe fn read(p: *const al_config) -> Result<Config, Errno> {
        // SAFETY: at least the 4 bytes of struct_size are readable (caller).
        let size = unsafe { sized::struct_size(p.cast()) };
        let n = sized::covered("al_config", size, CONFIG_SIZE, &config_spans())?;
        // SAFETY: `size` readable bytes (caller).
        unsafe { sized::unknown_tail_is_zero("al_config", p.cast(), size, CONFIG_SIZE) }?;
        let d = Config::default();
        let backend = take!(p, n, al_config, backend).unwrap_or(d.backend as u32);
        let backend = BackendKind::from_u32(backend).ok_or_else(|| {
            let known: Vec<String> = BackendKind::all()
                .iter()
                .map(|&k| format!("AL_BACKEND_{} ({})", k.name().to_uppercase(), k as u32))
                .collect();
            Errno::msg(
                libc::EINVAL,
                format!(
                    "invalid config: backend: {backend} is not one of {}",
                    known.join(", ")
                ),
            )
        })?;
        let drive = take!(p, n, al_config, drive).unwrap_or(d.drive as u32);
        let drive = Drive::from_u32(drive).ok_or_else(|| {
            Errno::msg(
                libc::EINVAL,
                format!(
                    "invalid config: drive: {drive} is not one of AL_DRIVE_AUTO (0), \
                     AL_DRIVE_LOADER (1), AL_DRIVE_WORKER (2)"
                ),
            )
        })?;
        if take!(p, n, al_config, reserved).unwrap_or(0) != 0 {
            return Err(Errno::msg(
                libc::EINVAL,
                "invalid config: reserved: must be 0",
            ));
        }
        let (off, end) = span!(al_config, direct);
        let direct = if end <= n {
            // SAFETY: inside the caller's `n` readable bytes; read as a byte
            // (any value is a valid u8, unlike bool).
            unsafe { p.cast::<u8>().add(off).read() != 0 }
        } else {
            d.direct
        };
        // Fields of `Config` that `al_config` does not carry (yet) take
        // their defaults.
        #[allow(clippy::needless_update)]
        Ok(Config {
            queue_depth: take!(p, n, al_config, queue_depth).unwrap_or(d.queue_depth),
            max_file_size: take!(p, n, al_config, max_file_size).unwrap_or(d.max_file_size),
            n_workers: take!(p, n, al_config, n_workers).unwrap_or(d.n_workers),
            dispatch_n: take!(p, n, al_config, dispatch_n).unwrap_or(d.dispatch_n),
            idle_iters: take!(p, n, al_config, idle_iters).unwrap_or(d.idle_iters),
            direct,
            loader_threads: take!(p, n, al_config, loader_threads).unwrap_or(d.loader_threads),
            ring_window: take!(p, n, al_config, ring_window).unwrap_or(d.ring_window),
            backend,
            drive,
            arena_size: take!(p, n, al_config, arena_size).unwrap_or(d.arena_size),
            ..d.clone()
        })
    }

    /// Writes the fields of `self` that a caller's `al_config` of
    /// `struct_size` bytes has; never `struct_size` itself.
    ///
    /// # Safety
    ///
    /// `p` is non-NULL, aligned, and points to `struct_size` writable
    /// bytes (at least 4), the first 4 readable.
    unsafe fn write(&self, p: *mut al_config) -> Result<(), Errno> {
        // SAFETY: at least the 4 bytes of struct_size are readable (caller).
        let size = unsafe { sized::struct_size(p.cast_const().cast()) };
        let n = sized::covered("al_config", size, CONFIG_SIZE, &config_spans())?;
        give!(p, n, al_config, queue_depth, self.queue_depth);
        give!(p, n, al_config, max_file_size, self.max_file_size);
        give!(p, n, al_config, n_workers, self.n_workers);
        give!(p, n, al_config, dispatch_n, self.dispatch_n);
        give!(p, n, al_config, idle_iters, self.idle_iters);
        give!(p, n, al_config, direct, self.direct);
        give!(p, n, al_config, loader_threads, self.loader_threads);
        give!(p, n, al_config, ring_window, self.ring_window);
        give!(p, n, al_config, backend, self.backend);
        give!(p, n, al_config, drive, self.drive);
        give!(p, n, al_config, arena_size, self.arena_size);
        Ok(())
    }
}

/// Counters of a loader (`al_loader_stats`), summed over its threads and
/// workers. Set `struct_size = sizeof(al_stats)` before the call (see
/// `al_config` for how the struct grows). Plain data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct al_stats {
    /// `sizeof(al_stats)` as the caller compiled it; never written by the
    /// library.
    pub struct_size: u32,
    /// An `al_state`: `AL_STATE_CREATED` ... `AL_STATE_DEAD`
    /// (`al_state_name` names it).
    pub state: u32,
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
    /// Backend in use, an `al_backend`: `AL_BACKEND_IO_URING` or
    /// `AL_BACKEND_THREADS`; `AL_BACKEND_AUTO` (0) until a running loader
    /// chose one.
    pub backend: u32,
    /// Loader threads configured.
    pub loader_threads: u32,
    /// Loader threads running now.
    pub loader_threads_alive: u32,
    /// Pid of the process running the loader (0 before it starts).
    pub loader_pid: i32,
    /// An `al_drive`: `AL_DRIVE_LOADER` or `AL_DRIVE_WORKER` once the
    /// loader started (`AL_DRIVE_AUTO` resolved); the config's before.
    pub drive: u32,
    /// Zero.
    pub reserved: u32,
}

const _: () = assert!(std::mem::size_of::<al_stats>() == 96);
const _: () = assert!(std::mem::align_of::<al_stats>() == 8);

const STATS_SIZE: usize = std::mem::size_of::<al_stats>();

impl al_stats {
    /// Writes the fields a caller's `al_stats` of `struct_size` bytes has.
    ///
    /// # Safety
    ///
    /// As [`al_config::write`].
    unsafe fn write(&self, p: *mut al_stats) -> Result<(), Errno> {
        let spans = [
            span!(al_stats, struct_size),
            span!(al_stats, state),
            span!(al_stats, requests),
            span!(al_stats, completions),
            span!(al_stats, bytes),
            span!(al_stats, errors),
            span!(al_stats, batches),
            span!(al_stats, buffered_fallbacks),
            span!(al_stats, direct_reads),
            span!(al_stats, syscalls),
            span!(al_stats, backend),
            span!(al_stats, loader_threads),
            span!(al_stats, loader_threads_alive),
            span!(al_stats, loader_pid),
            span!(al_stats, drive),
            span!(al_stats, reserved),
        ];
        // SAFETY: at least the 4 bytes of struct_size are readable (caller).
        let size = unsafe { sized::struct_size(p.cast_const().cast()) };
        let n = sized::covered("al_stats", size, STATS_SIZE, &spans)?;
        give!(p, n, al_stats, state, self.state);
        give!(p, n, al_stats, requests, self.requests);
        give!(p, n, al_stats, completions, self.completions);
        give!(p, n, al_stats, bytes, self.bytes);
        give!(p, n, al_stats, errors, self.errors);
        give!(p, n, al_stats, batches, self.batches);
        give!(p, n, al_stats, buffered_fallbacks, self.buffered_fallbacks);
        give!(p, n, al_stats, direct_reads, self.direct_reads);
        give!(p, n, al_stats, syscalls, self.syscalls);
        give!(p, n, al_stats, backend, self.backend);
        give!(p, n, al_stats, loader_threads, self.loader_threads);
        give!(
            p,
            n,
            al_stats,
            loader_threads_alive,
            self.loader_threads_alive
        );
        give!(p, n, al_stats, loader_pid, self.loader_pid);
        give!(p, n, al_stats, drive, self.drive);
        Ok(())
    }
}

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

/// Fills `*out` with the default configuration, the one source of every
/// default for Rust (`Config::default()`), C and Python: the table "config
/// field | meaning | default" in README.md lists them. Set
/// `out->struct_size` first: only the fields inside it are written.
/// Returns 0, `-EINVAL` (NULL, a `struct_size` below 4 or cutting a
/// field), `-E2BIG` (`struct_size` above 4096).
///
/// # Safety
///
/// `out` is NULL or valid for writing `out->struct_size` bytes (at least
/// 4), its `struct_size` set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_config_default(out: *mut al_config) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: non-NULL, struct_size set and that many bytes writable
        // (caller).
        unsafe { al_config::from_config(&Config::default()).write(out) }
    })
}

/// Creates a loader for `*cfg` and stores it in `*out` (written only on
/// success). No loader runs yet: call `al_loader_start`, `al_loader_spawn`
/// or `al_loader_become`; requests made before wait in the queues.
///
/// Returns 0, `-EINVAL` (NULL argument, a field out of range: then
/// `al_last_error_message` names the field and says why; a bad
/// `struct_size`), `-E2BIG` (a field of a newer header that this library
/// does not know is set), or the errno of a failed `memfd_create`/`mmap`
/// (`-ENOMEM`, `-EMFILE`, ...). The caller owns `*out` and frees it with
/// `al_loader_free`.
///
/// # Safety
///
/// `cfg` is NULL or points to `cfg->struct_size` readable bytes (at least
/// 4); `out` is NULL or valid for writing a pointer.
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

/// Memory id of the loader's arena (`al_config.arena_size`) for
/// `al_worker_request_into`; `al_loader_register_memory` hands out the
/// others (1 to 16).
pub const AL_ARENA: u32 = 0;

const _: () = assert!(AL_ARENA == crate::ARENA);

/// Stores in `*base` and `*len` the loader's arena as mapped in this
/// process: destination memory `AL_ARENA` of `al_worker_request_into`,
/// `al_config.arena_size` bytes (4096-byte aligned), shared by every
/// process that maps the loader (a spawned loader process, forked or
/// attached processes), each at its own address. `*len` is 0 (and `*base`
/// the end of the mapping) for a loader without an arena. Read a span once
/// the entry of a request into it is delivered, and only until it is
/// released; the loader may write the rest at any time. Valid until
/// `al_loader_free` (a worker handle keeps its own mapping:
/// `al_worker_arena`). Returns 0; `-EINVAL` (NULL).
///
/// # Safety
///
/// `l` is NULL or a live loader; `base` and `len` are NULL or valid for
/// writing a pointer and a `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_arena(
    l: *const al_loader,
    base: *mut *mut u8,
    len: *mut usize,
) -> c_int {
    ffi_boundary!(int {
        let base = try_out(base)?;
        let len = try_out(len)?;
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        // SAFETY: both non-NULL and writable (caller).
        unsafe { put_span(base, len, l.loader.arena()) };
        Ok(())
    })
}

/// Registers `len` bytes at `base`, memory of this process (a pinned host
/// buffer, a preallocated batch array), as destination memory for
/// `al_worker_request_into`, and stores its id (1 to 16) in `*id`.
///
/// Registered memory is an address in this process: requests into it must
/// come from this process and their loads must run here, in loader threads
/// started here with `al_loader_start` or in workers that drive their own
/// loads (`AL_DRIVE_WORKER`). Elsewhere (`al_loader_spawn`, a loader
/// attached from another process) such requests fail with `-EXDEV`: use the
/// arena (`AL_ARENA`) there.
///
/// Returns 0; `-EINVAL` (NULL `l`, `base` or `id`, `len` 0, a span that
/// wraps around the address space); `-ENOSPC` when 16 registrations are in
/// use (by any living process of the loader: those of a process that died
/// are taken over).
///
/// # Safety
///
/// `l` is NULL or a live loader; `id` is NULL or valid for writing a
/// `uint32_t`; `base` is NULL or valid for writes of `len` bytes until the
/// memory is unregistered (after every load into it completed: their
/// entries released) or the loader is shut down.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_register_memory(
    l: *const al_loader,
    base: *mut c_void,
    len: usize,
    id: *mut u32,
) -> c_int {
    ffi_boundary!(int {
        let id = try_out(id)?;
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        if base.is_null() || len == 0 || len > isize::MAX as usize {
            return Err(Errno::msg(
                libc::EINVAL,
                "destination memory must be a non-NULL pointer and a length of 1 to SSIZE_MAX bytes",
            ));
        }
        if (base as usize).checked_add(len).is_none() {
            return Err(Errno::msg(
                libc::EINVAL,
                "destination memory wraps around the end of the address space",
            ));
        }
        // SAFETY: `len` writable bytes at `base` for as long as the
        // registration may be used (caller).
        let n = unsafe { l.loader.register_memory(base.cast(), len) }?;
        // SAFETY: non-NULL and writable (caller).
        unsafe { put(id, n) };
        Ok(())
    })
}

/// Forgets registration `id` (from `al_loader_register_memory` in this
/// process); requests into it fail with `-EINVAL` from now on, and the id
/// may be handed out again. Returns 0; `-EINVAL` (NULL, `AL_ARENA`, an id
/// not registered, or registered by another process).
///
/// # Safety
///
/// `l` is NULL or a live loader; no load into the memory is in flight or
/// delivered and unreleased (every entry of a request into it released, or
/// the loader shut down).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_unregister_memory(l: *const al_loader, id: u32) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        // SAFETY: no load into the memory is left (caller).
        Ok(unsafe { l.loader.unregister_memory(id) }?)
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
/// As `al_loader_start`; `reclaimed` is NULL or valid for one write; no
/// thread of this process holds an entry of worker `id` (its buffer is
/// reused).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_reclaim_worker(
    l: *mut al_loader,
    id: u32,
    reclaimed: *mut u32,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        // SAFETY: the caller holds no entry of worker `id` (# Safety).
        let n = unsafe { l.loader.reclaim_worker(id) }?;
        if !reclaimed.is_null() {
            // SAFETY: non-NULL and valid for one write (caller).
            unsafe { reclaimed.write(n) };
        }
        Ok(())
    })
}

/// Takes entries handed over by tickets (`al_entry_handoff`,
/// `al_batch_handoff`, possibly in another process): copies their data
/// into `dst`, one after another in ticket order, writes each one's size
/// to `sizes[i]` (0 for a failed load) and releases them. Every ticket is
/// checked before anything is copied: `-EINVAL` (nothing copied or
/// released) for a ticket that is not a delivered entry of that
/// generation (stale, taken already, made up), for a ticket given twice,
/// for `dst` smaller than the
/// entries' total size, or NULL arguments (`dst` may be NULL when
/// `dst_len` is 0). Returns 0.
///
/// # Safety
///
/// As `al_loader_start`; `tickets` points to `n` readable `uint64_t`,
/// `sizes` to `n` writable ones, `dst` to `dst_len` writable bytes; each
/// ticket is taken once, by one taker (its entry is released here).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_take(
    l: *const al_loader,
    tickets: *const u64,
    n: usize,
    dst: *mut u8,
    dst_len: usize,
    sizes: *mut u64,
) -> c_int {
    ffi_boundary!(int {
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        if (n > 0 && (tickets.is_null() || sizes.is_null())) || (dst.is_null() && dst_len > 0) {
            return Err(Errno::INVAL);
        }
        if n > isize::MAX as usize / 8 || dst_len > isize::MAX as usize {
            return Err(Errno::INVAL);
        }
        let (tickets, sizes) = if n == 0 {
            (&[][..], &mut [][..])
        } else {
            // SAFETY: non-NULL, `n` readable / writable u64 (caller), byte
            // sizes fit isize (checked).
            unsafe { (std::slice::from_raw_parts(tickets, n), std::slice::from_raw_parts_mut(sizes, n)) }
        };
        let dst = if dst_len == 0 {
            &mut [][..]
        } else {
            // SAFETY: non-NULL, `dst_len` writable bytes (caller), fits isize.
            unsafe { std::slice::from_raw_parts_mut(dst, dst_len) }
        };
        // SAFETY: each ticket is taken once, by us (caller).
        unsafe { l.loader.take_tickets(tickets, dst, sizes) }?;
        Ok(())
    })
}

/// Releases the entries of `tickets` without copying them (a taker's
/// error path); stale tickets are skipped. Returns how many were released
/// (0 for NULL arguments).
///
/// # Safety
///
/// As `al_loader_take`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_drop_tickets(
    l: *const al_loader,
    tickets: *const u64,
    n: usize,
) -> usize {
    ffi_boundary!(0 => {
        // SAFETY: NULL or live (caller).
        let Ok(l) = (unsafe { try_ref(l) }) else { return 0 };
        if tickets.is_null() || n > isize::MAX as usize / 8 {
            return 0;
        }
        // SAFETY: non-NULL, `n` readable u64 (caller), size checked.
        let tickets = unsafe { std::slice::from_raw_parts(tickets, n) };
        // SAFETY: each ticket is taken once, by us (caller).
        unsafe { l.loader.drop_tickets(tickets) }
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
/// `ring_window` are never 0) to `*out`, the fields inside
/// `out->struct_size`; useful after `al_loader_attach`. Returns 0, or
/// `-EINVAL`/`-E2BIG` as `al_config_default`.
///
/// # Safety
///
/// `l` is NULL or a live loader; `out` is NULL or as for
/// `al_config_default`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_config(l: *const al_loader, out: *mut al_config) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        // SAFETY: non-NULL, struct_size set and that many bytes writable
        // (caller).
        unsafe { al_config::from_config(&l.loader.config()).write(out) }
    })
}

/// Writes the loader's counters to `*out`, the fields inside
/// `out->struct_size` (set it to `sizeof(al_stats)`). Any participant may
/// call it, at any time; counters are read without stopping the loader, so
/// they may be a few operations apart. Returns 0, or `-EINVAL`/`-E2BIG` as
/// `al_config_default`.
///
/// # Safety
///
/// `l` is NULL or a live loader; `out` is NULL or valid for writing
/// `out->struct_size` bytes (at least 4), its `struct_size` set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn al_loader_stats(l: *const al_loader, out: *mut al_stats) -> c_int {
    ffi_boundary!(int {
        let out = try_out(out)?;
        // SAFETY: NULL or live (caller).
        let l = unsafe { try_ref(l) }?;
        let s = l.loader.stats();
        let stats = al_stats {
            struct_size: STATS_SIZE as u32,
            requests: s.requests,
            completions: s.completions,
            bytes: s.bytes,
            errors: s.errors,
            batches: s.batches,
            buffered_fallbacks: s.buffered_fallbacks,
            direct_reads: s.direct_reads,
            syscalls: s.syscalls,
            backend: s.backend as u32,
            state: s.state as u32,
            loader_threads: s.loader_threads,
            loader_threads_alive: s.loader_threads_alive,
            loader_pid: l.loader.loader_pid(),
            drive: s.drive as u32,
            reserved: 0,
        };
        // SAFETY: non-NULL, struct_size set and that many bytes writable
        // (caller).
        unsafe { stats.write(out) }
    })
}

/// The name of loader state `state` (an `al_state`, as in
/// `al_stats.state`): "created", "running", "stopping", "stopped", "dead";
/// NULL for a value that is not a state. The string is static. Thread-safe.
/// Bindings read the names from here instead of restating them.
#[unsafe(no_mangle)]
pub extern "C" fn al_state_name(state: u32) -> *const c_char {
    ffi_boundary!(std::ptr::null() => {
        LoaderState::from_u32(state).map_or(std::ptr::null(), |s| s.c_name().as_ptr())
    })
}

/// The name of drive `drive` (an `al_drive`, as in `al_config.drive` and
/// `al_stats.drive`): "auto", "loader", "worker"; NULL for a value that is
/// not a drive. The string is static. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn al_drive_name(drive: u32) -> *const c_char {
    ffi_boundary!(std::ptr::null() => {
        Drive::from_u32(drive).map_or(std::ptr::null(), |d| d.c_name().as_ptr())
    })
}

/// The name of backend `backend` (an `al_backend`, as in
/// `al_config.backend` and `al_stats.backend`): "auto", "io_uring",
/// "threads"; NULL for a value that is not a backend. The string is static.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn al_backend_name(backend: u32) -> *const c_char {
    ffi_boundary!(std::ptr::null() => {
        BackendKind::from_u32(backend).map_or(std::ptr::null(), |k| k.c_name().as_ptr())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_exactly_the_values() {
        for &k in BackendKind::all() {
            // SAFETY: a non-NULL result is a static NUL-terminated string.
            let n = unsafe { std::ffi::CStr::from_ptr(al_backend_name(k as u32)) };
            assert_eq!(n.to_str().unwrap(), k.name());
        }
        for &s in LoaderState::all() {
            // SAFETY: as above.
            let n = unsafe { std::ffi::CStr::from_ptr(al_state_name(s as u32)) };
            assert_eq!(n.to_str().unwrap(), s.name());
        }
        for &d in Drive::all() {
            // SAFETY: as above.
            let n = unsafe { std::ffi::CStr::from_ptr(al_drive_name(d as u32)) };
            assert_eq!(n.to_str().unwrap(), d.name());
        }
        assert!(al_drive_name(Drive::all().len() as u32).is_null());
        assert!(al_backend_name(BackendKind::all().len() as u32).is_null());
        assert!(al_state_name(LoaderState::all().len() as u32).is_null());
        assert!(al_state_name(u32::MAX).is_null());
    }

    #[test]
    fn config_round_trips() {
        let mut c = al_config::from_config(&Config {
            queue_depth: 3,
            ..Config::default()
        });
        // SAFETY: `c` is writable, struct_size set.
        assert_eq!(unsafe { al_config_default(&mut c) }, 0);
        // SAFETY: `c` is a valid al_config.
        assert_eq!(unsafe { al_config::read(&c) }.unwrap(), Config::default());
        let bad = al_config { backend: 9, ..c };
        // SAFETY: as above.
        assert_eq!(unsafe { al_config::read(&bad) }, Err(Errno::INVAL));
        for bad in [al_config { drive: 3, ..c }, al_config { reserved: 1, ..c }] {
            // SAFETY: as above.
            assert_eq!(unsafe { al_config::read(&bad) }, Err(Errno::INVAL));
        }
        let worker = al_config {
            drive: Drive::Worker as u32,
            ..c
        };
        // SAFETY: as above.
        let read = unsafe { al_config::read(&worker) };
        assert_eq!(read.unwrap().drive, Drive::Worker);
    }
}
