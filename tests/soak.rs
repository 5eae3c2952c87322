//! Soak test: worker processes load a mixed tree for a fixed time while
//! workers and the loader process are SIGKILLed at random and replaced.
//!
//! Ignored by default. Run it (N seconds, 30 when unset):
//!
//! ```sh
//! ASYNCLOADER_SOAK_SECS=600 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! The tree: regular files of many sizes (0, page edges, the size limit, one
//! byte over it, far over it), missing files, a FIFO, a directory, and files
//! that a mutator process rewrites while they are loaded — some replaced
//! whole by `rename` (each version carries its number in its first 8 bytes),
//! some grown and shrunk in place (their bytes depend only on the offset, so
//! any moment's content is a prefix of one pattern). Each worker knows from
//! the path alone what a load must give, checks every entry's bytes when it
//! gets it and again when it releases it, and counts the outcome in memory
//! shared with this process (kept across kills).
//!
//! Meanwhile this process kills a random worker every few hundred ms, waits
//! for it, calls `Loader::reclaim_worker(id)` and forks a new worker with that
//! id; every few seconds it kills the loader process, checks that every worker
//! notices (`LoaderDead`) in bounded time, shuts the loader down and starts a
//! new one. At the end: no mismatch, no failed reclaim, no hung worker; and no
//! descriptor, thread, child, memfd or mapping left, resident memory back
//! near its baseline.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use asyncloader::{Config, Entry, ErrorKind, Loader};
use common::{Rng, content};

/// Size limit of the loaders under test.
const MAX: usize = 128 * 1024;
const WORKERS: u32 = 4;
const QD: u32 = 8;
/// Largest size a file rewritten in place reaches (over MAX: some loads are
/// `EFBIG`).
const INPLACE_MAX: usize = MAX + MAX / 4;
/// How long a worker may wait for an entry before it calls itself hung.
const HANG: Duration = Duration::from_secs(20);
/// How long workers get to notice a killed loader (README: ~20 ms).
const NOTICE: Duration = Duration::from_secs(5);

// Worker exit codes.
const EXIT_LOADER_DEAD: i32 = 10;
const EXIT_SHUTDOWN: i32 = 11;
const EXIT_MISMATCH: i32 = 20;
const EXIT_HUNG: i32 = 21;
const EXIT_API_ERROR: i32 = 22;
const EXIT_PANIC: i32 = 23;

// Counters shared with the workers (indices into `Shared::c`).
const C_REQUESTS: usize = 0;
const C_LOADED: usize = 1;
const C_BYTES: usize = 2;
const C_MISMATCH: usize = 3;
const C_RECHECKED: usize = 4;
const C_VERSIONED: usize = 5;
const C_INPLACE: usize = 6;
const C_ERRNO: usize = 16; // + errno (< 200)
const N_COUNTERS: usize = C_ERRNO + 200;

/// Counters in an anonymous shared mapping: forked workers add to them and
/// what they counted survives their SIGKILL.
struct Shared {
    p: *mut libc::c_void,
}

impl Shared {
    fn new() -> Shared {
        let len = N_COUNTERS * 8;
        // SAFETY: a fresh anonymous shared mapping; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of the counters");
        Shared { p }
    }
    fn c(&self) -> &[AtomicU64] {
        // SAFETY: `N_COUNTERS * 8` bytes, zero-filled by mmap, page-aligned
        // (so aligned for AtomicU64, for which all-zero is 0), mapped until
        // `Drop`, which the returned borrow of `self` cannot outlive; only
        // ever accessed atomically (here and in the forked copies).
        unsafe { std::slice::from_raw_parts(self.p as *const AtomicU64, N_COUNTERS) }
    }
    fn add(&self, i: usize, n: u64) {
        self.c()[i].fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self, i: usize) -> u64 {
        self.c()[i].load(Ordering::Relaxed)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; nothing borrows it any more.
        unsafe { libc::munmap(self.p, N_COUNTERS * 8) };
    }
}

/// Size of version `v` of versioned file `i` (8 to 1.25 × MAX bytes: about
/// one version in five is over the limit).
fn versioned_size(i: u64, v: u64) -> usize {
    8 + (Rng::new(i * 1_000_003 + v).next() % (INPLACE_MAX as u64 - 8)) as usize
}

