//! Ownership of the C handles `al_worker *` and `al_entry *`, in one place
//! and without the kernel, so that Miri can check it
//! (`cargo +nightly miri test --lib ffi::handles`).
//!
//! A worker handle is an [`Arc<Table>`] turned into a raw pointer with
//! [`Arc::into_raw`] (rustls-ffi's pattern). The table holds the payload
//! (the engine's `Worker` in the library, a plain value in the tests) and
//! `queue_depth * window` entry slots. An `al_entry *` points to a slot,
//! never to fresh memory, so a released handle reads a live slot and is
//! refused instead of being a use-after-free.
//!
//! Reference counts: the `Arc`'s strong count is 1 for the handle (until
//! [`Table::free`]) plus 1 per live slot. [`Table::deliver`] adds one
//! ([`Arc::increment_strong_count`]) and [`Slot::release`] drops it
//! ([`Arc::decrement_strong_count`]); the table goes with the last. Every
//! slot keeps the pointer `Arc::into_raw` returned, and nothing else
//! (no reference to the box is ever turned back into a pointer and
//! written through).
//!
//! Slot placement: an entry delivered with generation `gen` (the engine
//! bumps an entry's generation on every release) lands in slot
//! `local_index * window + gen % window`, and the slot's token records
//! `gen` and whether the handle is live. A stale handle aliases a newer
//! delivery only after the same entry was delivered `window` more times.
//!
//! Fork: a slot records the fork epoch (`crate::process::fork_epoch()`) it
//! was delivered in. A release in another epoch (a child that inherited a
//! copy of the table) forgets the handle in that process only and does not
//! give the entry back: the entry is still the parent's. Epochs are
//! parameters here so that the tests can simulate a fork.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use super::panic::Errno;

const LIVE: u64 = 1;

/// A worker handle's table; see the module docs.
pub(crate) struct Table<P> {
    payload: P,
    /// Global entry index of local entry 0.
    first: u32,
    queue_depth: u32,
    window: u32,
    slots: Box<[Slot<P>]>,
    freed: AtomicBool,
}

/// One handle slot; an `al_entry *` points to one.
pub(crate) struct Slot<P> {
    /// The pointer `Arc::into_raw` returned for the table owning this slot;
    /// written once in [`Table::new_raw`], before the handle exists.
    owner: AtomicPtr<Table<P>>,
    /// Global entry index this slot stands for.
    g: u32,
    /// `generation << 32 | LIVE` while delivered, `generation << 32` after.
    token: AtomicU64,
    /// Fork epoch of the delivery.
    epoch: AtomicU64,
}

/// A live handle, checked: the table, the entry and its generation.
pub(crate) struct Held<'a, P> {
    pub(crate) table: &'a Table<P>,
    pub(crate) g: u32,
    pub(crate) generation: u32,
}

/// Generations per entry in a worker's table.
pub(crate) fn window_for(queue_depth: u32) -> u32 {
    if queue_depth <= 4096 { 16 } else { 2 }
}

impl<P> Table<P> {
    /// A new table for entries `first .. first + queue_depth`, as the raw
    /// pointer of an `Arc` holding one reference (the handle's).
    pub(crate) fn new_raw(payload: P, first: u32, queue_depth: u32) -> *const Table<P> {
        let window = window_for(queue_depth);
        let slots = (0..queue_depth as u64 * window as u64)
            .map(|i| Slot {
                owner: AtomicPtr::new(std::ptr::null_mut()),
                g: first + (i / window as u64) as u32,
                token: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
            })
            .collect();
        let raw = Arc::into_raw(Arc::new(Table {
            payload,
            first,
            queue_depth,
            window,
            slots,
            freed: AtomicBool::new(false),
        }));
        // SAFETY: `raw` came from Arc::into_raw just above and its reference
        // is still ours: the table is alive, and only shared access follows.
        let t = unsafe { &*raw };
        for s in t.slots.iter() {
            // Published to other threads with the handle itself (the caller
            // hands `raw` over with its own synchronization).
            s.owner.store(raw.cast_mut(), Ordering::Release);
        }
        raw
    }

