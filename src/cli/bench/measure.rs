//! What a row measured: the workers' reports, timing and CPU, latency
//! percentiles, and the check of the sampled files against
//! `std::fs::read`.

use std::collections::HashMap;
use std::sync::Barrier;

use asyncloader::Stats;

use super::Method;
use super::data::DataSet;
use crate::cli::sys::{self, Cpu};

/// What the workers of one run saw, merged. A worker process sends its
/// own as JSON through its report pipe (one per worker per row, after its
/// last file).
#[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Part {
    pub(super) ok: u64,
    pub(super) errors: u64,
    pub(super) bytes: u64,
    /// Request-to-completion (or per-read) latencies, ns.
    pub(super) lat: Vec<u64>,
    /// (index, length, hash) of each sampled file loaded.
    pub(super) samples: Vec<(u32, u64, u64)>,
    pub(super) first_error: Option<String>,
    /// A failure that stopped a worker.
    pub(super) fatal: Option<String>,
}

impl Part {
    pub(super) fn merge(&mut self, o: Part) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.bytes += o.bytes;
        self.lat.extend(o.lat);
        self.samples.extend(o.samples);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        if self.fatal.is_none() {
            self.fatal = o.fatal;
        }
    }

    /// File `i` of `ds` loaded as `data`: counted, and hashed if it is one
    /// of the sampled files (a binary search of `ds.sample`). Every row
    /// knows its files' indices (the asyncloader rows as the requests'
    /// tags), so all pay the same bookkeeping per file.
    pub(super) fn loaded_at(&mut self, ds: &DataSet, i: usize, data: &[u8], lat: u64) {
        self.ok += 1;
        self.bytes += data.len() as u64;
        self.lat.push(lat);
        if ds.sample.binary_search(&(i as u32)).is_ok() {
            self.samples
                .push((i as u32, data.len() as u64, sys::hash_bytes(data)));
        }
    }

    pub(super) fn failed(&mut self, path: &[u8], err: std::io::Error, lat: u64) {
        self.errors += 1;
        self.lat.push(lat);
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {err}", String::from_utf8_lossy(path)));
        }
    }
}

/// One measured row.
pub(super) struct Run {
    pub(super) wall_s: f64,
    pub(super) cpu: Cpu,
    pub(super) part: Part,
    pub(super) stats: Option<Stats>,
    /// Threads (pool) or workers (asyncloader).
    pub(super) parallel: usize,
}

/// Summary figures of a run, for the table and the JSON.
pub(super) struct Figures {
    pub(super) files_s: f64,
    pub(super) mb_s: f64,
    pub(super) cpu_per_1k: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    pub(super) verified: bool,
    pub(super) problems: Vec<String>,
}

fn figures(run: &mut Run, ds: &DataSet, expect: &HashMap<u32, (u64, u64)>) -> Figures {
    let p = &mut run.part;
    p.lat.sort_unstable();
    let n = ds.files.len() as u64;
    let mut problems = Vec::new();
    if let Some(f) = &p.fatal {
        problems.push(f.clone());
    }
    if p.ok != n {
        problems.push(format!(
            "{} of {n} files loaded, {} failed{}",
            p.ok,
            p.errors,
            p.first_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ));
    }
    if p.ok == n && p.bytes != ds.total {
        problems.push(format!("{} bytes loaded, {} expected", p.bytes, ds.total));
    }
    let got: HashMap<u32, (u64, u64)> = p.samples.iter().map(|&(i, l, h)| (i, (l, h))).collect();
    let mut bad = 0;
    for &i in &ds.sample {
        match (got.get(&i), expect.get(&i)) {
            (Some(a), Some(b)) if a == b => {}
            (None, _) => bad += 1,
            (Some(_), _) => {
                bad += 1;
                if bad <= 3 {
                    problems.push(format!(
                        "bytes of {} differ from std::fs::read",
                        ds.files[i as usize].display()
                    ));
                }
            }
        }
    }
    if bad > 0 {
        problems.push(format!(
            "{bad} of {} sampled files not verified",
            ds.sample.len()
        ));
    }
    let loaded = p.ok.max(1) as f64;
    Figures {
        files_s: p.ok as f64 / run.wall_s,
        mb_s: p.bytes as f64 / 1e6 / run.wall_s,
        cpu_per_1k: run.cpu.total() / loaded * 1000.0,
        p50_us: sys::percentile(&p.lat, 0.5) as f64 / 1e3,
        p99_us: sys::percentile(&p.lat, 0.99) as f64 / 1e3,
        verified: problems.is_empty(),
        problems,
    }
}

