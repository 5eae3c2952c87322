//! Byte ranges, files larger than a buffer and destination memory
//! (`Worker::request_range`, `Worker::request_into`), on both backends and
//! both ways of driving the loads: every byte compared with `pread` of the
//! same file, and every bad input answered with its errno, nothing written
//! where it should not be.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use asyncloader::{ARENA, BackendKind, Config, Dest, Drive, Entry, ErrorKind, Worker};
use common::*;

const BACKENDS: [BackendKind; 2] = [BackendKind::IoUring, BackendKind::Threads];
const DRIVES: [Drive; 2] = [Drive::Loader, Drive::Worker];

fn cfg(backend: BackendKind, drive: Drive, direct: bool) -> Config {
    Config {
        backend,
        drive,
        direct,
        loader_threads: 1,
        queue_depth: 16,
        max_file_size: 64 << 10,
        arena_size: 8 << 20,
        ..Config::default()
    }
}

fn wait(w: &Worker) -> Entry {
    w.wait_get_timeout(Duration::from_secs(30)).unwrap()
}

/// What `pread` gives for `len` bytes at `off` (short at end of file).
fn pread(path: &Path, off: u64, len: u64) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    let mut got = 0usize;
    while got < buf.len() {
        let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    buf
}

fn data_file(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content(seed, len)).unwrap();
    p
}

/// Ranges inside, across the end of, and past the end of a file, of length
/// 0 to `max_file_size`, at aligned and odd offsets.
fn ranges(file_len: u64, max: u64) -> Vec<(u64, u64)> {
    let mut v = vec![
        (0, 0),
        (0, 1),
        (0, file_len.min(max)),
        (1, 4095),
        (4095, 2),
        (4096, 4096),
        (file_len - 1, 1),
        (file_len - 10, 100),
        (file_len, 10),
        (file_len + 5000, 10),
        (12345, max),
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % (file_len + 100);
        let len = (x >> 20) % (max + 1);
        v.push((off, len));
    }
    v
}

#[test]
fn ranges_match_pread_on_both_backends_and_drives() {
    let dir = tempfile::tempdir().unwrap();
    let file_len = 300_001u64;
    let path = data_file(dir.path(), "data", file_len as usize, 7);
    for backend in BACKENDS {
        for drive in DRIVES {
            for direct in [false, true] {
                let c = cfg(backend, drive, direct);
                let want = ranges(file_len, c.max_file_size);
                let r = Running::new(c, Mode::Threads);
                let w = r.worker(0);
                // A window of requests: many ranges of one file in flight.
                let mut next = 0;
                let mut got = 0;
                while got < want.len() {
                    while next < want.len() {
                        let (off, len) = want[next];
                        match w.request_range_tagged(
                            path.as_os_str().as_encoded_bytes(),
                            off,
                            len,
                            next as u64,
                        ) {
                            Ok(()) => next += 1,
                            Err(e) if e.kind() == ErrorKind::QueueFull => break,
                            Err(e) => panic!("request: {e}"),
                        }
                    }
                    let e = wait(&w);
                    let (off, len) = want[e.tag() as usize];
                    let ctx = format!("{backend:?} {drive:?} direct={direct} range {off}+{len}");
                    assert_eq!(e.error(), 0, "{ctx}");
                    assert_eq!(e.offset(), off, "{ctx}");
                    assert_eq!(e.dest(), None);
                    let exp = pread(&path, off, len);
                    assert_eq!(e.len(), exp.len(), "{ctx}: length");
                    assert!(e.data() == &exp[..], "{ctx}: bytes differ");
                    e.release();
                    got += 1;
                }
                if direct {
                    // The aligned span around each range was read direct.
                    assert!(r.loader.stats().direct_reads > 0, "{backend:?} {drive:?}");
                }
                // Whole files still load as before beside ranges.
                w.request(&path).unwrap();
                let e = wait(&w);
                assert_eq!(e.error(), libc::EFBIG, "whole file over max_file_size");
                e.release();
                r.stop();
            }
        }
    }
}