/// Bytes of version `v` of versioned file `i`: `v` then a stream.
fn versioned_bytes(i: u64, v: u64) -> Vec<u8> {
    let n = versioned_size(i, v);
    let mut b = v.to_le_bytes().to_vec();
    b.extend_from_slice(&content(i * 1_000_003 + v, n - 8));
    b
}

/// The pattern an in-place file `i` is always a prefix of.
fn inplace_pattern(i: u64) -> Vec<u8> {
    content(5_000_000 + i, INPLACE_MAX)
}

/// What a path stands for; workers parse it back from the file name.
#[derive(Debug)]
enum Expect {
    /// `s{i}_{len}`: `content(i, len)`, or `EFBIG` over MAX.
    Static(u64, usize),
    /// `v{i}`: some version, whole, or `EFBIG`.
    Versioned(u64),
    /// `p{i}`: a prefix of the pattern, or `EFBIG`.
    InPlace(u64),
    /// Fails with this errno.
    Errno(i32),
}

fn expect_of(path: &[u8]) -> Expect {
    let name = path.rsplit(|&b| b == b'/').next().unwrap();
    let name = std::str::from_utf8(name).unwrap();
    let num = |s: &str| s.parse::<u64>().unwrap();
    match name.as_bytes()[0] {
        b's' => {
            let (i, n) = name[1..].split_once('_').unwrap();
            Expect::Static(num(i), num(n) as usize)
        }
        b'v' => Expect::Versioned(num(&name[1..])),
        b'p' => Expect::InPlace(num(&name[1..])),
        b'm' => Expect::Errno(libc::ENOENT),
        b'f' => Expect::Errno(libc::EINVAL), // fifo
        b'd' => Expect::Errno(libc::EISDIR),
        _ => panic!("unknown name {name}"),
    }
}

