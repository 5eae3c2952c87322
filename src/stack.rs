//! A worker's free entries: a lock-free LIFO of `u32` values that can live
//! in shared memory.
//!
//! Why a stack and not a ring: the entry a request takes is the one whose
//! buffer was given back last, so its cache lines are the likeliest still in
//! the CPU cache when the kernel copies the next file into it. With a FIFO
//! every one of the `queue_depth` buffers cycles through, and for warm
//! files of 100 KiB and more the copy into a buffer that fell out of the
//! cache costs more than the read itself saves (measured in docs/bench.md:
//! the same window through 16 buffers instead of 64 loads ImageNet-like
//! files ~20% faster). With a stack, a consumer that keeps a small window
//! in flight touches few buffers, whatever `queue_depth` is.
//!
//! The algorithm is Treiber's stack over indices: `top` holds the index of
//! the top value plus one (0: empty) and, in its upper 32 bits, a counter
//! bumped by every successful push and pop, so that a pop that read `top`
//! and its `next` link cannot succeed after the value was popped and pushed
//! again in between (the ABA problem). Links live in a slot array, one per
//! value, accessed only atomically, which keeps the stack sound when its
//! users are different processes mapping the same pages. Values and links
//! written by a process that scribbles on the region are bounds-checked:
//! the stack then refuses or returns values the caller checks, never
//! indexes out of bounds or loops forever.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Retries after which `push`/`pop` give up (see `ring::MAX_SPINS`).
const MAX_SPINS: u32 = 1 << 16;

/// The shared head of a stack, the size of a ring's indices (the region
/// layout gives both the same room).
#[repr(C, align(128))]
pub struct StackIndices {
    /// `counter << 32 | (top index + 1)`; low half 0 when empty.
    top: AtomicU64,
    /// Values on the stack (updated after each push and pop: exact when
    /// nobody is in the middle of one).
    len: AtomicU32,
    _pad: [u8; 244],
}

const _: () = assert!(std::mem::size_of::<StackIndices>() == 256);

impl StackIndices {
    /// Indices of an empty stack.
    pub const fn new() -> Self {
        StackIndices {
            top: AtomicU64::new(0),
            len: AtomicU32::new(0),
            _pad: [0; 244],
        }
    }
}

impl Default for StackIndices {
    fn default() -> Self {
        Self::new()
    }
}

/// A view of one stack: its head and one link slot per value it may hold
/// (values are `0 .. links.len()`).
#[derive(Clone, Copy)]
pub struct Stack<'a> {
    idx: &'a StackIndices,
    links: &'a [AtomicU64],
}

#[inline]
fn top_of(word: u64) -> u32 {
    word as u32
}

#[inline]
fn next_word(word: u64, top_plus_one: u32) -> u64 {
    ((word >> 32).wrapping_add(1) << 32) | top_plus_one as u64
}

impl<'a> Stack<'a> {
    /// A view over `links` (one per value the stack may hold).
    pub fn new(idx: &'a StackIndices, links: &'a [AtomicU64]) -> Self {
        assert!(links.len() < u32::MAX as usize);
        Stack { idx, links }
    }

    /// Resets the stack to hold `0 .. n` (`n <= links.len()`), 0 on top.
    /// Must not race with any other operation on the same stack (it is
    /// called while building a region nobody else sees yet, or while
    /// `reclaim_worker` owns the worker).
    pub fn init(&self, n: u32) {
        assert!(n as usize <= self.links.len());
        for v in 0..n {
            // Value v links to v + 1 (stored plus one), the last to empty.
            let below = if v + 1 < n { v + 2 } else { 0 };
            self.links[v as usize].store(below as u64, Ordering::Relaxed);
        }
        let counter = self.idx.top.load(Ordering::Relaxed) >> 32;
        let top = if n > 0 { 1 } else { 0 };
        self.idx.len.store(n, Ordering::Relaxed);
        // Release: with the links above, for whoever acquires `top` next
        // (after the caller publishes the region or the reclaim).
        self.idx
            .top
            .store(((counter + 1) << 32) | top, Ordering::Release);
    }

