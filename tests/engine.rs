//! Integration tests of the engine against the real kernel: every loaded
//! byte is compared with the file on disk.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use asyncloader::{Config, ErrorKind, Loader};
use common::*;

const MAX: u64 = 200_000;

fn cfg(workers: u32, qd: u32) -> Config {
    Config {
        n_workers: workers,
        queue_depth: qd,
        max_file_size: MAX,
        loader_threads: 2,
        ..Config::default()
    }
}

/// Boundary sizes around pages and the size limit.
fn boundary_sizes() -> Vec<usize> {
    vec![
        0,
        1,
        4095,
        4096,
        4097,
        100 * 1024,
        MAX as usize - 1,
        MAX as usize,
    ]
}

fn run_sizes(mode: Mode, direct: bool, dispatch_n: u32) {
    let dir = tempfile::tempdir().unwrap();
    let sizes = boundary_sizes();
    let paths = make_files(dir.path(), &sizes);
    let too_big = dir.path().join("too_big");
    std::fs::write(&too_big, content(99, MAX as usize + 1)).unwrap();
    let r = Running::new(
        Config {
            direct,
            dispatch_n,
            ..cfg(1, 4)
        },
        mode,
    );
    let w = r.worker(0);
    // Prefaulting while the loader runs changes nothing but speed.
    r.loader.prefault().unwrap();
    assert_eq!(load_all(&w, &paths), paths.len());
    w.request(&too_big).unwrap();
    let e = w.wait_get_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(e.error(), libc::EFBIG, "one byte over max_file_size");
    assert!(e.data().is_empty(), "an EFBIG entry holds no data");
    e.release();
    let st = r.loader.stats();
    assert_eq!(st.completions, paths.len() as u64 + 1);
    assert_eq!(st.errors, 1);
    assert_eq!(st.backend, expected_backend());
    if direct {
        // ext4 (where tempdir lives here) supports O_DIRECT; either way,
        // every non-empty file was read directly or counted as a fallback.
        assert!(st.direct_reads + st.buffered_fallbacks >= (paths.len() - 1) as u64);
    } else {
        assert_eq!(st.direct_reads, 0);
    }
    r.stop();
}

/// One test per loader mode, buffered or direct, and dispatch_n.
macro_rules! sizes_tests {
    ($($name:ident: $mode:expr, $direct:expr, $dispatch_n:expr;)*) => {
        $(
            #[test]
            fn $name() {
                run_sizes($mode, $direct, $dispatch_n);
            }
        )*
    };
}

sizes_tests! {
    sizes_threads_buffered_dispatch_1: Mode::Threads, false, 1;
    sizes_threads_buffered_dispatch_8: Mode::Threads, false, 8;
    sizes_threads_direct_dispatch_1: Mode::Threads, true, 1;
    sizes_threads_direct_dispatch_8: Mode::Threads, true, 8;
    sizes_process_loader_buffered_dispatch_4: Mode::Process, false, 4;
    sizes_process_loader_direct_dispatch_1: Mode::Process, true, 1;
    sizes_become_loader_buffered_dispatch_1: Mode::Become, false, 1;
    sizes_become_loader_direct_dispatch_4: Mode::Become, true, 4;
}

/// Loads files of `sizes` made in `dir` with `direct` set, checking every
/// byte; returns the loader's stats.
fn load_direct(dir: &std::path::Path, sizes: &[usize]) -> asyncloader::Stats {
    let paths = make_files(dir, sizes);
    let r = Running::new(
        Config {
            direct: true,
            ..cfg(1, 4)
        },
        Mode::Threads,
    );
    assert_eq!(load_all(&r.worker(0), &paths), paths.len());
    let st = r.loader.stats();
    r.stop();
    st
}

#[test]
fn direct_on_a_file_system_that_may_refuse_it() {
    // tmpfs: whatever it answers to O_DIRECT, the files load, and the stats
    // account for each file as a direct read or a buffered fallback.
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    let st = load_direct(dir.path(), &[1, 5000, 70_000]);
    assert_eq!(st.direct_reads + st.buffered_fallbacks, 3, "{st:?}");
}

#[test]
fn direct_reads_are_direct_on_ext4() {
    let dir = tempfile::tempdir().unwrap();
    // Only meaningful where the file system reports a direct-I/O alignment.
    let st = load_direct(dir.path(), &[10_000, 4096, 123_457]);
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir.path())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if fs.starts_with("ext") || fs == "xfs" || fs == "btrfs" {
        assert_eq!(st.direct_reads, 3, "{st:?} on {fs}");
        assert_eq!(st.buffered_fallbacks, 0, "{st:?} on {fs}");
    }
}

#[test]
fn several_worker_threads() {
    let dir = tempfile::tempdir().unwrap();
    let sizes: Vec<usize> = (0..1200).map(|i| (i * 7919) % 30_000).collect();
    let paths = make_files(dir.path(), &sizes);
    let r = Running::new(cfg(4, 16), Mode::Threads);
    std::thread::scope(|s| {
        for (k, chunk) in paths.chunks(300).enumerate() {
            let w = r.worker(k as u32);
            s.spawn(move || assert_eq!(load_all(&w, chunk), chunk.len()));
        }
    });
    assert_eq!(r.loader.stats().completions, 1200);
    r.stop();
}