/// Checks one entry against what its path says; `Err` describes a mismatch.
/// Counts versioned and in-place loads in `sh` when `count`.
fn check(e: &Entry, sh: &Shared, count: bool) -> Result<(), String> {
    let path = e.path_bytes();
    let (err, data) = (e.error(), e.data());
    let bad = |why: String| {
        Err(format!(
            "{}: {why} (error {err}, {} bytes)",
            String::from_utf8_lossy(path),
            data.len()
        ))
    };
    if err != 0 && !data.is_empty() {
        return bad("a failed entry holds data".into());
    }
    match expect_of(path) {
        Expect::Static(i, n) => {
            if n > MAX {
                if err != libc::EFBIG {
                    return bad(format!("{n} bytes > max_file_size must be EFBIG"));
                }
            } else if err != 0 {
                return bad("a regular file failed".into());
            } else if data != &content(i, n)[..] {
                return bad(format!("bytes differ from the {n} on disk"));
            }
        }
        Expect::Versioned(i) => {
            if err == libc::EFBIG {
                return Ok(());
            }
            if err != 0 {
                return bad("a versioned file failed".into());
            }
            if data.len() < 8 {
                return bad("shorter than any version".into());
            }
            let v = u64::from_le_bytes(data[..8].try_into().unwrap());
            if v > 1 << 32 || data != &versioned_bytes(i, v)[..] {
                return bad(format!("not version {v} whole"));
            }
            if count {
                sh.add(C_VERSIONED, 1);
            }
        }
        Expect::InPlace(i) => {
            if err == libc::EFBIG {
                return Ok(());
            }
            if err != 0 {
                return bad("an in-place file failed".into());
            }
            if data.len() > MAX || data != &inplace_pattern(i)[..data.len()] {
                let pat = inplace_pattern(i);
                let at = data
                    .iter()
                    .zip(pat.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                let zeros = data[at..].iter().take_while(|&&b| b == 0).count();
                return bad(format!(
                    "not a prefix of its pattern: first difference at byte {at}, {zeros} zero bytes from there"
                ));
            }
            if count {
                sh.add(C_INPLACE, 1);
            }
        }
        Expect::Errno(want) => {
            if err != want {
                return bad(format!("expected errno {want}"));
            }
        }
    }
    Ok(())
}

/// Writes `msg` to stderr with one system call (a forked child must not
/// take std's stdout/stderr locks, which another thread may have held at
/// the fork; and the harness's output capture does not reach children).
fn child_say(msg: &str) {
    let line = format!("soak: {msg}\n");
    // SAFETY: writing our own buffer to descriptor 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// A worker process: loads random paths until the loader goes away.
/// Returns its exit code.
fn worker_main(loader: &Loader, id: u32, paths: &[PathBuf], sh: &Shared, seed: u64) -> i32 {
    let w = match loader.worker(id) {
        Ok(w) => w,
        Err(e) => {
            child_say(&format!("worker {id}: worker(): {e}"));
            return EXIT_API_ERROR;
        }
    };
    let mut rng = Rng::new(seed);
    let mut held: Vec<Entry> = Vec::new();
    let mut in_flight = 0u32;
    let gone = |e: &asyncloader::Error| match e.kind() {
        ErrorKind::LoaderDead => Some(EXIT_LOADER_DEAD),
        ErrorKind::Shutdown => Some(EXIT_SHUTDOWN),
        _ => None,
    };
    loop {
        // Fill the queue (or part of it: the depth varies).
        let want = 1 + rng.below(QD as u64) as u32;
        while in_flight + (held.len() as u32) < want {
            let p = &paths[rng.below(paths.len() as u64) as usize];
            match w.request(p) {
                Ok(()) => {
                    in_flight += 1;
                    sh.add(C_REQUESTS, 1);
                }
                Err(e) if e.kind() == ErrorKind::QueueFull => break,
                Err(e) => {
                    if let Some(code) = gone(&e) {
                        return code;
                    }
                    child_say(&format!("worker {id}: request: {e}"));
                    return EXIT_API_ERROR;
                }
            }
        }
        if in_flight > 0 {
            match w.wait_get_timeout(HANG) {
                Ok(e) => {
                    in_flight -= 1;
                    if let Err(m) = check(&e, sh, true) {
                        sh.add(C_MISMATCH, 1);
                        child_say(&format!("worker {id}: MISMATCH {m}"));
                        return EXIT_MISMATCH;
                    }
                    let err = e.error();
                    if err == 0 {
                        sh.add(C_LOADED, 1);
                        sh.add(C_BYTES, e.len() as u64);
                    } else {
                        sh.add(C_ERRNO + (err as usize).min(199), 1);
                    }
                    held.push(e);
                }
                Err(e) => {
                    if let Some(code) = gone(&e) {
                        return code;
                    }
                    if e.kind() == ErrorKind::TimedOut {
                        child_say(&format!(
                            "worker {id}: HUNG: no entry in {HANG:?} with {in_flight} in flight"
                        ));
                        return EXIT_HUNG;
                    }
                    child_say(&format!("worker {id}: wait_get: {e}"));
                    return EXIT_API_ERROR;
                }
            }
        }
        // Release a random few, in random order, after checking that the
        // bytes did not change while held.
        let keep = rng.below(4) as usize;
        while held.len() > keep {
            let e = held.swap_remove(rng.below(held.len() as u64) as usize);
            if let Err(m) = check(&e, sh, false) {
                sh.add(C_MISMATCH, 1);
                child_say(&format!("worker {id}: CHANGED WHILE HELD {m}"));
                return EXIT_MISMATCH;
            }
            sh.add(C_RECHECKED, 1);
            e.release();
        }
    }
}

/// Rewrites the versioned and in-place files forever (until killed).
fn mutator_main(dir: &Path, n_versioned: u64, n_inplace: u64, seed: u64) -> i32 {
    use std::os::unix::fs::FileExt;
    let mut rng = Rng::new(seed);
    let mut version = vec![0u64; n_versioned as usize];
    let patterns: Vec<Vec<u8>> = (0..n_inplace).map(inplace_pattern).collect();
    loop {
        if rng.below(2) == 0 {
            let i = rng.below(n_versioned);
            version[i as usize] += 1;
            let tmp = dir.join(format!("tmp-v{i}"));
            std::fs::write(&tmp, versioned_bytes(i, version[i as usize])).unwrap();
            std::fs::rename(&tmp, dir.join(format!("v{i}"))).unwrap();
        } else {
            let i = rng.below(n_inplace);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join(format!("p{i}")))
                .unwrap();
            let cur = f.metadata().unwrap().len() as usize;
            let to = rng.below(INPLACE_MAX as u64 + 1) as usize;
            if to > cur {
                // Append the pattern's next bytes: what is there never
                // changes, only the length.
                f.write_all_at(&patterns[i as usize][cur..to], cur as u64)
                    .unwrap();
            } else {
                // Shrink to empty only: truncating inside a page-cache folio
                // zeroes its tail in place, which a concurrent read may copy
                // out (a page-cache effect every reader sees, not the
                // loader's). Folios are no longer one page: ext4 on 6.18
                // caches these files in folios of up to 128 KiB, and a
                // shrink to a 4 KiB boundary showed up as zeros from 64 KiB
                // on in a read.
                f.set_len(0).unwrap();
            }
        }
        std::thread::sleep(Duration::from_micros(500 + rng.below(1500)));
    }
}

/// Forks a child that runs `f` and `_exit`s with its result (a panic is
/// EXIT_PANIC); it never returns into the harness.
fn fork_child(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the test process may have other threads (the harness's), so
    // the child may only rely on what is fork-safe: it allocates (glibc's
    // malloc is reset for the child by its fork handlers), uses the loader's
    // shared memory, files and futexes, writes diagnostics with a single
    // write(2) instead of std's stdout/stderr locks, and `_exit`s without
    // running the parent's destructors or returning into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(EXIT_PANIC);
        // SAFETY: terminates the child at once.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// How a child ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exit(i32),
    Signal(i32),
}

fn wait_child(pid: libc::pid_t, block: bool) -> Option<End> {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, if block { 0 } else { libc::WNOHANG }) };
    if r == 0 {
        return None;
    }
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    Some(if libc::WIFEXITED(status) {
        End::Exit(libc::WEXITSTATUS(status))
    } else {
        End::Signal(libc::WTERMSIG(status))
    })
}

