//! Bounded lock-free queues of `u32` values that can live in shared memory.
//!
//! This is Dmitry Vyukov's bounded MPMC queue (the algorithm behind
//! `crossbeam-channel`'s array flavor), with each slot's sequence stamp and
//! its value packed into one `AtomicU64`, so that publishing a value is a
//! single release store and reading it a single acquire load. Nothing in a
//! slot is ever accessed non-atomically, which keeps the queue sound when its
//! users are different processes mapping the same pages.
//!
//! Why MPMC and not SPSC: a worker's request ring is drained by every loader
//! thread (one io_uring each), a worker's completion ring is filled by every
//! loader thread, and a worker context may be shared by several threads of one
//! process. When there is one producer and one consumer, each operation is
//! one uncontended compare-and-swap on a cache line that only its side
//! writes, which costs about as much as an SPSC ring's plain store.
//!
//! Positions are `u32` counters that wrap; all comparisons use wrapping
//! differences, which stay correct as long as the capacity is far below
//! 2^31 (it is at most 2^20 here).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Largest ring capacity (slots) we create.
pub const MAX_CAPACITY: u32 = 1 << 20;

/// The shared indices of a ring. Producer and consumer indices sit on
/// separate cache lines so that the two sides do not invalidate each other's
/// line on every operation.
#[repr(C, align(128))]
pub struct RingIndices {
    /// Next position to pop (consumers advance it).
    head: AtomicU32,
    _pad0: [u8; 124],
    /// Next position to push (producers advance it).
    tail: AtomicU32,
    _pad1: [u8; 124],
}

const _: () = assert!(std::mem::size_of::<RingIndices>() == 256);

impl RingIndices {
    /// Indices of an empty ring.
    pub const fn new() -> Self {
        RingIndices {
            head: AtomicU32::new(0),
            _pad0: [0; 124],
            tail: AtomicU32::new(0),
            _pad1: [0; 124],
        }
    }
}

impl Default for RingIndices {
    fn default() -> Self {
        Self::new()
    }
}

/// A view of one ring: its indices and its `cap` slots (a power of two).
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    idx: &'a RingIndices,
    slots: &'a [AtomicU64],
    mask: u32,
}

#[inline]
fn pack(stamp: u32, value: u32) -> u64 {
    ((stamp as u64) << 32) | value as u64
}

#[inline]
fn stamp_of(word: u64) -> u32 {
    (word >> 32) as u32
}

impl<'a> Ring<'a> {
    /// Capacity (a power of two, at least 1) that holds `n` values.
    pub fn capacity_for(n: u32) -> u32 {
        n.max(1).next_power_of_two()
    }

    /// Resets `slots` and `idx` to an empty ring. Must not race with any
    /// other operation on the same ring (it is called while building a region
    /// that nobody else can see yet).
    pub fn init(idx: &RingIndices, slots: &[AtomicU64]) {
        debug_assert!(slots.len().is_power_of_two());
        idx.head.store(0, Ordering::Relaxed);
        idx.tail.store(0, Ordering::Relaxed);
        for (i, s) in slots.iter().enumerate() {
            // Slot i is ready for the push at position i.
            s.store(pack(i as u32, 0), Ordering::Relaxed);
        }
    }

    /// A view of an initialised ring. `slots.len()` must be a power of two.
    pub fn new(idx: &'a RingIndices, slots: &'a [AtomicU64]) -> Self {
        assert!(slots.len().is_power_of_two() && slots.len() <= MAX_CAPACITY as usize);
        Ring {
            idx,
            slots,
            mask: slots.len() as u32 - 1,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.mask + 1
    }

    /// Appends `value`; gives it back when the ring is full.
    pub fn push(&self, value: u32) -> Result<(), u32> {
        let mut pos = self.idx.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[(pos & self.mask) as usize];
            // Acquire: if the stamp says "free for pos", the consumer that
            // freed it has finished reading its old value.
            let stamp = stamp_of(slot.load(Ordering::Acquire));
            let diff = stamp.wrapping_sub(pos) as i32;
            if diff == 0 {
                // The slot is free for position `pos`: claim the position.
                match self.idx.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // Release: publishes the value (and everything the
                        // producer wrote before, e.g. an entry's path) to the
                        // consumer that acquires this stamp.
                        slot.store(pack(pos.wrapping_add(1), value), Ordering::Release);
                        return Ok(());
                    }
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                // The slot still holds the value pushed one lap ago: full.
                return Err(value);
            } else {
                // Another producer took `pos`; catch up.
                pos = self.idx.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Removes the oldest value, if any.
    pub fn pop(&self) -> Option<u32> {
        let mut pos = self.idx.head.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[(pos & self.mask) as usize];
            // Acquire: pairs with the producer's release store of the value.
            let word = slot.load(Ordering::Acquire);
            let diff = stamp_of(word).wrapping_sub(pos.wrapping_add(1)) as i32;
            if diff == 0 {
                match self.idx.head.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // Release: the next lap's producer acquires this and
                        // so cannot overwrite the slot before we read it
                        // (we already have the value in `word`).
                        slot.store(
                            pack(pos.wrapping_add(self.mask).wrapping_add(1), 0),
                            Ordering::Release,
                        );
                        return Some(word as u32);
                    }
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                // Nothing was pushed at `pos` yet: empty.
                return None;
            } else {
                pos = self.idx.head.load(Ordering::Relaxed);
            }
        }
    }

