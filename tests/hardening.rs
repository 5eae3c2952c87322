//! Defects found by the hardening review (issue 9), one behaviour per test:
//! reclaiming a worker whose requests were never taken, reclaim racing
//! completions, entries inherited across fork, relative paths, idle batches
//! that must not spin, attach errors.

mod common;

use std::time::{Duration, Instant};

use asyncloader::{Config, ErrorKind, Loader};
use common::*;

fn cfg(n_workers: u32, queue_depth: u32) -> Config {
    Config {
        n_workers,
        queue_depth,
        max_file_size: 1 << 20,
        loader_threads: 2,
        ..Config::default()
    }
}

/// A worker process that queued requests and died before any loader took
/// them: reclaim returns at once with every slot, and the worker gets its
/// whole queue_depth back (it used to wait 10 s, fail with EBUSY, and leave
/// the queued slots lost forever).
#[test]
fn reclaim_takes_back_requests_no_loader_took() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[100; 8]);
    let loader = Loader::new(cfg(2, 8)).unwrap();
    let w0 = loader.worker(0).unwrap();
    let p4 = paths[..4].to_vec();
    let child = in_child(move || {
        for p in &p4 {
            w0.request(p).unwrap();
        }
    });
    assert!(child_ok(child));
    let t = Instant::now();
    // SAFETY: worker 0's only user (the child) is gone.
    assert_eq!(unsafe { loader.reclaim_worker(0) }.unwrap(), 4);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    loader.start().unwrap();
    let w0 = loader.worker(0).unwrap();
    for p in &paths {
        w0.request(p).expect("all 8 slots are free again");
    }
    for _ in 0..8 {
        check_entry(&w0.wait_get_timeout(Duration::from_secs(10)).unwrap());
    }
    assert!(w0.try_get().is_none(), "nothing delivered twice");
    loader.shutdown().unwrap();
}

/// The same with the loader running: requests waiting behind a full loader
/// window, files in flight and delivered entries are all taken back, and
/// afterwards the worker's rings hold each entry exactly once.
#[test]
fn reclaim_with_loads_in_flight_leaves_consistent_rings() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[3000; 16]);
    let r = Running::new(
        Config {
            ring_window: 1,
            loader_threads: 1,
            ..cfg(2, 16)
        },
        Mode::Threads,
    );
    for round in 0..200 {
        let w = r.worker(0);
        for p in &paths {
            w.request(p).unwrap();
        }
        // Hold a few delivered entries, as a dying worker would.
        let held: Vec<_> = (0..round % 4)
            .map(|_| w.wait_get_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        std::mem::forget(held);
        // SAFETY: the held entries were forgotten, never read again.
        let taken = unsafe { r.loader.reclaim_worker(0) }.unwrap();
        assert_eq!(taken, 16, "round {round}");
        assert_eq!(w.outstanding(), 0, "round {round}: all free");
        assert!(
            w.try_get().is_none(),
            "round {round}: completion ring empty"
        );
        // Every slot usable once, no slot twice.
        for p in &paths {
            w.request(p).unwrap();
        }
        assert_eq!(
            w.request(&paths[0]).unwrap_err().kind(),
            ErrorKind::QueueFull,
            "round {round}: exactly queue_depth slots"
        );
        let mut got = Vec::new();
        for _ in 0..16 {
            let e = w.wait_get_timeout(Duration::from_secs(10)).unwrap();
            check_entry(&e);
            got.push(e.raw_parts().0);
        }
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 16, "round {round}: distinct entries");
    }
    r.stop();
}

/// A child that inherited an entry across fork and drops it must not give
/// the parent's slot to another request: the parent's path and bytes stay
/// (a release in the child used to free the slot, and the child's next
/// request overwrote the parent's entry).
#[test]
fn entry_inherited_across_fork_stays_the_parents() {
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[5000, 7000]);
    let r = Running::new(cfg(1, 2), Mode::Process);
    let w = r.worker(0);
    w.request(&paths[0]).unwrap();
    let e = w.wait_get_timeout(Duration::from_secs(10)).unwrap();
    check_entry(&e);
    let bytes = e.data().to_vec();
    // SAFETY: the child runs only the closure below and then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(e); // the child's inherited copy: must not free the slot
            w.request(&paths[1]).unwrap();
            let e2 = w.wait_get_timeout(Duration::from_secs(10)).unwrap();
            check_entry(&e2);
            assert_eq!(e2.path(), paths[1].as_path());
            // Both slots are taken: the parent's is still held.
            assert_eq!(
                w.request(&paths[1]).unwrap_err().kind(),
                ErrorKind::QueueFull,
                "the parent's slot was freed by the child"
            );
        }))
        .is_ok();
        // SAFETY: leaves the child without running the harness's code.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    assert!(child_ok(pid));
    assert_eq!(e.path(), paths[0].as_path());
    assert_eq!(e.data(), &bytes[..]);
    check_entry(&e);
    e.release();
    assert_eq!(w.outstanding(), 0);
    r.stop();
}

