//! Facts about processes: whether one is alive, and whether this process is
//! a `fork` of the one that made some object.
//!
//! An [`crate::Entry`] (and a C `al_entry` handle) is a claim on a slot of
//! the shared region. After `fork` the child holds a byte-for-byte copy of
//! that claim, but the slot is still the parent's: a release from the child
//! must not hand the parent's buffer to someone else. Objects record the
//! [`fork_epoch`] they were made in and refuse to act in another one.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

/// Incremented in the child of every `fork` (by a `pthread_atfork` handler),
/// so a copy of a process-local object can tell it was inherited.
static FORK_EPOCH: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

extern "C" fn in_child() {
    // Async-signal-safe: one atomic add, no allocation, no lock.
    FORK_EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// The current fork epoch: equal in a process and its threads, different in
/// every child forked after the first call (the handler is installed then;
/// a fork before any object exists needs no tracking). Costs one atomic load
/// after the first call.
pub fn fork_epoch() -> u64 {
    REGISTER.call_once(|| {
        // SAFETY: `in_child` is an `extern "C" fn()` that stays valid for
        // the life of the process and only touches an atomic, which is
        // allowed in a child of a multi-threaded fork.
        let r = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        // pthread_atfork fails only with ENOMEM; without the handler a
        // forked child would look like its parent, so say so loudly once.
        if r != 0 {
            log!("pthread_atfork failed ({r}); entries inherited across fork are not detected");
        }
    });
    FORK_EPOCH.load(Ordering::Relaxed)
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

    #[test]
    fn liveness() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-1));
    }
}