fn forked_workers(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let sizes: Vec<usize> = (0..900).map(|i| (i * 104_729) % 150_000).collect();
    let paths = make_files(dir.path(), &sizes);
    let r = Running::new(cfg(3, 8), mode);
    let pids: Vec<_> = paths
        .chunks(300)
        .enumerate()
        .map(|(k, chunk)| {
            let w = r.worker(k as u32);
            in_child(move || {
                assert_eq!(load_all(&w, chunk), chunk.len());
            })
        })
        .collect();
    for pid in pids {
        assert!(child_ok(pid), "a worker process failed");
    }
    assert_eq!(r.loader.stats().completions, 900);
    r.stop();
}

#[test]
fn several_worker_processes_loader_process() {
    forked_workers(Mode::Process);
}

#[test]
fn several_worker_processes_loader_threads_in_parent() {
    forked_workers(Mode::Threads);
}

/// `[start, end)` of a worker's buffer area, as addresses.
fn area(w: &asyncloader::Worker) -> (usize, usize) {
    let (base, len) = w.buffer_area();
    (base as usize, base as usize + len)
}

/// Tags come back with their entries (`Entry::tag` and `EntryRef::tag`),
/// every file's bytes checked against the disk; untagged requests read tag
/// 0, also in slots whose previous request had a tag; every entry's buffer
/// lies in its own worker's `buffer_area` and not in the other's. The
/// backend is the one the suite runs on (`ASYNCLOADER_BACKEND`).
fn tags_and_buffer_area(mode: Mode) {
    use std::os::unix::ffi::OsStrExt;
    const QD: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0, 1, 4096, 70_000, MAX as usize, 12_345, 4097];
    let paths = make_files(dir.path(), &sizes);
    let r = Running::new(cfg(2, QD), mode);
    let ws = [r.worker(0), r.worker(1)];
    let areas = [area(&ws[0]), area(&ws[1])];
    for (start, end) in areas {
        assert_eq!(start % 4096, 0, "area not page aligned");
        assert_eq!((end - start) % 4096, 0, "area not whole pages");
        assert!(
            end - start >= QD as usize * MAX as usize,
            "{start:#x}..{end:#x}"
        );
    }
    assert!(
        areas[0].1 <= areas[1].0 || areas[1].1 <= areas[0].0,
        "the workers' areas overlap: {areas:x?}"
    );
    // Inside its own worker's area, whole buffer included; not the other's.
    let check_in_area = |k: usize, e: &asyncloader::Entry| {
        let p = e.data().as_ptr() as usize;
        let (start, end) = areas[k];
        assert!(
            p >= start && p + MAX as usize <= end,
            "{:?}: buffer {p:#x} outside {start:#x}..{end:#x}",
            e.path()
        );
        let (o_start, o_end) = areas[1 - k];
        assert!(
            !(o_start..o_end).contains(&p),
            "{:?}: in the other worker's area",
            e.path()
        );
    };
    let tag = |k: usize, i: usize| (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k as u64;
    for (k, w) in ws.iter().enumerate() {
        // Tagged, keeping the queue full.
        let mut seen = vec![0; paths.len()];
        let (mut next, mut got) = (0, 0);
        while got < paths.len() {
            while next < paths.len() {
                match w.request_tagged(paths[next].as_os_str().as_bytes(), tag(k, next)) {
                    Ok(()) => next += 1,
                    Err(e) if e.kind() == ErrorKind::QueueFull => break,
                    Err(e) => panic!("request_tagged: {e}"),
                }
            }
            let e = w.wait_get_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(e.view().tag(), e.tag());
            let i = (0..paths.len())
                .find(|&i| tag(k, i) == e.tag())
                .unwrap_or_else(|| panic!("{:?}: unknown tag {:#x}", e.path(), e.tag()));
            assert_eq!(e.path(), paths[i], "tag {:#x}", e.tag());
            check_entry(&e);
            check_in_area(k, &e);
            seen[i] += 1;
            e.release();
            got += 1;
        }
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
        // Untagged, in the slots the tagged ones used, all held at once:
        // tag 0, distinct buffers in the area.
        for (i, p) in paths.iter().take(QD as usize).enumerate() {
            if i % 2 == 0 {
                w.request(p).unwrap();
            } else {
                w.request_bytes(p.as_os_str().as_bytes()).unwrap();
            }
        }
        let held: Vec<_> = (0..QD)
            .map(|_| w.wait_get_timeout(Duration::from_secs(30)).unwrap())
            .collect();
        let mut bufs: Vec<_> = held.iter().map(|e| e.data().as_ptr() as usize).collect();
        for e in &held {
            assert_eq!((e.tag(), e.view().tag()), (0, 0), "{:?}", e.path());
            check_entry(e);
            check_in_area(k, e);
        }
        bufs.sort_unstable();
        bufs.dedup();
        assert_eq!(
            bufs.len(),
            QD as usize,
            "entries held at once share a buffer"
        );
        drop(held);
        assert_eq!(w.outstanding(), 0);
        // The area does not move.
        assert_eq!(area(w), areas[k]);
    }
    assert_eq!(r.loader.stats().backend, expected_backend());
    r.stop();
}

#[test]
fn tags_and_buffer_area_loader_threads() {
    tags_and_buffer_area(Mode::Threads);
}

#[test]
fn tags_and_buffer_area_loader_process() {
    tags_and_buffer_area(Mode::Process);
}