/// A relative path resolves against the requesting process's working
/// directory at request time, not the loader's; the entry reports it as
/// given.
#[test]
fn relative_path_resolves_in_the_requesters_directory() {
    let here = tempfile::tempdir().unwrap();
    let there = tempfile::tempdir().unwrap();
    std::fs::write(here.path().join("rel.txt"), b"requester's file").unwrap();
    std::fs::write(
        there.path().join("rel.txt"),
        b"loader's file, a different one",
    )
    .unwrap();
    let loader = Loader::new(cfg(1, 4)).unwrap();
    let w = loader.worker(0).unwrap();
    let (here_p, there_p) = (here.path().to_owned(), there.path().to_owned());
    // The loader process runs in `there`.
    let pid = in_child({
        let l = &loader;
        move || {
            std::env::set_current_dir(&there_p).unwrap();
            l.become_loader().unwrap();
        }
    });
    let child = in_child(move || {
        std::env::set_current_dir(&here_p).unwrap();
        w.request("rel.txt").unwrap();
        // The directory changes after the request: the request already
        // names the file it meant.
        std::env::set_current_dir("/").unwrap();
        let e = w.wait_get_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(e.error(), 0);
        assert_eq!(e.data(), b"requester's file");
        assert_eq!(e.path(), std::path::Path::new("rel.txt"));
    });
    let ok = child_ok(child);
    loader.shutdown().unwrap();
    assert!(child_ok(pid), "loader process");
    assert!(ok, "relative path loaded the loader's file or failed");
}

/// A relative path that cannot be stored with its resolved form is refused
/// with ENAMETOOLONG, never truncated.
#[test]
fn relative_path_too_long_with_cwd_is_refused() {
    let loader = Loader::new(cfg(1, 4)).unwrap();
    let w = loader.worker(0).unwrap();
    let long = "a/".repeat(2040) + "f";
    let e = w.request(&long).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PathTooLong);
    assert_eq!(w.outstanding(), 0);
}

/// Utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A partial batch waiting for a large idle_iters keeps no core busy (it
/// used to spin at 100% for up to 43 s with idle_iters = u32::MAX, which is
/// now refused).
#[test]
fn waiting_partial_batch_does_not_spin() {
    assert_eq!(
        Loader::new(Config {
            idle_iters: u32::MAX,
            ..cfg(1, 4)
        })
        .unwrap_err()
        .kind(),
        ErrorKind::InvalidConfig
    );
    let dir = tempfile::tempdir().unwrap();
    let paths = make_files(dir.path(), &[100, 100]);
    let r = Running::new(
        Config {
            dispatch_n: 64,
            idle_iters: asyncloader::config::limits::MAX_IDLE_ITERS,
            loader_threads: 1,
            ..cfg(1, 4)
        },
        Mode::Process,
    );
    let w = r.worker(0);
    w.request(&paths[0]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let pid = r.loader.loader_pid();
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(1000));
    let used = cpu_ticks(pid) - t0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used * 100 < hz * 30,
        "loader used {used} ticks of {hz} in 1 s while a batch waited"
    );
    // The batch still goes out, after idle_iters sleeping passes.
    let e = w.wait_get_timeout(Duration::from_secs(30)).unwrap();
    check_entry(&e);
    r.stop();
}

/// Attaching with the name of a live process but a descriptor it does not
/// have is a bad name (EINVAL), not a dead loader (EOWNERDEAD).
#[test]
fn attach_with_wrong_descriptor_is_invalid_argument() {
    let name = format!("asyncloader-{}-99999-{:016x}", std::process::id(), 1);
    let e = Loader::attach(&name).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let dead = format!("asyncloader-{}-3-{:016x}", i32::MAX - 1, 1);
    assert_eq!(
        Loader::attach(&dead).unwrap_err().kind(),
        ErrorKind::LoaderDead
    );
}
