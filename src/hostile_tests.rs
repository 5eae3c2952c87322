//! The shared region is untrusted input for the loader: a worker process
//! (same user, so it can map the region) that writes garbage over its rings,
//! its entries and the header must not crash the loader, hang it or another
//! worker, keep a core spinning, or make the loader write outside that
//! worker's own buffers. These tests play that worker from inside the crate,
//! where the layout is known.
//!
//! What a participant may legitimately change and is therefore not
//! scribbled here: the lifecycle words of the header (`state`,
//! `loader_pid`, `loader_threads_alive`, `loader_error`). Writing those is
//! what `shutdown` does, or what killing the loader does; any process of the
//! same user can do either anyway (README, "Trust model").

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::region::{EntryMeta, Header, Region, entry_state, state};
use crate::testkit::Rng;
use crate::{Config, Loader, Worker};

fn files(dir: &std::path::Path, n: usize) -> Vec<(PathBuf, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("f{i}"));
            let data: Vec<u8> = (0..(500 + i * 37) % 9000)
                .map(|j| (i * 31 + j * 7) as u8)
                .collect();
            std::fs::write(&p, &data).unwrap();
            (p, data)
        })
        .collect()
}

/// Loads every file through `w` and compares every byte.
fn load_and_check(w: &Worker, set: &[(PathBuf, Vec<u8>)]) {
    let mut next = 0;
    let mut done = 0;
    while done < set.len() {
        while next < set.len() && w.request(&set[next].0).is_ok() {
            next += 1;
        }
        let e = w.wait_get_timeout(Duration::from_secs(20)).expect("entry");
        let want = &set
            .iter()
            .find(|(p, _)| p.as_path() == e.path())
            .expect("a path we asked for")
            .1;
        assert_eq!(e.error(), 0, "{:?}", e.path());
        assert!(e.data() == &want[..], "{:?}: bytes differ", e.path());
        done += 1;
    }
}

/// Loader threads, which pop concurrently with the scribbling (the drive
/// these tests were written against; a worker's own driver pops the same
/// way, through the same checks: `drive`).
fn cfg(loader_threads: u32) -> Config {
    Config {
        n_workers: 4,
        queue_depth: 4,
        max_file_size: 16 << 10,
        loader_threads,
        drive: crate::Drive::Loader,
        ..Config::default()
    }
}

fn assert_loader_healthy(l: &Loader) {
    let h = l.region().header();
    assert_eq!(
        h.state.load(Ordering::Acquire),
        state::RUNNING,
        "loader state"
    );
    assert_eq!(
        h.loader_threads_alive.load(Ordering::Acquire),
        l.region().cfg().loader_threads,
        "a loader thread died"
    );
    assert_eq!(h.loader_error.load(Ordering::Acquire), 0, "loader error");
}

