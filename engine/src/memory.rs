//! The memory pool: one byte budget per run, shared by named consumers.
//!
//! Every buffer that holds data is reserved here before it is filled. A consumer registers once
//! ([`MemoryPool::register`]) and gets a [`MemoryReservation`]: `try_grow` before allocating, `shrink`
//! after freeing, and everything is returned when the reservation drops. A request that does not fit
//! fails with [`Error::ResourcesExhausted`], which names the consumer, the request, what is in use and
//! the largest holders.
//!
//! The pool only counts; it does not allocate. The `flow` binary also installs
//! [`CountingAllocator`](crate::alloc::CountingAllocator) so the report can show the accounted peak
//! next to the real one.
//!
//! Counting is not enough to keep the process's resident size inside the budget: glibc's malloc
//! keeps freed memory in its per-thread arenas, and a run that allocates and frees batches of every
//! size (an aggregation merging spilled partitions, say) ends up with arenas full of free holes
//! that still count as resident. So each time an eighth of the budget (at least 4 MiB) has been
//! given back, at most ten times a second, the pool asks the allocator to return free pages to the
//! system ([`release_free_memory`](crate::alloc::release_free_memory)). At a 16 MiB budget this
//! took a grouping of 4.6M strings from 53 to 40 MiB of peak RSS, for no measurable time.
//! Where the counting allocator tells what is live, the pool first checks that the return is worth
//! it (see [`worth_trimming`]): every page returned is faulted in again by the next batch.
//!
//! # Arbitration
//!
//! Operators size their shares when they start, but what they then hold changes as a query runs:
//! a sort above a join keeps sorted runs in memory while the join, below it, works through its
//! partitions. A spillable consumer that can give memory back at any moment registers a
//! [`Reclaim`] ([`MemoryReservation::set_reclaimer`]). When a request does not fit, the pool asks
//! the spillable consumers holding the most (and more than the one asking, which should spill
//! itself first if it is the biggest) to spill, largest first, until the request fits; then it
//! fails as before. Operators that size themselves count what could be reclaimed
//! ([`MemoryPool::reclaimable`]) as theirs to take. A reclaim runs on the thread that asked,
//! never waits for a lock (a consumer busy with its own work is skipped) and never asks again
//! from inside another reclaim.
//!
//! # Headroom for batches in flight
//!
//! A table that spills when it cannot grow takes what is free, and an operator beside it then
//! cannot reserve the next batch it must hand on: a join's output under an aggregation whose
//! table grew into the memory the join's output had just given back (found by the fuzzer, near
//! the smallest budgets a plan is accepted at). An operator that hands batches on keeps
//! [`Headroom`] for them while it runs ([`MemoryPool::keep`]): bytes not reserved, but left free
//! by growth that could be done without ([`MemoryReservation::try_grow_spare`], a table that
//! spills instead) and not counted as free by operators sizing themselves
//! ([`MemoryPool::spare`]). A batch is reserved the usual way and may take them; once it is
//! dropped they are free again, with nothing to refill.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};

/// A run's memory budget. Cheap to clone: clones share the same budget.
#[derive(Clone, Debug)]
pub struct MemoryPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    budget: u64,
    state: Mutex<PoolState>,
    /// Signalled whenever memory is given back (see [`MemoryPool::wait_for_release`]).
    released: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct PoolState {
    used: u64,
    peak: u64,
    /// Requests that made other consumers spill, and the bytes those gave back.
    reclaims: u64,
    reclaimed: u64,
    /// Bytes given back since the allocator last returned free memory, and when that was.
    released: u64,
    last_trim: Option<std::time::Instant>,
    /// Counts every give-back, so that a waiter knows one happened.
    releases: u64,
    /// Bytes kept free for batches in flight (see [`Headroom`]).
    kept: u64,
    next_id: u64,
    consumers: BTreeMap<u64, ConsumerState>,
}

