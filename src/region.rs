//! The shared-memory region: header, per-worker rings, entries and buffers.
//!
//! One `memfd` holds everything a loader and its workers share, mapped
//! `MAP_SHARED` by every participant:
//!
//! ```text
//! Header                                  (config, state, parking, stats)
//! WorkerBlock[n_workers]                  (2 ring indices, the free stack,
//!                                          parking, counters, then
//!                                          request/completion slots and
//!                                          free-stack links)
//! EntryMeta[n_workers * queue_depth]      (state, status, size, range,
//!                                          destination, path)
//! buffers[n_workers * queue_depth]        (buf_size bytes each, 4 KiB aligned)
//! arena                                   (Config::arena_size, 4 KiB aligned:
//!                                          destination memory id ARENA)
//! ```
//!
//! Processes forked after creation inherit the mapping. Unrelated processes
//! attach by name: the name encodes the creator's pid and the memfd's
//! descriptor number, reopened through `/proc/<pid>/fd/<fd>`, and a random
//! nonce that must match the header (so a recycled descriptor number is never
//! mistaken for the loader). A memfd cannot leak: it disappears with the last
//! descriptor and mapping, whatever kills the processes.
//!
//! Trust: every process mapping a region can corrupt it, as with any shared
//! memory; participants are cooperating processes of one user. The loader
//! still never trusts a path length or an index read from the region without
//! bounds-checking it, so a buggy worker cannot make the loader read or write
//! outside the region.

use std::cell::UnsafeCell;
use std::fs::File;
use std::os::fd::AsRawFd;

use memmap2::{Advice, MmapOptions, MmapRaw};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use crate::config::{BackendKind, Config, buffer_size, limits};
use crate::error::{Error, ErrorKind, Result};
use crate::futex::Parking;
use crate::kinds::LoaderState;
use crate::ring::{Ring, RingIndices};
use crate::stack::{Stack, StackIndices};

/// `b"ASYNCLDR"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"ASYNCLDR");
/// Bumped whenever the layout below changes.
pub const LAYOUT_VERSION: u32 = 5;
/// Bytes of path an entry holds, including the terminating NUL (Linux
/// `PATH_MAX`): a request path may be at most `PATH_CAP - 1` bytes.
pub const PATH_CAP: usize = 4096;

/// The header's `state` word as `u32` constants for atomic compares: the
/// values of [`LoaderState`], which documents them.
pub mod state {
    use crate::kinds::LoaderState;
    /// [`LoaderState::Created`].
    pub const CREATED: u32 = LoaderState::Created as u32;
    /// [`LoaderState::Running`].
    pub const RUNNING: u32 = LoaderState::Running as u32;
    /// [`LoaderState::Stopping`].
    pub const STOPPING: u32 = LoaderState::Stopping as u32;
    /// [`LoaderState::Stopped`].
    pub const STOPPED: u32 = LoaderState::Stopped as u32;
    /// [`LoaderState::Dead`].
    pub const DEAD: u32 = LoaderState::Dead as u32;
}

/// Entry states (low 32 bits of `EntryMeta::state`; the high 32 bits are a
/// generation that changes on every release, so that a stale handle is
/// recognised).
///
/// ```text
///  FREE ──request()──▶ QUEUED ──loader pops, CAS──▶ LOADING ──loader, CAS──▶ DONE
///   ▲                  (request ring)               (in a backend)          (completion ring,
///   └──────────────────────────── release(): CAS, generation + 1 ──────────── or held)
/// ```
///
/// Every move out of a state the other side may also act on is a
/// compare-and-swap on the whole word, so exactly one party wins: a loader
/// thread takes an entry only if it is QUEUED (an index pushed twice, or
/// one that was never requested, is dropped), and completes it only if it is
/// still LOADING. `Loader::reclaim_worker` relies on this to take a dead
/// worker's entries back while loader threads run.
pub mod entry_state {
    /// On the worker's free stack.
    pub const FREE: u32 = 0;
    /// Requested: in the request ring, not yet taken by a loader thread.
    pub const QUEUED: u32 = 1;
    /// Loaded (or failed): in the completion ring or held by the user.
    pub const DONE: u32 = 2;
    /// Taken by a loader thread: its buffer is being written.
    pub const LOADING: u32 = 3;
}

/// The configuration as stored in the region.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawConfig {
    pub queue_depth: u32,
    pub n_workers: u32,
    pub dispatch_n: u32,
    pub idle_iters: u32,
    pub loader_threads: u32,
    pub ring_window: u32,
    pub direct: u32,
    pub backend: u32,
    pub max_file_size: u64,
    /// A [`Drive`](crate::Drive).
    pub drive: u32,
    pub _pad: u32,
    /// Bytes of the arena (a multiple of 4 KiB).
    pub arena_size: u64,
}

