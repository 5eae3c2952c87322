//! The io_uring backend: each file is one linked chain into a fixed
//! descriptor slot, batched with the other files of the pass. Two chains:
//!
//! **The optimistic chain** (the common warm case: a buffered load, while it
//! mostly works — see [`FastPolicy`]): `OPENAT(O_NONBLOCK)` →
//! `READ(buf_len, RWF_NOWAIT)` → `CLOSE`, no statx first (plus a `FADVISE`
//! guard where FIFOs accept `RWF_NOWAIT`, and a 1-byte probe `READ` while
//! [`ProbePolicy`] asks for one). It completes the file only when the result
//! is unambiguous: some bytes within the limit, then end of file (a count
//! that only the end of the file explains, or the probe read returned 0).
//! Anything else — not cached, a FIFO or a device, empty, too big, more
//! behind the first read — goes to the statx path.
//!
//! **The statx path** (cold data, `O_DIRECT`, everything the optimistic
//! chain did not settle), two steps:
//!
//! 1. `STATX(path)` (a direct call while metadata is cached, through
//!    io_uring when it is cold — see [`StatxPolicy`]): learns the type and
//!    size without opening anything, so a FIFO, a device or a directory is
//!    refused before an `open` could block or read forever, a file larger
//!    than `max_file_size` fails with `EFBIG` without being read, and an
//!    `O_DIRECT` read can be sized to the file (rounded up to
//!    `STATX_DIOALIGN`) instead of to the whole buffer, which the kernel
//!    would zero-fill (see docs/bench.md).
//! 2. `OPENAT` into fixed slot `s` (`IO_LINK`) → `READ` from fixed slot `s`
//!    (`IO_HARDLINK`) → `CLOSE` slot `s`. The close is hard-linked because a
//!    short read — the normal case, as the read asks for one byte more than
//!    the file may have — counts as a failure inside a link chain and would
//!    cancel it. A file whose stat size is 0 (procfs, sysfs: the size says
//!    nothing) is opened without the `CLOSE`: it is read until a read
//!    returns 0 (see `super::after_read`), each further `READ` on the file
//!    kept open in its slot — reopening would make a `seq_file` regenerate
//!    everything before the offset, quadratic in the file — and then closed.
//!
//! The read asks for more than the file can hold if it is within the limit
//! (`max_file_size + 1`, or the statx size + 1 rounded up for direct I/O), so
//! a file that grew past the limit is caught by the read itself. A read that
//! fills its request (a file that grew) or stops short before the stat size
//! (an interrupted read) continues buffered at the offset reached.
//!
//! Slots: the loader owns slot numbers (one per in-flight file), since
//! `IORING_FILE_INDEX_ALLOC` cannot feed a linked read. A slot is reused only
//! after every completion of its chain arrived, so a late close never closes
//! the next file. No chain may leave a file installed: when an open
//! succeeded but its `CLOSE` did not run (the optimistic chain's `FADVISE`
//! fails with `ESPIPE` on a FIFO, cancelling the rest of the chain) or was
//! not part of the chain, an explicit `CLOSE` of the slot runs before the
//! file is reported done or goes on to another step. `O_CLOEXEC` is not
//! passed: direct opens refuse it.
//!
//! `O_DIRECT` is attempted only when statx reports a direct-I/O alignment
//! that our 4 KiB-aligned buffers satisfy; a file system that reports none,
//! or that refuses the open or read with `EINVAL`, gets a buffered read and
//! the `buffered_fallbacks` counter says so.
//!
//! Shutdown: [`Backend::cancel_all`] cancels everything in flight (a read
//! blocked in an io-wq thread is interrupted) and nothing is retried or
//! continued after it. If the backend is dropped with operations still in
//! the kernel, the kernel may complete them after the ring is gone: the
//! statx and probe buffers are leaked and the keep-alive guard of the jobs'
//! memory is never released, so no late write lands in freed memory.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};

use super::range::{CHUNK, FileCache, RangePlan};
use super::{Backend, BackendCounters, Done, Job, KeepAlive, Next, Span, after_read, plan};
use crate::config::EnvOverrides;
use crate::region::now_ns;

const K_STATX: u64 = 0;
const K_OPEN: u64 = 1;
const K_READ: u64 = 2;
const K_CLOSE: u64 = 3;
const K_PROBE: u64 = 4;
const K_FADVISE: u64 = 5;
/// A read of a range job; the read's index in the job's table is in bits
/// 40 and up of the user data.
const K_RANGE: u64 = 6;
/// Reads of one range job in flight at once (1 MiB each: 8 MiB, enough to
/// keep a disk's queue busy for one large file).
const RANGE_PAR: usize = 8;

#[inline]
fn ud(slot: u32, kind: u64) -> u64 {
    ((slot as u64) << 3) | kind
}

/// Offset -1: read at (and advance) the file position, like `read(2)`.
const CUR_POS: u64 = u64::MAX;

/// Whether a FIFO opened by path accepts `RWF_NOWAIT` reads on this
/// kernel (then the optimistic chain needs its FADVISE guard: see
/// `queue_fast`). Asked once per process, of a pipe reopened through
/// `/proc/self/fd` (the same `fifo_open` as a named FIFO) with one byte in
/// it. Anything unexpected (no /proc, an error) says yes, which keeps the
/// guard.
pub(crate) fn fifo_accepts_nowait() -> bool {
    static ANSWER: AtomicU8 = AtomicU8::new(0);
    accepts_nowait_once(&ANSWER, || {
        use std::os::unix::fs::OpenOptionsExt;
        let (rd, wr) = std::io::pipe()?;
        std::io::Write::write_all(&mut &wr, b"x")?;
        let fifo = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/self/fd/{}", rd.as_raw_fd()))?;
        Ok(nowait_refused(&fifo))
    })
}

