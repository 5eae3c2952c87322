//! Random sequences of C-ABI calls (a deterministic fuzzer): requests of
//! good, bad, missing, huge, too-long and non-UTF-8 paths, try_get,
//! wait_get with timeouts, releases in random order and double releases,
//! batch calls, stale handles. After every call the test checks the result
//! code against a model, and every loaded byte against the file on disk.
//!
//! Seeds: `AL_FUZZ_SEEDS=N` runs N seeds (default 6), `AL_FUZZ_SEED=S` one.

mod common;

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::ptr;

use asyncloader::ffi::entry::*;
use asyncloader::ffi::loader::*;
use asyncloader::ffi::worker::*;
use asyncloader::ffi::{al_config, al_entry};
use common::*;

const MAX: u64 = 50_000;

/// What a request of a path must give.
#[derive(Clone, Debug)]
enum Expect {
    Bytes(Vec<u8>),
    Errno(i32),
}

fn run_seed(seed: u64) {
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    // The corpus: files of random sizes (some at and over the limit), a
    // directory, a missing name, a non-UTF-8 name.
    let mut corpus: Vec<(Vec<u8>, Expect)> = Vec::new();
    let sizes: Vec<usize> = (0..24)
        .map(|i| match i {
            0 => 0,
            1 => MAX as usize,
            2 => MAX as usize + 1,
            _ => rng.below(MAX) as usize,
        })
        .collect();
    for p in make_files(dir.path(), &sizes) {
        let data = std::fs::read(&p).unwrap();
        let e = if data.len() as u64 > MAX {
            Expect::Errno(libc::EFBIG)
        } else {
            Expect::Bytes(data)
        };
        corpus.push((p.as_os_str().as_bytes().to_vec(), e));
    }
    let mut odd = dir.path().as_os_str().as_bytes().to_vec();
    odd.extend_from_slice(b"/caf\xe9\xff.bin");
    std::fs::write(
        PathBuf::from(std::ffi::OsStr::from_bytes(&odd)),
        b"latin-1 name",
    )
    .unwrap();
    corpus.push((odd, Expect::Bytes(b"latin-1 name".to_vec())));
    corpus.push((
        dir.path().as_os_str().as_bytes().to_vec(),
        Expect::Errno(libc::EISDIR),
    ));
    let mut missing = dir.path().as_os_str().as_bytes().to_vec();
    missing.extend_from_slice(b"/missing");
    corpus.push((missing, Expect::Errno(libc::ENOENT)));
    let expect: HashMap<Vec<u8>, Expect> = corpus.iter().cloned().collect();

    let qd = 1 + rng.below(6) as u32;
    // SAFETY: (whole test) every pointer passed below is either NULL on
    // purpose, a handle returned by the library and not freed, or a local
    // that outlives the call; the library checks the rest.
    unsafe {
        let mut cfg = std::mem::zeroed::<al_config>();
        cfg.struct_size = std::mem::size_of::<al_config>() as u32;
        assert_eq!(al_config_default(&mut cfg), 0);
        cfg.queue_depth = qd;
        cfg.max_file_size = MAX;
        cfg.n_workers = 2;
        cfg.loader_threads = 1 + rng.below(2) as u32;
        cfg.dispatch_n = 1 + rng.below(4) as u32;
        cfg.idle_iters = rng.below(50) as u32;
        cfg.direct = rng.below(4) as usize == 0;
        let mut l = ptr::null_mut();
        assert_eq!(al_loader_new(&cfg, &mut l), 0);
        let rc = if rng.below(2) as usize == 0 {
            al_loader_start(l)
        } else {
            al_loader_spawn(l)
        };
        assert_eq!(rc, 0);
        let mut w = ptr::null_mut();
        assert_eq!(al_loader_worker(l, (seed % 2) as u32, &mut w), 0);

        let mut outstanding = 0u32; // requested, not yet received
        let mut held: Vec<*mut al_entry> = Vec::new();
        let mut released: Vec<*mut al_entry> = Vec::new();
        let steps = if cfg!(debug_assertions) { 1500 } else { 5000 };
        for _ in 0..steps {
            let in_use = outstanding + held.len() as u32;
            match rng.below(10) as usize {
                0..=2 => {
                    let (path, _) = &corpus[rng.below(corpus.len() as u64) as usize];
                    let rc = al_worker_request_bytes(w, path.as_ptr(), path.len());
                    if in_use < qd {
                        assert_eq!(rc, 0);
                        outstanding += 1;
                    } else {
                        assert_eq!(rc, -libc::EAGAIN, "queue of {qd} is full");
                    }
                }
                3 => {
                    // Paths that never queue.
                    let long = vec![b'a'; 4096 + rng.below(100) as usize];
                    assert_eq!(
                        al_worker_request_bytes(w, long.as_ptr(), long.len()),
                        -libc::ENAMETOOLONG
                    );
                    assert_eq!(
                        al_worker_request_bytes(w, b"a\0b".as_ptr(), 3),
                        -libc::EINVAL
                    );
                    assert_eq!(al_worker_request_bytes(w, b"".as_ptr(), 0), -libc::EINVAL);
                    assert_eq!(al_worker_request(w, ptr::null()), -libc::EINVAL);
                }
                4..=6 => {
                    let mut e = ptr::null_mut();
                    // Waits are short when nothing is outstanding (they
                    // must time out) and long enough otherwise.
                    let timeout = if outstanding == 0 {
                        1_000_000
                    } else {
                        5_000_000_000
                    };
                    let rc = if rng.below(2) as usize == 0 {
                        al_worker_try_get(w, &mut e)
                    } else {
                        al_worker_wait_get(w, timeout, &mut e)
                    };
                    if rc == 0 {
                        assert!(outstanding > 0, "an entry nobody requested");
                        outstanding -= 1;
                        let path = std::slice::from_raw_parts(
                            al_entry_path(e).cast::<u8>(),
                            al_entry_path_len(e),
                        );
                        match &expect[path] {
                            Expect::Bytes(b) => {
                                assert_eq!(al_entry_error(e), 0);
                                assert_eq!(al_entry_size(e), b.len());
                                let d = if b.is_empty() {
                                    &[][..]
                                } else {
                                    std::slice::from_raw_parts(al_entry_data(e), b.len())
                                };
                                assert!(
                                    d == &b[..],
                                    "bytes of {:?}",
                                    String::from_utf8_lossy(path)
                                );
                            }
                            Expect::Errno(errno) => {
                                assert_eq!(al_entry_error(e), *errno);
                                assert_eq!(al_entry_size(e), 0);
                            }
                        }
                        held.push(e);
                    } else {
                        assert!(rc == -libc::EAGAIN || rc == -libc::ETIMEDOUT, "get: {rc}");
                    }
                }
                7 | 8 if !held.is_empty() => {
                    let e = held.swap_remove(rng.below(held.len() as u64) as usize);
                    assert_eq!(al_entry_release(e), 0);
                    released.push(e);
                }
                9 if !released.is_empty() && rng.below(4) as usize == 0 => {
                    // A stale handle: released, maybe reused since. Using it
                    // again must not crash; releasing it again is harmless.
                    let e = released[rng.below(released.len() as u64) as usize];
                    let _ = al_entry_error(e);
                    let _ = al_entry_size(e);
                    if !held.contains(&e) {
                        assert_eq!(al_entry_release(e), -libc::EINVAL);
                    }
                }
                _ => {
                    let batch: Vec<CString> = (0..rng.below(4) as usize)
                        .map(|_| {
                            let (p, _) = &corpus[rng.below(corpus.len() as u64) as usize];
                            CString::new(p.clone()).unwrap()
                        })
                        .collect();
                    let ptrs: Vec<*const libc::c_char> = batch.iter().map(|c| c.as_ptr()).collect();
                    let mut accepted = 0usize;
                    let rc = al_worker_request_many(w, ptrs.as_ptr(), ptrs.len(), &mut accepted);
                    let room = (qd - (outstanding + held.len() as u32)) as usize;
                    assert_eq!(accepted, ptrs.len().min(room), "rc {rc}");
                    outstanding += accepted as u32;
                }
            }
            assert_eq!(al_worker_outstanding(w), outstanding + held.len() as u32);
        }
        // Drain, release all, and the worker is back to empty.
        while outstanding > 0 {
            let mut e = ptr::null_mut();
            assert_eq!(al_worker_wait_get(w, 10_000_000_000, &mut e), 0);
            outstanding -= 1;
            held.push(e);
        }
        for e in held.drain(..) {
            assert_eq!(al_entry_release(e), 0);
        }
        assert_eq!(al_worker_outstanding(w), 0);
        assert_eq!(al_loader_shutdown(l), 0);
        let mut e = ptr::null_mut();
        assert_eq!(
            al_worker_request(w, c"/etc/hostname".as_ptr()),
            -libc::ESHUTDOWN
        );
        assert_eq!(al_worker_try_get(w, &mut e), -libc::ESHUTDOWN);
        al_worker_free(w);
        al_loader_free(l);
    }
}

#[test]
fn random_c_abi_call_sequences() {
    if let Ok(s) = std::env::var("AL_FUZZ_SEED") {
        return run_seed(s.parse().unwrap());
    }
    let n: u64 = std::env::var("AL_FUZZ_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    for seed in 1..=n {
        run_seed(seed);
    }
}