#[test]
fn stress_20k_requests_random_release_order() {
    let dir = tempfile::tempdir().unwrap();
    let n_files = 500;
    let sizes: Vec<usize> = (0..n_files)
        .map(|i| 1 + (i * 2654435761) % 20_000)
        .collect();
    let paths = make_files(dir.path(), &sizes);
    let expect: HashMap<PathBuf, Vec<u8>> = paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    let r = Running::new(cfg(2, 32), Mode::Threads);
    let total = 20_000usize;
    std::thread::scope(|s| {
        for k in 0..2u32 {
            let w = r.worker(k);
            let (paths, expect) = (&paths, &expect);
            s.spawn(move || {
                let mut rng = 0x1234_5678_9abc_def0u64 ^ k as u64;
                let mut next_rand = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut held = Vec::new();
                let (mut sent, mut got) = (0usize, 0usize);
                let mine = total / 2;
                while got < mine {
                    while sent < mine {
                        match w.request(&paths[(sent * 31 + k as usize) % paths.len()]) {
                            Ok(()) => sent += 1,
                            Err(e) if e.kind() == ErrorKind::QueueFull => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    if let Some(e) = w.try_get() {
                        assert_eq!(e.error(), 0);
                        assert!(e.data() == &expect[e.path()][..], "bytes of {:?}", e.path());
                        held.push(e);
                        got += 1;
                    } else if held.is_empty() {
                        let e = w.wait_get_timeout(Duration::from_secs(30)).unwrap();
                        assert!(e.data() == &expect[e.path()][..]);
                        held.push(e);
                        got += 1;
                    }
                    // Release a random subset, in random order.
                    while !held.is_empty() && (held.len() > 20 || next_rand() % 3 == 0) {
                        let i = (next_rand() % held.len() as u64) as usize;
                        held.swap_remove(i).release();
                    }
                }
                drop(held);
                assert_eq!(w.outstanding(), 0);
            });
        }
    });
    let st = r.loader.stats();
    assert_eq!(st.requests, total as u64);
    assert_eq!(st.completions, total as u64);
    assert_eq!(st.errors, 0);
    r.stop();
}

/// Makes a FIFO at `path` (mode 0600).
fn make_fifo(path: &std::path::Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// A FIFO in a temp dir of its own (removed when the dir is dropped).
fn fifo_in_a_tempdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    (dir, fifo)
}

/// A fresh loader fails `path` with EINVAL (not a regular file) within two
/// seconds: the open or read never blocks on it.
fn einval_at_once(path: &std::path::Path, what: &str) {
    let r = Running::new(cfg(1, 4), Mode::Threads);
    let t0 = Instant::now();
    assert_eq!(load_one(&r.worker(0), path), libc::EINVAL, "{what}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "{what}: {:?}",
        t0.elapsed()
    );
    r.stop();
}

fn load_one(w: &asyncloader::Worker, path: impl AsRef<std::path::Path>) -> i32 {
    w.request(path.as_ref()).unwrap();
    let e = w.wait_get_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(e.path(), path.as_ref());
    e.error()
}

/// Loads the path `make(dir)` returns through a fresh loader and checks
/// that its entry fails with `errno` at once (nothing blocks) and that the
/// loader still loads a good file afterwards.
fn load_fails_with(errno: i32, what: &str, make: impl FnOnce(&std::path::Path) -> PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let good = make_files(dir.path(), &[321])[0].clone();
    let path = make(dir.path());
    let r = Running::new(cfg(1, 4), Mode::Threads);
    let w = r.worker(0);
    let t0 = Instant::now();
    assert_eq!(load_one(&w, &path), errno, "{what}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "{what}: nothing blocks"
    );
    // The loader still works after that.
    assert_eq!(load_all(&w, &[good]), 1);
    r.stop();
}

#[test]
fn missing_file_is_enoent() {
    load_fails_with(libc::ENOENT, "a missing file", |d| d.join("missing"));
}

#[test]
fn directory_is_eisdir() {
    load_fails_with(libc::EISDIR, "a directory", |d| d.to_path_buf());
}

#[test]
fn fifo_is_einval() {
    load_fails_with(libc::EINVAL, "a FIFO is not a regular file", |d| {
        let fifo = d.join("fifo");
        make_fifo(&fifo);
        fifo
    });
}

#[test]
fn dev_zero_is_einval() {
    load_fails_with(libc::EINVAL, "a device", |_| "/dev/zero".into());
}

#[test]
fn dev_null_is_einval() {
    load_fails_with(libc::EINVAL, "a device", |_| "/dev/null".into());
}

#[test]
fn symlink_loop_is_eloop() {
    load_fails_with(libc::ELOOP, "a symlink loop", |d| {
        let (a, b) = (d.join("loop_a"), d.join("loop_b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        a
    });
}

#[test]
fn missing_directory_in_the_path_is_enoent() {
    load_fails_with(libc::ENOENT, "a missing directory", |d| d.join("missing/x"));
}

#[test]
fn file_used_as_a_directory_in_the_path_is_enotdir() {
    load_fails_with(libc::ENOTDIR, "a file as a directory", |d| {
        make_files(d, &[5])[0].join("x")
    });
}

#[test]
fn symlink_to_a_file_loads() {
    load_fails_with(0, "a symlink to a file loads", |d| {
        let target = make_files(d, &[321])[0].clone();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        link
    });
}

#[test]
fn permission_denied_is_eacces() {
    let dir = tempfile::tempdir().unwrap();
    // A readable directory holding an unreadable file.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let p = make_files(dir.path(), &[10])[0].clone();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    // Root reads everything: as root (CI), drop to `nobody` in a forked
    // child, which then runs the loader and the worker.
    let pid = in_child(move || {
        // SAFETY: geteuid/setgid/setuid in a single-threaded child.
        unsafe {
            if libc::geteuid() == 0 {
                assert_eq!(libc::setgid(65534), 0);
                assert_eq!(libc::setuid(65534), 0);
            }
        }
        let r = Running::new(cfg(1, 4), Mode::Threads);
        assert_eq!(load_one(&r.worker(0), &p), libc::EACCES);
        r.stop();
    });
    assert!(child_ok(pid));
}

#[test]
fn procfs_file_with_zero_stat_size_loads_its_content() {
    let r = Running::new(cfg(1, 4), Mode::Threads);
    let w = r.worker(0);
    w.request("/proc/self/status").unwrap();
    let e = w.wait_get_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(e.error(), 0);
    assert!(e.len() > 100, "stat says 0 bytes, the read finds more");
    assert!(e.data().starts_with(b"Name:"));
    drop(e);
    r.stop();
}

#[test]
fn empty_path_is_invalid_path_and_queues_nothing() {
    let l = Loader::new(cfg(2, 2)).unwrap();
    let w = l.worker(1).unwrap();
    assert_eq!(w.request("").unwrap_err().kind(), ErrorKind::InvalidPath);
    assert_eq!(w.outstanding(), 0);
}

#[test]
fn path_over_path_max_is_enametoolong_and_queues_nothing() {
    let l = Loader::new(cfg(2, 2)).unwrap();
    let w = l.worker(1).unwrap();
    let long = "a/".repeat(2048);
    let e = w.request(&long).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PathTooLong);
    assert_eq!(e.errno(), libc::ENAMETOOLONG);
    assert_eq!(w.outstanding(), 0);
}

#[test]
fn path_with_a_nul_inside_is_invalid_path_and_queues_nothing() {
    let l = Loader::new(cfg(2, 2)).unwrap();
    let w = l.worker(1).unwrap();
    assert_eq!(
        w.request_bytes(b"nul\0inside").unwrap_err().kind(),
        ErrorKind::InvalidPath
    );
    assert_eq!(w.outstanding(), 0);
}

#[test]
fn requests_queue_before_start_until_queue_depth_then_queue_full() {
    let l = Loader::new(cfg(2, 2)).unwrap();
    let w = l.worker(1).unwrap();
    // Requests queue before the loader starts; the third one is refused.
    w.request("/proc/self/stat").unwrap();
    w.request("/proc/self/stat").unwrap();
    let e = w.request("/proc/self/stat").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QueueFull);
    assert_eq!(e.errno(), libc::EAGAIN);
    assert!(w.try_get().is_none());
    // Started, the loader serves what queued.
    l.start().unwrap();
    for _ in 0..2 {
        let e = w.wait_get_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(e.error(), 0);
    }
    assert_eq!(w.outstanding(), 0);
    l.shutdown().unwrap();
}

#[test]
fn worker_id_out_of_range_is_invalid_argument() {
    let l = Loader::new(cfg(2, 2)).unwrap();
    assert_eq!(l.worker(2).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn start_twice_is_busy() {
    let l = Loader::new(cfg(2, 2)).unwrap();
    l.start().unwrap();
    assert_eq!(l.start().unwrap_err().kind(), ErrorKind::Busy);
    l.shutdown().unwrap();
}

#[test]
fn path_of_exactly_path_max_minus_one_is_accepted() {
    // 4095 bytes fit (plus the NUL); the kernel then says what it thinks.
    let l = Loader::new(cfg(1, 2)).unwrap();
    let w = l.worker(0).unwrap();
    let p = format!("/{}", "x".repeat(4094));
    w.request(&p).unwrap();
    l.start().unwrap();
    let e = w.wait_get_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(e.error(), libc::ENAMETOOLONG, "a component over NAME_MAX");
    assert_eq!(e.path_bytes(), p.as_bytes());
    drop(e);
    l.shutdown().unwrap();
}

#[test]
fn wait_get_times_out_without_requests() {
    let r = Running::new(cfg(1, 2), Mode::Threads);
    let t0 = Instant::now();
    let e = r
        .worker(0)
        .wait_get_timeout(Duration::from_millis(100))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert!(t0.elapsed() < Duration::from_secs(3));
    r.stop();
}

#[test]
fn shutdown_wakes_waiters_with_shutdown() {
    let r = Running::new(cfg(1, 2), Mode::Process);
    let w = r.worker(0);
    let waiter = {
        let w = w.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            (w.wait_get().map(|_| ()), t0.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    r.loader.shutdown().unwrap();
    let (res, waited) = waiter.join().unwrap();
    assert_eq!(res.unwrap_err().kind(), ErrorKind::Shutdown);
    assert!(waited < Duration::from_secs(5));
    r.stop();
}

#[test]
fn requests_after_shutdown_are_refused_and_the_state_is_stopped() {
    let r = Running::new(cfg(1, 2), Mode::Process);
    let w = r.worker(0);
    r.loader.shutdown().unwrap();
    assert_eq!(
        w.request("/etc/hostname").unwrap_err().kind(),
        ErrorKind::Shutdown
    );
    assert_eq!(r.loader.stats().state, "stopped");
    r.stop();
}

#[test]
fn dead_loader_process_is_noticed_in_bounded_time() {
    let r = Running::new(cfg(1, 2), Mode::Process);
    let w = r.worker(0);
    let pid = r.loader.loader_pid();
    assert!(pid > 0);
    // SAFETY: killing the loader child we spawned.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t0 = Instant::now();
    let e = w.wait_get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LoaderDead);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(
        w.request("/etc/hostname").unwrap_err().kind(),
        ErrorKind::LoaderDead
    );
    r.stop();
}

#[test]
fn request_fails_fast_after_the_loader_process_is_killed() {
    let r = Running::new(cfg(1, 8), Mode::Process);
    let w = r.worker(0);
    w.request("/proc/self/stat").unwrap();
    drop(w.wait_get_timeout(Duration::from_secs(10)).unwrap());
    // SAFETY: killing the loader child we spawned.
    unsafe { libc::kill(r.loader.loader_pid(), libc::SIGKILL) };
    // Nobody waits: the next requests notice within a health-check period.
    let t0 = Instant::now();
    let err = loop {
        match w.request("/proc/self/stat") {
            Ok(()) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break e,
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "requests still accepted"
        );
    };
    assert_eq!(err.kind(), ErrorKind::LoaderDead);
    r.stop();
}

#[test]
fn attach_by_name_shares_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[10, 20_000, 77_777]);
    let r = Running::new(cfg(2, 4), Mode::Threads);
    let other = Loader::attach(r.loader.name()).unwrap();
    assert_eq!(other.config(), r.loader.config());
    assert_eq!(load_all(&other.worker(1).unwrap(), &paths), 3);
    drop(other); // an attached handle does not stop the loader
    assert_eq!(load_all(&r.worker(0), &paths), 3);
    r.stop();
}

#[test]
fn attach_to_a_gone_or_malformed_name_is_an_error() {
    assert!(Loader::attach("asyncloader-1-1-1").is_err());
    assert!(Loader::attach("nonsense").is_err());
}

#[test]
fn invalid_configs_are_errors() {
    for c in [
        Config {
            n_workers: 0,
            ..Config::default()
        },
        Config {
            queue_depth: 0,
            ..Config::default()
        },
        Config {
            max_file_size: 1 << 40,
            ..Config::default()
        },
    ] {
        assert_eq!(Loader::new(c).unwrap_err().kind(), ErrorKind::InvalidConfig);
    }
}

#[test]
fn file_that_grows_past_the_limit_while_queued_is_efbig() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("grows");
    std::fs::write(&p, content(1, 1000)).unwrap();
    let l = Loader::new(cfg(1, 2)).unwrap();
    let w = l.worker(0).unwrap();
    w.request(&p).unwrap();
    std::fs::write(&p, content(1, MAX as usize + 10)).unwrap();
    l.start().unwrap();
    let e = w.wait_get_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(e.error(), libc::EFBIG);
    drop(e);
    std::fs::write(&p, content(1, 10)).unwrap();
    assert_eq!(load_all(&w, &[p]), 1);
    l.shutdown().unwrap();
}

/// A loader process (2 workers, queue_depth 4) whose worker 0 was used by a
/// forked process that held two entries unreleased, left two requests
/// queued, and was SIGKILLed. Returns the loader and the files.
fn loader_with_a_killed_worker(dir: &std::path::Path) -> (Running, Vec<PathBuf>) {
    let paths = make_files(dir, &[100, 5000, 70_000, 1, 4096]);
    let r = Running::new(cfg(2, 4), Mode::Process);
    let w0 = r.worker(0);
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let p2 = paths.clone();
    let victim = in_child(move || {
        // Hold two entries unreleased, leave two requests queued, then wait
        // to be killed.
        for p in &p2[..4] {
            w0.request(p).unwrap();
        }
        let a = w0.wait_get_timeout(Duration::from_secs(10)).unwrap();
        let b = w0.wait_get_timeout(Duration::from_secs(10)).unwrap();
        // SAFETY: writing one byte to the pipe we inherited.
        unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        std::thread::sleep(Duration::from_secs(60));
        drop((a, b));
    });
    let mut byte = 0u8;
    // SAFETY: reading one byte from our pipe.
    assert_eq!(unsafe { libc::read(fds[0], (&raw mut byte).cast(), 1) }, 1);
    // SAFETY: killing our own child.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    assert!(!child_ok(victim));
    // SAFETY: closing our pipe.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    (r, paths)
}

#[test]
fn killed_worker_process_does_not_stop_the_other_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (r, paths) = loader_with_a_killed_worker(dir.path());
    assert_eq!(load_all(&r.worker(1), &paths), paths.len());
    r.stop();
}

#[test]
fn killed_worker_process_slots_come_back_on_reclaim() {
    let dir = tempfile::tempdir().unwrap();
    let (r, paths) = loader_with_a_killed_worker(dir.path());
    // Worker 0 is out of slots until reclaimed.
    let w0 = r.worker(0);
    assert_eq!(w0.outstanding(), 4);
    // SAFETY: the entries of worker 0 were held by the killed child only.
    assert_eq!(unsafe { r.loader.reclaim_worker(0) }.unwrap(), 4);
    assert_eq!(w0.outstanding(), 0);
    assert!(w0.try_get().is_none(), "nothing stale is delivered");
    assert_eq!(load_all(&w0, &paths), paths.len());
    r.stop();
}

#[test]
fn reclaim_of_an_unknown_worker_is_invalid_argument() {
    let r = Running::new(cfg(2, 4), Mode::Threads);
    assert_eq!(
        // SAFETY: no such worker; nothing is held.
        unsafe { r.loader.reclaim_worker(9) }.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    r.stop();
}

#[test]
fn requests_wait_for_dispatch_n_then_go_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[10, 20, 30, 40]);
    let r = Running::new(
        Config {
            dispatch_n: 4,
            // Never dispatch for idleness within this test.
            idle_iters: asyncloader::config::limits::MAX_IDLE_ITERS,
            loader_threads: 1,
            ..cfg(1, 8)
        },
        Mode::Threads,
    );
    let w = r.worker(0);
    for p in &paths[..3] {
        w.request(p).unwrap();
    }
    let e = w.wait_get_timeout(Duration::from_millis(200)).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::TimedOut,
        "3 < dispatch_n: nothing submitted"
    );
    let before = r.loader.stats().batches;
    w.request(&paths[3]).unwrap();
    for _ in 0..4 {
        check_entry(&w.wait_get_timeout(Duration::from_secs(10)).unwrap());
    }
    assert_eq!(
        r.loader.stats().batches - before,
        1,
        "one submit for the batch"
    );
    r.stop();
}

