//! The iterative lookup: which peer to ask next, and when the k closest have been found.
//!
//! [`ClosestPeersIter`] is a pure data structure in the style of rust-libp2p's
//! `ClosestPeersIter`: the caller sends the requests and reports each outcome with
//! [`on_success`](ClosestPeersIter::on_success) (with the closer peers the answer named) or
//! [`on_failure`](ClosestPeersIter::on_failure) (timeout, error). [`next_step`](ClosestPeersIter::next_step)
//! says what to do now. The lookup is finished when the `k` closest peers it knows of have
//! all answered (failed peers are skipped), or when nobody is left to ask.
//!
//! Each peer remembers its *hop*: peers from the local table are hop 1, a peer named by a
//! hop-h peer is hop h+1. The hop of the closest answering peer is the lookup's path length.
//!
//! **Disjoint paths** (S/Kademlia, Baumgart and Mies 2007): [`ClosestPeersIter::disjoint`]
//! splits the starting peers over `d` paths; a peer named in an answer joins the path of the
//! peer that named it, unless another path found it first, so no peer is asked by two paths.
//! Each path keeps its own `α` requests in flight and ends on its own terms; the lookup ends
//! when every path has. Adversaries that capture one path (answering with colluders and
//! fabricated contacts) cannot reach into the others, so an honest path still finds the honest
//! peers nearest the target as long as one of the `d` starting sets leads to them.

use std::collections::BTreeMap;

use crate::id::{Distance, Key, PeerId};
use crate::wire::Contact;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerState {
    NotContacted,
    Waiting,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug)]
struct Peer {
    contact: Contact,
    state: PeerState,
    hop: u8,
    path: u8,
}

/// What the lookup wants next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send a request to this peer.
    Contact(Contact),
    /// Wait for answers: `α` requests are in flight, or only in-flight peers can still
    /// change the result.
    Wait,
    /// Done; take the result with [`ClosestPeersIter::into_result`].
    Finished,
}

enum PathStep {
    Contact(Distance),
    Wait,
    Done,
}

/// An iterative Kademlia lookup towards a target key.
#[derive(Clone, Debug)]
pub struct ClosestPeersIter {
    target: Key,
    k: usize,
    alpha: usize,
    /// Ordered by distance to the target.
    peers: BTreeMap<Distance, Peer>,
    /// Distance of each peer, for the `on_*` calls.
    index: BTreeMap<PeerId, Distance>,
    /// Requests in flight, per path.
    in_flight: Vec<usize>,
    requests: usize,
    max_peers: usize,
    /// The path the next request is tried on first (round robin).
    turn: usize,
}

impl ClosestPeersIter {
    /// A lookup of `target` that starts from `known` (usually the local table's closest),
    /// returns `k` results and keeps `alpha` requests in flight.
    pub fn new(
        target: Key,
        known: impl IntoIterator<Item = Contact>,
        k: usize,
        alpha: usize,
    ) -> Self {
        Self::disjoint(target, known, k, alpha, 1)
    }

    /// A lookup over `paths` disjoint paths (see the module docs): `known` is dealt out to
    /// them in turn, nearest first.
    pub fn disjoint(
        target: Key,
        known: impl IntoIterator<Item = Contact>,
        k: usize,
        alpha: usize,
        paths: usize,
    ) -> Self {
        let paths = paths.clamp(1, usize::from(u8::MAX));
        let mut it = Self {
            target,
            k: k.max(1),
            alpha: alpha.max(1),
            peers: BTreeMap::new(),
            index: BTreeMap::new(),
            in_flight: vec![0; paths],
            requests: 0,
            // Bound the candidate set: far peers beyond this many are never needed.
            max_peers: k.max(1) * 8 * paths,
            turn: 0,
        };
        let mut known: Vec<Contact> = known.into_iter().collect();
        known.sort_by_key(|c| c.peer.key().distance(&target));
        known.dedup_by(|a, b| a.peer == b.peer);
        for (i, c) in known.into_iter().enumerate() {
            it.add(c, 1, (i % paths) as u8);
        }
        it
    }

    /// How many disjoint paths the lookup runs.
    pub fn paths(&self) -> usize {
        self.in_flight.len()
    }

    /// The key looked up.
    pub fn target(&self) -> &Key {
        &self.target
    }

    /// Requests sent so far.
    pub fn requests(&self) -> usize {
        self.requests
    }

