//! Worker contexts and the entries they receive.
//!
//! A worker owns `queue_depth` entries. `request` takes a free entry, writes
//! the path into it and pushes its index onto the worker's request ring;
//! the loader loads it and pushes the index onto the completion ring;
//! `try_get`/`wait_get` pop it and hand out an [`Entry`], and releasing the
//! entry (explicitly or by dropping it) puts it back on the free stack.
//!
//! Entry ownership moves with the ring operations (release/acquire pairs), so
//! at any moment exactly one party may touch an entry's path and buffer:
//! FREE and DONE entries belong to the worker side, QUEUED ones to the loader.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::drive::Drove;
use crate::error::{Error, ErrorKind, Result};
use crate::kinds::{Drive, LoaderState};
use crate::notify::NotifyCell;
use crate::process::{fork_epoch, pid_alive};
use crate::region::{ARENA, NO_DEST, PATH_CAP, Region, WHOLE_FILE, entry_state, now_ns, state};

/// Where a [`Worker::request_into`] puts the bytes: `len` bytes at
/// `offset` of destination memory `mem` (the arena, [`ARENA`], or an id
/// from [`Loader::register_memory`](crate::Loader::register_memory)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    /// Memory id.
    pub mem: u32,
    /// Byte offset inside that memory.
    pub offset: u64,
}

/// Spins on the completion ring before sleeping on the futex. Short: on a
/// machine with few cores a spinning worker takes CPU from the loader
/// threads that would produce its entry (warm bench, 2 cores, same run:
/// 20 spins 0.98x the thread pool, 200 spins 0.90x, 2000 spins 0.70x).
const SPIN_BEFORE_SLEEP: u32 = 20;
/// Longest single futex sleep; between sleeps the worker checks that the
/// loader is alive, so a dead loader is noticed within about this long.
const SLEEP_SLICE: Duration = Duration::from_millis(20);
/// How long a push into a ring that has room waits for a consumer caught
/// between claiming a slot and freeing it (see `Ring::push_patiently`).
pub(crate) const RING_PATIENCE: Duration = Duration::from_secs(1);
/// Longest sleep of a worker whose driver another thread holds.
const BUSY_SLICE: Duration = Duration::from_millis(1);
/// How often `request` looks at the loader process itself.
const HEALTH_EVERY_NS: u64 = 20_000_000;

/// A worker's handle on the loader. Cheap to create; `Send + Sync` (the
/// rings are multi-producer/multi-consumer), although the usual pattern is
/// one worker context per thread or process.
#[derive(Clone)]
pub struct Worker {
    region: Arc<Region>,
    id: u32,
    qd: u32,
    /// The completion eventfd's notifier, shared by clones (see
    /// [`Worker::completion_fd`]); nothing runs until it is asked for.
    notify: Arc<NotifyCell>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id).finish()
    }
}

/// Whether the loader behind `region` can still deliver: `Ok` while it is
/// created or running, `Shutdown` after a shutdown, `LoaderDead` when the
/// loader process or threads are gone (which this call then records in the
/// header, so later calls fail fast).
pub(crate) fn loader_health(region: &Region) -> Result<()> {
    let h = region.header();
    match h.loader_state() {
        LoaderState::Created => Ok(()),
        // Workers drive their own loads: there is no loader to die.
        LoaderState::Running if h.drive() == Drive::Worker => Ok(()),
        LoaderState::Running => {
            let pid = h.loader_pid.load(Ordering::Acquire);
            let dead = h.loader_threads_alive.load(Ordering::Acquire) == 0
                || (pid > 0 && pid as u32 != std::process::id() && !pid_alive(pid));
            if dead {
                let _ = h.state.compare_exchange(
                    state::RUNNING,
                    state::DEAD,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                // Wake every other sleeper so it notices too.
                for w in 0..region.cfg().n_workers {
                    region.worker(w).block.parking.notify_all();
                }
                Err(Error::new(ErrorKind::LoaderDead, "the loader died"))
            } else {
                Ok(())
            }
        }
        LoaderState::Stopping | LoaderState::Stopped => {
            Err(Error::new(ErrorKind::Shutdown, "the loader was shut down"))
        }
        LoaderState::Dead => Err(Error::new(ErrorKind::LoaderDead, "the loader died")),
    }
}

/// How long a waiting `wait_get` may sleep or wait at once: a
/// [`SLEEP_SLICE`], shortened to the deadline; `TimedOut` once it passed.
fn sleep_slice(deadline: Option<Instant>) -> Result<Duration> {
    match deadline {
        None => Ok(SLEEP_SLICE),
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                return Err(Error::new(ErrorKind::TimedOut, "wait_get timed out"));
            }
            Ok(SLEEP_SLICE.min(d - now))
        }
    }
}

/// The cheap part of [`loader_health`]: the state word alone, no system call.
fn loader_state(region: &Region) -> Result<()> {
    match region.header().loader_state() {
        LoaderState::Created | LoaderState::Running => Ok(()),
        _ => loader_health(region),
    }
}