#[test]
fn idle_iters_dispatches_a_partial_batch() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[10, 20]);
    let r = Running::new(
        Config {
            dispatch_n: 1000,
            idle_iters: 50,
            loader_threads: 1,
            ..cfg(1, 8)
        },
        Mode::Threads,
    );
    assert_eq!(load_all(&r.worker(0), &paths), 2);
    r.stop();
}

/// Drops `len` bytes at `off` of `path` from the page cache.
fn evict(path: &std::path::Path, off: i64, len: i64) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: advice on our own open descriptor.
    let r = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            off,
            len,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(r, 0);
}

#[test]
fn uncached_and_partly_cached_files_load_whole() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[150_000, 150_000, 9000, 4096 * 3]);
    evict(&paths[0], 0, 0); // all of it
    evict(&paths[1], 65_536, 0); // the second half
    evict(&paths[2], 4096, 4096); // a hole in the middle
    evict(&paths[3], 8192, 0); // the last page
    let r = Running::new(cfg(1, 4), Mode::Threads);
    assert_eq!(load_all(&r.worker(0), &paths), 4);
    r.stop();
}

#[test]
fn fifo_with_a_silent_writer_does_not_block() {
    let (_dir, fifo) = fifo_in_a_tempdir();
    // A writer that holds the FIFO open and never writes (O_RDWR opens a
    // FIFO without waiting for the other end).
    let writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    einval_at_once(&fifo, "FIFO with a writer");
    drop(writer);
}

