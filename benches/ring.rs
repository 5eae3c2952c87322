//! The shared-memory ring: push/pop on one thread and across two threads,
//! next to `crossbeam-channel` and `std::sync::mpsc` doing the same handoff,
//! so the figures read as ratios.
//!
//! `cargo bench --bench ring`

use std::hint::black_box;
use std::time::{Duration, Instant};

use asyncloader::ring::OwnedRing as Owned;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Moves `n` values from a producer thread to this thread through `push`
/// and `pop` (spinning on full / empty), and returns the time it took.
fn handoff<P, C>(n: u64, push: P, pop: C) -> Duration
where
    P: Fn(u32) -> bool + Send + Sync,
    C: Fn() -> Option<u32>,
{
    std::thread::scope(|s| {
        let start = Instant::now();
        s.spawn(|| {
            for v in 0..n {
                while !push(v as u32) {
                    std::hint::spin_loop();
                }
            }
        });
        let mut got = 0;
        while got < n {
            match pop() {
                Some(v) => {
                    black_box(v);
                    got += 1;
                }
                None => std::hint::spin_loop(),
            }
        }
        start.elapsed()
    })
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));

    let o = Owned::new(64);
    let r = o.ring();
    g.bench_function("asyncloader_ring/push_pop_one_thread", |b| {
        b.iter(|| {
            r.push(black_box(7)).unwrap();
            black_box(r.pop())
        })
    });

    g.bench_function("asyncloader_ring/two_threads_cap64", |b| {
        b.iter_custom(|n| {
            let o = Owned::new(64);
            let r = o.ring();
            handoff(n, |v| r.push(v).is_ok(), || r.pop())
        })
    });

    g.bench_function("crossbeam_bounded/two_threads_cap64", |b| {
        b.iter_custom(|n| {
            let (tx, rx) = crossbeam_channel::bounded::<u32>(64);
            handoff(n, |v| tx.try_send(v).is_ok(), || rx.try_recv().ok())
        })
    });

    g.bench_function("std_sync_channel/two_threads_cap64", |b| {
        b.iter_custom(|n| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<u32>(64);
            let tx = std::sync::Mutex::new(tx);
            handoff(
                n,
                |v| tx.lock().unwrap().try_send(v).is_ok(),
                || rx.try_recv().ok(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, ring);
criterion_main!(benches);