impl Worker {
    pub(crate) fn new(region: Arc<Region>, id: u32) -> Result<Worker> {
        if id >= region.cfg().n_workers {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "worker id {id} out of range (n_workers = {})",
                    region.cfg().n_workers
                ),
            ));
        }
        let qd = region.cfg().queue_depth;
        let notify = Arc::new(NotifyCell::new(region.clone(), id));
        Ok(Worker {
            region,
            id,
            qd,
            notify,
        })
    }

    /// This worker's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Requests `path` (a file system path; not necessarily UTF-8).
    pub fn request(&self, path: impl AsRef<Path>) -> Result<()> {
        self.request_bytes(path.as_ref().as_os_str().as_bytes())
    }

    /// Requests the file at the path given as raw bytes.
    ///
    /// A relative path is resolved against this process's working directory
    /// now, at request time (the loader may be another process, or this one
    /// after a `chdir`); the entry still reports the path as given. Absolute
    /// paths cost nothing extra; a relative one costs a `getcwd`.
    ///
    /// Fails without queueing anything when the path is empty, holds a NUL
    /// byte, is `PATH_CAP` bytes or longer (for a relative path: when it and
    /// its resolved form do not fit together), when the worker has
    /// `queue_depth` requests outstanding (`QueueFull`: get and release
    /// entries first), or when the loader was shut down or died.
    pub fn request_bytes(&self, path: &[u8]) -> Result<()> {
        self.request_tagged(path, 0)
    }

    /// [`request_bytes`](Self::request_bytes) with a tag of the caller's
    /// (an index into its own list of paths, a sample id...) that the
    /// entry returns as [`Entry::tag`], so that a consumer matches entries
    /// to requests without comparing paths. Untagged requests have tag 0.
    pub fn request_tagged(&self, path: &[u8], tag: u64) -> Result<()> {
        self.request_with(path, tag, None, None)
    }

    /// Requests `len` bytes of `path` at byte `offset`: the entry holds the
    /// bytes actually read, fewer at end of file (none for a range past it),
    /// never more than `len`, and reports `offset` as [`Entry::offset`].
    /// Same rules and errors as [`request_bytes`](Self::request_bytes),
    /// plus: `offset + len` past `i64::MAX` is `InvalidArgument`, and a
    /// `len` over `max_file_size` is refused with `EFBIG` (ask for several
    /// ranges, or load into destination memory with
    /// [`request_into`](Self::request_into)). Ranges of one file requested
    /// close together share one open of it (see docs/architecture.md).
    pub fn request_range(&self, path: impl AsRef<Path>, offset: u64, len: u64) -> Result<()> {
        self.request_range_tagged(path.as_ref().as_os_str().as_bytes(), offset, len, 0)
    }

    /// [`request_range`](Self::request_range) with the path as bytes and a
    /// tag (see [`request_tagged`](Self::request_tagged)).
    pub fn request_range_tagged(&self, path: &[u8], offset: u64, len: u64, tag: u64) -> Result<()> {
        self.request_with(path, tag, Some((offset, len)), None)
    }

    /// Requests `len` bytes of `path` at `offset`, read straight into
    /// destination memory `dest` (the arena, [`ARENA`](crate::ARENA), or
    /// memory registered with [`Loader::register_memory`](crate::Loader::register_memory))
    /// instead of the entry's buffer, without the `max_file_size` limit.
    /// The entry's [`data`](Entry::data) is that memory, `len()` the bytes
    /// read. Files of any size load this way, in reads of 1 MiB several at
    /// a time.
    ///
    /// Fails with `InvalidArgument` (`EINVAL`) when `dest` names no memory
    /// or the span `dest.offset .. dest.offset + len` is not inside it, and
    /// with `EXDEV` when the memory was registered by another process
    /// (registered memory is reachable only by the process that registered
    /// it, and only while its loads run in that process; the arena from
    /// everywhere). Nothing is written then.
    ///
    /// # Safety
    ///
    /// Until the entry is released, the loader writes the destination span:
    /// nothing else may read or write it meanwhile (no other request into an
    /// overlapping span, no reference to it in Rust).
    pub unsafe fn request_into(
        &self,
        path: &[u8],
        offset: u64,
        len: u64,
        dest: Dest,
        tag: u64,
    ) -> Result<()> {
        self.request_with(path, tag, Some((offset, len)), Some(dest))
    }

    fn request_with(
        &self,
        path: &[u8],
        tag: u64,
        range: Option<(u64, u64)>,
        dest: Option<Dest>,
    ) -> Result<()> {
        if let Some((off, len)) = range {
            if off.checked_add(len).is_none_or(|end| end > i64::MAX as u64) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("range {off} + {len} goes past the largest file offset"),
                ));
            }
            match dest {
                None if len > self.region.cfg().max_file_size => {
                    return Err(Error::os(
                        libc::EFBIG,
                        format!(
                            "a range of {len} bytes is more than max_file_size = {} \
                             (split it, or load it into destination memory)",
                            self.region.cfg().max_file_size
                        ),
                    ));
                }
                None => {}
                Some(d) => self.check_dest(d, len)?,
            }
        }
        if path.is_empty() {
            return Err(Error::new(ErrorKind::InvalidPath, "empty path"));
        }
        if path.len() >= PATH_CAP {
            return Err(Error::new(
                ErrorKind::PathTooLong,
                format!("path of {} bytes; at most {} fit", path.len(), PATH_CAP - 1),
            ));
        }
        if path.contains(&0) {
            return Err(Error::new(ErrorKind::InvalidPath, "path holds a NUL byte"));
        }
        let st = self.region.header().loader_state();
        if st != LoaderState::Created && st != LoaderState::Running {
            return Err(loader_health(&self.region).unwrap_err());
        }
        // A loader process killed while nobody waited leaves the state word
        // at RUNNING: look at the process itself, at most every
        // HEALTH_EVERY_NS per process, so a request fails fast after that.
        let now = now_ns();
        let last = self.region.last_health_check.load(Ordering::Relaxed);
        if st == LoaderState::Running && now.saturating_sub(last) > HEALTH_EVERY_NS {
            self.region.last_health_check.store(now, Ordering::Relaxed);
            loader_health(&self.region)?;
        }
        // For a relative path, the loader opens `cwd/path`, stored after the
        // path itself (see EntryMeta::load_off).
        let resolved = if path[0] == b'/' {
            None
        } else {
            let cwd = std::env::current_dir()
                .map_err(|e| Error::os(e.raw_os_error().unwrap_or(libc::ENOENT), "getcwd"))?;
            let mut abs = cwd.into_os_string().into_vec();
            abs.push(b'/');
            abs.extend_from_slice(path);
            if path.len() + 1 + abs.len() >= PATH_CAP {
                return Err(Error::new(
                    ErrorKind::PathTooLong,
                    format!(
                        "relative path of {} bytes resolves to {} bytes; together at most {} fit",
                        path.len(),
                        abs.len(),
                        PATH_CAP - 2
                    ),
                ));
            }
            Some(abs)
        };
        let rings = self.region.worker(self.id);
        let Some(e) = rings.free.pop() else {
            return Err(Error::new(
                ErrorKind::QueueFull,
                format!(
                    "worker {} has queue_depth = {} requests outstanding",
                    self.id, self.qd
                ),
            ));
        };
        if e >= self.qd {
            return Err(corrupt("free stack"));
        }
        let g = self.id * self.qd + e;
        let meta = self.region.entry(g);
        let word = meta.state.load(Ordering::Acquire);
        if word as u32 != entry_state::FREE {
            return Err(corrupt("free stack (an entry that is not free)"));
        }
        // SAFETY: we popped `e` from the free stack, so this worker side owns
        // the entry exclusively until the request-ring push below publishes
        // it; path.len() < PATH_CAP, and for a relative path
        // path.len() + 1 + abs.len() < PATH_CAP (checked above), so every
        // copy and NUL stays inside the path array.
        let (load_off, load_len) = unsafe {
            let dst = self.region.path_ptr(g);
            std::ptr::copy_nonoverlapping(path.as_ptr(), dst, path.len());
            *dst.add(path.len()) = 0;
            match &resolved {
                None => (0, path.len()),
                Some(abs) => {
                    let off = path.len() + 1;
                    std::ptr::copy_nonoverlapping(abs.as_ptr(), dst.add(off), abs.len());
                    *dst.add(off + abs.len()) = 0;
                    (off, abs.len())
                }
            }
        };
        meta.path_len.store(path.len() as u32, Ordering::Relaxed);
        meta.load_off.store(load_off as u32, Ordering::Relaxed);
        meta.load_len.store(load_len as u32, Ordering::Relaxed);
        meta.tag.store(tag, Ordering::Relaxed);
        let (roff, rlen) = range.unwrap_or((0, WHOLE_FILE));
        meta.range_off.store(roff, Ordering::Relaxed);
        meta.range_len.store(rlen, Ordering::Relaxed);
        let (dmem, doff) = dest.map_or((NO_DEST, 0), |d| (d.mem, d.offset));
        meta.dst_mem.store(dmem, Ordering::Relaxed);
        meta.dst_off.store(doff, Ordering::Relaxed);
        meta.data_off.store(0, Ordering::Relaxed);
        meta.status.store(0, Ordering::Relaxed);
        meta.size.store(0, Ordering::Relaxed);
        meta.t_request.store(now, Ordering::Relaxed);
        meta.state.store(
            (word & !0xffff_ffff) | entry_state::QUEUED as u64,
            Ordering::Relaxed,
        );
        // The request ring holds all queue_depth entries: a refusal is a
        // loader thread preempted in the middle of a pop (it passes), or a
        // loader process that died there, or a corrupt ring.
        if rings.req.push_patiently(g, RING_PATIENCE).is_err() {
            // Give the entry back; it was never published.
            meta.state.store(word, Ordering::Relaxed);
            let _ = rings.free.push_patiently(e, RING_PATIENCE);
            loader_health(&self.region)?;
            return Err(corrupt("request ring"));
        }
        rings.block.requests.fetch_add(1, Ordering::Relaxed);
        if self.region.header().drive() == Drive::Worker {
            // A batch goes out once dispatch_n wait (the rest when the
            // worker asks for entries).
            let cfg = self.region.cfg();
            let batch = match cfg.dispatch_n {
                0 => match self.region.drivers.batch(self.id) {
                    0 => cfg.effective_dispatch_n(Drive::Worker).min(8),
                    b => b,
                },
                n => n,
            };
            if rings.req.len() >= batch {
                // The request is queued whatever the pass says: a failed
                // submit is reported by the wait_get that needs it, not as
                // a failed request (which a caller would retry: twice).
                let _ = self.drive(None);
            }
            // A thread of this process waiting on this worker drives it.
            rings.block.parking.notify(i32::MAX);
        } else {
            self.region.header().loader_parking.notify(i32::MAX);
        }
        Ok(())
    }

    /// Refuses a destination the loads cannot reach (see `request_into`).
    fn check_dest(&self, d: Dest, len: u64) -> Result<()> {
        match self.region.dest(d.mem, d.offset, len) {
            Ok(_) => {}
            Err(libc::EXDEV) => {
                return Err(Error::os(
                    libc::EXDEV,
                    format!(
                        "destination memory {} was registered by another process; \
                         only the arena is shared between processes",
                        d.mem
                    ),
                ));
            }
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "destination memory {} has no {len} bytes at offset {}",
                        d.mem, d.offset
                    ),
                ));
            }
        }
        // Registered memory is an address in this process: the loads must
        // run here too (loader threads started here, or this worker
        // driving). A loader in another process would fail them with EXDEV.
        let h = self.region.header();
        let pid = h.loader_pid.load(Ordering::Acquire);
        if d.mem != ARENA
            && h.drive() == Drive::Loader
            && pid != 0
            && pid != std::process::id() as i32
        {
            return Err(Error::os(
                libc::EXDEV,
                format!(
                    "the loader runs in process {pid}, which cannot reach memory \
                     registered here; use the arena (Config::arena_size)"
                ),
            ));
        }
        Ok(())
    }

    /// With `Drive::Worker`: one pass of this worker's driver, waiting up
    /// to `wait` in the kernel for a completion (see `drive::drive`).
    fn drive(&self, wait: Option<Duration>) -> Result<Drove> {
        crate::drive::drive(&self.region, self.id, wait)
    }

    /// Requests that are queued, in flight, or delivered and not released.
    pub fn outstanding(&self) -> u32 {
        self.qd - self.region.worker(self.id).free.len()
    }

    /// Takes a completed entry if one is ready. With `Drive::Worker` it
    /// first submits what is queued and reaps what completed, without
    /// waiting.
    pub fn try_get(&self) -> Option<Entry> {
        if let Some(e) = self.pop_completed() {
            return Some(e);
        }
        if self.region.header().drive() == Drive::Worker {
            // An error here (the kernel refused a submit) shows up in
            // wait_get; try_get has no way to say it.
            let _ = self.drive(None);
            return self.pop_completed();
        }
        None
    }

    fn pop_completed(&self) -> Option<Entry> {
        let comp = self.region.worker(self.id).comp;
        loop {
            let g = comp.pop()?;
            // Only an index of ours that the loader completed; anything else
            // is left over from a corrupted ring and skipped.
            if g / self.qd != self.id {
                continue;
            }
            let word = self.region.entry(g).state.load(Ordering::Acquire);
            if word as u32 != entry_state::DONE {
                continue;
            }
            return Some(Entry {
                region: self.region.clone(),
                g,
                generation: (word >> 32) as u32,
                epoch: fork_epoch(),
                released: false,
            });
        }
    }

    /// Waits for a completed entry, without a time limit. Fails when the
    /// loader is shut down or dies while nothing is left to deliver.
    pub fn wait_get(&self) -> Result<Entry> {
        self.wait_get_deadline(None)
    }

    /// Waits at most `timeout` for a completed entry (`TimedOut` after).
    pub fn wait_get_timeout(&self, timeout: Duration) -> Result<Entry> {
        self.wait_get_deadline(Some(Instant::now() + timeout))
    }

    /// Waits until `deadline` (or forever with `None`) for an entry.
    pub fn wait_get_deadline(&self, deadline: Option<Instant>) -> Result<Entry> {
        if let Some(e) = self.try_get() {
            return Ok(e);
        }
        if self.region.header().drive() == Drive::Worker {
            return self.drive_until(deadline);
        }
        for _ in 0..SPIN_BEFORE_SLEEP {
            std::hint::spin_loop();
            if let Some(e) = self.try_get() {
                return Ok(e);
            }
        }
        let rings = self.region.worker(self.id);
        let mut slept = false;
        loop {
            if let Some(e) = self.try_get() {
                return Ok(e);
            }
            // The full check (is the loader process alive?) costs system
            // calls: make it only after a sleep that brought nothing, i.e.
            // at most once per SLEEP_SLICE. Otherwise the state word suffices.
            let health = if slept {
                loader_health(&self.region)
            } else {
                loader_state(&self.region)
            };
            if let Err(e) = health {
                // Deliver what completed before the shutdown first.
                return self.try_get().ok_or(e);
            }
            let slice = sleep_slice(deadline)?;
            slept = !rings
                .block
                .parking
                .sleep_unless(slice, || rings.comp.has_ready());
        }
    }

    /// `wait_get` with `Drive::Worker`: drives this worker's loads, waiting
    /// in the kernel, until an entry is ready; sleeps on the futex only
    /// while another thread drives them (or nothing is in flight here).
    fn drive_until(&self, deadline: Option<Instant>) -> Result<Entry> {
        let rings = self.region.worker(self.id);
        loop {
            if let Some(e) = self.pop_completed() {
                return Ok(e);
            }
            let slice = sleep_slice(deadline)?;
            // Files in flight finish after a shutdown too (the pass takes
            // no new request then): deliver them before saying why nothing
            // else comes.
            match self.drive(Some(slice))? {
                Drove::Passed => continue,
                // Another thread is in a pass: it wakes us when it completes
                // entries; look again soon in case they are not ours.
                Drove::Busy => {
                    rings
                        .block
                        .parking
                        .sleep_unless(slice.min(BUSY_SLICE), || rings.comp.has_ready());
                }
                Drove::Idle => {
                    if let Err(e) = loader_state(&self.region) {
                        return self.pop_completed().ok_or(e);
                    }
                    // Nothing here to drive: another process (or a thread
                    // that requests now) completes this worker's entries.
                    rings
                        .block
                        .parking
                        .sleep_unless(slice, || rings.comp.has_ready() || rings.req.has_ready());
                }
            }
        }
    }

    /// An eventfd that is readable while this worker has completions to
    /// take, for event loops (epoll, asyncio). The first call starts one
    /// small notifier thread in this process (shared by this worker's
    /// clones; other `Worker`s of the same id get their own); workers that
    /// never call it pay nothing.
    ///
    /// The descriptor belongs to the worker: valid until the last clone is
    /// dropped, never to be closed by the caller. It is `EFD_SEMAPHORE`,
    /// non-blocking and close-on-exec. Contract (level-like):
    ///
    /// - when it polls readable, read 8 bytes from it (`EAGAIN` is fine),
    ///   then call [`try_get`](Self::try_get) until it returns `None`;
    /// - a completion that lands at any moment after that read makes it
    ///   readable again at once (no lost wake-up); if the loop stops
    ///   before the ring is empty, it is readable again within 20 ms;
    ///   readiness may be spurious, never lasting without entries;
    /// - once the loader is shut down or dies it stays readable for good,
    ///   and `try_get` returns the completions left, then the loader's
    ///   state tells why nothing else comes ([`Self::loader_state`];
    ///   [`wait_get_timeout`](Self::wait_get_timeout) with a zero timeout
    ///   returns the error).
    ///
    /// In a child forked after the call, calling it again starts a new
    /// notifier with a new descriptor.
    pub fn completion_fd(&self) -> Result<std::os::fd::RawFd> {
        self.notify.fd()
    }

    /// `queue_depth`: the number of entries this worker owns.
    pub fn queue_depth(&self) -> u32 {
        self.qd
    }

    /// The loader's arena (see [`Loader::arena`](crate::Loader::arena)), as
    /// mapped in this process: start and length (0 without one).
    pub fn arena(&self) -> (*mut u8, usize) {
        let (p, n) = self.region.arena();
        (p, n as usize)
    }

    /// This worker's buffers, as one span of memory in this process's
    /// mapping: every entry's data lies inside it (entry `e` of the
    /// worker at `e * buffer_size`, whole 4 KiB pages), except a
    /// destination request's (`request_into`). For registering
    /// the memory once with something that wants it pinned or known in
    /// advance (`cudaHostRegister`, a buffer protocol export). Only the
    /// bytes of delivered, unreleased entries may be read; the loader
    /// writes the others at any time.
    pub fn buffer_area(&self) -> (*const u8, usize) {
        let first = self.region.buffer(self.id * self.qd);
        let len = self.region.buf_size() as usize * self.qd as usize;
        (first.cast_const(), len)
    }

    /// The global indices of this worker's entries (the first number of
    /// [`Entry::raw_parts`]): `id * queue_depth .. (id + 1) * queue_depth`.
    pub fn entry_indices(&self) -> std::ops::Range<u32> {
        self.id * self.qd..(self.id + 1) * self.qd
    }

    /// Where the loader is in its life, as the shared region says now (the
    /// state word only; [`Loader::health`](crate::Loader::health) also
    /// checks that a running loader is alive).
    pub fn loader_state(&self) -> LoaderState {
        self.region.header().loader_state()
    }

    /// A view of the delivered entry with raw parts `(g, generation)` (see
    /// [`Entry::into_raw_parts`]), for handles kept outside Rust (the C
    /// ABI). `None` unless `g` is one of this worker's entries, delivered
    /// (loaded or failed) and not released since with that generation.
    ///
    /// # Safety
    ///
    /// Nobody releases the entry (with [`Self::release_raw_parts`], or an
    /// [`Entry`] holding it) while the view or anything borrowed from it is
    /// in use: release hands its buffer to the next request.
    pub unsafe fn entry_ref(&self, g: u32, generation: u32) -> Option<EntryRef<'_>> {
        if !self.entry_indices().contains(&g) {
            return None;
        }
        let expect = ((generation as u64) << 32) | entry_state::DONE as u64;
        // Acquire: pairs with the loader's release of DONE, so the path and
        // data it wrote are visible through the view.
        (self.region.entry(g).state.load(Ordering::Acquire) == expect).then_some(EntryRef {
            region: &self.region,
            g,
        })
    }

    /// Releases the entry with raw parts `(g, generation)` (see
    /// [`Entry::into_raw_parts`]) as [`Entry::release`] does.
    /// `InvalidArgument` when `g` is not one of this worker's entries or
    /// the entry is not delivered with that generation (already released,
    /// never delivered): then nothing happens. This is the release the C
    /// ABI's handles use; the generation check makes a stale handle
    /// harmless.
    ///
    /// # Safety
    ///
    /// No [`Entry`] or [`EntryRef`] of these raw parts is in use, now or
    /// later (the buffer goes to the next request): the caller owns them,
    /// as after `into_raw_parts`.
    pub unsafe fn release_raw_parts(&self, g: u32, generation: u32) -> Result<()> {
        if !self.entry_indices().contains(&g) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "not an entry of this worker",
            ));
        }
        release_raw(&self.region, g, generation)
    }
}

