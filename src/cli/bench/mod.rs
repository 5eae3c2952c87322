//! `asyncloader bench`: loads the same files with several methods in one
//! invocation and prints a comparison.
//!
//! Rows (methods), all on the same file list in the same order:
//! - `seq`: `std::fs::read` in a loop on one thread;
//! - `pool`: `std::fs::read` on a pool of `2 x cores` threads sharing an
//!   atomic index;
//! - `pread`, `pread-2x`: `open` + one `read` + `close` into a reused
//!   buffer on `cores` / `2 x cores` threads (the pool a C programmer would
//!   write; [`ceiling`]);
//! - `ring`, `ring-direct`: the minimal io_uring loop, one ring per core,
//!   no handoff: the ceiling the asyncloader rows are measured against
//!   ([`ceiling`]);
//! - `threads`: asyncloader started in this process (`Loader::start`: the
//!   workers drive their own loads, or loader threads, per `--drive`) and
//!   `--workers` worker threads;
//! - `process`: asyncloader with `--workers` forked worker processes that
//!   report through pipes; loaded by the workers themselves (`start`, no
//!   thread in this process) or by a forked loader process (`spawn`);
//! - `threads-direct`, `process-direct`: the same with `O_DIRECT`.
//!
//! Every asyncloader worker keeps a window of requests in flight: it requests
//! until `QueueFull`, then takes what completed (`wait_get`, then `try_get`
//! until empty), releasing each entry, and refills.
//!
//! Memory: every asyncloader entry owns a buffer of `max_file_size` bytes
//! (rounded up to 4 KiB), `workers x queue_depth` of them, all touched
//! before the row (`Loader::prefault`). The buffer is capped (see
//! [`data::Budget`]); files larger than the cap are left out of every row and
//! the output says how many, so that every row loads the same files.
//!
//! Timing: wall time covers only the loading (from releasing the workers to
//! the last completion); CPU time is `getrusage(RUSAGE_SELF)` +
//! `getrusage(RUSAGE_CHILDREN)` over the whole row, including loader setup
//! and shutdown, with every child reaped before the row ends.
//!
//! Layout: this module holds the options and the run (data set, rounds,
//! rows); [`data`] lists the files and sizes the buffers; [`rows`] runs
//! each method; [`measure`] turns a run into figures and verifies it;
//! [`report`] prints the table and the JSON.

mod ceiling;
mod data;
mod measure;
mod report;
mod rows;

use std::path::PathBuf;

use asyncloader::Config;

use super::datagen::{self, Dist, Spec};
use super::progress;
use super::sys;
use data::{Budget, DataSet};
use measure::Run;

/// A way of loading the files: one row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// `std::fs::read` in a loop, one thread.
    Seq,
    /// `std::fs::read` on a thread pool (`--pool-threads`, default 2 x cores).
    Pool,
    /// open + read + close into a reused buffer, `cores` threads.
    Pread,
    /// The same on `2 x cores` threads.
    #[value(name = "pread-2x")]
    Pread2x,
    /// The minimal io_uring loop: one ring per core, OPENAT → READ → CLOSE
    /// in a fixed slot, no handoff (the ceiling).
    Ring,
    /// `ring` with O_DIRECT.
    RingDirect,
    /// asyncloader, worker threads (loads driven by the workers or by loader threads: --drive).
    Threads,
    /// asyncloader, forked worker processes (driving their own loads, or a forked loader process).
    Process,
    /// `threads` with O_DIRECT.
    ThreadsDirect,
    /// `process` with O_DIRECT.
    ProcessDirect,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Seq => "seq",
            Method::Pool => "pool",
            Method::Pread => "pread",
            Method::Pread2x => "pread-2x",
            Method::Ring => "ring",
            Method::RingDirect => "ring-direct",
            Method::Threads => "threads",
            Method::Process => "process",
            Method::ThreadsDirect => "threads-direct",
            Method::ProcessDirect => "process-direct",
        }
    }

    fn direct(self) -> bool {
        matches!(
            self,
            Method::ThreadsDirect | Method::ProcessDirect | Method::RingDirect
        )
    }

    /// A thread-pool row (`x pool` compares with the best of them).
    fn pool(self) -> bool {
        matches!(self, Method::Pool | Method::Pread | Method::Pread2x)
    }
}

/// The shapes of the `ring` rows (threads, window), for the rows and their
/// labels.
struct Rings {
    buffered: ceiling::RingShape,
    direct: ceiling::RingShape,
}