/// A fresh pseudo-terminal: its master end and the path of its other end.
fn pty() -> (std::fs::File, PathBuf) {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname on our own descriptor,
    // which the returned File owns from here on.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(m)).to_owned();
        (
            std::fs::File::from_raw_fd(m),
            PathBuf::from(std::ffi::OsStr::from_encoded_bytes_unchecked(
                name.as_bytes(),
            )),
        )
    }
}

#[test]
fn terminal_with_nothing_to_read_does_not_block() {
    let (_master, tty) = pty();
    std::thread::sleep(Duration::from_millis(100));
    einval_at_once(&tty, "a terminal");
}

#[test]
fn terminal_holding_a_line_is_not_a_file() {
    use std::io::Write;
    // A line waiting in a terminal reads like a short file: a read returns
    // it, fewer bytes than asked and not a multiple of 4 KiB.
    let (mut master, tty) = pty();
    master.write_all(b"a line of text\n").unwrap();
    let r = Running::new(cfg(1, 4), Mode::Threads);
    let w = r.worker(0);
    for _ in 0..3 {
        assert_eq!(load_one(&w, &tty), libc::EINVAL);
    }
    r.stop();
}

#[test]
fn page_multiple_files_among_others_load_whole_warm() {
    // Without its probe read the optimistic chain cannot tell a file of a
    // multiple of 4 KiB from a read that stopped where cached pages ran
    // out: those go the careful way. Every file, every round, byte for byte,
    // with a partly cached one of each kind among them.
    let dir = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for i in 0..96usize {
        sizes.push(match i % 4 {
            0 => 4096 * (1 + i % 7),
            1 => 4096 * (1 + i % 5) + 1 + i,
            2 => 4096 * (1 + i % 3) - 1 - i,
            _ => 100 + 37 * i,
        });
    }
    let paths = make_files(dir.path(), &sizes);
    let r = Running::new(cfg(1, 16), Mode::Threads);
    let w = r.worker(0);
    for round in 0..4 {
        if round == 2 {
            evict(&paths[4], 4096, 0); // 4096 * 5 bytes, the last four pages
            evict(&paths[5], 4096, 0); // 4096 * 2 + 6 bytes, from the second page
        }
        assert_eq!(load_all(&w, &paths), paths.len());
    }
    r.stop();
}

