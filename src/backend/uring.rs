//! The io_uring backend: statx, then open → read → close into a fixed slot.
//!
//! Per file, two steps, each batched with every other file of the same pass:
//!
//! 1. `STATX(path)`: learns the type and size without opening anything, so a
//!    FIFO, a device or a directory is refused before an `open` could block
//!    or read forever, a file larger than `max_file_size` fails with `EFBIG`
//!    without reading it, and an `O_DIRECT` read can be sized to the file
//!    (rounded up to `STATX_DIOALIGN`) instead of to the whole buffer, which
//!    the kernel would zero-fill (measured 3–16x slower).
//! 2. `OPENAT` into fixed slot `s` (`IO_LINK`) → `READ` from fixed slot `s`
//!    (`IO_HARDLINK`) → `CLOSE` slot `s`. The close is hard-linked because a
//!    short read — the normal case, as the read asks for one byte more than
//!    the file may have — counts as a failure inside a link chain and would
//!    cancel it. The loader owns slot numbers (one per in-flight file), since
//!    `IORING_FILE_INDEX_ALLOC` cannot feed a linked read. A slot is reused
//!    only after all three completions arrived, so a late close never closes
//!    the next file. `O_CLOEXEC` is not passed: direct opens refuse it.
//!
//! The read asks for more than the file can hold if it is within the limit
//! (`max_file_size + 1`, or the statx size + 1 rounded up for direct I/O), so
//! a file that grew past the limit is caught by the read itself, and a file
//! whose stat size lies (procfs says 0) is read for what it really holds.
//! A read that fills its request (a file that grew) or stops short before the
//! stat size (an interrupted read) continues buffered at the offset reached.
//!
//! `O_DIRECT` is attempted only when statx reports a direct-I/O alignment
//! that our 4 KiB-aligned buffers satisfy; a file system that reports none,
//! or that refuses the open or read with `EINVAL`, gets a buffered read and
//! the `buffered_fallbacks` counter says so.

use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};

use super::{Backend, BackendCounters, Done, Job, Next, after_read, plan};
use crate::region::now_ns;

const K_STATX: u64 = 0;
const K_OPEN: u64 = 1;
const K_READ: u64 = 2;
const K_CLOSE: u64 = 3;
const K_PROBE: u64 = 4;
const K_FADVISE: u64 = 5;

#[inline]
fn ud(slot: u32, kind: u64) -> u64 {
    ((slot as u64) << 3) | kind
}

/// Offset -1: read at (and advance) the file position, like `read(2)`.
const CUR_POS: u64 = u64::MAX;