    /// The table behind a handle that is not NULL and not freed.
    ///
    /// # Safety
    ///
    /// `p` is NULL or came from [`Table::new_raw`] and still exists (its
    /// handle was not freed, or live entries keep it).
    pub(crate) unsafe fn get<'a>(p: *const Table<P>) -> Result<&'a Table<P>, Errno> {
        // SAFETY: a non-NULL `p` points to a live table (caller).
        let t = unsafe { p.as_ref() }.ok_or(Errno::INVAL)?;
        if t.freed.load(Ordering::Acquire) {
            return Err(Errno::INVAL);
        }
        Ok(t)
    }

    /// Drops the handle's reference, once: NULL and a second call (while
    /// live entries keep the table) are ignored.
    ///
    /// # Safety
    ///
    /// As [`Table::get`], and nobody else uses the handle (its entries may
    /// still be used).
    pub(crate) unsafe fn free(p: *const Table<P>) {
        // SAFETY: NULL or a live table (caller).
        let Some(t) = (unsafe { p.as_ref() }) else {
            return;
        };
        if !t.freed.swap(true, Ordering::AcqRel) {
            // SAFETY: the handle's own reference, dropped once (the swap);
            // `p` came from Arc::into_raw in `new_raw`. `t` is not used after.
            unsafe { Arc::decrement_strong_count(p) };
        }
    }

    pub(crate) fn payload(&self) -> &P {
        &self.payload
    }

    #[cfg(test)]
    pub(crate) fn window(&self) -> u32 {
        self.window
    }

    /// Makes a live handle for entry `g`, generation `generation`, delivered
    /// in fork epoch `epoch`. `EINVAL` when `g` is not one of this table's
    /// entries (the engine never does that; a tampered region could).
    pub(crate) fn deliver(
        &self,
        g: u32,
        generation: u32,
        epoch: u64,
    ) -> Result<*const Slot<P>, Errno> {
        let local = g.checked_sub(self.first).filter(|&l| l < self.queue_depth);
        let local = local.ok_or(Errno::INVAL)?;
        let idx = local as usize * self.window as usize + (generation % self.window) as usize;
        let slot = &self.slots[idx];
        let owner = slot.owner.load(Ordering::Acquire);
        // SAFETY: `owner` is this table's Arc::into_raw pointer, and the
        // caller's handle keeps a reference, so the count is at least 1.
        unsafe { Arc::increment_strong_count(owner.cast_const()) };
        slot.epoch.store(epoch, Ordering::Relaxed);
        let old = slot
            .token
            .swap(((generation as u64) << 32) | LIVE, Ordering::AcqRel);
        if old & LIVE != 0 {
            // The slot was still live: a handle inherited across fork and
            // never released here (or a tampered region). Its reference
            // passes to this delivery, so the count stays 1 per live slot.
            // SAFETY: drops the reference the old delivery took; the
            // caller's handle keeps the table alive.
            unsafe { Arc::decrement_strong_count(owner.cast_const()) };
        }
        Ok(slot)
    }
}

impl<P> Slot<P> {
    /// Checks a handle: live, and the table it belongs to.
    ///
    /// # Safety
    ///
    /// `e` is NULL or points to a slot of a table that still exists (a
    /// live handle keeps it; see `al_entry` for stale handles).
    pub(crate) unsafe fn held<'a>(e: *const Slot<P>) -> Result<Held<'a, P>, Errno> {
        // SAFETY: NULL or a slot of a live table (caller).
        let slot = unsafe { e.as_ref() }.ok_or(Errno::INVAL)?;
        let t = slot.token.load(Ordering::Acquire);
        if t & LIVE == 0 {
            return Err(Errno::INVAL);
        }
        // SAFETY: a live token holds a reference on the table, so `owner`
        // (its Arc::into_raw pointer) points to a live table.
        let table = unsafe { &*slot.owner.load(Ordering::Acquire) };
        Ok(Held {
            table,
            g: slot.g,
            generation: (t >> 32) as u32,
        })
    }

