//! The methods (rows): `std::fs::read` on one thread or a pool, and
//! asyncloader with worker threads or forked worker processes.

use std::io::{PipeReader, PipeWriter, Read, Write as _};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use asyncloader::{Config, ErrorKind, Loader, Worker};
use indicatif::ProgressBar;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::data::DataSet;
use super::measure::{Part, Run, timed_threads};
use super::{Method, Opts, Res};
use crate::cli::progress::Ticks;
use crate::cli::sys::{self, Cpu};

/// Reads files `next..` (shared index) with std::fs::read.
fn read_files(ds: &DataSet, next: &AtomicUsize, pb: &ProgressBar) -> Part {
    let mut part = Part {
        lat: Vec::with_capacity(ds.files.len()),
        ..Part::default()
    };
    let mut ticks = Ticks::new(pb);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(p) = ds.files.get(i) else { break };
        let t = sys::now_ns();
        let r = std::fs::read(p);
        let lat = sys::now_ns() - t;
        let pb_ = p.as_os_str().as_bytes();
        match r {
            Ok(d) => part.loaded_at(ds, i, &d, lat),
            Err(e) => part.failed(pb_, e, lat),
        }
        ticks.step();
    }
    part
}

pub(super) fn run_pool(ds: &DataSet, threads: usize, pb: &ProgressBar) -> Run {
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

/// One asyncloader worker's loop: it takes the next file index from `next`
/// (shared by the row's workers, as the ceiling and pool rows share theirs,
/// so no worker idles at the end while another still has a list to go)
/// and keeps up to `queue_depth` requests outstanding.
fn load_with_worker(w: &Worker, ds: &DataSet, next: &AtomicUsize, pb: &ProgressBar) -> Part {
    let mut part = Part {
        lat: Vec::with_capacity(ds.files.len()),
        ..Part::default()
    };
    let mut ticks = Ticks::new(pb);
    let take = |e: asyncloader::Entry, part: &mut Part| {
        let lat = e.latency_ns();
        match e.error() {
            // The tag is the file's index, as the other rows know theirs.
            0 => part.loaded_at(ds, e.tag() as usize, e.data(), lat),
            err => part.failed(e.path_bytes(), std::io::Error::from_raw_os_error(err), lat),
        }
        e.release();
    };
    // A file taken from `next` whose request found the queue full.
    let mut pending: Option<usize> = None;
    let (mut outstanding, mut exhausted) = (0usize, false);
    loop {
        loop {
            let i = match pending.take() {
                Some(i) => i,
                None if exhausted => break,
                None => match next.fetch_add(1, Ordering::Relaxed) {
                    i if i < ds.files.len() => i,
                    _ => {
                        exhausted = true;
                        break;
                    }
                },
            };
            match w.request_tagged(ds.files[i].as_os_str().as_bytes(), i as u64) {
                Ok(()) => outstanding += 1,
                Err(e) if e.kind() == ErrorKind::QueueFull => {
                    pending = Some(i);
                    break;
                }
                Err(e) => {
                    part.fatal = Some(format!("request {}: {e}", ds.files[i].display()));
                    return part;
                }
            }
        }
        if outstanding == 0 {
            break;
        }
        match w.wait_get_timeout(std::time::Duration::from_secs(60)) {
            Ok(e) => take(e, &mut part),
            Err(e) => {
                part.fatal = Some(format!("wait_get with {outstanding} outstanding: {e}"));
                return part;
            }
        }
        outstanding -= 1;
        ticks.step();
        while let Some(e) = w.try_get() {
            take(e, &mut part);
            outstanding -= 1;
            ticks.step();
        }
    }
    part
}

/// The next file index of a row, shared with forked worker processes: the
/// first word of a `MAP_SHARED` page of a memfd (a private anonymous
/// mapping would be copied on the children's first write).
struct SharedNext {
    map: memmap2::MmapMut,
}

impl SharedNext {
    fn new() -> Res<Self> {
        let fd = nix::sys::memfd::memfd_create(
            c"asyncloader-bench-next",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| format!("memfd_create: {e}"))?;
        let f = std::fs::File::from(fd);
        f.set_len(4096).map_err(|e| format!("memfd size: {e}"))?;
        // SAFETY: a fresh memfd nobody else has a descriptor of (close-on-
        // exec, never passed on); only this process and its forked children
        // map it, and they touch it only through the atomic below.
        let map = unsafe { memmap2::MmapMut::map_mut(&f) }.map_err(|e| format!("mmap: {e}"))?;
        Ok(SharedNext { map })
    }

    fn get(&self) -> &AtomicUsize {
        // SAFETY: the mapping is page-aligned (so aligned for AtomicUsize),
        // 4096 bytes long, zero-filled by the kernel (index 0), lives as
        // long as `self`, and is only ever accessed atomically.
        unsafe { &*(self.map.as_ptr() as *const AtomicUsize) }
    }
}

/// The loader of a row: buffers sized by the largest file of the data set
/// (at most the budget's cap: larger files are not in it).
pub(super) fn loader_config(o: &Opts, max_file_size: u64, direct: bool) -> Config {
    Config {
        queue_depth: o.queue_depth,
        max_file_size: max_file_size.max(1),
        n_workers: o.workers,
        dispatch_n: o.dispatch_n,
        idle_iters: o.idle_iters,
        direct,
        loader_threads: o.loader_threads,
        ring_window: o.ring_window,
        drive: o.drive,
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

pub(super) fn run_threads(o: &Opts, ds: &DataSet, pb: &ProgressBar, method: Method) -> Res<Run> {
    let loader = new_loader(o, ds, method)?;
    let cpu0 = Cpu::now();
    loader.start().map_err(|e| e.to_string())?;
    let n = o.workers as usize;
    let workers = (0..o.workers)
        .map(|k| loader.worker(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // Timed like the ceiling rows: from when every worker thread is set up
    // (spawned, its first load done) to the last one's end.
    let next_k = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    let (wall_s, part) = timed_threads(n, |start| {
        let k = next_k.fetch_add(1, Ordering::Relaxed);
        let w = &workers[k];
        warm_up(w, ds, k);
        start();
        load_with_worker(w, ds, &next, pb)
    });
    drop(workers);
    finish_loader_row(loader, wall_s, cpu0, part, n)
}

/// Sets a worker up before the clock starts, as the ceiling rows set up
/// their rings and buffers first: one load of the worker's first file,
/// not counted, makes what a long run has made by then (with the workers
/// driving, the worker's io_uring in this process). Errors are left to the
/// measured loop, which loads the file again.
fn warm_up(w: &Worker, ds: &DataSet, k: usize) {
    let Some(p) = ds.files.get(k) else { return };
    if w.request(p).is_ok()
        && let Ok(e) = w.wait_get_timeout(std::time::Duration::from_secs(60))
    {
        e.release();
    }
}

/// Shuts the row's loader down (a forked loader is reaped, so
/// RUSAGE_CHILDREN includes it) and makes the row's `Run` with its stats.
fn finish_loader_row(loader: Loader, wall_s: f64, cpu0: Cpu, part: Part, n: usize) -> Res<Run> {
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
    next: &AtomicUsize,
    mut go: PipeReader,
    mut ready: PipeWriter,
    mut out: PipeWriter,
) -> ! {
    // Set up before the clock starts (see `warm_up`), say so, then wait for
    // the start signal: EOF on `go` once the parent closes it.
    warm_up(w, ds, k);
    let _ = ready.write_all(b"r");
    drop(ready);
    let mut b = [0u8; 1];
    while let Err(e) = go.read(&mut b) {
        if e.kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load_with_worker(w, ds, next, &ProgressBar::hidden())
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

pub(super) fn run_process(o: &Opts, ds: &DataSet, pb: &ProgressBar, method: Method) -> Res<Run> {
    let loader = new_loader(o, ds, method)?;
    let cpu0 = Cpu::now();
    // Workers that drive their own loads need no loader process: the
    // forked workers drive themselves (and `start` runs no thread here).
    let workers_drive = loader.config().effective_drive() == asyncloader::Drive::Worker;
    if workers_drive {
        loader.start().map_err(|e| e.to_string())?;
        if loader.stats().loader_threads_alive > 0 {
            return Err("ASYNCLOADER_DRIVE=loader contradicts the drive of this row".into());
        }
    } else {
        loader.spawn().map_err(|e| e.to_string())?;
    }
    let n = o.workers as usize;
    // The children wait for EOF on `go_r`: the parent's closing `go_w`.
    // `forked` is declared after the start pipe so that on an early return
    // it is dropped first: the children are killed before `go_w` closes.
    let next = SharedNext::new()?;
    let (go_r, go_w) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    // Each child writes one byte here once set up (`warm_up`).
    let (mut ready_r, ready_w) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
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
        // forked process (`spawn`) or in the workers (`start` with the
        // workers driving starts no thread), and progress bars draw in this thread
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
                drop(ready_r);
                drop(std::mem::take(&mut forked.0));
                worker_child(&w, ds, k, next.get(), go_r, ready_w, wr);
            }
            Ok(ForkResult::Parent { child }) => {
                drop(wr);
                forked.0.push((child, r));
            }
        }
    }
    drop(go_r);
    drop(ready_w);
    // Every child set up (or gone: EOF), then the clock starts.
    let mut seen = 0;
    let mut b = [0u8; 16];
    while seen < n {
        match ready_r.read(&mut b) {
            Ok(0) => break,
            Ok(r) => seen += r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(ready_r);
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
    finish_loader_row(loader, wall_s, cpu0, part, n)
}
