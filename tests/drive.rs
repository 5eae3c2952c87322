//! Workers that drive their own loads (`Drive::Worker`): no loader thread
//! runs, each worker's calls submit and reap on an io_uring of its own (one
//! driver per worker and process). Every loaded byte is compared with the
//! file on disk; every wait has a timeout.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asyncloader::{BackendKind, Config, Drive, Entry, ErrorKind, Loader, Worker};
use common::*;

/// Largest file of these tests.
const MAX: u64 = 64 * 1024;
/// No single wait of these tests may take longer.
const WAIT: Duration = Duration::from_secs(10);

fn wcfg(n_workers: u32, queue_depth: u32) -> Config {
    Config {
        n_workers,
        queue_depth,
        max_file_size: MAX,
        drive: Drive::Worker,
        ..Config::default()
    }
}

/// A loader with the workers driving, started in this process.
fn started(cfg: Config) -> Loader {
    let l = Loader::new(cfg).unwrap();
    l.start().unwrap();
    assert_eq!(l.stats().drive, Drive::Worker);
    l
}

/// Page and size-limit boundaries first, then random sizes up to `MAX`
/// (mostly small, as data sets are).
fn varied_sizes(n: usize, seed: u64) -> Vec<usize> {
    let mut v = vec![
        0,
        1,
        4095,
        4096,
        4097,
        8191,
        8192,
        8193,
        MAX as usize - 1,
        MAX as usize,
    ];
    let mut rng = Rng::new(seed);
    while v.len() < n {
        let s = match rng.below(4) {
            0 => rng.below(MAX + 1),
            _ => rng.below(12 * 1024),
        };
        v.push(s as usize);
    }
    v.truncate(n);
    v
}

/// The files as they are on disk, read once.
fn on_disk(paths: &[PathBuf]) -> HashMap<PathBuf, Vec<u8>> {
    paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect()
}

/// Asserts that `e` loaded exactly the bytes `disk` holds for its path.
fn check_with(disk: &HashMap<PathBuf, Vec<u8>>, e: &Entry) {
    assert_eq!(e.error(), 0, "{:?} failed to load", e.path());
    let want = disk
        .get(e.path())
        .unwrap_or_else(|| panic!("{:?}: a path nobody requested", e.path()));
    assert_eq!(e.len(), want.len(), "{:?}: size", e.path());
    assert!(e.data() == &want[..], "{:?}: bytes differ", e.path());
}

/// Loads `order` through `w` keeping up to `window` requests outstanding,
/// taking entries with `try_get` (every third round) or `wait_get_timeout`;
/// checks every entry against `disk`. Returns the entries delivered.
fn load_window(
    w: &Worker,
    order: &[PathBuf],
    window: usize,
    disk: &HashMap<PathBuf, Vec<u8>>,
) -> usize {
    let (mut next, mut got, mut round) = (0, 0, 0u64);
    let t0 = Instant::now();
    while got < order.len() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "worker {}: {got} of {} delivered",
            w.id(),
            order.len()
        );
        while next < order.len() && next - got < window {
            match w.request(&order[next]) {
                Ok(()) => next += 1,
                Err(e) if e.kind() == ErrorKind::QueueFull => break,
                Err(e) => panic!("request: {e}"),
            }
        }
        round += 1;
        if round % 3 == 0 {
            while let Some(e) = w.try_get() {
                check_with(disk, &e);
                got += 1;
            }
        } else {
            let e = w.wait_get_timeout(WAIT).unwrap();
            check_with(disk, &e);
            e.release();
            got += 1;
        }
    }
    assert!(w.try_get().is_none(), "worker {}: delivered twice", w.id());
    got
}