impl RawConfig {
    /// `dispatch_n` with 0 (auto) resolved for `drive` (see
    /// [`Config::dispatch_n`]).
    pub fn effective_dispatch_n(&self, drive: crate::Drive) -> u32 {
        crate::config::auto_dispatch_n(self.dispatch_n, drive, self.ring_window, self.queue_depth)
    }

    fn from_config(c: &Config) -> Self {
        RawConfig {
            queue_depth: c.queue_depth,
            n_workers: c.n_workers,
            dispatch_n: c.dispatch_n,
            idle_iters: c.idle_iters,
            loader_threads: c.effective_loader_threads(),
            ring_window: c.effective_ring_window(),
            direct: c.direct as u32,
            backend: c.backend as u32,
            max_file_size: c.max_file_size,
            drive: c.drive as u32,
            _pad: 0,
            arena_size: c.arena_size.div_ceil(crate::config::BUF_ALIGN) * crate::config::BUF_ALIGN,
        }
    }

    /// Checks the stored values as [`Config::validate`] does, plus what only
    /// a stored config can get wrong (an unresolved 0, an unknown backend).
    pub fn validate(&self) -> std::result::Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        if self.loader_threads == 0 {
            return Err(ConfigError::new("loader_threads", "0 in a stored config"));
        }
        if self.ring_window == 0 {
            return Err(ConfigError::new("ring_window", "0 in a stored config"));
        }
        if crate::Drive::from_u32(self.drive).is_none() {
            return Err(ConfigError::new(
                "drive",
                "unknown value in a stored config",
            ));
        }
        if BackendKind::from_u32(self.backend).is_none() || self.direct > 1 {
            return Err(ConfigError::new(
                "backend",
                "unknown value in a stored config",
            ));
        }
        self.to_config().validate()
    }

    /// Back to a [`Config`] (loader_threads and ring_window resolved).
    pub fn to_config(self) -> Config {
        Config {
            queue_depth: self.queue_depth,
            max_file_size: self.max_file_size,
            n_workers: self.n_workers,
            dispatch_n: self.dispatch_n,
            idle_iters: self.idle_iters,
            direct: self.direct != 0,
            loader_threads: self.loader_threads,
            ring_window: self.ring_window,
            backend: BackendKind::from_u32(self.backend).unwrap_or_default(),
            drive: crate::Drive::from_u32(self.drive).unwrap_or_default(),
            arena_size: self.arena_size,
        }
    }
}

/// Counters of one loader thread, on their own cache line(s).
#[repr(C, align(64))]
#[derive(Default)]
pub struct ThreadStats {
    pub completions: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub batches: AtomicU64,
    pub buffered_fallbacks: AtomicU64,
    pub direct_reads: AtomicU64,
    pub syscalls: AtomicU64,
    /// Odd while this loader thread is inside a pass over the workers'
    /// request or completion rings (see `engine::RingPass`), even outside.
    /// `Loader::reclaim_worker` waits for odd values to move on before it
    /// rebuilds a worker's rings.
    pub ring_epoch: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<ThreadStats>() == 64);

/// Memory registered by a process for destination requests
/// (`Loader::register_memory`): an address in that process. `pid` is the
/// claim (0 = free; set by compare-and-swap), `ready` publishes `base` and
/// `len` (1 = usable).
#[repr(C)]
#[derive(Default)]
pub struct MemSlot {
    pub pid: AtomicI32,
    pub ready: AtomicU32,
    pub base: AtomicU64,
    pub len: AtomicU64,
    pub _pad: u64,
}

/// How many memory registrations a loader holds (ids `1..=MAX_MEMS`).
pub const MAX_MEMS: u32 = 16;

/// The first bytes of the region.
#[repr(C, align(128))]
pub struct Header {
    pub magic: u64,
    pub version: u32,
    pub header_size: u32,
    pub total_size: u64,
    pub nonce: u64,
    pub cfg: RawConfig,
    pub ring_cap: u32,
    pub creator_pid: i32,
    pub buf_size: u64,
    pub workers_off: u64,
    pub worker_stride: u64,
    pub entries_off: u64,
    pub entry_stride: u64,
    pub buffers_off: u64,
    /// A [`LoaderState`] (see [`Header::loader_state`]).
    pub state: AtomicU32,
    /// Pid of the process running the loader; 0 before one starts.
    pub loader_pid: AtomicI32,
    /// Loader threads that have not exited yet.
    pub loader_threads_alive: AtomicU32,
    /// [`BackendKind`] the running loader chose (`Auto` until it chose;
    /// see [`Header::backend_in_use`]).
    pub backend_in_use: AtomicU32,
    /// errno of the failure that stopped a loader thread (0 if none).
    pub loader_error: AtomicI32,
    /// The [`Drive`](crate::Drive) of the running loader: the config's,
    /// unless `ASYNCLOADER_DRIVE` overrode it where the loader started.
    pub drive_in_use: AtomicU32,
    /// The environment overrides read where the loader started
    /// (`EnvOverrides::to_bits`), for workers that drive their own loads.
    pub env_bits: AtomicU32,
    /// 1 once `prefault_buffers` ran: every buffer page exists.
    pub prefaulted: AtomicU32,
    /// Loader threads sleep here when idle; workers notify after a request.
    pub loader_parking: Parking,
    pub thread_stats: [ThreadStats; limits::MAX_LOADER_THREADS as usize],
    /// Registered destination memory, id `i + 1` in slot `i`.
    pub mems: [MemSlot; MAX_MEMS as usize],
}

