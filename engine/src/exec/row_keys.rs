//! Row-format keys stored once each, found by their bytes: an aggregation's groups, and the
//! keys of a join that did not pack into an integer.

use hashbrown::HashTable;

/// Keys in row format, concatenated, found through a table of their numbers (an aggregation's
/// groups, a join's distinct keys). Every number has an entry in `offsets`; in an aggregation's
/// packed index, the groups whose keys packed have empty ones. Hashes come from the caller.
#[derive(Default)]
pub(crate) struct RowKeys {
    pub(crate) table: HashTable<u32>,
    pub(crate) data: Vec<u8>,
    pub(crate) offsets: Vec<usize>,
    /// Each key's hash (0 for a number not in the table): growing the table rehashes none.
    pub(crate) hashes: Vec<u64>,
}

impl RowKeys {
    pub(crate) fn new() -> RowKeys {
        RowKeys { offsets: vec![0], ..RowKeys::default() }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.data.capacity()
            + self.offsets.capacity() * 8
            + self.hashes.capacity() * 8
            + super::hash_table_bytes(self.table.capacity(), 4)
    }

    pub(crate) fn key(&self, g: usize) -> &[u8] {
        &self.data[self.offsets[g]..self.offsets[g + 1]]
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        let hashes = &self.hashes;
        self.table.reserve(additional, |&g| hashes[g as usize]);
        self.offsets.reserve_exact(additional);
        self.hashes.reserve_exact(additional);
    }

    pub(crate) fn clear(&mut self) {
        self.table.clear();
        self.data.clear();
        self.offsets.clear();
        self.offsets.push(0);
        self.hashes.clear();
    }

    /// The group of `key`, whose hash is `h`.
    pub(crate) fn find(&self, key: &[u8], h: u64) -> Option<usize> {
        self.table.find(h, |&g| self.key(g as usize) == key).map(|&g| g as usize)
    }

    /// Adds group `g` (the next one) with `key` (and its hash) in the table, or only its (empty)
    /// entry.
    pub(crate) fn push(&mut self, key: Option<(&[u8], u64)>, g: u32) {
        let Some((key, h)) = key else {
            self.offsets.push(self.data.len());
            self.hashes.push(0);
            return;
        };
        self.data.extend_from_slice(key);
        self.offsets.push(self.data.len());
        self.hashes.push(h);
        let hashes = &self.hashes;
        self.table.insert_unique(h, g, |&x| hashes[x as usize]);
    }
}
