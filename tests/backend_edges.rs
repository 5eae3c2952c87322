//! The backends at the edges: files whose stat size lies (procfs), chains
//! that fail half way (no descriptor may stay open), and shutdown while a
//! read blocks for real (`/proc/kmsg` with no kernel message pending).
//!
//! The tests of this file take one lock each, so at most one of their
//! loaders runs at a time: the descriptor-table checks look at every
//! io_uring of this process, and the `/proc/kmsg` readers must not steal
//! each other's messages.

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use asyncloader::{BackendKind, Config, Entry, Worker};
use common::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const BACKENDS: [BackendKind; 2] = [BackendKind::IoUring, BackendKind::Threads];

fn start(backend: BackendKind, cfg: Config) -> Running {
    Running::new(
        Config {
            backend,
            loader_threads: 1,
            ..cfg
        },
        Mode::Threads,
    )
}

fn load(w: &Worker, path: impl AsRef<Path>) -> Entry {
    w.request(path.as_ref()).unwrap();
    w.wait_get_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{:?}: {e}", path.as_ref()))
}

/// `/proc/kallsyms`: stat size 0, ~5 MB, at most a page per read, the same
/// content on every read (as root the addresses are real, still stable).
const KALLSYMS: &str = "/proc/kallsyms";

#[test]
fn size_zero_file_loads_whole_on_both_backends() {
    let _l = lock();
    let disk = std::fs::read(KALLSYMS).unwrap();
    assert!(
        disk.len() > 64 * 1024,
        "kallsyms is only {} bytes",
        disk.len()
    );
    for kind in BACKENDS {
        let r = start(
            kind,
            Config {
                max_file_size: 16 << 20,
                queue_depth: 2,
                ..Config::default()
            },
        );
        let w = r.worker(0);
        // Twice: the first may take the optimistic chain, the second the
        // statx path (the first's miss makes no difference to correctness).
        for round in 0..2 {
            let e = load(&w, KALLSYMS);
            assert_eq!(e.error(), 0, "{kind:?} round {round}");
            assert_eq!(e.len(), disk.len(), "{kind:?} round {round}: truncated?");
            assert!(
                e.data() == &disk[..],
                "{kind:?} round {round}: bytes differ"
            );
        }
        r.stop();
    }
}

#[test]
fn size_zero_file_over_the_limit_is_efbig_on_both_backends() {
    let _l = lock();
    for kind in BACKENDS {
        let r = start(
            kind,
            Config {
                max_file_size: 64 * 1024,
                queue_depth: 2,
                ..Config::default()
            },
        );
        let w = r.worker(0);
        for round in 0..2 {
            let e = load(&w, KALLSYMS);
            assert_eq!(e.error(), libc::EFBIG, "{kind:?} round {round}");
            assert!(e.data().is_empty());
        }
        r.stop();
    }
}

/// The io_uring descriptors of this process.
fn uring_fds() -> Vec<i32> {
    let mut v = Vec::new();
    for d in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(t) = std::fs::read_link(d.path())
            && t.to_string_lossy() == "anon_inode:[io_uring]"
            && let Ok(fd) = d.file_name().to_string_lossy().parse()
        {
            v.push(fd);
        }
    }
    v
}

/// The registered-file slots that hold a file, per io_uring of this
/// process: fdinfo lists them after `UserFiles:`, one line per installed
/// slot (`  slot: path`). The section is printed only when the ring's lock
/// was free, so retry until it is there.
fn installed_slots() -> Vec<String> {
    let mut out = Vec::new();
    for fd in uring_fds() {
        for attempt in 0.. {
            let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
                break; // closed meanwhile
            };
            let mut lines = info.lines().skip_while(|l| !l.starts_with("UserFiles:"));
            if lines.next().is_none() {
                assert!(attempt < 1000, "fdinfo of io_uring {fd} never lists files");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            out.extend(
                lines
                    .take_while(|l| l.starts_with(' ') || l.as_bytes()[0].is_ascii_digit())
                    .filter(|l| l.contains(':'))
                    .map(|l| format!("ring {fd}: {l}")),
            );
            break;
        }
    }
    out
}

/// True when some process holds `fifo` open for reading: a non-blocking
/// open for writing fails with ENXIO when nobody does.
fn fifo_has_reader(fifo: &Path) -> bool {
    let c = CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; the descriptor is closed below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
    if fd >= 0 {
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        return true;
    }
    let e = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(e, Some(libc::ENXIO), "unexpected open error");
    false
}

fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn failed_fifo_request_leaves_no_reader_on_both_backends() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    for kind in BACKENDS {
        let r = start(kind, Config::default());
        let w = r.worker(0);
        // The first requests take the optimistic chain, later ones (after
        // its misses) the statx path: both must let go of the FIFO.
        for round in 0..8 {
            let e = load(&w, &fifo);
            assert_eq!(e.error(), libc::EINVAL, "{kind:?} round {round}");
            assert!(
                !fifo_has_reader(&fifo),
                "{kind:?} round {round}: the loader still holds the FIFO open"
            );
        }
        r.stop();
    }
}

/// A FIFO holding bytes whose writer has left reads like a small file
/// (data, then end of file) to a non-blocking reader. It must still be
/// refused as not a regular file — on kernels where FIFOs accept
/// `RWF_NOWAIT` the optimistic chain's FADVISE guard does it, elsewhere
/// the read's `EOPNOTSUPP` (the engine asks the kernel which: see
/// `fifo_accepts_nowait` in src/backend/uring.rs).
#[test]
fn fifo_with_bytes_and_no_writer_is_refused_on_both_backends() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    for kind in BACKENDS {
        let r = start(kind, Config::default());
        let w = r.worker(0);
        for round in 0..8 {
            // A reader keeps the pipe (and its bytes) alive; the writer
            // writes and leaves.
            let _holder = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap();
            let mut writer = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap();
            writer.write_all(b"not a regular file").unwrap();
            drop(writer);
            let e = load(&w, &fifo);
            assert_eq!(
                (e.error(), e.data()),
                (libc::EINVAL, &b""[..]),
                "{kind:?} round {round}"
            );
        }
        r.stop();
    }
}

/// A file another thread keeps appending to while it loads.
struct Grower {
    stop: Arc<AtomicBool>,
    t: Option<std::thread::JoinHandle<()>>,
}

impl Grower {
    fn new(path: PathBuf) -> Grower {
        std::fs::write(&path, content(7, 5000)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            while !s.load(Ordering::Relaxed) {
                f.write_all(&[b'x'; 512]).unwrap();
                if f.metadata().unwrap().len() > 150_000 {
                    f.set_len(5000).unwrap();
                }
            }
        });
        Grower { stop, t: Some(t) }
    }
}

impl Drop for Grower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.t.take().unwrap().join();
    }
}

/// Every chain shape that can fail or continue, buffered and direct, fast
/// and statx-first: afterwards no registered slot may hold a file.
#[test]
fn no_descriptor_left_in_a_fixed_slot_after_any_chain() {
    let _l = lock();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let max = 100_000u64;
    let paths = make_files(dir.path(), &[0, 1, 4096, 5000, max as usize]);
    let too_big = dir.path().join("too_big");
    std::fs::write(&too_big, content(9, max as usize + 1)).unwrap();
    let grower = Grower::new(dir.path().join("growing"));
    let growing = dir.path().join("growing");
    let missing = dir.path().join("missing");

    for direct in [false, true] {
        let r = start(
            BackendKind::IoUring,
            Config {
                max_file_size: max,
                direct,
                queue_depth: 4,
                ..Config::default()
            },
        );
        let w = r.worker(0);
        // Failures first, so the optimistic chain sees them too.
        let odd: Vec<(PathBuf, Option<i32>)> = vec![
            (fifo.clone(), Some(libc::EINVAL)),
            ("/dev/null".into(), Some(libc::EINVAL)),
            ("/dev/zero".into(), Some(libc::EINVAL)),
            (missing.clone(), Some(libc::ENOENT)),
            (sub.clone(), Some(libc::EISDIR)),
            (too_big.clone(), Some(libc::EFBIG)),
            (KALLSYMS.into(), Some(libc::EFBIG)),
            ("/proc/self/status".into(), Some(0)),
            (growing.clone(), None),
        ];
        // Checked after each load: the next open into the same slot would
        // replace (and so close) a file left there.
        let check = |what: &Path, round: u32| {
            // Known once the loader thread set its backend up (a load done).
            if r.loader.stats().backend == "io_uring" {
                let left = installed_slots();
                assert!(
                    left.is_empty(),
                    "{what:?} direct {direct} round {round}: slots still hold files: {left:?}"
                );
            }
            assert!(
                !fifo_has_reader(&fifo),
                "{what:?} direct {direct}: FIFO held"
            );
        };
        for round in 0..10 {
            for (p, want) in &odd {
                let e = load(&w, p);
                if let Some(want) = want {
                    assert_eq!(e.error(), *want, "{p:?} direct {direct} round {round}");
                }
                check(p, round);
            }
            for p in &paths {
                let e = load(&w, p);
                check_entry(&e);
                check(p, round);
            }
        }
        r.stop();
    }
    drop(grower);
}

