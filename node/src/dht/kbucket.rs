//! The routing table: k-buckets with liveness and replacement caches.
//!
//! Bucket `i` holds peers whose XOR distance to the local key has its highest set bit at `i`.
//! Within a bucket, entries are ordered least recently seen first (Kademlia's rule: old, live
//! peers are the most likely to stay). A full bucket does not evict a live entry for a new
//! peer; the newcomer waits in the bucket's replacement cache, and the caller is told to ping
//! the oldest entry if it has not been heard from for a while. A peer that fails requests is
//! removed, and the most recently seen replacement takes its place.
//!
//! Pure data structure: no I/O, time comes in as `now`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::id::{Distance, Key, PeerId};
use crate::wire::Contact;

/// One routing-table entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The peer and its address.
    pub contact: Contact,
    /// The peer's DHT key (cached: SHA-256 of the id).
    pub key: Key,
    /// When the peer was last heard from.
    pub last_seen: Instant,
    /// Consecutive failed requests.
    pub failures: u8,
}

#[derive(Clone, Debug, Default)]
struct Bucket {
    /// Least recently seen first.
    entries: Vec<Entry>,
    /// Most recently seen last.
    replacements: VecDeque<Contact>,
}

/// What [`KBucketTable::insert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The peer is new and was added.
    Inserted,
    /// The peer was known; it moved to the tail and its address was refreshed.
    Updated,
    /// The bucket is full: the peer went to the replacement cache. `stale` is the oldest
    /// entry when it has not been heard from within the staleness period — ping it.
    Full {
        /// The least recently seen entry, if it is due for a liveness check.
        stale: Option<Contact>,
    },
    /// The peer is the local node itself.
    IsSelf,
}

/// A Kademlia routing table.
#[derive(Clone, Debug)]
pub struct KBucketTable {
    local: Key,
    k: usize,
    replacement_cap: usize,
    stale_after: Duration,
    buckets: BTreeMap<u8, Bucket>,
    len: usize,
}

impl KBucketTable {
    /// An empty table around `local`, with buckets of `k` entries and replacement caches of
    /// `replacement_cap`; entries unseen for `stale_after` are offered for a liveness check.
    pub fn new(local: Key, k: usize, replacement_cap: usize, stale_after: Duration) -> Self {
        Self {
            local,
            k: k.max(1),
            replacement_cap,
            stale_after,
            buckets: BTreeMap::new(),
            len: 0,
        }
    }

    /// The local key.
    pub fn local_key(&self) -> &Key {
        &self.local
    }