/// A file several times larger than `max_file_size` loads whole into the
/// arena and into registered memory, in one request each, byte-exact; the
/// bytes around the destination span stay as they were.
#[test]
fn large_ranges_load_into_the_arena_and_registered_memory() {
    let dir = tempfile::tempdir().unwrap();
    let file_len = 5_000_003u64;
    let path = data_file(dir.path(), "big", file_len as usize, 11);
    let disk = std::fs::read(&path).unwrap();
    let bytes = path.as_os_str().as_encoded_bytes();
    for backend in BACKENDS {
        for drive in DRIVES {
            for direct in [false, true] {
                let ctx = format!("{backend:?} {drive:?} direct={direct}");
                let r = Running::new(cfg(backend, drive, direct), Mode::Threads);
                let w = r.worker(0);
                // The arena: the whole file at an aligned offset, then a
                // range at an odd offset, around a sentinel.
                let (base, alen) = r.loader.arena();
                assert_eq!(alen, 8 << 20);
                // SAFETY: the arena is ours; no load is in flight.
                unsafe { std::ptr::write_bytes(base, 0xA5, alen) };
                // SAFETY: nothing else touches the destination spans until
                // their entries are released.
                unsafe {
                    w.request_into(
                        bytes,
                        0,
                        file_len,
                        Dest {
                            mem: ARENA,
                            offset: 4096,
                        },
                        1,
                    )
                    .unwrap()
                };
                let e = wait(&w);
                assert_eq!(e.error(), 0, "{ctx}");
                assert_eq!(
                    e.dest(),
                    Some(Dest {
                        mem: ARENA,
                        offset: 4096
                    })
                );
                assert_eq!(e.len(), disk.len(), "{ctx}");
                assert!(e.data() == &disk[..], "{ctx}: bytes differ");
                assert_eq!(e.data().as_ptr() as usize, base as usize + 4096);
                e.release();
                // SAFETY: as above.
                let arena = unsafe { std::slice::from_raw_parts(base, alen) };
                assert!(arena[..4096].iter().all(|&b| b == 0xA5), "{ctx}: before");
                let end = 4096 + disk.len();
                assert!(arena[end..].iter().all(|&b| b == 0xA5), "{ctx}: after");
                // An odd range past the end: short.
                // SAFETY: as above.
                unsafe {
                    w.request_into(
                        bytes,
                        4_000_001,
                        3_000_000,
                        Dest {
                            mem: ARENA,
                            offset: 3,
                        },
                        2,
                    )
                    .unwrap()
                };
                let e = wait(&w);
                assert_eq!(e.error(), 0, "{ctx}");
                assert_eq!(e.offset(), 4_000_001);
                assert!(e.data() == &disk[4_000_001..], "{ctx}: odd range");
                e.release();

                if direct {
                    // A length rounded up to the alignment (the arena has
                    // the room) reads direct; the entry has the file's size.
                    let before = r.loader.stats().direct_reads;
                    let len = file_len.div_ceil(4096) * 4096;
                    // SAFETY: as above.
                    unsafe {
                        w.request_into(
                            bytes,
                            0,
                            len,
                            Dest {
                                mem: ARENA,
                                offset: 8192,
                            },
                            4,
                        )
                        .unwrap()
                    };
                    let e = wait(&w);
                    assert_eq!(e.error(), 0, "{ctx}");
                    assert!(e.data() == &disk[..], "{ctx}: direct bytes differ");
                    e.release();
                    assert!(r.loader.stats().direct_reads > before, "{ctx}: not direct");
                }
                // Registered memory of this process (loads run here: loader
                // threads started here, or this worker driving).
                let mut mine = vec![0x5Au8; file_len as usize + 100];
                // SAFETY: `mine` outlives the loader's use of it (the loader
                // is shut down below, before `mine` is dropped).
                let id =
                    unsafe { r.loader.register_memory(mine.as_mut_ptr(), mine.len()) }.unwrap();
                assert!(id >= 1);
                // SAFETY: nothing reads `mine` until the entry is released.
                unsafe {
                    w.request_into(
                        bytes,
                        0,
                        file_len,
                        Dest {
                            mem: id,
                            offset: 50,
                        },
                        3,
                    )
                    .unwrap()
                };
                let e = wait(&w);
                assert_eq!(e.error(), 0, "{ctx}");
                assert_eq!(e.len(), disk.len());
                e.release();
                assert!(mine[..50].iter().all(|&b| b == 0x5A), "{ctx}");
                assert!(
                    mine[50..50 + disk.len()] == disk[..],
                    "{ctx}: registered bytes"
                );
                assert!(mine[50 + disk.len()..].iter().all(|&b| b == 0x5A), "{ctx}");
                r.stop();
                drop(mine);
            }
        }
    }
}

