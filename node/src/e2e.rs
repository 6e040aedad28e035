//! End-to-end encrypted sessions between a client and a service over an untrusted relay path.
//!
//! On a multi-hop route the relays forward opaque frames; the client and the service run a
//! Noise handshake through them and then exchange [`Session`] frames that a relay can neither
//! read nor alter undetected. This module is sans-IO like the rest of the core: bytes in, bytes
//! out, no clock, no sockets, and the only randomness (the handshake's ephemeral keys) comes
//! from a 32-byte seed the caller gives.
//!
//! # Flow
//!
//! ```text
//! client (Initiator)                         service (Responder)
//! Initiator::start(key, service_key, seed) → msg1 (48 B)  →  Responder::new(key, seed).respond(msg1)
//!                                            ← msg2 (48 B) ←
//! Initiator::finish(msg2, first)           → msg3 (64 B + first) →  PendingResponder::finish(msg3)
//! Session ⇄ frames (8 B nonce + ciphertext + 16 B tag) ⇄ Session
//! ```
//!
//! Every step consumes its state: a handshake that fails at any step is over, start a new one
//! (a relay that alters a message can only make the handshake fail, which it could do anyway
//! by dropping the message).
//!
//! # Design
//!
//! **Pattern: [`PATTERN`] = `Noise_XK_25519_ChaChaPoly_BLAKE2s`.** The client knows the
//! service's static key before it connects: it is `noise_key` in the service record, bound to
//! the service's peer id by the record's signature. Of the patterns that use that knowledge,
//! XK was chosen over NK because
//! - it authenticates the client too: the service learns the client's static key
//!   ([`Session::remote_static`]), sent encrypted (relays never see it) and only after the
//!   service has proved it holds its key, so a probing relay learns nothing about clients.
//!   The service can rate-limit, allow-list or bind the key to a peer id; NK's client is
//!   anonymous to the service, so none of that would be possible;
//! - every payload is forward secret and replay-proof. NK would let the client send data in
//!   its first message (0-RTT), but that data is encrypted to the service's static key alone:
//!   readable by anyone who later steals that key, and replayable by any relay.
//!
//! XK costs one and a half round trips instead of one. The client's first payload rides in
//! msg3 ([`Initiator::finish`]'s `first_payload`), so the first request reaches the service
//! after 1.5 RTT and its answer arrives after 2 RTT; the service may answer msg3 straight away.
//!
//! A fixed prologue ([`PROLOGUE`]) names this protocol and its version, so a handshake between
//! two different versions fails instead of producing a session with mismatched framing.
//!
//! **Determinism.** snow asks a [`CryptoResolver`] for its RNG. [`SeededResolver`] hands it a
//! `ChaCha20Rng` seeded by the caller and delegates DH, cipher and hash to snow's pure-Rust
//! [`DefaultResolver`], so the simulator gets byte-identical handshakes per seed. In the real
//! driver the seed must come from the OS RNG, fresh for every handshake: whoever knows the
//! seed knows the ephemeral keys and can read the session.
//!
//! **Low-order points.** A Diffie-Hellman result of all zeros (the peer sent a small-order
//! point as its ephemeral key, or a record carries one as its static key) fails the handshake,
//! as the Noise spec permits, instead of mixing a publicly known value into the keys.
//!
//! **Transport over datagrams.** Sessions use snow's `StatelessTransportState`: each frame
//! carries its own nonce, so frames may be lost or reordered. The receiver keeps a
//! [`REPLAY_WINDOW`]-frame sliding bitmap (as IPsec and WireGuard do): a nonce seen before, or
//! older than the newest accepted minus the window, is rejected. The window moves only after a
//! frame has authenticated, so forged frames cannot push it. The nonce travels in clear but is
//! the AEAD nonce, so altering it makes authentication fail.
//!
//! **Bounds.** At most [`MAX_PLAINTEXT`] bytes of plaintext per frame (and in msg3); every
//! message's length is checked against its exact bounds before it reaches the cryptography.
//! Sessions are not rekeyed: a session ends after 2^64 − 1 frames in one direction
//! ([`E2eError::NonceExhausted`]), far beyond any route's life.

use std::fmt;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, StatelessTransportState};