    /// Number of entries (not counting replacement caches).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bucket_of(&self, key: &Key) -> Option<u8> {
        self.local.distance(key).bucket().map(|b| b as u8)
    }

    /// Adds or refreshes a peer that was just heard from.
    pub fn insert(&mut self, contact: Contact, now: Instant) -> InsertOutcome {
        let key = contact.peer.key();
        let Some(b) = self.bucket_of(&key) else {
            return InsertOutcome::IsSelf;
        };
        let (k, cap, stale_after) = (self.k, self.replacement_cap, self.stale_after);
        let bucket = self.buckets.entry(b).or_default();
        if let Some(pos) = bucket
            .entries
            .iter()
            .position(|e| e.contact.peer == contact.peer)
        {
            let mut e = bucket.entries.remove(pos);
            e.contact = contact;
            e.last_seen = now;
            e.failures = 0;
            bucket.entries.push(e);
            return InsertOutcome::Updated;
        }
        if bucket.entries.len() < k {
            bucket.replacements.retain(|c| c.peer != contact.peer);
            bucket.entries.push(Entry {
                contact,
                key,
                last_seen: now,
                failures: 0,
            });
            self.len += 1;
            return InsertOutcome::Inserted;
        }
        bucket.replacements.retain(|c| c.peer != contact.peer);
        if cap > 0 {
            if bucket.replacements.len() >= cap {
                bucket.replacements.pop_front();
            }
            bucket.replacements.push_back(contact);
        }
        let stale = bucket
            .entries
            .first()
            .filter(|e| now.saturating_duration_since(e.last_seen) >= stale_after)
            .map(|e| e.contact.clone());
        InsertOutcome::Full { stale }
    }

    /// Records a failed request to `peer`. The peer is removed once it has failed
    /// `max_failures` times in a row, or at once when a replacement is waiting. Returns
    /// whether it was removed.
    pub fn on_failure(&mut self, peer: &PeerId, max_failures: u8) -> bool {
        let key = peer.key();
        let Some(b) = self.bucket_of(&key) else {
            return false;
        };
        let Some(bucket) = self.buckets.get_mut(&b) else {
            return false;
        };
        let Some(pos) = bucket.entries.iter().position(|e| e.contact.peer == *peer) else {
            bucket.replacements.retain(|c| c.peer != *peer);
            return false;
        };
        let e = &mut bucket.entries[pos];
        e.failures = e.failures.saturating_add(1);
        if e.failures < max_failures && bucket.replacements.is_empty() {
            return false;
        }
        let removed = bucket.entries.remove(pos);
        self.len -= 1;
        if let Some(r) = bucket.replacements.pop_back() {
            let key = r.peer.key();
            // The replacement's own last-seen time was not kept; it enters as an
            // entry dated like the one it replaces, at the head, so it is checked first.
            bucket.entries.insert(
                0,
                Entry {
                    contact: r,
                    key,
                    last_seen: removed.last_seen,
                    failures: 0,
                },
            );
            self.len += 1;
        }
        true
    }

    /// Removes `peer` outright (it told us it is leaving, or it misbehaved).
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        let key = peer.key();
        let Some(b) = self.bucket_of(&key) else {
            return false;
        };
        let Some(bucket) = self.buckets.get_mut(&b) else {
            return false;
        };
        let before = bucket.entries.len();
        bucket.entries.retain(|e| e.contact.peer != *peer);
        bucket.replacements.retain(|c| c.peer != *peer);
        let removed = before != bucket.entries.len();
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Whether `peer` is in the table.
    pub fn contains(&self, peer: &PeerId) -> bool {
        let key = peer.key();
        self.bucket_of(&key)
            .and_then(|b| self.buckets.get(&b))
            .is_some_and(|bk| bk.entries.iter().any(|e| e.contact.peer == *peer))
    }

    /// The `n` entries closest to `target`, closest first.
    pub fn closest(&self, target: &Key, n: usize) -> Vec<Contact> {
        let mut all: Vec<(Distance, &Entry)> =
            self.iter().map(|e| (e.key.distance(target), e)).collect();
        if all.len() > n {
            all.select_nth_unstable_by(n, |a, b| a.0.cmp(&b.0));
            all.truncate(n);
        }
        all.sort_unstable_by_key(|a| a.0);
        all.into_iter().map(|(_, e)| e.contact.clone()).collect()
    }

    /// Every entry, bucket by bucket (nearest bucket first), oldest first within a bucket.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.values().flat_map(|b| b.entries.iter())
    }

    /// Indices of the non-empty buckets, nearest first.
    pub fn bucket_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.buckets
            .iter()
            .filter(|(_, b)| !b.entries.is_empty())
            .map(|(i, _)| *i as usize)
    }

    /// Number of entries in bucket `i`.
    pub fn bucket_len(&self, i: usize) -> usize {
        u8::try_from(i)
            .ok()
            .and_then(|i| self.buckets.get(&i))
            .map_or(0, |b| b.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Addr;
    use proptest::prelude::*;

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn contact(bytes: [u8; 32]) -> Contact {
        Contact {
            peer: PeerId::from_bytes(bytes),
            addr: Addr::new("a"),
        }
    }

    proptest! {
        #[test]
        fn buckets_hold_at_most_k_and_only_their_own_distance(
            local in any::<[u8; 32]>(),
            peers in proptest::collection::vec(any::<[u8; 32]>(), 0..300),
            k in 1usize..25,
        ) {
            let now = t0();
            let mut t = KBucketTable::new(Key(local), k, 5, Duration::from_secs(60));
            for p in &peers {
                t.insert(contact(*p), now);
            }
            let mut count = 0;
            for i in t.bucket_indices().collect::<Vec<_>>() {
                prop_assert!(t.bucket_len(i) <= k);
                count += t.bucket_len(i);
            }
            prop_assert_eq!(count, t.len());
            for e in t.iter() {
                let b = t.local_key().distance(&e.key).bucket();
                prop_assert!(b.is_some());
            }
            let mut uniq = peers.clone();
            uniq.sort();
            uniq.dedup();
            prop_assert!(t.len() <= uniq.len());
        }

        #[test]
        fn closest_is_sorted_and_is_the_true_closest(
            local in any::<[u8; 32]>(),
            peers in proptest::collection::vec(any::<[u8; 32]>(), 0..100),
            target in any::<[u8; 32]>(),
            n in 1usize..30,
        ) {
            let now = t0();
            // k large enough that nothing is dropped: closest() must then be exact.
            let mut t = KBucketTable::new(Key(local), 1000, 0, Duration::from_secs(60));
            for p in &peers {
                t.insert(contact(*p), now);
            }
            let target = Key(target);
            let got = t.closest(&target, n);
            let mut want: Vec<_> = t.iter().map(|e| (e.key.distance(&target), e.contact.peer)).collect();
            want.sort();
            want.truncate(n);
            prop_assert_eq!(got.iter().map(|c| c.peer).collect::<Vec<_>>(), want.into_iter().map(|(_, p)| p).collect::<Vec<_>>());
        }

        #[test]
        fn recently_seen_move_to_the_tail(
            local in any::<[u8; 32]>(),
            peers in proptest::collection::vec(any::<[u8; 32]>(), 2..50),
        ) {
            let start = t0();
            let mut t = KBucketTable::new(Key(local), 1000, 0, Duration::from_secs(60));
            for (i, p) in peers.iter().enumerate() {
                t.insert(contact(*p), start + Duration::from_secs(i as u64));
            }
            // Touch the first peer again: within its bucket it must now be last.
            let first = PeerId::from_bytes(peers[0]);
            t.insert(contact(peers[0]), start + Duration::from_secs(1000));
            for b in t.bucket_indices().collect::<Vec<_>>() {
                let entries: Vec<_> = t.buckets[&(b as u8)].entries.iter().collect();
                for w in entries.windows(2) {
                    prop_assert!(w[0].last_seen <= w[1].last_seen);
                }
                if entries.iter().any(|e| e.contact.peer == first) {
                    prop_assert_eq!(entries.last().map(|e| e.contact.peer), Some(first));
                }
            }
        }
    }

    #[test]
    fn full_bucket_caches_newcomers_and_promotes_them_on_failure() {
        let now = t0();
        let local = Key([0; 32]);
        let mut t = KBucketTable::new(local, 2, 2, Duration::from_secs(60));
        // Find three peers in the same bucket.
        let mut same: Vec<[u8; 32]> = Vec::new();
        let mut i = 0u32;
        while same.len() < 3 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            i += 1;
            let key = PeerId::from_bytes(b).key();
            if local.distance(&key).bucket() == Some(255) {
                same.push(b);
            }
        }
        assert_eq!(t.insert(contact(same[0]), now), InsertOutcome::Inserted);
        assert_eq!(t.insert(contact(same[1]), now), InsertOutcome::Inserted);
        assert_eq!(
            t.insert(contact(same[2]), now),
            InsertOutcome::Full { stale: None }
        );
        let later = now + Duration::from_secs(61);
        assert_eq!(
            t.insert(contact(same[2]), later),
            InsertOutcome::Full {
                stale: Some(contact(same[0]))
            }
        );
        assert!(!t.contains(&PeerId::from_bytes(same[2])));
        // A failure with a replacement waiting evicts at once.
        assert!(t.on_failure(&PeerId::from_bytes(same[0]), 3));
        assert!(t.contains(&PeerId::from_bytes(same[2])));
        assert!(!t.contains(&PeerId::from_bytes(same[0])));
        assert_eq!(t.len(), 2);
        // Without replacements it takes max_failures.
        assert!(!t.on_failure(&PeerId::from_bytes(same[1]), 2));
        assert!(t.on_failure(&PeerId::from_bytes(same[1]), 2));
        assert_eq!(t.len(), 1);
    }
}