/// Bad input: a clear error at the request, or on the entry, and nothing
/// written where it should not be; no hang.
#[test]
fn bad_ranges_and_destinations_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = data_file(dir.path(), "f", 100_000, 3);
    let bytes = path.as_os_str().as_encoded_bytes();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for backend in BACKENDS {
        for drive in DRIVES {
            let ctx = format!("{backend:?} {drive:?}");
            let c = cfg(backend, drive, false);
            let max = c.max_file_size;
            let r = Running::new(c, Mode::Threads);
            let w = r.worker(0);
            let (base, alen) = r.loader.arena();
            // SAFETY: the arena is ours; no load is in flight.
            unsafe { std::ptr::write_bytes(base, 0xC3, alen) };
            let untouched = || {
                // SAFETY: no load into the arena is in flight.
                let a = unsafe { std::slice::from_raw_parts(base, alen) };
                assert!(a.iter().all(|&b| b == 0xC3), "{ctx}: arena written");
            };
            let kind = |e: asyncloader::Error| (e.kind(), e.errno());
            // Overflowing offset + length.
            let e = w.request_range_tagged(bytes, u64::MAX, 2, 0).unwrap_err();
            assert_eq!(kind(e).1, libc::EINVAL, "{ctx}");
            let e = w
                .request_range_tagged(bytes, i64::MAX as u64, 1, 0)
                .unwrap_err();
            assert_eq!(kind(e).1, libc::EINVAL, "{ctx}");
            // Longer than an entry's buffer, without a destination.
            let e = w.request_range_tagged(bytes, 0, max + 1, 0).unwrap_err();
            assert_eq!(e.errno(), libc::EFBIG, "{ctx}");
            // Destinations outside their memory, or no memory at all.
            let d = |mem, offset| Dest { mem, offset };
            for (dest, len) in [
                (d(ARENA, alen as u64 - 10), 11),
                (d(ARENA, u64::MAX), 1),
                (d(ARENA, 0), alen as u64 + 1),
                (d(7, 0), 10),
                (d(u32::MAX - 1, 0), 10),
            ] {
                // SAFETY: refused before anything is queued.
                let e = unsafe { w.request_into(bytes, 0, len, dest, 0) }.unwrap_err();
                assert_eq!(e.errno(), libc::EINVAL, "{ctx}: {dest:?} + {len}");
            }
            assert_eq!(w.outstanding(), 0, "{ctx}: a refused request took an entry");
            untouched();
            // What fails on the entry: missing, directory, FIFO (no hang).
            for (p, errno) in [
                (dir.path().join("missing"), libc::ENOENT),
                (dir.path().to_path_buf(), libc::EISDIR),
                (fifo.clone(), libc::EINVAL),
            ] {
                w.request_range(&p, 0, 10).unwrap();
                let e = wait(&w);
                assert_eq!(e.error(), errno, "{ctx}: range of {p:?}");
                assert!(e.data().is_empty());
                e.release();
                // SAFETY: nothing else touches the arena meanwhile.
                unsafe {
                    w.request_into(p.as_os_str().as_encoded_bytes(), 0, 10, d(ARENA, 0), 0)
                        .unwrap()
                };
                let e = wait(&w);
                assert_eq!(e.error(), errno, "{ctx}: into, of {p:?}");
                e.release();
            }
            untouched();
            // A full queue refuses ranges like whole files.
            for _ in 0..16 {
                w.request_range(&path, 0, 10).unwrap();
            }
            let e = w.request_range(&path, 0, 10).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::QueueFull, "{ctx}");
            for _ in 0..16 {
                let e = wait(&w);
                assert_eq!(e.len(), 10);
                e.release();
            }
            r.stop();
        }
    }
}

