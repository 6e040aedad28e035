//! beam's protocol core: identity, wire format, the Kademlia DHT, coordinates and routing —
//! sans-IO.
//!
//! # Layout
//!
//! - [`id`] — [`PeerId`] (ed25519 public key), DHT [`Key`]s, the XOR [`Distance`], and the
//!   `beam://` address form.
//! - [`record`] — signed service and name records and the rules every holder applies.
//! - [`wire`] — the message enum and its codec (version byte, postcard, hard size limit;
//!   decoding never panics).
//! - [`dht`] — Kademlia: [`dht::kbucket`] (routing table), [`dht::query`] (the iterative
//!   lookup, a pure data structure), [`dht::store`] (records held for others) and the
//!   [`dht::Dht`] state machine.
//! - [`gossip`] — epidemic broadcast of service announcements and health
//!   ([`gossip::Gossip`]): eager push over a bounded mesh, lazy IHave/IWant repair, duplicate
//!   suppression, per-peer rate bounds.
//! - [`e2e`] — end-to-end encrypted sessions over relays: the Noise XK handshake (seeded,
//!   deterministic) and replay-checked transport frames that survive loss and reordering.
//! - [`routing`] — requests to services: direct, multi-hop or geographic routes through
//!   relays ([`routing::score`] chooses them), end to end encrypted with [`e2e`]; failover.
//! - [`coords`] — Vivaldi network coordinates ([`coords::Vivaldi`], a pure data structure):
//!   predict the RTT to a peer from the coordinates in its record.
//! - [`app`] — the application layer both drivers share: a `beam://` address or a name →
//!   the service's verified record ([`app::ServiceRef`], [`Node::resolve`]).
//! - [`tunnel`] — the tunnel's own framing the driver reads from peers: circuit headers and
//!   the hello that carries an access token.
//! - [`fuzzing`] — the fuzz targets' harnesses (`fuzz/`), also run on the committed corpus
//!   in the normal test suite.
//! - [`node`] — [`Node`], which composes the parts behind one calling contract.
//!
//! # Design
//!
//! The same code runs inside the deterministic simulator (`sim`) and under the real libp2p
//! driver (`beam`), so nothing here touches a socket, a clock or a global RNG. Every state
//! machine speaks one vocabulary, taken from quinn-proto and str0m: `handle_*(now, …)` for
//! inputs, `poll_transmit` / `poll_event` / `poll_timeout` for outputs; commands return ids
//! that the events finishing them carry. Peers are addressed by [`PeerId`]; addresses are
//! opaque hints. Everything that grows with input from the network is bounded, and
//! everything a peer sends is checked before it is used.
#![warn(missing_docs)]

pub mod app;
pub mod coords;
pub mod dht;
pub mod e2e;
pub mod fuzzing;
pub mod geo;
pub mod gossip;
pub mod health;
pub mod id;
pub mod node;
pub mod record;
pub mod routing;
pub mod tunnel;
pub mod wakeup;
pub mod wire;

#[cfg(test)]
mod testnet;

pub use id::{Distance, Key, Keypair, PeerId};
pub use node::{Event, Forgotten, Node, NodeConfig, Optimized, Rank, Swap, Transmit};
pub use record::{Addr, Participation, Record};
