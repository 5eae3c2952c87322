//! The table (stdout, or stderr with `--json`) and the JSON document.

use serde_json::json;

use super::data::{Budget, DataSet};
use super::measure::{Figures, Row};
use super::{Method, Opts, Res, Rings};
use crate::cli::datagen::human;
use crate::cli::sys;

/// Prints the table and, with `--json`, the JSON document.
pub(super) fn print(
    o: &Opts,
    ds: &DataSet,
    budget: &Budget,
    rows: &[Row],
    cold: bool,
    pool_threads: usize,
    rings: &Rings,
) -> Res<()> {
    let left_out_line = left_out_line(ds);
    // Ratios compare rows that loaded the same files: a row that lost files
    // (or failed verification) neither gets nor gives one.
    let base = |m: Method| {
        rows.iter()
            .find(|r| r.method == m)
            .and_then(|r| r.fig.as_ref())
            .filter(|f| f.verified)
            .map(|f| f.files_s)
    };
    let seq_fs = base(Method::Seq);
    // `x pool`: over the fastest pool row (std::fs::read or pread).
    let best_pool = rows
        .iter()
        .filter(|r| r.method.pool())
        .filter_map(|r| Some((r.method, base(r.method)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let pool_fs = best_pool.map(|b| b.1);
    // `x ceiling`: over the `ring` row; a direct row over `ring-direct`.
    let (ring_fs, ring_direct_fs) = (base(Method::Ring), base(Method::RingDirect));
    let ceiling_of = |m: Method| if m.direct() { ring_direct_fs } else { ring_fs };
    let ratio = |f: &Figures, b: Option<f64>| b.filter(|_| f.verified).map(|b| f.files_s / b);
    let label = |m: Method| label(o, m, pool_threads, rings);
    let fmt_base = |b: Option<f64>| {
        b.map(|fs| format!("{fs:.0} files/s"))
            .unwrap_or_else(|| "not run or not verified".into())
    };

    // The table.
    let mut out = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "\nmachine: {} cores ({}), {}",
        sys::cores(),
        sys::cpu_model(),
        sys::kernel()
    );
    let _ = writeln!(
        out,
        "data: {} files, {:.1} MB, {}; {}{}",
        ds.files.len(),
        ds.total as f64 / 1e6,
        ds.root.display(),
        if cold { "cold" } else { "warm" },
        if o.repeat > 1 {
            format!(", median of {} runs", o.repeat)
        } else {
            String::new()
        }
    );
    if let Some(l) = &left_out_line {
        let _ = writeln!(out, "{l}");
    }
    let dispatch_n = effective_dispatch_n(o, ds, false);
    let _ = writeln!(
        out,
        "asyncloader: workers {}, drive {}, queue_depth {}{}, max_file_size {} (cap {}), dispatch_n {}{}, idle_iters {}, loader_threads {}, ring_window {}",
        o.workers,
        o.drive,
        o.queue_depth,
        if o.queue_depth_auto {
            " (auto: ~1 MiB of files per worker warm, 64 cold/direct)"
        } else {
            ""
        },
        ds.max.max(1),
        human(ds.cap),
        dispatch_n,
        if o.dispatch_n == 0 {
            format!(
                " (auto, at most: ~1 MiB of files a batch, 8 to the io_uring window, with the workers driving; 8 with loader threads; {} direct)",
                effective_dispatch_n(o, ds, true)
            )
        } else {
            String::new()
        },
        o.idle_iters,
        if o.loader_threads == 0 {
            format!("{} (cores)", sys::cores())
        } else {
            o.loader_threads.to_string()
        },
        if o.ring_window == 0 {
            "default".to_string()
        } else {
            o.ring_window.to_string()
        }
    );
    let _ = writeln!(
        out,
        "x pool: over the best pool row, {}; x ceiling: over the ring row, {}; a direct row over ring-direct, {}",
        best_pool
            .map(|(m, fs)| format!("{} ({fs:.0} files/s)", label(m)))
            .unwrap_or_else(|| "none verified".into()),
        fmt_base(ring_fs),
        fmt_base(ring_direct_fs),
    );
    let _ = writeln!(
        out,
        "\n{:<44} {:>10} {:>9} {:>10} {:>9} {:>9} {:>7} {:>7} {:>9}  verify",
        "method", "files/s", "MB/s", "CPU s/1k", "p50 us", "p99 us", "x seq", "x pool", "x ceiling"
    );
    let fmt_ratio = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
    for r in rows {
        let name = label(r.method);
        match (&r.fig, &r.error) {
            (Some(f), _) => {
                let _ = writeln!(
                    out,
                    "{:<44} {:>10.0} {:>9.1} {:>10.4} {:>9.1} {:>9.1} {:>7} {:>7} {:>9}  {}",
                    name,
                    f.files_s,
                    f.mb_s,
                    f.cpu_per_1k,
                    f.p50_us,
                    f.p99_us,
                    fmt_ratio(ratio(f, seq_fs)),
                    fmt_ratio(ratio(f, pool_fs)),
                    fmt_ratio(ratio(f, ceiling_of(r.method))),
                    if f.verified { "ok" } else { "FAILED" }
                );
            }
            (None, e) => {
                let _ = writeln!(
                    out,
                    "{name:<44} failed: {}",
                    e.as_deref().unwrap_or("no run")
                );
            }
        }
    }
    let _ = writeln!(out);
    for r in rows {
        if let (Some(run), Some(s)) = (&r.run, r.run.as_ref().and_then(|r| r.stats.as_ref())) {
            let files = s.completions.max(1) as f64;
            let _ = writeln!(
                out,
                "{}: backend {}, {}, {} batches ({:.1} files/batch), {} syscalls ({:.3}/file), direct reads {}, buffered fallbacks {}, errors {}",
                r.method.name(),
                s.backend,
                match s.drive {
                    asyncloader::Drive::Worker => "each worker drives its own loads".to_string(),
                    _ => format!("{} loader threads", s.loader_threads),
                },
                s.batches,
                files / s.batches.max(1) as f64,
                s.syscalls,
                s.syscalls as f64 / files,
                s.direct_reads,
                s.buffered_fallbacks,
                s.errors
            );
            let _ = run;
        }
    }
    for r in rows {
        if let Some(f) = &r.fig {
            for p in &f.problems {
                let _ = writeln!(out, "{}: {p}", r.method.name());
            }
        }
    }
    let _ = writeln!(
        out,
        "verify: {} sampled files (every 97th, first, last) compared with std::fs::read; every row must load all {} files and {} bytes",
        ds.sample.len(),
        ds.files.len(),
        ds.total
    );
    if o.json {
        eprint!("{out}");
    } else {
        print!("{out}");
    }

    if o.json {
        let jrows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v = json!({
                    "method": r.method.name(),
                    "label": label(r.method),
                    "error": r.error,
                    "runs_files_per_s": r.all_files_s,
                });
                if let (Some(run), Some(f)) = (&r.run, &r.fig) {
                    let m = v.as_object_mut().expect("object");
                    let extra = json!({
                        "parallel": run.parallel,
                        "files": run.part.ok,
                        "errors": run.part.errors,
                        "bytes": run.part.bytes,
                        "seconds": run.wall_s,
                        "files_per_s": f.files_s,
                        "mb_per_s": f.mb_s,
                        "cpu_user_s": run.cpu.user,
                        "cpu_sys_s": run.cpu.sys,
                        "cpu_s_per_1k_files": f.cpu_per_1k,
                        "p50_us": f.p50_us,
                        "p99_us": f.p99_us,
                        "ratio_to_seq": ratio(f, seq_fs),
                        "ratio_to_pool": ratio(f, pool_fs),
                        "ratio_to_ceiling": ratio(f, ceiling_of(r.method)),
                        "verified": f.verified,
                        "problems": f.problems,
                        "loader": run.stats.as_ref().map(|s| json!({
                            "backend": s.backend.name(),
                            "drive": s.drive.name(),
                            "loader_threads": s.loader_threads,
                            "requests": s.requests,
                            "completions": s.completions,
                            "bytes": s.bytes,
                            "errors": s.errors,
                            "batches": s.batches,
                            "syscalls": s.syscalls,
                            "syscalls_per_file": s.syscalls as f64 / s.completions.max(1) as f64,
                            "direct_reads": s.direct_reads,
                            "buffered_fallbacks": s.buffered_fallbacks,
                        })),
                    });
                    for (k, x) in extra.as_object().expect("object") {
                        m.insert(k.clone(), x.clone());
                    }
                }
                v
            })
            .collect();
        let doc = json!({
            "machine": {
                "cores": sys::cores(),
                "cpu": sys::cpu_model(),
                "kernel": sys::kernel(),
            },
            "data": {
                "dir": ds.root,
                "filesystem": sys::filesystem_of(&ds.root),
                "files": ds.files.len(),
                "bytes": ds.total,
                "max_file_size": ds.max,
                "sampled": ds.sample.len(),
                "left_out": {
                    "files": ds.left_out.files,
                    "bytes": ds.left_out.bytes,
                    "largest": ds.left_out.largest,
                    "over": ds.cap,
                },
            },
            "memory": {
                "available": budget.available,
                "source": budget.source,
                "budget": budget.total,
                "budget_from": budget.how,
                "entries": budget.entries,
                "buffer_cap": budget.cap,
            },
            "cold": cold,
            "cold_requested": o.cold,
            "repeat": o.repeat,
            "config": {
                "workers": o.workers,
                "queue_depth": o.queue_depth,
                "queue_depth_auto": o.queue_depth_auto,
                "dispatch_n": effective_dispatch_n(o, ds, false),
                "dispatch_n_direct": effective_dispatch_n(o, ds, true),
                "dispatch_n_auto": o.dispatch_n == 0,
                "idle_iters": o.idle_iters,
                "loader_threads": o.loader_threads,
                "ring_window": o.ring_window,
                "drive": o.drive.name(),
                "pool_threads": pool_threads,
            },
            "ratios": {
                "pool": best_pool.map(|b| b.0.name()),
                "ceiling": "ring",
                "ceiling_direct": "ring-direct",
            },
            "rows": jrows,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

/// The batch size the rows' loaders use (`dispatch_n` 0 resolved).
fn effective_dispatch_n(o: &Opts, ds: &DataSet, direct: bool) -> u32 {
    let c = super::rows::loader_config(o, ds.max, direct);
    c.effective_dispatch_n(c.effective_drive())
}

fn label(o: &Opts, m: Method, pool_threads: usize, rings: &Rings) -> String {
    match m {
        Method::Seq => "std::fs::read, 1 thread".into(),
        Method::Pool => format!("std::fs::read, {pool_threads} threads"),
        Method::Pread => format!("pread, {} threads", sys::cores()),
        Method::Pread2x => format!("pread, {} threads", 2 * sys::cores()),
        Method::Ring => format!("ring, {}", rings.buffered.describe()),
        Method::RingDirect => format!("ring, {}", rings.direct.describe()),
        Method::Threads | Method::ThreadsDirect => format!(
            "asyncloader threads, {} workers{}",
            o.workers,
            if m.direct() { ", direct" } else { "" }
        ),
        Method::Process | Method::ProcessDirect => format!(
            "asyncloader process, {} workers{}",
            o.workers,
            if m.direct() { ", direct" } else { "" }
        ),
    }
}

/// The line that says which files no row loads, if any.
pub(super) fn left_out_line(ds: &DataSet) -> Option<String> {
    let l = &ds.left_out;
    (l.files > 0).then(|| {
        format!(
            "left out: {} file{} over {} left out of every row ({:.1} MB, largest {} bytes): larger than an \
             asyncloader buffer, they would complete with EFBIG (there is no chunked load yet)",
            l.files,
            if l.files == 1 { "" } else { "s" },
            human(ds.cap),
            l.bytes as f64 / 1e6,
            l.largest
        )
    })
}
