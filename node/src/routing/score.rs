//! Route selection: which relays a request goes through. Pure functions and data.
//!
//! - `Direct` uses no relay.
//! - `MultiHop` picks `hops` distinct relays at random among the usable candidates.
//! - `Geographic` picks the one relay that minimises the predicted latency
//!   client → relay → service (Vivaldi coordinates), divided by the relay's reliability squared
//!   (so a relay that fails half the time must be four times closer to be chosen), and raised
//!   by its current load (requests it is carrying for us), which spreads traffic across near-
//!   equal relays. Without coordinates for a candidate, it falls back to a random relay.
//!
//! A candidate is usable when it relays (not a light peer), is not the client or the service,
//! is not excluded (a relay that failed this request already), and is not believed dead.

use std::collections::BTreeSet;

use rand::Rng;
use rand::seq::IndexedRandom;

use crate::id::PeerId;
use crate::record::Coordinates;
use crate::wire::Contact;

/// How a request reaches its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strategy {
    /// Straight to the service's endpoint.
    Direct,
    /// Through randomly chosen relays.
    MultiHop,
    /// Through the relay that minimises predicted latency, weighted by reliability and load.
    Geographic,
}

/// What the router has learned about a relay from the outcomes of routes through it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trust {
    /// Exponentially weighted success rate of routes through this relay.
    pub success: f64,
    /// Routes through it now in flight.
    pub load: u32,
}

impl Default for Trust {
    fn default() -> Self {
        // Unknown relays start trusted but not perfect, so a proven one wins a tie.
        Self {
            success: 0.9,
            load: 0,
        }
    }
}

/// Weight of the newest outcome in the success EWMA.
pub const TRUST_ALPHA: f64 = 0.2;

impl Trust {
    /// A route through this relay succeeded.
    pub fn on_success(&mut self) {
        self.success = self.success * (1.0 - TRUST_ALPHA) + TRUST_ALPHA;
    }

    /// A route through this relay failed.
    pub fn on_failure(&mut self) {
        self.success *= 1.0 - TRUST_ALPHA;
    }
}

/// A peer that might relay.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The peer.
    pub contact: Contact,
    /// Its coordinates, if known.
    pub coords: Option<Coordinates>,
    /// What the router knows of it.
    pub trust: Trust,
    /// Whether it relays at all (routing/full participation).
    pub relays: bool,
    /// Whether it is believed alive.
    pub alive: bool,
}

/// Predicted round-trip time between two coordinates, in ms (Euclidean distance + heights).
pub fn predict_ms(a: &Coordinates, b: &Coordinates) -> f64 {
    let (dx, dy) = (f64::from(a.x - b.x), f64::from(a.y - b.y));
    (dx * dx + dy * dy).sqrt() + f64::from(a.height) + f64::from(b.height)
}