/// The Noise protocol name of beam's end-to-end handshake.
pub const PATTERN: &str = "Noise_XK_25519_ChaChaPoly_BLAKE2s";
/// Hashed into the handshake by both sides: a handshake between versions fails cleanly.
pub const PROLOGUE: &[u8] = b"beam e2e v1";
/// Length of an X25519 key (public or secret) and of the handshake hash.
pub const KEY_LEN: usize = 32;
/// Length of the ChaCha20-Poly1305 authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of the explicit nonce in front of each transport frame (big-endian u64).
pub const NONCE_LEN: usize = 8;
/// Bytes a transport frame adds to its plaintext: nonce + tag = 24.
pub const FRAME_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Largest plaintext one frame (or msg3's first payload) may carry.
pub const MAX_PLAINTEXT: usize = 4096;
/// Largest transport frame: [`MAX_PLAINTEXT`] + [`FRAME_OVERHEAD`].
pub const MAX_FRAME: usize = MAX_PLAINTEXT + FRAME_OVERHEAD;
/// Largest plaintext of one frame on a stream ([`Session::encrypt_chunk`]): Noise's 65,535-byte
/// message limit less the tag. Streams are not bounded by the 4 KiB route frame, and fewer,
/// larger frames cost far less per byte.
pub const MAX_CHUNK: usize = 65_535 - TAG_LEN;
/// Largest stream frame: [`MAX_CHUNK`] + [`FRAME_OVERHEAD`].
pub const MAX_CHUNK_FRAME: usize = MAX_CHUNK + FRAME_OVERHEAD;
/// Length of msg1 (`e, es`): ephemeral key + tag of the empty payload.
pub const MSG1_LEN: usize = KEY_LEN + TAG_LEN;
/// Length of msg2 (`e, ee`): ephemeral key + tag of the empty payload.
pub const MSG2_LEN: usize = KEY_LEN + TAG_LEN;
/// Shortest msg3 (`s, se`, empty first payload): encrypted static key + tag + payload tag.
pub const MSG3_MIN_LEN: usize = KEY_LEN + TAG_LEN + TAG_LEN;
/// Longest msg3: [`MSG3_MIN_LEN`] + [`MAX_PLAINTEXT`].
pub const MSG3_MAX_LEN: usize = MSG3_MIN_LEN + MAX_PLAINTEXT;
/// How many nonces behind the newest accepted one a frame may arrive and still be accepted.
pub const REPLAY_WINDOW: u64 = 64;

/// Why a handshake step, or a frame, was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    /// A handshake message or frame is not of a length this protocol produces.
    #[error(
        "end-to-end {what} is {len} bytes, expected {min}..={max}: malformed or truncated in \
         transit; drop it"
    )]
    BadLength {
        /// Which message.
        what: &'static str,
        /// Its length.
        len: usize,
        /// Shortest valid length.
        min: usize,
        /// Longest valid length.
        max: usize,
    },
    /// The caller's buffer cannot hold the frame or the plaintext.
    #[error("end-to-end buffer of {have} bytes is too small: {need} needed")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The Noise handshake failed at `step`: a wrong service key (stale record?), a message
    /// altered in transit, or a peer speaking another protocol version.
    #[error(
        "end-to-end handshake failed while {step}: {source} (wrong service key, or the message \
         was altered in transit; look the service record up again and start a new handshake)"
    )]
    Handshake {
        /// What was being done.
        step: Step,
        /// snow's reason.
        #[source]
        source: snow::Error,
    },
    /// The caller asked to send more than [`MAX_PLAINTEXT`] bytes in one frame.
    #[error("plaintext of {len} bytes is over the {max}-byte frame limit; split it into frames")]
    PlaintextTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame did not authenticate: forged, altered, truncated, or from another session.
    #[error(
        "end-to-end frame {nonce} failed authentication (forged, altered or from another session); dropped"
    )]
    Decrypt {
        /// The nonce the frame claimed.
        nonce: u64,
    },
    /// A frame with this nonce was already accepted.
    #[error("end-to-end frame {nonce} was already received (replay); dropped")]
    Replay {
        /// The repeated nonce.
        nonce: u64,
    },
    /// A frame arrived more than [`REPLAY_WINDOW`] nonces behind the newest accepted one.
    #[error(
        "end-to-end frame {nonce} is too old to check for replay (newest accepted: {newest}); \
         dropped"
    )]
    TooOld {
        /// The frame's nonce.
        nonce: u64,
        /// The newest nonce accepted so far.
        newest: u64,
    },
    /// This session has used every nonce in its sending direction.
    #[error("end-to-end session has sent its last frame (nonces exhausted); open a new session")]
    NonceExhausted,
    /// Encrypting a frame failed inside snow (not expected with valid sizes).
    #[error("end-to-end encryption of a frame failed: {source}")]
    Encrypt {
        /// snow's reason.
        #[source]
        source: snow::Error,
    },
}

/// A step of the handshake, for error context.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step {
    /// Setting up the handshake state.
    Setup,
    /// Writing msg1 (client).
    WriteMsg1,
    /// Reading msg1 (service).
    ReadMsg1,
    /// Writing msg2 (service).
    WriteMsg2,
    /// Reading msg2 (client).
    ReadMsg2,
    /// Writing msg3 (client).
    WriteMsg3,
    /// Reading msg3 (service).
    ReadMsg3,
    /// Switching to transport mode.
    Split,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Setup => "setting up the handshake",
            Step::WriteMsg1 => "writing the first message",
            Step::ReadMsg1 => "reading the client's first message",
            Step::WriteMsg2 => "writing the second message",
            Step::ReadMsg2 => "reading the service's reply",
            Step::WriteMsg3 => "writing the third message",
            Step::ReadMsg3 => "reading the client's third message",
            Step::Split => "switching to transport mode",
        })
    }
}

fn at(step: Step) -> impl FnOnce(snow::Error) -> E2eError {
    move |source| E2eError::Handshake { step, source }
}

fn check_len(what: &'static str, len: usize, min: usize, max: usize) -> Result<(), E2eError> {
    if (min..=max).contains(&len) {
        Ok(())
    } else {
        Err(E2eError::BadLength {
            what,
            len,
            min,
            max,
        })
    }
}

