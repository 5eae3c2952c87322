//! Process and resource lifecycle: idle CPU, shutdown leaves nothing behind,
//! a spawned loader never outlives its parent.

mod common;

use std::io::Read;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use asyncloader::{Config, Loader};
use common::*;

fn cpu_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime); `after` starts at field 3.
    Some(f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?)
}

#[test]
fn idle_loader_uses_almost_no_cpu() {
    let l = Loader::new(Config {
        n_workers: 4,
        loader_threads: 2,
        ..Config::default()
    })
    .unwrap();
    l.spawn().unwrap();
    let w = l.worker(0).unwrap();
    w.request("/proc/self/stat").unwrap();
    drop(w.wait_get_timeout(Duration::from_secs(10)).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let pid = l.loader_pid();
    let t0 = cpu_ticks(pid).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid).unwrap() - t0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    // Under 1% is the target; allow scheduler noise up to 3% of one core.
    assert!(
        used * 100 <= 3 * hz,
        "idle loader used {used} ticks of {hz} per second"
    );
    l.shutdown().unwrap();
}

fn count_dir(p: &str) -> usize {
    std::fs::read_dir(p).unwrap().count()
}

/// Runs a loader in `mode` in a forked child, loads three files, shuts it
/// down, and checks that no descriptor, thread or (for a loader process)
/// process is left behind.
fn shutdown_leaves_nothing_behind(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[1, 5000, 100_000]);
    // In a forked child the process has one thread and only our descriptors,
    // so the counts are not disturbed by the other tests running in parallel.
    let pid = in_child(move || {
        let fds0 = count_dir("/proc/self/fd");
        let tasks0 = count_dir("/proc/self/task");
        let r = Running::new(
            Config {
                n_workers: 2,
                queue_depth: 4,
                loader_threads: 2,
                max_file_size: 1 << 20,
                ..Config::default()
            },
            mode,
        );
        assert_eq!(load_all(&r.worker(1), &paths), 3);
        let loader_pid = r.loader.loader_pid();
        r.stop();
        if mode == Mode::Process {
            // Reaped by shutdown: no zombie left.
            // SAFETY: probing a pid.
            let alive = unsafe { libc::kill(loader_pid, 0) } == 0;
            assert!(!alive, "loader process {loader_pid} still exists");
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(count_dir("/proc/self/fd"), fds0, "descriptors leaked");
        assert_eq!(count_dir("/proc/self/task"), tasks0, "threads left behind");
    });
    assert!(child_ok(pid), "{mode:?}");
}

#[test]
fn shutdown_leaves_no_thread_or_descriptor_with_loader_threads() {
    shutdown_leaves_nothing_behind(Mode::Threads);
}

#[test]
fn shutdown_leaves_no_thread_descriptor_or_process_with_a_loader_process() {
    shutdown_leaves_nothing_behind(Mode::Process);
}

#[test]
fn shutdown_leaves_no_thread_or_descriptor_after_become_loader() {
    shutdown_leaves_nothing_behind(Mode::Become);
}

#[test]
fn spawned_loader_exits_when_its_parent_dies() {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let wfd = fds[1];
    let pid = in_child(move || {
        let l = Loader::new(Config {
            loader_threads: 1,
            ..Config::default()
        })
        .unwrap();
        l.spawn().unwrap();
        let lp = l.loader_pid();
        // SAFETY: writing 4 bytes from a local to our pipe.
        unsafe { libc::write(wfd, (&raw const lp).cast(), 4) };
        // Die without shutting down.
        // SAFETY: immediate exit of the child.
        unsafe { libc::_exit(0) };
    });
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(wfd) };
    // SAFETY: fds[0] is the read end we own.
    let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut b = [0u8; 4];
    r.read_exact(&mut b).unwrap();
    let loader_pid = i32::from_ne_bytes(b);
    assert!(child_ok(pid));
    let t0 = Instant::now();
    while asyncloader::process::pid_alive(loader_pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "orphaned loader {loader_pid} is still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes `io_uring_setup` fail with `errno` in this (forked, single-threaded)
/// process, as a container's seccomp profile does.
fn block_io_uring(errno: u32) {
    install_seccomp(&io_uring_setup_filter(errno)).unwrap();
}

/// Runs `f` in a forked child in which `io_uring_setup` fails with `errno`
/// and `ASYNCLOADER_BACKEND` is unset; asserts the child succeeded.
fn with_io_uring_blocked(errno: i32, f: impl FnOnce()) {
    let pid = in_child(move || {
        block_io_uring(errno as u32);
        // SAFETY: the forked child has a single thread.
        unsafe { std::env::remove_var("ASYNCLOADER_BACKEND") };
        f();
    });
    assert!(child_ok(pid), "io_uring_setup failing with errno {errno}");
}

/// The default backend falls back to the thread pool and loads every file.
fn falls_back_to_threads(errno: i32) {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[0, 1, 4096, 100_000]);
    with_io_uring_blocked(errno, move || {
        let l = Loader::new(Config {
            loader_threads: 2,
            max_file_size: 1 << 20,
            ..Config::default()
        })
        .unwrap();
        l.start().unwrap();
        assert_eq!(load_all(&l.worker(0).unwrap(), &paths), 4);
        assert_eq!(l.stats().backend, "threads");
        l.shutdown().unwrap();
    });
}

/// Asking for io_uring explicitly is an error, not a fallback.
fn explicit_io_uring_is_loader_dead(errno: i32) {
    with_io_uring_blocked(errno, || {
        let l = Loader::new(Config {
            backend: asyncloader::BackendKind::IoUring,
            loader_threads: 1,
            ..Config::default()
        })
        .unwrap();
        l.start().unwrap();
        let e = l
            .worker(0)
            .unwrap()
            .wait_get_timeout(Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(e.kind(), asyncloader::ErrorKind::LoaderDead);
        l.shutdown().unwrap();
    });
}

#[test]
fn falls_back_to_threads_when_io_uring_setup_is_enosys() {
    falls_back_to_threads(libc::ENOSYS);
}

#[test]
fn falls_back_to_threads_when_io_uring_setup_is_eperm() {
    falls_back_to_threads(libc::EPERM);
}

#[test]
fn explicit_io_uring_backend_is_loader_dead_when_setup_is_enosys() {
    explicit_io_uring_is_loader_dead(libc::ENOSYS);
}

#[test]
fn explicit_io_uring_backend_is_loader_dead_when_setup_is_eperm() {
    explicit_io_uring_is_loader_dead(libc::EPERM);
}