/// Whether a terminal opened by path accepts `RWF_NOWAIT` reads on this
/// kernel. A terminal returns a line, a read shorter than asked that is not
/// its end; the optimistic chain without its probe read would take such a
/// line for a whole file (see [`ProbePolicy`]). Asked once per process, of
/// a fresh pseudo-terminal with a line in it, opened by its path like any
/// file. Anything unexpected says yes, which keeps the probe read in every
/// chain.
pub(crate) fn tty_accepts_nowait() -> bool {
    static ANSWER: AtomicU8 = AtomicU8::new(0);
    accepts_nowait_once(&ANSWER, || {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::fs::OpenOptionsExt;
        // SAFETY: posix_openpt takes flags only; a descriptor it returns is
        // ours alone, owned by `master` from here on.
        let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh open descriptor nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: `master` is an open pseudo-terminal master; ptsname_r
        // writes at most `name.len()` bytes, NUL included, into `name`.
        let ok = unsafe {
            libc::grantpt(master.as_raw_fd()) == 0
                && libc::unlockpt(master.as_raw_fd()) == 0
                && libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) == 0
        };
        if !ok {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated
        // string inside the array.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        let path = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes());
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(std::path::Path::new(path))?;
        let mut master = std::fs::File::from(master);
        std::io::Write::write_all(&mut master, b"x\n")?;
        // `master` stays open until the read is done.
        Ok(nowait_refused(&tty))
    })
}

/// Asks `refused` once per process, the answer kept in `answer` (0: not
/// asked yet; 1: accepts; 2: refuses; a race asks twice). An error says
/// "accepts", the cautious answer.
fn accepts_nowait_once(answer: &AtomicU8, refused: impl FnOnce() -> std::io::Result<bool>) -> bool {
    match answer.load(Ordering::Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    let refuses = refused().unwrap_or(false);
    answer.store(if refuses { 2 } else { 1 }, Ordering::Relaxed);
    !refuses
}

/// Whether a `RWF_NOWAIT` read of `f` (which has data waiting) is refused
/// with `EOPNOTSUPP`: the file has no `FMODE_NOWAIT`.
fn nowait_refused(f: &std::fs::File) -> bool {
    let mut buf = [0u8; 8];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec naming a writable array that outlives the call; the
    // descriptor is open (owned by `f`).
    let r = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
    let err = std::io::Error::last_os_error().raw_os_error();
    r < 0 && err == Some(libc::EOPNOTSUPP)
}

/// Where a file's statx runs.
///
/// io_uring always hands `IORING_OP_STATX` to an io-wq worker thread
/// (the opcode is forced async), which costs a wake-up and two context
/// switches per file: measured on cached small files, the loader uses
/// markedly more CPU per file than with a plain `statx` call (see
/// docs/bench.md). A plain call, on
/// the other hand, blocks the loader thread while a cold inode is read from
/// disk, where io-wq reads many in parallel. So the loader measures its own
/// `statx` calls: while they are fast (the metadata is cached) it calls
/// `statx` itself; once they turn slow it submits them to io_uring, probing
/// with a direct call every [`PROBE_EVERY`] files to notice the cache warm
/// up again. `ASYNCLOADER_STATX=sync|async` pins either way (for measurements).
#[derive(Clone, Copy, Debug)]
struct StatxPolicy {
    mode: StatxMode,
    /// Moving average of direct statx durations, in ns.
    ewma_ns: u64,
    since_probe: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatxMode {
    Adaptive,
    Sync,
    Async,
}

/// A direct statx slower than this on average means the metadata is cold.
const COLD_STATX_NS: u64 = 20_000;
const PROBE_EVERY: u32 = 64;
/// An optimistic chain slower than this (queue to completion) read cold data.
const FAST_CHAIN_NS: u64 = 1_000_000;

impl StatxPolicy {
    fn new(env: &EnvOverrides) -> Self {
        let mode = match env.statx_sync {
            Some(true) => StatxMode::Sync,
            Some(false) => StatxMode::Async,
            None => StatxMode::Adaptive,
        };
        StatxPolicy {
            mode,
            ewma_ns: 0,
            since_probe: 0,
        }
    }

    fn want_sync(&mut self) -> bool {
        match self.mode {
            StatxMode::Sync => true,
            StatxMode::Async => false,
            StatxMode::Adaptive if self.ewma_ns < COLD_STATX_NS => true,
            StatxMode::Adaptive => {
                self.since_probe += 1;
                if self.since_probe >= PROBE_EVERY {
                    self.since_probe = 0;
                    true
                } else {
                    false
                }
            }
        }
    }

    fn record(&mut self, ns: u64) {
        self.ewma_ns = (self.ewma_ns * 7 + ns) / 8;
    }
}

/// Whether to try the optimistic chain ([`UringBackend::queue_fast`]).
///
/// It saves the statx (a second path walk, a sizeable share of the CPU per
/// cached small file: see docs/bench.md) but wastes an open and a read when
/// the data is not cached. The loader keeps a moving average of how often it worked, uses it while it
/// mostly works, and otherwise retries it every [`PROBE_EVERY`] files.
/// Never with `direct` (a direct read needs the size first).
/// `ASYNCLOADER_FAST=0` turns it off (for measurements).
#[derive(Clone, Copy, Debug)]
struct FastPolicy {
    enabled: bool,
    /// Moving average of misses, in 1/1024.
    miss: u32,
    since_probe: u32,
}

impl FastPolicy {
    fn new(direct: bool, env: &EnvOverrides) -> Self {
        let off = env.fast_off;
        FastPolicy {
            enabled: !direct && !off,
            miss: 0,
            since_probe: 0,
        }
    }

    fn want_fast(&mut self) -> bool {
        if !self.enabled {
            return false;
        }
        if self.miss < 512 {
            return true;
        }
        self.since_probe += 1;
        if self.since_probe >= PROBE_EVERY {
            self.since_probe = 0;
            return true;
        }
        false
    }

    fn record(&mut self, hit: bool) {
        let x = if hit { 0 } else { 1024 };
        self.miss = (self.miss * 7 + x) / 8;
    }
}

/// Whether the optimistic chain carries its 1-byte probe read.
///
/// The probe tells a file that ended from a read that stopped early. Without
/// it, a short read is taken as the whole file only when it cannot have
/// stopped early: the chain's `RWF_NOWAIT` read is accepted only by files
/// with `FMODE_NOWAIT` — regular files of page-cache file systems, block
/// devices, pipes, a few character devices; procfs, sysfs, terminals and
/// FIFOs refuse it, the last two checked at run time
/// ([`tty_accepts_nowait`], [`fifo_accepts_nowait`] with its FADVISE
/// guard). A page-cache read stops before the end of the file or the
/// buffer only where the cached pages end (`RWF_NOWAIT`), that is at a
/// multiple of the page size, itself a multiple of 4 KiB. So a read of
/// 1..=max bytes, fewer than the buffer, that is not a multiple of 4 KiB
/// ended at the end of the file. One that is a multiple of 4 KiB is
/// ambiguous: it goes the statx way, and the next [`PROBE_AFTER_ALIGNED`]
/// chains carry the probe again (a data set of page-multiple files keeps
/// it on for good). Saves one of the chain's four SQEs per file (see
/// docs/bench.md). `ASYNCLOADER_FAST=probe` keeps it always (for
/// measurements).
#[derive(Clone, Copy, Debug)]
struct ProbePolicy {
    always: bool,
    /// Chains that still carry the probe.
    left: u32,
}

/// Chains that carry the probe read after a read of a multiple of 4 KiB.
const PROBE_AFTER_ALIGNED: u32 = 64;

impl ProbePolicy {
    fn new(env: &EnvOverrides) -> Self {
        ProbePolicy {
            always: env.fast_probe || tty_accepts_nowait(),
            left: 0,
        }
    }

    fn want(&mut self) -> bool {
        if self.left > 0 {
            self.left -= 1;
            return true;
        }
        self.always
    }

    /// A chain's read returned `res` bytes.
    fn record(&mut self, res: i32) {
        if res > 0 && res % 4096 == 0 {
            self.left = PROBE_AFTER_ALIGNED;
        }
    }
}

/// The step a slot's operation is in (what its pending CQEs belong to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A statx submitted to io_uring.
    Statx,
    /// The optimistic chain: OPEN → (FADVISE) → READ → (PROBE) → CLOSE.
    Fast,
    /// OPEN → READ, then CLOSE when `with_close`.
    Chain,
    /// A READ on the file kept open in the slot.
    Read,
    /// A CLOSE of the slot, then `then`.
    Close,
    /// A range job's reads (see [`RangeOp`]).
    Range,
}

/// A range job in a slot: its file (from the cache), its plan, and up to
/// [`RANGE_PAR`] reads in flight, each `(file offset, length)`.
#[derive(Clone, Copy)]
struct RangeOp {
    span: Span,
    file: usize,
    fd: i32,
    plan: RangePlan,
    /// Next file offset to issue a read at.
    next: u64,
    /// First end of file seen (`u64::MAX`: none).
    eof: u64,
    /// First error (0: none).
    err: i32,
    /// A direct read was refused: start over buffered once all reads ended.
    restart: bool,
    reads: [(u64, u64); RANGE_PAR],
    /// Bit i: read i is in flight.
    busy: u32,
}

/// What a slot does next once its file is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    Finish(Result<u64, i32>),
    /// statx first (the optimistic chain did not settle the file).
    SlowPath,
    /// (Re)open and read at `offset`.
    Chain,
}

