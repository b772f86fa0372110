//! The end-to-end handshake between a client and an onion service ("allium-hs-rend-v1",
//! handshake type 1), which gives the rendezvous circuit one more hop: the service.
//!
//! It has the shape of the circuit handshake (ntor), with the service's per-introduction-point
//! encryption key `B` in the role of the relay's onion key and the introduction point's auth key
//! in the role of the relay identity. The client sends `X` inside the encrypted INTRODUCE; the
//! service answers `Y | AUTH` in RENDEZVOUS1, which the rendezvous point hands to the client in
//! RENDEZVOUS2:
//!
//! ```text
//! secret_input = X25519(y, X) | X25519(b, X) | AUTH_KEY | B | X | Y | PROTOID
//! KEY_SEED     = HMAC("allium-hs-rend-v1:key_seed", secret_input)
//! verify       = HMAC("allium-hs-rend-v1:verify",   secret_input)
//! AUTH         = HMAC("allium-hs-rend-v1:auth", verify | AUTH_KEY | B | Y | X | PROTOID | "Service")
//! ```
//!
//! `KEY_SEED` becomes [`HopKeys`] exactly as a relay hop's (`derive_hop_keys`), forward being
//! client → service. Only the holder of `b` (the service that published `B`) can compute `AUTH`,
//! and the rendezvous point, which sees `Y` and `AUTH`, learns nothing of the keys.
//!
//! **The virtual hop.** The client appends the keys to its `ClientCrypto` as one more hop after
//! the rendezvous point. The service appends [`service_end_keys`] (the same keys with the
//! directions swapped) to the `ClientCrypto` of its own circuit to the rendezvous point: a cell
//! the client sends "forward" to the virtual hop reaches the service as a cell travelling
//! backward on its circuit, sealed by its last hop, and the other way round. No new cell-crypto
//! type is needed.

use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};

use crate::crypto::kdf::{derive_hop_keys, wipe, HopKeys};

/// Handshake type of "allium-hs-rend-v1" in the INTRODUCE plaintext.
pub const HTYPE_REND: u16 = 1;
/// Protocol identifier.
pub const PROTOID: &[u8] = b"allium-hs-rend-v1";
/// HMAC key of `KEY_SEED`.
pub const T_KEY: &[u8] = b"allium-hs-rend-v1:key_seed";
/// HMAC key of `verify`.
pub const T_VERIFY: &[u8] = b"allium-hs-rend-v1:verify";
/// HMAC key of `AUTH`.
pub const T_MAC: &[u8] = b"allium-hs-rend-v1:auth";
/// Role string in the `AUTH` input.
pub const SERVICE_STR: &[u8] = b"Service";
/// Bytes of the client data (`X`).
pub const CLIENT_DATA_LEN: usize = 32;
/// Bytes of the service reply (`Y | AUTH`) in RENDEZVOUS1 and RENDEZVOUS2.
pub const REPLY_LEN: usize = 64;

/// Why the handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RendError {
    #[error("rendezvous handshake data has the wrong length or type")]
    Malformed,
    #[error("rendezvous key exchange is not contributory")]
    NonContributory,
    #[error("rendezvous reply does not authenticate the service")]
    BadAuth,
}

/// The client's state between INTRODUCE1 and RENDEZVOUS2.
pub struct RendClient {
    x: StaticSecret,
    public_x: [u8; 32],
    auth_key: [u8; 32],
    enc_key: [u8; 32],
}

impl std::fmt::Debug for RendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RendClient").field("public_x", &hex::encode(self.public_x)).finish_non_exhaustive()
    }
}

struct Transcript<'a> {
    auth_key: &'a [u8; 32],
    b: &'a [u8; 32],
    x: &'a [u8; 32],
    y: &'a [u8; 32],
}

fn key_seed_and_auth(dh_y: &SharedSecret, dh_b: &SharedSecret, t: &Transcript<'_>) -> ([u8; 32], [u8; 32]) {
    let mac = |label: &[u8]| -> [u8; 32] {
        let mut m = Hmac::<Sha256>::new_from_slice(label).expect("HMAC takes any key length");
        for part in [dh_y.as_bytes(), dh_b.as_bytes(), t.auth_key, t.b, t.x, t.y] {
            m.update(part);
        }
        m.update(PROTOID);
        m.finalize().into_bytes().into()
    };
    let key_seed = mac(T_KEY);
    let mut verify = mac(T_VERIFY);
    let mut m = Hmac::<Sha256>::new_from_slice(T_MAC).expect("HMAC takes any key length");
    for part in [&verify, t.auth_key, t.b, t.y, t.x] {
        m.update(part);
    }
    m.update(PROTOID);
    m.update(SERVICE_STR);
    wipe(&mut verify);
    (key_seed, m.finalize().into_bytes().into())
}

