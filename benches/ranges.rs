//! Members of one large file by byte range (a tar shard read from its
//! index), warm, each row beside the strongest plain baseline in the same
//! group, so results read as ratios:
//!
//! - `asyncloader/shared-open/WxQ`: `request_range` of every member through
//!   a started loader with W workers, each in its own thread with a window
//!   of Q (`queue_depth`) ranges in flight; ranges of the file share one
//!   open;
//! - `asyncloader/open-each/WxQ`: the same with
//!   `ASYNCLOADER_RANGE_OPEN=each` (every range opens and closes the file):
//!   what the shared open saves;
//! - `pread_pool/T`: T threads doing `pread` of members (taken 16 at a time
//!   from a shared counter) on one descriptor opened once, each into its
//!   own reused buffer: what a C programmer would write with an index.
//!
//! Members are 1-200 KB (uniform), 1,000 of them (~100 MB), in a file that
//! was just written (cached). `cargo bench --bench ranges`

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use asyncloader::{Config, ErrorKind, Loader};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const MEMBERS: usize = 1000;
const MAX_MEMBER: u64 = 200_000;

/// A shard: 512-byte header space then the member, padded to 512 (as tar
/// lays them out). Returns the file and the (offset, len) index.
fn shard() -> (tempfile::TempDir, PathBuf, Vec<(u64, u64)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shard.tar");
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut data = Vec::new();
    let mut index = Vec::with_capacity(MEMBERS);
    for i in 0..MEMBERS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1000 + x % (MAX_MEMBER - 1000);
        data.extend(std::iter::repeat_n(0u8, 512));
        index.push((data.len() as u64, len));
        data.extend((0..len).map(|k| (k as u8) ^ (i as u8)));
        data.resize(data.len().div_ceil(512) * 512, 0);
    }
    std::fs::write(&path, &data).expect("write");
    (dir, path, index)
}

fn ranges(c: &mut Criterion) {
    let (_dir, path, index) = shard();
    let total: u64 = index.iter().map(|m| m.1).sum();
    let mut g = c.benchmark_group("tar_members_1000");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.sample_size(30);

    for threads in [2usize, 4] {
        let file = std::fs::File::open(&path).expect("open");
        g.bench_with_input(
            BenchmarkId::new("pread_pool", threads),
            &index,
            |b, index| {
                b.iter(|| {
                    let next = AtomicUsize::new(0);
                    let bytes = AtomicUsize::new(0);
                    std::thread::scope(|s| {
                        for _ in 0..threads {
                            s.spawn(|| {
                                let mut buf = vec![0u8; MAX_MEMBER as usize];
                                let mut got = 0usize;
                                loop {
                                    let first = next.fetch_add(16, Ordering::Relaxed);
                                    if first >= index.len() {
                                        break;
                                    }
                                    for &(off, len) in &index[first..(first + 16).min(index.len())]
                                    {
                                        let dst = &mut buf[..len as usize];
                                        file.read_exact_at(dst, off).expect("pread");
                                        got += black_box(&*dst).len();
                                    }
                                }
                                bytes.fetch_add(got, Ordering::Relaxed);
                            });
                        }
                    });
                    assert_eq!(bytes.load(Ordering::Relaxed) as u64, total);
                })
            },
        );
    }

    let p = path.as_os_str().as_encoded_bytes();
    let rows = [
        ("shared-open/1x8", 1, 8, false),
        ("shared-open/1x64", 1, 64, false),
        ("shared-open/2x4", 2, 4, false),
        ("shared-open/2x8", 2, 8, false),
        ("shared-open/2x16", 2, 16, false),
        ("shared-open/2x64", 2, 64, false),
        ("open-each/2x8", 2, 8, true),
    ];
    for (name, workers, qd, open_each) in rows {
        // SAFETY: this thread is the only one running here (the pread pool's
        // threads are joined, earlier loaders shut down) and the loader reads
        // the environment in `start` below, on this thread.
        unsafe {
            if open_each {
                std::env::set_var("ASYNCLOADER_RANGE_OPEN", "each");
            } else {
                std::env::remove_var("ASYNCLOADER_RANGE_OPEN");
            }
        }
        let loader = Loader::new(Config {
            n_workers: workers,
            queue_depth: qd,
            max_file_size: MAX_MEMBER,
            ..Config::default()
        })
        .expect("loader");
        loader.start().expect("start");
        // SAFETY: as above.
        unsafe { std::env::remove_var("ASYNCLOADER_RANGE_OPEN") };
        let ws: Vec<_> = (0..workers)
            .map(|i| loader.worker(i).expect("worker"))
            .collect();
        g.bench_with_input(BenchmarkId::new("asyncloader", name), &index, |b, index| {
            b.iter(|| {
                // Worker k loads members k, k + workers, ... in its thread.
                let bytes = AtomicUsize::new(0);
                std::thread::scope(|s| {
                    for (k, w) in ws.iter().enumerate() {
                        let (bytes, n) = (&bytes, workers as usize);
                        s.spawn(move || {
                            let mine: Vec<usize> = (k..index.len()).step_by(n).collect();
                            let (mut next, mut done, mut got) = (0usize, 0usize, 0usize);
                            while done < mine.len() {
                                while next < mine.len() {
                                    let (off, len) = index[mine[next]];
                                    match w.request_range_tagged(p, off, len, mine[next] as u64) {
                                        Ok(()) => next += 1,
                                        Err(e) if e.kind() == ErrorKind::QueueFull => break,
                                        Err(e) => panic!("request: {e}"),
                                    }
                                }
                                let e = w.wait_get().expect("entry");
                                assert_eq!(
                                    e.len() as u64,
                                    index[e.tag() as usize].1,
                                    "{:?}",
                                    e.error()
                                );
                                got += black_box(e.data()).len();
                                e.release();
                                done += 1;
                            }
                            bytes.fetch_add(got, Ordering::Relaxed);
                        });
                    }
                });
                assert_eq!(bytes.load(Ordering::Relaxed) as u64, total);
            })
        });
        drop(ws);
        loader.shutdown().expect("shutdown");
    }
    g.finish();
}

criterion_group!(benches, ranges);
criterion_main!(benches);