/// One thread per worker id, thousands of files of every size class.
#[test]
fn many_threads_each_with_its_own_worker_load_every_byte() {
    const WORKERS: u32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &varied_sizes(2000, 1));
    let disk = Arc::new(on_disk(&paths));
    let paths = Arc::new(paths);
    let l = Arc::new(started(Config {
        dispatch_n: 4,
        ..wcfg(WORKERS, 32)
    }));
    let threads: Vec<_> = (0..WORKERS)
        .map(|id| {
            let (l, paths, disk) = (l.clone(), paths.clone(), disk.clone());
            std::thread::spawn(move || {
                let w = l.worker(id).unwrap();
                // Each thread its own order and window.
                let mut order: Vec<PathBuf> = paths.to_vec();
                order.rotate_left(id as usize * 500);
                if id % 2 == 1 {
                    order.reverse();
                }
                let window = [32, 7, 1, 19][id as usize];
                load_window(&w, &order, window, &disk)
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, paths.len() * WORKERS as usize);
    let st = l.stats();
    assert_eq!(st.drive, Drive::Worker);
    assert_eq!(st.loader_threads, 0);
    assert_eq!(st.loader_threads_alive, 0);
    assert_eq!(st.backend, expected_backend());
    assert_eq!(st.requests, total as u64);
    assert_eq!(st.completions, st.requests);
    assert_eq!(st.errors, 0);
    let bytes: u64 = disk.values().map(|d| d.len() as u64).sum();
    assert_eq!(st.bytes, bytes * WORKERS as u64);
    // The process's own loader_pid: nothing was forked.
    assert_eq!(l.loader_pid(), std::process::id() as i32);
    l.shutdown().unwrap();
}

/// Threads that share one worker (clones of one `Worker` and separate
/// handles of the same id) request and take concurrently: whoever waits
/// drives, and each file comes out exactly once.
#[test]
fn threads_sharing_one_worker_get_each_file_exactly_once() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    // Distinct paths, so that a delivery names its request.
    let paths = make_files(dir.path(), &varied_sizes(THREADS * PER_THREAD, 2));
    let disk = Arc::new(on_disk(&paths));
    let l = Arc::new(started(Config {
        dispatch_n: 3,
        ..wcfg(2, 16)
    }));
    let w = l.worker(0).unwrap();
    let handles: Vec<Worker> = vec![w.clone(), w, l.worker(0).unwrap(), l.worker(0).unwrap()];
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let delivered = Arc::new(AtomicUsize::new(0));
    let total = THREADS * PER_THREAD;
    let threads: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(t, w)| {
            let mine = paths[t * PER_THREAD..(t + 1) * PER_THREAD].to_vec();
            let (disk, seen, delivered) = (disk.clone(), seen.clone(), delivered.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(t as u64 + 10);
                let mut next = 0;
                let t0 = Instant::now();
                while delivered.load(Ordering::Acquire) < total {
                    assert!(
                        t0.elapsed() < Duration::from_secs(20),
                        "thread {t}: {} of {total} delivered, {next} of mine requested",
                        delivered.load(Ordering::Acquire)
                    );
                    // A few requests (the queue is shared: QueueFull is
                    // normal), then take whatever is ready, anyone's.
                    for _ in 0..rng.below(6) {
                        if next == mine.len() {
                            break;
                        }
                        match w.request(&mine[next]) {
                            Ok(()) => next += 1,
                            Err(e) if e.kind() == ErrorKind::QueueFull => break,
                            Err(e) => panic!("request: {e}"),
                        }
                    }
                    let e = if rng.below(2) == 0 {
                        w.try_get()
                    } else {
                        match w.wait_get_timeout(Duration::from_millis(50)) {
                            Ok(e) => Some(e),
                            Err(e) if e.kind() == ErrorKind::TimedOut => None,
                            Err(e) => panic!("wait_get: {e}"),
                        }
                    };
                    if let Some(e) = e {
                        check_with(&disk, &e);
                        let fresh = seen.lock().unwrap().insert(e.path().to_path_buf());
                        assert!(fresh, "{:?} delivered twice", e.path());
                        delivered.fetch_add(1, Ordering::AcqRel);
                    }
                }
                next
            })
        })
        .collect();
    let requested: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(requested, total);
    assert_eq!(seen.lock().unwrap().len(), total);
    let w = l.worker(0).unwrap();
    assert!(w.try_get().is_none(), "an extra delivery");
    assert_eq!(w.outstanding(), 0);
    let st = l.stats();
    assert_eq!((st.requests, st.completions), (total as u64, total as u64));
    l.shutdown().unwrap();
}

