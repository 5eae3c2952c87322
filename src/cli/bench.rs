//! `asyncloader bench`: loads the same files with several methods in one
//! invocation and prints a comparison.
//!
//! Rows (methods), all on the same file list in the same order:
//! - `seq`: `std::fs::read` in a loop on one thread;
//! - `pool`: `std::fs::read` on a pool of `2 x cores` threads sharing an
//!   atomic index;
//! - `threads`: asyncloader with loader threads in this process
//!   (`Loader::start`) and `--workers` worker threads;
//! - `process`: asyncloader with a forked loader process (`Loader::spawn`)
//!   and `--workers` forked worker processes that report through pipes;
//! - `threads-direct`, `process-direct`: the same with `O_DIRECT`.
//!
//! Every asyncloader worker keeps a window of requests in flight: it requests
//! until `QueueFull`, then takes what completed (`wait_get`, then `try_get`
//! until empty), releasing each entry, and refills.
//!
//! Memory: every asyncloader entry owns a buffer of `max_file_size` bytes
//! (rounded up to 4 KiB), `workers x queue_depth` of them, all touched
//! before the row (`Loader::prefault`). The buffer is capped (see
//! [`Budget`]); files larger than the cap are left out of every row and
//! the output says how many, so that every row loads the same files.
//!
//! Timing: wall time covers only the loading (from releasing the workers to
//! the last completion); CPU time is `getrusage(RUSAGE_SELF)` +
//! `getrusage(RUSAGE_CHILDREN)` over the whole row, including loader setup
//! and shutdown, with every child reaped before the row ends.

use std::collections::HashMap;
use std::io::{PipeReader, PipeWriter, Read, Write as _};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use asyncloader::config::{BUF_ALIGN, buffer_size, limits};
use asyncloader::{Config, ErrorKind, Loader, Stats, Worker};
use indicatif::ProgressBar;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use serde_json::json;

use super::datagen::{self, Dist, Spec, human};
use super::progress;
use super::sys::{self, Cpu};

/// A way of loading the files: one row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// `std::fs::read` in a loop, one thread.
    Seq,
    /// `std::fs::read` on a thread pool (`--pool-threads`, default 2 x cores).
    Pool,
    /// asyncloader, loader threads in this process, worker threads.
    Threads,
    /// asyncloader, forked loader process, forked worker processes.
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
            Method::Threads => "threads",
            Method::Process => "process",
            Method::ThreadsDirect => "threads-direct",
            Method::ProcessDirect => "process-direct",
        }
    }

    fn direct(self) -> bool {
        matches!(self, Method::ThreadsDirect | Method::ProcessDirect)
    }
}

/// Everything `bench` is told.
#[derive(Clone, Debug)]
pub struct Opts {
    pub dir: Option<PathBuf>,
    pub ext: Option<String>,
    pub workers: u32,
    pub queue_depth: u32,
    pub dispatch_n: u32,
    pub idle_iters: u32,
    pub loader_threads: u32,
    pub ring_window: u32,
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

/// Share of the available memory the loader's buffers may take: a quarter.
/// The rest stays for what a warm bench also needs: the page cache holding
/// the data set (which `MemAvailable` counts as available), the `pool`
/// row's per-thread read buffers, the worker processes, and the rest of
/// the machine. The loader's buffers are all resident during a row (they
/// are prefaulted), so this bounds the bench's own memory.
const MEMORY_SHARE: u64 = 4;

/// How large one asyncloader entry's buffer may be.
#[derive(Clone, Debug)]
struct Budget {
    /// Memory available to this process, bytes, and where that came from.
    available: u64,
    source: String,
    /// How `total` was chosen, for the output.
    how: String,
    /// `--memory-budget`, else `available / MEMORY_SHARE`: all buffers of a
    /// loader together.
    total: u64,
    /// `workers x queue_depth`.
    entries: u64,
    /// Largest file loaded: `total / entries` in whole 4 KiB pages, less
    /// one page (the buffer holds one byte more than `max_file_size` to
    /// detect a larger file), at most `limits::MAX_FILE_SIZE`.
    cap: u64,
}

impl Budget {
    fn new(workers: u32, queue_depth: u32, chosen: Option<u64>) -> Res<Budget> {
        let (available, source) = sys::available_memory();
        let total = chosen.unwrap_or(available / MEMORY_SHARE);
        let how = match chosen {
            Some(_) => "--memory-budget".to_string(),
            None => format!("{source} {} / {MEMORY_SHARE}", human(available)),
        };
        let entries = workers as u64 * queue_depth as u64;
        // A whole number of pages per entry; the cap is one page less, a
        // round figure whose buffer (one byte more, rounded up to a page,
        // see `config::buffer_size`) is exactly `per_entry`.
        let per_entry = total / entries / BUF_ALIGN * BUF_ALIGN;
        if per_entry < 2 * BUF_ALIGN {
            return Err(format!(
                "--workers {workers} x --queue-depth {queue_depth} = {entries} buffers do not fit in the \
                 memory budget of {} ({how}) with even {} files in them; lower --workers or --queue-depth",
                human(total),
                human(BUF_ALIGN)
            ));
        }
        let cap = (per_entry - BUF_ALIGN).min(limits::MAX_FILE_SIZE);
        debug_assert!(buffer_size(cap) <= per_entry);
        Ok(Budget {
            available,
            source,
            how,
            total,
            entries,
            cap,
        })
    }

