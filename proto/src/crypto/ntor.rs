//! The per-hop circuit handshake, "allium-ntor-v1".
//!
//! One-way authenticated (the client learns it is talking to the holder of the relay's onion key;
//! the relay learns nothing about the client) and forward secret (once both sides drop their
//! ephemeral secrets, recording the handshake and later stealing the onion key does not reveal the
//! hop keys). It has the shape of Tor's ntor handshake, with Allium's own labels and with both
//! extension fields bound into the transcript.
//!
//! Notation: `ID` is the relay's ed25519 identity key (32 bytes, used here as an opaque name),
//! `b`/`B` its x25519 onion key pair, `x`/`X` the client's ephemeral pair, `y`/`Y` the relay's
//! ephemeral pair, `DH(p, s)` the x25519 function, `HMAC(k, m)` HMAC-SHA256 with key `k`,
//! `BE16(n)` a big-endian u16, `|` concatenation.
//!
//! ```text
//! client message = ID(32) | B(32) | X(32) | BE16(len CEXT) | CEXT
//! server reply   = Y(32) | AUTH(32) | BE16(len SEXT) | SEXT
//!
//! secret_input = DH(X, y) | DH(X, b) | ID | B | X | Y | PROTOID
//!                | BE16(len CEXT) | CEXT | BE16(len SEXT) | SEXT
//!   (the client computes DH(Y, x) | DH(B, x), the same values)
//! KEY_SEED   = HMAC(T_KEY,    secret_input)
//! verify     = HMAC(T_VERIFY, secret_input)
//! auth_input = verify | ID | B | Y | X | PROTOID | "Server"
//! AUTH       = HMAC(T_MAC,    auth_input)
//! hop keys   = derive_hop_keys(KEY_SEED)        (see super::kdf)
//! ```
//!
//! with `PROTOID = "allium-ntor-v1"`, `T_KEY = "allium-ntor-v1:key_seed"`,
//! `T_VERIFY = "allium-ntor-v1:verify"`, `T_MAC = "allium-ntor-v1:auth"` (ASCII, no NUL).
//! `CEXT`/`SEXT` are the client and server extension fields, opaque here, at most
//! [`MAX_EXT_LEN`] bytes each. They are authenticated (a changed byte makes `AUTH` fail) but not
//! encrypted: the previous hop of the circuit relays them and can read them.
//!
//! Both sides reject an all-zero DH output (a low-order `X`, `Y` or `B`). Every
//! [`HandshakeError`] is the peer's fault and ends the circuit: a relay answers a bad client
//! message with DESTROY and keeps no state; a client that cannot finish destroys the circuit.

use super::kdf::{derive_hop_keys, wipe, HopKeys};
use crate::ids::RelayId;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;
use super::x25519;
use x25519_dalek::{PublicKey, StaticSecret};

/// Handshake type number of this handshake in CREATE2/EXTEND2.
pub const HTYPE_NTOR: u16 = 1;
/// The protocol identifier, bound into every HMAC input.
pub const PROTOID: &[u8] = b"allium-ntor-v1";
/// HMAC key for `KEY_SEED`.
pub const T_KEY: &[u8] = b"allium-ntor-v1:key_seed";
/// HMAC key for `verify`.
pub const T_VERIFY: &[u8] = b"allium-ntor-v1:verify";
/// HMAC key for `AUTH`.
pub const T_MAC: &[u8] = b"allium-ntor-v1:auth";
/// The role string at the end of `auth_input`.
pub const SERVER_STR: &[u8] = b"Server";
/// Largest client or server extension field, in bytes.
pub const MAX_EXT_LEN: usize = 1024;
/// Length of a client message with an empty extension field.
pub const CLIENT_MSG_MIN_LEN: usize = 32 * 3 + 2;
/// Length of a server reply with an empty extension field.
pub const SERVER_REPLY_MIN_LEN: usize = 32 * 2 + 2;
/// Largest client message.
pub const CLIENT_MSG_MAX_LEN: usize = CLIENT_MSG_MIN_LEN + MAX_EXT_LEN;
/// Largest server reply.
pub const SERVER_REPLY_MAX_LEN: usize = SERVER_REPLY_MIN_LEN + MAX_EXT_LEN;