/// An order-independent digest of (path, bytes) pairs.
fn digest(path: &Path, data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in path.as_os_str().as_bytes().iter().chain(data) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ data.len() as u64
}

/// A pipe: (read end, write end).
fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

/// Writes `count` and `sum` to pipe end `fd` (from a forked child).
fn report(fd: i32, count: u64, sum: u64) {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&count.to_ne_bytes());
    b[8..].copy_from_slice(&sum.to_ne_bytes());
    // SAFETY: writes 16 bytes from a local buffer to our pipe.
    assert_eq!(unsafe { libc::write(fd, b.as_ptr().cast(), 16) }, 16);
}

/// Reads a child's `report` from read end `fd` (taking the descriptor);
/// None when the child wrote nothing.
fn read_report(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: `fd` is a read end we own; the File closes it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut b = [0u8; 16];
    f.read_exact(&mut b).ok()?;
    Some((
        u64::from_ne_bytes(b[..8].try_into().unwrap()),
        u64::from_ne_bytes(b[8..].try_into().unwrap()),
    ))
}

/// In a forked child: loads `paths` through worker `id` (each byte checked
/// against the disk), reports count and digest through a pipe. Returns the
/// child's pid and the pipe's read end.
fn child_loads(l: &Arc<Loader>, id: u32, paths: Vec<PathBuf>) -> (libc::pid_t, i32) {
    let (rfd, wfd) = pipe();
    let l = l.clone();
    let pid = in_child(move || {
        // SAFETY: the child's copy of the read end.
        unsafe { libc::close(rfd) };
        let w = l.worker(id).unwrap();
        let (mut next, mut count, mut sum) = (0, 0u64, 0u64);
        while (count as usize) < paths.len() {
            while next < paths.len() && w.request(&paths[next]).is_ok() {
                next += 1;
            }
            let e = w.wait_get_timeout(WAIT).unwrap();
            check_entry(&e);
            sum = sum.wrapping_add(digest(e.path(), e.data()));
            count += 1;
        }
        assert!(w.try_get().is_none());
        report(wfd, count, sum);
    });
    // SAFETY: the parent's copy of the write end.
    unsafe { libc::close(wfd) };
    (pid, rfd)
}

fn expected_digest(paths: &[PathBuf]) -> u64 {
    paths.iter().fold(0u64, |s, p| {
        s.wrapping_add(digest(p, &std::fs::read(p).unwrap()))
    })
}

/// Worker processes forked after `start`, each with its own worker id,
/// each making its own drivers.
#[test]
fn forked_worker_processes_load_through_their_own_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &varied_sizes(300, 3));
    let want = expected_digest(&paths);
    let l = Arc::new(started(Config {
        dispatch_n: 4,
        ..wcfg(4, 16)
    }));
    let children: Vec<_> = (1..4)
        .map(|id| {
            let mut order = paths.clone();
            order.rotate_left(id as usize * 70);
            (id, child_loads(&l, id, order))
        })
        .collect();
    for (id, (pid, rfd)) in children {
        let got = read_report(rfd);
        assert!(child_ok(pid), "worker process {id} failed");
        assert_eq!(got, Some((paths.len() as u64, want)), "worker process {id}");
    }
    let st = l.stats();
    assert_eq!(st.completions, 3 * paths.len() as u64);
    assert_eq!(st.errors, 0);
    l.shutdown().unwrap();
}