    /// Why the cap is what it is, for the output.
    fn explain(&self) -> String {
        format!(
            "asyncloader buffers capped at {} per entry: the smaller of {} (the largest file the library loads, \
             config::limits::MAX_FILE_SIZE) and a memory budget of {} ({}) over {} entries (workers x queue_depth)",
            human(self.cap),
            human(limits::MAX_FILE_SIZE),
            human(self.total),
            self.how,
            self.entries
        )
    }
}

/// Files of the listing larger than the buffer cap, left out of every row.
#[derive(Clone, Debug, Default)]
struct LeftOut {
    files: u64,
    bytes: u64,
    largest: u64,
}

/// The files of one run.
struct DataSet {
    root: PathBuf,
    files: Vec<PathBuf>,
    total: u64,
    max: u64,
    /// Files over `cap`, not in `files`.
    left_out: LeftOut,
    cap: u64,
    /// Indices whose bytes are checked: every 97th, the first and the last.
    sample: Vec<u32>,
    /// Path bytes of each sampled file → its index.
    sample_of: HashMap<Vec<u8>, u32>,
}

impl DataSet {
    /// Regular files under `root` (recursively, sorted; the first `limit`),
    /// except those larger than `cap`, which are counted in `left_out`.
    fn list(root: &Path, ext: Option<&str>, limit: Option<usize>, cap: u64) -> Res<DataSet> {
        let root = root
            .canonicalize()
            .map_err(|e| format!("{}: {e}", root.display()))?;
        // Not following symlinks (a symlinked directory is not entered; a
        // symlink to a regular file is kept: `metadata` below follows it).
        let mut files = Vec::new();
        for e in walkdir::WalkDir::new(&root) {
            let e = e.map_err(|e| e.to_string())?;
            if e.file_type().is_dir() {
                continue;
            }
            if e.file_name() == datagen::MARKER {
                continue;
            }
            if let Some(x) = ext
                && !e.file_name().as_bytes().ends_with(x.as_bytes())
            {
                continue;
            }
            files.push(e.into_path());
        }
        files.sort();
        if let Some(n) = limit {
            files.truncate(n);
        }
        let mut keep = Vec::with_capacity(files.len());
        let (mut total, mut max) = (0u64, 0u64);
        let mut left_out = LeftOut::default();
        for p in files {
            // Regular files only (symlinks to them count).
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() && m.len() > cap => {
                    left_out.files += 1;
                    left_out.bytes += m.len();
                    left_out.largest = left_out.largest.max(m.len());
                }
                Ok(m) if m.is_file() => {
                    total += m.len();
                    max = max.max(m.len());
                    keep.push(p);
                }
                _ => {}
            }
        }
        if keep.is_empty() && left_out.files > 0 {
            return Err(format!(
                "all {} files under {} are larger than {}, the largest this bench loads",
                left_out.files,
                root.display(),
                human(cap)
            ));
        }
        if keep.is_empty() {
            return Err(format!(
                "no regular files{} under {}",
                ext.map(|x| format!(" ending in {x:?}")).unwrap_or_default(),
                root.display()
            ));
        }
        let n = keep.len() as u32;
        let mut sample: Vec<u32> = (0..n).step_by(97).collect();
        if sample.last() != Some(&(n - 1)) {
            sample.push(n - 1);
        }
        let sample_of = sample
            .iter()
            .map(|&i| (keep[i as usize].as_os_str().as_bytes().to_vec(), i))
            .collect();
        Ok(DataSet {
            root,
            files: keep,
            total,
            max,
            left_out,
            cap,
            sample,
            sample_of,
        })
    }
}

