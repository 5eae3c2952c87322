//! Workers that load their own requests (`Drive::Worker`).
//!
//! With loader threads (`Drive::Loader`) every file crosses two threads: the
//! worker pushes the request and wakes a loader thread, which submits it,
//! reaps it and wakes the worker. On a machine with few cores the loader
//! threads and the workers take turns on the same cores, and each turn is a
//! futex wake and a context switch (measured in docs/bench.md). With
//! `Drive::Worker` the worker's own thread does the loader's part, on an
//! io_uring of its own: `request` submits once `dispatch_n` requests wait,
//! `try_get` and `wait_get` submit the rest, reap, and wait in
//! `io_uring_enter` instead of on a futex. Warm files are read inside the
//! submitting system call; cold ones are read by the kernel in the
//! background, as with the loader threads.
//!
//! The requests still go through the worker's request ring and the entries
//! through the same FREE → QUEUED → LOADING → DONE states and the completion
//! ring: a driver is a loader thread that serves one worker, so everything
//! that holds for the loader threads (entry ownership, the untrusted-region
//! checks, `reclaim_worker`'s ring epochs) holds here unchanged.
//!
//! One driver per worker and process, kept in the process's [`Region`]: the
//! threads of a process that share a worker (clones of a `Worker`, several
//! C handles) share its driver, so files one of them submitted are reaped by
//! whichever waits next. Only one thread drives at a time ([`Drivers::hold`]
//! never blocks: a thread that finds the driver busy sleeps on the worker's
//! futex, which the driving thread wakes when it completes entries).
//!
//! Fork: a driver belongs to the process that made it (its io_uring and its
//! files in flight are that process's). A forked child that uses the worker
//! makes its own and never touches, drops or waits for the inherited one —
//! also when a thread of the parent was driving at the fork, which leaves
//! the lock word held by a thread that does not exist in the child.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::{Backend, Done};
use crate::config::EnvOverrides;
use crate::engine::{
    Completions, RingPass, flush_counters, job_for, make_backend, take_entry, usable,
};
use crate::error::{Error, Result};
use crate::process::fork_epoch;
use crate::region::{Region, entry_state, state};

/// The drivers of one process's workers, one slot per worker id.
pub(crate) struct Drivers {
    slots: Box<[Slot]>,
}

struct Slot {
    /// 0 when free; otherwise `fork_epoch() + 1` of the process whose
    /// thread holds the slot.
    lock: AtomicU64,
    driver: UnsafeCell<Option<Driver>>,
    /// The batch `request` waits for when `dispatch_n` is auto, as the
    /// driver last worked it out ([`Driver::batch`]; 0: no driver yet).
    batch: AtomicU32,
}

// SAFETY: `driver` is only touched through a `Held`, which exists for at
// most one thread of a process at a time (the `lock` word, taken by
// compare-and-swap); a thread of another process touches its own copy.
unsafe impl Sync for Slot {}

/// Exclusive use of one worker's driver slot, until dropped.
pub(crate) struct Held<'a> {
    slot: &'a Slot,
}