/// Everything `bench` is told.
#[derive(Clone, Debug)]
pub struct Opts {
    pub dir: Option<PathBuf>,
    pub ext: Option<String>,
    pub workers: u32,
    /// 0: picked from the data set by `run` (see [`auto_queue_depth`]).
    pub queue_depth: u32,
    /// `queue_depth` was 0 and `run` picked it.
    pub queue_depth_auto: bool,
    pub dispatch_n: u32,
    pub idle_iters: u32,
    pub loader_threads: u32,
    pub ring_window: u32,
    pub drive: asyncloader::Drive,
    pub pool_threads: usize,
    /// Bytes all buffers of a loader may take; `None`: available / 4.
    pub memory_budget: Option<u64>,
    pub direct: bool,
    pub cold: bool,
    pub json: bool,
    pub files: Option<usize>,
    pub dist: Dist,
    pub seed: u64,
    pub methods: Option<Vec<Method>>,
    pub repeat: usize,
    pub warmup: bool,
    pub progress: bool,
}

type Res<T> = Result<T, String>;

/// Most threads of the `pool` row (`--pool-threads`).
const MAX_POOL_THREADS: usize = 1024;

/// Where the default data sets live.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ASYNCLOADER_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("asyncloader");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("asyncloader")
}

/// Checks the flags before anything runs: the engine's knobs against the
/// library's own rules (`Config::validate`, `config::limits`), the bench's
/// own counts, and the memory the buffers would take. The error names the
/// flag; the caller exits 2 (a usage error).
fn validate(o: &Opts) -> Res<Budget> {
    if o.repeat == 0 {
        return Err("--repeat must be at least 1".into());
    }
    if o.pool_threads > MAX_POOL_THREADS {
        return Err(format!(
            "--pool-threads: {} is more than {MAX_POOL_THREADS}",
            o.pool_threads
        ));
    }
    // The smallest buffer: every limit but the buffer size is checked here;
    // the size is bounded by the budget below (for the deepest queue an
    // automatic queue_depth may pick).
    let auto_qd = o.queue_depth == 0;
    let o = &Opts {
        queue_depth: if o.queue_depth == 0 {
            AUTO_QD_MAX
        } else {
            o.queue_depth
        },
        ..o.clone()
    };
    let probe = Config {
        max_file_size: 1,
        ..rows::loader_config(o, 1, o.direct)
    };
    if let Err(e) = probe.validate() {
        let flag = match e.field() {
            "n_workers" => "--workers".to_string(),
            f => format!("--{}", f.replace('_', "-")),
        };
        return Err(format!("{flag}: {e}"));
    }
    Budget::new(o.workers, o.queue_depth, auto_qd, o.memory_budget)
}

/// Bytes of files a worker keeps outstanding with an automatic
/// `queue_depth`, warm: the buffers of about 1 MiB of files stay in a core's
/// L2 between loads. Measured on the ImageNet-like set (docs/bench.md,
/// "queue_depth by file size"): queue_depth 8 loads 0.99x the `ring` row,
/// 64 loads 0.83x; on small files the depth makes no difference.
const AUTO_WINDOW_BYTES: u64 = 1 << 20;
/// The range of an automatic `queue_depth`.
const AUTO_QD_MIN: u32 = 8;
const AUTO_QD_MAX: u32 = 64;

/// `queue_depth` for the data set: the deepest with `--cold` or `--direct`
/// (reads wait on the device: depth is what keeps it busy), else about
/// [`AUTO_WINDOW_BYTES`] of files per worker.
fn auto_queue_depth(ds: &DataSet, cold: bool, direct: bool) -> u32 {
    if cold || direct || ds.files.is_empty() {
        return AUTO_QD_MAX;
    }
    let mean = (ds.total / ds.files.len() as u64).max(1);
    (AUTO_WINDOW_BYTES / mean).clamp(AUTO_QD_MIN as u64, AUTO_QD_MAX as u64) as u32
}