struct ConsumerState {
    name: String,
    spillable: bool,
    bytes: u64,
    /// Live reservations of this consumer (a split makes one more).
    handles: usize,
    /// How to make it spill on request.
    reclaimer: Option<Weak<dyn Reclaim>>,
}

impl std::fmt::Debug for ConsumerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerState")
            .field("name", &self.name)
            .field("spillable", &self.spillable)
            .field("bytes", &self.bytes)
            .field("reclaimable", &self.reclaimer.is_some())
            .finish()
    }
}

/// A consumer that can spill what it holds when another needs the memory.
pub trait Reclaim: Send + Sync {
    /// Spills, if it can right now, so as to give back about `bytes` (more is fine); returns the
    /// bytes given back. Must not block: a consumer in the middle of its own work returns 0. A
    /// failure (a full disk, say) is kept by the consumer and reported by its own next step.
    fn reclaim(&self, bytes: u64) -> u64;
}

thread_local! {
    /// Set while this thread runs a reclaim: requests made by the spilling consumer (for its
    /// sort order, say) do not ask anyone else to spill.
    static RECLAIMING: Cell<bool> = const { Cell::new(false) };
}

/// A snapshot of one consumer's reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerUsage {
    /// The consumer's name, e.g. `ParquetScan[lineitem]`.
    pub name: String,
    /// Whether it can give memory back by spilling.
    pub spillable: bool,
    /// Bytes it holds.
    pub bytes: u64,
}

impl MemoryPool {
    /// A pool holding at most `budget` bytes.
    pub fn new(budget: u64) -> Self {
        MemoryPool {
            inner: Arc::new(PoolInner {
                budget,
                state: Mutex::new(PoolState::default()),
                released: std::sync::Condvar::new(),
            }),
        }
    }

    /// A pool with no limit, for tests and reference runs.
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    /// Bytes reserved right now.
    pub fn reserved(&self) -> u64 {
        self.lock().used
    }

    /// The most bytes ever reserved at once.
    pub fn peak(&self) -> u64 {
        self.lock().peak
    }

    /// Starts measuring the peak afresh from what is reserved now (between pipeline steps, say).
    pub fn reset_peak(&self) {
        let mut state = self.lock();
        state.peak = state.used;
    }

    /// Bytes still free.
    pub fn available(&self) -> u64 {
        self.inner.budget.saturating_sub(self.reserved())
    }

    /// Bytes free beyond the headroom kept for batches in flight: what growth that could be
    /// done without may take, and what operators sizing themselves count as free.
    pub fn spare(&self) -> u64 {
        let state = self.lock();
        self.inner.budget.saturating_sub(state.used).saturating_sub(self.kept(&state))
    }

    /// The headroom in force: what the operators keep, at most a sixteenth of the budget or 256
    /// KiB (two batches twice the smallest target), whichever is more. Under 12 MiB, the streams
    /// of TPC-H Q10 keeping two batches each took half of it, and a join that fitted spilled 35
    /// MiB (1.05 s instead of 0.8 at scale factor 1); at 1.8 MiB a join's output batch of 103
    /// KiB needs the 256.
    fn kept(&self, state: &PoolState) -> u64 {
        state.kept.min((self.inner.budget / 16).max(256 << 10))
    }

    /// Keeps `bytes` free for batches in flight until the returned guard drops (see the module
    /// docs).
    pub fn keep(&self, bytes: u64) -> Headroom {
        self.lock().kept += bytes;
        Headroom { pool: self.clone(), bytes }
    }

    /// Bytes held by consumers that spill on request (see [`Reclaim`]): what an operator sizing
    /// itself may count on getting, on top of [`available`](Self::available).
    pub fn reclaimable(&self) -> u64 {
        let state = self.lock();
        state.consumers.values().filter(|c| c.reclaimer.is_some()).map(|c| c.bytes).sum()
    }

    /// How many requests made other consumers spill, and how many bytes those gave back.
    pub fn reclaims(&self) -> (u64, u64) {
        let state = self.lock();
        (state.reclaims, state.reclaimed)
    }

