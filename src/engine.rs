//! The loader loop: gather requests from every worker ring, dispatch them to
//! the backend in batches, hand completions to the owning workers.
//!
//! Each loader thread runs this loop with its own backend (its own io_uring).
//! All threads pop from all workers' request rings (the rings are
//! multi-consumer), so one busy worker keeps every loader thread fed.
//!
//! Batching follows the original module: requests gathered in a pass are
//! queued in the backend, and the batch is submitted once `dispatch_n` are
//! waiting, or once `idle_iters` passes found no new request (or the backend
//! is full). Follow-up steps of files already in flight are submitted at once.
//!
//! Waiting: with files in flight and nothing new, the thread blocks in
//! `io_uring_enter` for at most [`INFLIGHT_WAIT`]; with nothing in flight it
//! spins [`IDLE_SPIN`] passes and then sleeps on the region's loader futex,
//! which a worker's `request` wakes. Sleeps time out every [`IDLE_SLEEP`] so
//! the thread notices a dead parent and never depends on a wake alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backend::threads::ThreadsBackend;
use crate::backend::uring::UringBackend;
use crate::backend::{Backend, Done, Job, KeepAlive, Span};
use crate::config::{BackendKind, EnvOverrides};
use crate::error::{Error, Result};
use crate::region::{NO_DEST, Region, ThreadStats, WHOLE_FILE, entry_state, now_ns, state};

/// Longest block in the backend while files are in flight and no request
/// arrives; a new request waits at most this long to be gathered.
const INFLIGHT_WAIT: Duration = Duration::from_micros(200);
/// Idle passes (beyond `idle_iters`) before an idle thread sleeps.
const IDLE_SPIN: u32 = 512;
/// Idle passes that spin while a partial batch waits for `idle_iters`;
/// later passes sleep [`PENDING_SLICE`] each (or until a request arrives),
/// so a large `idle_iters` delays the batch without keeping a core busy.
const PENDING_SPIN: u32 = 64;
const PENDING_SLICE: Duration = Duration::from_micros(50);
/// Sleep of an otherwise idle loader thread that holds deferred completions.
const DEFERRED_SLICE: Duration = Duration::from_millis(1);
/// Longest futex sleep of an idle loader thread.
const IDLE_SLEEP: Duration = Duration::from_millis(100);
/// After a shutdown, how long in-flight files may take before they are
/// cancelled, and how long after that the thread gives up on them.
const STOP_CANCEL_AFTER: Duration = Duration::from_secs(2);
const STOP_GIVE_UP_AFTER: Duration = Duration::from_secs(5);

/// Where the loader runs, for the parent-death check.
#[derive(Clone, Copy)]
pub(crate) struct ThreadCtx {
    pub tid: u32,
    /// In a spawned loader process: the parent's pid. The loader stops when
    /// its parent is gone, so it never outlives the program that made it.
    pub parent: Option<i32>,
    /// The environment overrides, read when the loader started (never in a
    /// forked loader process: see `config::env_overrides`).
    pub env: crate::config::EnvOverrides,
}

/// A backend of `window` files in flight for a loader thread or a worker's
/// driver. `keep` keeps the memory the jobs point into mapped for as long as
/// an abandoned read may still write into it; `log` says whether this one
/// reports a fallback (the first loader thread does).
pub(crate) fn make_backend(
    region: &Region,
    window: u32,
    keep: KeepAlive,
    env: &EnvOverrides,
    log: bool,
) -> Result<Box<dyn Backend>> {
    let cfg = region.cfg();
    let (direct, max) = (cfg.direct != 0, cfg.max_file_size);
    // ASYNCLOADER_BACKEND wins over the config.
    let kind = env
        .backend
        .unwrap_or_else(|| BackendKind::from_u32(cfg.backend).unwrap_or_default());
    let chosen: Box<dyn Backend> = match kind {
        BackendKind::Auto | BackendKind::IoUring => {
            match UringBackend::new(window, direct, max, keep.clone(), env) {
                Ok(b) => Box::new(b),
                Err(e) if kind == BackendKind::Auto => {
                    if log {
                        crate::process::log!(
                            "io_uring unavailable ({e}); using the thread-pool backend"
                        );
                    }
                    Box::new(threads_backend(window, direct, max, keep, env)?)
                }
                Err(e) => {
                    return Err(Error::os(
                        e.raw_os_error().unwrap_or(libc::EIO),
                        "io_uring setup",
                    ));
                }
            }
        }
        BackendKind::Threads => Box::new(threads_backend(window, direct, max, keep, env)?),
    };
    let in_use = if chosen.is_uring() {
        BackendKind::IoUring
    } else {
        BackendKind::Threads
    };
    region
        .header()
        .backend_in_use
        .store(in_use as u32, Ordering::Relaxed);
    Ok(chosen)
}

