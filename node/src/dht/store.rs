//! The records a node holds for others: bounded, checked, expiring.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::id::Key;
use crate::record::{Record, RecordError};

/// A bounded record store. Every record in it passed [`Record::check`] when it came in.
#[derive(Clone, Debug)]
pub struct RecordStore {
    records: BTreeMap<Key, Record>,
    max_records: usize,
    max_ttl: Duration,
}

impl RecordStore {
    /// An empty store of at most `max_records`, accepting expiries up to `max_ttl` ahead.
    pub fn new(max_records: usize, max_ttl: Duration) -> Self {
        Self {
            records: BTreeMap::new(),
            max_records,
            max_ttl,
        }
    }

    /// Number of records held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Stores `record` if it passes every check and is not older than what is held.
    ///
    /// Rules: a record with a lower sequence number than the held one is stale; the same
    /// sequence number is accepted only for the identical record (an idempotent re-store);
    /// a name record whose name is held, live, by another key is refused (first come, first
    /// served) — once the holder's record has expired the name is free again.
    pub fn put(&mut self, record: Record, now_unix: u64) -> Result<(), RecordError> {
        record.check(now_unix, self.max_ttl)?;
        let key = record.key();
        match self.records.get(&key) {
            Some(held) if held.expires() > now_unix => {
                if held.owner() != record.owner() {
                    // Service records are keyed by their owner, so only names get here.
                    return Err(RecordError::NameTaken);
                }
                if record.seq() < held.seq() || (record.seq() == held.seq() && record != *held) {
                    return Err(RecordError::Stale);
                }
            }
            Some(_) => {}
            None => {
                if self.records.len() >= self.max_records {
                    self.expire(now_unix);
                    if self.records.len() >= self.max_records {
                        return Err(RecordError::StoreFull);
                    }
                }
            }
        }
        self.records.insert(key, record);
        Ok(())
    }

    /// The live record under `key`.
    pub fn get(&self, key: &Key, now_unix: u64) -> Option<&Record> {
        self.records.get(key).filter(|r| r.expires() > now_unix)
    }

    /// Drops expired records; returns how many.
    pub fn expire(&mut self, now_unix: u64) -> usize {
        let before = self.records.len();
        self.records.retain(|_, r| r.expires() > now_unix);
        before - self.records.len()
    }
}

/// Copies of others' records kept for a short while (`p2p.caching`): the records this node
/// resolved, and those a resolver pushed to it along the lookup path. Bounded (the copy
/// nearest its end goes first when full), expiring after its own TTL or the record's expiry,
/// whichever is sooner, and checked like the store's records on the way in.
#[derive(Clone, Debug)]
pub struct RecordCache {
    /// Key → (record, unix second it is dropped at).
    copies: BTreeMap<Key, (Record, u64)>,
    max_records: usize,
    ttl: Duration,
    max_ttl: Duration,
}

impl RecordCache {
    /// An empty cache of at most `max_records`, each kept at most `ttl`.
    pub fn new(max_records: usize, ttl: Duration, max_ttl: Duration) -> Self {
        Self {
            copies: BTreeMap::new(),
            max_records,
            ttl,
            max_ttl,
        }
    }

    /// Copies held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.copies.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    /// Keeps a copy of `record` if it checks out and is not older than a copy held.
    pub fn put(&mut self, record: Record, now_unix: u64) -> Result<(), RecordError> {
        record.check(now_unix, self.max_ttl)?;
        let key = record.key();
        if let Some((held, until)) = self.copies.get(&key)
            && *until > now_unix
            && held.seq() > record.seq()
        {
            return Err(RecordError::Stale);
        }
        if !self.copies.contains_key(&key) && self.copies.len() >= self.max_records {
            self.expire(now_unix);
            if self.copies.len() >= self.max_records {
                let soonest = self
                    .copies
                    .iter()
                    .min_by_key(|(k, (_, until))| (*until, **k))
                    .map(|(k, _)| *k);
                if let Some(k) = soonest {
                    self.copies.remove(&k);
                }
            }
        }
        let until = record.expires().min(now_unix + self.ttl.as_secs());
        self.copies.insert(key, (record, until));
        Ok(())
    }

    /// The live copy under `key`.
    pub fn get(&self, key: &Key, now_unix: u64) -> Option<&Record> {
        self.copies
            .get(key)
            .filter(|(r, until)| *until > now_unix && r.expires() > now_unix)
            .map(|(r, _)| r)
    }

    /// Drops the copy under `key` (it led to a service that moved).
    pub fn remove(&mut self, key: &Key) -> bool {
        self.copies.remove(key).is_some()
    }