#[derive(Clone, Copy)]
struct Op {
    g: u32,
    path: *const libc::c_char,
    buf: *mut u8,
    buf_len: u64,
    step: Step,
    /// CQEs still expected for the current step.
    pending: u8,
    open_res: i32,
    read_res: i32,
    probe_res: i32,
    close_res: i32,
    /// The optimistic chain carries its probe read.
    probed: bool,
    /// Offset and length of the current read.
    offset: u64,
    req_len: u64,
    stat_size: u64,
    direct: bool,
    /// The current chain ends with a CLOSE.
    with_close: bool,
    /// The slot may hold this op's file: it must be closed before the slot
    /// is freed or reopened.
    installed: bool,
    /// After the current CLOSE step.
    then: Then,
    /// When the optimistic chain was queued (ns, CLOCK_MONOTONIC).
    t_fast: u64,
}

impl Op {
    const EMPTY: Op = Op {
        g: 0,
        path: std::ptr::null(),
        buf: std::ptr::null_mut(),
        buf_len: 0,
        step: Step::Statx,
        pending: 0,
        open_res: 0,
        read_res: 0,
        probe_res: 0,
        close_res: 0,
        probed: false,
        offset: 0,
        req_len: 0,
        stat_size: 0,
        direct: false,
        with_close: true,
        installed: false,
        then: Then::SlowPath,
        t_fast: 0,
    };
}

/// One io_uring with `window` file slots.
pub struct UringBackend {
    ring: IoUring,
    ops: Vec<Op>,
    /// statx results, one per slot; boxed so the kernel's pointers stay put.
    stx: Box<[libc::statx]>,
    free_slots: Vec<u32>,
    direct: bool,
    max_file_size: u64,
    followups: bool,
    counters: BackendCounters,
    statx: StatxPolicy,
    ready: Vec<Done>,
    fast: FastPolicy,
    probe: ProbePolicy,
    /// The optimistic chain needs its FADVISE guard against FIFOs here.
    fifo_guard: bool,
    /// When the chains queued since the last submit were queued (one clock
    /// read per batch, not per file; the chains are timed to 1 ms).
    clock: Option<u64>,
    /// When the completions being drained were seen.
    drained_at: u64,
    /// One byte per slot for the EOF probe read.
    probe_buf: Box<[u64]>,
    /// `cancel_all` was called: nothing is retried or continued.
    cancelled: bool,
    /// Range jobs, by slot.
    ranges: Vec<Option<RangeOp>>,
    /// Files open for range jobs.
    files: FileCache,
    /// Keeps the jobs' memory alive; leaked if the ring is dropped with
    /// operations in the kernel.
    keep_alive: KeepAlive,
}

