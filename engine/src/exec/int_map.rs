//! A map from `i64` keys to `u32` values for the hash tables of joins and aggregations keyed by
//! one integer-like column (ids, dates): open addressing with linear probing, the key and its
//! value side by side in one 16-byte slot, at most seven eighths full.
//!
//! Robin Hood insertion keeps keys in order of how far they sit from their home slot, so a
//! lookup of a missing key stops as soon as it meets a key closer to home than it would be: even
//! seven eighths full, a lookup reads a few neighbouring slots (a cache line or two). Fuller tables
//! matter: at three quarters a build side of 3.3M keys (TPC-H Q9 at scale factor 10) needed 8M
//! slots, twice hashbrown's memory, and spilled.
//!
//! hashbrown, used before, keeps a control byte per slot apart from the slots: a lookup in a
//! table of millions of keys (TPC-H's orders) paid two cache misses, and hid where it would look,
//! so a lookup could not be started early. Here the slot is known from the key alone (the top
//! bits of a multiplicative hash), so a caller going through a batch of keys asks for the slot of
//! the key [`AHEAD`](IntMap::AHEAD) rows on ([`IntMap::prefetch`]) while it looks up the current
//! one, and the memory latency of the lookups overlaps. The lineitem-orders join at TPC-H scale
//! factor 10 went from 8.3 s to 5.6 s.

/// What [`IntMap::get`] returns for a key that is not there; never a value.
pub(crate) const ABSENT: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Slot {
    key: i64,
    /// `ABSENT` for an empty slot.
    value: u32,
}

const EMPTY: Slot = Slot { key: 0, value: ABSENT };

/// See the [module docs](self).
#[derive(Default)]
pub(crate) struct IntMap {
    slots: Vec<Slot>,
    len: usize,
    /// 64 less log2 of the slot count.
    shift: u32,
}

impl IntMap {
    /// How many keys ahead of the current one a batch lookup should prefetch.
    pub(crate) const AHEAD: usize = 16;

    fn slots_for(keys: usize) -> usize {
        (keys * 8 / 7 + 1).next_power_of_two().max(16)
    }

    /// Bytes of a map sized for `keys` keys (see [`reserve`](Self::reserve)).
    pub(crate) fn bytes_for(keys: usize) -> usize {
        Self::slots_for(keys) * std::mem::size_of::<Slot>()
    }

    /// Keys it holds before it must grow.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len() / 8 * 7
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// What to ask [`reserve`](Self::reserve) and [`growth_bytes`](Self::growth_bytes) for, to
    /// add `additional` keys to a map filled batch by batch: `additional` itself while it fits,
    /// else at least as many keys as it holds (it doubles: each key moves a bounded number of
    /// times).
    pub(crate) fn room_for(&self, additional: usize) -> usize {
        if self.len + additional <= self.capacity() {
            additional
        } else {
            additional.max(self.len)
        }
    }

    /// Bytes held at once while growing for `additional` more keys (the old and the new slots),
    /// or 0 when they fit.
    pub(crate) fn growth_bytes(&self, additional: usize) -> usize {
        if self.len + additional <= self.capacity() {
            return 0;
        }
        self.bytes() + Self::bytes_for(self.len + additional)
    }