/// What the workers of one run saw, merged. A worker process sends its
/// own as JSON through its report pipe (one per worker per row, after its
/// last file).
#[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
struct Part {
    ok: u64,
    errors: u64,
    bytes: u64,
    /// Request-to-completion (or per-read) latencies, ns.
    lat: Vec<u64>,
    /// (index, length, hash) of each sampled file loaded.
    samples: Vec<(u32, u64, u64)>,
    first_error: Option<String>,
    /// A failure that stopped a worker.
    fatal: Option<String>,
}

impl Part {
    fn merge(&mut self, o: Part) {
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

    fn loaded(&mut self, ds: &DataSet, path: &[u8], data: &[u8], lat: u64) {
        self.ok += 1;
        self.bytes += data.len() as u64;
        self.lat.push(lat);
        if let Some(&i) = ds.sample_of.get(path) {
            self.samples
                .push((i, data.len() as u64, sys::hash_bytes(data)));
        }
    }

    fn failed(&mut self, path: &[u8], err: std::io::Error, lat: u64) {
        self.errors += 1;
        self.lat.push(lat);
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {err}", String::from_utf8_lossy(path)));
        }
    }
}

/// One measured row.
struct Run {
    wall_s: f64,
    cpu: Cpu,
    part: Part,
    stats: Option<Stats>,
    /// Threads (pool) or workers (asyncloader).
    parallel: usize,
}

/// Reads files `next..` (shared index) with std::fs::read.
fn read_files(ds: &DataSet, next: &AtomicUsize, pb: &ProgressBar) -> Part {
    let mut part = Part {
        lat: Vec::with_capacity(ds.files.len()),
        ..Part::default()
    };
    let mut since_tick = 0u64;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(p) = ds.files.get(i) else { break };
        let t = sys::now_ns();
        let r = std::fs::read(p);
        let lat = sys::now_ns() - t;
        let pb_ = p.as_os_str().as_bytes();
        match r {
            Ok(d) => part.loaded(ds, pb_, &d, lat),
            Err(e) => part.failed(pb_, e, lat),
        }
        since_tick += 1;
        if since_tick == 64 {
            pb.inc(since_tick);
            since_tick = 0;
        }
    }
    pb.inc(since_tick);
    part
}

fn run_pool(ds: &DataSet, threads: usize, pb: &ProgressBar) -> Run {
    let next = AtomicUsize::new(0);
    let cpu0 = Cpu::now();
    let t0 = sys::now_ns();
    let mut part = Part::default();
    if threads <= 1 {
        part = read_files(ds, &next, pb);
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| read_files(ds, &next, pb)))
                .collect();
            for h in hs {
                part.merge(h.join().expect("reader thread panicked"));
            }
        });
    }
    let wall_s = (sys::now_ns() - t0) as f64 * 1e-9;
    Run {
        wall_s,
        cpu: Cpu::now().since(cpu0),
        part,
        stats: None,
        parallel: threads,
    }
}

