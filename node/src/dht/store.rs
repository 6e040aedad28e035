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
}