impl Header {
    /// Who drives the loads of the running loader (its config's choice
    /// until one started).
    pub fn drive(&self) -> crate::Drive {
        crate::Drive::from_u32(self.drive_in_use.load(Ordering::Acquire)).unwrap_or_default()
    }

    /// The state word, decoded. A value no participant writes (the region
    /// was scribbled on) reads as `Dead`: nothing can be relied on then.
    pub fn loader_state(&self) -> LoaderState {
        LoaderState::from_u32(self.state.load(Ordering::Acquire)).unwrap_or(LoaderState::Dead)
    }

    /// The backend the running loader chose; `Auto` before it chose (or for
    /// a value no participant writes).
    pub fn backend_in_use(&self) -> BackendKind {
        match BackendKind::from_u32(self.backend_in_use.load(Ordering::Relaxed)) {
            Some(b @ (BackendKind::IoUring | BackendKind::Threads)) => b,
            _ => BackendKind::Auto,
        }
    }
}

/// Per-worker control block; its three slot arrays follow it.
#[repr(C, align(128))]
pub struct WorkerBlock {
    pub req: RingIndices,
    pub comp: RingIndices,
    /// The free entries: a stack, so the buffer given back last is reused
    /// first (see `stack`).
    pub free: StackIndices,
    /// The worker sleeps here in `wait_get`; the loader notifies after a
    /// completion.
    pub parking: Parking,
    /// Requests accepted from this worker.
    pub requests: AtomicU64,
    /// Pid of the process whose driver last took this worker's requests
    /// (`Drive::Worker`; 0 before). `reclaim_worker` waits for its loads
    /// only while it lives: a process's io_uring requests all end before
    /// it exits.
    pub driver_pid: AtomicI32,
    /// Non-zero while `Loader::reclaim_worker` rebuilds this worker's rings:
    /// loader threads then leave its rings alone. The reclaimer writes
    /// [`Region::reclaim_token`] of its pid, so that a leftover of a dead
    /// reclaimer, or garbage a broken worker wrote, is told apart from a
    /// reclaim under way.
    pub reclaiming: AtomicU64,
    /// The counters of this worker's driver (`Drive::Worker`), including
    /// its ring epoch, which `reclaim_worker` waits on like a loader
    /// thread's.
    pub stats: ThreadStats,
}

/// Metadata of one entry. Its data buffer lives in the buffers area.
#[repr(C, align(64))]
pub struct EntryMeta {
    /// `generation << 32 | entry_state`.
    pub state: AtomicU64,
    /// 0, or the positive errno of a failed load.
    pub status: AtomicI32,
    /// Length of `path` without the NUL.
    pub path_len: AtomicU32,
    /// Bytes loaded into the buffer.
    pub size: AtomicU64,
    /// Nanoseconds (CLOCK_MONOTONIC) when the request was made.
    pub t_request: AtomicU64,
    /// Nanoseconds (CLOCK_MONOTONIC) when the load completed.
    pub t_done: AtomicU64,
    /// Where in `path` the path the loader opens starts, and its length.
    /// For an absolute path: 0 and `path_len` (the same bytes). For a
    /// relative one the requester stores, after the path it gave, that path
    /// resolved against its own working directory, so that the loader —
    /// another process, or the same one after a `chdir` — opens the file the
    /// requester meant.
    pub load_off: AtomicU32,
    pub load_len: AtomicU32,
    /// The caller's tag for the request (`Worker::request_tagged`; 0 for
    /// an untagged one). Written by the worker with the path, read back by
    /// the worker's `Entry`; the loader never looks at it.
    pub tag: AtomicU64,
    /// The requested byte range: offset, and length ([`WHOLE_FILE`] for a
    /// request of the whole file).
    pub range_off: AtomicU64,
    pub range_len: AtomicU64,
    /// Destination of a `request_into`: memory id ([`NO_DEST`]: the
    /// entry's own buffer) and offset inside that memory.
    pub dst_off: AtomicU64,
    pub dst_mem: AtomicU32,
    /// Where in the entry's buffer the data starts (an `O_DIRECT` range
    /// reads the aligned span around it). Written by the loader.
    pub data_off: AtomicU32,
    _pad: [u64; 4],
    /// The requested path, NUL-terminated. Written by the worker while the
    /// entry is FREE→QUEUED (before the request-ring push that publishes it),
    /// read by the loader after popping the request, and by the worker's
    /// `Entry` after the completion pop; never written while anyone else can
    /// read it.
    pub path: UnsafeCell<[u8; PATH_CAP]>,
}