    /// Makes room for `additional` more keys, in slots for exactly `len + additional` keys (a
    /// caller adding batch by batch asks for at least `len` more, so the map doubles).
    pub(crate) fn reserve(&mut self, additional: usize) {
        if self.len + additional <= self.capacity() {
            return;
        }
        let count = Self::slots_for(self.len + additional);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; count]);
        self.shift = 64 - count.trailing_zeros();
        self.len = 0;
        for slot in old.into_iter().filter(|s| s.value != ABSENT) {
            self.place(slot);
        }
    }

    /// Removes every key, keeping the slots.
    pub(crate) fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.len = 0;
    }

    /// The home slot of `key`.
    fn slot(&self, key: i64) -> usize {
        ((key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// How far slot `at`, holding `key`, is from `key`'s home.
    fn distance(&self, key: i64, at: usize) -> usize {
        at.wrapping_sub(self.slot(key)) & (self.slots.len() - 1)
    }

    /// Sets `key`'s value (room was made by [`reserve`](Self::reserve); `value` is not
    /// [`ABSENT`]); returns the value it replaces.
    pub(crate) fn insert(&mut self, key: i64, value: u32) -> Option<u32> {
        debug_assert!(value != ABSENT && self.len < self.slots.len());
        let mask = self.slots.len() - 1;
        let (mut at, mut distance) = (self.slot(key), 0);
        loop {
            let slot = self.slots[at];
            if slot.value == ABSENT || self.distance(slot.key, at) < distance {
                // Not there: it goes here, and what was here moves on.
                self.place(Slot { key, value });
                return None;
            }
            if slot.key == key {
                return Some(std::mem::replace(&mut self.slots[at].value, value));
            }
            at = (at + 1) & mask;
            distance += 1;
        }
    }

    /// Puts a key that is not in the map in: Robin Hood, each slot on the way goes to whichever
    /// of its key and the one being placed is farther from home.
    fn place(&mut self, mut carried: Slot) {
        let mask = self.slots.len() - 1;
        let (mut at, mut distance) = (self.slot(carried.key), 0);
        loop {
            let slot = self.slots[at];
            if slot.value == ABSENT {
                self.slots[at] = carried;
                self.len += 1;
                return;
            }
            let theirs = self.distance(slot.key, at);
            if theirs < distance {
                self.slots[at] = carried;
                carried = slot;
                distance = theirs;
            }
            at = (at + 1) & mask;
            distance += 1;
        }
    }

    /// `key`'s value, or [`ABSENT`].
    pub(crate) fn get(&self, key: i64) -> u32 {
        if self.slots.is_empty() {
            return ABSENT;
        }
        let mask = self.slots.len() - 1;
        let (mut at, mut distance) = (self.slot(key), 0);
        loop {
            let slot = self.slots[at];
            if slot.key == key && slot.value != ABSENT {
                return slot.value;
            }
            // An empty slot, or a key closer to its home than this one would be: not there.
            if slot.value == ABSENT || self.distance(slot.key, at) < distance {
                return ABSENT;
            }
            at = (at + 1) & mask;
            distance += 1;
        }
    }

    /// The value of every key ([`ABSENT`] for those not there), each slot prefetched
    /// [`AHEAD`](Self::AHEAD) keys in advance.
    pub(crate) fn get_all(&self, keys: &[i64]) -> Vec<u32> {
        if self.slots.is_empty() {
            return vec![ABSENT; keys.len()];
        }
        let mut values = Vec::with_capacity(keys.len());
        for (i, &key) in keys.iter().enumerate() {
            if let Some(&ahead) = keys.get(i + Self::AHEAD) {
                self.prefetch(ahead);
            }
            values.push(self.get(key));
        }
        values
    }

    /// Like [`get_all`](Self::get_all), for keys many of which are not there: `filter` (made
    /// from this map's keys) turns most of those away before their slot is read. When most of
    /// the first keys pass the filter, it only costs (a join whose probe keys nearly all have a
    /// partner ran an eighth slower with it), and the batch is looked up without.
    pub(crate) fn get_all_filtered(&self, keys: &[i64], filter: &IntFilter) -> Vec<u32> {
        const SAMPLE: usize = 64;
        if keys.len() >= 4 * SAMPLE && keys[..SAMPLE].iter().filter(|&&k| filter.may_contain(k)).count() > SAMPLE / 2 {
            return self.get_all(keys);
        }
        let mut values = vec![ABSENT; keys.len()];
        // Written for every key, kept for those that may be there: no branch for the CPU to
        // mispredict, so the filter's words (a cache miss each when it is big) load in parallel.
        let mut maybe = vec![0u32; keys.len()];
        let mut kept = 0;
        for (i, &key) in keys.iter().enumerate() {
            maybe[kept] = i as u32;
            kept += filter.may_contain(key) as usize;
        }
        maybe.truncate(kept);
        for (j, &i) in maybe.iter().enumerate() {
            if let Some(&ahead) = maybe.get(j + Self::AHEAD) {
                self.prefetch(keys[ahead as usize]);
            }
            values[i as usize] = self.get(keys[i as usize]);
        }
        values
    }

    /// The keys in the map, in no order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = i64> + '_ {
        self.slots.iter().filter(|s| s.value != ABSENT).map(|s| s.key)
    }

    /// Starts fetching the slot where `key` would be.
    #[inline(always)]
    pub(crate) fn prefetch(&self, key: i64) {
        if let Some(slot) = self.slots.get(self.slot(key)) {
            prefetch(slot);
        }
    }
}

/// A filter of a map's keys that says for sure when a key is not there: a blocked Bloom filter,
/// three bits of one 64-bit word per key, about a byte per key.
///
/// A join probing millions of keys of which few have a partner (TPC-H Q5 probes lineitem's 60M
/// order keys against 456K orders of one year) spent a third of its CPU reading slots of a 16 MiB
/// map, one cache and TLB miss each, to find them empty. The filter is a sixteenth of the map's
/// size, so it mostly stays in the core's cache, and turns away about 19 keys in 20 of those.
pub(crate) struct IntFilter {
    words: Vec<u64>,
}

impl IntFilter {
    /// Bytes of a filter for `keys` keys.
    pub(crate) fn bytes_for(keys: usize) -> usize {
        Self::words_for(keys) * 8
    }

    fn words_for(keys: usize) -> usize {
        keys.div_ceil(8).next_power_of_two()
    }

    /// A filter of `keys`, sized for `count` of them.
    pub(crate) fn new(count: usize, keys: impl Iterator<Item = i64>) -> IntFilter {
        let mut filter = IntFilter { words: vec![0; Self::words_for(count)] };
        for key in keys {
            let (word, bits) = filter.locate(key);
            filter.words[word] |= bits;
        }
        filter
    }

    /// The word and the bits of `key` (a mix of all its bits: keys are often sequential).
    #[inline(always)]
    fn locate(&self, key: i64) -> (usize, u64) {
        let mut z = key as u64;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let word = (z >> 32) as usize & (self.words.len() - 1);
        (word, 1 << (z & 63) | 1 << ((z >> 6) & 63) | 1 << ((z >> 12) & 63))
    }

    /// False when `key` is not among the filter's keys; true when it may be.
    #[inline(always)]
    pub(crate) fn may_contain(&self, key: i64) -> bool {
        let (word, bits) = self.locate(key);
        self.words[word] & bits == bits
    }
}

/// Asks the CPU to bring `value`'s cache line in (a hint: it never faults, and does nothing on
/// targets without the instruction).
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault; the pointer comes from
    // a reference.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_key_across_growth() {
        let mut map = IntMap::default();
        assert_eq!(map.get(1), ABSENT);
        assert_eq!(map.get_all(&[1, 2]), [ABSENT, ABSENT]);
        // Keys that collide in the low bits, extremes, negatives; each key set twice.
        let keys: Vec<i64> = (0..5000i64)
            .map(|i| i << 32)
            .chain([i64::MIN, i64::MAX, -1, 0x9E37_79B9_7F4A_7C15u64 as i64])
            .chain((1..3000).map(|i| -i * 7919))
            .collect();
        let mut value = 0u32;
        for pass in 0..2 {
            for chunk in keys.chunks(700) {
                map.reserve(map.room_for(chunk.len()));
                for &k in chunk {
                    let previous = map.insert(k, value);
                    assert_eq!(previous.is_some(), pass == 1, "key {k}");
                    value += 1;
                }
            }
        }
        assert_eq!(map.len, keys.len());
        assert!(map.len <= map.capacity());
        let n = keys.len() as u32;
        let found = map.get_all(&keys);
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(map.get(k), found[i]);
            assert_eq!(found[i], n + i as u32, "key {k}: the second value");
        }
        for absent in [1i64, 5001 << 32, i64::MIN + 1, 123_456_789] {
            assert_eq!(map.get(absent), ABSENT);
        }
        assert_eq!(map.growth_bytes(1), 0, "room left");
        assert_eq!(map.growth_bytes(map.capacity()), map.bytes() + IntMap::bytes_for(map.len + map.capacity()));
        let before = map.bytes();
        map.reserve(map.capacity());
        assert!(map.bytes() > before);
        assert!((0..keys.len()).all(|i| map.get(keys[i]) == n + i as u32));
    }

    #[test]
    fn the_filter_keeps_every_key_and_turns_most_others_away() {
        let mut map = IntMap::default();
        let keys: Vec<i64> = (0..100_000i64).map(|i| i * 3).chain([i64::MIN, i64::MAX, -7]).collect();
        map.reserve(keys.len());
        for (i, &k) in keys.iter().enumerate() {
            map.insert(k, i as u32);
        }
        let filter = IntFilter::new(map.len, map.keys());
        assert_eq!(filter.words.len() * 8, IntFilter::bytes_for(keys.len()));
        assert!(keys.iter().all(|&k| filter.may_contain(k)), "no key is ever turned away");
        // Absent keys: sequential ones between the present, and far away.
        let absent: Vec<i64> = (0..100_000i64).map(|i| i * 3 + 1).chain((0..100_000).map(|i| i << 40)).collect();
        let passed = absent.iter().filter(|&&k| filter.may_contain(k)).count();
        assert!(passed < absent.len() / 10, "{passed} of {} absent keys pass", absent.len());
        let probe: Vec<i64> = keys.iter().chain(&absent).copied().collect();
        assert_eq!(map.get_all_filtered(&probe, &filter), map.get_all(&probe));
    }

    #[test]
    fn matches_a_hash_map_when_full() {
        // Keys from a small range (many repeats) and a wide one, inserted until the map is at
        // its fullest before each growth; lookups of present and absent keys agree with std's.
        let mut map = IntMap::default();
        let mut reference = std::collections::HashMap::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = if i % 3 == 0 { (x % 50_000) as i64 } else { x as i64 };
            map.reserve(map.room_for(1));
            assert_eq!(map.insert(key, i), reference.insert(key, i), "key {key}");
            if i % 1000 == 0 {
                assert!(map.len <= map.capacity());
            }
        }
        assert_eq!(map.len, reference.len());
        let keys: Vec<i64> = reference.keys().copied().chain((0..1000).map(|k| -k - 1)).collect();
        let got = map.get_all(&keys);
        for (k, v) in keys.iter().zip(got) {
            assert_eq!(v, reference.get(k).copied().unwrap_or(ABSENT), "key {k}");
        }
    }
}
