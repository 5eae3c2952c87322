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

#[cfg(loom)]
use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Largest ring capacity (slots) we create.
pub const MAX_CAPACITY: u32 = 1 << 20;

/// Retries after which `push`/`pop` give up. Contention among the few
/// threads and processes of one loader never comes near it; only indices that
/// another process keeps rewriting could, and then giving up is the point.
const MAX_SPINS: u32 = 1 << 16;

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

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<RingIndices>() == 256);

impl RingIndices {
    /// Indices of an empty ring.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RingIndices {
            head: AtomicU32::new(0),
            _pad0: [0; 124],
            tail: AtomicU32::new(0),
            _pad1: [0; 124],
        }
    }

    /// Indices of an empty ring (loom's atomics are not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
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
    /// Capacity (a power of two, at least 2) that holds `n` values.
    ///
    /// At least 2 because with one slot the stamp that means "full, pushed
    /// at position p" (p + 1) equals the stamp that means "free for the push
    /// at position p + capacity" (p + 1): a second push would overwrite the
    /// first value. (Found by the loom model below.)
    pub fn capacity_for(n: u32) -> u32 {
        n.max(2).next_power_of_two()
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
        assert!(
            slots.len().is_power_of_two()
                && slots.len() >= 2
                && slots.len() <= MAX_CAPACITY as usize
        );
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
    ///
    /// Also refuses (never loops forever) when the ring is corrupt: a slot
    /// stamp that no well-behaved producer or consumer could have written,
    /// as a buggy or hostile process mapping the region could leave.
    pub fn push(&self, value: u32) -> Result<(), u32> {
        let mut pos = self.idx.tail.load(Ordering::Relaxed);
        let mut spins = 0u32;
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
                // Another producer took `pos`; catch up. That producer's
                // claim of `pos` happens-before the stamp we just acquired,
                // so the reload sees a newer tail; an unchanged tail means
                // the stamp was written by no producer: a corrupt ring.
                let now = self.idx.tail.load(Ordering::Relaxed);
                if now == pos || spins >= MAX_SPINS {
                    return Err(value);
                }
                pos = now;
            }
            spins += 1;
        }
    }

    /// Pushes a value the caller knows has room (the ring can hold every
    /// value that can be outstanding), so that a refusal is transient or a
    /// sign of corruption, and retries for up to `patience`.
    ///
    /// Why a ring with room can refuse: a consumer claims a position (its
    /// head compare-and-swap) and only then marks the slot free for the next
    /// lap. A consumer preempted between the two makes the producer of the
    /// next lap find that slot still "full" even when the ring holds nothing.
    /// The consumer finishes as soon as it runs again; one that died in
    /// between (a killed process) never does, hence the bound. Gives the
    /// value back when patience runs out.
    #[cfg(not(loom))]
    pub fn push_patiently(&self, value: u32, patience: std::time::Duration) -> Result<(), u32> {
        let mut deadline = None;
        let mut tries = 0u32;
        loop {
            match self.push(value) {
                Ok(()) => return Ok(()),
                Err(v) => {
                    let now = std::time::Instant::now();
                    if now >= *deadline.get_or_insert(now + patience) {
                        return Err(v);
                    }
                    tries += 1;
                    if tries < 64 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    /// Removes the oldest value, if any. A corrupt ring reads as empty
    /// (see [`push`](Self::push)).
    pub fn pop(&self) -> Option<u32> {
        let mut pos = self.idx.head.load(Ordering::Relaxed);
        let mut spins = 0u32;
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
                // Another consumer took `pos` (see `push` for why an
                // unchanged head means a corrupt ring).
                let now = self.idx.head.load(Ordering::Relaxed);
                if now == pos || spins >= MAX_SPINS {
                    return None;
                }
                pos = now;
            }
            spins += 1;
        }
    }

    /// True when a [`pop`](Self::pop) would find a value now: the slot at
    /// the head holds the stamp of a completed push. Unlike
    /// [`is_empty`](Self::is_empty), which compares the indices, this is
    /// false for a ring whose indices or stamps were corrupted, so a sleeper
    /// that checks it does not busy-loop on a ring nobody can pop from.
    pub fn has_ready(&self) -> bool {
        let pos = self.idx.head.load(Ordering::Acquire);
        let word = self.slots[(pos & self.mask) as usize].load(Ordering::Acquire);
        stamp_of(word) == pos.wrapping_add(1)
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

/// A ring over ordinary heap memory, for tests, benches and the loom model
/// (the engine's rings live in the shared region instead).
#[doc(hidden)]
pub struct OwnedRing {
    pub idx: RingIndices,
    pub slots: Vec<AtomicU64>,
}

impl OwnedRing {
    /// An empty ring of `cap` slots (a power of two, at least 2).
    pub fn new(cap: u32) -> Self {
        let o = OwnedRing {
            idx: RingIndices::new(),
            slots: (0..cap).map(|_| AtomicU64::new(0)).collect(),
        };
        Ring::init(&o.idx, &o.slots);
        o
    }

    /// The ring view.
    pub fn ring(&self) -> Ring<'_> {
        Ring::new(&self.idx, &self.slots)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    use OwnedRing as Owned;

    #[test]
    fn fifo_full_empty() {
        let o = Owned::new(4);
        assert_eq!(o.ring().capacity(), 4);
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
    fn queue_depth_one_gets_two_slots() {
        assert_eq!(Ring::capacity_for(0), 2);
        assert_eq!(Ring::capacity_for(1), 2);
        assert_eq!(Ring::capacity_for(3), 4);
        let o = Owned::new(Ring::capacity_for(1));
        let r = o.ring();
        r.push(1).unwrap();
        r.push(2).unwrap();
        assert_eq!(r.push(3), Err(3));
        assert_eq!(r.pop(), Some(1));
        assert_eq!(r.pop(), Some(2));
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

    /// A stamp no push or pop could have written (a scribbling process)
    /// makes pop read empty and push refuse, instead of looping forever.
    #[test]
    fn corrupt_stamps_do_not_hang() {
        let o = Owned::new(4);
        let r = o.ring();
        r.push(1).unwrap();
        // The head slot claims a push from a later lap.
        o.slots[0].store(pack(7, 5), Ordering::Relaxed);
        assert_eq!(r.pop(), None);
        assert!(!r.has_ready(), "corrupt head slot is not poppable");
        // The tail slot claims to be free for a later lap.
        let o = Owned::new(4);
        let r = o.ring();
        o.slots[0].store(pack(9, 0), Ordering::Relaxed);
        assert_eq!(r.push(3), Err(3));
        // Indices far apart from the stamps.
        let o = Owned::new(4);
        o.idx.head.store(12345, Ordering::Relaxed);
        o.idx.tail.store(7, Ordering::Relaxed);
        let r = o.ring();
        assert_eq!(r.pop(), None);
        assert!(!r.has_ready());
        let _ = r.push(1);
    }

    /// A consumer that claimed a position but has not yet freed its slot
    /// makes the next lap's push refuse although the ring is empty;
    /// `push_patiently` waits for it to finish instead of failing.
    #[test]
    // Timed (a deadline and a sleeping thread): Miri's virtual clock makes
    // it crawl, and the ring's memory orderings are covered by loom.
    #[cfg_attr(miri, ignore)]
    fn push_waits_for_a_consumer_between_claim_and_release() {
        let o = Arc::new(Owned::new(2));
        let r = o.ring();
        r.push(1).unwrap();
        // A consumer claims position 0 (head 0 -> 1) and stalls before
        // writing the slot's next-lap stamp.
        o.idx.head.store(1, Ordering::Relaxed);
        r.push(2).unwrap();
        assert_eq!(r.pop(), Some(2));
        assert_eq!(r.len(), 0);
        assert_eq!(r.push(3), Err(3), "the stalled slot refuses the push");
        assert_eq!(
            r.push_patiently(3, std::time::Duration::from_millis(20)),
            Err(3),
            "still refused while the consumer stalls"
        );
        let o2 = o.clone();
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            // The stalled consumer resumes: slot 0 free for position 2.
            o2.slots[0].store(pack(2, 0), Ordering::Release);
        });
        o.ring()
            .push_patiently(3, std::time::Duration::from_secs(10))
            .unwrap();
        finisher.join().unwrap();
        assert_eq!(o.ring().pop(), Some(3));
    }

    #[test]
    fn has_ready_follows_pushes_and_pops() {
        let o = Owned::new(2);
        let r = o.ring();
        assert!(!r.has_ready());
        r.push(5).unwrap();
        assert!(r.has_ready());
        assert_eq!(r.pop(), Some(5));
        assert!(!r.has_ready());
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

/// Model-checked with loom: every interleaving (and every weaker-than-SeqCst
/// value the memory model allows) of small producer/consumer scenarios.
/// Run: `RUSTFLAGS="--cfg loom" cargo test --release --lib ring::loom_tests`
/// (scripts/loom.sh). A missing release/acquire on the slot word, or a
/// relaxed stamp check, makes these fail.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn owned(cap: u32) -> Arc<OwnedRing> {
        Arc::new(OwnedRing::new(cap))
    }

    fn ring(o: &OwnedRing) -> Ring<'_> {
        o.ring()
    }

    /// The value a consumer pops carries the producer's earlier plain write
    /// (here an atomic relaxed store standing for an entry's path).
    #[test]
    fn spsc_publishes_payload_and_keeps_order() {
        loom::model(|| {
            let o = owned(2);
            let payload = Arc::new(AtomicU32::new(0));
            let (o2, p2) = (o.clone(), payload.clone());
            let t = thread::spawn(move || {
                for v in 1..=3u32 {
                    p2.store(v, Ordering::Relaxed);
                    while ring(&o2).push(v).is_err() {
                        thread::yield_now();
                    }
                }
            });
            let mut next = 1;
            while next <= 3 {
                if let Some(v) = ring(&o).pop() {
                    assert_eq!(v, next, "FIFO order");
                    // The payload written before the push is visible (it may
                    // already be newer, never older).
                    assert!(payload.load(Ordering::Relaxed) >= v);
                    next += 1;
                } else {
                    thread::yield_now();
                }
            }
            t.join().unwrap();
        });
    }

    /// Two producers and two consumers on a ring of 2: nothing lost, nothing
    /// duplicated, the ring ends empty.
    #[test]
    fn mpmc_loses_and_duplicates_nothing() {
        loom::model(|| {
            let o = owned(2);
            let producers: Vec<_> = (0..2u32)
                .map(|p| {
                    let o = o.clone();
                    thread::spawn(move || {
                        while ring(&o).push(10 + p).is_err() {
                            thread::yield_now();
                        }
                    })
                })
                .collect();
            let o2 = o.clone();
            let consumer = thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..3 {
                    if let Some(v) = ring(&o2).pop() {
                        got.push(v);
                    }
                    thread::yield_now();
                }
                got
            });
            for p in producers {
                p.join().unwrap();
            }
            let mut all = consumer.join().unwrap();
            while let Some(v) = ring(&o).pop() {
                all.push(v);
            }
            all.sort_unstable();
            assert_eq!(all, vec![10, 11]);
            assert!(ring(&o).is_empty());
        });
    }

    /// A full ring refuses a push until a pop frees a slot, across a wrap.
    #[test]
    fn full_ring_wraps_correctly() {
        loom::model(|| {
            let o = owned(2);
            ring(&o).push(0).unwrap();
            assert_eq!(ring(&o).pop(), Some(0));
            ring(&o).push(1).unwrap();
            ring(&o).push(3).unwrap();
            let o2 = o.clone();
            let t = thread::spawn(move || {
                let mut tries = 0;
                while ring(&o2).push(2).is_err() {
                    tries += 1;
                    thread::yield_now();
                }
                tries
            });
            let first = loop {
                if let Some(v) = ring(&o).pop() {
                    break v;
                }
                thread::yield_now();
            };
            assert_eq!(first, 1);
            t.join().unwrap();
            assert_eq!(ring(&o).pop(), Some(3));
            assert_eq!(ring(&o).pop(), Some(2));
            assert_eq!(ring(&o).pop(), None);
        });
    }
}