/// Where a file's statx runs.
///
/// io_uring always hands `IORING_OP_STATX` to an io-wq worker thread
/// (the opcode is forced async), which costs a wake-up and two context
/// switches per file: measured here on cached small files, the loader used
/// ~15% more CPU per file than with a plain `statx` call. A plain call, on
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
    fn from_env() -> Self {
        let mode = match std::env::var("ASYNCLOADER_STATX").as_deref() {
            Ok("sync") => StatxMode::Sync,
            Ok("async") => StatxMode::Async,
            _ => StatxMode::Adaptive,
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
/// It saves the statx (a second path walk, ~15% of the CPU per cached small
/// file) but wastes an open and a read when the data is not cached. The
/// loader keeps a moving average of how often it worked, uses it while it
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
    fn new(direct: bool) -> Self {
        let off = std::env::var("ASYNCLOADER_FAST").as_deref() == Ok("0");
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

#[derive(Clone, Copy)]
struct Op {
    g: u32,
    path: *const libc::c_char,
    buf: *mut u8,
    buf_len: u64,
    /// CQEs still expected for the current step.
    pending: u8,
    open_res: i32,
    read_res: i32,
    /// Offset and length of the current read.
    offset: u64,
    req_len: u64,
    stat_size: u64,
    direct: bool,
    /// The current chain is the optimistic one (no statx first).
    fast: bool,
    probe_res: i32,
    /// When the optimistic chain was queued (ns, CLOCK_MONOTONIC).
    t_fast: u64,
}

impl Op {
    const EMPTY: Op = Op {
        g: 0,
        path: std::ptr::null(),
        buf: std::ptr::null_mut(),
        buf_len: 0,
        pending: 0,
        open_res: 0,
        read_res: 0,
        offset: 0,
        req_len: 0,
        stat_size: 0,
        direct: false,
        fast: false,
        probe_res: 0,
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
    /// One byte per slot for the EOF probe read.
    probe_buf: Box<[u64]>,
}

impl UringBackend {
    /// A ring for `window` files in flight.
    pub fn new(window: u32, direct: bool, max_file_size: u64) -> std::io::Result<Self> {
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
            statx: StatxPolicy::from_env(),
            ready: Vec::new(),
            fast: FastPolicy::new(direct),
            probe_buf: vec![0u64; window as usize].into_boxed_slice(),
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
        self.ops[s as usize].pending = 1;
        // SAFETY: the path lives in the job's entry and the statx buffer in
        // `self.stx` (boxed, never reallocated); both outlive the CQE because
        // the slot is not reused before it is reaped.
        unsafe { self.push_sqe(e) };
    }

    fn queue_chain(&mut self, s: u32) {
        let op = self.ops[s as usize];
        let mut flags = libc::O_RDONLY | libc::O_NOCTTY;
        if op.direct {
            flags |= libc::O_DIRECT;
        }
        let slot = types::DestinationSlot::try_from_slot_target(s).expect("slot in table");
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), op.path)
            .flags(flags)
            .file_index(Some(slot))
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(ud(s, K_OPEN));
        debug_assert!(op.offset + op.req_len <= op.buf_len);
        let read = opcode::Read::new(
            types::Fixed(s),
            // SAFETY: offset + req_len <= buf_len, so the range is inside
            // the job's buffer.
            unsafe { op.buf.add(op.offset as usize) },
            op.req_len as u32,
        )
        .offset(op.offset)
        .build()
        .flags(squeue::Flags::IO_HARDLINK)
        .user_data(ud(s, K_READ));
        let close = opcode::Close::new(types::Fixed(s))
            .build()
            .user_data(ud(s, K_CLOSE));
        self.ops[s as usize].pending = 3;
        self.ops[s as usize].open_res = 0;
        self.ops[s as usize].read_res = 0;
        // SAFETY: path and buffer belong to the in-flight job and stay valid
        // until its Done is reported, which is after all three CQEs.
        unsafe {
            self.push_sqe(open);
            self.push_sqe(read);
            self.push_sqe(close);
        }
        self.followups = true;
    }

    fn finish(&mut self, s: u32, result: Result<u64, i32>, out: &mut Vec<Done>) {
        let g = self.ops[s as usize].g;
        self.ops[s as usize] = Op::EMPTY;
        self.free_slots.push(s);
        out.push(Done { g, result });
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
        self.queue_chain(s);
    }

    fn on_chain_done(&mut self, s: u32, out: &mut Vec<Done>) {
        let op = self.ops[s as usize];
        let retry_buffered = |me: &mut Self| {
            me.counters.buffered_fallbacks += 1;
            let op = &mut me.ops[s as usize];
            op.direct = false;
            op.offset = 0;
            op.req_len = op.buf_len;
            me.queue_chain(s);
        };
        if op.open_res < 0 {
            let e = -op.open_res;
            if op.direct && (e == libc::EINVAL || e == libc::EOPNOTSUPP) {
                return retry_buffered(self);
            }
            return self.finish(s, Err(e), out);
        }
        if op.read_res < 0 {
            let e = -op.read_res;
            if op.direct && (e == libc::EINVAL || e == libc::EOPNOTSUPP) {
                return retry_buffered(self);
            }
            if e == libc::EAGAIN || e == libc::EINTR {
                return self.queue_chain(s);
            }
            return self.finish(s, Err(e), out);
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
            Next::Done(total) => self.finish(s, Ok(total), out),
            Next::TooBig => self.finish(s, Err(libc::EFBIG), out),
            Next::Continue { offset, len } => {
                let op = &mut self.ops[s as usize];
                op.direct = false;
                op.offset = offset;
                op.req_len = len;
                self.queue_chain(s);
            }
        }
    }

    /// The careful path: statx first (directly, or through io_uring when
    /// metadata is cold), then the chain sized by what statx said.
    fn slow_path(&mut self, s: u32, out: &mut Vec<Done>) {
        let op = &mut self.ops[s as usize];
        op.fast = false;
        if !self.statx.want_sync() {
            return self.queue_statx(s);
        }
        let path = op.path;
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
    /// file position, the reads and close hard-linked.
    ///
    /// It completes a file only when everything is unambiguous: the first
    /// read returned 1..=max_file_size bytes and the probe read found end of
    /// file. Anything else — an open error, `EAGAIN` (not cached, or a FIFO
    /// or tty with nothing to read: `O_NONBLOCK` and `RWF_NOWAIT` make them
    /// fail instead of blocking), 0 bytes (empty, `/dev/null`, a FIFO
    /// without writer), more than the limit (`/dev/zero`), more data behind
    /// (partly cached) — goes to the careful path, which classifies it with
    /// statx. A directory's read fails with `EISDIR`, which is final.
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
        // wrote and left would otherwise read like a small file. (Kernel
        // 6.18 also refuses RWF_NOWAIT on a named FIFO with EOPNOTSUPP, which
        // sends it to the careful path anyway; the fadvise keeps that true
        // where FIFOs accept RWF_NOWAIT. It costs ~3% of the warm CPU.)
        let fadvise = opcode::Fadvise::new(types::Fixed(s), 0, libc::POSIX_FADV_NORMAL)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(ud(s, K_FADVISE));
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
        op.fast = true;
        op.t_fast = now_ns();
        op.pending = 5;
        op.open_res = 0;
        op.read_res = 0;
        op.probe_res = 0;
        // SAFETY: the path and the buffer belong to the in-flight job, the
        // probe byte to this slot (boxed, never reallocated); all stay valid
        // until the four CQEs are reaped.
        unsafe {
            self.push_sqe(open);
            self.push_sqe(fadvise);
            self.push_sqe(read);
            self.push_sqe(probe);
            self.push_sqe(close);
        }
        self.followups = true;
    }

    fn on_fast_done(&mut self, s: u32, out: &mut Vec<Done>) {
        let op = self.ops[s as usize];
        // A chain that took long ran in io-wq: the open missed the dentry
        // cache and was punted, and there the kernel drops RWF_NOWAIT and
        // reads blocking (correct, but a thread hop per file: cold small
        // files cost ~70% more CPU than the statx path). Count it as a miss
        // so cold data goes the statx way.
        let quick = now_ns().saturating_sub(op.t_fast) < FAST_CHAIN_NS;
        if op.open_res >= 0 && op.read_res == -libc::EISDIR {
            self.fast.record(quick);
            return self.finish(s, Err(libc::EISDIR), out);
        }
        let n = op.read_res;
        if op.open_res >= 0 && n > 0 && n as u64 <= self.max_file_size && op.probe_res == 0 {
            self.fast.record(quick);
            return self.finish(s, Ok(n as u64), out);
        }
        self.fast.record(false);
        self.slow_path(s, out);
    }

    fn drain_cq(&mut self, out: &mut Vec<Done>) {
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
                K_STATX => self.on_statx(s, res, out),
                _ => {
                    let op = &mut self.ops[s as usize];
                    if op.pending == 0 {
                        continue;
                    }
                    match kind {
                        K_OPEN => op.open_res = res,
                        K_READ => op.read_res = res,
                        K_PROBE => op.probe_res = res,
                        _ => {}
                    }
                    op.pending -= 1;
                    if op.pending == 0 {
                        if op.fast {
                            self.on_fast_done(s, out);
                        } else {
                            self.on_chain_done(s, out);
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
        let s = self.free_slots.pop().expect("room() checked by the caller");
        self.ops[s as usize] = Op {
            g: job.g,
            path: job.path,
            buf: job.buf,
            buf_len: job.buf_len,
            ..Op::EMPTY
        };
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
