//! A bounded table with a fair share per neighbour, for what a service holds between frames
//! of a relayed request (pending handshakes, sessions waiting for the answer).
//!
//! Whoever sends handshakes can fill a plain first-in-first-out table and push out everyone
//! else's. Here each entry is charged to the neighbour it arrived from (the last hop, which
//! the transport authenticates: the ids further back are only what relays claim), and one
//! neighbour holds at most `per_neighbour` entries: a flood through one neighbour evicts that
//! neighbour's own oldest entries. When the table as a whole is full, the neighbour that holds
//! the most entries gives up its oldest.

use std::collections::BTreeMap;

use crate::id::PeerId;

/// The table. Keys are unique; inserting a key again replaces its entry.
#[derive(Debug)]
pub struct FairTable<K: Ord + Copy, V> {
    cap: usize,
    per_neighbour: usize,
    next: u64,
    entries: BTreeMap<K, (V, PeerId, u64)>,
    /// Insertion order: seq → key.
    order: BTreeMap<u64, K>,
    /// Neighbour → its entries' seqs, oldest first.
    by_neighbour: BTreeMap<PeerId, BTreeMap<u64, K>>,
    evicted: u64,
}

impl<K: Ord + Copy, V> FairTable<K, V> {
    /// At most `cap` entries, `per_neighbour` of them from one neighbour (both at least 1).
    pub fn new(cap: usize, per_neighbour: usize) -> Self {
        Self {
            cap: cap.max(1),
            per_neighbour: per_neighbour.clamp(1, cap.max(1)),
            next: 0,
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            by_neighbour: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries pushed out to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Adds `value` under `key`, charged to `neighbour`; evicts to stay within the bounds.
    pub fn insert(&mut self, key: K, value: V, neighbour: PeerId) {
        self.remove(&key);
        let own = self.by_neighbour.get(&neighbour).map_or(0, BTreeMap::len);
        if own >= self.per_neighbour {
            if let Some(oldest) = self
                .by_neighbour
                .get(&neighbour)
                .and_then(|m| m.values().next().copied())
            {
                self.remove(&oldest);
                self.evicted += 1;
            }
        } else if self.entries.len() >= self.cap
            && let Some(oldest) = self
                .by_neighbour
                .values()
                .max_by_key(|m| m.len())
                .and_then(|m| m.values().next().copied())
        {
            // Full: the neighbour holding the most gives up its oldest (new ids are free, so
            // many "neighbours" may be one flooder; the one with the most pays first).
            self.remove(&oldest);
            self.evicted += 1;
        }
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, key);
        self.by_neighbour
            .entry(neighbour)
            .or_default()
            .insert(seq, key);
        self.entries.insert(key, (value, neighbour, seq));
    }

    /// The entry under `key`.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(v, _, _)| v)
    }

    /// Takes the entry under `key` out.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (v, neighbour, seq) = self.entries.remove(key)?;
        self.order.remove(&seq);
        if let Some(m) = self.by_neighbour.get_mut(&neighbour) {
            m.remove(&seq);
            if m.is_empty() {
                self.by_neighbour.remove(&neighbour);
            }
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8) -> PeerId {
        PeerId::from_bytes([i; 32])
    }

    fn minted(n: u64) -> PeerId {
        let mut b = [0xee; 32];
        b[..8].copy_from_slice(&n.to_be_bytes());
        PeerId::from_bytes(b)
    }

    #[test]
    fn a_flood_through_one_neighbour_evicts_only_its_own_entries() {
        let mut t: FairTable<u64, ()> = FairTable::new(100, 10);
        // Five honest neighbours with three pending entries each.
        for n in 0..5u8 {
            for j in 0..3u64 {
                t.insert(u64::from(n) * 1000 + j, (), peer(n));
            }
        }
        // A flood of 10,000 through neighbour 9.
        for j in 0..10_000u64 {
            t.insert(1_000_000 + j, (), peer(9));
        }
        for n in 0..5u8 {
            for j in 0..3u64 {
                assert!(t.get_mut(&(u64::from(n) * 1000 + j)).is_some());
            }
        }
        assert_eq!(t.len(), 15 + 10);
        assert_eq!(t.evicted(), 10_000 - 10);
        // Undefended (first in, first out, as the router's table was), the same flood empties
        // it of everyone else.
        let mut fifo: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
        let mut push = |k: u64| {
            if fifo.len() >= 100 {
                fifo.pop_front();
            }
            fifo.push_back(k);
        };
        for n in 0..5u64 {
            for j in 0..3u64 {
                push(n * 1000 + j);
            }
        }
        for j in 0..10_000u64 {
            push(1_000_000 + j);
        }
        assert!(fifo.iter().all(|&k| k >= 1_000_000));
    }

    #[test]
    fn many_flooding_neighbours_cannot_push_out_a_quiet_one() {
        // 200 minted "neighbours" with 64 entries each against one honest entry: when the table
        // is full, the neighbour holding the most pays.
        let mut t: FairTable<u64, ()> = FairTable::new(1024, 64);
        t.insert(7, (), peer(1));
        for n in 0..200u64 {
            for j in 0..64u64 {
                t.insert(10_000 + n * 100 + j, (), minted(n));
            }
        }
        assert!(t.get_mut(&7).is_some());
        assert!(t.len() <= 1024);
    }

    #[test]
    fn the_table_stays_within_its_bound_and_removes_cleanly() {
        let mut t: FairTable<u64, u64> = FairTable::new(8, 3);
        for i in 0..100u64 {
            t.insert(i, i, peer((i % 7) as u8));
            assert!(t.len() <= 8);
        }
        let keys: Vec<u64> = (0..100).filter(|k| t.get_mut(k).is_some()).collect();
        for k in &keys {
            assert_eq!(t.remove(k), Some(*k));
        }
        assert!(t.is_empty());
        assert!(t.by_neighbour.is_empty() && t.order.is_empty());
    }
}