    /// Approximate number of values queued (exact when nobody is pushing or
    /// popping).
    pub fn len(&self) -> u32 {
        let tail = self.idx.tail.load(Ordering::Acquire);
        let head = self.idx.head.load(Ordering::Acquire);
        let n = tail.wrapping_sub(head) as i32;
        n.clamp(0, self.capacity() as i32) as u32
    }

    /// True when no value is queued (approximate under concurrency, like `len`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Owned {
        idx: RingIndices,
        slots: Vec<AtomicU64>,
    }

    impl Owned {
        fn new(cap: u32) -> Self {
            let o = Owned {
                idx: RingIndices::new(),
                slots: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            };
            Ring::init(&o.idx, &o.slots);
            o
        }
        fn ring(&self) -> Ring<'_> {
            Ring::new(&self.idx, &self.slots)
        }
    }

    #[test]
    fn fifo_full_empty() {
        let o = Owned::new(4);
        let r = o.ring();
        assert_eq!(r.pop(), None);
        for v in 10..14 {
            r.push(v).unwrap();
        }
        assert_eq!(r.push(99), Err(99));
        assert_eq!(r.len(), 4);
        for v in 10..14 {
            assert_eq!(r.pop(), Some(v));
        }
        assert_eq!(r.pop(), None);
        assert!(r.is_empty());
    }

    #[test]
    fn wraps_many_laps() {
        let o = Owned::new(2);
        let r = o.ring();
        let n = if cfg!(miri) { 100 } else { 100_000 };
        for v in 0..n {
            r.push(v).unwrap();
            if v % 2 == 1 {
                assert_eq!(r.pop(), Some(v - 1));
                assert_eq!(r.pop(), Some(v));
            }
        }
    }

    #[test]
    fn positions_wrap_past_u32_max() {
        let o = Owned::new(4);
        let start = u32::MAX - 5;
        o.idx.head.store(start, Ordering::Relaxed);
        o.idx.tail.store(start, Ordering::Relaxed);
        for i in 0..4u32 {
            let p = start.wrapping_add(i);
            o.slots[(p & 3) as usize].store(pack(p, 0), Ordering::Relaxed);
        }
        let r = o.ring();
        for v in 0..40 {
            r.push(v).unwrap();
            assert_eq!(r.pop(), Some(v));
        }
    }

    #[test]
    fn mpmc_threads_lose_nothing() {
        let per = if cfg!(miri) { 50 } else { 100_000u32 };
        let producers = 3u32;
        let consumers = 3;
        let o = Arc::new(Owned::new(8));
        let mut hs = Vec::new();
        for p in 0..producers {
            let o = o.clone();
            hs.push(std::thread::spawn(move || {
                for i in 0..per {
                    let v = p * per + i;
                    while o.ring().push(v).is_err() {
                        std::hint::spin_loop();
                    }
                }
                Vec::new()
            }));
        }
        let total = producers * per;
        let taken = Arc::new(AtomicU32::new(0));
        for _ in 0..consumers {
            let o = o.clone();
            let taken = taken.clone();
            hs.push(std::thread::spawn(move || {
                let mut got = Vec::new();
                while taken.load(Ordering::Relaxed) < total {
                    if let Some(v) = o.ring().pop() {
                        taken.fetch_add(1, Ordering::Relaxed);
                        got.push(v);
                    } else {
                        std::hint::spin_loop();
                    }
                }
                got
            }));
        }
        let mut all: Vec<u32> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..total).collect::<Vec<_>>());
    }
}