/// A file that shrinks while ranges of it load: each entry holds what the
/// reads found (a prefix of the range, all of it equal to the file's bytes
/// before or after the truncation), never an error or a hang.
#[test]
fn shrinking_file_under_range_requests() {
    const SHRUNK: usize = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let path = data_file(dir.path(), "shrinks", 4_000_000, 5);
    let disk = std::fs::read(&path).unwrap();
    let bytes = path.as_os_str().as_encoded_bytes().to_vec();
    for backend in BACKENDS {
        std::fs::write(&path, &disk).unwrap();
        let r = Running::new(cfg(backend, Drive::Loader, false), Mode::Threads);
        let w = r.worker(0);
        let t = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(2));
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(SHRUNK as u64).unwrap();
            })
        };
        for round in 0..2 {
            // SAFETY: nothing else touches the arena meanwhile.
            unsafe {
                w.request_into(
                    &bytes,
                    0,
                    disk.len() as u64,
                    Dest {
                        mem: ARENA,
                        offset: 0,
                    },
                    0,
                )
                .unwrap()
            };
            for k in 0..8u64 {
                w.request_range_tagged(&bytes, k * 400_000, 60_000, k + 1)
                    .unwrap();
            }
            for _ in 0..9 {
                let e = wait(&w);
                assert_eq!(e.error(), 0, "{backend:?} round {round}");
                let off = e.offset() as usize;
                let n = e.len();
                // Truncation zeroes the rest of the page-cache folio that
                // holds the new end before the pages go: a read racing with
                // it may copy zeros there (so does pread). Below the new
                // size every byte is the file's.
                let bad = (0..n).find(|&i| {
                    let got = e.data()[i];
                    got != disk[off + i] && !(off + i >= SHRUNK && got == 0)
                });
                assert_eq!(bad, None, "{backend:?}: range {off}+{n} differs");
                e.release();
            }
        }
        t.join().unwrap();
        r.stop();
    }
}

/// Registered memory is an address in the registering process: a worker
/// of a loader process (`spawn`) cannot use it (`EXDEV`), while the arena,
/// shared by both processes, works.
#[test]
fn registered_memory_needs_the_loads_in_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = data_file(dir.path(), "f", 50_000, 9);
    let disk = std::fs::read(&path).unwrap();
    let bytes = path.as_os_str().as_encoded_bytes();
    let r = Running::new(
        Config {
            drive: Drive::Loader,
            ..cfg(BackendKind::Auto, Drive::Loader, false)
        },
        Mode::Process,
    );
    let w = r.worker(0);
    let mut mine = vec![0u8; 100_000];
    // SAFETY: `mine` outlives the loader (shut down below).
    let id = unsafe { r.loader.register_memory(mine.as_mut_ptr(), mine.len()) }.unwrap();
    // SAFETY: refused before anything is queued.
    let e =
        unsafe { w.request_into(bytes, 0, 50_000, Dest { mem: id, offset: 0 }, 0) }.unwrap_err();
    assert_eq!(e.errno(), libc::EXDEV, "{e}");
    // SAFETY: nothing else touches the arena meanwhile.
    unsafe {
        w.request_into(
            bytes,
            0,
            50_000,
            Dest {
                mem: ARENA,
                offset: 0,
            },
            0,
        )
        .unwrap()
    };
    let e = wait(&w);
    assert_eq!(e.error(), 0);
    assert!(e.data() == &disk[..]);
    e.release();
    // SAFETY: no load into it was ever queued.
    unsafe { r.loader.unregister_memory(id) }.unwrap();
    // SAFETY: as above.
    let e = unsafe { w.request_into(bytes, 0, 10, Dest { mem: id, offset: 0 }, 0) }.unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    r.stop();
    assert!(mine.iter().all(|&b| b == 0));
}

