//! The loader's hot paths through a started loader (threads mode), each next
//! to `std::fs::read` of the same cached files in the same group, so results
//! read as ratios:
//!
//! - `request_completion_4k`: one request → `wait_get` → `release` of a
//!   cached 4 KiB file (the round trip through rings, loader and io_uring);
//! - `batch_64/dispatch_n=K`: 64 requests, then 64 gets, for several
//!   `dispatch_n` (how batching trades latency for syscalls).
//!
//! `cargo bench --bench loader`

use std::hint::black_box;
use std::path::PathBuf;

use asyncloader::{Config, Loader};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// `n` files of `size` bytes in a fresh temporary directory (cached, as they
/// were just written).
fn files(n: usize, size: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = (0..n)
        .map(|i| {
            let p = dir.path().join(format!("f{i:04}"));
            std::fs::write(&p, vec![i as u8; size]).expect("write");
            p
        })
        .collect();
    (dir, paths)
}

fn started(cfg: Config) -> Loader {
    let l = Loader::new(cfg).expect("loader");
    l.start().expect("start");
    l
}

fn request_completion(c: &mut Criterion) {
    let (_dir, paths) = files(1, 4096);
    let p = &paths[0];
    let mut g = c.benchmark_group("request_completion_4k");
    g.throughput(Throughput::Elements(1));
    g.bench_function("std_fs_read", |b| {
        b.iter(|| black_box(std::fs::read(p).unwrap()))
    });
    let loader = started(Config {
        n_workers: 1,
        queue_depth: 4,
        max_file_size: 1 << 20,
        dispatch_n: 1,
        ..Config::default()
    });
    let w = loader.worker(0).unwrap();
    g.bench_function("asyncloader", |b| {
        b.iter(|| {
            w.request(p).unwrap();
            let e = w.wait_get().unwrap();
            assert_eq!(e.len(), 4096);
            e.release();
        })
    });
    g.finish();
    loader.shutdown().unwrap();
}

fn batch(c: &mut Criterion) {
    const N: usize = 64;
    let (_dir, paths) = files(N, 8192);
    let mut g = c.benchmark_group("batch_64");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("std_fs_read", |b| {
        b.iter(|| {
            for p in &paths {
                black_box(std::fs::read(p).unwrap());
            }
        })
    });
    for dispatch_n in [1u32, 8, 32, 64] {
        let loader = started(Config {
            n_workers: 1,
            queue_depth: N as u32,
            max_file_size: 1 << 20,
            dispatch_n,
            ..Config::default()
        });
        let w = loader.worker(0).unwrap();
        g.bench_with_input(
            BenchmarkId::new("asyncloader", format!("dispatch_n={dispatch_n}")),
            &paths,
            |b, paths| {
                b.iter(|| {
                    for p in paths {
                        w.request(p).unwrap();
                    }
                    for _ in 0..N {
                        let e = w.wait_get().unwrap();
                        black_box(e.data());
                        e.release();
                    }
                })
            },
        );
        drop(w);
        loader.shutdown().unwrap();
    }
    g.finish();
}

criterion_group!(benches, request_completion, batch);
criterion_main!(benches);