/// The client starts: `X` goes into the INTRODUCE plaintext (handshake type [`HTYPE_REND`]).
/// `auth_key` and `enc_key` are the chosen introduction point's, from the descriptor.
pub fn client_start<R: RngCore + CryptoRng>(rng: &mut R, auth_key: &[u8; 32], enc_key: &[u8; 32]) -> (RendClient, [u8; 32]) {
    let mut x = [0u8; 32];
    rng.fill_bytes(&mut x);
    client_start_with_secret(x, auth_key, enc_key)
}

/// [`client_start`] with a given secret, for known-answer tests only. Never reuse `x`.
#[doc(hidden)]
pub fn client_start_with_secret(mut x: [u8; 32], auth_key: &[u8; 32], enc_key: &[u8; 32]) -> (RendClient, [u8; 32]) {
    let secret = StaticSecret::from(x);
    wipe(&mut x);
    let public_x = PublicKey::from(&secret).to_bytes();
    (RendClient { x: secret, public_x, auth_key: *auth_key, enc_key: *enc_key }, public_x)
}

impl RendClient {
    /// `X`.
    pub fn public_x(&self) -> &[u8; 32] {
        &self.public_x
    }

    /// Checks the RENDEZVOUS2 handshake reply; on success the keys of the virtual hop (append
    /// them to the rendezvous circuit's client crypto). On error, close the circuit.
    pub fn finish(self, reply: &[u8]) -> Result<HopKeys, RendError> {
        let reply: &[u8; REPLY_LEN] = reply.try_into().map_err(|_| RendError::Malformed)?;
        let (y, auth) = reply.split_at(32);
        let y: [u8; 32] = y.try_into().expect("32 bytes");
        let dh_y = self.x.diffie_hellman(&PublicKey::from(y));
        let dh_b = self.x.diffie_hellman(&PublicKey::from(self.enc_key));
        if !dh_y.was_contributory() || !dh_b.was_contributory() {
            return Err(RendError::NonContributory);
        }
        let t = Transcript { auth_key: &self.auth_key, b: &self.enc_key, x: &self.public_x, y: &y };
        let (mut key_seed, expected) = key_seed_and_auth(&dh_y, &dh_b, &t);
        if !bool::from(expected.ct_eq(auth)) {
            wipe(&mut key_seed);
            return Err(RendError::BadAuth);
        }
        let keys = derive_hop_keys(&key_seed);
        wipe(&mut key_seed);
        Ok(keys)
    }
}

/// The service's side, once an INTRODUCE2 has decrypted (and passed the replay cache): the
/// reply for RENDEZVOUS1 and the virtual hop's keys as the client derives them (give
/// [`service_end_keys`] of them to the service's own cell crypto).
#[derive(Debug)]
pub struct ServiceOutcome {
    pub reply: [u8; REPLY_LEN],
    pub keys: HopKeys,
}

/// The service answers the client data `hdata` of handshake type `htype` received for its
/// introduction point with `auth_key` and encryption secret `enc_secret`.
pub fn service_respond<R: RngCore + CryptoRng>(
    rng: &mut R,
    auth_key: &[u8; 32],
    enc_secret: &StaticSecret,
    htype: u16,
    hdata: &[u8],
) -> Result<ServiceOutcome, RendError> {
    let mut y = [0u8; 32];
    rng.fill_bytes(&mut y);
    service_respond_with_secret(y, auth_key, enc_secret, htype, hdata)
}

/// [`service_respond`] with a given secret, for known-answer tests only. Never reuse `y`.
#[doc(hidden)]
pub fn service_respond_with_secret(
    mut y: [u8; 32],
    auth_key: &[u8; 32],
    enc_secret: &StaticSecret,
    htype: u16,
    hdata: &[u8],
) -> Result<ServiceOutcome, RendError> {
    let secret = StaticSecret::from(y);
    wipe(&mut y);
    if htype != HTYPE_REND {
        return Err(RendError::Malformed);
    }
    let x: [u8; 32] = hdata.try_into().map_err(|_| RendError::Malformed)?;
    let client = PublicKey::from(x);
    let dh_y = secret.diffie_hellman(&client);
    let dh_b = enc_secret.diffie_hellman(&client);
    if !dh_y.was_contributory() || !dh_b.was_contributory() {
        return Err(RendError::NonContributory);
    }
    let public_y = PublicKey::from(&secret).to_bytes();
    let b = PublicKey::from(enc_secret).to_bytes();
    let t = Transcript { auth_key, b: &b, x: &x, y: &public_y };
    let (mut key_seed, auth) = key_seed_and_auth(&dh_y, &dh_b, &t);
    let keys = derive_hop_keys(&key_seed);
    wipe(&mut key_seed);
    let mut reply = [0u8; REPLY_LEN];
    reply[..32].copy_from_slice(&public_y);
    reply[32..].copy_from_slice(&auth);
    Ok(ServiceOutcome { reply, keys })
}