/// Runs the bench; returns the process exit code.
pub fn run(o: Opts) -> Res<i32> {
    let budget = validate(&o)?;
    let say = |s: &str| eprintln!("{s}");
    let root = match &o.dir {
        Some(d) => d.clone(),
        None => {
            let spec = Spec {
                dist: o.dist,
                files: o.files.unwrap_or(20_000),
                seed: o.seed,
            };
            let dir = cache_dir().join(spec.cache_name());
            if datagen::is_complete(&dir, &spec) {
                say(&format!("data set: reusing {}", dir.display()));
            } else {
                datagen::check_space(&dir, spec.total_bytes())?;
                say(&format!(
                    "data set: generating {} {} files (seed {}) in {} (once; set ASYNCLOADER_CACHE to move it)",
                    spec.files,
                    spec.dist,
                    spec.seed,
                    dir.display()
                ));
                datagen::generate(&dir, &spec, o.progress)
                    .map_err(|e| format!("generating {}: {e}", dir.display()))?;
            }
            dir
        }
    };
    let limit = if o.dir.is_some() { o.files } else { None };
    let ds = DataSet::list(&root, o.ext.as_deref(), limit, budget.cap)?;
    let o = if o.queue_depth == 0 {
        Opts {
            queue_depth: auto_queue_depth(&ds, o.cold, o.direct),
            queue_depth_auto: true,
            ..o
        }
    } else {
        o
    };
    let pool_threads = if o.pool_threads == 0 {
        2 * sys::cores()
    } else {
        o.pool_threads
    };
    let methods: Vec<Method> = match &o.methods {
        Some(m) => m.clone(),
        None => {
            let mut m = vec![
                Method::Seq,
                Method::Pool,
                Method::Pread,
                Method::Pread2x,
                Method::Ring,
                Method::Threads,
                Method::Process,
            ];
            if o.direct {
                m.extend([
                    Method::RingDirect,
                    Method::ThreadsDirect,
                    Method::ProcessDirect,
                ]);
            }
            m
        }
    };
    let rings = Rings {
        buffered: ceiling::RingShape::new(&ds, budget.total, false),
        direct: ceiling::RingShape::new(&ds, budget.total, true),
    };
    // Probe the page-cache drop once.
    let mut cold = o.cold;
    if cold && let Err(e) = sys::drop_page_cache() {
        say(&format!(
            "--cold: cannot drop the page cache ({e}; needs root and a writable /proc/sys): rows run WARM"
        ));
        cold = false;
    }
    say(&format!(
        "bench: {} files, {:.1} MB under {} ({}), {}",
        ds.files.len(),
        ds.total as f64 / 1e6,
        ds.root.display(),
        sys::filesystem_of(&ds.root),
        if cold {
            "cold: page cache dropped before each row"
        } else {
            "warm page cache"
        }
    ));
    let left_out_line = report::left_out_line(&ds);
    if let Some(l) = &left_out_line {
        say(l);
    }
    say(&budget.explain());
    if !cold && o.warmup {
        let pb = progress::bar(o.progress, ds.files.len() as u64, "warm-up (not measured)");
        rows::run_pool(&ds, pool_threads, &pb);
        pb.finish_and_clear();
    }

    let mut runs: Vec<Vec<Run>> = methods.iter().map(|_| Vec::new()).collect();
    let mut row_errors: Vec<Option<String>> = methods.iter().map(|_| None).collect();
    for round in 0..o.repeat {
        for (mi, &m) in methods.iter().enumerate() {
            if cold && let Err(e) = sys::drop_page_cache() {
                say(&format!("--cold: dropping the page cache failed: {e}"));
            }
            let title = if o.repeat > 1 {
                format!("{} ({}/{})", m.name(), round + 1, o.repeat)
            } else {
                m.name().to_string()
            };
            let pb = progress::bar(o.progress, ds.files.len() as u64, &title);
            let r = match m {
                Method::Seq => Ok(rows::run_pool(&ds, 1, &pb)),
                Method::Pool => Ok(rows::run_pool(&ds, pool_threads, &pb)),
                Method::Pread => Ok(ceiling::run_pread(&ds, sys::cores(), &pb)),
                Method::Pread2x => Ok(ceiling::run_pread(&ds, 2 * sys::cores(), &pb)),
                Method::Ring => Ok(ceiling::run_ring(&ds, &rings.buffered, &pb)),
                Method::RingDirect => Ok(ceiling::run_ring(&ds, &rings.direct, &pb)),
                Method::Threads | Method::ThreadsDirect => rows::run_threads(&o, &ds, &pb, m),
                Method::Process | Method::ProcessDirect => rows::run_process(&o, &ds, &pb, m),
            };
            pb.finish_and_clear();
            match r {
                Ok(r) => runs[mi].push(r),
                Err(e) => {
                    say(&format!("{}: {e}", m.name()));
                    row_errors[mi].get_or_insert(e);
                }
            }
        }
    }

    let rows = measure::median_rows(&ds, &methods, runs, row_errors);
    report::print(&o, &ds, &budget, &rows, cold, pool_threads, &rings)?;
    let all_ok = rows
        .iter()
        .all(|r| r.error.is_none() && r.fig.as_ref().is_some_and(|f| f.verified));
    Ok(if all_ok { 0 } else { 1 })
}