/// The ticket that stands for delivered entry `(g, generation)` in a
/// hand-over (`Loader::take_tickets`): `(g + 1) << 32 | generation`, never
/// 0, so that 0 can mean "no ticket".
pub(crate) fn ticket(g: u32, generation: u32) -> u64 {
    ((g as u64 + 1) << 32) | generation as u64
}

/// The `(g, generation)` of a ticket; `None` for 0 (or anything no
/// [`ticket`] makes).
pub(crate) fn ticket_parts(t: u64) -> Option<(u32, u32)> {
    let hi = t >> 32;
    (hi != 0).then(|| ((hi - 1) as u32, t as u32))
}

/// A view of entry `g` of any worker if it is delivered with `generation`
/// (the check of [`Worker::entry_ref`], for a loader handle taking entries
/// handed over by tickets).
///
/// # Safety
///
/// As [`Worker::entry_ref`]: nobody releases the entry while the view is
/// in use.
pub(crate) unsafe fn delivered_ref(
    region: &Region,
    g: u32,
    generation: u32,
) -> Option<EntryRef<'_>> {
    if g >= region.n_entries() {
        return None;
    }
    let expect = ((generation as u64) << 32) | entry_state::DONE as u64;
    // Acquire: pairs with the loader's release of DONE.
    (region.entry(g).state.load(Ordering::Acquire) == expect).then_some(EntryRef { region, g })
}