/// One asyncloader worker's loop over the files `k, k + n, k + 2n, ...`.
fn load_with_worker(w: &Worker, ds: &DataSet, k: usize, n: usize, pb: &ProgressBar) -> Part {
    let mine: Vec<usize> = (k..ds.files.len()).step_by(n).collect();
    let mut part = Part {
        lat: Vec::with_capacity(mine.len()),
        ..Part::default()
    };
    let (mut next, mut done) = (0usize, 0usize);
    let mut since_tick = 0u64;
    let take = |e: asyncloader::Entry, part: &mut Part| {
        let lat = e.latency_ns();
        match e.error() {
            0 => part.loaded(ds, e.path_bytes(), e.data(), lat),
            err => part.failed(e.path_bytes(), std::io::Error::from_raw_os_error(err), lat),
        }
        e.release();
    };
    while done < mine.len() {
        while next < mine.len() {
            match w.request(&ds.files[mine[next]]) {
                Ok(()) => next += 1,
                Err(e) if e.kind() == ErrorKind::QueueFull => break,
                Err(e) => {
                    part.fatal = Some(format!("request {}: {e}", ds.files[mine[next]].display()));
                    return part;
                }
            }
        }
        match w.wait_get_timeout(std::time::Duration::from_secs(60)) {
            Ok(e) => take(e, &mut part),
            Err(e) => {
                part.fatal = Some(format!("wait_get after {done} files: {e}"));
                return part;
            }
        }
        done += 1;
        since_tick += 1;
        while let Some(e) = w.try_get() {
            take(e, &mut part);
            done += 1;
            since_tick += 1;
        }
        if since_tick >= 64 {
            pb.inc(since_tick);
            since_tick = 0;
        }
    }
    pb.inc(since_tick);
    part
}

/// The loader of a row: buffers sized by the largest file of the data set
/// (at most the budget's cap: larger files are not in it).
fn loader_config(o: &Opts, max_file_size: u64, direct: bool) -> Config {
    Config {
        queue_depth: o.queue_depth,
        max_file_size: max_file_size.max(1),
        n_workers: o.workers,
        dispatch_n: o.dispatch_n,
        idle_iters: o.idle_iters,
        direct,
        loader_threads: o.loader_threads,
        ring_window: o.ring_window,
        ..Config::default()
    }
}

/// A loader for one row, in steady state as in a long run: its buffer pages
/// are allocated before the row is measured (a fresh loader would otherwise
/// zero-fill each page on first use inside the measurement).
fn new_loader(o: &Opts, ds: &DataSet, method: Method) -> Res<Loader> {
    let loader =
        Loader::new(loader_config(o, ds.max, method.direct())).map_err(|e| e.to_string())?;
    loader.prefault().map_err(|e| e.to_string())?;
    Ok(loader)
}

fn run_threads(o: &Opts, ds: &DataSet, pb: &ProgressBar, method: Method) -> Res<Run> {
    let loader = new_loader(o, ds, method)?;
    let cpu0 = Cpu::now();
    loader.start().map_err(|e| e.to_string())?;
    let n = o.workers as usize;
    let workers = (0..o.workers)
        .map(|k| loader.worker(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let t0 = sys::now_ns();
    let mut part = Part::default();
    std::thread::scope(|s| {
        let hs: Vec<_> = workers
            .iter()
            .enumerate()
            .map(|(k, w)| s.spawn(move || load_with_worker(w, ds, k, n, pb)))
            .collect();
        for h in hs {
            part.merge(h.join().expect("worker thread panicked"));
        }
    });
    let wall_s = (sys::now_ns() - t0) as f64 * 1e-9;
    loader.shutdown().map_err(|e| e.to_string())?;
    let stats = loader.stats();
    drop(workers);
    drop(loader);
    Ok(Run {
        wall_s,
        cpu: Cpu::now().since(cpu0),
        part,
        stats: Some(stats),
        parallel: n,
    })
}

/// Waits for our child `pid` (retrying on EINTR); returns how it ended
/// (`None` if it cannot be waited for).
fn reap(pid: Pid) -> Option<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            r => return r.ok(),
        }
    }
}