#[test]
fn empty_files_and_dev_null_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let empty = make_files(dir.path(), &[0])[0].clone();
    let r = Running::new(cfg(1, 4), Mode::Threads);
    let w = r.worker(0);
    assert_eq!(load_one(&w, &empty), 0);
    assert_eq!(load_one(&w, "/dev/null"), libc::EINVAL);
    assert_eq!(load_one(&w, "/dev/urandom"), libc::EINVAL);
    r.stop();
}

#[test]
fn fifo_holding_data_from_a_writer_that_left_is_not_a_file() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (_dir, fifo) = fifo_in_a_tempdir();
    // A reader keeps the pipe alive; a writer writes 100 bytes and leaves,
    // so a read finds 100 bytes and then end of file, like a small file.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer.write_all(&[7u8; 100]).unwrap();
    drop(writer);
    let r = Running::new(cfg(1, 4), Mode::Threads);
    assert_eq!(load_one(&r.worker(0), &fifo), libc::EINVAL);
    r.stop();
}

#[test]
fn file_that_shrinks_after_its_request_loads_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shrinks");
    std::fs::write(&p, content(3, 150_000)).unwrap();
    let l = Loader::new(cfg(1, 2)).unwrap();
    let w = l.worker(0).unwrap();
    w.request(&p).unwrap();
    std::fs::write(&p, content(4, 777)).unwrap();
    l.start().unwrap();
    check_entry(&w.wait_get_timeout(Duration::from_secs(10)).unwrap());
    l.shutdown().unwrap();
}

