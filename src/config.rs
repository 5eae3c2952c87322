//! Loader configuration and its validation.

use std::fmt;

pub use crate::kinds::{BackendKind, Drive};

/// How a loader is sized and how it batches.
///
/// The first six fields are the arguments of the original module's
/// `Loader(queue_depth, max_file_size, n_workers, dispatch_n, idle_iters, direct)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Requests a worker may have outstanding (queued, in flight or delivered
    /// and not yet released). Each one owns a buffer of `max_file_size`.
    pub queue_depth: u32,
    /// Largest file, in bytes, that loads; a larger one completes with `EFBIG`.
    pub max_file_size: u64,
    /// Number of worker contexts (ids `0..n_workers`).
    pub n_workers: u32,
    /// A batch is submitted once this many requests are waiting ...
    /// 0 = auto (the default): 8 with loader threads; with the workers
    /// driving, as many files as make about 1 MiB by the sizes the worker
    /// loaded lately, at least 8 and at most its io_uring window
    /// (`ring_window`, 32 by default, and `queue_depth`): 32 small files,
    /// 8 of ~128 KiB. A worker that waits for an entry submits whatever is
    /// queued anyway, so a larger batch costs a busy worker nothing and
    /// saves system calls and passes; a batch of large files stays small
    /// enough to be in the CPU's cache when it is read (see docs/bench.md).
    pub dispatch_n: u32,
    /// ... or once the loader loop ran this many passes without a new request
    /// (at most [`limits::MAX_IDLE_ITERS`]). The first passes spin; later
    /// ones sleep about 50 µs each until a request arrives, so a large value
    /// delays a partial batch (by about a second at most) but never keeps a
    /// core busy.
    pub idle_iters: u32,
    /// Read with `O_DIRECT` (bypassing the page cache) where the file system
    /// allows it; files on file systems that refuse it load buffered.
    pub direct: bool,
    /// Loader threads, each with its own io_uring; 0 = one per online core.
    pub loader_threads: u32,
    /// Files in flight per loader thread (the io_uring window); 0 = default
    /// (32 buffered, 128 with `direct`).
    pub ring_window: u32,
    /// I/O backend.
    pub backend: BackendKind,
    /// Who loads a worker's requests: loader threads in the background
    /// (`Loader`), each worker itself in the thread that calls it
    /// (`Worker`), or the faster of the two for this machine (`Auto`, the
    /// default; see [`Drive`]). With `Worker`, `loader_threads` is not
    /// used and `ring_window` is per worker.
    pub drive: Drive,
    /// Bytes of destination memory in the shared region (rounded up to
    /// 4 KiB; 0 = none): memory id [`ARENA`](crate::ARENA) of
    /// `Worker::request_into`, reachable from every process that maps the
    /// loader (see docs/architecture.md, "Ranges and destinations").
    pub arena_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue_depth: 64,
            max_file_size: 4 << 20,
            n_workers: 1,
            dispatch_n: 0,
            idle_iters: 16,
            direct: false,
            loader_threads: 0,
            ring_window: 0,
            backend: BackendKind::Auto,
            drive: Drive::Auto,
            arena_size: 0,
        }
    }
}

/// Limits enforced by [`Config::validate`].
pub mod limits {
    /// Largest `queue_depth`.
    pub const MAX_QUEUE_DEPTH: u32 = 65_536;
    /// Largest `n_workers`.
    pub const MAX_WORKERS: u32 = 4_096;
    /// Largest `max_file_size` (1 GiB).
    pub const MAX_FILE_SIZE: u64 = 1 << 30;
    /// Largest `loader_threads`.
    pub const MAX_LOADER_THREADS: u32 = 64;
    /// Largest `ring_window`.
    pub const MAX_RING_WINDOW: u32 = 4_096;
    /// Largest `idle_iters`: with the sleeping idle passes of the loader
    /// loop (about 50-100 µs each), a lone request waits about a second at
    /// most for its batch.
    pub const MAX_IDLE_ITERS: u32 = 10_000;
    /// Largest whole shared region (all buffers of all workers), 256 GiB of
    /// address space; memory is only used for the bytes actually loaded.
    pub const MAX_REGION_BYTES: u64 = 256 << 30;
    /// Largest `arena_size` (64 GiB).
    pub const MAX_ARENA_BYTES: u64 = 64 << 30;
}