impl Drivers {
    pub(crate) fn new(n_workers: u32) -> Self {
        Drivers {
            slots: (0..n_workers)
                .map(|_| Slot {
                    lock: AtomicU64::new(0),
                    driver: UnsafeCell::new(None),
                    batch: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    /// The batch a request of worker `w` in this process waits for when
    /// `dispatch_n` is auto (0 until its driver completed something).
    pub(crate) fn batch(&self, w: u32) -> u32 {
        self.slots
            .get(w as usize)
            .map_or(0, |s| s.batch.load(Ordering::Relaxed))
    }

    /// The driver slot of worker `w`, unless another thread of this process
    /// holds it now. Never waits.
    pub(crate) fn hold(&self, w: u32) -> Option<Held<'_>> {
        let slot = self.slots.get(w as usize)?;
        let me = fork_epoch() + 1;
        let cur = slot.lock.load(Ordering::Relaxed);
        if cur == me {
            return None;
        }
        // `cur` is 0 (free) or the mark of a process this one was forked
        // from: a thread that does not exist here, which will never let go.
        slot.lock
            .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // SAFETY: we hold the slot (above).
        let d = unsafe { &mut *slot.driver.get() };
        if d.as_ref().is_some_and(|d| d.epoch != fork_epoch()) {
            // The parent's driver: its ring and its files are the parent's.
            // Dropping it could wait for threads that do not exist here.
            std::mem::forget(d.take());
        }
        Some(Held { slot })
    }
}

impl Drop for Drivers {
    fn drop(&mut self) {
        let me = fork_epoch();
        for slot in self.slots.iter_mut() {
            if slot
                .driver
                .get_mut()
                .as_ref()
                .is_some_and(|d| d.epoch != me)
            {
                std::mem::forget(slot.driver.get_mut().take());
            }
        }
    }
}

impl Held<'_> {
    /// The driver, made on first use in this process.
    pub(crate) fn driver(&mut self, region: &Region, w: u32) -> Result<&mut Driver> {
        // SAFETY: we hold the slot: no other thread touches its driver.
        let d = unsafe { &mut *self.slot.driver.get() };
        if d.is_none() {
            *d = Some(Driver::new(region, w)?);
        }
        Ok(d.as_mut().expect("made above"))
    }

    /// The driver if this process made one.
    pub(crate) fn existing(&mut self) -> Option<&mut Driver> {
        // SAFETY: we hold the slot: no other thread touches its driver.
        unsafe { &mut *self.slot.driver.get() }.as_mut()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.slot.lock.store(0, Ordering::Release);
    }
}

/// What [`drive`] did.
pub(crate) enum Drove {
    /// Another thread of this process holds the driver.
    Busy,
    /// Nothing queued (while the loader runs) and nothing in flight in
    /// this process's driver.
    Idle,
    /// A pass ran.
    Passed,
}

/// One pass of worker `w`'s driver in this process, waiting up to `wait`
/// in the kernel for a completion when none is ready (see
/// [`Driver::pass`]); made on first use.
pub(crate) fn drive(region: &Region, w: u32, wait: Option<Duration>) -> Result<Drove> {
    let Some(mut held) = region.drivers.hold(w) else {
        return Ok(Drove::Busy);
    };
    let running = region.header().state.load(Ordering::Acquire) == state::RUNNING;
    let queued = running && region.worker(w).req.has_ready();
    if !queued && held.existing().is_none_or(|d| d.in_flight() == 0) {
        return Ok(Drove::Idle);
    }
    let d = held.driver(region, w)?;
    d.pass(region, w, wait)?;
    let batch = d.batch(region);
    held.slot.batch.store(batch, Ordering::Relaxed);
    Ok(Drove::Passed)
}

/// One worker's loader: a backend (its own io_uring, or the thread-pool
/// fallback) and the engine's completion hand-over.
pub(crate) struct Driver {
    epoch: u64,
    backend: Box<dyn Backend>,
    done: Vec<Done>,
    out: Completions,
    /// Moving average of the bytes of the files this driver loaded (1/8
    /// weight per pass); 0 before the first.
    avg_bytes: u64,
}

/// Bytes of files an auto-sized batch holds (see [`Driver::batch`]).
const BATCH_BYTES: u64 = 1 << 20;

impl Driver {
    fn new(region: &Region, w: u32) -> Result<Driver> {
        let h = region.header();
        let env = EnvOverrides::from_bits(h.env_bits.load(Ordering::Acquire));
        let cfg = region.cfg();
        let window = cfg.ring_window.min(cfg.queue_depth).max(1);
        // The mapping, not the Region, keeps the jobs' memory alive: the
        // Region owns this driver.
        let backend = make_backend(region, window, region.mapping_guard(), &env, false)?;
        // This process writes the worker's buffers from now on: map them
        // in its page tables once, if they exist (see map_prefaulted).
        region.map_prefaulted(Some(w));
        Ok(Driver {
            epoch: fork_epoch(),
            backend,
            done: Vec::with_capacity(window as usize * 2),
            out: Completions::default(),
            avg_bytes: 0,
        })
    }

    /// The batch `request` waits for when `dispatch_n` is auto (0): as
    /// many files as make about [`BATCH_BYTES`] by the sizes loaded lately,
    /// at least 8 and at most the io_uring window (`min(ring_window,
    /// queue_depth)`). Small files go 32 a batch: a quarter of the system
    /// calls and passes of 8. Large files go about 1 MiB a batch, so what
    /// one batch loads is still in the CPU's cache when the worker reads it
    /// (measured from Python, where the reader touches every byte: see
    /// docs/bench.md).
    fn batch(&self, region: &Region) -> u32 {
        let cfg = region.cfg();
        let window = crate::config::auto_dispatch_n(
            0,
            crate::Drive::Worker,
            cfg.ring_window,
            cfg.queue_depth,
        );
        let by_bytes = match self.avg_bytes {
            0 => 8,
            avg => (BATCH_BYTES / avg).min(u32::MAX as u64) as u32,
        };
        by_bytes.max(8).min(window)
    }

    /// Files in the backend (submitted or queued in it).
    pub(crate) fn in_flight(&self) -> usize {
        self.backend.in_flight()
    }

    /// Takes worker `w`'s queued requests (while the loader runs and the
    /// backend has room), submits them with any follow-up steps, reaps what
    /// completed — waiting up to `wait` for a completion when none is there
    /// and files are in flight — and hands the completed entries to the
    /// worker's completion ring.
    pub(crate) fn pass(&mut self, region: &Region, w: u32, wait: Option<Duration>) -> Result<()> {
        let block = region.worker(w).block;
        let stats = &block.stats;
        let qd = region.cfg().queue_depth;
        let running = region.header().state.load(Ordering::Acquire) == state::RUNNING;
        let mut got = 0u32;
        if running {
            let _pass = RingPass::enter(&stats.ring_epoch);
            if usable(region, w) {
                let req = region.worker(w).req;
                // Bounded: a ring scribbled on by a broken process must not
                // keep us here.
                let mut budget = 2 * qd as u64;
                while self.backend.room() > 0 && budget > 0 {
                    let Some(g) = req.pop() else { break };
                    budget -= 1;
                    // As in the loader loop: only this worker's entries that
                    // are QUEUED (see engine::run_thread).
                    if g / qd != w
                        || take_entry(region, g, entry_state::QUEUED, entry_state::LOADING)
                            .is_none()
                    {
                        continue;
                    }
                    // SAFETY: we moved `g` from QUEUED to LOADING, so the
                    // entry is ours until we complete it; the backend holds
                    // the mapping guard for as long as it may write later.
                    match unsafe { job_for(region, g) } {
                        Ok(job) => self.backend.push(job),
                        Err(e) => self.done.push(Done::new(g, Err(e))),
                    }
                    got += 1;
                }
            }
        }
        if got > 0 {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            block
                .driver_pid
                .store(std::process::id() as i32, Ordering::Relaxed);
        }
        if got > 0 || self.backend.has_followups() {
            self.backend
                .submit()
                .map_err(|e| Error::os(e.raw_os_error().unwrap_or(libc::EIO), "submit"))?;
        }
        self.backend
            .reap(&mut self.done, wait)
            .map_err(|e| Error::os(e.raw_os_error().unwrap_or(libc::EIO), "reap"))?;
        if !self.done.is_empty() {
            let (n, bytes) = self
                .done
                .iter()
                .filter_map(|d| d.result.ok())
                .fold((0u64, 0u64), |(n, b), x| (n + 1, b + x));
            if let Some(mean) = bytes.checked_div(n) {
                self.avg_bytes = match self.avg_bytes {
                    0 => mean.max(1),
                    a => ((a * 7 + mean) / 8).max(1),
                };
            }
            flush_counters(self.backend.as_mut(), stats);
            self.out.complete(region, stats, &self.done);
            self.done.clear();
        }
        if !self.out.deferred.is_empty() {
            self.out.retry(region, stats);
        }
        Ok(())
    }
}
