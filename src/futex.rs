//! Cross-process futex wait/wake on words in the shared region.
//!
//! The futexes are *shared* (no `FUTEX_PRIVATE_FLAG`): waiters and wakers are
//! different processes mapping the same memfd pages, and the kernel keys a
//! shared futex by (inode, offset), which both mappings agree on.
//!
//! The sleep/wake protocol used everywhere (a "parking" counter beside a
//! sequence word):
//!
//! - the sleeper increments `sleepers`, then issues a `SeqCst` fence, reads
//!   `seq`, re-checks its condition (ring empty), and only then waits on
//!   `seq` with the value it read;
//! - the waker publishes its work (ring push, release), issues a `SeqCst`
//!   fence and reads `sleepers`; only if it is non-zero does it bump `seq` and
//!   call `FUTEX_WAKE`.
//!
//! The two fences order "publish work" against "announce sleep": either the
//! sleeper's re-check sees the work, or the waker sees the sleeper and bumps
//! `seq`, which makes a `FUTEX_WAIT` that was about to start return at once.
//! So no wake-up is lost, and a waker pays one fence and one load when nobody
//! sleeps. Every wait also has a timeout, so a sleeper re-checks liveness.

use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::Duration;

/// Waits while `*word == expected`, for at most `timeout`. Returns on a wake,
/// a value change, a timeout or a signal; the caller re-checks its condition.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned 4-byte atomic for the duration of
    // the call (a reference); `ts_ptr` is null or points at `ts`, alive until
    // the call returns. FUTEX_WAIT only reads both.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `n` waiters on `word`.
pub fn wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a valid aligned atomic; FUTEX_WAKE does not access
    // the memory, it only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// A sequence word and a sleeper count, used as described in the module docs.
#[repr(C, align(64))]
pub struct Parking {
    seq: AtomicU32,
    sleepers: AtomicU32,
    _pad: [u8; 56],
}

const _: () = assert!(std::mem::size_of::<Parking>() == 64);

impl Parking {
    /// A parking spot with no sleeper.
    pub const fn new() -> Self {
        Parking {
            seq: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            _pad: [0; 56],
        }
    }

    /// Waker side: call after publishing work.
    #[inline]
    pub fn notify(&self, n: i32) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.seq.fetch_add(1, Ordering::SeqCst);
            wake(&self.seq, n);
        }
    }

    /// Wakes every sleeper unconditionally (shutdown, death).
    pub fn notify_all(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        wake(&self.seq, i32::MAX);
    }

    /// Sleeper side: sleeps for at most `timeout` unless `ready()` is true
    /// after announcing the sleep. Returns `ready()`'s last answer.
    pub fn sleep_unless(&self, timeout: Duration, ready: impl Fn() -> bool) -> bool {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let seq = self.seq.load(Ordering::SeqCst);
        let r = ready();
        if !r {
            wait(&self.seq, seq, Some(timeout));
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

impl Default for Parking {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    #[test]
    fn sleeper_wakes_on_notify_and_times_out_otherwise() {
        let p = Arc::new(Parking::new());
        let flag = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        assert!(!p.sleep_unless(Duration::from_millis(50), || false));
        assert!(t0.elapsed() >= Duration::from_millis(40));

        let (p2, f2) = (p.clone(), flag.clone());
        let h = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !f2.load(Ordering::Acquire) {
                p2.sleep_unless(Duration::from_secs(10), || f2.load(Ordering::Acquire));
            }
            t0.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        flag.store(true, Ordering::Release);
        p.notify(1);
        assert!(h.join().unwrap() < Duration::from_secs(5));
    }
}