    /// Registers a consumer and returns its empty reservation.
    pub fn register(&self, name: impl Into<String>, spillable: bool) -> MemoryReservation {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let consumer = ConsumerState { name: name.into(), spillable, bytes: 0, handles: 1, reclaimer: None };
        state.consumers.insert(id, consumer);
        MemoryReservation { pool: self.clone(), id, size: 0 }
    }

    /// The consumers holding memory, largest first.
    pub fn consumers(&self) -> Vec<ConsumerUsage> {
        let state = self.lock();
        let mut all: Vec<ConsumerUsage> = state
            .consumers
            .values()
            .map(|c| ConsumerUsage { name: c.name.clone(), spillable: c.spillable, bytes: c.bytes })
            .collect();
        all.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
        all
    }

    /// Counts `bytes` given back (with the lock held); true when it is time to return free memory
    /// to the system (to be done once the lock is released).
    fn released(&self, state: &mut PoolState, bytes: u64) -> bool {
        state.releases += 1;
        self.inner.released.notify_all();
        state.released += bytes;
        let threshold = (self.inner.budget / 8).max(4 << 20);
        let recent = state.last_trim.is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(100));
        if state.released < threshold || recent {
            return false;
        }
        state.released = 0;
        state.last_trim = Some(std::time::Instant::now());
        true
    }

    /// Waits until some consumer gives memory back, or `timeout` passes; true if memory was given
    /// back. For a consumer whose request failed while others hold memory they will release
    /// without its help (a writer's queue, another scan worker's row group).
    pub fn wait_for_release(&self, timeout: std::time::Duration) -> bool {
        let state = self.lock();
        let seen = state.releases;
        let (state, _) = self
            .inner
            .released
            .wait_timeout_while(state, timeout, |s| s.releases == seen)
            .unwrap_or_else(|e| e.into_inner());
        state.releases != seen
    }

    /// Returns free heap to the system, if [`worth_trimming`] says so (call without the lock).
    fn trim(&self) {
        if worth_trimming(self.inner.budget, crate::alloc::current_rss(), crate::alloc::allocated_now()) {
            crate::alloc::release_free_memory();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves consistent counters (updates are single statements).
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether free heap memory is worth returning to the system, given the resident size and the
/// live heap (`None` where unknown: then always). The allocator's free memory is
/// `resident - live` (with the program's own pages, a few MiB); returning it costs a page fault
/// per 4 KiB when the next batches take it again. So it goes back when it is more than a quarter
/// of the budget, or when the resident size comes within an eighth of the budget. Small budgets
/// trim as before (the program's pages alone pass a quarter of 16 MiB). A lineitem scan at scale
/// factor 10 writing every column of a quarter of the rows (512 MiB budget, 2 threads) trimmed
/// ~30 MiB ten times a second and re-faulted 4 GiB: 14.5-14.9 s (5.8 s in the kernel); with this
/// check 10.5-13.4 s (2.0 s in the kernel), peak RSS 375 to 389-395 MiB.
fn worth_trimming(budget: u64, resident: Option<u64>, live: Option<u64>) -> bool {
    let (Some(resident), Some(live)) = (resident, live) else {
        return true;
    };
    resident.saturating_sub(live) > budget / 4 || resident > budget - budget / 8
}

/// Marks this thread as running a reclaim until dropped (also when the reclaim panics).
struct ReclaimingGuard;

impl ReclaimingGuard {
    fn enter() -> ReclaimingGuard {
        RECLAIMING.with(|r| r.set(true));
        ReclaimingGuard
    }
}

impl Drop for ReclaimingGuard {
    fn drop(&mut self) {
        RECLAIMING.with(|r| r.set(false));
    }
}

/// Bytes held by one consumer. Grows with [`try_grow`](Self::try_grow), shrinks with
/// [`shrink`](Self::shrink), and gives everything back when dropped.
#[derive(Debug)]
pub struct MemoryReservation {
    pool: MemoryPool,
    id: u64,
    size: u64,
}

impl MemoryReservation {
    /// Bytes held.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The pool this reservation draws from.
    pub fn pool(&self) -> &MemoryPool {
        &self.pool
    }

    /// The consumer's name.
    pub fn consumer_name(&self) -> String {
        self.pool.lock().consumers.get(&self.id).map(|c| c.name.clone()).unwrap_or_default()
    }

    /// Lets the pool ask this consumer to spill (see [`Reclaim`]); the pool keeps only a weak
    /// reference, so dropping the reclaimer withdraws the offer.
    pub fn set_reclaimer(&self, reclaimer: Weak<dyn Reclaim>) {
        if let Some(c) = self.pool.lock().consumers.get_mut(&self.id) {
            c.reclaimer = Some(reclaimer);
        }
    }

    /// Reserves `bytes` more, or fails without changing anything. When the pool is short it
    /// first asks the biggest spillable consumers to spill (see [`Reclaim`]).
    pub fn try_grow(&mut self, bytes: u64) -> Result<()> {
        self.try_grow_leaving(bytes, false)
    }

    /// Reserves `bytes` of growth that could be done without (a table that spills when it
    /// cannot grow), leaving the headroom kept for batches in flight free (see [`Headroom`]).
    pub fn try_grow_spare(&mut self, bytes: u64) -> Result<()> {
        self.try_grow_leaving(bytes, true)
    }

    /// Reserves `bytes` for a table that may always hold `floor` bytes (its operator's minimum
    /// share, counted in the plan's minimum) and past that only spare ones: kept out of the
    /// headroom altogether, a table near the smallest budget could not grow at all and cut its
    /// input into pieces of one batch.
    pub fn try_grow_past(&mut self, bytes: u64, floor: u64) -> Result<()> {
        self.try_grow_leaving(bytes, self.size + bytes > floor)
    }

    fn try_grow_leaving(&mut self, bytes: u64, leave_kept: bool) -> Result<()> {
        let Err(refused) = self.grow(bytes, leave_kept) else { return Ok(()) };
        if RECLAIMING.with(Cell::get) {
            return Err(refused);
        }
        let mut last = refused;
        for reclaimer in self.reclaim_candidates() {
            let short = {
                let state = self.pool.lock();
                let kept = if leave_kept { self.pool.kept(&state) } else { 0 };
                (state.used + bytes + kept).saturating_sub(self.pool.inner.budget)
            };
            let freed = {
                let _reclaiming = ReclaimingGuard::enter();
                reclaimer.reclaim(short.max(1))
            };
            if freed > 0 {
                let mut state = self.pool.lock();
                state.reclaims += 1;
                state.reclaimed += freed;
            }
            match self.grow(bytes, leave_kept) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whom to ask for memory, largest first: consumers that take requests, other than this
    /// one, holding more than this one when it could spill itself.
    fn reclaim_candidates(&self) -> Vec<Arc<dyn Reclaim>> {
        let state = self.pool.lock();
        let floor = state.consumers.get(&self.id).filter(|c| c.spillable).map_or(0, |c| c.bytes);
        let mut found: Vec<(u64, Arc<dyn Reclaim>)> = state
            .consumers
            .iter()
            .filter(|(id, c)| **id != self.id && c.bytes > floor)
            .filter_map(|(_, c)| Some((c.bytes, c.reclaimer.as_ref()?.upgrade()?)))
            .collect();
        found.sort_by_key(|c| std::cmp::Reverse(c.0));
        found.into_iter().map(|(_, r)| r).collect()
    }

    /// Reserves `bytes` more if they fit now (beside the kept headroom when `leave_kept`).
    fn grow(&mut self, bytes: u64, leave_kept: bool) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let mut state = self.pool.lock();
        let budget = self.pool.inner.budget;
        let kept = if leave_kept { self.pool.kept(&state) } else { 0 };
        if state.used.saturating_add(bytes).saturating_add(kept) > budget {
            let mut largest: Vec<(String, u64)> =
                state.consumers.values().filter(|c| c.bytes > 0).map(|c| (c.name.clone(), c.bytes)).collect();
            largest.sort_by_key(|c| std::cmp::Reverse(c.1));
            largest.truncate(3);
            return Err(Error::ResourcesExhausted {
                consumer: state.consumers.get(&self.id).map(|c| c.name.clone()).unwrap_or_default(),
                requested: bytes,
                in_use: state.used,
                budget,
                largest,
            });
        }
        state.used += bytes;
        state.peak = state.peak.max(state.used);
        if let Some(c) = state.consumers.get_mut(&self.id) {
            c.bytes += bytes;
        }
        self.size += bytes;
        Ok(())
    }

    /// Reserves `bytes` even past the budget: for memory that is held already, whatever the pool
    /// says (the footers of a table being registered). Requests of others then fail until it is
    /// given back, and plans are refused with a minimum that counts it.
    pub fn grow_over_budget(&mut self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut state = self.pool.lock();
        state.used += bytes;
        state.peak = state.peak.max(state.used);
        if let Some(c) = state.consumers.get_mut(&self.id) {
            c.bytes += bytes;
        }
        self.size += bytes;
    }

    /// Gives back `bytes` (at most what is held).
    pub fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.size);
        if bytes == 0 {
            return;
        }
        let mut state = self.pool.lock();
        state.used -= bytes;
        if let Some(c) = state.consumers.get_mut(&self.id) {
            c.bytes -= bytes;
        }
        self.size -= bytes;
        let trim = self.pool.released(&mut state, bytes);
        drop(state);
        if trim {
            self.pool.trim();
        }
    }

    /// Grows or shrinks to exactly `bytes`.
    pub fn try_resize(&mut self, bytes: u64) -> Result<()> {
        if bytes > self.size {
            self.try_grow(bytes - self.size)
        } else {
            self.shrink(self.size - bytes);
            Ok(())
        }
    }

    /// Gives back everything held and returns how much that was.
    pub fn free(&mut self) -> u64 {
        let size = self.size;
        self.shrink(size);
        size
    }

    /// Moves `bytes` of this reservation into a new reservation of the same consumer, so the bytes
    /// can travel with the data they pay for (a batch sent to another thread, say).
    pub fn split(&mut self, bytes: u64) -> MemoryReservation {
        let bytes = bytes.min(self.size);
        self.size -= bytes;
        if let Some(c) = self.pool.lock().consumers.get_mut(&self.id) {
            c.handles += 1;
        }
        MemoryReservation { pool: self.pool.clone(), id: self.id, size: bytes }
    }

    /// Moves everything `other` holds into this reservation (no new bytes are reserved); returns
    /// how much moved. How an operator takes over the memory of a batch it keeps.
    pub fn take(&mut self, other: &mut MemoryReservation) -> u64 {
        let moved = other.split(other.size());
        let bytes = moved.size();
        self.merge(moved);
        bytes
    }

    /// Adds another reservation of the same pool into this one.
    pub fn merge(&mut self, mut other: MemoryReservation) {
        let bytes = other.size;
        other.size = 0;
        if other.id != self.id {
            let mut state = self.pool.lock();
            if let Some(c) = state.consumers.get_mut(&other.id) {
                c.bytes -= bytes;
            }
            if let Some(c) = state.consumers.get_mut(&self.id) {
                c.bytes += bytes;
            }
        }
        self.size += bytes;
    }
}

/// Bytes kept free for batches in flight while it lives (see [`MemoryPool::keep`]).
#[derive(Debug)]
pub struct Headroom {
    pool: MemoryPool,
    bytes: u64,
}

impl Headroom {
    /// Keeps at least `bytes` from now on (batches came out larger than first thought).
    pub fn raise_to(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.pool.lock().kept += bytes - self.bytes;
            self.bytes = bytes;
        }
    }
}

