//! The ceiling rows: what the machine does with no engine in the way.
//!
//! - `ring` (and `ring-direct`): the minimal io_uring loop. One thread per
//!   core, each with its own ring and a window of fixed file slots; per file
//!   `OPENAT` into the slot (`IO_LINK`) → `READ` from the slot
//!   (`IO_HARDLINK`) → `CLOSE` of the slot, into a preallocated, prefaulted,
//!   4 KiB-aligned buffer per slot (the set's largest file + 1, rounded up
//!   to 4 KiB). Files are taken from a shared atomic cursor; nothing is
//!   handed to another thread. The direct variant opens with `O_DIRECT` and
//!   reads exactly the file's size rounded up to 4 KiB, the size taken from
//!   the file list's metadata (no statx in the loop).
//! - `pread` (`cores` threads) and `pread-2x` (`2 x cores`): the pool a C
//!   programmer would write: `open`, one `read` of `largest + 1` bytes into
//!   the thread's reused buffer, `close`; no allocation per file, no statx.
//!
//! Both count files and bytes and hash the sampled files as every row does
//! ([`Part::loaded_at`]).

use std::fs::File;
use std::io::Read;
use std::mem::ManuallyDrop;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use asyncloader::config::{BUF_ALIGN, buffer_size};
use indicatif::ProgressBar;
use io_uring::{IoUring, opcode, squeue, types};
use memmap2::MmapOptions;

use super::data::DataSet;
use super::measure::{Part, Run, timed_threads};
use crate::cli::progress::Ticks;
use crate::cli::sys::{self, Cpu};

/// Files in flight per ring: buffered, and `O_DIRECT` (the engine's
/// default `ring_window`s).
const WINDOW: u32 = 32;
const WINDOW_DIRECT: u32 = 128;

/// How a `ring` row runs, chosen before it runs (its label says it).
#[derive(Clone, Debug)]
pub(super) struct RingShape {
    pub(super) threads: usize,
    /// Files in flight per ring: `WINDOW` (`WINDOW_DIRECT`), fewer if the
    /// buffers of all rings would not fit in the memory budget.
    pub(super) window: u32,
    /// Bytes of one slot's buffer.
    pub(super) slot_len: u64,
    /// `O_DIRECT` asked for and accepted by the file system.
    pub(super) direct: bool,
    /// `O_DIRECT` asked for but refused (`EINVAL`, e.g. tmpfs): the row
    /// reads buffered, as the engine falls back to.
    pub(super) direct_refused: bool,
}

impl RingShape {
    /// The shape for `ds` on this machine; `budget`: bytes all the rings'
    /// buffers may take together.
    pub(super) fn new(ds: &DataSet, budget: u64, direct: bool) -> RingShape {
        let threads = sys::cores();
        let slot_len = buffer_size(ds.max);
        let want = if direct { WINDOW_DIRECT } else { WINDOW };
        let fit = budget / (threads as u64 * slot_len);
        let window = (want as u64).min(fit).max(1) as u32;
        // The file system's answer to O_DIRECT, asked once with the first
        // file (the engine learns it per file and falls back to buffered).
        let direct_refused = direct
            && matches!(
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&ds.files[0]),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL)
            );
        RingShape {
            threads,
            window,
            slot_len,
            direct: direct && !direct_refused,
            direct_refused,
        }
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "{} thread{} x {} in flight{}",
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.window,
            if self.direct {
                ", direct"
            } else if self.direct_refused {
                ", buffered (O_DIRECT refused)"
            } else {
                ""
            }
        )
    }
}

/// The `ring` row (`ring-direct` when `shape.direct`).
pub(super) fn run_ring(ds: &DataSet, shape: &RingShape, pb: &ProgressBar) -> Run {
    let next = AtomicUsize::new(0);
    let cpu0 = Cpu::now();
    let (wall_s, part) = timed_threads(shape.threads, |start| {
        ring_thread(ds, shape, &next, start, pb)
    });
    Run {
        wall_s,
        cpu: Cpu::now().since(cpu0),
        part,
        stats: None,
        parallel: shape.threads,
    }
}