    fn add(&mut self, contact: Contact, hop: u8, path: u8) {
        if self.index.contains_key(&contact.peer) {
            return;
        }
        let d = contact.peer.key().distance(&self.target);
        if self.peers.len() >= self.max_peers {
            // Full: keep the new peer only if it is closer than the farthest uncontacted one.
            let far = self
                .peers
                .iter()
                .rev()
                .find(|(_, p)| p.state == PeerState::NotContacted)
                .map(|(d, _)| *d);
            match far {
                Some(far) if far > d => {
                    if let Some(p) = self.peers.remove(&far) {
                        self.index.remove(&p.contact.peer);
                    }
                }
                _ => return,
            }
        }
        self.index.insert(contact.peer, d);
        self.peers.insert(
            d,
            Peer {
                contact,
                state: PeerState::NotContacted,
                hop,
                path,
            },
        );
    }

    /// `peer` answered and named `closer` peers.
    pub fn on_success(&mut self, peer: &PeerId, closer: impl IntoIterator<Item = Contact>) {
        let Some(d) = self.index.get(peer).copied() else {
            return;
        };
        let Some(p) = self.peers.get_mut(&d) else {
            return;
        };
        if p.state != PeerState::Waiting {
            return;
        }
        p.state = PeerState::Succeeded;
        let (hop, path) = (p.hop.saturating_add(1), p.path);
        self.in_flight[usize::from(path)] -= 1;
        for c in closer {
            self.add(c, hop, path);
        }
    }

