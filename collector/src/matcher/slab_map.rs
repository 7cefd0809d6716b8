//! A hash map for tables that churn: entries live in a slab (a `Vec` whose
//! free slots are reused), and a hash table of 4-byte slot numbers finds
//! them.
//!
//! Why not `HashMap`: the collector's suspect and watch tables see every
//! entry inserted and removed within a few polls. hashbrown marks a removed
//! bucket as a tombstone, and once tombstones use up its spare room it
//! rehashes in place only while the table is at most half full; otherwise
//! it doubles. A table that churns therefore settles at 2 to 4 buckets per
//! live entry, and `HashMap` stores the whole entry (key and value, 100 to
//! 140 bytes here) in every bucket, used or not. Here a bucket is a 4-byte
//! slot number and a control byte; only the slab holds entries, one per
//! live entry plus what the slab's growth leaves spare (at most a quarter).
//!
//! A lookup reads the control bytes, the slot number and the slot: the
//! same two cache misses as a `HashMap` lookup in a table too large for the
//! caches, since the index is small enough to stay cached.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

/// No next free slot.
const NONE: u32 = u32::MAX;

/// The slab stops growing at this many slots (4-byte slot numbers).
pub const MAX_LEN: usize = (u32::MAX - 1) as usize;

/// Below this many slots the slab is never compacted.
const COMPACT_MIN_SLOTS: usize = 4096;

#[derive(Debug, Clone)]
enum Slot<K, V> {
    Full(K, V),
    /// A free slot and the next free one (or [`NONE`]).
    Free(u32),
}