impl UringBackend {
    /// A ring for `window` files in flight. `keep_alive` guards the memory
    /// the jobs point into (see [`Job::new`]); `env` pins the adaptive
    /// choices for measurements.
    pub fn new(
        window: u32,
        direct: bool,
        max_file_size: u64,
        keep_alive: KeepAlive,
        env: &EnvOverrides,
    ) -> std::io::Result<Self> {
        let window = window.max(1);
        let sq = (window * 5).next_power_of_two().max(8);
        let ring = IoUring::builder()
            .setup_cqsize(sq * 2)
            .setup_clamp()
            .build(sq)?;
        // A sparse table: opens install into the slot we name.
        ring.submitter().register_files_sparse(window)?;
        Ok(UringBackend {
            ring,
            ops: vec![Op::EMPTY; window as usize],
            // SAFETY: statx is plain old data; all-zero is a valid value.
            stx: (0..window)
                .map(|_| unsafe { std::mem::zeroed::<libc::statx>() })
                .collect(),
            free_slots: (0..window).rev().collect(),
            direct,
            max_file_size,
            followups: false,
            counters: BackendCounters::default(),
            statx: StatxPolicy::new(env),
            ready: Vec::new(),
            fast: FastPolicy::new(direct, env),
            probe: ProbePolicy::new(env),
            fifo_guard: fifo_accepts_nowait(),
            clock: None,
            drained_at: 0,
            probe_buf: vec![0u64; window as usize].into_boxed_slice(),
            cancelled: false,
            ranges: vec![None; window as usize],
            files: FileCache::new(env.range_open_each),
            keep_alive,
        })
    }