/// The parent drove worker 0 (its driver and io_uring exist in the
/// parent's copy of the region): a child forked then makes its own, loads
/// correctly, and the parent's driver still works afterwards.
#[test]
fn forked_child_uses_a_worker_the_parent_drove() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &varied_sizes(200, 4));
    let want = expected_digest(&paths);
    let disk = on_disk(&paths);
    let l = Arc::new(started(Config {
        dispatch_n: 2,
        ..wcfg(2, 8)
    }));
    let w = l.worker(0).unwrap();
    assert_eq!(load_window(&w, &paths, 8, &disk), paths.len());
    for round in 0..3 {
        let (pid, rfd) = child_loads(&l, 0, paths.clone());
        let got = read_report(rfd);
        assert!(child_ok(pid), "round {round}: child failed");
        assert_eq!(got, Some((paths.len() as u64, want)), "round {round}");
        // The parent's driver is untouched by the child's.
        assert_eq!(load_window(&w, &paths, 5, &disk), paths.len());
    }
    let st = l.stats();
    assert_eq!(st.completions, 7 * paths.len() as u64);
    assert_eq!(st.completions, st.requests);
    l.shutdown().unwrap();
}

/// A child forked while a thread of the parent may be inside worker 0's
/// driver (a thread that calls `try_get` without pause holds the driver's
/// lock most of the time) takes the lock over: the thread holding it does
/// not exist in the child. The child starts only after the parent's thread
/// stopped, so the two never use worker 0 at the same time.
#[test]
fn forked_child_takes_over_a_driver_held_at_the_fork() {
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &varied_sizes(40, 9));
    let want = expected_digest(&paths);
    let disk = on_disk(&paths);
    let l = Arc::new(started(Config {
        dispatch_n: 4,
        ..wcfg(1, 8)
    }));
    let w = l.worker(0).unwrap();
    // The parent's driver exists (made by a load).
    assert_eq!(load_window(&w, &paths, 8, &disk), paths.len());
    for round in 0..20 {
        let stop = Arc::new(AtomicBool::new(false));
        let spinner = {
            let (w, stop) = (w.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert!(w.try_get().is_none(), "nothing was requested");
                }
            })
        };
        std::thread::sleep(Duration::from_millis(2));
        let (go_r, go_w) = pipe();
        let (rfd, wfd) = pipe();
        let (lc, p) = (l.clone(), paths.clone());
        let pid = in_child(move || {
            let mut b = [0u8; 1];
            // SAFETY: reads one byte from our pipe into a local.
            assert_eq!(unsafe { libc::read(go_r, b.as_mut_ptr().cast(), 1) }, 1);
            let w = lc.worker(0).unwrap();
            let (mut next, mut count, mut sum) = (0, 0u64, 0u64);
            while (count as usize) < p.len() {
                while next < p.len() && w.request(&p[next]).is_ok() {
                    next += 1;
                }
                let e = w.wait_get_timeout(Duration::from_secs(5)).unwrap();
                check_entry(&e);
                sum = sum.wrapping_add(digest(e.path(), e.data()));
                count += 1;
            }
            report(wfd, count, sum);
        });
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        // SAFETY: writes one byte to our pipe, then closes our ends.
        unsafe {
            assert_eq!(libc::write(go_w, [1u8].as_ptr().cast(), 1), 1);
            libc::close(go_w);
            libc::close(go_r);
            libc::close(wfd);
        }
        let got = read_report(rfd);
        assert!(child_ok(pid), "round {round}: child failed");
        assert_eq!(got, Some((paths.len() as u64, want)), "round {round}");
    }
    // And the parent's driver still works.
    assert_eq!(load_window(&w, &paths, 8, &disk), paths.len());
    l.shutdown().unwrap();
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// Failures come back through the driver with the loader threads'
/// errnos, on both backends, one at a time and in one batch.
#[test]
fn errors_through_the_driver_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let too_big = dir.path().join("too_big");
    std::fs::write(&too_big, content(9, MAX as usize + 1)).unwrap();
    let good = make_files(dir.path(), &[0, 1, 4097, MAX as usize]);
    let cases: Vec<(PathBuf, i32)> = vec![
        (dir.path().join("missing"), libc::ENOENT),
        (sub, libc::EISDIR),
        (fifo.clone(), libc::EINVAL),
        (too_big, libc::EFBIG),
    ]
    .into_iter()
    .chain(good.iter().map(|p| (p.clone(), 0)))
    .collect();
    let want_err: HashMap<&Path, i32> = cases.iter().map(|(p, e)| (p.as_path(), *e)).collect();
    let check = |e: &Entry, what: &str| {
        let want = want_err[e.path()];
        assert_eq!(e.error(), want, "{what}: {:?}", e.path());
        if want == 0 {
            check_entry(e);
        } else {
            assert!(e.data().is_empty(), "{what}: a failed entry holds no data");
        }
    };
    for kind in [BackendKind::IoUring, BackendKind::Threads] {
        for dispatch_n in [1, 8] {
            let l = started(Config {
                backend: kind,
                dispatch_n,
                ..wcfg(1, 16)
            });
            let w = l.worker(0).unwrap();
            let what = format!("{kind:?} dispatch_n {dispatch_n}");
            // One at a time: the first take the optimistic chain, later ones
            // (after its misses) the statx path.
            for round in 0..4 {
                for (p, _) in &cases {
                    w.request(p).unwrap();
                    let e = w
                        .wait_get_timeout(WAIT)
                        .unwrap_or_else(|e| panic!("{what} round {round} {p:?}: {e}"));
                    check(&e, &what);
                }
            }
            // All in one batch, taken by try_get alone.
            for (p, _) in &cases {
                w.request(p).unwrap();
            }
            let t0 = Instant::now();
            let mut got = HashSet::new();
            while got.len() < cases.len() {
                assert!(t0.elapsed() < WAIT, "{what}: {} of the batch", got.len());
                match w.try_get() {
                    Some(e) => {
                        check(&e, &what);
                        assert!(got.insert(e.path().to_path_buf()), "{what}: twice");
                    }
                    None => std::thread::sleep(Duration::from_micros(200)),
                }
            }
            let st = l.stats();
            let expected = match std::env::var("ASYNCLOADER_BACKEND").as_deref() {
                Ok("threads") => BackendKind::Threads,
                Ok("io_uring") => BackendKind::IoUring,
                _ => kind,
            };
            assert_eq!(st.backend, expected, "{what}");
            assert_eq!(st.completions, 5 * cases.len() as u64, "{what}");
            assert_eq!(st.errors, 5 * 4, "{what}");
            l.shutdown().unwrap();
        }
    }
    // No driver kept the FIFO open: a writer finds no reader.
    let w = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    assert_eq!(
        w.err().and_then(|e| e.raw_os_error()),
        Some(libc::ENXIO),
        "the FIFO is still held open for reading"
    );
}