impl Drop for Headroom {
    fn drop(&mut self) {
        self.pool.lock().kept -= self.bytes;
    }
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        state.used -= self.size;
        let gone = match state.consumers.get_mut(&self.id) {
            Some(c) => {
                c.bytes -= self.size;
                c.handles -= 1;
                c.handles == 0
            }
            None => false,
        };
        if gone {
            state.consumers.remove(&self.id);
        }
        let trim = self.pool.released(&mut state, self.size);
        drop(state);
        if trim {
            self.pool.trim();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_memory_goes_back_when_it_is_a_quarter_of_the_budget_or_the_budget_is_near() {
        const MIB: u64 = 1 << 20;
        // Unknown figures: always.
        assert!(worth_trimming(512 * MIB, None, Some(100 * MIB)));
        assert!(worth_trimming(512 * MIB, Some(100 * MIB), None));
        // 90 MiB free, far from the budget: kept for the next batches.
        assert!(!worth_trimming(512 * MIB, Some(390 * MIB), Some(300 * MIB)));
        // More than a quarter of the budget free.
        assert!(worth_trimming(512 * MIB, Some(300 * MIB), Some(170 * MIB)));
        // Within an eighth of the budget, however little is free.
        assert!(worth_trimming(512 * MIB, Some(460 * MIB), Some(440 * MIB)));
        // Small budgets: the program's own pages pass a quarter.
        assert!(worth_trimming(16 * MIB, Some(14 * MIB), Some(8 * MIB)));
    }

    #[test]
    fn grow_shrink_and_drop() {
        let pool = MemoryPool::new(100);
        let mut a = pool.register("a", false);
        let mut b = pool.register("b", true);
        a.try_grow(60).unwrap();
        let err = b.try_grow(50).unwrap_err().to_string();
        assert!(err.contains("failed to reserve 50 B for b"), "{err}");
        assert!(err.contains("60 B of 100 B in use"), "{err}");
        assert!(err.contains("largest: a 60 B"), "{err}");
        assert_eq!(b.size(), 0);
        a.shrink(20);
        b.try_grow(50).unwrap();
        assert_eq!(pool.reserved(), 90);
        assert_eq!(pool.peak(), 90);
        let half = b.split(30);
        assert_eq!((b.size(), half.size()), (20, 30));
        drop(half);
        assert_eq!(pool.reserved(), 60);
        drop(a);
        drop(b);
        assert_eq!(pool.reserved(), 0);
    }

    /// A consumer that spills everything it holds when asked, unless told it is busy.
    struct Spiller {
        held: Mutex<MemoryReservation>,
        busy: std::sync::atomic::AtomicBool,
        /// Bytes the spill itself asks for (its sort order, say): must not reclaim from others.
        scratch: u64,
    }

    impl Reclaim for Spiller {
        fn reclaim(&self, _bytes: u64) -> u64 {
            if self.busy.load(std::sync::atomic::Ordering::Relaxed) {
                return 0;
            }
            let Ok(mut held) = self.held.try_lock() else { return 0 };
            let mut scratch = held.pool().register("scratch", false);
            if scratch.try_grow(self.scratch).is_err() {
                return 0;
            }
            held.free()
        }
    }

    fn spiller(pool: &MemoryPool, name: &str, bytes: u64, scratch: u64) -> Arc<Spiller> {
        let mut r = pool.register(name, true);
        r.try_grow(bytes).unwrap();
        let s = Arc::new(Spiller { held: Mutex::new(r), busy: false.into(), scratch });
        let weak: Weak<dyn Reclaim> = Arc::downgrade(&(s.clone() as Arc<dyn Reclaim>));
        s.held.lock().unwrap().set_reclaimer(weak);
        s
    }

    #[test]
    fn growth_that_can_spill_leaves_the_headroom_to_batches() {
        let pool = MemoryPool::new(100);
        let mut table = pool.register("table", true);
        let mut batch = pool.register("batch", false);
        let mut headroom = pool.keep(30);
        assert_eq!(pool.spare(), 70);
        assert!(table.try_grow_spare(71).is_err());
        table.try_grow_spare(70).unwrap();
        // A batch may take the headroom; the table may not, even once the batch is gone.
        batch.try_grow(30).unwrap();
        batch.free();
        assert!(table.try_grow_spare(1).is_err());
        headroom.raise_to(40);
        assert_eq!(pool.spare(), 0);
        assert!(batch.try_grow(30).is_ok());
        batch.free();
        drop(headroom);
        table.try_grow_spare(30).unwrap();
        assert_eq!(pool.spare(), 0);
    }

    #[test]
    fn a_table_takes_its_floor_from_the_headroom_and_no_more() {
        let pool = MemoryPool::new(100);
        let _headroom = pool.keep(60);
        let mut table = pool.register("table", true);
        table.try_grow_past(30, 50).unwrap();
        table.try_grow_past(20, 50).unwrap();
        assert!(table.try_grow_past(1, 50).is_err());
        assert_eq!(table.size(), 50);
    }

    #[test]
    fn a_refused_request_makes_the_biggest_spillable_consumer_spill() {
        let pool = MemoryPool::new(100);
        let small = spiller(&pool, "small", 20, 0);
        let big = spiller(&pool, "big", 50, 0);
        assert_eq!(pool.reclaimable(), 70);
        let mut other = pool.register("other", false);
        other.try_grow(40).unwrap();
        assert_eq!(big.held.lock().unwrap().size(), 0, "the biggest spilled");
        assert_eq!(small.held.lock().unwrap().size(), 20, "one spill was enough");
        assert_eq!(pool.reclaims(), (1, 50));
        // A busy consumer is passed over; when nobody can give enough, the request fails as
        // before and names what is held.
        small.busy.store(true, std::sync::atomic::Ordering::Relaxed);
        let err = other.try_grow(50).unwrap_err().to_string();
        assert!(err.contains("failed to reserve 50 B for other"), "{err}");
        assert_eq!(other.size(), 40);
        drop((small, big, other));
        assert_eq!(pool.reserved(), 0);
    }

    #[test]
    fn a_spillable_consumer_that_is_the_biggest_spills_itself() {
        let pool = MemoryPool::new(100);
        let held = spiller(&pool, "held", 30, 0);
        let mut asking = pool.register("asking", true);
        asking.try_grow(60).unwrap();
        // `asking` holds more than `held`: it is the one to spill, so the pool refuses.
        assert!(asking.try_grow(20).is_err());
        assert_eq!(held.held.lock().unwrap().size(), 30);
        // A smaller spillable consumer asks: `held` (bigger) is asked to spill.
        asking.shrink(50);
        let mut third = pool.register("third", true);
        third.try_grow(25).unwrap();
        third.try_grow(40).unwrap();
        assert_eq!(held.held.lock().unwrap().size(), 0);
    }

    #[test]
    fn a_reclaim_does_not_reclaim_again() {
        let pool = MemoryPool::new(100);
        // Spilling `a` needs 30 bytes of scratch, which are not free: `a` must not make `b`
        // spill from inside its own spill (it gives up instead), and `b` is then asked.
        let a = spiller(&pool, "a", 50, 30);
        let b = spiller(&pool, "b", 40, 0);
        let mut other = pool.register("other", false);
        other.try_grow(20).unwrap();
        assert_eq!(a.held.lock().unwrap().size(), 50);
        assert_eq!(b.held.lock().unwrap().size(), 0);
        assert!(!RECLAIMING.with(Cell::get));
        // Dropping a reclaimer withdraws it.
        drop(a);
        assert_eq!(pool.reclaimable(), 0);
    }
}