/// Waits up to `limit` for `pid`; kills it after that (and says so).
fn wait_child_for(pid: libc::pid_t, limit: Duration) -> (End, bool) {
    let t0 = Instant::now();
    loop {
        if let Some(end) = wait_child(pid, false) {
            return (end, true);
        }
        if t0.elapsed() > limit {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return (wait_child(pid, true).unwrap(), false);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn kill(pid: libc::pid_t) {
    // SAFETY: killing a child of ours (or the loader child we spawned).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

/// Counts of what this process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    fds: usize,
    tasks: usize,
    memfd_fds: usize,
    memfd_maps: usize,
}

fn held() -> Held {
    let fds: Vec<_> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|d| std::fs::read_link(d.ok()?.path()).ok())
        .collect();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    Held {
        fds: fds.len(),
        tasks: std::fs::read_dir("/proc/self/task").unwrap().count(),
        memfd_fds: fds
            .iter()
            .filter(|l| l.to_string_lossy().contains("memfd:asyncloader"))
            .count(),
        memfd_maps: maps
            .lines()
            .filter(|l| l.contains("memfd:asyncloader"))
            .count(),
    }
}

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Builds the tree; returns (paths, versioned count, in-place count).
fn make_tree(dir: &Path) -> (Vec<PathBuf>, u64, u64) {
    let mut paths = Vec::new();
    let mut rng = Rng::new(42);
    let mut sizes = vec![
        0,
        1,
        7,
        4095,
        4096,
        4097,
        65_536,
        MAX - 1,
        MAX,
        MAX + 1,
        3 * MAX,
    ];
    for _ in 0..150 {
        // Mostly small, some up to the limit.
        sizes.push(if rng.below(4) == 0 {
            rng.below(MAX as u64) as usize
        } else {
            rng.below(20_000) as usize
        });
    }
    for (i, &n) in sizes.iter().enumerate() {
        let p = dir.join(format!("s{i}_{n}"));
        std::fs::write(&p, content(i as u64, n)).unwrap();
        paths.push(p);
    }
    let (n_versioned, n_inplace) = (8u64, 8u64);
    for i in 0..n_versioned {
        let p = dir.join(format!("v{i}"));
        std::fs::write(&p, versioned_bytes(i, 0)).unwrap();
        // Listed twice: loaded as often as the odd cases together.
        paths.push(p.clone());
        paths.push(p);
    }
    for i in 0..n_inplace {
        let p = dir.join(format!("p{i}"));
        std::fs::write(&p, &inplace_pattern(i)[..4096 * i as usize]).unwrap();
        paths.push(p.clone());
        paths.push(p);
    }
    for i in 0..4 {
        paths.push(dir.join(format!("missing{i}")));
    }
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    paths.push(fifo.clone());
    paths.push(fifo);
    let sub = dir.join("dir");
    std::fs::create_dir(&sub).unwrap();
    paths.push(sub);
    (paths, n_versioned, n_inplace)
}

#[derive(Default)]
struct Tally {
    worker_kills: u64,
    reclaims: u64,
    reclaimed_entries: u64,
    loader_kills: u64,
    loaders: u64,
    worker_forks: u64,
    max_notice: Duration,
    max_reclaim: Duration,
    failures: Vec<String>,
}

/// Interprets how a worker ended: when the parent killed it, any signal
/// is expected; otherwise `want` is the only good exit code.
fn judge(t: &mut Tally, id: u32, end: End, want: i32, when: &str) {
    if end != End::Exit(want) {
        t.failures.push(format!(
            "worker {id} {when}: ended {end:?}, expected exit {want}"
        ));
    }
}

#[test]
#[ignore = "soak: minutes of load; run with --ignored (ASYNCLOADER_SOAK_SECS=N)"]
fn soak_workers_and_loader_killed_at_random() {
    let secs: u64 = std::env::var("ASYNCLOADER_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("ASYNCLOADER_SOAK_SECS: seconds"))
        .unwrap_or(30);
    let seed: u64 = std::env::var("ASYNCLOADER_SOAK_SEED")
        .ok()
        .map(|s| s.parse().expect("ASYNCLOADER_SOAK_SEED: a number"))
        .unwrap_or_else(clock_seed);
    let dir = tempfile::tempdir().unwrap();
    let (paths, n_versioned, n_inplace) = make_tree(dir.path());
    let sh = Shared::new();
    let mut rng = Rng::new(seed);

    let held0 = held();
    let rss0 = rss();

    let mutator = fork_child(|| mutator_main(dir.path(), n_versioned, n_inplace, seed ^ 1));
    let mut t = Tally::default();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut incarnation = 0u64;
    'loaders: loop {
        let cfg = Config {
            n_workers: WORKERS,
            queue_depth: QD,
            max_file_size: MAX as u64,
            loader_threads: 1 + (t.loaders % 2) as u32,
            dispatch_n: [1, 4, 8][(t.loaders % 3) as usize],
            ..Config::default()
        };
        let loader = Loader::new(cfg).unwrap();
        loader.spawn().unwrap();
        t.loaders += 1;
        let mut spawn_worker = |id: u32, t: &mut Tally| {
            incarnation += 1;
            t.worker_forks += 1;
            let s = seed ^ (incarnation << 20);
            let (l, p, sh) = (&loader, &paths, &sh);
            fork_child(move || worker_main(l, id, p, sh, s))
        };
        let mut pids: Vec<Option<libc::pid_t>> = (0..WORKERS)
            .map(|id| Some(spawn_worker(id, &mut t)))
            .collect();
        // This loader lives 2 to 8 seconds, unless the run ends first.
        let epoch_end = (Instant::now() + Duration::from_millis(2000 + rng.below(6000))).min(end);
        while Instant::now() < epoch_end {
            std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
            // A worker that ended by itself has failed.
            for id in 0..WORKERS {
                if let Some(pid) = pids[id as usize]
                    && let Some(e) = wait_child(pid, false)
                {
                    judge(&mut t, id, e, -1, "while running");
                    pids[id as usize] = None;
                }
            }
            let id = rng.below(WORKERS as u64) as u32;
            let Some(pid) = pids[id as usize] else {
                continue; // lost to a failed reclaim
            };
            kill(pid);
            let end_of = wait_child(pid, true).unwrap();
            if end_of != End::Signal(libc::SIGKILL) {
                judge(&mut t, id, end_of, -1, "before its kill");
            }
            t.worker_kills += 1;
            let r0 = Instant::now();
            // SAFETY: worker `id`'s only user, a child process, is dead.
            let r = unsafe { loader.reclaim_worker(id) };
            t.max_reclaim = t.max_reclaim.max(r0.elapsed());
            match r {
                Ok(n) => {
                    t.reclaims += 1;
                    t.reclaimed_entries += n as u64;
                    pids[id as usize] = Some(spawn_worker(id, &mut t));
                }
                Err(e) => {
                    // Worker `id` stays out of service for this loader.
                    t.failures.push(format!(
                        "reclaim_worker({id}) after a SIGKILL failed after {:?}: {e} (errno {})",
                        r0.elapsed(),
                        e.errno()
                    ));
                    pids[id as usize] = None;
                }
            }
        }
        let last = Instant::now() >= end;
        if last {
            // A clean shutdown: every worker ends with `Shutdown`.
            loader.shutdown().unwrap();
            for (id, pid) in pids.iter().enumerate() {
                if let Some(pid) = *pid {
                    let (e, in_time) = wait_child_for(pid, NOTICE);
                    if !in_time {
                        t.failures.push(format!("worker {id} ignored the shutdown"));
                    }
                    judge(&mut t, id as u32, e, EXIT_SHUTDOWN, "at shutdown");
                }
            }
        } else {
            // Kill the loader: every worker must notice in bounded time.
            let k0 = Instant::now();
            kill(loader.loader_pid());
            t.loader_kills += 1;
            for (id, pid) in pids.iter().enumerate() {
                if let Some(pid) = *pid {
                    let left = NOTICE.saturating_sub(k0.elapsed());
                    let (e, in_time) = wait_child_for(pid, left);
                    if !in_time {
                        t.failures.push(format!(
                            "worker {id} did not notice the loader's death in {NOTICE:?}"
                        ));
                    }
                    judge(
                        &mut t,
                        id as u32,
                        e,
                        EXIT_LOADER_DEAD,
                        "after the loader's kill",
                    );
                }
            }
            t.max_notice = t.max_notice.max(k0.elapsed());
            loader.shutdown().unwrap();
        }
        drop(loader);
        if last {
            break 'loaders;
        }
    }
    kill(mutator);
    assert_eq!(wait_child(mutator, true), Some(End::Signal(libc::SIGKILL)));
    let elapsed = start.elapsed();

    // Nothing left behind.
    std::thread::sleep(Duration::from_millis(50));
    let held1 = held();
    let rss1 = rss();
    // SAFETY: probing for any child, without blocking.
    let no_children = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } == -1
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);

    let mut errnos = BTreeMap::new();
    for e in 1..200 {
        let n = sh.get(C_ERRNO + e);
        if n > 0 {
            let name = match e as i32 {
                libc::ENOENT => "ENOENT".to_string(),
                libc::EISDIR => "EISDIR".to_string(),
                libc::EINVAL => "EINVAL".to_string(),
                libc::EFBIG => "EFBIG".to_string(),
                other => format!("errno {other}"),
            };
            errnos.insert(name, n);
        }
    }
    let report = format!(
        "soak {secs} s (ran {elapsed:.1?}, seed {seed}): {} requests, {} files loaded \
         ({:.1} MB), {} of them rewritten by rename, {} rewritten in place; \
         {} entries re-checked at release; errors by errno: {errnos:?}\n\
         worker kills {}, reclaims {} ({} entries back, slowest {:.1?}), worker forks {}, \
         loaders {}, loader kills survived {} (slowest notice by all workers {:.1?})\n\
         mismatches {}, failures {}\n\
         before/after: {held0:?} / {held1:?}, RSS {:.1} / {:.1} MiB, children left: {}",
        sh.get(C_REQUESTS),
        sh.get(C_LOADED),
        sh.get(C_BYTES) as f64 / 1e6,
        sh.get(C_VERSIONED),
        sh.get(C_INPLACE),
        sh.get(C_RECHECKED),
        t.worker_kills,
        t.reclaims,
        t.reclaimed_entries,
        t.max_reclaim,
        t.worker_forks,
        t.loaders,
        t.loader_kills,
        t.max_notice,
        sh.get(C_MISMATCH),
        t.failures.len(),
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        !no_children,
    );
    println!("{report}");
    for f in &t.failures {
        println!("FAILURE: {f}");
    }
    assert!(
        t.failures.is_empty() && sh.get(C_MISMATCH) == 0,
        "{report}\nfailures:\n  {}",
        t.failures.join("\n  ")
    );
    assert!(sh.get(C_LOADED) > 0, "nothing loaded: {report}");
    assert_eq!(
        held1, held0,
        "descriptors, threads or memfds left: {report}"
    );
    assert!(no_children, "a child process is left: {report}");
    assert!(
        rss1 < rss0 + 16 * 1024 * 1024,
        "resident memory grew by more than 16 MiB: {report}"
    );
}

/// A seed from the clock, printed in the report so a failing run can be
/// repeated with ASYNCLOADER_SOAK_SEED.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}