/// Registrations of a process that died are taken over: 16 made by a child
/// that exits without unregistering do not use the table up.
#[test]
fn registrations_of_a_dead_process_are_reused() {
    let r = Running::new(cfg(BackendKind::Auto, Drive::Loader, false), Mode::Threads);
    let l = r.loader.clone();
    let pid = in_child(move || {
        let mut mem = vec![0u8; 4096];
        for _ in 0..16 {
            // SAFETY: never used for a load (the child exits).
            unsafe { l.register_memory(mem.as_mut_ptr(), mem.len()) }.unwrap();
        }
        // SAFETY: as above.
        let e = unsafe { l.register_memory(mem.as_mut_ptr(), mem.len()) }.unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC);
    });
    assert!(child_ok(pid));
    let mut mine = vec![0u8; 4096];
    for _ in 0..16 {
        // SAFETY: `mine` outlives the loader's use of it (none).
        unsafe { r.loader.register_memory(mine.as_mut_ptr(), mine.len()) }.unwrap();
    }
    r.stop();
}

/// Ranges hammered from several processes at once (one worker each,
/// forked after the loader started in a loader process): random ranges of
/// several files, into entry buffers and into each process's own part of
/// the arena, every byte compared with `pread`, on both backends.
#[test]
fn ranges_from_several_processes_match_pread() {
    const PROCS: u32 = 3;
    const PER_PROC: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..4)
        .map(|i| {
            data_file(
                dir.path(),
                &format!("f{i}"),
                200_000 + i * 77_777,
                20 + i as u64,
            )
        })
        .collect();
    for backend in BACKENDS {
        let r = Running::new(
            Config {
                n_workers: PROCS,
                ..cfg(backend, Drive::Loader, false)
            },
            Mode::Process,
        );
        let part = r.loader.arena().1 as u64 / PROCS as u64;
        let pids: Vec<_> = (0..PROCS)
            .map(|k| {
                let w = r.worker(k);
                let files = files.clone();
                in_child(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (k as u64 + 1);
                    let mut rnd = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x
                    };
                    // Each in-flight request into the arena gets its own
                    // slot of this process's part (completions come in any
                    // order: slots are handed out from a free list).
                    let slot = part / 16;
                    let mut free: Vec<u64> = (0..16).collect();
                    let mut want = std::collections::HashMap::new();
                    let (mut next, mut done) = (0u64, 0u64);
                    while done < PER_PROC {
                        while next < PER_PROC {
                            let f = &files[(rnd() % files.len() as u64) as usize];
                            let p = f.as_os_str().as_encoded_bytes();
                            let off = rnd() % 300_000;
                            let into = rnd() % 3 == 0 && !free.is_empty();
                            let len = if into {
                                rnd() % slot
                            } else {
                                rnd() % (64 << 10)
                            };
                            let res = if into {
                                let dest = Dest {
                                    mem: ARENA,
                                    offset: k as u64 * part + free[free.len() - 1] * slot,
                                };
                                // SAFETY: each of this process's requests
                                // in flight has its own slot of its own part.
                                unsafe { w.request_into(p, off, len, dest, next) }
                            } else {
                                w.request_range_tagged(p, off, len, next)
                            };
                            match res {
                                Ok(()) => {
                                    let s = if into { free.pop() } else { None };
                                    want.insert(next, (f.clone(), off, len, s));
                                    next += 1;
                                }
                                Err(e) if e.kind() == ErrorKind::QueueFull => break,
                                Err(e) => panic!("request: {e}"),
                            }
                        }
                        let e = wait(&w);
                        let (f, off, len, s) = want.remove(&e.tag()).expect("a tag we gave");
                        assert_eq!(e.error(), 0);
                        assert!(e.data() == &pread(&f, off, len)[..], "{f:?} {off}+{len}");
                        e.release();
                        free.extend(s);
                        done += 1;
                    }
                })
            })
            .collect();
        for pid in pids {
            assert!(child_ok(pid), "{backend:?}: a child failed");
        }
        r.stop();
    }
}