    /// Puts `value` on top. Gives it back when it is out of range, or when
    /// the head keeps changing under it (only a process rewriting the
    /// region could do that).
    pub fn push(&self, value: u32) -> Result<(), u32> {
        let Some(link) = self.links.get(value as usize) else {
            return Err(value);
        };
        let mut cur = self.idx.top.load(Ordering::Relaxed);
        for _ in 0..MAX_SPINS {
            link.store(top_of(cur) as u64, Ordering::Relaxed);
            // Release: publishes the link and everything the pusher wrote
            // before (e.g. the entry's state FREE) to the popper that
            // acquires this head.
            match self.idx.top.compare_exchange_weak(
                cur,
                next_word(cur, value + 1),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.idx.len.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(now) => cur = now,
            }
        }
        Err(value)
    }

    /// Pushes a value the caller owns, retrying for up to `patience` when
    /// the stack refuses (it does not refuse in-range values unless its
    /// head is being rewritten); gives it back after that.
    pub fn push_patiently(&self, value: u32, patience: std::time::Duration) -> Result<(), u32> {
        let start = std::time::Instant::now();
        loop {
            match self.push(value) {
                Ok(()) => return Ok(()),
                Err(v) if v as usize >= self.links.len() || start.elapsed() >= patience => {
                    return Err(v);
                }
                Err(_) => std::thread::yield_now(),
            }
        }
    }