const _: () = assert!(std::mem::size_of::<EntryMeta>() == 128 + PATH_CAP);

/// `EntryMeta::range_len` of a whole-file request.
pub const WHOLE_FILE: u64 = u64::MAX;
/// `EntryMeta::dst_mem` of a request loading into the entry's buffer.
pub const NO_DEST: u32 = u32::MAX;
/// Memory id of the region's arena (`Config::arena_size`).
pub const ARENA: u32 = 0;
const _: () = assert!(std::mem::align_of::<Header>() == 128);

/// Where everything is, computed from the configuration alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub ring_cap: u32,
    pub buf_size: u64,
    pub workers_off: u64,
    pub worker_stride: u64,
    pub entries_off: u64,
    pub entry_stride: u64,
    pub buffers_off: u64,
    pub arena_off: u64,
    pub total_size: u64,
}

fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl Layout {
    pub fn compute(cfg: &RawConfig) -> Layout {
        let ring_cap = Ring::capacity_for(cfg.queue_depth);
        let workers_off = round_up(std::mem::size_of::<Header>() as u64, 128);
        let worker_stride = round_up(
            std::mem::size_of::<WorkerBlock>() as u64 + 3 * ring_cap as u64 * 8,
            128,
        );
        let n_entries = cfg.n_workers as u64 * cfg.queue_depth as u64;
        let entries_off = workers_off + worker_stride * cfg.n_workers as u64;
        let entry_stride = std::mem::size_of::<EntryMeta>() as u64;
        let buffers_off = round_up(entries_off + entry_stride * n_entries, 4096);
        let buf_size = buffer_size(cfg.max_file_size);
        let arena_off = buffers_off + buf_size * n_entries;
        Layout {
            ring_cap,
            buf_size,
            workers_off,
            worker_stride,
            entries_off,
            entry_stride,
            buffers_off,
            arena_off,
            total_size: arena_off + cfg.arena_size,
        }
    }
}

/// A mapping of a region, local to this process.
pub struct Region {
    /// `map.as_mut_ptr()`, kept at hand: every access computes from it.
    base: *mut u8,
    len: usize,
    /// The shared mapping, unmapped when the Region and every backend that
    /// may still write into it are gone (a worker's driver keeps a clone as
    /// its backend's keep-alive: see `drive`).
    map: std::sync::Arc<MmapRaw>,
    /// The memfd, kept open for the region's life: it is what
    /// [`Region::attach`] reopens through `/proc/<creator>/fd/<n>`.
    #[allow(dead_code)] // held, not read (and read by tests)
    file: File,
    name: String,
    layout: Layout,
    cfg: RawConfig,
    /// When this process last checked that the loader process is alive
    /// (ns, CLOCK_MONOTONIC); process-local, rate-limits that check.
    pub(crate) last_health_check: AtomicU64,
    /// The drivers of this process's workers when they drive their own
    /// loads (`Drive::Worker`); process-local.
    pub(crate) drivers: crate::drive::Drivers,
}

// SAFETY: the region is plain memory whose shared parts are only accessed
// through atomics or under the ownership protocol documented on each field;
// the raw base pointer is valid for the Region's lifetime in any thread.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only hands out shared references to atomics
// and raw pointers whose use is governed by the entry ownership protocol.
unsafe impl Sync for Region {}

/// A worker's rings.
pub struct WorkerRings<'a> {
    pub block: &'a WorkerBlock,
    pub req: Ring<'a>,
    pub comp: Ring<'a>,
    pub free: Stack<'a>,
}

fn random_nonce() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `v`, which is 8 bytes.
    let n = unsafe { libc::getrandom((&raw mut v).cast(), 8, 0) };
    if n != 8 {
        // Not security relevant: the nonce only guards against fd reuse.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        v = t ^ ((std::process::id() as u64) << 32);
    }
    v | 1
}