/// Why a [`Config`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
    /// The offending field.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config: {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use limits::*;
        if self.queue_depth == 0 || self.queue_depth > MAX_QUEUE_DEPTH {
            return Err(ConfigError::new(
                "queue_depth",
                format!("{} is not in 1..={MAX_QUEUE_DEPTH}", self.queue_depth),
            ));
        }
        if self.n_workers == 0 || self.n_workers > MAX_WORKERS {
            return Err(ConfigError::new(
                "n_workers",
                format!("{} is not in 1..={MAX_WORKERS}", self.n_workers),
            ));
        }
        if self.max_file_size == 0 || self.max_file_size > MAX_FILE_SIZE {
            return Err(ConfigError::new(
                "max_file_size",
                format!("{} is not in 1..={MAX_FILE_SIZE}", self.max_file_size),
            ));
        }
        if self.idle_iters > MAX_IDLE_ITERS {
            return Err(ConfigError::new(
                "idle_iters",
                format!("{} is more than {MAX_IDLE_ITERS}", self.idle_iters),
            ));
        }
        if self.loader_threads > MAX_LOADER_THREADS {
            return Err(ConfigError::new(
                "loader_threads",
                format!("{} is more than {MAX_LOADER_THREADS}", self.loader_threads),
            ));
        }
        if self.ring_window > MAX_RING_WINDOW {
            return Err(ConfigError::new(
                "ring_window",
                format!("{} is more than {MAX_RING_WINDOW}", self.ring_window),
            ));
        }
        if self.arena_size > MAX_ARENA_BYTES {
            return Err(ConfigError::new(
                "arena_size",
                format!("{} is more than {MAX_ARENA_BYTES}", self.arena_size),
            ));
        }
        let entries = self.n_workers as u64 * self.queue_depth as u64;
        let total = entries.saturating_mul(buffer_size(self.max_file_size));
        if entries > u32::MAX as u64 / 2 || total > MAX_REGION_BYTES {
            return Err(ConfigError::new(
                "max_file_size",
                format!(
                    "n_workers x queue_depth x max_file_size = {total} bytes is more than {MAX_REGION_BYTES}"
                ),
            ));
        }
        Ok(())
    }

    /// `loader_threads` with 0 resolved to the number of online cores.
    pub fn effective_loader_threads(&self) -> u32 {
        if self.loader_threads != 0 {
            return self.loader_threads;
        }
        online_cores().clamp(1, limits::MAX_LOADER_THREADS)
    }

    /// The drive a loader started with `start` uses (`Auto` resolved: see
    /// [`Drive::Auto`]).
    pub fn effective_drive(&self) -> Drive {
        match self.drive {
            Drive::Auto if self.n_workers >= online_cores() => Drive::Worker,
            Drive::Auto => Drive::Loader,
            d => d,
        }
    }

    /// `dispatch_n` with 0 (auto) resolved for a loader that runs with
    /// `drive` (resolved: `Loader` or `Worker`); for `Worker` the largest
    /// batch auto picks (it goes by the sizes of the files loaded, see
    /// [`Config::dispatch_n`]).
    pub fn effective_dispatch_n(&self, drive: Drive) -> u32 {
        auto_dispatch_n(
            self.dispatch_n,
            drive,
            self.effective_ring_window(),
            self.queue_depth,
        )
    }

    /// `ring_window` with 0 resolved to the default.
    pub fn effective_ring_window(&self) -> u32 {
        match self.ring_window {
            0 if self.direct => 128,
            0 => 32,
            n => n,
        }
    }
}

/// See [`Config::dispatch_n`].
pub(crate) fn auto_dispatch_n(dispatch_n: u32, drive: Drive, ring_window: u32, qd: u32) -> u32 {
    match (dispatch_n, drive) {
        (0, Drive::Worker) => ring_window.min(qd).max(1),
        (0, _) => 8,
        (n, _) => n,
    }
}

fn online_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Environment variables that override the configuration, for tests and
/// measurements (documented in the README):
/// `ASYNCLOADER_BACKEND=io_uring|threads|auto`,
/// `ASYNCLOADER_STATX=sync|async` (pin where the io_uring backend's statx
/// runs), `ASYNCLOADER_FAST=0` (no optimistic chain),
/// `ASYNCLOADER_FAST=probe` (its probe read in every chain) and
/// `ASYNCLOADER_DRIVE=loader|worker` (who loads: see [`Drive`]) and
/// `ASYNCLOADER_RANGE_OPEN=each` (every range opens its file: no shared
/// open, see `backend::range`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EnvOverrides {
    pub backend: Option<BackendKind>,
    pub drive: Option<Drive>,
    /// `Some(true)`: statx always called directly; `Some(false)`: always
    /// through io_uring.
    pub statx_sync: Option<bool>,
    pub fast_off: bool,
    /// The optimistic chain always carries its probe read.
    pub fast_probe: bool,
    pub range_open_each: bool,
}

