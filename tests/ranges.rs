//! Byte ranges, files larger than a buffer and destination memory
//! (`Worker::request_range`, `Worker::request_into`), on both backends and
//! both ways of driving the loads: every byte compared with `pread` of the
//! same file, and every bad input answered with its errno, nothing written
//! where it should not be.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use asyncloader::{BackendKind, Config, Drive, Entry, ErrorKind, Worker};
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