/// Why a handshake message was refused. Every variant is the fault of the peer that sent the
/// message; all of them close the circuit (a relay answers with DESTROY, a client destroys it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The message has the wrong length, or its extension length field is inconsistent or above
    /// [`MAX_EXT_LEN`].
    #[error("peer sent a malformed ntor message (bad length)")]
    Malformed,
    /// The client message names a relay identity or onion key that is not this relay's
    /// (possibly a client with a stale directory).
    #[error("peer's ntor message is for another relay identity or onion key")]
    WrongRelay,
    /// The client's key is not a point of Curve25519 (it is on the curve's twist); no honest
    /// client sends one.
    #[error("peer sent a key that is not on Curve25519")]
    NotOnCurve,
    /// A Diffie-Hellman output was all zero: the peer sent a low-order point.
    #[error("peer sent a low-order key (non-contributory Diffie-Hellman)")]
    NonContributory,
    /// The relay's AUTH did not verify: wrong onion key, or the reply or an extension field was
    /// altered.
    #[error("relay's ntor AUTH did not verify")]
    BadAuth,
}

/// The client's state between sending its message and receiving the reply.
pub struct NtorClient {
    x: StaticSecret,
    public_x: [u8; 32],
    relay_id: [u8; 32],
    onion_key: [u8; 32],
    client_ext: Vec<u8>,
}

impl fmt::Debug for NtorClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NtorClient")
            .field("relay", &RelayId(self.relay_id))
            .finish_non_exhaustive()
    }
}

/// One onion key of this relay: the current one, or a recently rotated one.
#[derive(Clone, Copy)]
pub struct OnionKeyPair<'a> {
    /// `B`; must be the public key of `secret`.
    pub public: [u8; 32],
    /// `b`.
    pub secret: &'a StaticSecret,
}

impl<'a> OnionKeyPair<'a> {
    /// Pairs a secret with its public key.
    pub fn from_secret(secret: &'a StaticSecret) -> Self {
        OnionKeyPair {
            public: PublicKey::from(secret).to_bytes(),
            secret,
        }
    }
}

impl fmt::Debug for OnionKeyPair<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OnionKeyPair({})", hex::encode(self.public))
    }
}

/// What a relay gets from a valid client message.
#[derive(Debug)]
pub struct ServerOutcome {
    /// The reply to send back (CREATED2 payload).
    pub reply: Vec<u8>,
    /// The hop keys shared with the client.
    pub keys: HopKeys,
    /// The client's extension field (authenticated to the client only after it finishes).
    pub client_ext: Vec<u8>,
}

fn encode_ext(out: &mut Vec<u8>, ext: &[u8]) {
    // Callers check `ext.len() <= MAX_EXT_LEN`, which fits in a u16.
    out.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    out.extend_from_slice(ext);
}

/// Splits `BE16(len) | ext` that must fill `rest` exactly.
fn decode_ext(rest: &[u8]) -> Result<&[u8], HandshakeError> {
    let (len, ext) = rest
        .split_first_chunk::<2>()
        .ok_or(HandshakeError::Malformed)?;
    let len = u16::from_be_bytes(*len) as usize;
    if len > MAX_EXT_LEN || ext.len() != len {
        return Err(HandshakeError::Malformed);
    }
    Ok(ext)
}

/// False for an all-zero DH output (the peer sent a low-order point); constant time.
fn contributory(dh: &[u8; 32]) -> bool {
    !bool::from(dh.ct_eq(&[0u8; 32]))
}

fn arr32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(b);
    a
}

/// The public part of the transcript, shared by both sides.
struct Transcript<'a> {
    id: &'a [u8; 32],
    b: &'a [u8; 32],
    x: &'a [u8; 32],
    y: &'a [u8; 32],
    client_ext: &'a [u8],
    server_ext: &'a [u8],
}