/// Shuts down in a helper thread: panics if it takes longer than `limit`
/// (it used to never return with a corrupt ring in threads mode).
fn shutdown_within(l: Arc<Loader>, limit: Duration) {
    let t0 = Instant::now();
    let h = std::thread::spawn(move || l.shutdown().unwrap());
    while !h.is_finished() {
        assert!(t0.elapsed() < limit, "shutdown took longer than {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    h.join().unwrap();
}

/// CPU ticks used by this process's loader threads (named al-loader-*).
fn loader_thread_ticks() -> u64 {
    let mut t = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("al-loader") {
            continue;
        }
        let s = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        if let Some(i) = s.rfind(')') {
            let f: Vec<&str> = s[i + 2..].split(' ').collect();
            t += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    t
}

/// One index pushed many times onto a request ring (it used to be loaded
/// into one buffer several times at once, overflow the completion ring and
/// panic every loader thread): only the real request is loaded, once.
#[test]
fn index_pushed_again_and_again_is_loaded_once() {
    let dir = tempfile::tempdir().unwrap();
    let set = files(dir.path(), 40);
    let l = Arc::new(Loader::new(cfg(2)).unwrap());
    l.start().unwrap();
    let w0 = l.worker(0).unwrap();
    w0.request(&set[0].0).unwrap();
    let r = l.region().worker(0);
    let mut pushed = 0;
    while pushed < 7 {
        // The worker's entry 0 (global index 0), again and again.
        if r.req.push(0).is_ok() {
            pushed += 1;
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let e = w0.wait_get_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(e.data(), &set[0].1[..]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(w0.try_get().is_none(), "delivered more than once");
    drop(e);
    // Everyone goes on.
    load_and_check(&l.worker(1).unwrap(), &set);
    load_and_check(&w0, &set[..8]);
    assert_loader_healthy(&l);
    shutdown_within(l, Duration::from_secs(5));
}

/// A sequence stamp no push could have written, in a request slot (it used
/// to keep every loader thread spinning at 100% and shutdown never
/// returned): the loader sleeps when idle, and shuts down promptly.
#[test]
fn bogus_stamp_in_a_request_slot_neither_spins_nor_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let set = files(dir.path(), 20);
    let l = Arc::new(Loader::new(cfg(2)).unwrap());
    l.start().unwrap();
    let (req, _, _) = l.region().slot_arrays(0);
    // Slot 0 claims a push from a later lap.
    req[0].store((77u64 << 32) | 3, Ordering::Release);
    load_and_check(&l.worker(1).unwrap(), &set);
    // Idle now: the loader threads must sleep, not spin over the slot.
    std::thread::sleep(Duration::from_millis(300));
    let t0 = loader_thread_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = loader_thread_ticks() - t0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used * 100 < hz * 20,
        "idle loader threads used {used} ticks of {hz} in 1 s"
    );
    // reclaim_worker rebuilds the corrupt ring, and the worker loads again.
    // SAFETY: no entry of worker 0 is held.
    unsafe { l.reclaim_worker(0) }.expect("reclaim repairs the ring");
    load_and_check(&l.worker(0).unwrap(), &set);
    assert_loader_healthy(&l);
    shutdown_within(l, Duration::from_secs(5));
}

/// The byte ranges of the region a broken worker 0 writes over: its
/// control block and ring slots, its entries' metadata and paths, its
/// buffers, and the header past the lifecycle words.
fn scribble_ranges(r: &Region) -> Vec<(usize, usize)> {
    let l = *r.layout();
    let qd = r.cfg().queue_depth as usize;
    let h = std::mem::offset_of!(Header, loader_parking);
    vec![
        (h, std::mem::size_of::<Header>()),
        (
            l.workers_off as usize,
            l.workers_off as usize + l.worker_stride as usize,
        ),
        (
            l.entries_off as usize,
            l.entries_off as usize + qd * l.entry_stride as usize,
        ),
        (
            l.buffers_off as usize,
            l.buffers_off as usize + qd * l.buf_size as usize,
        ),
    ]
}

/// Writes random words at random 8-aligned places of `ranges`, with atomic
/// stores (every participant accesses this memory atomically or through the
/// kernel), until `stop`. Between bursts it also acts like a worker that
/// pushes indices it does not own and requests, takes and releases entries.
fn scribble(r: &Region, w0: &Worker, seed: u64, stop: &AtomicBool) -> u64 {
    let (base, len) = r.raw_mapping();
    let ranges = scribble_ranges(r);
    let mut rng = Rng::new(seed);
    let mut writes = 0u64;
    let mut bursts = 0u64;
    let ring = r.worker(0);
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            let (a, b) = ranges[rng.below(ranges.len() as u64) as usize];
            let off = (a + rng.below((b - a) as u64 / 8) as usize * 8) & !7;
            assert!(off + 8 <= len);
            // Small values and near-miss stamps are likelier to pass a
            // check than uniform ones.
            let v = match rng.below(4) {
                0 => rng.next(),
                1 => rng.below(64),
                2 => (rng.below(64) << 32) | rng.below(64),
                _ => u64::MAX - rng.below(4),
            };
            // SAFETY: off + 8 <= len keeps the store inside the mapping,
            // off is 8-aligned in a page-aligned mapping, and every
            // participant accesses these words atomically (or, for paths
            // and buffers, through the kernel), as a foreign process would.
            unsafe { (*base.add(off).cast::<AtomicU64>()).store(v, Ordering::Relaxed) };
            writes += 1;
        }
        let _ = ring.req.push(rng.below(64) as u32);
        let _ = ring.comp.push(rng.below(64) as u32);
        let _ = ring.free.push(rng.below(8) as u32);
        bursts += 1;
        if bursts.is_multiple_of(64) {
            // A request into a corrupt ring waits up to RING_PATIENCE for a
            // consumer it takes to be mid-pop, then fails: not every burst.
            let _ = w0.request("/etc/hostname");
            if let Some(e) = w0.try_get() {
                e.release();
            }
        }
        std::thread::yield_now();
    }
    writes
}

/// A worker scribbling over its rings, entries, buffers and the header
/// while three others load: the loader survives, the others get every byte
/// right, an idle loader sleeps afterwards, and reclaim_worker repairs the
/// broken worker. The loader runs in its own process (`spawn`), as it would
/// for a hostile worker in another process.
#[test]
fn scribbling_worker_hurts_nobody_else() {
    for seed in [1u64, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let set = files(dir.path(), 300);
        let l = Arc::new(Loader::new(cfg(2)).unwrap());
        l.spawn().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let scribbler = {
            let (l, stop) = (l.clone(), stop.clone());
            std::thread::spawn(move || {
                let w0 = l.worker(0).unwrap();
                scribble(l.region(), &w0, seed, &stop)
            })
        };
        let t0 = Instant::now();
        let others: Vec<_> = (1..4)
            .map(|id| {
                let (w, set) = (l.worker(id).unwrap(), set.clone());
                std::thread::spawn(move || {
                    let mut rounds = 0;
                    while rounds < 2 || t0.elapsed() < Duration::from_millis(1500) {
                        load_and_check(&w, &set);
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        for o in others {
            assert!(o.join().expect("a well-behaved worker failed") >= 2);
        }
        stop.store(true, Ordering::Relaxed);
        let writes = scribbler.join().unwrap();
        assert!(writes > 1000, "seed {seed}: only {writes} writes");
        assert_loader_healthy(&l);
        // The loader process idles without burning a core.
        std::thread::sleep(Duration::from_millis(300));
        let pid = l.loader_pid();
        let ticks = |pid: i32| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split(' ').collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        };
        let c0 = ticks(pid);
        std::thread::sleep(Duration::from_secs(1));
        let used = ticks(pid) - c0;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert!(
            used * 100 < hz * 20,
            "seed {seed}: idle loader used {used} ticks of {hz} in 1 s"
        );
        // Repair: an entry whose state word was overwritten with LOADING
        // looks exactly like a file in flight, and reclaim refuses (Busy)
        // rather than hand out a buffer the kernel may still write. Make
        // the states plausible again, as a repaired worker would, then
        // reclaim: the worker loads correctly again.
        for e in 0..4 {
            l.region().entry(e).state.store(0, Ordering::Relaxed);
        }
        // SAFETY: no entry of worker 0 is held (the scribbler thread ended).
        unsafe { l.reclaim_worker(0) }.expect("reclaim of the scribbled worker");
        for e in 0..4 {
            let m: &EntryMeta = l.region().entry(e);
            assert_eq!(m.state.load(Ordering::Relaxed) as u32, entry_state::FREE);
        }
        load_and_check(&l.worker(0).unwrap(), &set[..20]);
        assert_loader_healthy(&l);
        shutdown_within(l, Duration::from_secs(5));
    }
}

/// With loader threads (no worker drives), the driver counters in a worker
/// block belong to nobody: a broken worker that leaves an odd ring epoch
/// and a live pid there must not make `reclaim_worker` wait for a pass
/// that no one is in.
#[test]
fn scribbled_driver_counters_do_not_block_reclaim_without_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let set = files(dir.path(), 40);
    let l = Arc::new(Loader::new(cfg(2)).unwrap());
    l.spawn().unwrap();
    load_and_check(&l.worker(0).unwrap(), &set);
    let block = l.region().worker(0).block;
    block.stats.ring_epoch.store(7, Ordering::SeqCst); // "in a pass"
    block.driver_pid.store(1, Ordering::SeqCst); // init: alive
    let t0 = Instant::now();
    // SAFETY: no entry of worker 0 is held.
    unsafe { l.reclaim_worker(0) }.expect("reclaim");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "reclaim waited {:?}",
        t0.elapsed()
    );
    load_and_check(&l.worker(0).unwrap(), &set);
    shutdown_within(l, Duration::from_secs(5));
}