impl Region {
    /// Creates and initialises a region for `cfg` (already validated).
    pub fn create(cfg: &Config) -> Result<Region> {
        cfg.validate()?;
        // Register the fork handler now, before any entry or fork exists.
        crate::process::fork_epoch();
        let raw = RawConfig::from_config(cfg);
        let layout = Layout::compute(&raw);
        let file = File::from(
            nix::sys::memfd::memfd_create(c"asyncloader", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(|e| Error::os(e as i32, "memfd_create"))?,
        );
        file.set_len(layout.total_size)
            .map_err(|e| io_error(&e, "ftruncate of the shared region"))?;
        let map = map(&file, layout.total_size)?;
        let base = map.as_mut_ptr();
        let nonce = random_nonce();
        let name = format!(
            "asyncloader-{}-{}-{:016x}",
            std::process::id(),
            file.as_raw_fd(),
            nonce
        );
        let region = Region {
            base,
            len: layout.total_size as usize,
            map: std::sync::Arc::new(map),
            file,
            name,
            layout,
            cfg: raw,
            last_health_check: AtomicU64::new(0),
            drivers: crate::drive::Drivers::new(raw.n_workers),
        };
        // SAFETY: the mapping is fresh, zero-filled, large enough for a
        // Header at offset 0 (Layout puts the workers after it) and
        // page-aligned; nobody else can see it yet, so plain writes are fine.
        unsafe {
            let h = base.cast::<Header>();
            (&raw mut (*h).magic).write(MAGIC);
            (&raw mut (*h).version).write(LAYOUT_VERSION);
            (&raw mut (*h).header_size).write(std::mem::size_of::<Header>() as u32);
            (&raw mut (*h).total_size).write(layout.total_size);
            (&raw mut (*h).nonce).write(nonce);
            (&raw mut (*h).cfg).write(raw);
            (&raw mut (*h).drive_in_use).write(AtomicU32::new(raw.drive));
            (&raw mut (*h).ring_cap).write(layout.ring_cap);
            (&raw mut (*h).creator_pid).write(std::process::id() as i32);
            (&raw mut (*h).buf_size).write(layout.buf_size);
            (&raw mut (*h).workers_off).write(layout.workers_off);
            (&raw mut (*h).worker_stride).write(layout.worker_stride);
            (&raw mut (*h).entries_off).write(layout.entries_off);
            (&raw mut (*h).entry_stride).write(layout.entry_stride);
            (&raw mut (*h).buffers_off).write(layout.buffers_off);
        }
        for w in 0..raw.n_workers {
            region.reset_worker_rings(w);
        }
        Ok(region)
    }

    /// Maps the region named `name` (see [`Region::name`]).
    pub fn attach(name: &str) -> Result<Region> {
        crate::process::fork_epoch();
        let bad = || Error::new(ErrorKind::InvalidArgument, "not an asyncloader name");
        let rest = name.strip_prefix("asyncloader-").ok_or_else(bad)?;
        let mut it = rest.split('-');
        let pid: u32 = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let fdn: i32 = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let nonce = it
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(bad)?;
        if it.next().is_some() {
            return Err(bad());
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/fd/{fdn}"));
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                return Err(io_error(&e, "open of the loader's shared region"));
            }
            Err(_) => {
                return Err(if crate::process::pid_alive(pid as i32) {
                    // The creator lives but has no such descriptor: a wrong or
                    // stale name, not a dead loader.
                    Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "no asyncloader region is open as descriptor {fdn} of process {pid}"
                        ),
                    )
                } else {
                    Error::new(
                        ErrorKind::LoaderDead,
                        "no such loader (its creating process is gone)",
                    )
                });
            }
        };
        let size = file
            .metadata()
            .map_err(|e| io_error(&e, "fstat of the shared region"))?
            .len();
        if size < std::mem::size_of::<Header>() as u64 {
            return Err(bad());
        }
        // Unmapped when `map` drops, on every early return below.
        let map = map(&file, size)?;
        let base = map.as_mut_ptr();
        // SAFETY: the mapping is at least a Header long and page-aligned; the
        // fields read here are written once at creation, before the name
        // could be known to anyone.
        let (magic, version, hdr_nonce, total, cfg) = unsafe {
            let h = &*base.cast::<Header>();
            (h.magic, h.version, h.nonce, h.total_size, h.cfg)
        };
        if magic != MAGIC || hdr_nonce != nonce {
            return Err(bad());
        }
        if version != LAYOUT_VERSION {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("loader layout version {version}, this library speaks {LAYOUT_VERSION}"),
            ));
        }
        // The config comes from memory other processes can write: validate
        // it before computing anything from it (the limits keep every
        // product of the layout far from overflowing).
        if let Err(e) = cfg.validate() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("shared region header holds an invalid config ({e})"),
            ));
        }
        let layout = Layout::compute(&cfg);
        // SAFETY: as above; the header is fully in the mapping.
        let h = unsafe { &*base.cast::<Header>() };
        let consistent = total == size
            && layout.total_size == size
            && h.ring_cap == layout.ring_cap
            && h.buf_size == layout.buf_size
            && h.workers_off == layout.workers_off
            && h.worker_stride == layout.worker_stride
            && h.entries_off == layout.entries_off
            && h.entry_stride == layout.entry_stride
            && h.buffers_off == layout.buffers_off;
        if !consistent {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "shared region header is inconsistent",
            ));
        }
        Ok(Region {
            base,
            len: size as usize,
            map: std::sync::Arc::new(map),
            file,
            name: name.to_owned(),
            layout,
            cfg,
            last_health_check: AtomicU64::new(0),
            drivers: crate::drive::Drivers::new(cfg.n_workers),
        })
    }

    /// The name another process passes to [`Region::attach`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stored configuration.
    pub fn cfg(&self) -> &RawConfig {
        &self.cfg
    }

    /// The layout.
    #[cfg(test)]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The header.
    pub fn header(&self) -> &Header {
        // SAFETY: offset 0 of a mapping of at least size_of::<Header>() bytes
        // (checked at create/attach), page-aligned; shared fields are atomics.
        unsafe { &*self.base.cast::<Header>() }
    }

    fn worker_ptr(&self, w: u32) -> *mut u8 {
        assert!(w < self.cfg.n_workers, "worker id out of range");
        // SAFETY: w < n_workers, so the block lies inside the mapping by
        // construction of the layout (validated on attach).
        unsafe {
            self.base
                .add((self.layout.workers_off + w as u64 * self.layout.worker_stride) as usize)
        }
    }

    pub(crate) fn slot_arrays(&self, w: u32) -> (&[AtomicU64], &[AtomicU64], &[AtomicU64]) {
        let cap = self.layout.ring_cap as usize;
        // SAFETY: the three arrays of `cap` u64 follow the WorkerBlock inside
        // its stride (Layout::compute reserves 3*cap*8 bytes), the block is
        // 128-aligned so they are 8-aligned, and the memory is only accessed
        // atomically.
        unsafe {
            let s = self
                .worker_ptr(w)
                .add(std::mem::size_of::<WorkerBlock>())
                .cast::<AtomicU64>();
            (
                std::slice::from_raw_parts(s, cap),
                std::slice::from_raw_parts(s.add(cap), cap),
                std::slice::from_raw_parts(s.add(2 * cap), cap),
            )
        }
    }

    /// Worker `w`'s control block and rings. Panics if `w >= n_workers`
    /// (callers check ids first).
    pub fn worker(&self, w: u32) -> WorkerRings<'_> {
        // SAFETY: see worker_ptr; the block is 128-aligned (workers_off and
        // worker_stride are multiples of 128) and only accessed atomically.
        let block = unsafe { &*self.worker_ptr(w).cast::<WorkerBlock>() };
        let (req, comp, free) = self.slot_arrays(w);
        WorkerRings {
            block,
            req: Ring::new(&block.req, req),
            comp: Ring::new(&block.comp, comp),
            free: Stack::new(&block.free, &free[..self.cfg.queue_depth as usize]),
        }
    }

    /// Empties worker `w`'s request and completion rings and puts all its
    /// `queue_depth` entries on its free stack. Must not race with any other
    /// operation on those rings: called on a region nobody else sees yet, or
    /// by `Loader::reclaim_worker` once no loader thread or worker can touch
    /// them.
    pub(crate) fn reset_worker_rings(&self, w: u32) {
        let r = self.worker(w);
        let (req, comp, _) = self.slot_arrays(w);
        Ring::init(&r.block.req, req);
        Ring::init(&r.block.comp, comp);
        r.free.init(self.cfg.queue_depth);
    }

    /// The `reclaiming` word process `pid` writes: its pid and a check
    /// value derived from the pid and this region's nonce.
    pub(crate) fn reclaim_token(&self, pid: u32) -> u64 {
        let mut z = self.header().nonce ^ (pid as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) << 32) | pid as u64
    }

    /// Number of entries (n_workers * queue_depth).
    pub fn n_entries(&self) -> u32 {
        self.cfg.n_workers * self.cfg.queue_depth
    }

    /// Entry `g` (global index `worker * queue_depth + e`). Panics when out
    /// of range.
    pub fn entry(&self, g: u32) -> &EntryMeta {
        assert!(g < self.n_entries(), "entry index out of range");
        // SAFETY: g < n_entries so the meta lies inside the entries area; the
        // stride is a multiple of 64 and entries_off is 128-aligned.
        unsafe {
            &*self
                .base
                .add((self.layout.entries_off + g as u64 * self.layout.entry_stride) as usize)
                .cast::<EntryMeta>()
        }
    }

    /// Start of entry `g`'s data buffer (`buf_size` bytes, 4 KiB aligned).
    pub fn buffer(&self, g: u32) -> *mut u8 {
        assert!(g < self.n_entries(), "entry index out of range");
        // SAFETY: in range as for `entry`.
        unsafe {
            self.base
                .add((self.layout.buffers_off + g as u64 * self.layout.buf_size) as usize)
        }
    }

    /// Buffer size per entry (max_file_size + 1 rounded up to 4 KiB).
    pub fn buf_size(&self) -> u64 {
        self.layout.buf_size
    }

    /// The arena (`Config::arena_size`): its start in this process's
    /// mapping and its length (0 when the loader has none).
    pub fn arena(&self) -> (*mut u8, u64) {
        // SAFETY: arena_off + arena_size == total_size == the mapping's
        // length, so the start is inside the mapping or one past its end
        // (an empty arena).
        let p = unsafe { self.base.add(self.layout.arena_off as usize) };
        (p, self.cfg.arena_size)
    }

    /// Records `len` bytes at `base` in this process as destination memory
    /// and returns its id (`1..=MAX_MEMS`), in a free slot or one whose
    /// registering process is gone. See `Loader::register_memory`
    /// for the contract.
    pub(crate) fn register_memory(&self, base: *mut u8, len: u64) -> Result<u32> {
        let pid = std::process::id() as i32;
        for (i, m) in self.header().mems.iter().enumerate() {
            // A free slot, or one whose registrant died (its memory went
            // with it; nothing can use the registration any more).
            let cur = m.pid.load(Ordering::Acquire);
            let free = cur == 0 || (cur > 0 && cur != pid && !crate::process::pid_alive(cur));
            // Claimed as -1 (no process's pid) until `base` and `len` are
            // ours, so no process ever pairs its pid with a dead one's
            // address.
            if free
                && m.pid
                    .compare_exchange(cur, -1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                m.ready.store(0, Ordering::Release);
                m.base.store(base as u64, Ordering::Relaxed);
                m.len.store(len, Ordering::Relaxed);
                m.pid.store(pid, Ordering::Release);
                m.ready.store(1, Ordering::Release);
                return Ok(i as u32 + 1);
            }
        }
        Err(Error::os(
            libc::ENOSPC,
            format!("all {MAX_MEMS} memory registrations are in use"),
        ))
    }

    /// Forgets registration `id`, made by this process.
    pub(crate) fn unregister_memory(&self, id: u32) -> Result<()> {
        let bad = || {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("no memory registered as {id} by this process"),
            )
        };
        let m = id
            .checked_sub(1)
            .and_then(|i| self.header().mems.get(i as usize))
            .ok_or_else(bad)?;
        if m.pid.load(Ordering::Acquire) != std::process::id() as i32
            || m.ready.load(Ordering::Acquire) != 1
        {
            return Err(bad());
        }
        m.ready.store(0, Ordering::Release);
        m.base.store(0, Ordering::Relaxed);
        m.len.store(0, Ordering::Relaxed);
        m.pid.store(0, Ordering::Release);
        Ok(())
    }

    /// Where `len` bytes at offset `off` of destination memory `mem` are in
    /// this process: `EINVAL` when `mem` is not registered (or is the empty
    /// arena) or the span is not inside it, `EXDEV` when the memory belongs
    /// to another process (registered memory is reachable only from the
    /// process that registered it; the arena from every process). Read
    /// from shared memory, so a scribbled table yields an error, never an
    /// address outside what was registered.
    pub fn dest(&self, mem: u32, off: u64, len: u64) -> std::result::Result<*mut u8, i32> {
        let end = off.checked_add(len).ok_or(libc::EINVAL)?;
        if mem == ARENA {
            let (p, n) = self.arena();
            if n == 0 || end > n {
                return Err(libc::EINVAL);
            }
            // SAFETY: off + len <= arena length: inside the mapping.
            return Ok(unsafe { p.add(off as usize) });
        }
        let m = mem
            .checked_sub(1)
            .and_then(|i| self.header().mems.get(i as usize))
            .ok_or(libc::EINVAL)?;
        if m.ready.load(Ordering::Acquire) != 1 {
            return Err(libc::EINVAL);
        }
        if m.pid.load(Ordering::Relaxed) != std::process::id() as i32 {
            return Err(libc::EXDEV);
        }
        let (base, n) = (
            m.base.load(Ordering::Relaxed),
            m.len.load(Ordering::Relaxed),
        );
        if end > n {
            return Err(libc::EINVAL);
        }
        Ok((base + off) as *mut u8)
    }

    /// Raw pointer to entry `g`'s path bytes.
    pub fn path_ptr(&self, g: u32) -> *mut u8 {
        self.entry(g).path.get().cast()
    }

    /// Entry `g`'s path as a NUL-terminated C string, for the loader after
    /// it popped `g` from a request ring. Writes the terminating NUL itself
    /// at the stored length (clamped), so a worker that wrote garbage cannot
    /// make the kernel read past the entry. (No scan for the NUL: the
    /// worker refused paths holding one, and a corrupt path only names
    /// another file.)
    ///
    /// # Safety
    /// The caller must own entry `g` in the QUEUED state (popped from a
    /// request ring and not yet completed), so no one else writes the path.
    pub unsafe fn queued_path(&self, g: u32) -> *const libc::c_char {
        let meta = self.entry(g);
        let off = (meta.load_off.load(Ordering::Relaxed) as usize).min(PATH_CAP - 1);
        let len = (meta.load_len.load(Ordering::Relaxed) as usize).min(PATH_CAP - 1 - off);
        let p = self.path_ptr(g);
        // SAFETY: off + len <= PATH_CAP - 1 keeps both the start and the NUL
        // inside the path array; the caller owns the entry (see # Safety).
        unsafe {
            *p.add(off + len) = 0;
            p.add(off).cast()
        }
    }

    /// Allocates every page of the data buffers now (without changing their
    /// contents), so loads never pay a first-touch page fault and zeroing.
    pub fn prefault_buffers(&self) -> Result<()> {
        // MADV_POPULATE_WRITE only faults pages in, it never changes data,
        // so it is harmless while loads are in flight.
        let off = self.layout.buffers_off as usize;
        self.map
            .advise_range(Advice::PopulateWrite, off, self.len - off)
            .map_err(|e| io_error(&e, "madvise(MADV_POPULATE_WRITE) of the buffers"))?;
        self.header().prefaulted.store(1, Ordering::Release);
        Ok(())
    }

    /// After [`prefault_buffers`](Self::prefault_buffers) (in any process):
    /// maps worker `w`'s buffers (or all of them, `None`) into this
    /// process's page tables. A process forked after the prefault, or
    /// attached, shares the pages but not the page-table entries, and would
    /// otherwise take a fault on every buffer page it first touches (see
    /// docs/bench.md). The pages exist, so nothing is allocated; best
    /// effort (a failure only costs those faults later).
    pub(crate) fn map_prefaulted(&self, w: Option<u32>) {
        if self.header().prefaulted.load(Ordering::Acquire) == 0 {
            return;
        }
        let qd = self.cfg.queue_depth as u64;
        let (first, n) = match w {
            Some(w) if w < self.cfg.n_workers => (w as u64 * qd, qd),
            Some(_) => return,
            None => (0, self.n_entries() as u64),
        };
        let off = self.layout.buffers_off + first * self.layout.buf_size;
        let len = n * self.layout.buf_size;
        let _ = self
            .map
            .advise_range(Advice::PopulateWrite, off as usize, len as usize);
    }

    /// A guard that keeps the mapping alive (and mapped) while it lives,
    /// for a backend whose reads may land after this Region is gone.
    pub(crate) fn mapping_guard(&self) -> crate::backend::KeepAlive {
        self.map.clone()
    }

    /// The whole mapping as raw memory, for tests that play a broken or
    /// hostile process writing over the region.
    #[cfg(test)]
    pub(crate) fn raw_mapping(&self) -> (*mut u8, usize) {
        (self.base, self.len)
    }

    /// The descriptor of the memfd.
    #[cfg(test)]
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

