//! The fallback backend: a small pool of threads doing
//! `statx` → `open` → `pread` → `close`, for kernels or containers where
//! io_uring cannot be set up (`ENOSYS`, `EPERM` from seccomp,
//! `io_uring_disabled`).
//!
//! It applies the same rules as the io_uring backend (`super::plan`,
//! `super::after_read`): the same errnos for bad files, the same direct-I/O
//! sizing and fallback, the same growth and short-read handling. Opens use
//! `O_NONBLOCK`, so a FIFO swapped in after the statx cannot block a pool
//! thread (regular files ignore the flag), and an `fstat` on the open file
//! re-checks that it is still a regular file.

use std::ffi::CStr;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::{Backend, BackendCounters, Done, Job, Next, after_read, plan};

/// A job moved to a pool thread.
struct SendJob(Job);

// SAFETY: a Job's pointers (path, buffer) are valid until its Done is
// reported and belong exclusively to the backend meanwhile; the pool thread
// that receives it is the only one that touches them.
unsafe impl Send for SendJob {}

/// Pool of `threads` I/O threads fed through a channel.
pub struct ThreadsBackend {
    jobs: Option<Sender<SendJob>>,
    done: Receiver<(Done, BackendCounters)>,
    pending: Vec<Job>,
    in_flight: usize,
    window: usize,
    threads: Vec<JoinHandle<()>>,
    counters: BackendCounters,
}

impl ThreadsBackend {
    /// A pool of `min(window, 8)` threads with `window` jobs in flight.
    pub fn new(window: u32, direct: bool, max_file_size: u64) -> std::io::Result<Self> {
        let window = window.max(1) as usize;
        let (jtx, jrx) = crossbeam_channel::unbounded::<SendJob>();
        let (dtx, drx) = crossbeam_channel::unbounded();
        let mut threads = Vec::new();
        for i in 0..window.min(8) {
            let (jrx, dtx) = (jrx.clone(), dtx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("al-io-{i}"))
                    .spawn(move || {
                        for SendJob(job) in jrx {
                            let mut c = BackendCounters::default();
                            let result = load(&job, direct, max_file_size, &mut c);
                            if dtx.send((Done { g: job.g, result }, c)).is_err() {
                                break;
                            }
                        }
                    })?,
            );
        }
        Ok(ThreadsBackend {
            jobs: Some(jtx),
            done: drx,
            pending: Vec::new(),
            in_flight: 0,
            window,
            threads,
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

/// An open descriptor, closed on drop.
struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

fn open(path: &CStr, direct: bool, c: &mut BackendCounters) -> Result<Fd, i32> {
    let mut flags = libc::O_RDONLY | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    if direct {
        flags |= libc::O_DIRECT;
    }
    c.syscalls += 2;
    // SAFETY: `path` is a valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return Err(errno());
    }
    let fd = Fd(fd);
    // SAFETY: fstat writes into a local stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on our descriptor.
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
        return Err(errno());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(libc::EINVAL);
    }
    Ok(fd)
}

/// Loads one job; the rules match the io_uring backend's.
fn load(job: &Job, direct: bool, max: u64, c: &mut BackendCounters) -> Result<u64, i32> {
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
    let mut fd = match open(path, use_direct, c) {
        Err(libc::EINVAL) if use_direct => {
            c.buffered_fallbacks += 1;
            use_direct = false;
            open(path, false, c)?
        }
        r => r?,
    };
    let (mut offset, mut req) = (0u64, p.req_len);
    loop {
        c.syscalls += 1;
        debug_assert!(offset + req <= job.buf_len);
        // SAFETY: offset + req <= buf_len, so the destination lies in the
        // job's buffer, which is ours until the job is reported done.
        let n = unsafe {
            libc::pread(
                fd.0,
                job.buf.add(offset as usize).cast(),
                req as usize,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            match errno() {
                libc::EINTR | libc::EAGAIN => continue,
                libc::EINVAL if use_direct => {
                    c.buffered_fallbacks += 1;
                    use_direct = false;
                    fd = open(path, false, c)?;
                    (offset, req) = (0, job.buf_len);
                    continue;
                }
                e => return Err(e),
            }
        }
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
                    fd = open(path, false, c)?;
                }
                (offset, req) = (o, len);
            }
        }
    }
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
        // A blocking pread cannot be cancelled; shutdown waits for it, then
        // gives up after its deadline.
    }

    fn take_counters(&mut self) -> BackendCounters {
        std::mem::take(&mut self.counters)
    }
}

impl Drop for ThreadsBackend {
    fn drop(&mut self) {
        // Closing the job channel ends the pool threads after their job.
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