/// Shuts down a loader in `mode` while 16 uncached reads are in flight and
/// two threads wait: each waiter gets its entries, then `Shutdown`.
fn shutdown_with_requests_in_flight(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let sizes: Vec<usize> = (0..16).map(|i| 150_000 + i * 3000).collect();
    let paths = make_files(dir.path(), &sizes);
    for p in &paths {
        evict(p, 0, 0);
    }
    let r = Running::new(cfg(2, 16), mode);
    let w = r.worker(0);
    for p in &paths {
        w.request(p).unwrap();
    }
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let w = w.clone();
            std::thread::spawn(move || {
                let mut got = 0;
                loop {
                    match w.wait_get_timeout(Duration::from_secs(10)) {
                        Ok(e) => {
                            check_entry(&e);
                            got += 1;
                        }
                        Err(e) => return (got, e.kind()),
                    }
                }
            })
        })
        .collect();
    r.loader.shutdown().unwrap();
    let t0 = Instant::now();
    let mut total = 0;
    for h in waiters {
        let (got, kind) = h.join().unwrap();
        assert_eq!(kind, ErrorKind::Shutdown, "{mode:?}");
        total += got;
    }
    assert!(total <= paths.len());
    assert!(t0.elapsed() < Duration::from_secs(5));
    r.stop();
}

#[test]
fn shutdown_with_requests_in_flight_delivers_or_fails_every_waiter_threads() {
    shutdown_with_requests_in_flight(Mode::Threads);
}

#[test]
fn shutdown_with_requests_in_flight_delivers_or_fails_every_waiter_process() {
    shutdown_with_requests_in_flight(Mode::Process);
}

/// Requests `paths` (at most the queue depth) through `w` and hands every
/// entry over with `Entry::into_ticket`: the tickets, and the path each
/// one stands for. The caller holds no entry afterwards; every one still
/// counts as outstanding.
fn hand_over(w: &asyncloader::Worker, paths: &[PathBuf]) -> (Vec<u64>, Vec<PathBuf>) {
    let before = w.outstanding() as usize;
    for p in paths {
        w.request(p).unwrap();
    }
    let mut tickets = Vec::new();
    let mut order = Vec::new();
    for _ in paths {
        let e = w.wait_get_timeout(Duration::from_secs(30)).unwrap();
        order.push(e.path().to_path_buf());
        let t = e
            .into_ticket()
            .expect("a ticket where the entry was delivered");
        assert_ne!(t, 0, "ticket 0");
        assert!(!tickets.contains(&t), "ticket {t:#x} twice");
        tickets.push(t);
    }
    assert_eq!(
        w.outstanding() as usize,
        before + paths.len(),
        "entries handed over still count against the queue"
    );
    (tickets, order)
}

/// What a taker should find for `path`: its bytes on disk, nothing for a
/// file that failed to load (missing).
fn disk_bytes(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// Asserts that `dst` starts with the files of `order` one after another
/// and `sizes` holds their sizes; returns their total size.
fn check_taken(dst: &[u8], sizes: &[u64], order: &[PathBuf]) -> usize {
    assert_eq!(sizes.len(), order.len());
    let mut at = 0;
    for (p, &size) in order.iter().zip(sizes) {
        let disk = disk_bytes(p);
        assert_eq!(size, disk.len() as u64, "{p:?}: size");
        assert!(dst[at..at + disk.len()] == disk[..], "{p:?}: bytes differ");
        at += disk.len();
    }
    at
}

/// Entries handed over by `Entry::into_ticket` come back through
/// `Loader::take_tickets` in ticket order (here the reverse of delivery),
/// every byte as on disk, a missing file with size 0; they are released
/// (nothing outstanding, the slots load again). A second take of the same
/// tickets, or of one of them, is `InvalidArgument` and copies nothing.
#[test]
fn tickets_round_trip_copies_every_byte_and_a_second_take_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = make_files(dir.path(), &boundary_sizes());
    paths.push(dir.path().join("missing"));
    let r = Running::new(cfg(1, paths.len() as u32), Mode::Threads);
    let w = r.worker(0);
    let (mut tickets, mut order) = hand_over(&w, &paths);
    tickets.reverse();
    order.reverse();
    let total: usize = order.iter().map(|p| disk_bytes(p).len()).sum();
    let mut dst = vec![0xA5; total + 100];
    let mut sizes = vec![u64::MAX; tickets.len()];
    // SAFETY: the tickets were handed over above and are taken once, here.
    let copied = unsafe { r.loader.take_tickets(&tickets, &mut dst, &mut sizes) }.unwrap();
    assert_eq!(copied, total);
    assert_eq!(check_taken(&dst, &sizes, &order), total);
    assert!(
        dst[total..].iter().all(|&b| b == 0xA5),
        "wrote past the entries"
    );
    assert_eq!(w.outstanding(), 0, "taken entries are released");

    dst.fill(0x5A);
    for ts in [&tickets[..], &tickets[3..4]] {
        // SAFETY: stale tickets; the call must refuse them.
        let err = unsafe { r.loader.take_tickets(ts, &mut dst, &mut sizes) }.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(dst.iter().all(|&b| b == 0x5A), "a stale take copied");
    }
    assert_eq!(load_all(&w, &paths[..paths.len() - 1]), paths.len() - 1);
    r.stop();
}