/// Chooses the relays of a route (empty for `Direct`, or when no candidate is usable).
#[allow(clippy::too_many_arguments)]
pub fn choose(
    strategy: Strategy,
    candidates: &[Candidate],
    client: &PeerId,
    service: &PeerId,
    client_coords: Option<&Coordinates>,
    service_coords: Option<&Coordinates>,
    exclude: &BTreeSet<PeerId>,
    hops: usize,
    rng: &mut impl Rng,
) -> Vec<Contact> {
    let usable: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| {
            c.relays
                && c.alive
                && c.contact.peer != *client
                && c.contact.peer != *service
                && !exclude.contains(&c.contact.peer)
        })
        .collect();
    match strategy {
        Strategy::Direct => vec![],
        Strategy::MultiHop => {
            let mut picked: Vec<Contact> = usable
                .choose_multiple(rng, hops.clamp(1, crate::wire::MAX_RELAYS_PER_ROUTE))
                .map(|c| c.contact.clone())
                .collect();
            // choose_multiple's order is random already; keep it.
            picked.dedup_by(|a, b| a.peer == b.peer);
            picked
        }
        Strategy::Geographic => {
            let (Some(cc), Some(sc)) = (client_coords, service_coords) else {
                return usable
                    .choose(rng)
                    .map(|c| vec![c.contact.clone()])
                    .unwrap_or_default();
            };
            let best = usable
                .iter()
                .filter_map(|c| {
                    let rc = c.coords.as_ref()?;
                    let latency = predict_ms(cc, rc) + predict_ms(rc, sc);
                    let reliability = c.trust.success.clamp(0.05, 1.0);
                    let cost = latency / (reliability * reliability)
                        * (1.0 + 0.1 * f64::from(c.trust.load));
                    cost.is_finite().then_some((cost, *c))
                })
                .min_by(|a, b| {
                    a.0.total_cmp(&b.0)
                        .then_with(|| a.1.contact.peer.cmp(&b.1.contact.peer))
                });
            match best {
                Some((_, c)) => vec![c.contact.clone()],
                None => usable
                    .choose(rng)
                    .map(|c| vec![c.contact.clone()])
                    .unwrap_or_default(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Strategy;
    use super::*;
    use crate::record::Addr;
    use proptest::prelude::{Just, any, prop_assert, prop_oneof, proptest};
    use rand::SeedableRng;

    fn cand(i: u8, x: f32, relays: bool, alive: bool, success: f64) -> Candidate {
        Candidate {
            contact: Contact {
                peer: PeerId::from_bytes([i; 32]),
                addr: Addr::new(format!("10.0.0.{i}:1")),
            },
            coords: Some(Coordinates {
                x,
                y: 0.0,
                height: 1.0,
            }),
            trust: Trust { success, load: 0 },
            relays,
            alive,
        }
    }

    fn at(x: f32) -> Coordinates {
        Coordinates {
            x,
            y: 0.0,
            height: 1.0,
        }
    }

    #[test]
    fn geographic_prefers_the_relay_on_the_way_and_avoids_unreliable_ones() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let cands = vec![
            cand(1, 50.0, true, true, 0.9),
            cand(2, 300.0, true, true, 0.9),
            cand(3, 40.0, true, true, 0.2),
        ];
        let (c, s) = (PeerId::from_bytes([100; 32]), PeerId::from_bytes([101; 32]));
        let r = choose(
            Strategy::Geographic,
            &cands,
            &c,
            &s,
            Some(&at(0.0)),
            Some(&at(100.0)),
            &BTreeSet::new(),
            1,
            &mut rng,
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].peer, PeerId::from_bytes([1; 32]));
    }

    proptest! {
        #[test]
        fn never_picks_a_dead_light_excluded_client_or_service_peer(
            seed in any::<u64>(),
            specs in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), 0f32..500.0, 0.0f64..1.0), 0..40),
            strategy in prop_oneof![Just(Strategy::Direct), Just(Strategy::MultiHop), Just(Strategy::Geographic)],
            hops in 1usize..4,
        ) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let cands: Vec<Candidate> = specs.iter().enumerate().map(|(i, (r, a, _, x, s))| cand(i as u8, *x, *r, *a, *s)).collect();
            let exclude: BTreeSet<PeerId> = specs.iter().enumerate().filter(|(_, s)| s.2).map(|(i, _)| PeerId::from_bytes([i as u8; 32])).collect();
            let client = PeerId::from_bytes([0; 32]);
            let service = PeerId::from_bytes([1; 32]);
            let route = choose(strategy, &cands, &client, &service, Some(&at(0.0)), Some(&at(250.0)), &exclude, hops, &mut rng);
            if strategy == Strategy::Direct {
                prop_assert!(route.is_empty());
            }
            prop_assert!(route.len() <= hops.max(1));
            let mut seen = BTreeSet::new();
            for hop in &route {
                let c = cands.iter().find(|c| c.contact.peer == hop.peer).expect("a candidate");
                prop_assert!(c.relays && c.alive);
                prop_assert!(!exclude.contains(&hop.peer));
                prop_assert!(hop.peer != client && hop.peer != service);
                prop_assert!(seen.insert(hop.peer), "a relay twice");
            }
            let usable = cands.iter().filter(|c| c.relays && c.alive && !exclude.contains(&c.contact.peer) && c.contact.peer != client && c.contact.peer != service).count();
            if strategy != Strategy::Direct && usable > 0 {
                prop_assert!(!route.is_empty(), "a usable relay exists");
            }
        }
    }
}