/// How a worker process ended, for the row's problems.
fn describe(status: Option<WaitStatus>) -> String {
    match status {
        Some(WaitStatus::Exited(_, code)) => format!("exit code {code}"),
        Some(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
        Some(s) => format!("{s:?}"),
        None => "not waited for".into(),
    }
}

/// The worker processes of one `process` row with the read end of each
/// one's report pipe. Whatever ends the row early (an error in the fork
/// loop, a `?`, a panic), dropping this kills and reaps every child not yet
/// reaped, so none is left blocked on the start pipe.
struct Forked(Vec<(Pid, PipeReader)>);

impl Drop for Forked {
    fn drop(&mut self) {
        for (pid, _report) in self.0.drain(..) {
            // Our own child, not yet reaped (so the pid cannot have been
            // reused).
            let _ = kill(pid, Signal::SIGKILL);
            reap(pid);
        }
    }
}

/// Body of a forked worker process; never returns.
fn worker_child(
    w: &Worker,
    ds: &DataSet,
    k: usize,
    n: usize,
    mut go: PipeReader,
    mut out: PipeWriter,
) -> ! {
    // Wait for the start signal: EOF on `go` once the parent closes it.
    let mut b = [0u8; 1];
    while let Err(e) = go.read(&mut b) {
        if e.kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load_with_worker(w, ds, k, n, &ProgressBar::hidden())
    }));
    let code = match r {
        Ok(part) => match serde_json::to_vec(&part) {
            Ok(v) if out.write_all(&v).is_ok() => 0,
            _ => 2,
        },
        Err(_) => 3,
    };
    // SAFETY: ends the forked child without running the parent's
    // destructors or atexit handlers.
    unsafe { libc::_exit(code) }
}

fn run_process(o: &Opts, ds: &DataSet, pb: &ProgressBar, method: Method) -> Res<Run> {
    let loader = new_loader(o, ds, method)?;
    let cpu0 = Cpu::now();
    loader.spawn().map_err(|e| e.to_string())?;
    let n = o.workers as usize;
    // The children wait for EOF on `go_r`: the parent's closing `go_w`.
    // `forked` is declared after the start pipe so that on an early return
    // it is dropped first: the children are killed before `go_w` closes.
    let (go_r, go_w) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let mut forked = Forked(Vec::with_capacity(n));
    for k in 0..n {
        // Any error here returns with `forked` dropped: the workers
        // already forked are killed and reaped (and the row fails whole).
        let w = loader
            .worker(k as u32)
            .map_err(|e| format!("worker {k}: {e}"))?;
        let (r, wr) = std::io::pipe().map_err(|e| format!("pipe for worker {k}: {e}"))?;
        // SAFETY: after fork in a multi-threaded process a child may only
        // call async-signal-safe functions, since another thread may have
        // held a lock (the allocator's) at the fork. This process has one
        // thread here: rows run one at a time, the earlier rows' threads
        // are joined (scoped), the loader of this row runs in its own
        // forked process (`spawn`), and progress bars draw in this thread
        // (no ticker). So the child may run the worker loop (the engine's
        // API, allocation, write) and then `_exit`s.
        match unsafe { fork() } {
            Err(e) => {
                return Err(format!("fork of worker {k}: {}", std::io::Error::from(e)));
            }
            Ok(ForkResult::Child) => {
                // The child's copies of the parent's ends: the start
                // pipe's write end and every report pipe's read end. The
                // child leaves with `_exit`, so it closes them here (and
                // `forked`, emptied, kills no sibling if it ever drops).
                drop(go_w);
                drop(r);
                drop(std::mem::take(&mut forked.0));
                worker_child(&w, ds, k, n, go_r, wr);
            }
            Ok(ForkResult::Parent { child }) => {
                drop(wr);
                forked.0.push((child, r));
            }
        }
    }
    drop(go_r);
    let t0 = sys::now_ns();
    drop(go_w); // go
    // Collect the reports; meanwhile show progress from the loader's counters.
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); forked.0.len()];
    let mut open: Vec<bool> = vec![true; forked.0.len()];
    let mut t_end = t0;
    let mut chunk = vec![0u8; 1 << 16];
    while open.iter().any(|&x| x) {
        let (idx, mut pfds): (Vec<usize>, Vec<PollFd>) = forked
            .0
            .iter()
            .enumerate()
            .filter(|(i, _)| open[*i])
            .map(|(i, (_, r))| (i, PollFd::new(r.as_fd(), PollFlags::POLLIN)))
            .unzip();
        // An error (EINTR) leaves every revents empty: polled again.
        let _ = poll(&mut pfds, 50u16);
        pb.set_position(loader.stats().completions.min(ds.files.len() as u64));
        let ready: Vec<usize> = idx
            .into_iter()
            .zip(&pfds)
            .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(i, _)| i)
            .collect();
        drop(pfds);
        for i in ready {
            match forked.0[i].1.read(&mut chunk) {
                Ok(0) => {
                    open[i] = false;
                    t_end = sys::now_ns();
                }
                Ok(r) => bufs[i].extend_from_slice(&chunk[..r]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    open[i] = false;
                    t_end = sys::now_ns();
                }
            }
        }
    }
    let wall_s = (t_end - t0) as f64 * 1e-9;
    let mut part = Part::default();
    for (i, (pid, report)) in std::mem::take(&mut forked.0).into_iter().enumerate() {
        drop(report);
        let status = reap(pid);
        let exited_ok = matches!(status, Some(WaitStatus::Exited(_, 0)));
        match serde_json::from_slice::<Part>(&bufs[i]) {
            Ok(p) if exited_ok => part.merge(p),
            Ok(p) => {
                part.merge(p);
                part.fatal
                    .get_or_insert_with(|| format!("worker {i}: {}", describe(status)));
            }
            Err(e) => {
                part.fatal.get_or_insert_with(|| {
                    format!("worker {i} ({}): bad report: {e}", describe(status))
                });
            }
        }
    }
    // Reaps the loader child, so RUSAGE_CHILDREN includes it.
    loader.shutdown().map_err(|e| e.to_string())?;
    let stats = loader.stats();
    drop(loader);
    Ok(Run {
        wall_s,
        cpu: Cpu::now().since(cpu0),
        part,
        stats: Some(stats),
        parallel: n,
    })
}

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