/// One row of the report: a method and its median run.
pub(super) struct Row {
    pub(super) method: Method,
    pub(super) run: Option<Run>,
    pub(super) fig: Option<Figures>,
    pub(super) all_files_s: Vec<f64>,
    pub(super) error: Option<String>,
}

/// Per method, the run with the median files/s (and every run's files/s),
/// each checked against the sampled files' bytes as `std::fs::read` reads
/// them after the timed rows.
pub(super) fn median_rows(
    ds: &DataSet,
    methods: &[Method],
    runs: Vec<Vec<Run>>,
    mut row_errors: Vec<Option<String>>,
) -> Vec<Row> {
    // Expected bytes of the sampled files, read after the timed rows.
    let mut expect = HashMap::new();
    for &i in &ds.sample {
        if let Ok(d) = std::fs::read(&ds.files[i as usize]) {
            expect.insert(i, (d.len() as u64, sys::hash_bytes(&d)));
        }
    }

    let mut rows = Vec::new();
    for ((mi, &m), rs) in methods.iter().enumerate().zip(runs) {
        let mut scored: Vec<(f64, Run)> = rs
            .into_iter()
            .map(|mut r| {
                let f = figures(&mut r, ds, &expect);
                (f.files_s, r)
            })
            .collect();
        let all: Vec<f64> = scored.iter().map(|s| s.0).collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mid = scored.len().saturating_sub(1) / 2;
        let mut run = (!scored.is_empty()).then(|| scored.swap_remove(mid).1);
        let fig = run.as_mut().map(|r| figures(r, ds, &expect));
        rows.push(Row {
            method: m,
            run,
            fig,
            all_files_s: all,
            error: row_errors[mi].take(),
        });
    }
    rows
}

/// Runs `threads` bodies, each given a start function to call once set
/// up (it waits for every thread to be ready). The wall time runs from the
/// first thread's start to the last thread's end, as each thread saw them
/// (not from when this thread, woken last on a busy machine, saw the start).
pub(super) fn timed_threads<F>(threads: usize, body: F) -> (f64, Part)
where
    F: Fn(&dyn Fn() -> u64) -> Part + Sync,
{
    let barrier = Barrier::new(threads);
    let go = || {
        barrier.wait();
        sys::now_ns()
    };
    let mut part = Part::default();
    let (mut t0, mut t1) = (u64::MAX, 0);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let started = std::cell::Cell::new(None);
                    let start = || {
                        let t = go();
                        started.set(Some(t));
                        t
                    };
                    let p = body(&start);
                    // A body that returned before starting still meets the
                    // others at the start.
                    let t = started.get().unwrap_or_else(go);
                    (t, p, sys::now_ns())
                })
            })
            .collect();
        for h in hs {
            let (t, p, end) = h.join().expect("ceiling thread panicked");
            t0 = t0.min(t);
            t1 = t1.max(end);
            part.merge(p);
        }
    });
    (t1.saturating_sub(t0) as f64 * 1e-9, part)
}

#[cfg(test)]
mod tests {
    use super::Part;

    #[test]
    fn a_worker_report_survives_the_pipe_encoding() {
        let p = Part {
            ok: 3,
            errors: 1,
            bytes: 12_345,
            lat: vec![5, 7, 11, u64::MAX],
            samples: vec![(0, 4096, u64::MAX), (97, 1, 42)],
            first_error: Some("/x: No such file or directory (os error 2)".into()),
            fatal: None,
        };
        let b = serde_json::to_vec(&p).unwrap();
        let q: Part = serde_json::from_slice(&b).unwrap();
        assert_eq!(format!("{p:?}"), format!("{q:?}"));
        // A worker that died mid-report: an error, not a short Part.
        assert!(serde_json::from_slice::<Part>(&b[..b.len() - 1]).is_err());
        assert!(serde_json::from_slice::<Part>(b"").is_err());
    }
}