/// The overrides, read from the environment when a loader starts. The
/// loader threads get them as a value: `Loader::spawn` reads them before it
/// forks, so the loader process never touches the environment (whose lock
/// another thread of the parent may have held at the fork).
pub(crate) fn env_overrides() -> EnvOverrides {
    {
        let var = |k: &str| std::env::var(k).ok();
        EnvOverrides {
            backend: match var("ASYNCLOADER_BACKEND").as_deref() {
                Some("uring") => Some(BackendKind::IoUring),
                Some("thread") | Some("pread") => Some(BackendKind::Threads),
                Some(name) => BackendKind::from_name(name),
                None => None,
            },
            statx_sync: match var("ASYNCLOADER_STATX").as_deref() {
                Some("sync") => Some(true),
                Some("async") => Some(false),
                _ => None,
            },
            fast_off: var("ASYNCLOADER_FAST").as_deref() == Some("0"),
            fast_probe: var("ASYNCLOADER_FAST").as_deref() == Some("probe"),
            range_open_each: var("ASYNCLOADER_RANGE_OPEN").as_deref() == Some("each"),
            drive: var("ASYNCLOADER_DRIVE")
                .as_deref()
                .and_then(Drive::from_name),
        }
    }
}

impl EnvOverrides {
    /// Packed into one word, for the region's header: a loader started in
    /// one process hands them to workers driving in others (which must not
    /// read the environment after a fork; see above).
    pub fn to_bits(self) -> u32 {
        let opt = |v: Option<u32>| v.map_or(0, |v| v + 1);
        opt(self.backend.map(|b| b as u32))
            | opt(self.statx_sync.map(u32::from)) << 4
            | (self.fast_off as u32) << 8
            | (self.range_open_each as u32) << 9
            | (self.fast_probe as u32) << 10
            | opt(self.drive.map(|d| d as u32)) << 12
    }

    /// Back from [`to_bits`](Self::to_bits); bits no participant writes
    /// (a scribbled header) read as no override.
    pub fn from_bits(b: u32) -> Self {
        let opt = |shift: u32| (b >> shift & 0xf).checked_sub(1);
        EnvOverrides {
            backend: opt(0).and_then(BackendKind::from_u32),
            statx_sync: opt(4).and_then(|v| (v <= 1).then_some(v == 1)),
            fast_off: b >> 8 & 1 == 1,
            range_open_each: b >> 9 & 1 == 1,
            fast_probe: b >> 10 & 1 == 1,
            drive: opt(12).and_then(Drive::from_u32),
        }
    }
}

/// Direct-I/O alignment that every buffer and buffer length honours.
pub const BUF_ALIGN: u64 = 4096;

/// Bytes reserved per entry: one more than `max_file_size` (so that a larger
/// file is detected by the read itself), rounded up to [`BUF_ALIGN`].
pub fn buffer_size(max_file_size: u64) -> u64 {
    (max_file_size + 1).div_ceil(BUF_ALIGN) * BUF_ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn rejects_zeros_and_absurd_sizes() {
        let bad = [
            Config {
                queue_depth: 0,
                ..Config::default()
            },
            Config {
                n_workers: 0,
                ..Config::default()
            },
            Config {
                max_file_size: 0,
                ..Config::default()
            },
            Config {
                ring_window: u32::MAX,
                ..Config::default()
            },
            Config {
                max_file_size: u64::MAX,
                ..Config::default()
            },
            Config {
                n_workers: 4096,
                queue_depth: 65536,
                max_file_size: 1 << 20,
                ..Config::default()
            },
            Config {
                idle_iters: u32::MAX,
                ..Config::default()
            },
        ];
        let fields = [
            "queue_depth",
            "n_workers",
            "max_file_size",
            "ring_window",
            "max_file_size",
            "max_file_size",
            "idle_iters",
        ];
        for (c, f) in bad.iter().zip(fields) {
            assert_eq!(c.validate().unwrap_err().field(), f, "{c:?}");
        }
    }

    #[test]
    fn buffer_size_leaves_room_to_detect_larger_files() {
        assert_eq!(buffer_size(1), 4096);
        assert_eq!(buffer_size(4095), 4096);
        assert_eq!(buffer_size(4096), 8192);
        assert_eq!(buffer_size(1 << 20), (1 << 20) + 4096);
    }

    #[test]
    fn env_overrides_round_trip_through_their_header_word() {
        assert_eq!(EnvOverrides::default().to_bits(), 0);
        for backend in [None, Some(BackendKind::IoUring), Some(BackendKind::Threads)] {
            for statx_sync in [None, Some(true), Some(false)] {
                for fast_off in [false, true] {
                    for drive in [None, Some(Drive::Auto), Some(Drive::Worker)] {
                        for range_open_each in [false, true] {
                            for fast_probe in [false, true] {
                                let e = EnvOverrides {
                                    backend,
                                    drive,
                                    statx_sync,
                                    fast_off,
                                    fast_probe,
                                    range_open_each,
                                };
                                assert_eq!(EnvOverrides::from_bits(e.to_bits()), e);
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(EnvOverrides::from_bits(0xffff_ffff).drive, None);
    }
}