/// `take_tickets` checks every ticket and the room in `dst` before it
/// copies or releases anything: a `dst` one byte short, fewer sizes than
/// tickets, a ticket 0, a made-up one, one of another generation or one
/// given twice after the good ones are `InvalidArgument` with `dst`
/// untouched and every
/// entry still outstanding; then the right take works.
#[test]
fn take_tickets_checks_every_ticket_and_the_room_before_it_releases() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[70_000, 1, 0, 4097]);
    let r = Running::new(cfg(1, 4), Mode::Threads);
    let w = r.worker(0);
    let (tickets, order) = hand_over(&w, &paths);
    let total: usize = order.iter().map(|p| disk_bytes(p).len()).sum();
    let mut dst = vec![0xA5; total + 64];
    let mut sizes = vec![0; tickets.len() + 1];
    let untouched = |dst: &[u8]| dst.iter().all(|&b| b == 0xA5);
    let refused = |ts: &[u64], dst: &mut [u8], sizes: &mut [u64], what: &str| {
        // SAFETY: handed over above, taken by nobody else; the call must
        // refuse and release nothing.
        let err = unsafe { r.loader.take_tickets(ts, dst, sizes) }.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
        assert_eq!(w.outstanding(), 4, "{what}: released an entry");
    };

    refused(
        &tickets,
        &mut dst[..total - 1],
        &mut sizes,
        "one byte short",
    );
    assert!(untouched(&dst));
    refused(&tickets, &mut dst, &mut sizes[..3], "fewer sizes");
    assert!(untouched(&dst));
    for (bad, what) in [
        (0, "ticket 0"),
        (u64::MAX, "no such entry"),
        (
            (1_000_000 << 32) | (tickets[0] & 0xFFFF_FFFF),
            "no such entry",
        ),
        (tickets[0] + 1, "another generation"),
        (tickets[1], "a ticket given twice"),
    ] {
        let mut mixed = tickets.clone();
        mixed.push(bad);
        refused(&mixed, &mut dst, &mut sizes, what);
        assert!(untouched(&dst), "{what}: copied");
    }

    // SAFETY: handed over above and taken once, here.
    let copied = unsafe {
        r.loader
            .take_tickets(&tickets, &mut dst[..total], &mut sizes)
    };
    assert_eq!(copied.unwrap(), total);
    assert_eq!(check_taken(&dst, &sizes[..4], &order), total);
    assert_eq!(w.outstanding(), 0);
    r.stop();
}

/// `drop_tickets` releases what the tickets stand for without copying and
/// counts it; stale tickets (taken already, dropped already) and 0 are
/// skipped.
#[test]
fn drop_tickets_releases_and_skips_stale_tickets() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[5000, 0, 100_000, 3]);
    let r = Running::new(cfg(1, 4), Mode::Threads);
    let w = r.worker(0);
    let (mut tickets, order) = hand_over(&w, &paths);
    let two = disk_bytes(&order[0]).len() + disk_bytes(&order[1]).len();
    let mut dst = vec![0; two];
    let mut sizes = [0; 2];
    // SAFETY: handed over above and taken once, here.
    let copied = unsafe { r.loader.take_tickets(&tickets[..2], &mut dst, &mut sizes) };
    assert_eq!(copied.unwrap(), two);
    assert_eq!(check_taken(&dst, &sizes, &order[..2]), two);
    assert_eq!(w.outstanding(), 2);
    tickets.push(0);
    // SAFETY: the last two are handed over and dropped once, here; the
    // others are stale.
    assert_eq!(unsafe { r.loader.drop_tickets(&tickets) }, 2);
    assert_eq!(w.outstanding(), 0);
    // SAFETY: all stale now.
    assert_eq!(unsafe { r.loader.drop_tickets(&tickets) }, 0);
    // SAFETY: stale; the take must refuse them.
    let err = unsafe { r.loader.take_tickets(&tickets[2..4], &mut dst, &mut sizes) }.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(load_all(&w, &paths), paths.len());
    r.stop();
}

/// The hand-over between processes: this process loads the entries and
/// keeps only their tickets; a forked child takes them (copies every
/// byte, releases). Afterwards nothing is outstanding here, the tickets
/// are stale, and the slots load again.
fn tickets_taken_by_a_forked_process(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[MAX as usize, 0, 4096, 12_345, 1]);
    let r = Running::new(cfg(2, 5), mode);
    let w = r.worker(1);
    let (tickets, order) = hand_over(&w, &paths);
    let total: usize = order.iter().map(|p| disk_bytes(p).len()).sum();
    let loader = &r.loader;
    let child = in_child(|| {
        let mut dst = vec![0; total];
        let mut sizes = vec![0; tickets.len()];
        // SAFETY: the parent handed these over and holds nothing; this
        // child is their one taker.
        let copied = unsafe { loader.take_tickets(&tickets, &mut dst, &mut sizes) };
        assert_eq!(copied.unwrap(), total);
        assert_eq!(check_taken(&dst, &sizes, &order), total);
    });
    assert!(child_ok(child), "the child's take failed");
    assert_eq!(w.outstanding(), 0, "the child released the entries");
    let mut dst = vec![0; total];
    let mut sizes = vec![0; tickets.len()];
    // SAFETY: taken by the child: stale, and the take must refuse them.
    let err = unsafe { r.loader.take_tickets(&tickets, &mut dst, &mut sizes) }.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    // SAFETY: stale.
    assert_eq!(unsafe { r.loader.drop_tickets(&tickets) }, 0);
    assert_eq!(load_all(&w, &paths), paths.len());
    r.stop();
}

#[test]
fn tickets_taken_by_a_forked_process_loader_process() {
    tickets_taken_by_a_forked_process(Mode::Process);
}

#[test]
fn tickets_taken_by_a_forked_process_loader_threads() {
    tickets_taken_by_a_forked_process(Mode::Threads);
}
