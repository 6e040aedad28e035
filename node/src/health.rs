//! Health announcements: each DHT server's own estimate of the network's size, spread by
//! gossip so that every node can pool many estimates into its "peers online".
//!
//! Gossip does not authenticate origins, and a forged estimate is free to make: an attacker
//! that floods health messages under made-up origins would steer every node's figure. Three
//! rules make a flood worthless:
//! - **Signed.** An announcement is signed by its origin's key ([`Health::verify`]); nobody
//!   announces in another peer's name or alters a copy in transit.
//! - **A lottery anyone can check.** A peer may announce in a given minute only if the hash of
//!   its id and the minute falls under a threshold set so that the whole network makes about
//!   [`PER_MINUTE`] announcements ([`wins`]). No key announces more often than an honest
//!   peer's, however often it sends. Keys are cheap, though (a winner takes ~N/12 tries to
//!   grind), which is what the next rule is for; the node also forwards announcements of
//!   origins it does not know only within a budget (a flood of ground winners can crowd
//!   honest unknown-origin announcements out of that budget, not out of the count).
//! - **Known origins only** (the node's side, [`crate::Node`]): an estimate counts only if its
//!   origin is a peer the node has exchanged DHT messages with, so keys minted for a flood
//!   count for nothing.
//!
//! The node then takes the median, which a minority of liars cannot move far.

use sha2::{Digest, Sha256};

use crate::id::{Keypair, PeerId, Signature};

/// Health announcements the whole network makes per minute (on average).
pub const PER_MINUTE: f64 = 12.0;
/// A receiver accepts an announcement whose lottery was drawn with an estimate up to this many
/// times smaller than its own (peers' estimates differ).
pub const LOTTERY_SLACK: f64 = 1.5;

/// What a node announces in a health message.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// Its own estimate of the number of DHT servers online.
    pub size_estimate: f32,
    /// The wall-clock minute (Unix seconds / 60) of the announcement: the lottery's draw, and
    /// what makes each announcement's payload unique.
    pub minute: u64,
    /// The origin's signature over the two fields above.
    pub signature: Signature,
}

impl Health {
    /// An announcement of `size_estimate` in `minute`, signed by `keypair`.
    pub fn signed(keypair: &Keypair, size_estimate: f32, minute: u64) -> Self {
        Self {
            size_estimate,
            minute,
            signature: keypair.sign(&signing_bytes(size_estimate, minute)),
        }
    }

    /// The gossip payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of fixed-size fields always encodes.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Whether `origin` signed this announcement.
    pub fn verify(&self, origin: &PeerId) -> bool {
        origin.verify(
            &signing_bytes(self.size_estimate, self.minute),
            &self.signature,
        )
    }
}

fn signing_bytes(size_estimate: f32, minute: u64) -> [u8; 25] {
    let mut b = [0u8; 25];
    b[..13].copy_from_slice(b"beam/health/1");
    b[13..17].copy_from_slice(&size_estimate.to_le_bytes());
    b[17..].copy_from_slice(&minute.to_le_bytes());
    b
}

/// Whether `origin` may announce in `minute`, in a network of about `servers` DHT servers:
/// true for about [`PER_MINUTE`] / `servers` of the (origin, minute) pairs, and the same answer
/// for everyone who asks.
pub fn wins(origin: &PeerId, minute: u64, servers: f64) -> bool {
    let p = (PER_MINUTE / servers.max(1.0)).min(1.0);
    let mut h = Sha256::new();
    h.update(b"beam/health-lottery/1");
    h.update(origin.as_bytes());
    h.update(minute.to_le_bytes());
    let d = h.finalize();
    let mut x = [0u8; 8];
    x.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(x) as f64) < p * 18_446_744_073_709_551_616.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_signed_announcement_verifies_only_for_its_origin_and_content() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let a = Keypair::generate(&mut rng);
        let b = Keypair::generate(&mut rng);
        let h = Health::signed(&a, 1000.0, 42);
        assert!(h.verify(&a.peer_id()));
        assert!(!h.verify(&b.peer_id()));
        let mut altered = h;
        altered.size_estimate = 1e6;
        assert!(!altered.verify(&a.peer_id()));
        let mut replayed = h;
        replayed.minute = 43;
        assert!(!replayed.verify(&a.peer_id()));
    }

    #[test]
    fn the_lottery_draws_about_per_minute_winners() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let peers: Vec<PeerId> = (0..1000)
            .map(|_| Keypair::generate(&mut rng).peer_id())
            .collect();
        let wins_in = |m: u64| peers.iter().filter(|p| wins(p, m, 1000.0)).count();
        let total: usize = (0..100).map(wins_in).sum();
        // 12 a minute on average over 100 minutes: 1,200 (Poisson: 3.5 sd is ±121).
        assert!(
            (1079..=1321).contains(&total),
            "{total} winners in 100 minutes"
        );
        // Everybody wins in a network smaller than PER_MINUTE.
        assert!(peers.iter().take(10).all(|p| wins(p, 7, 5.0)));
    }
}
