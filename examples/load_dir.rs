//! Loads every file under a directory with several worker threads and
//! prints what the loader did.
//!
//! ```sh
//! cargo run --release --example load_dir -- /usr/share/doc 4
//! ```

use std::path::PathBuf;
use std::time::Instant;

use asyncloader::{Config, ErrorKind, Loader};

fn walk(dir: PathBuf, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(e.path(), out),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/usr/share/doc".into()));
    let workers: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2);
    let mut paths = Vec::new();
    walk(dir.clone(), &mut paths);

    let loader = Loader::new(Config {
        n_workers: workers,
        queue_depth: 64,
        max_file_size: 16 << 20,
        ..Config::default()
    })?;
    loader.start()?;
    let t0 = Instant::now();
    let per = paths.len().div_ceil(workers as usize).max(1);
    let (bytes, failed) = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(per)
            .enumerate()
            .map(|(id, chunk)| {
                let w = loader.worker(id as u32).expect("worker id in range");
                s.spawn(move || {
                    let (mut next, mut done, mut bytes, mut failed) = (0, 0, 0u64, 0u64);
                    while done < chunk.len() {
                        // Keep the queue full, then take what completed.
                        while next < chunk.len() {
                            match w.request(&chunk[next]) {
                                Ok(()) => next += 1,
                                Err(e) if e.kind() == ErrorKind::QueueFull => break,
                                Err(e) => panic!("{e}"),
                            }
                        }
                        let e = w.wait_get().expect("loader alive");
                        match e.result() {
                            Ok(data) => bytes += data.len() as u64,
                            Err(err) => {
                                eprintln!("{}: {err}", e.path().display());
                                failed += 1;
                            }
                        }
                        done += 1;
                    }
                    (bytes, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{} files ({} failed), {:.1} MB from {} in {:.3} s: {:.0} files/s, {:.1} MB/s",
        paths.len(),
        failed,
        bytes as f64 / 1e6,
        dir.display(),
        secs,
        paths.len() as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    println!("{:?}", loader.stats());
    loader.shutdown()?;
    Ok(())
}