/// What an entry shows: path, bytes, errno, latency. Borrowed from an
/// [`Entry`] (its accessors are these) or, for handles kept outside Rust,
/// from [`Worker::entry_ref`]. Valid while the entry is delivered and not
/// released, which both ways of getting one guarantee.
#[derive(Clone, Copy)]
pub struct EntryRef<'a> {
    region: &'a Region,
    g: u32,
}

impl std::fmt::Debug for EntryRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryRef")
            .field("path", &self.path())
            .field("len", &self.len())
            .field("error", &self.error())
            .finish()
    }
}

impl<'a> EntryRef<'a> {
    /// The path that was requested, as bytes, exactly as given (a relative
    /// path stays relative; the resolved copy the loader opened is not
    /// part of it). A NUL byte follows the slice in memory.
    pub fn path_bytes(&self) -> &'a [u8] {
        let meta = self.region.entry(self.g);
        let len = (meta.path_len.load(Ordering::Relaxed) as usize).min(PATH_CAP - 1);
        // SAFETY: the entry is DONE and not released while this view lives
        // (how an EntryRef is made): nobody writes its path until release;
        // len < PATH_CAP keeps the slice inside the path array.
        unsafe { std::slice::from_raw_parts(self.region.path_ptr(self.g), len) }
    }

    /// The path that was requested.
    pub fn path(&self) -> &'a Path {
        Path::new(OsStr::from_bytes(self.path_bytes()))
    }

    /// 0 on success, otherwise the positive errno of the failed load
    /// (`ENOENT`, `EISDIR`, `EINVAL` for a file that is not regular,
    /// `EFBIG` for a file larger than `max_file_size`, ...).
    pub fn error(&self) -> i32 {
        self.region.entry(self.g).status.load(Ordering::Relaxed)
    }

    /// True when the file loaded.
    pub fn is_ok(&self) -> bool {
        self.error() == 0
    }

    /// Number of bytes loaded (0 for a failed load).
    pub fn len(&self) -> usize {
        self.span().1
    }

    /// Where the data is and how long it is: in the entry's buffer (at the
    /// offset the loader gave), or in the destination memory. Every value
    /// read from the region is bounds-checked: a scribbled entry shows no
    /// data, never memory outside its buffer or destination.
    fn span(&self) -> (*const u8, usize) {
        let m = self.region.entry(self.g);
        let buf = self.region.buffer(self.g);
        if !self.is_ok() {
            return (buf, 0);
        }
        let size = m.size.load(Ordering::Relaxed);
        let mem = m.dst_mem.load(Ordering::Relaxed);
        if mem == NO_DEST {
            let cap = self.region.buf_size();
            let off = (m.data_off.load(Ordering::Relaxed) as u64).min(cap);
            // SAFETY: off <= buf_size: inside (or at the end of) the buffer.
            let p = unsafe { buf.add(off as usize) };
            return (p, size.min(cap - off) as usize);
        }
        let len = size.min(m.range_len.load(Ordering::Relaxed));
        match self
            .region
            .dest(mem, m.dst_off.load(Ordering::Relaxed), len)
        {
            Ok(p) => (p, len as usize),
            Err(_) => (buf, 0),
        }
    }

    /// The requested byte offset (0 for a whole file).
    pub fn offset(&self) -> u64 {
        let m = self.region.entry(self.g);
        if m.range_len.load(Ordering::Relaxed) == WHOLE_FILE {
            0
        } else {
            m.range_off.load(Ordering::Relaxed)
        }
    }

    /// The destination of a [`Worker::request_into`] (`None`: the entry's
    /// own buffer).
    pub fn dest(&self) -> Option<Dest> {
        let m = self.region.entry(self.g);
        let mem = m.dst_mem.load(Ordering::Relaxed);
        (mem != NO_DEST).then(|| Dest {
            mem,
            offset: m.dst_off.load(Ordering::Relaxed),
        })
    }

    /// True when no byte was loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes loaded (empty for a failed load): the file, or the
    /// requested range of it. For a whole file the slice starts at the
    /// entry's buffer (4096-byte aligned) also when it is empty; for a
    /// destination request it is the destination memory.
    pub fn data(&self) -> &'a [u8] {
        let (p, n) = self.span();
        // SAFETY: `span` keeps the slice inside the entry's buffer or the
        // destination span (checked against the registration). The entry
        // is DONE and not released while this view lives, so the loader no
        // longer writes it and nobody reuses the buffer; a destination span
        // is the requester's alone until release (`request_into`'s
        // contract).
        unsafe { std::slice::from_raw_parts(p, n) }
    }

    /// The bytes, or the load's error as an `io::Error`.
    pub fn result(&self) -> std::io::Result<&'a [u8]> {
        match self.error() {
            0 => Ok(self.data()),
            e => Err(std::io::Error::from_raw_os_error(e)),
        }
    }

    /// The tag given to [`Worker::request_tagged`] (0 for a request made
    /// without one).
    pub fn tag(&self) -> u64 {
        self.region.entry(self.g).tag.load(Ordering::Relaxed)
    }

    /// Nanoseconds from the request to the completion.
    pub fn latency_ns(&self) -> u64 {
        let m = self.region.entry(self.g);
        m.t_done
            .load(Ordering::Relaxed)
            .saturating_sub(m.t_request.load(Ordering::Relaxed))
    }
}

