//! The routing table: k-buckets with liveness and replacement caches.
//!
//! Bucket `i` holds peers whose XOR distance to the local key has its highest set bit at `i`.
//! Within a bucket, entries are ordered least recently seen first (Kademlia's rule: old, live
//! peers are the most likely to stay). A full bucket does not evict a live entry for a new
//! peer; the newcomer waits in the bucket's replacement cache, and the caller is told to ping
//! the oldest entry if it has not been heard from for a while. A peer that fails
//! `max_failures` requests in a row is removed, and the most recently seen replacement takes
//! its place. One timeout is never enough, even with a replacement waiting: a lost datagram
//! must not hand an honest peer's place to whoever filled the replacement cache (an attacker
//! fills it cheaply).
//!
//! Sybils are cheap on one network and dear on many, so a table takes at most
//! [`SubnetLimits::per_bucket`] peers of one /24 (IPv6: /48) into a bucket and
//! [`SubnetLimits::per_table`] into the whole table (S/Kademlia's and BitTorrent's defence);
//! a peer over a limit is refused, its network's peers already in keep their places.
//!
//! Pure data structure: no I/O, time comes in as `now`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::id::{Distance, Key, PeerId};
use crate::record::Subnet;
use crate::wire::Contact;

/// How many peers of one network a table takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubnetLimits {
    /// Most peers of one network in one bucket (0: no limit).
    pub per_bucket: usize,
    /// Most peers of one network in the whole table (0: no limit).
    pub per_table: usize,
    /// Whether loopback and private addresses are limited too (off: a LAN, or a test on one
    /// machine, is many peers on one network; the simulator turns it on, its 10/8 standing
    /// in for the Internet).
    pub limit_private: bool,
}

impl Default for SubnetLimits {
    fn default() -> Self {
        Self {
            per_bucket: 2,
            per_table: 8,
            limit_private: false,
        }
    }
}