/// Computes `(KEY_SEED, AUTH)` from the two DH outputs and the transcript.
fn key_seed_and_auth(
    dh_y: &[u8; 32],
    dh_b: &[u8; 32],
    t: &Transcript<'_>,
) -> ([u8; 32], [u8; 32]) {
    let secret_input_mac = |label: &[u8]| -> [u8; 32] {
        let mut m = Hmac::<Sha256>::new_from_slice(label).expect("HMAC takes any key length");
        m.update(dh_y);
        m.update(dh_b);
        m.update(t.id);
        m.update(t.b);
        m.update(t.x);
        m.update(t.y);
        m.update(PROTOID);
        m.update(&(t.client_ext.len() as u16).to_be_bytes());
        m.update(t.client_ext);
        m.update(&(t.server_ext.len() as u16).to_be_bytes());
        m.update(t.server_ext);
        m.finalize().into_bytes().into()
    };
    let key_seed = secret_input_mac(T_KEY);
    let mut verify = secret_input_mac(T_VERIFY);
    let mut m = Hmac::<Sha256>::new_from_slice(T_MAC).expect("HMAC takes any key length");
    m.update(&verify);
    m.update(t.id);
    m.update(t.b);
    m.update(t.y);
    m.update(t.x);
    m.update(PROTOID);
    m.update(SERVER_STR);
    let auth = m.finalize().into_bytes().into();
    wipe(&mut verify);
    (key_seed, auth)
}

/// Starts a handshake with the relay `relay_id` whose onion key is `onion_key`.
/// Returns the client state and the client message (the CREATE2/EXTEND2 handshake data).
///
/// # Panics
/// If `client_ext` is longer than [`MAX_EXT_LEN`] (a bug in the caller's encoding).
pub fn client_start<R: RngCore + CryptoRng>(
    rng: &mut R,
    relay_id: &RelayId,
    onion_key: &[u8; 32],
    client_ext: &[u8],
) -> (NtorClient, Vec<u8>) {
    let mut x = [0u8; 32];
    rng.fill_bytes(&mut x);
    client_start_with_secret(x, relay_id, onion_key, client_ext)
}

/// [`client_start`] with a given ephemeral secret `x`, for known-answer tests only.
/// Never reuse `x`.
#[doc(hidden)]
pub fn client_start_with_secret(
    mut x: [u8; 32],
    relay_id: &RelayId,
    onion_key: &[u8; 32],
    client_ext: &[u8],
) -> (NtorClient, Vec<u8>) {
    assert!(
        client_ext.len() <= MAX_EXT_LEN,
        "ntor client extension of {} bytes exceeds {MAX_EXT_LEN}",
        client_ext.len()
    );
    let secret = StaticSecret::from(x);
    wipe(&mut x);
    let public_x = PublicKey::from(&secret).to_bytes();
    let mut msg = Vec::with_capacity(CLIENT_MSG_MIN_LEN + client_ext.len());
    msg.extend_from_slice(&relay_id.0);
    msg.extend_from_slice(onion_key);
    msg.extend_from_slice(&public_x);
    encode_ext(&mut msg, client_ext);
    let client = NtorClient {
        x: secret,
        public_x,
        relay_id: relay_id.0,
        onion_key: *onion_key,
        client_ext: client_ext.to_vec(),
    };
    (client, msg)
}

