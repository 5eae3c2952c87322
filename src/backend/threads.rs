//! The fallback backend: a small pool of threads doing
//! `statx` → `open` → `pread`... → `close`, for kernels or containers where
//! io_uring cannot be set up (`ENOSYS`, `EPERM` from seccomp,
//! `io_uring_disabled`).
//!
//! It applies the same rules as the io_uring backend (`super::plan`,
//! `super::after_read`): the same errnos for bad files, the same direct-I/O
//! sizing and fallback, the same growth, short-read and read-until-0
//! handling. Opens use `O_NONBLOCK`, so a FIFO swapped in after the statx
//! cannot block a pool thread, and an `fstat` on the open file re-checks
//! that it is still a regular file. A regular file that answers `EAGAIN`
//! anyway (`/proc/kmsg` with nothing pending) is switched to blocking reads
//! rather than polled.
//!
//! Shutdown is bounded: a `pread` cannot be interrupted, so the pool
//! abandons what it cannot finish. [`Backend::cancel_all`] completes the
//! jobs not started yet with `ECANCELED` and makes running jobs stop at
//! their next read; dropping the backend abandons queued jobs unstarted,
//! joins the threads for at most [`JOIN_DEADLINE`], detaches those still
//! stuck in a read and says so in one log line. A detached thread may
//! still write into its job's buffer when its read returns: each pool
//! thread holds a clone of the backend's keep-alive guard (the loader's
//! shared region) until it returns, so that memory stays mapped — and, the
//! entry never being completed, owned by nobody else — under that write.

use std::ffi::{CStr, OsStr};
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::range::{self, FileCache, RangeFile, RangePlan};
use super::{Backend, BackendCounters, Done, Job, KeepAlive, Next, Span, after_read, plan};

/// How long dropping the backend waits for its threads before it detaches
/// the ones still stuck (the loader loop has already waited for in-flight
/// jobs before it drops the backend).
pub const JOIN_DEADLINE: Duration = Duration::from_secs(1);

/// A job moved to a pool thread.
struct SendJob(Job);

// SAFETY: by `Job::new`'s contract a Job's path and buffer are valid and
// the backend's alone until its Done is reported, or while the keep-alive
// guard lives if the backend is dropped first (the pool thread holding the
// job keeps a clone of it); the pool thread that receives the job is the
// only one that touches them.
unsafe impl Send for SendJob {}

/// Pool of `threads` I/O threads fed through a channel.
pub struct ThreadsBackend {
    jobs: Option<Sender<SendJob>>,
    /// The pool's end of the job channel too: cancelling and dropping take
    /// back the jobs no thread has started.
    queued: Receiver<SendJob>,
    done: Receiver<(Done, BackendCounters)>,
    pending: Vec<Job>,
    /// Jobs completed without a thread (cancelled before they started).
    ready: Vec<Done>,
    in_flight: usize,
    window: usize,
    threads: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    counters: BackendCounters,
}