    /// Releases a handle: marks the slot dead, calls `give_back` with the
    /// payload, entry and generation, and drops the slot's reference on the
    /// table. `EINVAL` when not live (NULL, released, lost a race with
    /// another release). In another fork epoch than the delivery's, the
    /// handle is forgotten in this process (slot dead, reference dropped)
    /// without `give_back`, and the result is `EPERM`.
    ///
    /// # Safety
    ///
    /// As [`Slot::held`]; the slot is not used after this call unless the
    /// table is known to be alive by other means.
    pub(crate) unsafe fn release(
        e: *const Slot<P>,
        epoch: u64,
        give_back: impl FnOnce(&P, u32, u32) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        // SAFETY: NULL or a slot of a live table (caller).
        let slot = unsafe { e.as_ref() }.ok_or(Errno::INVAL)?;
        let t = slot.token.load(Ordering::Acquire);
        if t & LIVE == 0 {
            return Err(Errno::INVAL);
        }
        let inherited = slot.epoch.load(Ordering::Relaxed) != epoch;
        // Only one releaser wins; a concurrent second release sees Err.
        slot.token
            .compare_exchange(t, t & !LIVE, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| Errno::INVAL)?;
        let owner = slot.owner.load(Ordering::Acquire).cast_const();
        let r = if inherited {
            Err(Errno(libc::EPERM))
        } else {
            // SAFETY: we won the live token, whose reference keeps the table
            // alive until the decrement below.
            let table = unsafe { &*owner };
            give_back(&table.payload, slot.g, (t >> 32) as u32)
        };
        // SAFETY: drops the reference `deliver` took for this token (ours
        // now, by the compare-exchange); neither `slot` nor the table is
        // used after it.
        unsafe { Arc::decrement_strong_count(owner) };
        r
    }
}

#[cfg(test)]
mod tests {
    //! Pure Rust over plain memory: these run under Miri.
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    /// A payload that logs give-backs and counts its drops.
    struct Probe {
        given: Mutex<Vec<(u32, u32)>>,
        drops: Arc<AtomicUsize>,
    }
    impl Drop for Probe {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn table(first: u32, qd: u32) -> (*const Table<Probe>, Arc<AtomicUsize>) {
        let drops = Arc::new(AtomicUsize::new(0));
        let p = Probe {
            given: Mutex::new(Vec::new()),
            drops: drops.clone(),
        };
        (Table::new_raw(p, first, qd), drops)
    }

    /// A slot pointer sent to another thread (keeps its provenance, unlike
    /// an integer round trip, so Miri checks the accesses in full).
    #[derive(Clone, Copy)]
    struct Sent(*const Slot<Probe>);
    // SAFETY: slots are made of atomics and a table that is Sync; the tests
    // keep the table alive while threads use the pointer.
    unsafe impl Send for Sent {}
    impl Sent {
        fn get(self) -> *const Slot<Probe> {
            self.0
        }
    }

    fn log(p: &Probe, g: u32, generation: u32) -> Result<(), Errno> {
        p.given.lock().unwrap().push((g, generation));
        Ok(())
    }

    fn given(t: *const Table<Probe>) -> Vec<(u32, u32)> {
        // SAFETY: the tests call this while the handle is alive.
        unsafe { Table::get(t) }
            .unwrap()
            .payload()
            .given
            .lock()
            .unwrap()
            .clone()
    }