/// Maps `size` bytes of the region file, shared and writable.
fn map(file: &File, size: u64) -> Result<MmapRaw> {
    MmapOptions::new()
        .len(size as usize)
        .map_raw(file)
        .map_err(|e| io_error(&e, "mmap of the shared region"))
}

fn io_error(e: &std::io::Error, what: &'static str) -> Error {
    Error::os(e.raw_os_error().unwrap_or(libc::EIO), what)
}

/// CLOCK_MONOTONIC in nanoseconds (comparable across processes).
pub use crate::process::now_ns;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_attach_roundtrips() {
        let cfg = Config {
            queue_depth: 3,
            n_workers: 2,
            max_file_size: 5000,
            ..Config::default()
        };
        let r = Region::create(&cfg).unwrap();
        let l = *r.layout();
        assert_eq!(l.buffers_off % 4096, 0);
        assert_eq!(l.buf_size, 8192);
        assert_eq!(r.buffer(5) as usize % 4096, 0);
        assert_eq!(r.worker(1).free.len(), 3);
        let a = Region::attach(r.name()).unwrap();
        assert_eq!(a.layout(), r.layout());
        // Both mappings see the same memory.
        r.entry(4).size.store(77, Ordering::Relaxed);
        assert_eq!(a.entry(4).size.load(Ordering::Relaxed), 77);
        assert!(Region::attach("asyncloader-1-2-3").is_err());
        let wrong_nonce = format!(
            "asyncloader-{}-{}-{:016x}",
            std::process::id(),
            r.raw_fd(),
            1
        );
        assert!(Region::attach(&wrong_nonce).is_err());
    }
}