/// An X25519 static keypair for the end-to-end handshake.
///
/// A service publishes [`StaticKey::public`] as `noise_key` in its signed service record; a
/// client may use a long-lived key (so the service can recognise it) or a fresh one.
#[derive(Clone)]
pub struct StaticKey {
    secret: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl StaticKey {
    /// The keypair whose secret scalar is `secret` (clamped as X25519 does).
    pub fn from_secret(secret: [u8; KEY_LEN]) -> Self {
        let mut dh = Dh25519::new();
        dh.set(&secret);
        let mut public = [0; KEY_LEN];
        public.copy_from_slice(&dh.pubkey()[..KEY_LEN]);
        StaticKey { secret, public }
    }

    /// The public key: what the peer needs (published as `noise_key` by a service).
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.public
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// snow's X25519, resolved once. The default resolver always has it (the `use-curve25519`
/// feature is on in the workspace manifest, and `static_key_matches_rfc7748` checks it).
struct Dh25519(Box<dyn Dh>);

impl Dh25519 {
    fn new() -> Self {
        let dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("snow is built with the use-curve25519 feature");
        Dh25519(dh)
    }

    fn set(&mut self, secret: &[u8; KEY_LEN]) {
        self.0.set(secret);
    }

    fn pubkey(&self) -> &[u8] {
        self.0.pubkey()
    }
}

/// A snow [`CryptoResolver`] that makes the handshake deterministic: its RNG is a
/// `ChaCha20Rng` seeded by the caller; DH, cipher and hash are snow's [`DefaultResolver`]'s
/// (pure Rust), with DH results of all zeros refused.
///
/// snow resolves the RNG once per handshake state, so each handshake draws its ephemeral key
/// from the start of the seed's stream: never reuse a seed for two handshakes.
pub struct SeededResolver {
    seed: [u8; 32],
}

impl SeededResolver {
    /// A resolver whose RNG is seeded with `seed`.
    pub fn new(seed: [u8; 32]) -> Self {
        SeededResolver { seed }
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        let inner = DefaultResolver.resolve_dh(choice)?;
        Some(Box::new(NonZeroDh(inner)))
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// A DH that refuses an all-zero shared secret (a small-order public key from the peer).
struct NonZeroDh(Box<dyn Dh>);

impl Dh for NonZeroDh {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn pub_len(&self) -> usize {
        self.0.pub_len()
    }
    fn priv_len(&self) -> usize {
        self.0.priv_len()
    }
    fn set(&mut self, privkey: &[u8]) {
        self.0.set(privkey);
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        self.0.generate(rng)
    }
    fn pubkey(&self) -> &[u8] {
        self.0.pubkey()
    }
    fn privkey(&self) -> &[u8] {
        self.0.privkey()
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        self.0.dh(pubkey, out)?;
        let len = self.0.dh_len().min(out.len());
        // Constant time: no early exit on the first non-zero byte.
        if out[..len].iter().fold(0u8, |acc, b| acc | b) == 0 {
            return Err(snow::Error::Dh);
        }
        Ok(())
    }
    fn dh_len(&self) -> usize {
        self.0.dh_len()
    }
}

fn builder(seed: [u8; 32]) -> Result<snow::Builder<'static>, E2eError> {
    let params: NoiseParams = PATTERN.parse().map_err(at(Step::Setup))?;
    Ok(snow::Builder::with_resolver(
        params,
        Box::new(SeededResolver::new(seed)),
    ))
}

/// The client's side of a handshake, waiting for msg2.
pub struct Initiator {
    handshake: HandshakeState,
}

impl Initiator {
    /// Starts a handshake with the service whose static key is `remote_static` (the
    /// `noise_key` of its verified service record), drawing the ephemeral key from `seed`.
    /// Returns the state and msg1 ([`MSG1_LEN`] bytes) to send to the service.
    pub fn start(
        local: &StaticKey,
        remote_static: &[u8; KEY_LEN],
        seed: [u8; 32],
    ) -> Result<(Initiator, Vec<u8>), E2eError> {
        let mut handshake = builder(seed)?
            .local_private_key(&local.secret)
            .and_then(|b| b.remote_public_key(remote_static))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .map_err(at(Step::Setup))?;
        let mut msg1 = vec![0; MSG1_LEN];
        let len = handshake
            .write_message(&[], &mut msg1)
            .map_err(at(Step::WriteMsg1))?;
        msg1.truncate(len);
        Ok((Initiator { handshake }, msg1))
    }

    /// Reads the service's msg2 and writes msg3, which carries `first_payload` (at most
    /// [`MAX_PLAINTEXT`] bytes, encrypted and forward secret) so the first request needs no
    /// extra round trip. Returns the session and msg3 to send.
    pub fn finish(
        mut self,
        msg2: &[u8],
        first_payload: &[u8],
    ) -> Result<(Session, Vec<u8>), E2eError> {
        check_len("handshake message 2", msg2.len(), MSG2_LEN, MSG2_LEN)?;
        if first_payload.len() > MAX_PLAINTEXT {
            return Err(E2eError::PlaintextTooLarge {
                len: first_payload.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let mut payload = [0; MSG2_LEN];
        self.handshake
            .read_message(msg2, &mut payload)
            .map_err(at(Step::ReadMsg2))?;
        let mut msg3 = vec![0; MSG3_MIN_LEN + first_payload.len()];
        let len = self
            .handshake
            .write_message(first_payload, &mut msg3)
            .map_err(at(Step::WriteMsg3))?;
        msg3.truncate(len);
        Ok((Session::new(self.handshake)?, msg3))
    }
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator").finish_non_exhaustive()
    }
}

/// The service's side of a handshake, before msg1. Make one per incoming handshake.
pub struct Responder {
    local: StaticKey,
    seed: [u8; 32],
}

impl Responder {
    /// A responder with the service's static key `local` (whose public half is the record's
    /// `noise_key`), drawing its ephemeral key from `seed`.
    pub fn new(local: &StaticKey, seed: [u8; 32]) -> Self {
        Responder {
            local: local.clone(),
            seed,
        }
    }

    /// Reads a client's msg1 and writes msg2 ([`MSG2_LEN`] bytes). Fails when msg1 was not
    /// made for this service's key.
    ///
    /// Costs two X25519 operations before anything about the client is known: callers should
    /// bound the rate of handshakes they answer.
    pub fn respond(self, msg1: &[u8]) -> Result<(PendingResponder, Vec<u8>), E2eError> {
        check_len("handshake message 1", msg1.len(), MSG1_LEN, MSG1_LEN)?;
        let mut handshake = builder(self.seed)?
            .local_private_key(&self.local.secret)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .map_err(at(Step::Setup))?;
        let mut payload = [0; MSG1_LEN];
        handshake
            .read_message(msg1, &mut payload)
            .map_err(at(Step::ReadMsg1))?;
        let mut msg2 = vec![0; MSG2_LEN];
        let len = handshake
            .write_message(&[], &mut msg2)
            .map_err(at(Step::WriteMsg2))?;
        msg2.truncate(len);
        Ok((PendingResponder { handshake }, msg2))
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// The service's side of a handshake, waiting for msg3.
pub struct PendingResponder {
    handshake: HandshakeState,
}

impl PendingResponder {
    /// Reads the client's msg3. Returns the session and the client's first payload (possibly
    /// empty). [`Session::remote_static`] is then the client's static key, authenticated.
    pub fn finish(mut self, msg3: &[u8]) -> Result<(Session, Vec<u8>), E2eError> {
        check_len(
            "handshake message 3",
            msg3.len(),
            MSG3_MIN_LEN,
            MSG3_MAX_LEN,
        )?;
        let mut payload = vec![0; msg3.len()];
        let len = self
            .handshake
            .read_message(msg3, &mut payload)
            .map_err(at(Step::ReadMsg3))?;
        payload.truncate(len);
        Ok((Session::new(self.handshake)?, payload))
    }
}

impl fmt::Debug for PendingResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingResponder").finish_non_exhaustive()
    }
}

/// An established end-to-end session: encrypts frames to the peer and decrypts and
/// replay-checks frames from it. Frames may be lost or arrive out of order.
///
/// Frame layout: `nonce (u64, big-endian) ‖ ChaCha20-Poly1305(plaintext) ‖ tag (16 B)`,
/// [`FRAME_OVERHEAD`] = 24 bytes more than the plaintext.
pub struct Session {
    transport: StatelessTransportState,
    next_nonce: u64,
    window: ReplayWindow,
    remote_static: [u8; KEY_LEN],
    handshake_hash: [u8; KEY_LEN],
}

impl Session {
    fn new(handshake: HandshakeState) -> Result<Self, E2eError> {
        let mut remote_static = [0; KEY_LEN];
        let mut handshake_hash = [0; KEY_LEN];
        match handshake.get_remote_static() {
            Some(key) if key.len() == KEY_LEN => remote_static.copy_from_slice(key),
            _ => {
                return Err(E2eError::Handshake {
                    step: Step::Split,
                    source: snow::Error::Input,
                });
            }
        }
        let hash = handshake.get_handshake_hash();
        if hash.len() != KEY_LEN {
            return Err(E2eError::Handshake {
                step: Step::Split,
                source: snow::Error::Input,
            });
        }
        handshake_hash.copy_from_slice(hash);
        let transport = handshake
            .into_stateless_transport_mode()
            .map_err(at(Step::Split))?;
        Ok(Session {
            transport,
            next_nonce: 0,
            window: ReplayWindow::default(),
            remote_static,
            handshake_hash,
        })
    }

    /// The peer's static key: for the client, the service's `noise_key`; for the service, the
    /// client's key, authenticated by the handshake.
    pub fn remote_static(&self) -> &[u8; KEY_LEN] {
        &self.remote_static
    }

    /// The handshake hash: unique to this session and equal on both ends (channel binding,
    /// e.g. for signing with the peer id's key).
    pub fn handshake_hash(&self) -> &[u8; KEY_LEN] {
        &self.handshake_hash
    }

    /// Whether this end started the handshake (the client).
    pub fn is_initiator(&self) -> bool {
        self.transport.is_initiator()
    }

    /// Encrypts `plaintext` (at most [`MAX_PLAINTEXT`] bytes) into one frame for the peer.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, E2eError> {
        self.seal(plaintext, MAX_PLAINTEXT)
    }

    /// Encrypts up to [`MAX_CHUNK`] bytes into one frame, for a stream the driver carries.
    pub fn encrypt_chunk(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, E2eError> {
        self.seal(plaintext, MAX_CHUNK)
    }

    /// Encrypts up to [`MAX_CHUNK`] bytes into `out`, which must hold at least
    /// `plaintext.len() + FRAME_OVERHEAD` bytes; returns the frame's length. For a driver that
    /// reuses one buffer for every frame of a stream (no allocation, no second copy).
    pub fn encrypt_chunk_to(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, E2eError> {
        self.seal_to(plaintext, MAX_CHUNK, out)
    }

    fn seal(&mut self, plaintext: &[u8], max: usize) -> Result<Vec<u8>, E2eError> {
        let mut frame = vec![0; FRAME_OVERHEAD + plaintext.len()];
        let len = self.seal_to(plaintext, max, &mut frame)?;
        frame.truncate(len);
        Ok(frame)
    }

    fn seal_to(&mut self, plaintext: &[u8], max: usize, out: &mut [u8]) -> Result<usize, E2eError> {
        if plaintext.len() > max {
            return Err(E2eError::PlaintextTooLarge {
                len: plaintext.len(),
                max,
            });
        }
        let need = FRAME_OVERHEAD + plaintext.len();
        let Some(frame) = out.get_mut(..need) else {
            return Err(E2eError::BufferTooSmall {
                need,
                have: out.len(),
            });
        };
        // u64::MAX is reserved by Noise (it keys `rekey`).
        let nonce = self.next_nonce;
        if nonce == u64::MAX {
            return Err(E2eError::NonceExhausted);
        }
        let (head, body) = frame.split_at_mut(NONCE_LEN);
        head.copy_from_slice(&nonce.to_be_bytes());
        let len = self
            .transport
            .write_message(nonce, plaintext, body)
            .map_err(|source| E2eError::Encrypt { source })?;
        self.next_nonce += 1;
        Ok(NONCE_LEN + len)
    }

    /// Decrypts one frame from the peer. Refuses frames that are malformed, do not
    /// authenticate, or were already accepted (or are too old to tell); the session is
    /// unaffected by a refused frame.
    pub fn decrypt(&mut self, frame: &[u8]) -> Result<Vec<u8>, E2eError> {
        self.open(frame, MAX_FRAME)
    }

    /// Decrypts one frame of up to [`MAX_CHUNK_FRAME`] bytes, from a stream.
    pub fn decrypt_chunk(&mut self, frame: &[u8]) -> Result<Vec<u8>, E2eError> {
        self.open(frame, MAX_CHUNK_FRAME)
    }

    /// Decrypts one frame of up to [`MAX_CHUNK_FRAME`] bytes into `out`, which must hold at
    /// least `frame.len() - FRAME_OVERHEAD` bytes; returns the plaintext's length. Refuses what
    /// [`Session::decrypt_chunk`] refuses.
    pub fn decrypt_chunk_to(&mut self, frame: &[u8], out: &mut [u8]) -> Result<usize, E2eError> {
        self.open_to(frame, MAX_CHUNK_FRAME, out)
    }

    fn open(&mut self, frame: &[u8], max: usize) -> Result<Vec<u8>, E2eError> {
        let mut plaintext = vec![0; frame.len().saturating_sub(FRAME_OVERHEAD)];
        let len = self.open_to(frame, max, &mut plaintext)?;
        plaintext.truncate(len);
        Ok(plaintext)
    }

    fn open_to(&mut self, frame: &[u8], max: usize, out: &mut [u8]) -> Result<usize, E2eError> {
        check_len("frame", frame.len(), FRAME_OVERHEAD, max)?;
        let (head, body) = frame.split_at(NONCE_LEN);
        let need = body.len() - TAG_LEN;
        let Some(out) = out.get_mut(..need) else {
            return Err(E2eError::BufferTooSmall {
                need,
                have: out.len(),
            });
        };
        let mut nonce_bytes = [0; NONCE_LEN];
        nonce_bytes.copy_from_slice(head);
        let nonce = u64::from_be_bytes(nonce_bytes);
        if nonce == u64::MAX {
            return Err(E2eError::Decrypt { nonce });
        }
        self.window.check(nonce)?;
        let len = self
            .transport
            .read_message(nonce, body, out)
            .map_err(|_| E2eError::Decrypt { nonce })?;
        self.window.accept(nonce);
        Ok(len)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("initiator", &self.is_initiator())
            .field("next_nonce", &self.next_nonce)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// Which received nonces were accepted: the newest, and a bitmap of the [`REPLAY_WINDOW`]
/// nonces up to it (bit `i` set = `newest - i` accepted). A pure data structure.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct ReplayWindow {
    newest: Option<u64>,
    seen: u64,
}

impl ReplayWindow {
    /// Whether `nonce` may be accepted; does not record it.
    fn check(&self, nonce: u64) -> Result<(), E2eError> {
        let Some(newest) = self.newest else {
            return Ok(());
        };
        if nonce > newest {
            return Ok(());
        }
        let age = newest - nonce;
        if age >= REPLAY_WINDOW {
            Err(E2eError::TooOld { nonce, newest })
        } else if self.seen >> age & 1 == 1 {
            Err(E2eError::Replay { nonce })
        } else {
            Ok(())
        }
    }

    /// Records `nonce` as accepted (after [`ReplayWindow::check`] and authentication).
    fn accept(&mut self, nonce: u64) {
        match self.newest {
            Some(newest) if nonce <= newest => {
                let age = newest - nonce;
                if age < REPLAY_WINDOW {
                    self.seen |= 1 << age;
                }
            }
            Some(newest) => {
                let shift = nonce - newest;
                self.seen = if shift >= REPLAY_WINDOW {
                    1
                } else {
                    self.seen << shift | 1
                };
                self.newest = Some(nonce);
            }
            None => {
                self.seen = 1;
                self.newest = Some(nonce);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    const SECRET: &[u8] = b"beam-e2e canary: the quick brown fox pays 4242 to carol at noon";

    fn keys() -> (StaticKey, StaticKey) {
        (
            StaticKey::from_secret([1; 32]),
            StaticKey::from_secret([2; 32]),
        )
    }

    /// Everything that crosses the relay path, in order.
    #[derive(Default)]
    struct Wire(Vec<Vec<u8>>);

    impl Wire {
        fn carry(&mut self, bytes: Vec<u8>) -> Vec<u8> {
            self.0.push(bytes.clone());
            bytes
        }
    }

    /// A full handshake with `first` in msg3; every message is recorded on `wire`.
    fn handshake(seed: u8, first: &[u8], wire: &mut Wire) -> (Session, Session, Vec<u8>) {
        let (client, service) = keys();
        let (initiator, msg1) =
            Initiator::start(&client, &service.public(), [seed; 32]).expect("start");
        let msg1 = wire.carry(msg1);
        let responder = Responder::new(&service, [seed.wrapping_add(1); 32]);
        let (pending, msg2) = responder.respond(&msg1).expect("respond");
        let msg2 = wire.carry(msg2);
        let (client_session, msg3) = initiator.finish(&msg2, first).expect("finish");
        let msg3 = wire.carry(msg3);
        let (service_session, payload) = pending.finish(&msg3).expect("accept");
        (client_session, service_session, payload)
    }

    fn pair() -> (Session, Session) {
        let (c, s, _) = handshake(7, b"", &mut Wire::default());
        (c, s)
    }

    #[test]
    fn frames_sealed_into_a_buffer_are_the_allocated_ones_and_small_buffers_are_refused() {
        let (mut a, mut b) = pair();
        let (mut a2, mut b2) = pair();
        let plain = vec![0x42u8; 1000];
        let mut out = vec![0u8; MAX_CHUNK_FRAME];
        let len = a.encrypt_chunk_to(&plain, &mut out).expect("seal");
        let frame = a2.encrypt_chunk(&plain).expect("seal");
        assert_eq!(&out[..len], &frame[..], "same session state, same frame");
        let mut back = vec![0u8; MAX_CHUNK];
        let n = b.decrypt_chunk_to(&out[..len], &mut back).expect("open");
        assert_eq!(&back[..n], &plain[..]);
        assert_eq!(b2.decrypt_chunk(&frame).expect("open"), plain);
        // Too small a buffer either way: refused, and the session goes on.
        let mut tiny = [0u8; 16];
        assert!(matches!(
            a.encrypt_chunk_to(&plain, &mut tiny),
            Err(E2eError::BufferTooSmall { .. })
        ));
        let len = a
            .encrypt_chunk_to(&plain, &mut out)
            .expect("seal after a refusal");
        assert!(matches!(
            b.decrypt_chunk_to(&out[..len], &mut tiny),
            Err(E2eError::BufferTooSmall { .. })
        ));
        let n = b
            .decrypt_chunk_to(&out[..len], &mut back)
            .expect("open after a refusal");
        assert_eq!(&back[..n], &plain[..]);
    }

    #[test]
    fn static_key_matches_rfc7748() {
        // RFC 7748 §6.1, Alice's keypair.
        let secret = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        assert_eq!(StaticKey::from_secret(secret).public(), public);
    }

    #[test]
    fn handshake_then_both_directions() {
        let (client, service) = keys();
        let (mut c, mut s, first) = handshake(1, b"GET / HTTP/1.1", &mut Wire::default());
        assert_eq!(first, b"GET / HTTP/1.1");
        assert!(c.is_initiator() && !s.is_initiator());
        assert_eq!(c.remote_static(), &service.public());
        assert_eq!(s.remote_static(), &client.public());
        assert_eq!(c.handshake_hash(), s.handshake_hash());

        for i in 0..10u8 {
            let up = vec![i; usize::from(i) * 100];
            let frame = c.encrypt(&up).expect("encrypt");
            assert_eq!(frame.len(), up.len() + FRAME_OVERHEAD);
            assert_eq!(s.decrypt(&frame).expect("decrypt"), up);
            let down = vec![i ^ 0xff; 4096 - usize::from(i)];
            let frame = s.encrypt(&down).expect("encrypt");
            assert_eq!(c.decrypt(&frame).expect("decrypt"), down);
        }
    }

    #[test]
    fn handshake_message_sizes() {
        let mut wire = Wire::default();
        handshake(3, &[9; 100], &mut wire);
        let sizes: Vec<usize> = wire.0.iter().map(Vec::len).collect();
        assert_eq!(sizes, [MSG1_LEN, MSG2_LEN, MSG3_MIN_LEN + 100]);
        assert_eq!(
            (MSG1_LEN, MSG2_LEN, MSG3_MIN_LEN, FRAME_OVERHEAD),
            (48, 48, 64, 24)
        );
    }

    #[test]
    fn wrong_service_key_fails_the_handshake() {
        let (client, service) = keys();
        let impostor = StaticKey::from_secret([3; 32]);
        // The client expects `impostor`, but `service` answers.
        let (_, msg1) = Initiator::start(&client, &impostor.public(), [4; 32]).expect("start");
        let err = Responder::new(&service, [5; 32])
            .respond(&msg1)
            .expect_err("msg1 for another key");
        assert!(
            matches!(
                err,
                E2eError::Handshake {
                    step: Step::ReadMsg1,
                    ..
                }
            ),
            "{err}"
        );

        // A relay that impersonates the service with its own key cannot answer either: its
        // msg2 is made from a msg1 it could not read, so it has nothing to send. Even a msg2
        // from another session with the real service is refused.
        let (initiator, _) = Initiator::start(&client, &service.public(), [6; 32]).expect("start");
        let (_, other_msg1) = Initiator::start(&client, &service.public(), [7; 32]).expect("start");
        let (_, other_msg2) = Responder::new(&service, [8; 32])
            .respond(&other_msg1)
            .expect("respond");
        let err = initiator
            .finish(&other_msg2, b"")
            .expect_err("foreign msg2");
        assert!(
            matches!(
                err,
                E2eError::Handshake {
                    step: Step::ReadMsg2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn small_order_keys_are_refused() {
        let (client, service) = keys();
        let err = Initiator::start(&client, &[0; 32], [1; 32]).expect_err("zero key");
        assert!(matches!(err, E2eError::Handshake { .. }), "{err}");
        // A small-order ephemeral in msg1 (the point 0): refused at the DH, before the tag.
        let err = Responder::new(&service, [1; 32])
            .respond(&[0; MSG1_LEN])
            .expect_err("zero ephemeral");
        assert!(
            matches!(
                err,
                E2eError::Handshake {
                    step: Step::ReadMsg1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn replayed_frames_are_rejected() {
        let (mut c, mut s) = pair();
        let frame = c.encrypt(b"once").expect("encrypt");
        assert_eq!(s.decrypt(&frame).expect("first"), b"once");
        let err = s.decrypt(&frame).expect_err("replay");
        assert!(matches!(err, E2eError::Replay { nonce: 0 }), "{err}");
        // Still a replay after later frames arrived.
        let later = c.encrypt(b"later").expect("encrypt");
        s.decrypt(&later).expect("later");
        assert!(matches!(
            s.decrypt(&frame),
            Err(E2eError::Replay { nonce: 0 })
        ));
    }

    #[test]
    fn reordered_and_lost_frames_are_accepted() {
        let (mut c, mut s) = pair();
        let frames: Vec<Vec<u8>> = (0..8u8)
            .map(|i| c.encrypt(&[i; 3]).expect("encrypt"))
            .collect();
        // 2 and 6 are lost; the rest arrive out of order.
        for i in [3usize, 0, 7, 1, 5, 4] {
            assert_eq!(s.decrypt(&frames[i]).expect("in window"), [i as u8; 3]);
        }
    }

    #[test]
    fn frames_older_than_the_window_are_rejected() {
        let (mut c, mut s) = pair();
        let frames: Vec<Vec<u8>> = (0..=REPLAY_WINDOW)
            .map(|_| c.encrypt(b"x").expect("encrypt"))
            .collect();
        s.decrypt(&frames[REPLAY_WINDOW as usize]).expect("newest");
        let err = s.decrypt(&frames[0]).expect_err("too old");
        assert!(
            matches!(
                err,
                E2eError::TooOld {
                    nonce: 0,
                    newest: 64
                }
            ),
            "{err}"
        );
        s.decrypt(&frames[1]).expect("just inside the window");
    }

    #[test]
    fn frames_do_not_cross_sessions_or_directions() {
        let (mut c, mut s) = pair();
        let (mut c2, _, _) = handshake(9, b"", &mut Wire::default());
        let frame = c2.encrypt(b"elsewhere").expect("encrypt");
        assert!(matches!(
            s.decrypt(&frame),
            Err(E2eError::Decrypt { nonce: 0 })
        ));
        // Reflected back to its sender.
        let frame = c.encrypt(b"mine").expect("encrypt");
        assert!(matches!(c.decrypt(&frame), Err(E2eError::Decrypt { .. })));
        // A rejected forgery does not burn the nonce: the real frame still gets in.
        assert_eq!(s.decrypt(&frame).expect("genuine"), b"mine");
    }

    #[test]
    fn sizes_are_bounded() {
        let (mut c, mut s) = pair();
        let err = c.encrypt(&[0; MAX_PLAINTEXT + 1]).expect_err("too large");
        assert!(matches!(
            err,
            E2eError::PlaintextTooLarge {
                len: 4097,
                max: 4096
            }
        ));
        let frame = c.encrypt(&[0; MAX_PLAINTEXT]).expect("largest");
        assert_eq!(frame.len(), MAX_FRAME);
        s.decrypt(&frame).expect("largest");
        assert!(matches!(
            s.decrypt(&[0; MAX_FRAME + 1]),
            Err(E2eError::BadLength { .. })
        ));
        assert!(matches!(
            s.decrypt(&[0; FRAME_OVERHEAD - 1]),
            Err(E2eError::BadLength { .. })
        ));
        // An empty plaintext is a valid (keep-alive) frame.
        let empty = c.encrypt(b"").expect("empty");
        assert_eq!(s.decrypt(&empty).expect("empty"), b"");

        let (client, service) = keys();
        let (initiator, _) = Initiator::start(&client, &service.public(), [1; 32]).expect("start");
        let err = initiator
            .finish(&[0; MSG2_LEN], &[0; MAX_PLAINTEXT + 1])
            .expect_err("first payload too large");
        assert!(matches!(err, E2eError::PlaintextTooLarge { .. }));
    }

    #[test]
    fn a_relay_sees_no_plaintext() {
        let mut wire = Wire::default();
        let (mut c, mut s, first) = handshake(11, SECRET, &mut wire);
        assert_eq!(first, SECRET);
        for _ in 0..3 {
            let frame = wire.carry(c.encrypt(SECRET).expect("encrypt"));
            assert_eq!(s.decrypt(&frame).expect("decrypt"), SECRET);
            let frame = wire.carry(s.encrypt(SECRET).expect("encrypt"));
            assert_eq!(c.decrypt(&frame).expect("decrypt"), SECRET);
        }
        let (client, _) = keys();
        let mut everything: Vec<Vec<u8>> = wire.0.clone();
        everything.push(wire.0.concat());
        for seen in &everything {
            for len in 8..=SECRET.len() {
                for piece in SECRET.windows(len) {
                    assert!(
                        !seen.windows(len).any(|w| w == piece),
                        "relay saw plaintext {:?}",
                        String::from_utf8_lossy(piece)
                    );
                }
            }
            // The client's static key travels encrypted too.
            let key = client.public();
            assert!(!seen.windows(8).any(|w| key.windows(8).any(|k| k == w)));
        }
    }

    #[test]
    fn same_seed_same_bytes() {
        fn run(seed: u8) -> Vec<Vec<u8>> {
            let mut wire = Wire::default();
            let (mut c, mut s, _) = handshake(seed, b"first", &mut wire);
            for i in 0..4u8 {
                wire.carry(c.encrypt(&[i; 10]).expect("encrypt"));
                wire.carry(s.encrypt(&[i; 20]).expect("encrypt"));
            }
            wire.0
        }
        assert_eq!(run(21), run(21));
        assert_ne!(run(21)[0], run(22)[0]);
    }

    /// Feeds `bytes` to every input of the protocol; none may panic.
    fn feed_everywhere(bytes: &[u8]) -> Vec<bool> {
        let (client, service) = keys();
        let (mut c, mut s) = pair();
        let (initiator, _) = Initiator::start(&client, &service.public(), [1; 32]).expect("start");
        let (_, msg1) = Initiator::start(&client, &service.public(), [2; 32]).expect("start");
        let (pending, _) = Responder::new(&service, [3; 32])
            .respond(&msg1)
            .expect("respond");
        vec![
            Responder::new(&service, [4; 32]).respond(bytes).is_ok(),
            initiator.finish(bytes, b"x").is_ok(),
            pending.finish(bytes).is_ok(),
            c.decrypt(bytes).is_ok(),
            s.decrypt(bytes).is_ok(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_bytes_are_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            // msg1 is the only message a stranger can forge: an X25519 key plus a tag under a
            // key derived from it. Random bytes pass with probability 2^-128.
            prop_assert!(feed_everywhere(&bytes).iter().all(|ok| !ok));
        }

        #[test]
        fn truncated_or_flipped_messages_are_rejected(
            seed in any::<u8>(),
            which in 0usize..5,
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            truncate in any::<bool>(),
        ) {
            let (client, service) = keys();
            let mut wire = Wire::default();
            let (initiator, msg1) =
                Initiator::start(&client, &service.public(), [seed; 32]).expect("start");
            let (pending, msg2) = Responder::new(&service, [seed ^ 0x55; 32])
                .respond(&msg1)
                .expect("respond");
            let (mut c, msg3) = initiator.finish(&msg2, b"first payload").expect("finish");
            let (mut s, _) = pending.finish(&msg3).expect("accept");
            let up = c.encrypt(b"client to service").expect("encrypt");
            let down = s.encrypt(b"service to client").expect("encrypt");
            let original = [&msg1, &msg2, &msg3, &up, &down][which].clone();
            let mut bad = wire.carry(original);
            if truncate {
                bad.truncate(cut.index(bad.len()));
            } else {
                let i = flip.index(bad.len());
                bad[i] ^= 1 << bit;
            }

            // Rebuild the state that receives `which`, and hand it the damaged message.
            let rejected = match which {
                0 => Responder::new(&service, [0; 32]).respond(&bad).is_err(),
                1 => Initiator::start(&client, &service.public(), [seed; 32])
                    .expect("start")
                    .0
                    .finish(&bad, b"")
                    .is_err(),
                2 => {
                    let (initiator, msg1) =
                        Initiator::start(&client, &service.public(), [seed; 32]).expect("start");
                    let (pending, msg2) = Responder::new(&service, [seed ^ 0x55; 32])
                        .respond(&msg1)
                        .expect("respond");
                    initiator.finish(&msg2, b"first payload").expect("finish");
                    pending.finish(&bad).is_err()
                }
                3 => s.decrypt(&bad).is_err(),
                _ => c.decrypt(&bad).is_err(),
            };
            prop_assert!(rejected);
        }

        #[test]
        fn replay_window_matches_a_model(nonces in proptest::collection::vec(0u64..200, 0..300)) {
            let mut window = ReplayWindow::default();
            let mut accepted = BTreeSet::new();
            for n in nonces {
                let newest = accepted.last().copied();
                let expect_ok = !accepted.contains(&n)
                    && newest.is_none_or(|top| n > top || top - n < REPLAY_WINDOW);
                let got = window.check(n);
                prop_assert_eq!(got.is_ok(), expect_ok, "nonce {} newest {:?}", n, newest);
                if got.is_ok() {
                    window.accept(n);
                    accepted.insert(n);
                }
            }
        }

        #[test]
        fn any_delivery_order_within_the_window_is_accepted(
            order in Just((0u8..32).collect::<Vec<u8>>()).prop_shuffle(),
        ) {
            let (mut c, mut s) = pair();
            let frames: Vec<Vec<u8>> = (0u8..32).map(|i| c.encrypt(&[i]).expect("encrypt")).collect();
            for i in order {
                prop_assert_eq!(s.decrypt(&frames[usize::from(i)]).expect("accepted"), vec![i]);
            }
        }
    }
}