    /// Takes the top value, the one pushed last; `None` when empty (or when
    /// the head or a link holds what no push wrote).
    pub fn pop(&self) -> Option<u32> {
        // Acquire: the pusher's link (and what it published) is visible.
        let mut cur = self.idx.top.load(Ordering::Acquire);
        for _ in 0..MAX_SPINS {
            let top = top_of(cur);
            if top == 0 {
                return None;
            }
            let value = top - 1;
            let link = self.links.get(value as usize)?;
            let below = link.load(Ordering::Relaxed);
            if below > self.links.len() as u64 {
                return None; // a link no push wrote
            }
            // The counter makes this fail if `value` was popped (and maybe
            // pushed back with another link) since `cur` was read.
            match self.idx.top.compare_exchange_weak(
                cur,
                next_word(cur, below as u32),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.idx.len.fetch_sub(1, Ordering::Relaxed);
                    return Some(value);
                }
                Err(now) => cur = now,
            }
        }
        None
    }

    /// Values on the stack (a snapshot; see [`StackIndices`]). At most the
    /// number of links, whatever the shared word says.
    pub fn len(&self) -> u32 {
        self.idx
            .len
            .load(Ordering::Relaxed)
            .min(self.links.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    struct Owned {
        idx: StackIndices,
        links: Vec<AtomicU64>,
    }

    impl Owned {
        fn new(n: u32) -> Self {
            let o = Owned {
                idx: StackIndices::new(),
                links: (0..n).map(|_| AtomicU64::new(0)).collect(),
            };
            o.stack().init(n);
            o
        }
        fn stack(&self) -> Stack<'_> {
            Stack::new(&self.idx, &self.links)
        }
    }

    #[test]
    fn last_in_first_out() {
        let o = Owned::new(4);
        let s = o.stack();
        assert_eq!(s.len(), 4);
        assert_eq!((s.pop(), s.pop()), (Some(0), Some(1)));
        s.push(0).unwrap();
        assert_eq!(s.pop(), Some(0)); // the one given back last comes first
        assert_eq!((s.pop(), s.pop(), s.pop()), (Some(2), Some(3), None));
        assert_eq!(s.len(), 0);
        s.push(3).unwrap();
        s.push(1).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s.pop(), s.pop(), s.pop()), (Some(1), Some(3), None));
        assert_eq!(s.push(4), Err(4)); // out of range
        s.init(2);
        assert_eq!((s.pop(), s.pop(), s.pop()), (Some(0), Some(1), None));
    }

    #[test]
    fn garbage_in_the_head_or_links_is_refused_not_followed() {
        let o = Owned::new(4);
        let s = o.stack();
        o.idx.top.store(u64::MAX, Ordering::Relaxed); // top index out of range
        assert_eq!(s.pop(), None);
        o.idx.top.store(1, Ordering::Relaxed); // top 0, whose link is bad
        o.links[0].store(1 << 40, Ordering::Relaxed);
        assert_eq!(s.pop(), None);
        o.links[0].store(1, Ordering::Relaxed); // a cycle: 0 -> 0
        assert_eq!((s.pop(), s.pop()), (Some(0), Some(0)));
        o.idx.len.store(u32::MAX, Ordering::Relaxed);
        assert_eq!(s.len(), 4);
        s.init(4);
        assert_eq!(s.len(), 4);
    }

    /// Threads pop values and push them back; each value is held by one
    /// thread at a time (a second pop of a held value would be a lost
    /// update), and all come back.
    #[test]
    fn threads_never_hold_one_value_twice() {
        const N: u32 = 16;
        let o = Arc::new(Owned::new(N));
        let held: Arc<Vec<AtomicBool>> = Arc::new((0..N).map(|_| AtomicBool::new(false)).collect());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (o, held) = (o.clone(), held.clone());
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..200_000u32 {
                        if !(i + t).is_multiple_of(3) {
                            if let Some(v) = o.stack().pop() {
                                assert!(
                                    !held[v as usize].swap(true, Ordering::AcqRel),
                                    "{v} popped twice"
                                );
                                mine.push(v);
                            }
                        } else if let Some(v) = mine.pop() {
                            held[v as usize].store(false, Ordering::Release);
                            o.stack().push(v).unwrap();
                        }
                    }
                    for v in mine {
                        held[v as usize].store(false, Ordering::Release);
                        o.stack().push(v).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = o.stack();
        assert_eq!(s.len(), N);
        let mut all: Vec<u32> = std::iter::from_fn(|| s.pop()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..N).collect::<Vec<_>>());
    }

    /// The same across processes: a stack, its links and an ownership byte
    /// per value in one `MAP_SHARED` mapping, hammered by forked children
    /// and the parent at once.
    #[test]
    fn processes_never_hold_one_value_twice() {
        use std::sync::atomic::AtomicU8;
        const N: usize = 16;
        const PROCS: usize = 3;
        let len = std::mem::size_of::<StackIndices>() + N * 8 + N;
        // MAP_SHARED over a memfd, as the region is (memmap2's anonymous
        // maps are private: a child's pushes would not reach the parent).
        let fd =
            nix::sys::memfd::memfd_create(c"stack-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap();
        let file = std::fs::File::from(fd);
        file.set_len(len as u64).unwrap();
        let map = memmap2::MmapOptions::new().len(len).map_raw(&file).unwrap();
        let base = map.as_mut_ptr();
        // SAFETY: the mapping is `len` bytes, page aligned (so 128-aligned
        // for the indices), zeroed (a valid empty StackIndices, zero links
        // and bytes), shared with the forked children, and only accessed
        // through atomics from here on.
        let (idx, links, owned) = unsafe {
            (
                &*base.cast::<StackIndices>(),
                std::slice::from_raw_parts(base.add(256).cast::<AtomicU64>(), N),
                std::slice::from_raw_parts(base.add(256 + N * 8).cast::<AtomicU8>(), N),
            )
        };
        let s = Stack::new(idx, links);
        s.init(N as u32);
        let hammer = |seed: usize| -> bool {
            let mut mine = [0u32; N];
            let mut n = 0;
            for i in 0..100_000usize {
                if !(i + seed).is_multiple_of(3) {
                    if let Some(v) = s.pop() {
                        if owned[v as usize].swap(1, Ordering::AcqRel) != 0 {
                            return false; // held twice
                        }
                        mine[n] = v;
                        n += 1;
                    }
                } else if n > 0 {
                    n -= 1;
                    owned[mine[n] as usize].store(0, Ordering::Release);
                    if s.push(mine[n]).is_err() {
                        return false;
                    }
                }
            }
            while n > 0 {
                n -= 1;
                owned[mine[n] as usize].store(0, Ordering::Release);
                if s.push(mine[n]).is_err() {
                    return false;
                }
            }
            true
        };
        let mut kids = Vec::new();
        for k in 0..PROCS {
            // SAFETY: the child only runs `hammer` (atomics on the shared
            // mapping, no allocation, no lock) and leaves with _exit.
            match unsafe { libc::fork() } {
                0 => {
                    let ok = hammer(k + 1);
                    // SAFETY: ends the child without running the parent's
                    // atexit handlers or test harness.
                    unsafe { libc::_exit(if ok { 0 } else { 1 }) }
                }
                pid => {
                    assert!(pid > 0);
                    kids.push(pid);
                }
            }
        }
        assert!(hammer(0));
        for pid in kids {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is a valid int.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
        assert_eq!(s.len(), N as u32);
        let mut all: Vec<u32> = std::iter::from_fn(|| s.pop()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..N as u32).collect::<Vec<_>>());
    }
}