/// What one slot of a ring is doing.
#[derive(Clone, Copy, Default)]
struct Slot {
    file: usize,
    t: u64,
    /// CQEs still to come (3 per file).
    pending: u8,
    open_res: i32,
    read_res: i32,
    close_res: i32,
}

const K_OPEN: u64 = 0;
const K_READ: u64 = 1;
const K_CLOSE: u64 = 2;

/// Pushes an SQE, submitting first if the queue is full.
///
/// # Safety
/// Every pointer the entry names must stay valid until its CQE is reaped.
unsafe fn push(ring: &mut IoUring, e: &squeue::Entry) {
    loop {
        // SAFETY: forwarded from this function's contract.
        if unsafe { ring.submission().push(e) }.is_ok() {
            return;
        }
        let _ = ring.submit();
    }
}

fn ring_thread(
    ds: &DataSet,
    shape: &RingShape,
    next: &AtomicUsize,
    start: &dyn Fn() -> u64,
    pb: &ProgressBar,
) -> Part {
    let mut part = Part {
        lat: Vec::with_capacity(ds.files.len() / shape.threads + 64),
        ..Part::default()
    };
    let window = shape.window;
    let slot_len = shape.slot_len as usize;
    let setup = (|| {
        let sq = (window * 3).next_power_of_two().max(8);
        let ring = IoUring::builder()
            .setup_cqsize(sq * 2)
            .setup_clamp()
            .build(sq)?;
        ring.submitter().register_files_sparse(window)?;
        // Page-aligned (4 KiB), resident before the row starts.
        let bufs = MmapOptions::new()
            .len(window as usize * slot_len)
            .populate()
            .map_anon()?;
        std::io::Result::Ok((ring, bufs))
    })();
    // Every thread meets the others at the start, set up or not.
    start();
    let (mut ring, mut bufs) = match setup {
        Ok(x) => x,
        Err(e) => {
            part.fatal = Some(format!("ring setup: {e}"));
            return part;
        }
    };
    // The kernel writes into `bufs` through this pointer; the mapping is
    // leaked (not unmapped) if the loop ends with reads in flight.
    let base = bufs.as_mut_ptr();
    let bufs = ManuallyDrop::new(bufs);
    // Each slot's path, NUL-terminated, reused (no allocation per file once
    // the longest path has been seen).
    let mut paths: Vec<Vec<u8>> = vec![Vec::new(); window as usize];
    let mut slots = vec![Slot::default(); window as usize];
    let mut free: Vec<u32> = (0..window).rev().collect();
    let (mut inflight, mut exhausted) = (0usize, false);
    let mut ticks = Ticks::new(pb);
    let mut done: Vec<u32> = Vec::with_capacity(window as usize);
    let open_flags = libc::O_RDONLY | if shape.direct { libc::O_DIRECT } else { 0 };
    loop {
        while !exhausted && let Some(&s) = free.last() {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= ds.files.len() {
                exhausted = true;
                break;
            }
            free.pop();
            let su = s as usize;
            let path = &mut paths[su];
            path.clear();
            path.extend_from_slice(ds.files[i].as_os_str().as_bytes());
            path.push(0);
            let len = if shape.direct {
                ds.sizes[i].div_ceil(BUF_ALIGN) * BUF_ALIGN
            } else {
                shape.slot_len
            };
            debug_assert!(len <= shape.slot_len);
            let slot = types::DestinationSlot::try_from_slot_target(s).expect("slot in table");
            let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr().cast())
                .flags(open_flags)
                .file_index(Some(slot))
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data((s as u64) << 2 | K_OPEN);
            // SAFETY: slot `s` owns bytes `s * slot_len ..` of the mapping,
            // `len <= slot_len` of them.
            let buf = unsafe { base.add(su * slot_len) };
            let read = opcode::Read::new(types::Fixed(s), buf, len as u32)
                .offset(0)
                .build()
                .flags(squeue::Flags::IO_HARDLINK)
                .user_data((s as u64) << 2 | K_READ);
            let close = opcode::Close::new(types::Fixed(s))
                .build()
                .user_data((s as u64) << 2 | K_CLOSE);
            slots[su] = Slot {
                file: i,
                t: sys::now_ns(),
                pending: 3,
                ..Slot::default()
            };
            // SAFETY: the path (`paths[s]`) and the buffer (slot `s` of the
            // mapping) are not touched again until the slot's three CQEs
            // are reaped, and both outlive the loop (the mapping is leaked
            // if the loop ends early with the slot in flight).
            unsafe {
                push(&mut ring, &open);
                push(&mut ring, &read);
                push(&mut ring, &close);
            }
            inflight += 1;
        }
        if inflight == 0 {
            break;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(e) => {
                part.fatal = Some(format!("io_uring_enter: {e}"));
                // Opens and reads may be in flight: their paths and
                // buffers stay (leaked) for the kernel.
                std::mem::forget(paths);
                return part;
            }
        }
        for cqe in ring.completion() {
            let s = (cqe.user_data() >> 2) as u32;
            let slot = &mut slots[s as usize];
            match cqe.user_data() & 3 {
                K_OPEN => slot.open_res = cqe.result(),
                K_READ => slot.read_res = cqe.result(),
                _ => slot.close_res = cqe.result(),
            }
            slot.pending -= 1;
            if slot.pending == 0 {
                done.push(s);
            }
        }
        for s in done.drain(..) {
            let slot = slots[s as usize];
            let lat = sys::now_ns() - slot.t;
            let err = [slot.open_res, slot.read_res, slot.close_res]
                .into_iter()
                .find(|&r| r < 0);
            match err {
                None => {
                    // SAFETY: the slot's three CQEs are reaped, so the kernel
                    // no longer writes its bytes; the read wrote `read_res`
                    // (<= slot_len) bytes from the slot's start, inside the
                    // mapping, which no other slot overlaps.
                    let data = unsafe {
                        std::slice::from_raw_parts(
                            base.add(s as usize * slot_len),
                            slot.read_res as usize,
                        )
                    };
                    part.loaded_at(ds, slot.file, data, lat);
                }
                Some(r) => part.failed(
                    ds.files[slot.file].as_os_str().as_bytes(),
                    std::io::Error::from_raw_os_error(-r),
                    lat,
                ),
            }
            free.push(s);
            inflight -= 1;
            ticks.step();
        }
    }
    drop(ticks);
    // Nothing in flight: the mapping may go.
    drop(ManuallyDrop::into_inner(bufs));
    part
}