/// A completed request: the path, the loaded bytes or the errno. Holding it
/// keeps its buffer; releasing it (or dropping it) returns the slot to the
/// worker. Data stays valid and unchanged until then.
///
/// After `fork`, a child's copy of an entry (inherited memory, e.g. a
/// Python object) still reads the same bytes, but it is the parent's claim:
/// releasing or dropping it in the child does nothing, so the parent's data
/// cannot be handed to another request behind its back.
pub struct Entry {
    region: Arc<Region>,
    g: u32,
    generation: u32,
    /// [`fork_epoch`] of the process that got the entry.
    epoch: u64,
    released: bool,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("path", &self.path())
            .field("len", &self.len())
            .field("error", &self.error())
            .finish()
    }
}

impl Entry {
    /// The entry's view; every accessor below is its.
    pub fn view(&self) -> EntryRef<'_> {
        EntryRef {
            region: &self.region,
            g: self.g,
        }
    }

    /// The path that was requested, as bytes (see [`EntryRef::path_bytes`]).
    pub fn path_bytes(&self) -> &[u8] {
        self.view().path_bytes()
    }

    /// The path that was requested.
    pub fn path(&self) -> &Path {
        self.view().path()
    }

    /// 0 on success, otherwise the positive errno of the failed load
    /// (`ENOENT`, `EISDIR`, `EINVAL` for a file that is not regular,
    /// `EFBIG` for a file larger than `max_file_size`, ...).
    pub fn error(&self) -> i32 {
        self.view().error()
    }

    /// True when the file loaded.
    pub fn is_ok(&self) -> bool {
        self.view().is_ok()
    }

    /// Number of bytes loaded (0 for a failed load).
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// True when no byte was loaded.
    pub fn is_empty(&self) -> bool {
        self.view().is_empty()
    }

    /// The file's bytes (empty for a failed load).
    pub fn data(&self) -> &[u8] {
        self.view().data()
    }

    /// The bytes, or the load's error as an `io::Error`.
    pub fn result(&self) -> std::io::Result<&[u8]> {
        self.view().result()
    }

    /// Nanoseconds from the request to the completion.
    pub fn latency_ns(&self) -> u64 {
        self.view().latency_ns()
    }

    /// The request's tag (see [`Worker::request_tagged`]).
    pub fn tag(&self) -> u64 {
        self.view().tag()
    }

    /// The requested byte offset (0 for a whole file; see
    /// [`Worker::request_range`]).
    pub fn offset(&self) -> u64 {
        self.view().offset()
    }

    /// The destination of a [`Worker::request_into`] (`None`: the entry's
    /// own buffer).
    pub fn dest(&self) -> Option<Dest> {
        self.view().dest()
    }

    /// Global entry index and generation, for handles kept outside Rust.
    pub fn raw_parts(&self) -> (u32, u32) {
        (self.g, self.generation)
    }

    /// Gives up this handle without releasing the entry, for handles kept
    /// outside Rust (the C ABI): the entry stays delivered, its data valid,
    /// until [`Worker::release_raw_parts`]; [`Worker::entry_ref`] reads it
    /// meanwhile. (Never releasing it only leaks the slot, as
    /// `mem::forget` would.)
    pub fn into_raw_parts(mut self) -> (u32, u32) {
        self.released = true;
        (self.g, self.generation)
    }

    /// Gives up this handle without releasing the entry and returns the
    /// ticket that stands for it: the hand-over to another process (or
    /// thread) that takes it with [`Loader::take_tickets`](crate::Loader::take_tickets)
    /// (copy out and release). The entry keeps its buffer, and counts
    /// against the worker's `queue_depth`, until then. In a process forked
    /// after the delivery the entry is the parent's: `None`, and nothing
    /// is handed over.
    pub fn into_ticket(mut self) -> Option<u64> {
        self.released = true;
        (self.epoch == fork_epoch()).then(|| ticket(self.g, self.generation))
    }

    /// Returns the slot to the worker (same as dropping the entry).
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        if self.epoch != fork_epoch() {
            // An inherited copy in a forked child: the slot is the parent's.
            return;
        }
        // Double release is impossible here (release takes self), and a
        // stale generation only happens if the region was tampered with.
        let _ = release_raw(&self.region, self.g, self.generation);
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.release_inner();
    }
}

