//! A pollable completion signal per worker: an eventfd written by a small
//! notifier thread of the process that asked for it.
//!
//! Design: the loader knows no file descriptor. The first
//! [`Worker::completion_fd`](crate::Worker::completion_fd) call in a process
//! starts one thread that sleeps on the worker's futex (the `Parking` of its
//! worker block, the one `wait_get` sleeps on and the loader already wakes
//! once per batch of completions) and writes the eventfd. That works the
//! same in threads mode, with a forked loader process and in a process that
//! attached by name, and costs nothing to workers that never ask: the loader
//! pays its futex wake only while somebody sleeps on the worker.
//!
//! The eventfd is `EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC`. Its counter
//! is 0 or 1 while the loader lives. The contract (level-like):
//!
//! - the notifier writes 1 whenever the completion ring has a ready entry
//!   and the counter is 0: at once when the loader wakes it (a new batch),
//!   and at its next periodic check (at most [`SLICE`] later) otherwise;
//! - the consumer reads the eventfd (8 bytes; `EAGAIN` is fine) and then
//!   takes entries with `try_get` until it returns nothing;
//! - a completion landing at any moment after the read makes the fd
//!   readable again at once: the notifier is registered as a sleeper before
//!   it checks the ring, so the loader either sees it and wakes it, or the
//!   check sees the completion (the futex protocol of `src/futex.rs`). A
//!   consumer that stops before the ring is empty gets the fd readable again
//!   within `SLICE`. Readiness may be spurious (`try_get` then finds
//!   nothing); it never lasts without entries, so a loop does not spin.
//! - When the loader is shut down (stopped) or dies, the notifier adds
//!   [`FINAL`] to the counter and exits: the fd stays readable for good, so
//!   a waiting loop wakes and its `try_get` reports the error once the
//!   completions left are taken.
//!
//! The thread ends when the last clone of the `Worker` that started it is
//! dropped (it holds the region, not the worker), or when the loader goes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::drive::Drove;
use crate::error::{Error, Result};
use crate::kinds::{Drive, LoaderState};
use crate::process::fork_epoch;
use crate::region::Region;
use crate::worker::loader_health;

/// Longest sleep of the notifier: the period of its liveness check and of
/// its "entries ready but the fd was read" check.
pub(crate) const SLICE: Duration = Duration::from_millis(20);
/// What the notifier adds to the counter once the loader is gone: with
/// `EFD_SEMAPHORE` each read takes 1, so the fd stays readable.
pub(crate) const FINAL: u64 = 1 << 62;

/// The per-`Worker` (shared by its clones) slot of the notifier; dropping
/// it (the last clone went) stops the thread.
pub(crate) struct NotifyCell {
    region: Arc<Region>,
    id: u32,
    inner: Mutex<Option<Notifier>>,
}

struct Notifier {
    fd: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The fork epoch of the process that started the thread: a forked
    /// child inherits the struct, not the thread.
    epoch: u64,
}

impl NotifyCell {
    pub(crate) fn new(region: Arc<Region>, id: u32) -> NotifyCell {
        NotifyCell {
            region,
            id,
            inner: Mutex::new(None),
        }
    }

    /// The eventfd of the worker, starting the notifier on the first call
    /// (again in a forked child, whose copy has no thread).
    pub(crate) fn fd(&self) -> Result<RawFd> {
        let (region, id) = (&self.region, self.id);
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = g.as_mut() {
            if n.epoch == fork_epoch() {
                return Ok(n.fd.as_raw_fd());
            }
            // Inherited across fork: the thread is not ours to join.
            if let Some(t) = n.thread.take() {
                std::mem::forget(t);
            }
            *g = None;
        }
        // SAFETY: eventfd takes no pointer; the result is checked.
        let raw = unsafe {
            libc::eventfd(
                0,
                libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EMFILE);
            return Err(Error::os(e, "eventfd"));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let stop = Arc::new(AtomicBool::new(false));
        let (r, f, s) = (region.clone(), fd.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("al-notify-{id}"))
            .spawn(move || run(&r, id, f.as_raw_fd(), &s))
            .map_err(|e| Error::os(e.raw_os_error().unwrap_or(libc::EAGAIN), "notifier thread"))?;
        *g = Some(Notifier {
            fd: fd.clone(),
            stop,
            thread: Some(thread),
            epoch: fork_epoch(),
        });
        Ok(fd.as_raw_fd())
    }
}

impl Drop for NotifyCell {
    /// Stops and joins the notifier (the last clone of the worker went).
    fn drop(&mut self) {
        let (region, id) = (&self.region, self.id);
        let n = self
            .inner
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut n) = n else { return };
        n.stop.store(true, Ordering::SeqCst);
        let Some(t) = n.thread.take() else { return };
        if n.epoch != fork_epoch() {
            std::mem::forget(t);
            return;
        }
        // Wakes every sleeper of this worker; the others re-check and sleep.
        region.worker(id).block.parking.notify_all();
        let _ = t.join();
    }
}

/// True when the eventfd's counter is non-zero.
fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0 (no wait).
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// Adds `v` to the eventfd's counter (non-blocking: a full counter, only
/// after FINAL, is readable anyway).
fn add(fd: RawFd, v: u64) {
    // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
    unsafe {
        libc::write(fd, (&v as *const u64).cast(), 8);
    }
}

/// True once nothing will ever be delivered again (stopped or dead).
fn gone(region: &Region, check_process: bool) -> bool {
    match region.header().loader_state() {
        LoaderState::Stopped | LoaderState::Dead => true,
        LoaderState::Running if check_process => {
            loader_health(region).is_err() && region.header().loader_state() == LoaderState::Dead
        }
        _ => false,
    }
}

/// Longest wait in the kernel of a notifier that drives its worker's loads.
const DRIVE_SLICE: Duration = Duration::from_millis(1);

/// The notifier thread (see the module docs).
fn run(region: &Region, id: u32, fd: RawFd, stop: &AtomicBool) {
    let rings = region.worker(id);
    let mut last_health = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let check = last_health.elapsed() >= SLICE;
        if check {
            last_health = Instant::now();
        }
        // Workers that drive their own loads: the notifier drives this
        // one's while the program waits on the fd (briefly, so that the
        // program's own calls find the driver free most of the time).
        let worker_drive = region.header().drive() == Drive::Worker;
        let drove = if worker_drive {
            crate::drive::drive(region, id, Some(DRIVE_SLICE)).unwrap_or(Drove::Idle)
        } else {
            Drove::Idle
        };
        // Files in flight are still delivered after a shutdown.
        if gone(region, check) && matches!(drove, Drove::Idle) {
            add(fd, FINAL);
            return;
        }
        if rings.comp.has_ready() && !readable(fd) {
            add(fd, 1);
        }
        let slice = match drove {
            Drove::Passed => continue,
            // The program's own thread drives: look again soon.
            Drove::Busy => DRIVE_SLICE,
            Drove::Idle => SLICE,
        };
        let wake_on_request = worker_drive && matches!(drove, Drove::Idle);
        // Sleep unless there is something to do: registered as a sleeper
        // first, so a completion after this check wakes us.
        rings.block.parking.sleep_unless(slice, || {
            stop.load(Ordering::SeqCst)
                || (wake_on_request
                    && rings.req.has_ready()
                    && region.header().loader_state() == LoaderState::Running)
                || matches!(
                    region.header().loader_state(),
                    LoaderState::Stopped | LoaderState::Dead
                )
                || (rings.comp.has_ready() && !readable(fd))
        });
    }
}