/// Takes worker `w`'s entries after a shutdown until it says why no more
/// come (which must be `Shutdown`, within 5 s); checks each. Returns how
/// many came.
fn drain_after_shutdown(w: &Worker, disk: &HashMap<PathBuf, Vec<u8>>) -> usize {
    let t0 = Instant::now();
    let mut got = 0;
    let err = loop {
        match w.wait_get_timeout(WAIT) {
            Ok(e) => {
                check_with(disk, &e);
                got += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Shutdown, "worker {}: {err}", w.id());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    got
}

/// Shutdown with files in flight: what was submitted is still delivered
/// (bytes intact), then `Shutdown`; never a hang; later requests refused.
#[test]
fn shutdown_with_files_in_flight_delivers_or_says_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &varied_sizes(36, 5));
    let disk = on_disk(&paths);
    let l = Arc::new(started(Config {
        dispatch_n: 8,
        ..wcfg(3, 40)
    }));
    // Worker 0: 32 submitted by request itself (four batches of
    // dispatch_n), 4 left queued; nothing taken before the shutdown.
    let w0 = l.worker(0).unwrap();
    for p in &paths {
        w0.request(p).unwrap();
    }
    // Worker 1: one batch submitted, two entries taken and kept.
    let w1 = l.worker(1).unwrap();
    for p in &paths[..8] {
        w1.request(p).unwrap();
    }
    let held: Vec<Entry> = (0..2).map(|_| w1.wait_get_timeout(WAIT).unwrap()).collect();
    // Worker 2 waits with nothing requested: shutdown wakes it.
    let idle = {
        let l = l.clone();
        std::thread::spawn(move || {
            let w2 = l.worker(2).unwrap();
            let t0 = Instant::now();
            let e = w2.wait_get_timeout(WAIT).unwrap_err();
            (e.kind(), t0.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    l.shutdown().unwrap();
    let (kind, waited) = idle.join().unwrap();
    assert_eq!(kind, ErrorKind::Shutdown);
    assert!(waited < Duration::from_secs(5), "woken after {waited:?}");
    // Everything submitted before the shutdown is delivered; what was only
    // queued may not be.
    let got0 = drain_after_shutdown(&w0, &disk);
    assert!((32..=36).contains(&got0), "worker 0: {got0} delivered");
    assert_eq!(drain_after_shutdown(&w1, &disk), 6, "worker 1");
    for e in &held {
        check_with(&disk, e);
    }
    for w in [&w0, &w1] {
        assert_eq!(
            w.request(&paths[0]).unwrap_err().kind(),
            ErrorKind::Shutdown
        );
        assert!(w.try_get().is_none());
    }
    drop(held);
}

/// Reclaiming a worker this process drove, with its files requested and
/// never taken: the reclaim reaps them itself, and the worker works again.
#[test]
fn reclaim_a_worker_whose_driver_is_in_this_process() {
    const QD: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(
        dir.path(),
        &[0, 1, 4096, 4097, 9000, 30_000, 65_535, 65_536],
    );
    let disk = on_disk(&paths);
    let l = started(Config {
        dispatch_n: 3,
        ..wcfg(2, QD)
    });
    for round in 0..20 {
        let w = l.worker(1).unwrap();
        for p in &paths {
            w.request(p)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        // Some rounds hold (and forget) a delivered entry too.
        if round % 2 == 1 {
            std::mem::forget(w.wait_get_timeout(WAIT).unwrap());
        }
        drop(w);
        let t0 = Instant::now();
        // SAFETY: the only entry taken was forgotten, never read again.
        let taken = unsafe { l.reclaim_worker(1) }.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(taken, QD, "round {round}");
        let w = l.worker(1).unwrap();
        assert_eq!(w.outstanding(), 0, "round {round}");
        assert!(w.try_get().is_none(), "round {round}: a stale delivery");
        for p in &paths {
            w.request(p).unwrap();
        }
        assert_eq!(
            w.request(&paths[0]).unwrap_err().kind(),
            ErrorKind::QueueFull,
            "round {round}: exactly queue_depth slots"
        );
        let mut seen = HashSet::new();
        for _ in 0..QD {
            let e = w.wait_get_timeout(WAIT).unwrap();
            check_with(&disk, &e);
            assert!(seen.insert(e.path().to_path_buf()), "round {round}: twice");
        }
        assert!(w.try_get().is_none(), "round {round}: an extra delivery");
    }
    l.shutdown().unwrap();
}

/// A worker process that requested (its driver submitted) and exited
/// without releasing anything: after reaping it, the parent reclaims the
/// worker (Ok, not Busy) and uses it.
#[test]
fn reclaim_a_worker_whose_driver_died_with_its_process() {
    const QD: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(
        dir.path(),
        &[65_536, 4097, 0, 1, 12_345, 4096, 50_000, 65_535],
    );
    let disk = on_disk(&paths);
    let l = Arc::new(started(Config {
        dispatch_n: 2,
        ..wcfg(3, QD)
    }));
    for round in 0..5 {
        let lc = l.clone();
        let p = paths.clone();
        let pid = in_child(move || {
            let w = lc.worker(2).unwrap();
            for p in &p {
                w.request(p).unwrap();
            }
            if round % 2 == 0 {
                // Hold one, as a worker that dies in the middle would.
                std::mem::forget(w.wait_get_timeout(WAIT).unwrap());
            }
            // Die without releasing or dropping anything.
            // SAFETY: immediate exit of the child.
            unsafe { libc::_exit(0) };
        });
        assert!(child_ok(pid), "round {round}: child failed");
        let t0 = Instant::now();
        // SAFETY: worker 2's only user (the child) is gone.
        let taken = unsafe { l.reclaim_worker(2) }
            .unwrap_or_else(|e| panic!("round {round}: reclaim: {e}"));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(taken, QD, "round {round}");
        let w = l.worker(2).unwrap();
        assert_eq!(w.outstanding(), 0);
        assert!(w.try_get().is_none(), "round {round}: a stale delivery");
        assert_eq!(load_window(&w, &paths, QD as usize, &disk), paths.len());
        assert_eq!(w.outstanding(), 0);
    }
    l.shutdown().unwrap();
}

/// With an eventfd the notifier thread drives the worker's loads while
/// the program only polls: requests below dispatch_n are loaded too.
#[test]
fn completion_fd_with_the_notifier_driving() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &varied_sizes(500, 8));
    let disk = on_disk(&paths);
    let l = started(Config {
        dispatch_n: 8,
        ..wcfg(1, 16)
    });
    let w = l.worker(0).unwrap();
    let fd = w.completion_fd().unwrap();
    // Fewer than dispatch_n, and no get: only the notifier can submit them.
    for p in &paths[..3] {
        w.request(p).unwrap();
    }
    let t0 = Instant::now();
    let mut got = 0;
    while got < 3 {
        assert!(poll_in(fd, 5000), "nothing signalled: {got} of 3 delivered");
        assert!(t0.elapsed() < Duration::from_secs(5));
        read_fd(fd);
        // Only what is ready: no wait_get, which would drive itself.
        while let Some(e) = w.try_get() {
            check_with(&disk, &e);
            got += 1;
        }
    }
    // Then a stream: request what fits, wait only in poll.
    let t0 = Instant::now();
    let (mut next, mut got) = (3, 3);
    while got < paths.len() {
        while next < paths.len() && w.request(&paths[next]).is_ok() {
            next += 1;
        }
        assert!(poll_in(fd, 5000), "lost wake-up: {got} of {next} delivered");
        read_fd(fd);
        while let Some(e) = w.try_get() {
            check_with(&disk, &e);
            got += 1;
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let st = l.stats();
    assert_eq!(st.completions, paths.len() as u64);
    assert_eq!(st.loader_threads, 0);
    l.shutdown().unwrap();
}

fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Loads one file through worker `id` and checks it.
fn load_one(l: &Loader, id: u32, p: &Path) {
    let w = l.worker(id).unwrap();
    w.request(p).unwrap();
    check_entry(&w.wait_get_timeout(WAIT).unwrap());
}

/// `Drive::Auto` picks the workers when `start` has a worker per core, loader
/// threads with fewer, and always a loader process for `spawn`.
#[test]
fn auto_drive_resolution() {
    if std::env::var_os("ASYNCLOADER_DRIVE").is_some() {
        return; // the override decides, not Auto
    }
    let dir = tempfile::tempdir().unwrap();
    let p = &make_files(dir.path(), &[5000])[0];
    let auto = |n_workers| Config {
        drive: Drive::Auto,
        ..wcfg(n_workers, 4)
    };
    let me = std::process::id() as i32;

    let l = Loader::new(auto(cores())).unwrap();
    assert_eq!(l.stats().drive, Drive::Auto, "before start: the config's");
    l.start().unwrap();
    let st = l.stats();
    assert_eq!(
        st.drive,
        Drive::Worker,
        "{} workers, {} cores",
        cores(),
        cores()
    );
    assert_eq!(st.loader_threads, 0);
    load_one(&l, cores() - 1, p);
    l.shutdown().unwrap();

    if cores() > 1 {
        let l = Loader::new(auto(1)).unwrap();
        l.start().unwrap();
        let st = l.stats();
        assert_eq!(st.drive, Drive::Loader, "1 worker, {} cores", cores());
        assert!(st.loader_threads > 0);
        load_one(&l, 0, p);
        l.shutdown().unwrap();
    }

    let l = Loader::new(auto(cores())).unwrap();
    l.spawn().unwrap();
    let st = l.stats();
    assert_eq!(st.drive, Drive::Loader, "spawn asks for a loader process");
    assert!(st.loader_threads > 0);
    assert_ne!(l.loader_pid(), me, "no loader process was forked");
    load_one(&l, 0, p);
    l.shutdown().unwrap();
}

/// `dispatch_n` auto with the workers driving: a request submits once about
/// 1 MiB of files wait, by the sizes the worker loaded lately — 32 small
/// files (the io_uring window), 8 (the least) of 256 KiB. Until then
/// nothing is submitted; a get submits what waits.
#[test]
fn auto_dispatch_batches_about_a_mib_by_the_sizes_loaded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("s")).unwrap();
    std::fs::create_dir(dir.path().join("l")).unwrap();
    let small = make_files(&dir.path().join("s"), &[1000; 40]);
    let large = make_files(&dir.path().join("l"), &[256 << 10; 30]);
    let l = started(Config {
        dispatch_n: 0,
        max_file_size: 1 << 20,
        ..wcfg(1, 64)
    });
    let w = l.worker(0).unwrap();
    let one = |p: &Path| {
        w.request(p).unwrap();
        let e = w.wait_get_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(e.error(), 0);
        e.release();
    };
    let drain = |n: usize| {
        for _ in 0..n {
            let e = w.wait_get_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(e.error(), 0);
            e.release();
        }
    };
    one(&small[0]);
    let b = l.stats().batches;
    for p in &small[1..32] {
        w.request(p).unwrap();
    }
    assert_eq!(l.stats().batches, b, "31 small files wait: no batch yet");
    w.request(&small[32]).unwrap();
    assert_eq!(l.stats().batches, b + 1, "the 32nd submits");
    drain(32);
    // Large files, one at a time, until the average has moved.
    for p in &large[..12] {
        one(p);
    }
    let b = l.stats().batches;
    for p in &large[12..19] {
        w.request(p).unwrap();
    }
    assert_eq!(l.stats().batches, b, "7 large files wait: no batch yet");
    w.request(&large[19]).unwrap();
    assert_eq!(l.stats().batches, b + 1, "the 8th submits");
    drain(8);
    // An explicit dispatch_n is kept as given.
    l.shutdown().unwrap();
    let l = started(Config {
        dispatch_n: 3,
        max_file_size: 1 << 20,
        ..wcfg(1, 64)
    });
    let w = l.worker(0).unwrap();
    let b = l.stats().batches;
    w.request(&small[0]).unwrap();
    w.request(&small[1]).unwrap();
    assert_eq!(l.stats().batches, b);
    w.request(&small[2]).unwrap();
    assert_eq!(l.stats().batches, b + 1);
    for _ in 0..3 {
        w.wait_get_timeout(Duration::from_secs(30))
            .unwrap()
            .release();
    }
    l.shutdown().unwrap();
}