    /// Drops expired copies; returns how many.
    pub fn expire(&mut self, now_unix: u64) -> usize {
        let before = self.copies.len();
        self.copies
            .retain(|_, (r, until)| *until > now_unix && r.expires() > now_unix);
        before - self.copies.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Keypair;
    use crate::record::NameRecord;
    use crate::record::tests::service;
    use rand::SeedableRng;

    fn name(kp: &Keypair, name: &str, seq: u64, expires: u64) -> Record {
        NameRecord {
            name: name.into(),
            peer: kp.peer_id(),
            seq,
            expires,
        }
        .sign(kp)
    }

    #[test]
    fn sequence_numbers_only_go_up() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let kp = Keypair::generate(&mut rng);
        let mut s = RecordStore::new(10, Duration::from_secs(3600));
        assert_eq!(s.put(service(&kp, 5, 1000), 100), Ok(()));
        assert_eq!(s.put(service(&kp, 5, 1000), 100), Ok(()), "idempotent");
        assert_eq!(s.put(service(&kp, 4, 1000), 100), Err(RecordError::Stale));
        assert_eq!(s.put(service(&kp, 5, 1001), 100), Err(RecordError::Stale));
        assert_eq!(s.put(service(&kp, 6, 1001), 100), Ok(()));
        assert_eq!(s.get(&kp.peer_id().key(), 100).map(Record::seq), Some(6));
        assert_eq!(s.get(&kp.peer_id().key(), 1001), None, "expired");
    }

    #[test]
    fn names_are_first_come_first_served_until_they_expire() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let alice = Keypair::generate(&mut rng);
        let mallory = Keypair::generate(&mut rng);
        let mut s = RecordStore::new(10, Duration::from_secs(3600));
        assert_eq!(s.put(name(&alice, "shop", 1, 500), 100), Ok(()));
        assert_eq!(
            s.put(name(&mallory, "shop", 99, 500), 100),
            Err(RecordError::NameTaken)
        );
        assert_eq!(s.put(name(&alice, "shop", 2, 600), 100), Ok(()));
        // After alice's record expires the name is free.
        assert_eq!(s.put(name(&mallory, "shop", 1, 1200), 700), Ok(()));
    }

    #[test]
    fn the_store_is_bounded() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut s = RecordStore::new(2, Duration::from_secs(3600));
        for _ in 0..2 {
            let kp = Keypair::generate(&mut rng);
            assert_eq!(s.put(service(&kp, 1, 1000), 100), Ok(()));
        }
        let kp = Keypair::generate(&mut rng);
        assert_eq!(
            s.put(service(&kp, 1, 1000), 100),
            Err(RecordError::StoreFull)
        );
        // Expired records make room.
        assert_eq!(s.put(service(&kp, 1, 3000), 1000), Ok(()));
    }

    #[test]
    fn the_cache_keeps_checked_copies_for_its_ttl_and_stays_bounded() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let kps: Vec<Keypair> = (0..4).map(|_| Keypair::generate(&mut rng)).collect();
        let mut c = RecordCache::new(3, Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(c.put(service(&kps[0], 5, 1000), 100), Ok(()));
        let key = kps[0].peer_id().key();
        assert_eq!(c.get(&key, 159).map(Record::seq), Some(5));
        assert_eq!(
            c.get(&key, 160),
            None,
            "the cache's TTL, before the record's expiry"
        );
        assert_eq!(c.put(service(&kps[0], 5, 1000), 100), Ok(()));
        assert_eq!(
            c.put(service(&kps[0], 4, 1000), 100),
            Err(RecordError::Stale)
        );
        assert_eq!(
            c.put(service(&kps[0], 6, 130), 100),
            Ok(()),
            "newer replaces"
        );
        assert_eq!(
            c.get(&key, 130),
            None,
            "the record's own expiry comes first"
        );
        // A forged copy never gets in.
        let mut forged = service(&kps[1], 1, 1000);
        if let Record::Service(s) = &mut forged {
            s.body.seq = 2;
        }
        assert_eq!(c.put(forged, 100), Err(RecordError::BadSignature));
        // Full: the copy nearest its end makes room.
        for (i, kp) in kps.iter().enumerate().skip(1) {
            assert_eq!(
                c.put(service(kp, 1, 1000 + i as u64), 100 + i as u64),
                Ok(())
            );
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&key, 110).is_none(), "the oldest copy was dropped");
        assert!(c.remove(&kps[3].peer_id().key()));
        assert_eq!(c.len(), 2);
    }
}