impl SubnetLimits {
    /// No limits.
    pub const NONE: SubnetLimits = SubnetLimits {
        per_bucket: 0,
        per_table: 0,
        limit_private: false,
    };
}

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
    /// The network its address is in, when limited.
    subnet: Option<Subnet>,
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
    /// Its network already has as many peers in the bucket or the table as allowed.
    SubnetFull,
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
    limits: SubnetLimits,
    /// Entries per limited network.
    per_subnet: BTreeMap<Subnet, usize>,
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
            limits: SubnetLimits::NONE,
            per_subnet: BTreeMap::new(),
        }
    }

    /// The same table, limiting the peers of one network as `limits` says.
    pub fn with_subnet_limits(mut self, limits: SubnetLimits) -> Self {
        self.limits = limits;
        self
    }

    fn subnet_of(&self, contact: &Contact) -> Option<Subnet> {
        if self.limits.per_bucket == 0 && self.limits.per_table == 0 {
            return None;
        }
        contact.addr.subnet(self.limits.limit_private)
    }

    /// Whether one more peer of `subnet` fits in bucket `b` and the table.
    fn subnet_fits(&self, b: u8, subnet: Option<Subnet>) -> bool {
        let Some(net) = subnet else { return true };
        let in_table = self.per_subnet.get(&net).copied().unwrap_or(0);
        if self.limits.per_table > 0 && in_table >= self.limits.per_table {
            return false;
        }
        let in_bucket = self.buckets.get(&b).map_or(0, |bk| {
            bk.entries.iter().filter(|e| e.subnet == Some(net)).count()
        });
        self.limits.per_bucket == 0 || in_bucket < self.limits.per_bucket
    }

    fn count(&mut self, subnet: Option<Subnet>, up: bool) {
        let Some(net) = subnet else { return };
        let c = self.per_subnet.entry(net).or_insert(0);
        if up {
            *c += 1;
        } else {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.per_subnet.remove(&net);
            }
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

    /// Empties the table and its replacement caches (`beam network reset`).
    pub fn clear(&mut self) {
        self.buckets.clear();
        self.per_subnet.clear();
        self.len = 0;
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
        let subnet = self.subnet_of(&contact);
        let (k, cap, stale_after) = (self.k, self.replacement_cap, self.stale_after);
        let known = self.buckets.get(&b).and_then(|bk| {
            bk.entries
                .iter()
                .position(|e| e.contact.peer == contact.peer)
        });
        if let Some(pos) = known {
            let old = self
                .buckets
                .get(&b)
                .and_then(|bk| bk.entries.get(pos))
                .and_then(|e| e.subnet);
            if old != subnet {
                // Moved to another network: it must fit there like a newcomer.
                self.count(old, false);
                if !self.subnet_fits(b, subnet) {
                    self.count(old, true);
                    return InsertOutcome::SubnetFull;
                }
                self.count(subnet, true);
            }
            let bucket = self.buckets.entry(b).or_default();
            let mut e = bucket.entries.remove(pos);
            e.contact = contact;
            e.subnet = subnet;
            e.last_seen = now;
            e.failures = 0;
            bucket.entries.push(e);
            return InsertOutcome::Updated;
        }
        if !self.subnet_fits(b, subnet) {
            return InsertOutcome::SubnetFull;
        }
        let bucket = self.buckets.entry(b).or_default();
        if bucket.entries.len() < k {
            bucket.replacements.retain(|c| c.peer != contact.peer);
            bucket.entries.push(Entry {
                contact,
                key,
                last_seen: now,
                failures: 0,
                subnet,
            });
            self.len += 1;
            self.count(subnet, true);
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
    /// `max_failures` times in a row (at least twice, whatever `max_failures` says). Returns
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
        if e.failures < max_failures.max(2) {
            return false;
        }
        let removed = bucket.entries.remove(pos);
        self.len -= 1;
        self.count(removed.subnet, false);
        // The most recently seen replacement whose network still fits.
        while let Some(r) = self
            .buckets
            .get_mut(&b)
            .and_then(|bk| bk.replacements.pop_back())
        {
            let subnet = self.subnet_of(&r);
            if !self.subnet_fits(b, subnet) {
                continue;
            }
            let key = r.peer.key();
            // The replacement's own last-seen time was not kept; it enters as an
            // entry dated like the one it replaces, at the head, so it is checked first.
            if let Some(bucket) = self.buckets.get_mut(&b) {
                bucket.entries.insert(
                    0,
                    Entry {
                        contact: r,
                        key,
                        last_seen: removed.last_seen,
                        failures: 0,
                        subnet,
                    },
                );
                self.len += 1;
                self.count(subnet, true);
            }
            break;
        }
        true
    }

    /// Each non-empty bucket's entries (least recently seen first) and replacement cache.
    pub fn buckets(&self) -> impl Iterator<Item = (&[Entry], &VecDeque<Contact>)> {
        self.buckets
            .values()
            .map(|b| (b.entries.as_slice(), &b.replacements))
    }

    /// Proximity neighbour selection: the replacement `incoming` (in the replacement cache
    /// of `outgoing`'s bucket) takes the entry `outgoing`'s place, seen `now`; `outgoing`
    /// goes to the replacement cache. Nothing changes, and `false` comes back, when either is
    /// not where it should be or `incoming`'s network is full in the table.
    pub fn swap(&mut self, outgoing: &PeerId, incoming: &PeerId, now: Instant) -> bool {
        let Some(b) = self.bucket_of(&outgoing.key()) else {
            return false;
        };
        if self.bucket_of(&incoming.key()) != Some(b) {
            return false;
        }
        let Some(bucket) = self.buckets.get(&b) else {
            return false;
        };
        let (Some(pos), Some(rpos)) = (
            bucket
                .entries
                .iter()
                .position(|e| e.contact.peer == *outgoing),
            bucket.replacements.iter().position(|c| c.peer == *incoming),
        ) else {
            return false;
        };
        let (old_subnet, new_contact) = (
            bucket.entries[pos].subnet,
            bucket.replacements[rpos].clone(),
        );
        let subnet = self.subnet_of(&new_contact);
        // Of the same network, the counts do not change; of another, it must fit as a newcomer
        // (the outgoing entry is not of that network, so it is not counted there).
        if old_subnet != subnet {
            self.count(old_subnet, false);
            if !self.subnet_fits(b, subnet) {
                self.count(old_subnet, true);
                return false;
            }
            self.count(subnet, true);
        }
        let Some(bucket) = self.buckets.get_mut(&b) else {
            return false;
        };
        let out = bucket.entries.remove(pos);
        bucket.replacements.remove(rpos);
        bucket.replacements.push_back(out.contact);
        bucket.entries.push(Entry {
            key: new_contact.peer.key(),
            contact: new_contact,
            last_seen: now,
            failures: 0,
            subnet,
        });
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
        bucket.replacements.retain(|c| c.peer != *peer);
        let Some(pos) = bucket.entries.iter().position(|e| e.contact.peer == *peer) else {
            return false;
        };
        let e = bucket.entries.remove(pos);
        self.len -= 1;
        self.count(e.subnet, false);
        true
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
        // One failure never evicts, even with a replacement waiting; max_failures do, and the
        // replacement takes the place.
        assert!(!t.on_failure(&PeerId::from_bytes(same[0]), 2));
        assert!(t.contains(&PeerId::from_bytes(same[0])));
        assert!(t.on_failure(&PeerId::from_bytes(same[0]), 2));
        assert!(t.contains(&PeerId::from_bytes(same[2])));
        assert!(!t.contains(&PeerId::from_bytes(same[0])));
        assert_eq!(t.len(), 2);
        // Without replacements it takes max_failures.
        assert!(!t.on_failure(&PeerId::from_bytes(same[1]), 2));
        assert!(t.on_failure(&PeerId::from_bytes(same[1]), 2));
        assert_eq!(t.len(), 1);
    }

    /// A contact with id `i` (big-endian in the first bytes, so ids spread over buckets) at
    /// address `addr`.
    fn at(i: u32, addr: &str) -> Contact {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        Contact {
            peer: PeerId::from_bytes(b),
            addr: Addr::new(addr),
        }
    }

    #[test]
    fn one_network_gets_a_bounded_share_of_the_table() {
        let now = t0();
        let limits = SubnetLimits {
            per_bucket: 2,
            per_table: 3,
            limit_private: false,
        };
        let mut t = KBucketTable::new(Key([0; 32]), 20, 20, Duration::from_secs(60))
            .with_subnet_limits(limits);
        let mut open = KBucketTable::new(Key([0; 32]), 20, 20, Duration::from_secs(60));
        // 200 Sybils on one /24 against 20 honest peers on networks of their own.
        let mut sybils_in = 0;
        for i in 0..200u32 {
            let c = at(i, &format!("203.0.113.{}:4001", i % 250 + 1));
            open.insert(c.clone(), now);
            if t.insert(c, now) == InsertOutcome::Inserted {
                sybils_in += 1;
            }
        }
        for i in 0..20u32 {
            let c = at(1000 + i, &format!("198.{}.7.1:4001", 10 + i));
            open.insert(c.clone(), now);
            assert_ne!(t.insert(c, now), InsertOutcome::SubnetFull);
        }
        assert_eq!(sybils_in, 3, "the /24's share of the whole table");
        let sybil_share = |t: &KBucketTable| {
            let n = t
                .iter()
                .filter(|e| e.contact.addr.as_str().starts_with("203."))
                .count();
            n as f64 / t.len() as f64
        };
        // Undefended, the Sybils hold most of the table.
        assert!(sybil_share(&open) > 0.5, "{}", sybil_share(&open));
        assert!(sybil_share(&t) < 0.2, "{}", sybil_share(&t));
        // Loopback is not limited by default (many peers of a test on one machine).
        let mut local = KBucketTable::new(Key([0; 32]), 20, 20, Duration::from_secs(60))
            .with_subnet_limits(SubnetLimits::default());
        for i in 0..30u32 {
            local.insert(at(i, &format!("127.0.0.1:{}", 4000 + i)), now);
        }
        assert!(local.len() > 8);
        // Removing a Sybil frees its network's place.
        let first = t
            .iter()
            .find(|e| e.contact.addr.as_str().starts_with("203."))
            .map(|e| e.contact.peer)
            .expect("a sybil");
        assert!(t.remove(&first));
        assert_eq!(
            t.insert(at(500, "203.0.113.9:1"), now),
            InsertOutcome::Inserted
        );
    }
}
