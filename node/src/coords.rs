//! Network coordinates: predict the round-trip time to a peer without measuring it.
//!
//! Every peer keeps a [`Coordinates`] — a point in a 2-D plane plus a *height* — such that the
//! distance between two peers' coordinates approximates the RTT between them. A peer learns its
//! coordinates from the RTTs it measures anyway (DHT requests, relayed traffic) and the
//! coordinates those peers report, and publishes them in its service record, so that anyone can
//! then predict the RTT to it from the record alone: to pick the nearest of several relays or
//! replicas, or to order lookup candidates.
//!
//! # Layout
//!
//! - [`vivaldi`] — [`Vivaldi`], the update rule, a pure data structure; [`predict`] and
//!   [`relative_error`].
//!
//! # Design
//!
//! - **Vivaldi** (Dabek, Cox, Kaashoek, Morris: *Vivaldi: A Decentralized Network Coordinate
//!   System*, SIGCOMM 2004) because it is decentralised (no landmarks to trust or keep up), needs
//!   no extra traffic (it piggybacks on RTTs measured for other reasons) and each sample is a
//!   constant-time update.
//! - **2-D plus height** is the paper's *height-vector* model: the height stands for the access
//!   link every path to a peer crosses, which a plane cannot express (two peers behind slow
//!   links are far from each other *and* from everyone else). The paper finds it as accurate
//!   as higher-dimensional Euclidean spaces on Internet data, for three numbers on the wire.
//! - **Milliseconds, `f32`**: the unit and precision of [`Coordinates`] in records. Arithmetic
//!   is done in `f64` and stored back.
//! - **Untrusted input.** Coordinates and error estimates come from other peers; RTTs come from
//!   a clock and a network that can both misbehave. A sample with a non-finite, negative or
//!   out-of-range value is dropped and counted, so the state is always finite and bounded.
//!   (A peer can still *lie* consistently and pull its neighbours' coordinates; coordinates are
//!   a hint for choosing among peers, never a basis for trust.)

pub mod vivaldi;

pub use crate::record::Coordinates;
pub use vivaldi::{MAX_COORDINATE_MS, Vivaldi, VivaldiConfig, predict, relative_error};