    /// Pushes an SQE, submitting first if the queue is full.
    ///
    /// # Safety
    /// Every pointer the entry names (path, buffer, statx buffer) must stay
    /// valid until its completion is reaped.
    unsafe fn push_sqe(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            // The SQ is sized for 5 SQEs per slot, so this only happens if
            // sizing is wrong; submitting makes room either way.
            let _ = self.ring.submit();
            self.counters.syscalls += 1;
        }
    }

    fn queue_statx(&mut self, s: u32) {
        let op = self.ops[s as usize];
        let mut mask = libc::STATX_TYPE | libc::STATX_SIZE;
        if self.direct {
            mask |= libc::STATX_DIOALIGN;
        }
        let stx: *mut libc::statx = &mut self.stx[s as usize];
        let e = opcode::Statx::new(types::Fd(libc::AT_FDCWD), op.path, stx.cast())
            .mask(mask)
            .build()
            .user_data(ud(s, K_STATX));
        let op = &mut self.ops[s as usize];
        op.step = Step::Statx;
        op.pending = 1;
        // SAFETY: the path belongs to the in-flight job (valid until its
        // Done, `Job::new`) and the statx buffer to `self.stx` (boxed, never
        // reallocated, leaked if the ring is dropped with it in flight);
        // both outlive the CQE because the slot is not reused before it.
        unsafe { self.push_sqe(e) };
        self.followups = true;
    }

    /// OPEN → READ at `offset` for `req_len` (→ CLOSE when the file's stat
    /// size is known, or the read is direct; else the file stays open for
    /// the reads until 0).
    fn queue_chain(&mut self, s: u32) {
        let op = self.ops[s as usize];
        debug_assert!(!op.installed, "opening over a file not closed");
        let mut flags = libc::O_RDONLY | libc::O_NOCTTY;
        if op.direct {
            flags |= libc::O_DIRECT;
        }
        let with_close = op.direct || op.stat_size > 0;
        let slot = types::DestinationSlot::try_from_slot_target(s).expect("slot in table");
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), op.path)
            .flags(flags)
            .file_index(Some(slot))
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(ud(s, K_OPEN));
        let read = self.read_sqe(s);
        let read = if with_close {
            read.flags(squeue::Flags::IO_HARDLINK)
        } else {
            read
        };
        let op = &mut self.ops[s as usize];
        op.step = Step::Chain;
        op.with_close = with_close;
        op.pending = if with_close { 3 } else { 2 };
        op.open_res = 0;
        op.read_res = 0;
        op.close_res = 0;
        // SAFETY: path and buffer belong to the in-flight job and stay valid
        // until its Done is reported, which is after all CQEs of the chain.
        unsafe {
            self.push_sqe(open);
            self.push_sqe(read);
        }
        if with_close {
            let close = opcode::Close::new(types::Fixed(s))
                .build()
                .user_data(ud(s, K_CLOSE));
            // SAFETY: a close names no memory.
            unsafe { self.push_sqe(close) };
        }
        self.followups = true;
    }

    /// A READ from slot `s` at the op's offset for its length.
    fn read_sqe(&self, s: u32) -> squeue::Entry {
        let op = &self.ops[s as usize];
        debug_assert!(op.offset + op.req_len <= op.buf_len);
        opcode::Read::new(
            types::Fixed(s),
            // SAFETY: offset + req_len <= buf_len, so the range is inside
            // the job's buffer.
            unsafe { op.buf.add(op.offset as usize) },
            op.req_len as u32,
        )
        .offset(op.offset)
        .build()
        .user_data(ud(s, K_READ))
    }

    /// A further READ of the file kept open in slot `s`.
    fn queue_read(&mut self, s: u32) {
        let read = self.read_sqe(s);
        let op = &mut self.ops[s as usize];
        op.step = Step::Read;
        op.pending = 1;
        op.read_res = 0;
        // SAFETY: the buffer belongs to the in-flight job and stays valid
        // until its Done is reported, which is after this CQE.
        unsafe { self.push_sqe(read) };
        self.followups = true;
    }

    /// Closes slot `s`, then does `then`.
    fn queue_close(&mut self, s: u32, then: Then) {
        let close = opcode::Close::new(types::Fixed(s))
            .build()
            .user_data(ud(s, K_CLOSE));
        let op = &mut self.ops[s as usize];
        op.step = Step::Close;
        op.pending = 1;
        op.close_res = 0;
        op.then = then;
        // SAFETY: a close names no memory.
        unsafe { self.push_sqe(close) };
        self.followups = true;
    }

    /// Goes on with `then`, closing the slot first if it may hold a file.
    /// After `cancel_all`, anything but finishing finishes with ECANCELED.
    fn proceed(&mut self, s: u32, then: Then, out: &mut Vec<Done>) {
        let then = match then {
            Then::SlowPath | Then::Chain if self.cancelled => Then::Finish(Err(libc::ECANCELED)),
            t => t,
        };
        if self.ops[s as usize].installed {
            return self.queue_close(s, then);
        }
        match then {
            Then::Finish(r) => self.finish(s, r, out),
            Then::SlowPath => self.slow_path(s, out),
            Then::Chain => self.queue_chain(s),
        }
    }

    fn finish(&mut self, s: u32, result: Result<u64, i32>, out: &mut Vec<Done>) {
        debug_assert!(!self.ops[s as usize].installed);
        let g = self.ops[s as usize].g;
        self.ops[s as usize] = Op::EMPTY;
        self.free_slots.push(s);
        out.push(Done::new(g, result));
    }

    /// Starts range job `span` in slot `s` (path and buffer already in
    /// the slot's op): the file from the cache, then the first reads.
    fn start_range(&mut self, s: u32, span: Span, want_direct: bool, out: &mut Vec<Done>) {
        let op = self.ops[s as usize];
        // SAFETY: the job's path is a valid C string until its Done.
        let path = unsafe { std::ffi::CStr::from_ptr(op.path) };
        let file = match self.files.get(path, want_direct, &mut self.counters) {
            Ok(i) => i,
            Err(e) => return self.finish(s, Err(e), out),
        };
        let rf = self.files.file(file);
        let plan = match RangePlan::new(span, op.buf, op.buf_len, rf) {
            Ok(p) => p,
            Err(e) => {
                self.files.put(file, now_ns());
                return self.finish(s, Err(e), out);
            }
        };
        if rf.direct && !plan.direct {
            // A range direct I/O cannot read exactly (an unaligned
            // destination): the file opened buffered.
            self.counters.buffered_fallbacks += 1;
            self.files.put(file, now_ns());
            return self.start_range(s, span, false, out);
        }
        self.ranges[s as usize] = Some(RangeOp {
            span,
            file,
            fd: rf.file.as_raw_fd(),
            plan,
            next: plan.start,
            eof: u64::MAX,
            err: 0,
            restart: false,
            reads: [(0, 0); RANGE_PAR],
            busy: 0,
        });
        let op = &mut self.ops[s as usize];
        op.step = Step::Range;
        op.pending = 0;
        self.range_step(s, out);
    }

    /// Queues read `i` of slot `s`'s range: `len` bytes at file offset `off`.
    fn queue_range_read(&mut self, s: u32, i: usize, off: u64, len: u64) {
        let Some(r) = self.ranges[s as usize].as_mut() else {
            return;
        };
        r.reads[i] = (off, len);
        r.busy |= 1 << i;
        let (fd, at) = (r.fd, off - r.plan.start);
        let buf = self.ops[s as usize].buf;
        // SAFETY: off - start + len <= end - start <= buf_len (the plan
        // keeps the span inside the job's buffer), so this stays inside it.
        let dst = unsafe { buf.add(at as usize) };
        let e = opcode::Read::new(types::Fd(fd), dst, len as u32)
            .offset(off)
            .build()
            .user_data(((i as u64) << 40) | ud(s, K_RANGE));
        self.ops[s as usize].pending += 1;
        // SAFETY: the destination lies in the job's buffer, which is the
        // backend's until the job's Done (reported after this CQE); the
        // descriptor stays open while the range uses its cached file.
        unsafe { self.push_sqe(e) };
        self.followups = true;
    }

    /// Issues the reads slot `s`'s range can have in flight; completes it
    /// once none is in flight and nothing is left to read.
    fn range_step(&mut self, s: u32, out: &mut Vec<Done>) {
        loop {
            let Some(r) = self.ranges[s as usize] else {
                return;
            };
            let limit = r.plan.end.min(r.eof);
            let full = r.busy == (1u32 << RANGE_PAR) - 1;
            if full || r.err != 0 || r.restart || self.cancelled || r.next >= limit {
                break;
            }
            let i = (!r.busy).trailing_zeros() as usize;
            let len = CHUNK.min(limit - r.next);
            if let Some(r) = self.ranges[s as usize].as_mut() {
                r.next += len;
            }
            // `r` is the copy from before the increment.
            self.queue_range_read(s, i, r.next, len);
        }
        if self.ops[s as usize].pending > 0 {
            return;
        }
        let Some(r) = self.ranges[s as usize].take() else {
            return;
        };
        let now = now_ns();
        if r.restart && !self.cancelled {
            // The file system refused a direct read: the whole range again,
            // buffered.
            self.counters.buffered_fallbacks += 1;
            self.files.put(r.file, now);
            return self.start_range(s, r.span, false, out);
        }
        self.files.put(r.file, now);
        let result = if r.err != 0 {
            Err(r.err)
        } else if r.next < r.plan.end.min(r.eof) || r.restart {
            Err(libc::ECANCELED)
        } else {
            Ok(r.plan.result(r.span, r.eof))
        };
        let skip = if result.is_ok() {
            r.plan.skip as u32
        } else {
            0
        };
        self.finish(s, result, out);
        if let Some(d) = out.last_mut() {
            d.skip = skip;
        }
    }

    /// A range read completed.
    fn on_range_cqe(&mut self, s: u32, i: usize, res: i32, out: &mut Vec<Done>) {
        let cancelled = self.cancelled;
        let Some(r) = self.ranges[s as usize].as_mut() else {
            return;
        };
        if i >= RANGE_PAR || r.busy & (1 << i) == 0 {
            return;
        }
        r.busy &= !(1 << i);
        let (off, len) = r.reads[i];
        let direct = r.plan.direct;
        let mut again = None;
        if res < 0 {
            let e = -res;
            if (e == libc::EAGAIN || e == libc::EINTR) && !cancelled {
                again = Some((off, len));
            } else if direct && (e == libc::EINVAL || e == libc::EOPNOTSUPP) {
                r.restart = true;
            } else if r.err == 0 {
                r.err = e;
            }
        } else if res == 0 {
            r.eof = r.eof.min(off);
        } else {
            let n = res as u64;
            if n < len {
                if direct {
                    r.eof = r.eof.min(off + n);
                } else if off + n < r.eof {
                    // Short, not necessarily the end: read on until 0.
                    again = Some((off + n, len - n));
                }
            }
        }
        if direct && res > 0 {
            self.counters.direct_reads += 1;
        }
        self.ops[s as usize].pending -= 1;
        if let Some((o, l)) = again {
            self.queue_range_read(s, i, o, l);
        }
        self.range_step(s, out);
    }

    fn on_statx(&mut self, s: u32, res: i32, out: &mut Vec<Done>) {
        if res < 0 {
            return self.finish(s, Err(-res), out);
        }
        let op = self.ops[s as usize];
        let p = match plan(
            &self.stx[s as usize],
            self.direct,
            self.max_file_size,
            op.buf_len,
        ) {
            Ok(p) => p,
            Err(e) => return self.finish(s, Err(e), out),
        };
        if p.fallback {
            self.counters.buffered_fallbacks += 1;
        }
        let op = &mut self.ops[s as usize];
        op.stat_size = p.stat_size;
        op.offset = 0;
        op.direct = p.direct;
        op.req_len = p.req_len;
        self.proceed(s, Then::Chain, out);
    }

    /// The statx path's chain or a further read completed.
    fn on_read_done(&mut self, s: u32, out: &mut Vec<Done>) {
        let op = self.ops[s as usize];
        if op.step == Step::Chain {
            // Without its CLOSE (not in the chain, or cancelled), an opened
            // file stays in the slot.
            self.ops[s as usize].installed =
                op.open_res >= 0 && (!op.with_close || op.close_res < 0);
        }
        let retry_buffered = |me: &mut Self, out: &mut Vec<Done>| {
            me.counters.buffered_fallbacks += 1;
            let op = &mut me.ops[s as usize];
            op.direct = false;
            op.offset = 0;
            op.req_len = op.buf_len;
            me.proceed(s, Then::Chain, out);
        };
        if op.step == Step::Chain && op.open_res < 0 {
            let e = -op.open_res;
            if op.direct && (e == libc::EINVAL || e == libc::EOPNOTSUPP) {
                return retry_buffered(self, out);
            }
            return self.proceed(s, Then::Finish(Err(e)), out);
        }
        if op.read_res < 0 {
            let e = -op.read_res;
            if op.direct && (e == libc::EINVAL || e == libc::EOPNOTSUPP) {
                return retry_buffered(self, out);
            }
            if (e == libc::EAGAIN || e == libc::EINTR) && !self.cancelled {
                return self.read_on(s, out);
            }
            return self.proceed(s, Then::Finish(Err(e)), out);
        }
        if op.direct && op.read_res > 0 {
            self.counters.direct_reads += 1;
        }
        let n = op.read_res as u64;
        match after_read(
            op.offset,
            n,
            op.req_len,
            op.stat_size,
            self.max_file_size,
            op.buf_len,
        ) {
            Next::Done(total) => self.proceed(s, Then::Finish(Ok(total)), out),
            Next::TooBig => self.proceed(s, Then::Finish(Err(libc::EFBIG)), out),
            Next::Continue { offset, len } => {
                let op = &mut self.ops[s as usize];
                op.direct = false;
                op.offset = offset;
                op.req_len = len;
                self.read_on(s, out);
            }
        }
    }

    /// Reads at the op's offset: on the file kept open in the slot, or by
    /// a new chain. After `cancel_all`, finishes with ECANCELED instead.
    fn read_on(&mut self, s: u32, out: &mut Vec<Done>) {
        if self.cancelled {
            return self.proceed(s, Then::Finish(Err(libc::ECANCELED)), out);
        }
        if self.ops[s as usize].installed && !self.ops[s as usize].direct {
            self.queue_read(s);
        } else {
            self.proceed(s, Then::Chain, out);
        }
    }

    fn on_close_done(&mut self, s: u32, out: &mut Vec<Done>) {
        let op = &mut self.ops[s as usize];
        op.installed = false;
        let then = op.then;
        self.proceed(s, then, out);
    }

    /// The careful path: statx first (directly, or through io_uring when
    /// metadata is cold), then the chain sized by what statx said.
    fn slow_path(&mut self, s: u32, out: &mut Vec<Done>) {
        if self.cancelled {
            return self.finish(s, Err(libc::ECANCELED), out);
        }
        if !self.statx.want_sync() {
            return self.queue_statx(s);
        }
        let path = self.ops[s as usize].path;
        let mut mask = libc::STATX_TYPE | libc::STATX_SIZE;
        if self.direct {
            mask |= libc::STATX_DIOALIGN;
        }
        let t0 = now_ns();
        // SAFETY: valid C string (the job's path) and our statx buffer.
        let r = unsafe { libc::statx(libc::AT_FDCWD, path, 0, mask, &mut self.stx[s as usize]) };
        self.statx.record(now_ns() - t0);
        self.counters.syscalls += 1;
        let res = if r == 0 {
            0
        } else {
            -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        };
        self.on_statx(s, res, out);
    }

    /// The optimistic chain for a buffered load of a (probably) cached
    /// regular file, with no statx first:
    /// `OPENAT(O_NONBLOCK)` → `FADVISE(NORMAL)` → `READ(buf_len,
    /// RWF_NOWAIT)` → `READ(1 byte, RWF_NOWAIT)` → `CLOSE`, reads at the
    /// file position, the reads and close hard-linked. The FADVISE only where
    /// FIFOs accept `RWF_NOWAIT`, the probe read only when [`ProbePolicy`]
    /// asks for it.
    ///
    /// It completes a file only when everything is unambiguous: the first
    /// read returned 1..=max_file_size bytes, fewer than its buffer, and the
    /// probe read found end of file (without the probe: the count is not a
    /// multiple of 4 KiB). Anything else — an open error, `EAGAIN` (not
    /// cached, or a FIFO or tty with nothing to read: `O_NONBLOCK` and
    /// `RWF_NOWAIT` make them fail instead of blocking), 0 bytes (empty,
    /// `/dev/null`, a FIFO without writer), more than the limit
    /// (`/dev/zero`), more data behind (partly cached) — goes to the careful
    /// path, which classifies it with statx. A directory's read fails with
    /// `EISDIR`, which is final.
    ///
    /// Why nothing blocks: `RWF_NOWAIT` is refused (`EOPNOTSUPP`) by files
    /// without `FMODE_NOWAIT` — named FIFOs, terminals, most character
    /// devices — wherever the read runs; and the fadvise refuses every pipe.
    /// Files that accept `RWF_NOWAIT` (regular files, block devices) may
    /// block only on disk I/O: inline the read fails with `EAGAIN` instead,
    /// but after an open that was punted to io-wq the kernel drops
    /// `RWF_NOWAIT` and reads blocking, which for those files just means
    /// waiting for the disk.
    fn queue_fast(&mut self, s: u32) {
        let op = self.ops[s as usize];
        let slot = types::DestinationSlot::try_from_slot_target(s).expect("slot in table");
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), op.path)
            .flags(libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK)
            .file_index(Some(slot))
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(ud(s, K_OPEN));
        // POSIX_FADV_NORMAL changes nothing for a fresh file, but fails with
        // ESPIPE on a FIFO, cancelling the reads: a FIFO whose writer already
        // wrote and left would otherwise read like a small file. Needed only
        // where a FIFO opened by path accepts RWF_NOWAIT
        // ([`fifo_accepts_nowait`]); kernel 6.18 refuses it with EOPNOTSUPP,
        // which sends the FIFO to the careful path anyway, and there the
        // chain goes without it (4-5% of warm small-file throughput: see
        // docs/bench.md). Its failure also cancels the CLOSE: the completion
        // then closes the slot explicitly (`on_fast_done`).
        let guard = self.fifo_guard;
        let probed = self.probe.want();
        let fadvise = opcode::Fadvise::new(types::Fixed(s), 0, libc::POSIX_FADV_NORMAL)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(ud(s, K_FADVISE));
        // Hard links after the read: a short read, the normal case, counts
        // as a failure inside a chain and would cancel the rest.
        let read = opcode::Read::new(types::Fixed(s), op.buf, op.buf_len as u32)
            .offset(CUR_POS)
            .rw_flags(libc::RWF_NOWAIT)
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(ud(s, K_READ));
        let probe_ptr: *mut u64 = &mut self.probe_buf[s as usize];
        let probe = opcode::Read::new(types::Fixed(s), probe_ptr.cast(), 1)
            .offset(CUR_POS)
            .rw_flags(libc::RWF_NOWAIT)
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(ud(s, K_PROBE));
        let close = opcode::Close::new(types::Fixed(s))
            .build()
            .user_data(ud(s, K_CLOSE));
        let op = &mut self.ops[s as usize];
        op.step = Step::Fast;
        op.t_fast = *self.clock.get_or_insert_with(now_ns);
        op.pending = 3 + guard as u8 + probed as u8;
        op.probed = probed;
        op.open_res = 0;
        op.read_res = 0;
        op.probe_res = 0;
        op.close_res = 0;
        // SAFETY: the path and the buffer belong to the in-flight job, the
        // probe byte to this slot (boxed, never reallocated, leaked if the
        // ring is dropped with it in flight); all stay valid until the CQEs
        // of the SQEs pushed here are reaped (`pending` counts them).
        unsafe {
            self.push_sqe(open);
            if guard {
                self.push_sqe(fadvise);
            }
            self.push_sqe(read);
            if probed {
                self.push_sqe(probe);
            }
            self.push_sqe(close);
        }
        self.followups = true;
    }

    fn on_fast_done(&mut self, s: u32, out: &mut Vec<Done>) {
        let op = self.ops[s as usize];
        // The CLOSE did not run (a failed FADVISE cancelled the rest of the
        // chain) or failed: the opened file may still be in the slot.
        self.ops[s as usize].installed = op.open_res >= 0 && op.close_res < 0;
        // A chain that took long ran in io-wq: the open missed the dentry
        // cache and was punted, and there the kernel drops RWF_NOWAIT and
        // reads blocking (correct, but a thread hop per file: cold small
        // files cost much more CPU than on the statx path, see
        // docs/bench.md). Count it as a miss so cold data goes the statx way.
        let quick = self.drained_at.saturating_sub(op.t_fast) < FAST_CHAIN_NS;
        if op.open_res >= 0 {
            self.probe.record(op.read_res);
        }
        // The file ended where the read stopped: the probe read says so, or
        // without it, the count cannot be where cached pages ran out
        // (`ProbePolicy`).
        let at_end = if op.probed {
            op.probe_res == 0
        } else {
            op.read_res % 4096 != 0
        };
        let then = if op.open_res >= 0 && op.read_res == -libc::EISDIR {
            self.fast.record(quick);
            Then::Finish(Err(libc::EISDIR))
        } else if op.open_res >= 0
            && op.read_res > 0
            && op.read_res as u64 <= self.max_file_size
            && (op.read_res as u64) < op.buf_len
            && at_end
        {
            self.fast.record(quick);
            Then::Finish(Ok(op.read_res as u64))
        } else if op.open_res >= 0 && op.read_res > 0 && !op.probed && !at_end {
            // Ambiguous without the probe, not a miss: the statx path reads
            // it again, and the next chains carry the probe.
            self.fast.record(quick);
            Then::SlowPath
        } else {
            self.fast.record(false);
            Then::SlowPath
        };
        self.proceed(s, then, out);
    }

    fn drain_cq(&mut self, out: &mut Vec<Done>) {
        if self.ring.completion().is_empty() {
            return;
        }
        self.drained_at = now_ns();
        loop {
            let cqe = match self.ring.completion().next() {
                Some(c) => c,
                None => break,
            };
            let s = (cqe.user_data() >> 3) as u32;
            let kind = cqe.user_data() & 7;
            let res = cqe.result();
            if s as usize >= self.ops.len() {
                continue;
            }
            match kind {
                K_RANGE => {
                    let i = (cqe.user_data() >> 40) as usize;
                    self.on_range_cqe(s, i, res, out);
                }
                K_STATX => {
                    let op = &mut self.ops[s as usize];
                    if op.step != Step::Statx || op.pending == 0 {
                        continue;
                    }
                    op.pending = 0;
                    self.on_statx(s, res, out);
                }
                _ => {
                    let op = &mut self.ops[s as usize];
                    if op.pending == 0 {
                        continue;
                    }
                    match kind {
                        K_OPEN => op.open_res = res,
                        K_READ => op.read_res = res,
                        K_PROBE => op.probe_res = res,
                        K_CLOSE => op.close_res = res,
                        _ => {}
                    }
                    op.pending -= 1;
                    if op.pending == 0 {
                        match op.step {
                            Step::Fast => self.on_fast_done(s, out),
                            Step::Chain | Step::Read => self.on_read_done(s, out),
                            Step::Close => self.on_close_done(s, out),
                            Step::Statx | Step::Range => {}
                        }
                    }
                }
            }
        }
    }
}