/// Answers a client message as relay `my_id` holding the onion keys `keys` (the current one and,
/// during rotation, previous ones; the message names which `B` it used).
///
/// On error, send DESTROY and keep nothing: every error is the client's fault.
///
/// # Panics
/// If `server_ext` is longer than [`MAX_EXT_LEN`] (a bug in the caller's encoding).
pub fn server_respond<R: RngCore + CryptoRng>(
    rng: &mut R,
    my_id: &RelayId,
    keys: &[OnionKeyPair<'_>],
    msg: &[u8],
    server_ext: &[u8],
) -> Result<ServerOutcome, HandshakeError> {
    let mut y = [0u8; 32];
    rng.fill_bytes(&mut y);
    server_respond_with_secret(y, my_id, keys, msg, server_ext)
}

/// [`server_respond`] with a given ephemeral secret `y`, for known-answer tests only.
/// Never reuse `y`.
#[doc(hidden)]
pub fn server_respond_with_secret(
    mut y: [u8; 32],
    my_id: &RelayId,
    keys: &[OnionKeyPair<'_>],
    msg: &[u8],
    server_ext: &[u8],
) -> Result<ServerOutcome, HandshakeError> {
    assert!(
        server_ext.len() <= MAX_EXT_LEN,
        "ntor server extension of {} bytes exceeds {MAX_EXT_LEN}",
        server_ext.len()
    );
    let result = respond(&y, my_id, keys, msg, server_ext);
    wipe(&mut y);
    result
}

fn respond(
    y: &[u8; 32],
    my_id: &RelayId,
    keys: &[OnionKeyPair<'_>],
    msg: &[u8],
    server_ext: &[u8],
) -> Result<ServerOutcome, HandshakeError> {
    if msg.len() < CLIENT_MSG_MIN_LEN {
        return Err(HandshakeError::Malformed);
    }
    let (id, rest) = msg.split_at(32);
    let (b, rest) = rest.split_at(32);
    let (x, rest) = rest.split_at(32);
    let client_ext = decode_ext(rest)?;
    let (id, b, x) = (arr32(id), arr32(b), arr32(x));

    if id != my_id.0 {
        return Err(HandshakeError::WrongRelay);
    }
    let onion = keys
        .iter()
        .find(|k| k.public == b)
        .ok_or(HandshakeError::WrongRelay)?;

    let mut b_secret = onion.secret.to_bytes();
    let both = x25519::two_scalars_one_point(y, &b_secret, &x);
    wipe(&mut b_secret);
    let (mut dh_y, mut dh_b) = both.ok_or(HandshakeError::NotOnCurve)?;
    let outcome = finish_response(y, &dh_y, &dh_b, (&id, &b, &x), client_ext, server_ext);
    wipe(&mut dh_y);
    wipe(&mut dh_b);
    outcome
}

/// The server's reply and keys from the two DH outputs; `named` is the message's `(ID, B, X)`.
fn finish_response(
    y: &[u8; 32],
    dh_y: &[u8; 32],
    dh_b: &[u8; 32],
    named: (&[u8; 32], &[u8; 32], &[u8; 32]),
    client_ext: &[u8],
    server_ext: &[u8],
) -> Result<ServerOutcome, HandshakeError> {
    if !contributory(dh_y) || !contributory(dh_b) {
        return Err(HandshakeError::NonContributory);
    }
    let (id, b, x) = named;
    let public_y = PublicKey::from(&StaticSecret::from(*y)).to_bytes();

    let t = Transcript {
        id,
        b,
        x,
        y: &public_y,
        client_ext,
        server_ext,
    };
    let (mut key_seed, auth) = key_seed_and_auth(dh_y, dh_b, &t);
    let keys = derive_hop_keys(&key_seed);
    wipe(&mut key_seed);

    let mut reply = Vec::with_capacity(SERVER_REPLY_MIN_LEN + server_ext.len());
    reply.extend_from_slice(&public_y);
    reply.extend_from_slice(&auth);
    encode_ext(&mut reply, server_ext);
    Ok(ServerOutcome {
        reply,
        keys,
        client_ext: client_ext.to_vec(),
    })
}

impl NtorClient {
    /// The client message's `X`.
    pub fn public_x(&self) -> &[u8; 32] {
        &self.public_x
    }

    /// Checks the relay's reply and returns the hop keys and the server extension field.
    /// On error, destroy the circuit: every error is the relay's fault (or an attacker's on the
    /// path).
    pub fn finish(self, reply: &[u8]) -> Result<(HopKeys, Vec<u8>), HandshakeError> {
        if reply.len() < SERVER_REPLY_MIN_LEN {
            return Err(HandshakeError::Malformed);
        }
        let (y, rest) = reply.split_at(32);
        let (auth, rest) = rest.split_at(32);
        let server_ext = decode_ext(rest)?;
        let y = arr32(y);

        let dh_y = self.x.diffie_hellman(&PublicKey::from(y));
        let dh_b = self.x.diffie_hellman(&PublicKey::from(self.onion_key));
        let (dh_y, dh_b) = (dh_y.as_bytes(), dh_b.as_bytes());
        if !contributory(dh_y) || !contributory(dh_b) {
            return Err(HandshakeError::NonContributory);
        }
        let t = Transcript {
            id: &self.relay_id,
            b: &self.onion_key,
            x: &self.public_x,
            y: &y,
            client_ext: &self.client_ext,
            server_ext,
        };
        let (mut key_seed, expected) = key_seed_and_auth(dh_y, dh_b, &t);
        if !bool::from(expected.ct_eq(auth)) {
            wipe(&mut key_seed);
            return Err(HandshakeError::BadAuth);
        }
        let keys = derive_hop_keys(&key_seed);
        wipe(&mut key_seed);
        Ok((keys, server_ext.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::OsRng;
    use rand::RngCore;

    /// The x25519 u-coordinates of points of small order: 0 (order 2), 1 (order 4), the two
    /// points of order 8, p - 1 (order 4, on the twist) and the non-canonical p (= 0) and p + 1
    /// (= 1). x25519 ignores bit 255, so each of them with that bit set is the same point again:
    /// 14 encodings in all. With a clamped scalar (a multiple of 8) the DH output is all zero.
    fn low_order_points() -> Vec<[u8; 32]> {
        let canonical = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        let mut out = Vec::new();
        for h in canonical {
            let p: [u8; 32] = hex::decode(h).unwrap().try_into().unwrap();
            let mut high = p;
            high[31] |= 0x80;
            out.push(p);
            out.push(high);
        }
        out
    }

    struct Relay {
        id: RelayId,
        b: StaticSecret,
    }

    impl Relay {
        fn new() -> Self {
            let mut id = [0u8; 32];
            OsRng.fill_bytes(&mut id);
            Relay {
                id: RelayId(id),
                b: StaticSecret::random_from_rng(OsRng),
            }
        }
        fn pub_b(&self) -> [u8; 32] {
            PublicKey::from(&self.b).to_bytes()
        }
        fn respond(&self, msg: &[u8], sext: &[u8]) -> Result<ServerOutcome, HandshakeError> {
            server_respond(
                &mut OsRng,
                &self.id,
                &[OnionKeyPair::from_secret(&self.b)],
                msg,
                sext,
            )
        }
    }

    fn same_keys(a: &HopKeys, b: &HopKeys) -> bool {
        a.kf_layer == b.kf_layer
            && a.kf_auth == b.kf_auth
            && a.kb_layer == b.kb_layer
            && a.kb_auth == b.kb_auth
    }

    #[test]
    fn client_and_server_agree() {
        let r = Relay::new();
        for (cext, sext) in [
            (&b""[..], &b""[..]),
            (b"client ext", b"server ext"),
            (&[7u8; MAX_EXT_LEN][..], &[9u8; MAX_EXT_LEN][..]),
        ] {
            let (c, msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), cext);
            assert_eq!(msg.len(), CLIENT_MSG_MIN_LEN + cext.len());
            let out = r.respond(&msg, sext).unwrap();
            assert_eq!(out.client_ext, cext);
            assert_eq!(out.reply.len(), SERVER_REPLY_MIN_LEN + sext.len());
            let (keys, got_sext) = c.finish(&out.reply).unwrap();
            assert_eq!(got_sext, sext);
            assert!(same_keys(&keys, &out.keys));
        }
    }

    #[test]
    fn two_runs_give_different_keys() {
        let r = Relay::new();
        let run = || {
            let (c, msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"");
            let out = r.respond(&msg, b"").unwrap();
            c.finish(&out.reply).unwrap().0
        };
        let (a, b) = (run(), run());
        assert!(!same_keys(&a, &b));
        assert_ne!(a.kf_auth, b.kf_auth);
    }

    #[test]
    fn a12_replayed_client_message_gives_new_reply_and_keys() {
        let r = Relay::new();
        let (c, msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"x");
        let first = r.respond(&msg, b"").unwrap();
        let replay = r.respond(&msg, b"").unwrap();
        assert_ne!(first.reply, replay.reply);
        assert!(!same_keys(&first.keys, &replay.keys));
        // The genuine client completes with the reply it gets; a replayer learns nothing usable.
        let (k, _) = c.finish(&replay.reply).unwrap();
        assert!(same_keys(&k, &replay.keys));
    }

    #[test]
    fn rotated_onion_keys_are_accepted() {
        let r = Relay::new();
        let old = StaticSecret::random_from_rng(OsRng);
        let keys = [
            OnionKeyPair::from_secret(&r.b),
            OnionKeyPair::from_secret(&old),
        ];
        for b in [&r.b, &old] {
            let pb = PublicKey::from(b).to_bytes();
            let (c, msg) = client_start(&mut OsRng, &r.id, &pb, b"");
            let out = server_respond(&mut OsRng, &r.id, &keys, &msg, b"").unwrap();
            assert!(same_keys(&c.finish(&out.reply).unwrap().0, &out.keys));
        }
    }

    #[test]
    fn wrong_id_or_onion_key_is_wrong_relay() {
        let r = Relay::new();
        let other = Relay::new();
        let (_, msg) = client_start(&mut OsRng, &other.id, &r.pub_b(), b"");
        assert_eq!(
            r.respond(&msg, b"").unwrap_err(),
            HandshakeError::WrongRelay
        );
        let (_, msg) = client_start(&mut OsRng, &r.id, &other.pub_b(), b"");
        assert_eq!(
            r.respond(&msg, b"").unwrap_err(),
            HandshakeError::WrongRelay
        );
        // No onion keys at all.
        let (_, msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"");
        assert_eq!(
            server_respond(&mut OsRng, &r.id, &[], &msg, b"").unwrap_err(),
            HandshakeError::WrongRelay
        );
    }

    #[test]
    fn a12_low_order_client_key_is_non_contributory() {
        let r = Relay::new();
        for p in low_order_points() {
            let mut msg = Vec::new();
            msg.extend_from_slice(&r.id.0);
            msg.extend_from_slice(&r.pub_b());
            msg.extend_from_slice(&p);
            msg.extend_from_slice(&[0, 0]);
            // p - 1 (= -1) lies on the curve's twist: refused before any multiplication.
            let expected = if p[0] == 0xec { HandshakeError::NotOnCurve } else { HandshakeError::NonContributory };
            assert_eq!(r.respond(&msg, b"").unwrap_err(), expected, "X = {}", hex::encode(p));
        }
    }

    #[test]
    fn a12_low_order_server_key_is_non_contributory() {
        let r = Relay::new();
        for p in low_order_points() {
            // Y low order, in an otherwise well-formed reply.
            let (c, msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"");
            let mut reply = r.respond(&msg, b"").unwrap().reply;
            reply[..32].copy_from_slice(&p);
            assert_eq!(
                c.finish(&reply).unwrap_err(),
                HandshakeError::NonContributory
            );
            // B low order (a directory advertising a bad onion key).
            let (c, _) = client_start(&mut OsRng, &r.id, &p, b"");
            let reply = [vec![9u8; 64], vec![0, 0]].concat();
            assert_eq!(
                c.finish(&reply).unwrap_err(),
                HandshakeError::NonContributory
            );
        }
    }

    #[test]
    fn flipped_bit_in_reply_is_bad_auth() {
        let r = Relay::new();
        let sext = b"server extension";
        let (c0, msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"cext");
        let reply = r.respond(&msg, sext).unwrap().reply;
        // Y, AUTH and the server extension (not the length field: that is Malformed).
        let positions = (0..64).chain(66..reply.len());
        for byte in positions {
            for bit in [0u8, 3, 7] {
                let c = NtorClient {
                    x: c0.x.clone(),
                    public_x: c0.public_x,
                    relay_id: c0.relay_id,
                    onion_key: c0.onion_key,
                    client_ext: c0.client_ext.clone(),
                };
                let mut bad = reply.clone();
                bad[byte] ^= 1 << bit;
                let err = c.finish(&bad).unwrap_err();
                // Flipping a bit of Y can, rarely, land on a low-order point; never success.
                assert!(
                    err == HandshakeError::BadAuth
                        || (byte < 32 && err == HandshakeError::NonContributory),
                    "byte {byte} bit {bit}: {err:?}"
                );
            }
        }
        assert!(c0.finish(&reply).is_ok());
    }

    #[test]
    fn changed_server_ext_of_same_length_is_bad_auth() {
        let r = Relay::new();
        let (c, msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"");
        let mut reply = r.respond(&msg, b"allow").unwrap().reply;
        let n = reply.len();
        reply[n - 5..].copy_from_slice(b"deny!");
        assert_eq!(c.finish(&reply).unwrap_err(), HandshakeError::BadAuth);
    }

    #[test]
    fn flipped_client_ext_is_detected() {
        let r = Relay::new();
        let (c, mut msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"please exit to port 443");
        let last = msg.len() - 1;
        msg[last] ^= 0x01;
        let out = r.respond(&msg, b"").unwrap();
        assert_ne!(out.client_ext, b"please exit to port 443");
        assert_eq!(c.finish(&out.reply).unwrap_err(), HandshakeError::BadAuth);
    }

    #[test]
    fn flipped_x_is_detected() {
        let r = Relay::new();
        let (c, mut msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"");
        msg[64] ^= 0x40;
        // The relay may or may not accept the altered X; the client must not.
        if let Ok(out) = r.respond(&msg, b"") {
            assert_eq!(c.finish(&out.reply).unwrap_err(), HandshakeError::BadAuth);
        }
    }

    #[test]
    fn bad_lengths_are_malformed() {
        let r = Relay::new();
        let (c, msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"abc");
        for bad in [
            &msg[..msg.len() - 1],
            &msg[..CLIENT_MSG_MIN_LEN - 1],
            &[][..],
            &[msg.clone(), vec![0]].concat()[..],
        ] {
            assert_eq!(r.respond(bad, b"").unwrap_err(), HandshakeError::Malformed);
        }
        // Extension length above the maximum, even if the bytes are there.
        let mut big = msg[..96].to_vec();
        big.extend_from_slice(&((MAX_EXT_LEN + 1) as u16).to_be_bytes());
        big.extend_from_slice(&[0u8; MAX_EXT_LEN + 1]);
        assert_eq!(r.respond(&big, b"").unwrap_err(), HandshakeError::Malformed);

        let reply = r.respond(&msg, b"zz").unwrap().reply;
        assert_eq!(
            c.finish(&reply[..reply.len() - 1]).unwrap_err(),
            HandshakeError::Malformed
        );
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn oversized_client_ext_panics() {
        let r = Relay::new();
        let _ = client_start(&mut OsRng, &r.id, &r.pub_b(), &[0; MAX_EXT_LEN + 1]);
    }

    #[test]
    fn debug_hides_secrets() {
        let r = Relay::new();
        let (c, msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"");
        let out = r.respond(&msg, b"").unwrap();
        let s = format!("{c:?} {out:?}");
        assert!(!s.contains(&hex::encode(out.keys.kf_auth)));
        assert!(!s.contains(&hex::encode(c.x.to_bytes())));
    }

    proptest! {
        #[test]
        fn server_respond_never_panics(msg in prop::collection::vec(any::<u8>(), 0..1300)) {
            let r = Relay::new();
            let _ = r.respond(&msg, b"");
            // Same, with our own ID and B in front so parsing reaches the DH and extension code.
            let mut m = r.id.0.to_vec();
            m.extend_from_slice(&r.pub_b());
            m.extend_from_slice(&msg);
            let _ = r.respond(&m, b"");
        }

        #[test]
        fn finish_never_panics(reply in prop::collection::vec(any::<u8>(), 0..1300)) {
            let r = Relay::new();
            let (c, _) = client_start(&mut OsRng, &r.id, &r.pub_b(), b"");
            prop_assert!(c.finish(&reply).is_err());
        }

        #[test]
        fn random_ext_round_trips(
            cext in prop::collection::vec(any::<u8>(), 0..=MAX_EXT_LEN),
            sext in prop::collection::vec(any::<u8>(), 0..=MAX_EXT_LEN),
        ) {
            let r = Relay::new();
            let (c, msg) = client_start(&mut OsRng, &r.id, &r.pub_b(), &cext);
            let out = r.respond(&msg, &sext).unwrap();
            prop_assert_eq!(&out.client_ext, &cext);
            let (k, s) = c.finish(&out.reply).unwrap();
            prop_assert_eq!(s, sext);
            prop_assert!(same_keys(&k, &out.keys));
        }
    }
}
