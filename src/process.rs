//! Facts about processes: whether one is alive, and whether this process is
//! a `fork` of the one that made some object.
//!
//! An [`crate::Entry`] (and a C `al_entry` handle) is a claim on a slot of
//! the shared region. After `fork` the child holds a byte-for-byte copy of
//! that claim, but the slot is still the parent's: a release from the child
//! must not hand the parent's buffer to someone else. Objects record the
//! [`fork_epoch`] they were made in and refuse to act in another one.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Incremented in the child of every `fork` (by a `pthread_atfork` handler),
/// so a copy of a process-local object can tell it was inherited.
static FORK_EPOCH: AtomicU64 = AtomicU64::new(0);
/// 0: handler not registered; 1: a thread is registering it; 2: done.
static REGISTERED: AtomicU8 = AtomicU8::new(0);

extern "C" fn in_child() {
    // Async-signal-safe: one atomic add, no allocation, no lock.
    FORK_EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// The current fork epoch: equal in a process and its threads, different in
/// every child forked after the handler was registered (on the first call;
/// `Region::create` and `attach` make that call, so it happens before any
/// loader or entry exists). Costs one atomic load after that.
pub fn fork_epoch() -> u64 {
    if REGISTERED.load(Ordering::Acquire) != 2 {
        register_fork_handler();
    }
    FORK_EPOCH.load(Ordering::Relaxed)
}

/// Registers `in_child` once. Never waits: not on a `Once`, whose state a
/// child forked while another thread was inside it inherits as "running"
/// forever (a deadlock seen in the tests, where many threads fork). A
/// thread that finds the registration under way goes on without it; so does
/// a child forked in the middle of it.
#[cold]
fn register_fork_handler() {
    if REGISTERED
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    // SAFETY: `in_child` is an `extern "C" fn()` that stays valid for the
    // life of the process and only touches an atomic, which is allowed in a
    // child of a multi-threaded fork.
    let r = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    // pthread_atfork fails only with ENOMEM; without the handler a forked
    // child would look like its parent, so say so once.
    if r != 0 {
        log_line(format_args!(
            "pthread_atfork failed ({r}); entries inherited across fork are not detected"
        ));
    }
    REGISTERED.store(2, Ordering::Release);
}

/// CLOCK_MONOTONIC in nanoseconds: the clock entries are stamped with, and
/// one all processes of the machine share.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes one line to standard error with a single `write(2)`, taking no
/// lock: safe in a forked loader process, where `eprintln!` could block on
/// the stderr lock that another thread of the parent held at the fork.
pub(crate) fn log_line(msg: std::fmt::Arguments<'_>) {
    let mut line = format!("asyncloader: {msg}");
    line.push('\n');
    // SAFETY: writes `line.len()` bytes from a live buffer to fd 2; a short
    // or failed write of a diagnostic is ignored.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// `log!(...)`: [`log_line`] with `format!` arguments.
macro_rules! log {
    ($($t:tt)*) => { $crate::process::log_line(format_args!($($t)*)) };
}
pub(crate) use log;

/// True while process `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // Signal 0 only checks for existence (EPERM: it exists, not ours).
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        == Err(nix::errno::Errno::ESRCH)
    {
        return false;
    }
    // A killed child that its parent has not reaped yet still answers kill(0).
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let after = s.iter().rposition(|&b| b == b')').map(|i| i + 2);
            !matches!(after.and_then(|i| s.get(i)), Some(b'Z') | Some(b'X'))
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_moves_the_epoch_in_the_child_only() {
        let before = fork_epoch();
        // SAFETY: the child only reads an atomic and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if fork_epoch() != before { 0 } else { 1 };
            // SAFETY: ends the child without running the test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(fork_epoch(), before);
    }

    /// A child forked while another thread was registering the handler
    /// inherits "registering" forever: fork_epoch must not wait for it (it
    /// used a `Once`, and such a child hung in its first `try_get`).
    #[test]
    fn fork_epoch_never_waits_for_a_registration_under_way() {
        fork_epoch();
        // SAFETY: the child only touches atomics and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            REGISTERED.store(1, Ordering::Release); // as if caught mid-way
            let _ = fork_epoch();
            // SAFETY: ends the child without running the test harness.
            unsafe { libc::_exit(0) };
        }
        let t0 = std::time::Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: polls our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
                break;
            }
            if t0.elapsed() > std::time::Duration::from_secs(5) {
                // SAFETY: our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("fork_epoch waited for a registration under way");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn liveness() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-1));
    }
}