/// The `pread` rows: `threads` threads, `open` + one `read` + `close` into
/// a reused buffer of `largest + 1` bytes.
pub(super) fn run_pread(ds: &DataSet, threads: usize, pb: &ProgressBar) -> Run {
    let next = AtomicUsize::new(0);
    let cpu0 = Cpu::now();
    let (wall_s, part) = timed_threads(threads, |start| {
        // Written, so resident before the start.
        let mut buf = vec![1u8; ds.max as usize + 1];
        let mut part = Part {
            lat: Vec::with_capacity(ds.files.len() / threads + 64),
            ..Part::default()
        };
        start();
        let mut ticks = Ticks::new(pb);
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(p) = ds.files.get(i) else { break };
            let t = sys::now_ns();
            // A regular file's read returns all of it up to the buffer's
            // length (a file grown past `largest` reads short: the row's
            // byte count says so).
            let r = File::open(p).and_then(|mut f| f.read(&mut buf));
            let lat = sys::now_ns() - t;
            match r {
                Ok(n) => part.loaded_at(ds, i, &buf[..n], lat),
                Err(e) => part.failed(p.as_os_str().as_bytes(), e, lat),
            }
            ticks.step();
        }
        part
    });
    Run {
        wall_s,
        cpu: Cpu::now().since(cpu0),
        part,
        stats: None,
        parallel: threads,
    }
}