    /// `peer` did not answer in time, or answered with an error.
    pub fn on_failure(&mut self, peer: &PeerId) {
        let Some(d) = self.index.get(peer).copied() else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&d)
            && p.state == PeerState::Waiting
        {
            p.state = PeerState::Failed;
            self.in_flight[usize::from(p.path)] -= 1;
        }
    }

    /// Whether `peer` is one this lookup is waiting on.
    pub fn is_waiting_on(&self, peer: &PeerId) -> bool {
        self.index
            .get(peer)
            .and_then(|d| self.peers.get(d))
            .is_some_and(|p| p.state == PeerState::Waiting)
    }

    /// What to do now. Call repeatedly until it returns `Wait` or `Finished`.
    pub fn next_step(&mut self) -> Next {
        let paths = self.in_flight.len();
        let mut waiting = false;
        for i in 0..paths {
            let path = (self.turn + i) % paths;
            match self.path_step(path) {
                PathStep::Contact(d) => {
                    self.turn = (path + 1) % paths;
                    let Some(p) = self.peers.get_mut(&d) else {
                        continue;
                    };
                    p.state = PeerState::Waiting;
                    self.in_flight[path] += 1;
                    self.requests += 1;
                    return Next::Contact(p.contact.clone());
                }
                PathStep::Wait => waiting = true,
                PathStep::Done => {}
            }
        }
        if waiting { Next::Wait } else { Next::Finished }
    }

    /// Where path `path` stands: its `k` closest peers (failed ones skipped) have answered
    /// (done, once nothing of it is in flight), or the next of them to ask, or wait.
    fn path_step(&self, path: usize) -> PathStep {
        let mut succeeded = 0;
        let mut waiting = false;
        for (d, p) in self
            .peers
            .iter()
            .filter(|(_, p)| usize::from(p.path) == path)
        {
            match p.state {
                PeerState::Succeeded => {
                    succeeded += 1;
                    if succeeded >= self.k {
                        // Farther requests still in flight cannot change the result.
                        return if waiting {
                            PathStep::Wait
                        } else {
                            PathStep::Done
                        };
                    }
                }
                PeerState::Failed => {}
                PeerState::Waiting => waiting = true,
                PeerState::NotContacted => {
                    if self.in_flight[path] >= self.alpha {
                        return PathStep::Wait;
                    }
                    return PathStep::Contact(*d);
                }
            }
        }
        if self.in_flight[path] > 0 {
            PathStep::Wait
        } else {
            PathStep::Done
        }
    }

    /// Whether the lookup is finished (without starting any request).
    pub fn is_finished(&self) -> bool {
        (0..self.in_flight.len()).all(|p| matches!(self.path_step(p), PathStep::Done))
    }

    /// Path length so far: the hop of the closest peer that answered (0 if none did).
    pub fn hops(&self) -> u8 {
        self.peers
            .values()
            .find(|p| p.state == PeerState::Succeeded)
            .map_or(0, |p| p.hop)
    }

    /// The (up to) `k` closest peers that answered, closest first.
    pub fn into_result(self) -> Vec<Contact> {
        self.peers
            .into_values()
            .filter(|p| p.state == PeerState::Succeeded)
            .take(self.k)
            .map(|p| p.contact)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::kbucket::KBucketTable;
    use crate::record::Addr;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use std::time::Duration;

    fn contact(i: u32) -> Contact {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        Contact {
            peer: PeerId::from_bytes(b),
            addr: Addr::new(i.to_string()),
        }
    }

    /// A static network of `n` peers whose k-bucket tables (k = 20) were filled with every
    /// other peer in random order; a peer answers with its table's `k` closest to the target.
    fn static_lookup(
        n: u32,
        k: usize,
        alpha: usize,
        seed: u64,
        dead: &[u32],
    ) -> (Vec<PeerId>, Vec<PeerId>) {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let all: Vec<Contact> = (0..n).map(contact).collect();
        let target = Key::hash(&seed.to_be_bytes());
        let tables: Vec<KBucketTable> = all
            .iter()
            .map(|me| {
                let mut t = KBucketTable::new(me.peer.key(), 20, 0, Duration::from_secs(60));
                let mut shuffled = all.clone();
                shuffled.shuffle(&mut rng);
                for c in shuffled {
                    t.insert(c, now);
                }
                t
            })
            .collect();
        let answer = |i: usize| tables[i].closest(&target, k);
        let mut start: Vec<Contact> = all
            .iter()
            .filter(|c| !dead.contains(&c.addr.as_str().parse::<u32>().unwrap_or(0)))
            .cloned()
            .collect();
        start.shuffle(&mut rng);
        let mut it = ClosestPeersIter::new(target, start.into_iter().take(3), k, alpha);
        let mut pending = Vec::new();
        loop {
            match it.next_step() {
                Next::Contact(c) => pending.push(c),
                Next::Wait => {
                    // Answer the oldest pending request.
                    let c = pending.remove(0);
                    let i = c.addr.as_str().parse::<u32>().expect("test addr");
                    if dead.contains(&i) {
                        it.on_failure(&c.peer);
                    } else {
                        it.on_success(&c.peer, answer(i as usize));
                    }
                }
                Next::Finished => break,
            }
        }
        let got: Vec<PeerId> = it.into_result().into_iter().map(|c| c.peer).collect();
        let mut live: Vec<&Contact> = all
            .iter()
            .filter(|c| !dead.contains(&c.addr.as_str().parse::<u32>().unwrap_or(0)))
            .collect();
        live.sort_by_key(|c| c.peer.key().distance(&target));
        let want = live.into_iter().take(k).map(|c| c.peer).collect();
        (got, want)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn a_lookup_in_a_static_network_returns_exactly_the_k_closest(seed in any::<u64>(), n in 30u32..300, k in 1usize..21, alpha in 1usize..4) {
            let (got, want) = static_lookup(n, k, alpha, seed, &[]);
            prop_assert_eq!(got, want);
        }

        #[test]
        fn dead_peers_are_skipped_and_never_returned(seed in any::<u64>(), n in 50u32..200) {
            // Tables here never drop the dead (the DHT's do), so the result is the k closest
            // live peers the lookup heard of: never a dead one, closest first.
            let dead: Vec<u32> = (0..n).filter(|i| i % 5 == 0).collect();
            let (got, _) = static_lookup(n, 10, 3, seed, &dead);
            prop_assert!(got.len() >= 5, "only {} results", got.len());
            let target = Key::hash(&seed.to_be_bytes());
            prop_assert!(got.windows(2).all(|w| w[0].key().distance(&target) < w[1].key().distance(&target)));
            for p in &got {
                let i = u32::from_be_bytes(p.as_bytes()[..4].try_into().unwrap_or_default());
                prop_assert!(!dead.contains(&i));
            }
        }
    }

    #[test]
    fn at_most_alpha_in_flight_and_finishes_when_everyone_failed() {
        let mut it = ClosestPeersIter::new(Key([0; 32]), (0..10).map(contact), 5, 3);
        let mut asked = vec![];
        while let Next::Contact(c) = it.next_step() {
            asked.push(c);
        }
        assert_eq!(asked.len(), 3);
        for c in &asked {
            it.on_failure(&c.peer);
        }
        let mut n = 0;
        loop {
            match it.next_step() {
                Next::Contact(c) => {
                    n += 1;
                    it.on_failure(&c.peer);
                }
                Next::Wait => panic!("nothing is in flight"),
                Next::Finished => break,
            }
        }
        assert_eq!(n, 7);
        assert!(it.into_result().is_empty());
    }

    /// A static network of `n` peers (tables as in `static_lookup`) where the peers `bad`
    /// answer every request with the bad peers nearest the target (an eclipse), and the lookup
    /// starts from `start` known peers. Returns how many of the `k` honest peers nearest the
    /// target the lookup found.
    fn eclipsed_lookup(n: u32, bad: &[u32], start: &[u32], paths: usize, seed: u64) -> usize {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        let k = 20;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let all: Vec<Contact> = (0..n).map(contact).collect();
        let target = Key::hash(&seed.to_be_bytes());
        let tables: Vec<KBucketTable> = all
            .iter()
            .map(|me| {
                let mut t = KBucketTable::new(me.peer.key(), 20, 0, Duration::from_secs(60));
                let mut shuffled = all.clone();
                shuffled.shuffle(&mut rng);
                for c in shuffled {
                    t.insert(c, now);
                }
                t
            })
            .collect();
        let mut colluders: Vec<Contact> = bad.iter().map(|&i| contact(i)).collect();
        colluders.sort_by_key(|c| c.peer.key().distance(&target));
        colluders.truncate(k);
        let idx = |c: &Contact| c.addr.as_str().parse::<u32>().expect("test addr");
        let mut it =
            ClosestPeersIter::disjoint(target, start.iter().map(|&i| contact(i)), k, 3, paths);
        let mut pending = Vec::new();
        loop {
            match it.next_step() {
                Next::Contact(c) => pending.push(c),
                Next::Wait => {
                    let c = pending.remove(0);
                    let i = idx(&c);
                    if bad.contains(&i) {
                        it.on_success(&c.peer, colluders.clone());
                    } else {
                        it.on_success(&c.peer, tables[i as usize].closest(&target, k));
                    }
                }
                Next::Finished => break,
            }
        }
        let got: Vec<PeerId> = it.into_result().into_iter().map(|c| c.peer).collect();
        let mut honest: Vec<&Contact> = all.iter().filter(|c| !bad.contains(&idx(c))).collect();
        honest.sort_by_key(|c| c.peer.key().distance(&target));
        // The honest peers nearest the target: the result should hold the nearest of them.
        honest
            .iter()
            .take(3)
            .filter(|c| got.contains(&c.peer))
            .count()
    }

    #[test]
    fn disjoint_paths_find_the_honest_closest_through_an_eclipse() {
        // 300 peers, 30 % colluding (answering with colluders only); a lookup starts from 6
        // known peers, 2 of them bad.
        let (mut single, mut disjoint, runs) = (0, 0, 40);
        for seed in 0..runs {
            let bad: Vec<u32> = (0..300).filter(|i| (i * 7 + seed) % 10 < 3).collect();
            let good: Vec<u32> = (0..300).filter(|i| !bad.contains(i)).collect();
            let start = [bad[0], good[0], bad[1], good[1], good[2], good[3]];
            if eclipsed_lookup(300, &bad, &start, 1, u64::from(seed)) == 3 {
                single += 1;
            }
            if eclipsed_lookup(300, &bad, &start, 3, u64::from(seed)) == 3 {
                disjoint += 1;
            }
        }
        // Colluders spread over the key space cannot hide the honest peers nearest a target
        // from Kademlia (honest answers name them, and the lookup ends only when the k nearest
        // answered); three disjoint paths, each asking different peers, find them too.
        assert_eq!(single, runs, "single path: {single}/{runs}");
        assert_eq!(disjoint, runs, "disjoint paths: {disjoint}/{runs}");
    }

    #[test]
    fn disjoint_paths_never_ask_a_peer_twice_and_each_path_ends() {
        let target = Key::hash(b"target");
        let known: Vec<Contact> = (0..9).map(contact).collect();
        let mut it = ClosestPeersIter::disjoint(target, known, 4, 2, 3);
        assert_eq!(it.paths(), 3);
        let mut asked = std::collections::BTreeSet::new();
        let mut n = 100u32;
        loop {
            match it.next_step() {
                Next::Contact(c) => {
                    assert!(asked.insert(c.peer), "asked twice: {c:?}");
                    // Everyone names two new peers and one already known.
                    let named = vec![contact(n), contact(n + 1), contact(0)];
                    n += 2;
                    it.on_success(&c.peer, named);
                }
                Next::Wait => unreachable!("answers are immediate"),
                Next::Finished => break,
            }
        }
        assert!(it.is_finished());
        // Each path asked at least its own k nearest: more than one path's worth.
        assert!(asked.len() >= 3 * 4, "{} asked", asked.len());
        assert_eq!(it.into_result().len(), 4);
    }
}