/// A map whose entries sit in a slab; see the module documentation.
#[derive(Debug, Clone)]
pub struct SlabMap<K, V> {
    index: HashTable<u32>,
    slots: Vec<Slot<K, V>>,
    /// The first free slot, or [`NONE`].
    free: u32,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl<K, V> Default for SlabMap<K, V> {
    fn default() -> Self {
        SlabMap {
            index: HashTable::new(),
            slots: Vec::new(),
            free: NONE,
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// The key of an occupied slot (`None` for a free one).
fn key_of<K, V>(slot: &Slot<K, V>) -> Option<&K> {
    match slot {
        Slot::Full(k, _) => Some(k),
        Slot::Free(_) => None,
    }
}

impl<K: Hash + Eq, V> SlabMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes the map holds on the heap: the index's buckets and the slab's
    /// slots (what the values own on the heap is not counted).
    pub fn bytes(&self) -> usize {
        self.index.allocation_size() + self.slots.capacity() * std::mem::size_of::<Slot<K, V>>()
    }

    fn hash(&self, k: &K) -> u64 {
        self.hasher.hash_one(k)
    }

    fn find(&self, k: &K) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(self.hash(k), |&i| key_of(&slots[i as usize]) == Some(k))
            .map(|&i| i as usize)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.find(k).is_some()
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        match &self.slots[self.find(k)?] {
            Slot::Full(_, v) => Some(v),
            Slot::Free(_) => None,
        }
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.find(k)?;
        match &mut self.slots[i] {
            Slot::Full(_, v) => Some(v),
            Slot::Free(_) => None,
        }
    }

    #[cfg(test)] // the matcher has no use for it; the map's tests do
    /// Puts `v` under `k`; the value it replaced, if any.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        // `new` is taken only if `k` was absent.
        let mut new = Some(v);
        let (slot, _) = self.get_or_insert_with(k, || new.take().expect("taken once"));
        new.map(|v| std::mem::replace(slot, v))
    }

    /// The value under `k`, inserting `v` first if there is none.
    pub fn get_or_insert(&mut self, k: K, v: V) -> &mut V {
        self.get_or_insert_with(k, || v).0
    }

    /// The value under `k`, inserting `f()` first if there is none; and
    /// whether it did. One probe of the index either way.
    pub fn get_or_insert_with(&mut self, k: K, f: impl FnOnce() -> V) -> (&mut V, bool) {
        let (i, inserted) = self.entry(k, f);
        match &mut self.slots[i] {
            Slot::Full(_, v) => (v, inserted),
            Slot::Free(_) => unreachable!("slot {i} of a present key is free"),
        }
    }

    /// One probe of the index for `k`: its slot if present, else `f()` put
    /// in a new slot; and whether it was put.
    fn entry(&mut self, k: K, f: impl FnOnce() -> V) -> (usize, bool) {
        let hash = self.hash(&k);
        let slots = &self.slots;
        let hasher = &self.hasher;
        let entry = self.index.entry(
            hash,
            |&i| key_of(&slots[i as usize]) == Some(&k),
            |&j| key_of(&slots[j as usize]).map_or(0, |k| hasher.hash_one(k)),
        );
        let vacant = match entry {
            hashbrown::hash_table::Entry::Occupied(e) => return (*e.get() as usize, false),
            hashbrown::hash_table::Entry::Vacant(e) => e,
        };
        let v = f();
        let i = if self.free != NONE {
            let i = self.free as usize;
            if let Slot::Free(next) = self.slots[i] {
                self.free = next;
            }
            self.slots[i] = Slot::Full(k, v);
            i
        } else {
            assert!(self.slots.len() < MAX_LEN, "slab map full");
            if self.slots.len() == self.slots.capacity() {
                // Grow by a quarter, not double: a slab of a few hundred
                // thousand entries would otherwise leave half of itself
                // spare. Still amortised O(1).
                let more = (self.slots.len() / 4).max(16);
                self.slots.reserve_exact(more);
            }
            self.slots.push(Slot::Full(k, v));
            self.slots.len() - 1
        };
        vacant.insert(i as u32);
        self.len += 1;
        (i, true)
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let hash = self.hash(k);
        let slots = &self.slots;
        let entry = self
            .index
            .find_entry(hash, |&i| key_of(&slots[i as usize]) == Some(k))
            .ok()?;
        let (i, _) = entry.remove();
        let v = self.free_slot(i as usize);
        self.compact_if_sparse();
        v
    }

    /// Looks `k` up once: lets `f` see (and change) its value, and removes
    /// the entry if `f` says so. The removed value, if any.
    pub fn remove_if(&mut self, k: &K, f: impl FnOnce(&mut V) -> bool) -> Option<V> {
        let hash = self.hash(k);
        let slots = &mut self.slots;
        let entry = self
            .index
            .find_entry(hash, |&i| key_of(&slots[i as usize]) == Some(k))
            .ok()?;
        let i = *entry.get() as usize;
        let remove = match &mut slots[i] {
            Slot::Full(_, v) => f(v),
            Slot::Free(_) => false,
        };
        if !remove {
            return None;
        }
        entry.remove();
        let v = self.free_slot(i);
        self.compact_if_sparse();
        v
    }

    /// Empties slot `i` (already out of the index) onto the free list.
    fn free_slot(&mut self, i: usize) -> Option<V> {
        let old = std::mem::replace(&mut self.slots[i], Slot::Free(self.free));
        self.free = i as u32;
        self.len -= 1;
        match old {
            Slot::Full(_, v) => Some(v),
            Slot::Free(_) => None,
        }
    }

    #[cfg(test)] // the matcher has no use for it; the map's tests do
    /// Keeps the entries for which `f` is true.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        for i in 0..self.slots.len() {
            let hash = match &mut self.slots[i] {
                Slot::Full(k, v) => {
                    if f(k, v) {
                        continue;
                    }
                    self.hasher.hash_one(&*k)
                }
                Slot::Free(_) => continue,
            };
            if let Ok(entry) = self.index.find_entry(hash, |&j| j as usize == i) {
                entry.remove();
            }
            self.free_slot(i);
        }
        self.compact_if_sparse();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().filter_map(|s| match s {
            Slot::Full(k, v) => Some((k, v)),
            Slot::Free(_) => None,
        })
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.slots.iter_mut().filter_map(|s| match s {
            Slot::Full(k, v) => Some((&*k, v)),
            Slot::Free(_) => None,
        })
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// After a surge has passed (a quarter of a large slab in use), moves
    /// the entries into a slab and an index sized for what is left, so the
    /// memory a surge took is given back. O(len), at most once per len
    /// removals.
    fn compact_if_sparse(&mut self) {
        if self.slots.len() < COMPACT_MIN_SLOTS || self.len * 4 > self.slots.len() {
            return;
        }
        let mut slots = Vec::with_capacity(self.len + self.len / 4);
        slots.extend(
            std::mem::take(&mut self.slots)
                .into_iter()
                .filter(|s| matches!(s, Slot::Full(..))),
        );
        let mut index = HashTable::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            if let Some(k) = key_of(slot) {
                index.insert_unique(self.hasher.hash_one(k), i as u32, |_| {
                    unreachable!("sized for every entry")
                });
            }
        }
        self.slots = slots;
        self.index = index;
        self.free = NONE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// SplitMix64, for a reproducible sequence of operations.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }
    }

    fn same(m: &SlabMap<u64, String>, model: &HashMap<u64, String>) {
        assert_eq!(m.len(), model.len());
        let mut got: Vec<(u64, String)> = m.iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut want: Vec<(u64, String)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        for k in model.keys() {
            assert_eq!(m.get(k), model.get(k), "key {k}");
        }
    }

    #[test]
    fn behaves_as_a_hash_map_through_inserts_removes_and_retains() {
        let mut rng = Rng(7);
        let mut m = SlabMap::new();
        let mut model = HashMap::new();
        for step in 0..60_000u64 {
            // Keys from a small range, so operations hit present keys too.
            let k = rng.below(3_000);
            match rng.below(10) {
                0..=3 => assert_eq!(
                    m.insert(k, format!("v{step}")),
                    model.insert(k, format!("v{step}"))
                ),
                4..=6 => assert_eq!(m.remove(&k), model.remove(&k)),
                7 => {
                    let got = m.get_or_insert(k, format!("g{step}")).clone();
                    let want = model.entry(k).or_insert(format!("g{step}")).clone();
                    assert_eq!(got, want);
                }
                8 if step % 2 == 0 => {
                    // Removes values of even length, appends to the others.
                    let got = m.remove_if(&k, |v| {
                        v.push('+');
                        v.len() % 2 == 0
                    });
                    let want = match model.get_mut(&k) {
                        Some(v) => {
                            v.push('+');
                            if v.len() % 2 == 0 {
                                model.remove(&k)
                            } else {
                                None
                            }
                        }
                        None => None,
                    };
                    assert_eq!(got, want);
                }
                8 => {
                    if let Some(v) = m.get_mut(&k) {
                        v.push('!');
                    }
                    if let Some(v) = model.get_mut(&k) {
                        v.push('!');
                    }
                }
                _ => {
                    if step % 97 == 0 {
                        let cut = rng.below(3_000);
                        m.retain(|k, _| *k < cut);
                        model.retain(|k, _| *k < cut);
                    }
                }
            }
            assert_eq!(m.contains_key(&k), model.contains_key(&k));
            if step % 1_000 == 0 {
                same(&m, &model);
            }
        }
        same(&m, &model);
    }

    #[test]
    fn freed_slots_are_reused_so_churn_does_not_grow_the_slab() {
        let mut m = SlabMap::new();
        for k in 0..1_000u64 {
            m.insert(k, k);
        }
        let slots = m.slots.len();
        // Each round replaces every entry by a new key, as suspects churn.
        for round in 1..50u64 {
            for k in 0..1_000u64 {
                m.remove(&(k + (round - 1) * 1_000));
                m.insert(k + round * 1_000, k);
            }
        }
        assert_eq!(m.len(), 1_000);
        assert_eq!(m.slots.len(), slots, "the slab grew under churn");
        assert_eq!(m.get(&(49 * 1_000 + 5)), Some(&5));
        assert_eq!(m.get(&5), None);
    }

    #[test]
    fn churn_costs_far_less_than_a_hash_map_of_the_same_entries() {
        // 20,000 live entries of 136 bytes, replaced in waves, as the
        // collector's suspects are.
        type Big = [u64; 15];
        let mut m: SlabMap<u64, Big> = SlabMap::new();
        let mut h: HashMap<u64, Big> = HashMap::new();
        for k in 0..20_000u64 {
            m.insert(k, [k; 15]);
            h.insert(k, [k; 15]);
        }
        for k in 20_000..200_000u64 {
            m.remove(&(k - 20_000));
            h.remove(&(k - 20_000));
            m.insert(k, [k; 15]);
            h.insert(k, [k; 15]);
        }
        let entry = std::mem::size_of::<(u64, Big)>();
        let map_bytes = h.capacity().div_ceil(7) * 8 * (entry + 1);
        let per_entry = m.bytes() / m.len();
        assert!(
            per_entry < entry * 3 / 2,
            "{per_entry} B per entry of {entry} B"
        );
        assert!(
            m.bytes() * 2 < map_bytes,
            "slab map {} B, HashMap {map_bytes} B",
            m.bytes()
        );
    }

    #[test]
    fn a_surge_that_passes_gives_its_memory_back() {
        let mut m = SlabMap::new();
        for k in 0..100_000u64 {
            m.insert(k, k);
        }
        let surge = m.bytes();
        m.retain(|k, _| k % 10 == 0);
        assert_eq!(m.len(), 10_000);
        assert!(m.bytes() * 4 < surge, "{} B of {surge} B kept", m.bytes());
        for k in (0..100_000u64).step_by(10) {
            assert_eq!(m.get(&k), Some(&k));
        }
        // Removing one by one compacts too.
        for k in 0..10_000u64 {
            m.insert(1_000_000 + k, k);
        }
        let before = m.bytes();
        for k in 0..10_000u64 {
            assert_eq!(m.remove(&(1_000_000 + k)), Some(k));
        }
        m.retain(|k, _| k % 20 == 0);
        assert_eq!(m.len(), 5_000);
        assert!(m.bytes() < before, "{} B of {before} B kept", m.bytes());
        assert_eq!(m.get(&20), Some(&20));
        assert_eq!(m.get(&10), None);
    }
}