/// Releases entry `g` of generation `generation`: `InvalidArgument` when it
/// was already released (the generation moved on) or is not delivered.
pub(crate) fn release_raw(region: &Region, g: u32, generation: u32) -> Result<()> {
    if g >= region.n_entries() {
        return Err(Error::new(ErrorKind::InvalidArgument, "no such entry"));
    }
    let meta = region.entry(g);
    let expect = ((generation as u64) << 32) | entry_state::DONE as u64;
    let next = ((generation.wrapping_add(1) as u64) << 32) | entry_state::FREE as u64;
    meta.state
        .compare_exchange(expect, next, Ordering::AcqRel, Ordering::Acquire)
        .map_err(|_| Error::new(ErrorKind::InvalidArgument, "entry already released"))?;
    let qd = region.cfg().queue_depth;
    // The free stack holds all queue_depth entries: a refusal is its head
    // rewritten over and over by a broken process; the slot is lost to this
    // worker until reclaim_worker.
    region
        .worker(g / qd)
        .free
        .push_patiently(g % qd, RING_PATIENCE)
        .map_err(|_| corrupt("free stack"))
}

/// The error for a ring or entry of this worker that holds what no correct
/// participant writes (another process mapping the region scribbled on it).
/// Only this worker is affected; `Loader::reclaim_worker` repairs it.
fn corrupt(what: &str) -> Error {
    Error::os(
        libc::EIO,
        format!("this worker's {what} is corrupt (shared memory written by a broken process)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Loader};

    fn loader(n_workers: u32) -> Loader {
        let l = Loader::new(Config {
            n_workers,
            queue_depth: 2,
            loader_threads: 1,
            ..Config::default()
        })
        .unwrap();
        l.start().unwrap();
        l
    }

    /// The raw-parts round trip the C ABI uses: a view reads what the
    /// entry read, release checks the generation, and a stale or foreign
    /// pair is refused.
    #[test]
    fn raw_parts_round_trip_is_generation_checked() {
        let l = loader(2);
        let (w0, w1) = (l.worker(0).unwrap(), l.worker(1).unwrap());
        assert_eq!(w0.queue_depth(), 2);
        assert_eq!(w1.entry_indices(), 2..4);
        w0.request("src/worker.rs").unwrap();
        let e = w0.wait_get_timeout(Duration::from_secs(10)).unwrap();
        let (path, data) = (e.path_bytes().to_vec(), e.data().to_vec());
        assert_eq!(
            path, b"src/worker.rs",
            "a relative path is reported as given"
        );
        assert_eq!(data, std::fs::read("src/worker.rs").unwrap());
        let (g, generation) = e.into_raw_parts();
        assert!(w0.entry_indices().contains(&g));
        // SAFETY: nobody releases (g, generation) while a view of it is in
        // use: the views below are dropped before the release that follows.
        unsafe {
            let v = w0.entry_ref(g, generation).unwrap();
            assert_eq!(
                (v.path_bytes(), v.data(), v.error()),
                (&path[..], &data[..], 0)
            );
            assert!(w0.entry_ref(g, generation.wrapping_add(1)).is_none());
            assert!(
                w1.entry_ref(g, generation).is_none(),
                "another worker's entry"
            );
            assert_eq!(
                w1.release_raw_parts(g, generation).unwrap_err().kind(),
                ErrorKind::InvalidArgument
            );
            assert_eq!(w0.outstanding(), 1, "the foreign release did nothing");
            w0.release_raw_parts(g, generation).unwrap();
            assert!(w0.entry_ref(g, generation).is_none(), "released");
            assert_eq!(
                w0.release_raw_parts(g, generation).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "a second release is refused"
            );
        }
        assert_eq!(w0.outstanding(), 0);
    }

    #[test]
    fn loader_state_follows_the_life_of_the_loader() {
        let l = Loader::new(Config::default()).unwrap();
        let w = l.worker(0).unwrap();
        assert_eq!(
            (l.state(), w.loader_state()),
            (LoaderState::Created, LoaderState::Created)
        );
        assert_eq!(l.stats().backend, crate::BackendKind::Auto);
        l.start().unwrap();
        assert_eq!(w.loader_state(), LoaderState::Running);
        l.shutdown().unwrap();
        assert_eq!(
            (l.state(), l.stats().state),
            (LoaderState::Stopped, LoaderState::Stopped)
        );
        assert_eq!(w.loader_state(), LoaderState::Stopped);
    }
}