impl ThreadsBackend {
    /// A pool of `min(window, 8)` threads with `window` jobs in flight.
    /// Every thread holds a clone of `keep_alive` until it returns (see the
    /// module doc).
    pub fn new(
        window: u32,
        direct: bool,
        max_file_size: u64,
        keep_alive: KeepAlive,
        range_open_each: bool,
    ) -> std::io::Result<Self> {
        let window = window.max(1) as usize;
        let (jtx, jrx) = crossbeam_channel::unbounded::<SendJob>();
        let (dtx, drx) = crossbeam_channel::unbounded();
        let cancel = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..window.min(8) {
            let (jrx, dtx) = (jrx.clone(), dtx.clone());
            let (cancel, keep_alive) = (cancel.clone(), keep_alive.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("al-io-{i}"))
                .spawn(move || {
                    // Held until this thread returns, even detached.
                    let _keep_alive = keep_alive;
                    // Files of range jobs, kept open briefly for the next
                    // ranges of the same file (see `range`).
                    let mut files = FileCache::new(range_open_each);
                    loop {
                        let next = if files.is_empty() {
                            jrx.recv().map_err(|_| true)
                        } else {
                            jrx.recv_timeout(Duration::from_nanos(range::IDLE_CLOSE_NS))
                                .map_err(|e| e.is_disconnected())
                        };
                        let job = match next {
                            Ok(SendJob(job)) => job,
                            Err(true) => break,
                            Err(false) => {
                                files.trim(u64::MAX);
                                continue;
                            }
                        };
                        let mut c = BackendCounters::default();
                        let (result, skip) = if cancel.load(Ordering::Acquire) {
                            (Err(libc::ECANCELED), 0)
                        } else if let Some(span) = job.range {
                            load_range(&job, span, direct, &cancel, &mut c, &mut files)
                        } else {
                            (load(&job, direct, max_file_size, &cancel, &mut c), 0)
                        };
                        let done = Done {
                            g: job.g,
                            result,
                            skip,
                        };
                        if dtx.send((done, c)).is_err() {
                            break;
                        }
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The threads already started end when `jtx` drops.
                    drop(jtx);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(ThreadsBackend {
            jobs: Some(jtx),
            queued: jrx,
            done: drx,
            pending: Vec::new(),
            ready: Vec::new(),
            in_flight: 0,
            window,
            threads,
            cancel,
            counters: BackendCounters::default(),
        })
    }

    fn take(&mut self, d: (Done, BackendCounters), out: &mut Vec<Done>) {
        self.in_flight -= 1;
        self.counters.buffered_fallbacks += d.1.buffered_fallbacks;
        self.counters.direct_reads += d.1.direct_reads;
        self.counters.syscalls += d.1.syscalls;
        out.push(d.0);
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The errno of a failed std or nix call.
fn os(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Switches `file` to blocking reads (a regular file that answered
/// `EAGAIN` under `O_NONBLOCK`).
fn set_blocking(file: &File, c: &mut BackendCounters) -> Result<(), i32> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    c.syscalls += 2;
    let fl = fcntl(file, FcntlArg::F_GETFL).map_err(|e| e as i32)?;
    let fl = OFlag::from_bits_retain(fl) & !OFlag::O_NONBLOCK;
    fcntl(file, FcntlArg::F_SETFL(fl)).map_err(|e| e as i32)?;
    Ok(())
}

/// Opens `path` read-only with `O_NOCTTY | O_NONBLOCK` (std adds
/// `O_CLOEXEC`), plus `O_DIRECT` when asked, and checks on the open file
/// that it is a regular file.
fn open(path: &CStr, direct: bool, c: &mut BackendCounters) -> Result<File, i32> {
    let mut flags = libc::O_NOCTTY | libc::O_NONBLOCK;
    if direct {
        flags |= libc::O_DIRECT;
    }
    c.syscalls += 2;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(Path::new(OsStr::from_bytes(path.to_bytes())))
        .map_err(os)?;
    if !file.metadata().map_err(os)?.file_type().is_file() {
        return Err(libc::EINVAL);
    }
    Ok(file)
}

/// Loads one job; the rules match the io_uring backend's. Stops with
/// `ECANCELED` before any read once `cancel` is set.
fn load(
    job: &Job,
    direct: bool,
    max: u64,
    cancel: &AtomicBool,
    c: &mut BackendCounters,
) -> Result<u64, i32> {
    let path = job.path();
    let mut stx: libc::statx = {
        // SAFETY: statx is plain old data.
        unsafe { std::mem::zeroed() }
    };
    let mut mask = libc::STATX_TYPE | libc::STATX_SIZE;
    if direct {
        mask |= libc::STATX_DIOALIGN;
    }
    c.syscalls += 1;
    // SAFETY: valid C string and a local statx buffer.
    if unsafe { libc::statx(libc::AT_FDCWD, path.as_ptr(), 0, mask, &mut stx) } != 0 {
        return Err(errno());
    }
    let p = plan(&stx, direct, max, job.buf_len)?;
    if p.fallback {
        c.buffered_fallbacks += 1;
    }
    let mut use_direct = p.direct;
    let mut file = match open(path, use_direct, c) {
        Err(libc::EINVAL) if use_direct => {
            c.buffered_fallbacks += 1;
            use_direct = false;
            open(path, false, c)?
        }
        r => r?,
    };
    let (mut offset, mut req) = (0u64, p.req_len);
    let mut blocking = false;
    loop {
        if cancel.load(Ordering::Acquire) {
            return Err(libc::ECANCELED);
        }
        c.syscalls += 1;
        debug_assert!(offset + req <= job.buf_len);
        // SAFETY: offset + req <= buf_len, so the slice lies in the job's
        // buffer, which is valid for writes and ours alone until the job is
        // reported done (`Job::new`'s contract), and initialized (mapped
        // memory, zero-filled when created); the slice lives only for this read.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(job.buf.add(offset as usize), req as usize) };
        let n = match file.read_at(dst, offset) {
            Ok(n) => n,
            Err(e) => match os(e) {
                libc::EINTR => continue,
                libc::EAGAIN if !blocking => {
                    set_blocking(&file, c)?;
                    blocking = true;
                    continue;
                }
                libc::EINVAL if use_direct => {
                    c.buffered_fallbacks += 1;
                    use_direct = false;
                    file = open(path, false, c)?;
                    blocking = false;
                    (offset, req) = (0, job.buf_len);
                    continue;
                }
                e => return Err(e),
            },
        };
        if use_direct && n > 0 {
            c.direct_reads += 1;
        }
        match after_read(offset, n as u64, req, p.stat_size, max, job.buf_len) {
            Next::Done(total) => return Ok(total),
            Next::TooBig => return Err(libc::EFBIG),
            Next::Continue { offset: o, len } => {
                if use_direct {
                    // Continue buffered: the offset need not be aligned.
                    use_direct = false;
                    file = open(path, false, c)?;
                    blocking = false;
                }
                (offset, req) = (o, len);
            }
        }
    }
}

/// Loads a range job: `(bytes, where they start in the buffer)` or the
/// errno. The file comes from this pool thread's cache.
fn load_range(
    job: &Job,
    span: Span,
    direct: bool,
    cancel: &AtomicBool,
    c: &mut BackendCounters,
    files: &mut FileCache,
) -> (Result<u64, i32>, u32) {
    let mut i = match files.get(job.path(), direct, c) {
        Ok(i) => i,
        Err(e) => return (Err(e), 0),
    };
    let rf = files.file(i);
    if rf.direct && RangePlan::new(span, job.buf, job.buf_len, rf).is_ok_and(|p| !p.direct) {
        // A range direct I/O cannot read exactly (an unaligned
        // destination): the file opened buffered.
        c.buffered_fallbacks += 1;
        files.put(i, crate::region::now_ns());
        i = match files.get(job.path(), false, c) {
            Ok(i) => i,
            Err(e) => return (Err(e), 0),
        };
    }
    let r = read_range(job, span, files.file(i), cancel, c);
    files.put(i, crate::region::now_ns());
    match r {
        Ok((n, skip)) => (Ok(n), skip as u32),
        Err(e) => (Err(e), 0),
    }
}

/// Reads `span` of the file in pieces of at most `range::CHUNK`, each
/// continued after a short read until a read returns 0; a direct read the
/// file system refuses (`EINVAL`) starts over buffered.
fn read_range(
    job: &Job,
    span: Span,
    rf: &RangeFile,
    cancel: &AtomicBool,
    c: &mut BackendCounters,
) -> Result<(u64, u64), i32> {
    let mut plan = RangePlan::new(span, job.buf, job.buf_len, rf)?;
    let mut reopened: Option<File> = None;
    let mut pos = plan.start;
    let mut eof = u64::MAX;
    while pos < plan.end {
        if cancel.load(Ordering::Acquire) {
            return Err(libc::ECANCELED);
        }
        let file = reopened.as_ref().unwrap_or(&rf.file);
        let len = range::CHUNK.min(plan.end - pos);
        c.syscalls += 1;
        // SAFETY: pos - start + len <= end - start <= buf_len (RangePlan
        // keeps the span inside the buffer), so the slice lies in the job's
        // buffer or destination, valid for writes and ours alone until the
        // job is reported done (`Job::new`'s contract), and initialized
        // (mapped memory, or the caller's destination); it lives only for
        // this read.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(job.buf.add((pos - plan.start) as usize), len as usize)
        };
        let n = match file.read_at(dst, pos) {
            Ok(n) => n as u64,
            Err(e) => match os(e) {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    set_blocking(file, c)?;
                    continue;
                }
                libc::EINVAL if plan.direct => {
                    c.buffered_fallbacks += 1;
                    c.syscalls += 1;
                    let path = Path::new(OsStr::from_bytes(job.path().to_bytes()));
                    reopened = Some(
                        OpenOptions::new()
                            .read(true)
                            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                            .open(path)
                            .map_err(os)?,
                    );
                    plan = RangePlan {
                        start: span.offset,
                        end: span.offset + span.len,
                        skip: 0,
                        direct: false,
                    };
                    pos = plan.start;
                    continue;
                }
                e => return Err(e),
            },
        };
        if plan.direct && n > 0 {
            c.direct_reads += 1;
        }
        if n == 0 || (plan.direct && n < len) {
            eof = pos + n;
            break;
        }
        pos += n;
    }
    Ok((plan.result(span, eof), plan.skip))
}

impl Backend for ThreadsBackend {
    fn room(&self) -> usize {
        self.window - self.in_flight
    }

    fn push(&mut self, job: Job) {
        self.in_flight += 1;
        self.pending.push(job);
    }

    fn has_followups(&self) -> bool {
        false
    }

    fn submit(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let tx = self.jobs.as_ref().expect("pool alive until drop");
        for job in self.pending.drain(..) {
            tx.send(SendJob(job))
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EPIPE))?;
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Done>, wait: Option<Duration>) -> std::io::Result<()> {
        let before = out.len();
        self.in_flight -= self.ready.len();
        out.append(&mut self.ready);
        while let Ok(d) = self.done.try_recv() {
            self.take(d, out);
        }
        if out.len() == before
            && self.in_flight > self.pending.len()
            && let Some(w) = wait
            && let Ok(d) = self.done.recv_timeout(w)
        {
            self.take(d, out);
            while let Ok(d) = self.done.try_recv() {
                self.take(d, out);
            }
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn cancel_all(&mut self) {
        // A blocking pread cannot be interrupted: running jobs stop at their
        // next read; jobs no thread has started complete now.
        self.cancel.store(true, Ordering::Release);
        for job in self.pending.drain(..) {
            self.ready.push(Done::new(job.g, Err(libc::ECANCELED)));
        }
        while let Ok(SendJob(job)) = self.queued.try_recv() {
            self.ready.push(Done::new(job.g, Err(libc::ECANCELED)));
        }
    }

    fn take_counters(&mut self) -> BackendCounters {
        std::mem::take(&mut self.counters)
    }
}

impl Drop for ThreadsBackend {
    fn drop(&mut self) {
        // Jobs no thread has started are abandoned, never started.
        self.cancel.store(true, Ordering::Release);
        // Closing the job channel ends each pool thread after its job.
        self.jobs = None;
        let mut unstarted = self.pending.len();
        self.pending.clear();
        while self.queued.try_recv().is_ok() {
            unstarted += 1;
        }
        let deadline = Instant::now() + JOIN_DEADLINE;
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut stuck = 0;
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            } else {
                // Detached: it keeps its keep-alive guard until its read
                // returns, then sees the cancellation and exits.
                stuck += 1;
            }
        }
        if unstarted > 0 || stuck > 0 {
            crate::process::log!(
                "thread-pool backend stopped: {unstarted} queued jobs abandoned \
                 unstarted, {stuck} threads stuck in a read detached"
            );
        }
    }
}