fn threads_backend(
    window: u32,
    direct: bool,
    max: u64,
    keep: KeepAlive,
    env: &EnvOverrides,
) -> Result<ThreadsBackend> {
    ThreadsBackend::new(window, direct, max, keep, env.range_open_each).map_err(|e| {
        Error::os(
            e.raw_os_error().unwrap_or(libc::EAGAIN),
            "starting the thread-pool backend",
        )
    })
}

/// A pass of this loader thread over the workers' rings: while it lives,
/// the thread's `ring_epoch` is odd. `Loader::reclaim_worker` sets the
/// worker's `reclaiming` flag and then waits until every odd epoch has
/// moved on; a pass that starts after that sees the flag (both sides use
/// `SeqCst`: flag store then epoch load, epoch increment then flag load), so
/// once the wait ends no loader thread pops from, or pushes to, that worker's
/// rings until the flag is cleared.
pub(crate) struct RingPass<'a>(&'a AtomicU64);

impl<'a> RingPass<'a> {
    pub(crate) fn enter(epoch: &'a AtomicU64) -> Self {
        epoch.fetch_add(1, Ordering::SeqCst);
        RingPass(epoch)
    }
}

impl Drop for RingPass<'_> {
    fn drop(&mut self) {
        // Release: the pass's ring operations happen before a reclaimer
        // that sees the new epoch rebuilds the rings.
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Whether a loader thread may use worker `w`'s rings in this pass.
pub(crate) fn usable(region: &Region, w: u32) -> bool {
    region.worker(w).block.reclaiming.load(Ordering::SeqCst) == 0
}

/// Moves entry `g` from `from` to `to` (same generation) if it is in `from`
/// and returns the new state word; `None` when someone else moved it, or a
/// worker pushed an index it never requested: then the entry is not ours.
pub(crate) fn take_entry(region: &Region, g: u32, from: u32, to: u32) -> Option<u64> {
    let meta = region.entry(g);
    let word = meta.state.load(Ordering::Acquire);
    let new = (word & !0xffff_ffff) | to as u64;
    (word as u32 == from
        && meta
            .state
            .compare_exchange(word, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok())
    .then_some(new)
}

/// True when some usable worker has a request a pop would get now.
fn requests_ready(region: &Region) -> bool {
    (0..region.cfg().n_workers).any(|w| {
        let r = region.worker(w);
        r.block.reclaiming.load(Ordering::Relaxed) == 0 && r.req.has_ready()
    })
}

/// Runs one loader thread until shutdown. Returns the error that stopped it
/// early, if any.
/// The job for entry `g`, which the caller moved from QUEUED to LOADING
/// (so its path, range and destination are no longer written by anyone),
/// or the errno to complete it with at once: the range and destination
/// come from shared memory and are checked again here (`EINVAL` for a bad
/// range or a destination outside its memory, `EFBIG` for a range larger
/// than an entry's buffer, `EXDEV` for memory registered by another
/// process).
///
/// # Safety
///
/// The caller owns entry `g` in the LOADING state until the backend reports
/// the job's `Done` (or, if the backend is dropped first, for as long as
/// its keep-alive guard of the region lives). A destination in registered
/// memory is valid by `Loader::register_memory`'s contract.
pub(crate) unsafe fn job_for(region: &Region, g: u32) -> std::result::Result<Job, i32> {
    let meta = region.entry(g);
    // SAFETY: the caller owns the entry (see # Safety).
    let path = unsafe { region.queued_path(g) };
    let rlen = meta.range_len.load(Ordering::Relaxed);
    let mem = meta.dst_mem.load(Ordering::Relaxed);
    if rlen == WHOLE_FILE && mem == NO_DEST {
        // SAFETY: the entry is ours until the backend reports its Done; its
        // path and buffer (`buf_size` bytes in the region) are touched by
        // nobody else meanwhile, and the backend holds a clone of the
        // region (the keep-alive) for as long as it may write later.
        return Ok(unsafe { Job::new(g, path, region.buffer(g), region.buf_size()) });
    }
    if rlen == WHOLE_FILE {
        return Err(libc::EINVAL);
    }
    let off = meta.range_off.load(Ordering::Relaxed);
    if off
        .checked_add(rlen)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(libc::EINVAL);
    }
    if mem == NO_DEST {
        if rlen > region.cfg().max_file_size {
            return Err(libc::EFBIG);
        }
        let span = Span {
            offset: off,
            len: rlen,
            exact: false,
        };
        // SAFETY: as for a whole file above.
        return Ok(
            unsafe { Job::new(g, path, region.buffer(g), region.buf_size()) }.with_range(span),
        );
    }
    let dst = region.dest(mem, meta.dst_off.load(Ordering::Relaxed), rlen)?;
    let span = Span {
        offset: off,
        len: rlen,
        exact: true,
    };
    // SAFETY: `dest` checked that the span lies inside the arena (in the
    // region, kept alive by the backend's guard like a buffer) or inside
    // memory this process registered, valid by the registration's
    // contract; the requester leaves it alone until the entry is released
    // (`Worker::request_into`'s contract), so it is the backend's until
    // the Done.
    Ok(unsafe { Job::new(g, path, dst, rlen) }.with_range(span))
}

pub(crate) fn run_thread(region: &Arc<Region>, ctx: ThreadCtx) -> Result<()> {
    if ctx.tid == 0 && ctx.parent.is_some() {
        // A forked loader process writes every buffer: map them here once.
        region.map_prefaulted(None);
    }
    let window = region.cfg().ring_window;
    let mut backend = make_backend(region, window, region.clone(), &ctx.env, ctx.tid == 0)?;
    let cfg = *region.cfg();
    let h = region.header();
    let stats = &h.thread_stats[ctx.tid as usize];
    let n = cfg.n_workers;
    let qd = cfg.queue_depth;
    let dispatch_n = cfg.effective_dispatch_n(crate::Drive::Loader);
    let mut rr = ctx.tid % n;
    let mut unsubmitted = 0u32;
    let mut idle = 0u32;
    let mut done: Vec<Done> = Vec::with_capacity(cfg.ring_window as usize * 2);
    let mut stop_since: Option<Instant> = None;
    let mut cancelled = false;
    let mut out = Completions::default();

    loop {
        let stopping = h.state.load(Ordering::Acquire) != state::RUNNING;
        let mut got = 0u32;
        if !stopping {
            let _pass = RingPass::enter(&stats.ring_epoch);
            // Bounded, so a worker that pushes garbage as fast as we drop it
            // cannot keep this thread here.
            let mut budget = 2 * n as u64 * qd as u64 + 64;
            'gather: loop {
                let mut any = false;
                for k in 0..n {
                    if backend.room() == 0 {
                        break 'gather;
                    }
                    let w = (rr + k) % n;
                    if !usable(region, w) {
                        continue;
                    }
                    if budget == 0 {
                        break 'gather;
                    }
                    let Some(g) = region.worker(w).req.pop() else {
                        continue;
                    };
                    budget -= 1;
                    // The ring and the entry states live in memory every
                    // worker process can write: an index this worker does not
                    // own, or an entry that is not QUEUED (pushed twice, never
                    // requested, or being reclaimed), is dropped, so a broken
                    // worker can neither make us load into another worker's
                    // buffer nor load one buffer twice.
                    if g / qd != w
                        || take_entry(region, g, entry_state::QUEUED, entry_state::LOADING)
                            .is_none()
                    {
                        any = true;
                        continue;
                    }
                    // SAFETY: we moved `g` from QUEUED to LOADING, so the
                    // entry is ours until we complete it; the backend holds
                    // a clone of the region (the keep-alive).
                    match unsafe { job_for(region, g) } {
                        Ok(job) => backend.push(job),
                        Err(e) => done.push(Done::new(g, Err(e))),
                    }
                    got += 1;
                    any = true;
                }
                if !any {
                    break;
                }
            }
            rr = (rr + 1) % n;
        }
        unsubmitted += got;
        idle = if got > 0 { 0 } else { idle.saturating_add(1) };

        let dispatch = unsubmitted > 0
            && (unsubmitted >= dispatch_n
                || idle >= cfg.idle_iters
                || backend.room() == 0
                || stopping);
        if dispatch {
            // A batch of new requests goes out (what `batches` counts; the
            // backend's system calls are counted apart).
            stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        if dispatch || backend.has_followups() {
            backend
                .submit()
                .map_err(|e| Error::os(e.raw_os_error().unwrap_or(libc::EIO), "submit"))?;
            unsubmitted = 0;
        }

        // Block only when nothing new came and everything queued is
        // submitted, or, briefly, when a partial batch has waited long.
        // (Not with a partial batch queued: waiting in io_uring_enter would
        // submit it.)
        let wait =
            (got == 0 && unsubmitted == 0 && backend.in_flight() > 0).then_some(INFLIGHT_WAIT);
        let pending_sleep = got == 0 && unsubmitted > 0 && idle > PENDING_SPIN;
        backend
            .reap(&mut done, wait)
            .map_err(|e| Error::os(e.raw_os_error().unwrap_or(libc::EIO), "reap"))?;
        if !done.is_empty() {
            // Counters first, so a worker that sees its entry sees them too.
            flush_counters(backend.as_mut(), stats);
            out.complete(region, stats, &done);
            done.clear();
        }
        if !out.deferred.is_empty() {
            out.retry(region, stats);
        }

        if pending_sleep {
            // A partial batch waits for idle_iters: sleep, not spin, until a
            // request arrives or the slice ends (one idle pass; files in
            // flight are reaped after it).
            h.loader_parking.sleep_unless(PENDING_SLICE, || {
                h.state.load(Ordering::Acquire) != state::RUNNING || requests_ready(region)
            });
        } else if backend.in_flight() == 0 && unsubmitted == 0 && got == 0 {
            if stopping {
                break;
            }
            if !out.deferred.is_empty() {
                // A completion waits for room (see Completions): not a
                // reason to spin, nor to sleep long.
                h.loader_parking.sleep_unless(DEFERRED_SLICE, || {
                    h.state.load(Ordering::Acquire) != state::RUNNING || requests_ready(region)
                });
            } else if idle > cfg.idle_iters.saturating_add(IDLE_SPIN) {
                flush_counters(backend.as_mut(), stats);
                // `requests_ready`, not "indices differ": a ring corrupted by
                // a worker must not keep this thread from sleeping.
                let woke = h.loader_parking.sleep_unless(IDLE_SLEEP, || {
                    h.state.load(Ordering::Acquire) != state::RUNNING || requests_ready(region)
                });
                if !woke
                    && let Some(parent) = ctx.parent
                    && nix::unistd::getppid().as_raw() != parent
                {
                    // The program that spawned us is gone.
                    let _ = h.state.compare_exchange(
                        state::RUNNING,
                        state::STOPPING,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
            } else if idle > cfg.idle_iters {
                std::hint::spin_loop();
            }
        } else if stopping {
            let since = *stop_since.get_or_insert_with(Instant::now);
            if !cancelled && since.elapsed() > STOP_CANCEL_AFTER {
                backend.cancel_all();
                cancelled = true;
            }
            if since.elapsed() > STOP_GIVE_UP_AFTER {
                break;
            }
        }
    }
    flush_counters(backend.as_mut(), stats);
    Ok(())
}

pub(crate) fn flush_counters(backend: &mut dyn Backend, stats: &ThreadStats) {
    let c = backend.take_counters();
    stats
        .buffered_fallbacks
        .fetch_add(c.buffered_fallbacks, Ordering::Relaxed);
    stats
        .direct_reads
        .fetch_add(c.direct_reads, Ordering::Relaxed);
    stats.syscalls.fetch_add(c.syscalls, Ordering::Relaxed);
}

/// Hands completed entries to their workers.
///
/// A push into a completion ring can be refused although the ring has room
/// for all the worker's entries: a worker thread preempted in the middle of
/// a pop holds up the slot the next lap needs (`Ring::push_patiently`), and
/// a worker process killed there holds it up for good. Such completions are
/// kept in `deferred` and retried on later passes, never dropped and never
/// waited for while other workers' files are ready.
#[derive(Default)]
pub(crate) struct Completions {
    /// Workers that got an entry in this call (woken once each).
    touched: Vec<u32>,
    /// (entry, its DONE state word) still to push.
    pub(crate) deferred: Vec<(u32, u64)>,
}

impl Completions {
    /// Stores each result in its entry and hands the entry to its worker;
    /// then wakes each worker that got something once (not once per entry:
    /// a sleeping worker costs the loader one FUTEX_WAKE per batch).
    pub(crate) fn complete(&mut self, region: &Region, stats: &ThreadStats, done: &[Done]) {
        let t = now_ns();
        self.touched.clear();
        let _pass = RingPass::enter(&stats.ring_epoch);
        for d in done {
            let meta = region.entry(d.g);
            // Stats before the push, so a worker holding the entry sees them.
            stats.completions.fetch_add(1, Ordering::Relaxed);
            match d.result {
                Ok(len) => {
                    meta.size.store(len, Ordering::Relaxed);
                    meta.data_off.store(d.skip, Ordering::Relaxed);
                    meta.status.store(0, Ordering::Relaxed);
                    stats.bytes.fetch_add(len, Ordering::Relaxed);
                }
                Err(errno) => {
                    meta.size.store(0, Ordering::Relaxed);
                    meta.status.store(errno, Ordering::Relaxed);
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            meta.t_done.store(t, Ordering::Relaxed);
            // Only an entry still LOADING is ours to complete (a worker may
            // have scribbled over its state; then it gets nothing back).
            if let Some(word) = take_entry(region, d.g, entry_state::LOADING, entry_state::DONE) {
                self.hand_over(region, d.g, word);
            }
        }
        self.wake(region);
    }

    /// Pushes the deferred completions that now fit.
    pub(crate) fn retry(&mut self, region: &Region, stats: &ThreadStats) {
        self.touched.clear();
        let _pass = RingPass::enter(&stats.ring_epoch);
        for (g, word) in std::mem::take(&mut self.deferred) {
            // Still the DONE entry we completed (not reclaimed and reused
            // meanwhile: a reclaim moves the generation on).
            if region.entry(g).state.load(Ordering::Acquire) == word {
                self.hand_over(region, g, word);
            }
        }
        self.wake(region);
    }

    /// Pushes DONE entry `g` to its worker's completion ring, or defers it.
    /// Called inside a [`RingPass`].
    fn hand_over(&mut self, region: &Region, g: u32, word: u64) {
        let w = g / region.cfg().queue_depth;
        if !usable(region, w) {
            // Being reclaimed: the reclaimer takes DONE entries back itself.
            return;
        }
        // The release in push publishes the entry's stores with it.
        if region.worker(w).comp.push(g).is_ok() {
            self.touched.push(w);
        } else {
            self.deferred.push((g, word));
        }
    }

    fn wake(&mut self, region: &Region) {
        self.touched.sort_unstable();
        self.touched.dedup();
        for &w in self.touched.iter() {
            region.worker(w).block.parking.notify(i32::MAX);
        }
    }
}

/// Keeps `loader_threads_alive` honest: decremented when a loader thread
/// ends in any way (return, error, panic). The last one out moves the state
/// to STOPPED after a shutdown, or to DEAD otherwise, and wakes all workers.
pub(crate) struct AliveGuard(pub Arc<Region>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        let h = self.0.header();
        if h.loader_threads_alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            let to = if h.state.load(Ordering::Acquire) == state::RUNNING {
                state::DEAD
            } else {
                state::STOPPED
            };
            let _ = h
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                    (s == state::RUNNING || s == state::STOPPING).then_some(to)
                });
            for w in 0..self.0.cfg().n_workers {
                self.0.worker(w).block.parking.notify_all();
            }
        }
    }
}

/// Body of a loader thread: runs the loop, records a failure, never unwinds.
pub(crate) fn thread_main(region: Arc<Region>, ctx: ThreadCtx) {
    let _guard = AliveGuard(region.clone());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_thread(&region, ctx)));
    let errno = match r {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            crate::process::log!("loader thread {} stopped: {e}", ctx.tid);
            e.errno()
        }
        Err(_) => {
            crate::process::log!("loader thread {} panicked", ctx.tid);
            libc::EIO
        }
    };
    if errno != 0 {
        region.header().loader_error.store(errno, Ordering::Relaxed);
    }
}