// ---- shutdown while a read blocks ----------------------------------------

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    let mut v = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(n) = std::fs::read_to_string(t.path().join("comm")) {
            v.push(n.trim().to_string());
        }
    }
    v
}

/// Writes kernel messages until `done()` holds (or 10 s pass), so that
/// readers blocked in `/proc/kmsg` (ours, abandoned) wake and see their
/// cancellation. Returns whether `done()` held.
fn wake_kmsg_readers(done: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    // Without it (no CAP_SYSLOG) nothing could have blocked in the first place.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .ok();
    while t0.elapsed() < Duration::from_secs(10) {
        if done() {
            return true;
        }
        use std::io::Write;
        if let Some(f) = f.as_mut() {
            let _ = f.write_all(b"<7>asyncloader test: waking /proc/kmsg readers\n");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// `/proc/kmsg` is a regular file of size 0 whose read blocks while no
/// kernel message is pending (we are root): after the pending ones are read,
/// the read-until-0 rule blocks for real. Shutdown must still end in
/// bounded time, whatever the backend.
fn shutdown_with_blocked_reads(kind: BackendKind) {
    let _l = lock();
    // SAFETY: geteuid has no preconditions.
    if !Path::new("/proc/kmsg").exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: /proc/kmsg needs root");
        return;
    }
    // Threads backend: 8 pool threads (all stuck) and 12 jobs in flight,
    // so 4 are queued and must be abandoned without being started.
    let r = start(
        kind,
        Config {
            queue_depth: 16,
            ring_window: 12,
            max_file_size: 1 << 20,
            ..Config::default()
        },
    );
    let w = r.worker(0);
    for _ in 0..12 {
        w.request("/proc/kmsg").unwrap();
    }
    // Let them all start and block.
    std::thread::sleep(Duration::from_millis(500));
    while let Some(e) = w.try_get() {
        e.release();
    }
    let backend = r.loader.stats().backend;
    let loader = r.loader.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    let stopper = std::thread::spawn(move || {
        let res = loader.shutdown();
        let _ = tx.send(res.is_ok());
    });
    let finished = rx.recv_timeout(Duration::from_secs(15));
    let took = t0.elapsed();
    // Whatever happened, wake the readers so that nothing stays blocked
    // (an abandoned pool thread then sees it was cancelled and exits).
    let all_gone = wake_kmsg_readers(|| !thread_names().iter().any(|n| n.starts_with("al-io")));
    if finished.is_ok() {
        stopper.join().unwrap();
    } else {
        // Old behaviour: the shutdown ends once the reads returned.
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }
    assert_eq!(
        finished,
        Ok(true),
        "{backend}: shutdown with blocked reads did not finish within 15 s"
    );
    assert!(took < Duration::from_secs(12), "{backend}: took {took:?}");
    assert!(all_gone, "{backend}: pool threads left behind");
    // What was cancelled before it ended came back as an error, never as
    // data (what the kernel had pending may have come back whole).
    let mut cancelled = 0;
    while let Some(e) = w.try_get() {
        if e.error() != 0 {
            cancelled += 1;
            assert!(
                [libc::ECANCELED, libc::EINTR].contains(&e.error()),
                "{backend}: {}",
                e.error()
            );
        }
        e.release();
    }
    eprintln!("{backend}: shutdown took {took:?}, {cancelled} requests cancelled");
    if backend == "threads" {
        // 12 jobs, 8 pool threads: 4 never started.
        assert!(cancelled >= 4, "{backend}: {cancelled} cancelled");
    }
    drop(w);
    drop(r);
}

#[test]
fn threads_backend_shutdown_is_bounded_with_a_blocked_read() {
    shutdown_with_blocked_reads(BackendKind::Threads);
}

#[test]
fn uring_backend_shutdown_is_bounded_with_a_blocked_read() {
    shutdown_with_blocked_reads(BackendKind::IoUring);
}