/// Summary figures of a run, for the table and the JSON.
struct Figures {
    files_s: f64,
    mb_s: f64,
    cpu_per_1k: f64,
    p50_us: f64,
    p99_us: f64,
    verified: bool,
    problems: Vec<String>,
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

fn label(o: &Opts, m: Method, pool_threads: usize) -> String {
    match m {
        Method::Seq => "std::fs::read, 1 thread".into(),
        Method::Pool => format!("std::fs::read, {pool_threads} threads"),
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
fn left_out_line(ds: &DataSet) -> Option<String> {
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
    // the size is bounded by the budget below.
    let probe = Config {
        max_file_size: 1,
        ..loader_config(o, 1, o.direct)
    };
    if let Err(e) = probe.validate() {
        let flag = match e.field() {
            "n_workers" => "--workers".to_string(),
            f => format!("--{}", f.replace('_', "-")),
        };
        return Err(format!("{flag}: {e}"));
    }
    Budget::new(o.workers, o.queue_depth, o.memory_budget)
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
    let pool_threads = if o.pool_threads == 0 {
        2 * sys::cores()
    } else {
        o.pool_threads
    };
    let methods: Vec<Method> = match &o.methods {
        Some(m) => m.clone(),
        None => {
            let mut m = vec![Method::Seq, Method::Pool, Method::Threads, Method::Process];
            if o.direct {
                m.extend([Method::ThreadsDirect, Method::ProcessDirect]);
            }
            m
        }
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
    let left_out_line = left_out_line(&ds);
    if let Some(l) = &left_out_line {
        say(l);
    }
    say(&budget.explain());
    if !cold && o.warmup {
        let pb = progress::bar(o.progress, ds.files.len() as u64, "warm-up (not measured)");
        run_pool(&ds, pool_threads, &pb);
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
                Method::Seq => Ok(run_pool(&ds, 1, &pb)),
                Method::Pool => Ok(run_pool(&ds, pool_threads, &pb)),
                Method::Threads | Method::ThreadsDirect => run_threads(&o, &ds, &pb, m),
                Method::Process | Method::ProcessDirect => run_process(&o, &ds, &pb, m),
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

    // Expected bytes of the sampled files, read after the timed rows.
    let mut expect = HashMap::new();
    for &i in &ds.sample {
        if let Ok(d) = std::fs::read(&ds.files[i as usize]) {
            expect.insert(i, (d.len() as u64, sys::hash_bytes(&d)));
        }
    }

    // Per method: the run with the median files/s.
    struct Row {
        method: Method,
        run: Option<Run>,
        fig: Option<Figures>,
        all_files_s: Vec<f64>,
        error: Option<String>,
    }
    let mut rows = Vec::new();
    for ((mi, &m), rs) in methods.iter().enumerate().zip(runs) {
        let mut scored: Vec<(f64, Run)> = rs
            .into_iter()
            .map(|mut r| {
                let f = figures(&mut r, &ds, &expect);
                (f.files_s, r)
            })
            .collect();
        let all: Vec<f64> = scored.iter().map(|s| s.0).collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mid = scored.len().saturating_sub(1) / 2;
        let mut run = (!scored.is_empty()).then(|| scored.swap_remove(mid).1);
        let fig = run.as_mut().map(|r| figures(r, &ds, &expect));
        rows.push(Row {
            method: m,
            run,
            fig,
            all_files_s: all,
            error: row_errors[mi].take(),
        });
    }
    // Ratios compare rows that loaded the same files: a row that lost files
    // (or failed verification) neither gets nor gives one.
    let base = |m: Method| {
        rows.iter()
            .find(|r| r.method == m)
            .and_then(|r| r.fig.as_ref())
            .filter(|f| f.verified)
            .map(|f| f.files_s)
    };
    let (seq_fs, pool_fs) = (base(Method::Seq), base(Method::Pool));
    let ratio = |f: &Figures, b: Option<f64>| b.filter(|_| f.verified).map(|b| f.files_s / b);

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
    let _ = writeln!(
        out,
        "asyncloader: workers {}, queue_depth {}, max_file_size {} (cap {}), dispatch_n {}, idle_iters {}, loader_threads {}, ring_window {}",
        o.workers,
        o.queue_depth,
        ds.max.max(1),
        human(ds.cap),
        o.dispatch_n,
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
        "\n{:<38} {:>10} {:>9} {:>10} {:>9} {:>9} {:>7} {:>7}  verify",
        "method", "files/s", "MB/s", "CPU s/1k", "p50 us", "p99 us", "x seq", "x pool"
    );
    let fmt_ratio = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
    for r in &rows {
        let name = label(&o, r.method, pool_threads);
        match (&r.fig, &r.error) {
            (Some(f), _) => {
                let _ = writeln!(
                    out,
                    "{:<38} {:>10.0} {:>9.1} {:>10.4} {:>9.1} {:>9.1} {:>7} {:>7}  {}",
                    name,
                    f.files_s,
                    f.mb_s,
                    f.cpu_per_1k,
                    f.p50_us,
                    f.p99_us,
                    fmt_ratio(ratio(f, seq_fs)),
                    fmt_ratio(ratio(f, pool_fs)),
                    if f.verified { "ok" } else { "FAILED" }
                );
            }
            (None, e) => {
                let _ = writeln!(
                    out,
                    "{name:<38} failed: {}",
                    e.as_deref().unwrap_or("no run")
                );
            }
        }
    }
    let _ = writeln!(out);
    for r in &rows {
        if let (Some(run), Some(s)) = (&r.run, r.run.as_ref().and_then(|r| r.stats.as_ref())) {
            let files = s.completions.max(1) as f64;
            let _ = writeln!(
                out,
                "{}: backend {}, {} loader threads, {} batches ({:.1} files/batch), {} syscalls ({:.3}/file), direct reads {}, buffered fallbacks {}, errors {}",
                r.method.name(),
                s.backend,
                s.loader_threads,
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
    for r in &rows {
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
                    "label": label(&o, r.method, pool_threads),
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
                        "verified": f.verified,
                        "problems": f.problems,
                        "loader": run.stats.as_ref().map(|s| json!({
                            "backend": s.backend.name(),
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
                "dispatch_n": o.dispatch_n,
                "idle_iters": o.idle_iters,
                "loader_threads": o.loader_threads,
                "ring_window": o.ring_window,
                "pool_threads": pool_threads,
            },
            "rows": jrows,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
    }
    let all_ok = rows
        .iter()
        .all(|r| r.error.is_none() && r.fig.as_ref().is_some_and(|f| f.verified));
    Ok(if all_ok { 0 } else { 1 })
}
