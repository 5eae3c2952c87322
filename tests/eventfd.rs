//! The completion eventfd (`Worker::completion_fd`): readable when entries
//! are ready, no lost wake-up under races, no busy loop when idle, readable
//! for good once the loader stops or dies; threads mode, a forked loader
//! process and a worker attached by name.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use asyncloader::{Config, ErrorKind, Loader, Worker};
use common::{Mode, Running, check_entry, make_files, poll_in, read_fd};

fn cfg(n_workers: u32, qd: u32) -> Config {
    Config {
        n_workers,
        queue_depth: qd,
        loader_threads: 2,
        ..Config::default()
    }
}

/// Loads every path through `w`, waiting only with poll(2) on the fd;
/// fails on a poll that times out while requests are outstanding.
fn load_via_fd(w: &Worker, paths: &[std::path::PathBuf]) {
    let fd = w.completion_fd().unwrap();
    let (mut next, mut got) = (0, 0);
    while got < paths.len() {
        while next < paths.len() && w.request(&paths[next]).is_ok() {
            next += 1;
        }
        assert!(
            poll_in(fd, 10_000),
            "lost wake-up: {got} of {next} delivered"
        );
        read_fd(fd);
        while let Some(e) = w.try_get() {
            check_entry(&e);
            got += 1;
        }
    }
}

#[test]
fn fd_signals_completions_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(
        dir.path(),
        &(0..300).map(|i| 1 + i * 37).collect::<Vec<_>>(),
    );
    for mode in [Mode::Threads, Mode::Process] {
        let r = Running::new(cfg(2, 16), mode);
        load_via_fd(&r.worker(0), &paths);
        // Attached by name: another mapping of the region, same futexes.
        let a = Loader::attach(r.loader.name()).unwrap();
        load_via_fd(&a.worker(1).unwrap(), &paths);
        r.stop();
    }
}

/// One thread requests (random pauses) while another waits only in
/// poll(2): every completion is signalled, none is lost.
#[test]
fn no_lost_wakeup_under_races() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Arc::new(make_files(dir.path(), &[100, 5000, 1, 70_000, 0, 3]));
    let r = Running::new(cfg(1, 8), Mode::Threads);
    let w = r.worker(0);
    let fd = w.completion_fd().unwrap();
    const N: usize = 20_000;
    let done = Arc::new(AtomicBool::new(false));
    let requested = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (w, paths, done, requested) =
            (w.clone(), paths.clone(), done.clone(), requested.clone());
        std::thread::spawn(move || {
            let mut rng = common::Rng::new(7);
            let mut i = 0;
            while i < N && !done.load(Ordering::Relaxed) {
                match w.request(&paths[i % paths.len()]) {
                    Ok(()) => {
                        i += 1;
                        requested.store(i, Ordering::Release);
                    }
                    Err(e) if e.kind() == ErrorKind::QueueFull => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
                match rng.below(16) {
                    0 => std::thread::sleep(Duration::from_micros(rng.below(200))),
                    1 => std::thread::yield_now(),
                    _ => {}
                }
            }
        })
    };
    let mut got = 0;
    let mut rng = common::Rng::new(11);
    let t0 = Instant::now();
    while got < N {
        if !poll_in(fd, 10_000) {
            done.store(true, Ordering::Relaxed);
            panic!(
                "lost wake-up: {got} delivered, {} requested",
                requested.load(Ordering::Acquire)
            );
        }
        read_fd(fd);
        // Sometimes stop before the ring is empty: readable again later.
        let take = if rng.below(8) == 0 { 1 } else { usize::MAX };
        let mut n = 0;
        while n < take {
            let Some(e) = w.try_get() else { break };
            check_entry(&e);
            got += 1;
            n += 1;
        }
    }
    producer.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(60));
    r.stop();
}

/// Idle: not readable, and the notifier sleeps (the process uses almost
/// no CPU). In a forked child, so that other tests' threads do not count.
#[test]
fn idle_fd_is_quiet_and_costs_no_cpu() {
    assert!(common::child_ok(common::in_child(idle_fd_check)));
}

fn idle_fd_check() {
    let r = Running::new(cfg(1, 4), Mode::Threads);
    let w = r.worker(0);
    let fd = w.completion_fd().unwrap();
    w.request("/proc/self/stat").unwrap();
    assert!(poll_in(fd, 10_000));
    drop(w.try_get().unwrap());
    std::thread::sleep(Duration::from_millis(50));
    while read_fd(fd) {}
    assert!(!poll_in(fd, 200), "readable with no completion");
    let cpu = || {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes one rusage.
        let ru = unsafe {
            libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
            ru.assume_init()
        };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    let c0 = cpu();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu() - c0;
    assert!(used < 0.1, "idle process used {used:.3} s of CPU in 1 s");
    r.stop();
}

#[test]
fn shutdown_makes_the_fd_readable_for_good() {
    let r = Running::new(cfg(1, 4), Mode::Threads);
    let w = r.worker(0);
    let fd = w.completion_fd().unwrap();
    w.request("/proc/self/stat").unwrap();
    assert!(poll_in(fd, 10_000));
    let l = r.loader.clone();
    let waiter = std::thread::spawn(move || {
        // Take the entry, then wait on the fd again: shutdown must wake it.
        let e = w.try_get().unwrap();
        drop(e);
        while read_fd(fd) {}
        let t0 = Instant::now();
        assert!(poll_in(fd, 10_000), "shutdown did not wake the poll");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(read_fd(fd) && poll_in(fd, 0), "stays readable");
        assert!(w.try_get().is_none());
        w.wait_get_timeout(Duration::ZERO).unwrap_err().kind()
    });
    std::thread::sleep(Duration::from_millis(100));
    l.shutdown().unwrap();
    assert_eq!(waiter.join().unwrap(), ErrorKind::Shutdown);
}

#[test]
fn loader_death_makes_the_fd_readable() {
    let l = Loader::new(cfg(1, 4)).unwrap();
    l.spawn().unwrap();
    let w = l.worker(0).unwrap();
    let fd = w.completion_fd().unwrap();
    w.request("/proc/self/stat").unwrap();
    assert!(poll_in(fd, 10_000));
    drop(w.try_get().unwrap());
    while read_fd(fd) {}
    // SAFETY: kill takes no pointer; the pid is our forked loader.
    assert_eq!(unsafe { libc::kill(l.loader_pid(), libc::SIGKILL) }, 0);
    let t0 = Instant::now();
    assert!(poll_in(fd, 10_000), "loader death did not wake the poll");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(
        w.wait_get_timeout(Duration::ZERO).unwrap_err().kind(),
        ErrorKind::LoaderDead
    );
}

/// Dropping the last clone stops the notifier thread (and closes the fd).
/// In a forked child, so that other tests' threads do not count.
#[test]
fn dropping_the_worker_stops_the_notifier() {
    assert!(common::child_ok(common::in_child(drop_check)));
}

fn drop_check() {
    let r = Running::new(cfg(1, 4), Mode::Threads);
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let before = threads();
    let w = r.worker(0);
    let fd = w.completion_fd().unwrap();
    assert_eq!(w.clone().completion_fd().unwrap(), fd, "clones share it");
    assert_eq!(threads(), before + 1);
    drop(w);
    assert_eq!(threads(), before, "notifier thread joined");
    // SAFETY: fcntl on a closed descriptor only reports EBADF.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_GETFD) }, -1, "fd closed");
    r.stop();
}