    #[test]
    fn release_gives_the_entry_back_once() {
        let (t, drops) = table(8, 4);
        // SAFETY: `t` is alive until `free`, slots until their table goes.
        unsafe {
            let e = Table::get(t).unwrap().deliver(9, 3, 0).unwrap();
            let h = Slot::held(e).unwrap();
            assert_eq!((h.g, h.generation), (9, 3));
            assert_eq!(Slot::release(e, 0, log), Ok(()));
            assert_eq!(Slot::release(e, 0, log), Err(Errno::INVAL));
            assert!(Slot::held(e).is_err());
            assert_eq!(given(t), vec![(9, 3)]);
            Table::free(t);
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn null_handles_are_einval() {
        // SAFETY: NULL is allowed everywhere.
        unsafe {
            assert!(Table::<Probe>::get(std::ptr::null()).is_err());
            Table::<Probe>::free(std::ptr::null());
            assert!(Slot::<Probe>::held(std::ptr::null()).is_err());
            assert_eq!(
                Slot::<Probe>::release(std::ptr::null(), 0, log),
                Err(Errno::INVAL)
            );
        }
    }

    #[test]
    fn delivering_an_entry_of_another_worker_is_einval() {
        let (t, _) = table(8, 4);
        // SAFETY: `t` is alive until `free`.
        unsafe {
            let tb = Table::get(t).unwrap();
            assert!(tb.deliver(7, 0, 0).is_err());
            assert!(tb.deliver(12, 0, 0).is_err());
            assert!(tb.deliver(u32::MAX, 0, 0).is_err());
            Table::free(t);
        }
    }

    #[test]
    fn freed_handle_is_refused_and_freeing_twice_is_ignored() {
        let (t, drops) = table(0, 2);
        // SAFETY: an entry keeps the table alive across both frees.
        unsafe {
            let e = Table::get(t).unwrap().deliver(1, 0, 0).unwrap();
            Table::free(t);
            assert!(Table::get(t).is_err());
            Table::free(t);
            assert_eq!(drops.load(Ordering::SeqCst), 0);
            assert_eq!(Slot::release(e, 0, |_, _, _| Ok(())), Ok(()));
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn entries_outlive_their_freed_worker_handle() {
        let (t, drops) = table(0, 3);
        // SAFETY: live entries keep the table; nothing is used after the
        // last release.
        unsafe {
            let tb = Table::get(t).unwrap();
            let es: Vec<_> = (0..3).map(|g| tb.deliver(g, 0, 0).unwrap()).collect();
            Table::free(t);
            for (i, &e) in es.iter().enumerate() {
                assert_eq!(Slot::held(e).unwrap().g, i as u32);
                assert_eq!(drops.load(Ordering::SeqCst), 0);
                Slot::release(e, 0, log).unwrap();
            }
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn stale_handle_stays_dead_for_a_window_of_generations() {
        let (t, _) = table(0, 1);
        // SAFETY: `t` is alive until `free`.
        unsafe {
            let tb = Table::get(t).unwrap();
            let window = tb.window();
            let first = tb.deliver(0, 0, 0).unwrap();
            Slot::release(first, 0, log).unwrap();
            for generation in 1..=window {
                let e = tb.deliver(0, generation, 0).unwrap();
                if generation < window {
                    assert_ne!(e, first);
                    assert!(Slot::held(first).is_err());
                } else {
                    assert_eq!(e, first, "aliases after `window` generations");
                }
                Slot::release(e, 0, log).unwrap();
            }
            Table::free(t);
        }
    }

    #[test]
    fn release_in_a_forked_child_forgets_the_handle_without_giving_it_back() {
        let (t, drops) = table(0, 2);
        // SAFETY: `t` is alive until `free`.
        unsafe {
            let e = Table::get(t).unwrap().deliver(1, 5, 7).unwrap();
            assert_eq!(Slot::release(e, 8, log), Err(Errno(libc::EPERM)));
            assert!(given(t).is_empty(), "the parent's entry was given back");
            assert!(Slot::held(e).is_err());
            assert_eq!(Slot::release(e, 8, log), Err(Errno::INVAL));
            Table::free(t);
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn delivery_over_an_inherited_live_slot_keeps_one_reference() {
        let (t, drops) = table(0, 1);
        // SAFETY: `t` is alive until `free`; the second delivery replaces
        // the inherited one in the same slot.
        unsafe {
            let tb = Table::get(t).unwrap();
            let window = tb.window();
            let old = tb.deliver(0, 0, 1).unwrap();
            let new = tb.deliver(0, window, 2).unwrap();
            assert_eq!(old, new);
            assert_eq!(Slot::held(new).unwrap().generation, window);
            Slot::release(new, 2, log).unwrap();
            Table::free(t);
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1, "table freed exactly once");
    }

    #[test]
    fn concurrent_releases_give_back_once() {
        let (t, drops) = table(0, 4);
        // SAFETY: `t` is alive until `free`; every thread releases slots of
        // entries that the handle keeps alive until all threads are joined.
        unsafe {
            let tb = Table::get(t).unwrap();
            for round in 0..4u32 {
                let e = Sent(tb.deliver(round, round, 0).unwrap());
                let wins: usize = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..3)
                        .map(|_| {
                            s.spawn(move || usize::from(Slot::release(e.get(), 0, log).is_ok()))
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).sum()
                });
                assert_eq!(wins, 1);
            }
            assert_eq!(given(t).len(), 4);
            Table::free(t);
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn last_release_on_another_thread_frees_the_table() {
        let (t, drops) = table(0, 2);
        // SAFETY: the handle is freed first; the entries, sent to threads as
        // addresses, keep the table alive until the last release.
        unsafe {
            let tb = Table::get(t).unwrap();
            let es: Vec<Sent> = (0..2).map(|g| Sent(tb.deliver(g, 0, 0).unwrap())).collect();
            Table::free(t);
            std::thread::scope(|s| {
                for e in es {
                    s.spawn(move || Slot::release(e.get(), 0, log).unwrap());
                }
            });
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }
}