impl Backend for UringBackend {
    fn room(&self) -> usize {
        self.free_slots.len()
    }

    fn push(&mut self, job: Job) {
        // An empty pool is the caller's bug; panicking is sound.
        let s = self.free_slots.pop().expect("room() checked by the caller");
        self.ops[s as usize] = Op {
            g: job.g,
            path: job.path,
            buf: job.buf,
            buf_len: job.buf_len,
            ..Op::EMPTY
        };
        if let Some(span) = job.range {
            let was_followup = self.followups;
            let mut ready = std::mem::take(&mut self.ready);
            self.start_range(s, span, self.direct, &mut ready);
            self.ready = ready;
            self.followups = was_followup;
            return;
        }
        // The chain queued here belongs to the new request's batch (it
        // waits for dispatch_n / idle_iters like the request), not a
        // follow-up of a file already in flight.
        let was_followup = self.followups;
        if self.fast.want_fast() {
            self.queue_fast(s);
        } else {
            let mut ready = std::mem::take(&mut self.ready);
            self.slow_path(s, &mut ready);
            self.ready = ready;
        }
        self.followups = was_followup;
    }

    fn has_followups(&self) -> bool {
        self.followups
    }

    fn submit(&mut self) -> std::io::Result<()> {
        self.followups = false;
        self.clock = None;
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.counters.syscalls += 1;
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // CQ overflow backlog: the caller reaps, then we retry.
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<Done>, wait: Option<Duration>) -> std::io::Result<()> {
        if !self.files.is_empty() {
            self.files.trim(now_ns());
        }
        let before = out.len();
        out.append(&mut self.ready);
        self.drain_cq(out);
        if out.len() > before || self.in_flight() == 0 {
            return Ok(());
        }
        if let Some(d) = wait {
            let ts = types::Timespec::from(d);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.counters.syscalls += 1;
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            self.drain_cq(out);
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.ops.len() - self.free_slots.len()
    }

    fn cancel_all(&mut self) {
        self.cancelled = true;
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(u64::MAX);
        // SAFETY: a cancel names no memory.
        unsafe { self.push_sqe(e) };
        let _ = self.ring.submit();
    }

    fn take_counters(&mut self) -> BackendCounters {
        std::mem::take(&mut self.counters)
    }

    fn is_uring(&self) -> bool {
        true
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        let in_kernel = self.ops.iter().filter(|o| o.pending > 0).count();
        if in_kernel == 0 {
            return;
        }
        // Closing the ring cancels these operations, but one that is running
        // in an io-wq thread (a read blocked where a signal cannot reach)
        // completes when it completes, writing into the statx or probe
        // buffer, or the job's buffer. Never free any of it.
        Box::leak(std::mem::take(&mut self.stx));
        Box::leak(std::mem::take(&mut self.probe_buf));
        std::mem::forget(self.keep_alive.clone());
        crate::process::log!(
            "io_uring backend stopped with {in_kernel} files still in the kernel; \
             their memory stays mapped until the process exits"
        );
    }
}