/// The virtual hop's keys as the service's `ClientCrypto` must hold them: forward and backward
/// swapped, so what the client seals "forward" the service opens as a backward cell from its last
/// hop, and what the service seals "forward" the client opens as a backward cell.
pub fn service_end_keys(keys: &HopKeys) -> HopKeys {
    HopKeys { kf_layer: keys.kb_layer, kf_auth: keys.kb_auth, kb_layer: keys.kf_layer, kb_auth: keys.kf_auth }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::cell_crypto::{ClientCrypto, Recognized, RelayCrypto};
    use crate::crypto::{CellCryptoError, RELAY_BODY_LEN, RELAY_PLAINTEXT_LEN};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn all(k: &HopKeys) -> [[u8; 32]; 4] {
        [k.kf_layer, k.kf_auth, k.kb_layer, k.kb_auth]
    }

    fn setup() -> (StaticSecret, [u8; 32], [u8; 32]) {
        let b = StaticSecret::from([0x42; 32]);
        let big_b = PublicKey::from(&b).to_bytes();
        (b, big_b, [0xa5; 32])
    }

    #[test]
    fn both_sides_get_the_same_keys() {
        let (b, big_b, auth_key) = setup();
        let mut rng = StdRng::seed_from_u64(1);
        let (client, x) = client_start(&mut rng, &auth_key, &big_b);
        let out = service_respond(&mut rng, &auth_key, &b, HTYPE_REND, &x).unwrap();
        let keys = client.finish(&out.reply).unwrap();
        assert_eq!(all(&keys), all(&out.keys));
        let swapped = service_end_keys(&keys);
        assert_eq!(all(&swapped), [keys.kb_layer, keys.kb_auth, keys.kf_layer, keys.kf_auth]);
    }

    #[test]
    fn forged_rendezvous2_rejected() {
        let (b, big_b, auth_key) = setup();
        let mut rng = StdRng::seed_from_u64(2);
        // A forger without b (e.g. the rendezvous point, or an intro point impersonating the
        // service) answers with its own "service key".
        let (client, x) = client_start(&mut rng, &auth_key, &big_b);
        let fake = service_respond(&mut rng, &auth_key, &StaticSecret::from([0x43; 32]), HTYPE_REND, &x).unwrap();
        assert_eq!(client.finish(&fake.reply).unwrap_err(), RendError::BadAuth);
        // A genuine reply with any bit flipped.
        let (client, x) = client_start(&mut rng, &auth_key, &big_b);
        let good = service_respond(&mut rng, &auth_key, &b, HTYPE_REND, &x).unwrap();
        for i in 0..REPLY_LEN {
            let mut r = good.reply;
            r[i] ^= 0x80;
            assert!(client_clone(&client).finish(&r).is_err(), "bit flip at {i} accepted");
        }
        // The reply of another client's handshake (a replay) does not authenticate.
        let (other, x2) = client_start(&mut rng, &auth_key, &big_b);
        let _ = service_respond(&mut rng, &auth_key, &b, HTYPE_REND, &x2).unwrap();
        assert_eq!(other.finish(&good.reply).unwrap_err(), RendError::BadAuth);
        assert_eq!(client.finish(&good.reply[..63]).unwrap_err(), RendError::Malformed);
    }

    fn client_clone(c: &RendClient) -> RendClient {
        RendClient { x: c.x.clone(), public_x: c.public_x, auth_key: c.auth_key, enc_key: c.enc_key }
    }

    #[test]
    fn service_checks_client_data() {
        let (b, _, auth_key) = setup();
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(service_respond(&mut rng, &auth_key, &b, 2, &[9; 32]).unwrap_err(), RendError::Malformed);
        assert_eq!(service_respond(&mut rng, &auth_key, &b, HTYPE_REND, &[9; 31]).unwrap_err(), RendError::Malformed);
        assert_eq!(service_respond(&mut rng, &auth_key, &b, HTYPE_REND, &[0; 32]).unwrap_err(), RendError::NonContributory);
        // A reply naming a small-order Y.
        let (_, big_b, _) = setup();
        let (client, _) = client_start(&mut rng, &auth_key, &big_b);
        assert_eq!(client.finish(&[0; 64]).unwrap_err(), RendError::NonContributory);
    }

    type Body = [u8; RELAY_BODY_LEN];

    fn body_with(msg: &[u8]) -> Body {
        let mut b = [0u8; RELAY_BODY_LEN];
        b[..msg.len()].copy_from_slice(msg);
        b
    }

    /// The whole rendezvous circuit with the existing cell-crypto types: the client's circuit
    /// (guard, middle, rendezvous point) plus the virtual hop, the service's circuit (guard,
    /// middle, rendezvous point), and the rendezvous point joining them as the relay would:
    /// a forward cell it does not recognise on one circuit goes backward on the other.
    #[test]
    fn virtual_hop_cells_cross_the_rendezvous_point() {
        let (b, big_b, auth_key) = setup();
        let mut rng = StdRng::seed_from_u64(4);
        let hop = |s: &str| crate::crypto::kdf::derive_hop_keys(s.as_bytes());
        let (c_keys, s_keys): (Vec<HopKeys>, Vec<HopKeys>) =
            ((0..3).map(|i| hop(&format!("client hop {i}"))).collect(), (0..3).map(|i| hop(&format!("service hop {i}"))).collect());
        let mut client = ClientCrypto::new();
        let mut service = ClientCrypto::new();
        let mut c_relays: Vec<RelayCrypto> = c_keys.iter().map(RelayCrypto::new).collect();
        let mut s_relays: Vec<RelayCrypto> = s_keys.iter().map(RelayCrypto::new).collect();
        c_keys.iter().for_each(|k| client.add_hop(k));
        s_keys.iter().for_each(|k| service.add_hop(k));

        let (rc, x) = client_start(&mut rng, &auth_key, &big_b);
        let out = service_respond(&mut rng, &auth_key, &b, HTYPE_REND, &x).unwrap();
        let keys = rc.finish(&out.reply).unwrap();
        client.add_hop(&keys);
        service.add_hop(&service_end_keys(&out.keys));

        // Client → service, several cells (counters must stay in step).
        for i in 0..5u8 {
            let msg = [b'c', i, 1, 2, 3];
            let mut cell = body_with(&msg);
            client.encrypt_outbound(3, &mut cell).unwrap();
            for r in &mut c_relays {
                assert_eq!(r.decrypt_outbound(&mut cell).unwrap(), Recognized::NotForUs, "no relay reads it");
            }
            // Joined at the rendezvous point: onto the service's circuit, backward.
            for r in s_relays.iter_mut().rev() {
                r.forward_inbound(&mut cell).unwrap();
            }
            assert_eq!(service.decrypt_inbound(&mut cell).unwrap(), 3, "from the virtual hop");
            assert_eq!(&cell[..msg.len()], &msg);
            assert!(cell[msg.len()..RELAY_PLAINTEXT_LEN].iter().all(|&b| b == 0));

            // Service → client.
            let msg = [b's', i, 9];
            let mut cell = body_with(&msg);
            service.encrypt_outbound(3, &mut cell).unwrap();
            for r in &mut s_relays {
                assert_eq!(r.decrypt_outbound(&mut cell).unwrap(), Recognized::NotForUs);
            }
            for r in c_relays.iter_mut().rev() {
                r.forward_inbound(&mut cell).unwrap();
            }
            assert_eq!(client.decrypt_inbound(&mut cell).unwrap(), 3);
            assert_eq!(&cell[..msg.len()], &msg);
        }

        // The rendezvous point can still talk to each side as their hop 2, and a cell altered at
        // the rendezvous point fails at the far end.
        let mut cell = body_with(b"to rp");
        client.encrypt_outbound(2, &mut cell).unwrap();
        c_relays[0].decrypt_outbound(&mut cell).unwrap();
        c_relays[1].decrypt_outbound(&mut cell).unwrap();
        assert_eq!(c_relays[2].decrypt_outbound(&mut cell).unwrap(), Recognized::ForUs);
        let mut cell = body_with(b"tampered");
        client.encrypt_outbound(3, &mut cell).unwrap();
        for r in &mut c_relays {
            r.decrypt_outbound(&mut cell).unwrap();
        }
        cell[7] ^= 1;
        for r in s_relays.iter_mut().rev() {
            r.forward_inbound(&mut cell).unwrap();
        }
        assert_eq!(service.decrypt_inbound(&mut cell), Err(CellCryptoError::NotAuthenticated));
    }

    proptest::proptest! {
        #[test]
        fn bad_input_never_panics(reply in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100), htype in 0u16..3) {
            let (b, big_b, auth_key) = setup();
            let (client, _) = client_start_with_secret([1; 32], &auth_key, &big_b);
            let _ = client.finish(&reply);
            let _ = service_respond_with_secret([2; 32], &auth_key, &b, htype, &reply);
        }
    }
}
