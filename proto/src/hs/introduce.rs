//! The encrypted part of INTRODUCE1/INTRODUCE2: what a client tells the service through an
//! introduction point, readable only by the service.
//!
//! The client draws an ephemeral x25519 key pair `(e, E)` per introduction and encrypts to the
//! service's per-introduction-point encryption key `B` (from the descriptor):
//!
//! ```text
//! DH    = X25519(e, B)                                  (service: X25519(b, E))
//! PRK   = HKDF-Extract(salt = "allium-hs-intro-v1", IKM = DH | E | B | auth key | service identity)
//! K | N = HKDF-Expand(PRK, info = "allium-hs-intro-v1:key-nonce", length = 44)
//! encrypted part = E | AES-256-GCM(K, N, aad = auth key | extension field | E, plaintext)
//! ```
//!
//! The associated data is every byte of the INTRODUCE body before the ciphertext, so the
//! introduction point can change nothing (not even the cleartext extensions) without the service
//! noticing. It has `E`, the auth key and the service identity can be learnt, but not `b`, so it
//! cannot derive `K`.
//!
//! Plaintext ([`IntroduceContent`]), zero-padded to a multiple of [`PLAINTEXT_BLOCK`] bytes (so
//! every ordinary introduction has the same size and fits one relay cell):
//!
//! ```text
//! rendezvous cookie (20)
//! rendezvous point link specifiers (as in EXTEND: u8 n | n × (u8 type | u8 len | data))
//! rendezvous point onion key (32)
//! u16 handshake type | u16 length | handshake data      (type 1: the client's key X, 32 bytes)
//! extension field
//! zero padding
//! ```

use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::crypto::aead::{AesGcmAead, CellAead, MessageAead};
use crate::crypto::kdf::wipe;
use crate::ext::Extensions;
use crate::reader::{DecodeError, Reader};
use crate::relay_msg::{ExtendTarget, IntroduceBody, MAX_RELAY_MSG_LEN, REND_COOKIE_LEN};

/// HKDF salt of the INTRODUCE key.
pub const INTRO_ENC_SALT: &[u8] = b"allium-hs-intro-v1";
/// HKDF info of the INTRODUCE key and nonce.
pub const INTRO_ENC_INFO: &[u8] = b"allium-hs-intro-v1:key-nonce";
/// The plaintext is zero-padded to a multiple of this many bytes.
pub const PLAINTEXT_BLOCK: usize = 400;
/// Critical extensions understood inside the plaintext (none yet).
const KNOWN_CRITICAL: &[u8] = &[];

/// What the client tells the service (the INTRODUCE plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroduceContent {
    /// The one-time cookie the client gave the rendezvous point.
    pub cookie: [u8; REND_COOKIE_LEN],
    /// The rendezvous point: address, identity and link key (what EXTEND needs).
    pub rendezvous: ExtendTarget,
    /// The rendezvous point's ntor onion key.
    pub rendezvous_onion_key: [u8; 32],
    /// The end-to-end handshake type ([`super::rendezvous::HTYPE_REND`]).
    pub htype: u16,
    /// Its client data (type 1: the client's ephemeral x25519 key `X`).
    pub hdata: Vec<u8>,
    pub ext: Extensions,
}

/// Why an introduction could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntroduceError {
    /// The message names another introduction point's auth key than the one expected.
    #[error("INTRODUCE names another auth key")]
    WrongAuthKey,
    /// The ephemeral (or the service's) key is of small order.
    #[error("INTRODUCE key exchange is not contributory")]
    NonContributory,
    /// Tampered with, or not encrypted to this key.
    #[error("INTRODUCE does not decrypt")]
    DecryptFailed,
    #[error("malformed INTRODUCE plaintext: {0}")]
    Malformed(DecodeError),
    #[error("INTRODUCE too long for a relay message")]
    TooLong,
}

/// `K` and `N` of one introduction.
pub fn intro_key_nonce(
    dh: &[u8; 32],
    ephemeral: &[u8; 32],
    enc_key: &[u8; 32],
    auth_key: &[u8; 32],
    service_identity: &[u8; 32],
) -> ([u8; 32], [u8; 12]) {
    let mut ikm = Vec::with_capacity(32 * 5);
    for part in [dh, ephemeral, enc_key, auth_key, service_identity] {
        ikm.extend_from_slice(part);
    }
    let mut okm = [0u8; 44];
    Hkdf::<Sha256>::new(Some(INTRO_ENC_SALT), &ikm)
        .expand(INTRO_ENC_INFO, &mut okm)
        .expect("44 bytes is a valid HKDF length");
    wipe(&mut ikm);
    let (mut key, mut nonce) = ([0u8; 32], [0u8; 12]);
    key.copy_from_slice(&okm[..32]);
    nonce.copy_from_slice(&okm[32..]);
    wipe(&mut okm);
    (key, nonce)
}

impl IntroduceContent {
    /// The padded plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(PLAINTEXT_BLOCK);
        b.extend_from_slice(&self.cookie);
        self.rendezvous.encode_link_specifiers(&mut b);
        b.extend_from_slice(&self.rendezvous_onion_key);
        b.extend_from_slice(&self.htype.to_be_bytes());
        b.extend_from_slice(&(self.hdata.len().min(u16::MAX as usize) as u16).to_be_bytes());
        b.extend_from_slice(&self.hdata);
        self.ext.encode(&mut b);
        let padded = b.len().div_ceil(PLAINTEXT_BLOCK).max(1) * PLAINTEXT_BLOCK;
        b.resize(padded, 0);
        b
    }

    /// Reads a plaintext; the padding (any length) must be zero.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let cookie = r.array::<REND_COOKIE_LEN>()?;
        let rendezvous = ExtendTarget::decode_link_specifiers(&mut r)?;
        let rendezvous_onion_key = r.array::<32>()?;
        let htype = r.u16()?;
        let n = r.u16()? as usize;
        let hdata = r.take(n)?.to_vec();
        let ext = Extensions::decode_checked(&mut r, KNOWN_CRITICAL)?;
        if r.rest().iter().any(|&b| b != 0) {
            return Err(DecodeError::Invalid("INTRODUCE padding is not zero"));
        }
        Ok(IntroduceContent { cookie, rendezvous, rendezvous_onion_key, htype, hdata, ext })
    }
}

/// The cleartext that the AEAD authenticates: `auth key | extension field | E`.
fn aad(auth_key: &[u8; 32], ext: &Extensions, ephemeral: &[u8; 32]) -> Vec<u8> {
    let mut a = IntroduceBody { auth_key: *auth_key, ext: ext.clone(), encrypted: Vec::new() }.header_bytes();
    a.extend_from_slice(ephemeral);
    a
}

/// The client: builds the INTRODUCE1 body for the introduction point with `auth_key` and
/// `enc_key` (from the descriptor) of the service with `service_identity`.
pub fn encrypt<R: RngCore + CryptoRng>(
    rng: &mut R,
    service_identity: &[u8; 32],
    auth_key: &[u8; 32],
    enc_key: &[u8; 32],
    ext: Extensions,
    content: &IntroduceContent,
) -> Result<IntroduceBody, IntroduceError> {
    encrypt_bound(rng, service_identity, auth_key, enc_key, |_| ext, content)
}

/// [`encrypt`] with a cleartext extension field made from the introduction's ephemeral key `E`
/// (a proof of work is bound to it, [`super::pow`]).
pub fn encrypt_bound<R: RngCore + CryptoRng>(
    rng: &mut R,
    service_identity: &[u8; 32],
    auth_key: &[u8; 32],
    enc_key: &[u8; 32],
    make_ext: impl FnOnce(&[u8; 32]) -> Extensions,
    content: &IntroduceContent,
) -> Result<IntroduceBody, IntroduceError> {
    let mut e = [0u8; 32];
    rng.fill_bytes(&mut e);
    let ephemeral = PublicKey::from(&StaticSecret::from(e)).to_bytes();
    let ext = make_ext(&ephemeral);
    encrypt_with_secret(e, service_identity, auth_key, enc_key, ext, content)
}

/// [`encrypt`] with a given ephemeral secret, for known-answer tests only. Never reuse `e`.
#[doc(hidden)]
pub fn encrypt_with_secret(
    mut e: [u8; 32],
    service_identity: &[u8; 32],
    auth_key: &[u8; 32],
    enc_key: &[u8; 32],
    ext: Extensions,
    content: &IntroduceContent,
) -> Result<IntroduceBody, IntroduceError> {
    let secret = StaticSecret::from(e);
    wipe(&mut e);
    let ephemeral = PublicKey::from(&secret).to_bytes();
    let dh = secret.diffie_hellman(&PublicKey::from(*enc_key));
    if !dh.was_contributory() {
        return Err(IntroduceError::NonContributory);
    }
    let (mut key, nonce) = intro_key_nonce(dh.as_bytes(), &ephemeral, enc_key, auth_key, service_identity);
    let mut msg = content.encode();
    let aead = AesGcmAead::new(&key);
    wipe(&mut key);
    aead.seal_message(&nonce, &aad(auth_key, &ext, &ephemeral), &mut msg);
    let mut encrypted = ephemeral.to_vec();
    encrypted.extend_from_slice(&msg);
    let body = IntroduceBody { auth_key: *auth_key, ext, encrypted };
    if body.header_bytes().len() + body.encrypted.len() > MAX_RELAY_MSG_LEN {
        return Err(IntroduceError::TooLong);
    }
    Ok(body)
}

/// The service: opens an INTRODUCE2 that arrived on the circuit of its introduction point with
/// `auth_key`, whose encryption secret is `enc_secret`. Check the replay cache after this
/// succeeds (so garbage never fills it).
pub fn decrypt(
    service_identity: &[u8; 32],
    auth_key: &[u8; 32],
    enc_secret: &StaticSecret,
    body: &IntroduceBody,
) -> Result<IntroduceContent, IntroduceError> {
    if &body.auth_key != auth_key {
        return Err(IntroduceError::WrongAuthKey);
    }
    let Some((ephemeral, ct)) = body.encrypted.split_first_chunk::<32>() else {
        return Err(IntroduceError::DecryptFailed);
    };
    let dh = enc_secret.diffie_hellman(&PublicKey::from(*ephemeral));
    if !dh.was_contributory() {
        return Err(IntroduceError::NonContributory);
    }
    let enc_key = PublicKey::from(enc_secret).to_bytes();
    let (mut key, nonce) = intro_key_nonce(dh.as_bytes(), ephemeral, &enc_key, auth_key, service_identity);
    let aead = AesGcmAead::new(&key);
    wipe(&mut key);
    let mut pt = aead
        .open_message(&nonce, &aad(auth_key, &body.ext, ephemeral), ct)
        .ok_or(IntroduceError::DecryptFailed)?;
    let content = IntroduceContent::decode(&pt).map_err(IntroduceError::Malformed);
    wipe(&mut pt);
    content
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext::Extension;
    use crate::relay_msg::{Direction, RelayMsg, MAX_BODY_PER_CELL};
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    pub(crate) fn content() -> IntroduceContent {
        IntroduceContent {
            cookie: [0x5c; REND_COOKIE_LEN],
            rendezvous: ExtendTarget { addr: "[2001:db8::7]:443".parse().unwrap(), identity: [1; 32], link_key: [2; 32] },
            rendezvous_onion_key: [3; 32],
            htype: 1,
            hdata: vec![4; 32],
            ext: Extensions::none(),
        }
    }

    struct Service {
        identity: [u8; 32],
        auth_key: [u8; 32],
        enc: StaticSecret,
    }

    fn service() -> Service {
        Service {
            identity: [0x1d; 32],
            auth_key: ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key().to_bytes(),
            enc: StaticSecret::from([0x42; 32]),
        }
    }

    fn introduce(s: &Service, seed: u64) -> IntroduceBody {
        let enc_key = PublicKey::from(&s.enc).to_bytes();
        encrypt(&mut StdRng::seed_from_u64(seed), &s.identity, &s.auth_key, &enc_key, Extensions::none(), &content()).unwrap()
    }

    #[test]
    fn round_trip_through_intro_point() {
        let s = service();
        let body = introduce(&s, 1);
        // One relay cell, fixed size.
        let wire = RelayMsg::Introduce1(body.clone()).encode_body();
        assert_eq!(wire.len(), 32 + 1 + 32 + PLAINTEXT_BLOCK + 16);
        assert!(wire.len() <= MAX_BODY_PER_CELL);
        // The intro point forwards the same body as INTRODUCE2.
        let RelayMsg::Introduce1(at_ip) = RelayMsg::decode(22, &wire, Direction::Outbound).unwrap() else { panic!() };
        let fwd = RelayMsg::Introduce2(at_ip).encode_body();
        let RelayMsg::Introduce2(at_service) = RelayMsg::decode(23, &fwd, Direction::Inbound).unwrap() else { panic!() };
        assert_eq!(decrypt(&s.identity, &s.auth_key, &s.enc, &at_service), Ok(content()));
        // Two introductions of the same content look unrelated.
        assert_ne!(introduce(&s, 2).encrypted, body.encrypted);
    }

    #[test]
    fn intro_point_cannot_read() {
        // The intro point knows the whole body, the auth key and (from the address) the service
        // identity, but not b: any key it might try fails, and the plaintext is not in the body.
        let s = service();
        let body = introduce(&s, 3);
        let c = content().encode();
        assert!(!body.encrypted.windows(REND_COOKIE_LEN).any(|w| w == &c[..REND_COOKIE_LEN]));
        for guess in [StaticSecret::from([0x43; 32]), StaticSecret::from([0; 32])] {
            assert_eq!(decrypt(&s.identity, &s.auth_key, &guess, &body), Err(IntroduceError::DecryptFailed));
        }
    }

    #[test]
    fn tampering_fails() {
        let s = service();
        let body = introduce(&s, 4);
        for i in 0..body.encrypted.len() {
            let mut t = body.clone();
            t.encrypted[i] ^= 0x01;
            assert!(decrypt(&s.identity, &s.auth_key, &s.enc, &t).is_err(), "byte {i}");
        }
        let mut t = body.clone();
        t.ext = Extensions(vec![Extension { ty: 1, data: vec![] }]);
        assert_eq!(decrypt(&s.identity, &s.auth_key, &s.enc, &t), Err(IntroduceError::DecryptFailed), "cleartext extension added");
        let mut t = body.clone();
        t.encrypted.truncate(40);
        assert_eq!(decrypt(&s.identity, &s.auth_key, &s.enc, &t), Err(IntroduceError::DecryptFailed));
        // Another auth key (another intro point of the same service) is refused.
        let mut t = body.clone();
        t.auth_key[0] ^= 1;
        assert_eq!(decrypt(&s.identity, &s.auth_key, &s.enc, &t), Err(IntroduceError::WrongAuthKey));
        assert_eq!(decrypt(&s.identity, &t.auth_key, &s.enc, &t), Err(IntroduceError::DecryptFailed));
        // Another service identity in the KDF.
        assert_eq!(decrypt(&[0x1e; 32], &s.auth_key, &s.enc, &body), Err(IntroduceError::DecryptFailed));
    }

    #[test]
    fn wrong_service_key_fails() {
        let s = service();
        let other = StaticSecret::from([0x77; 32]);
        let body = encrypt(
            &mut StdRng::seed_from_u64(5),
            &s.identity,
            &s.auth_key,
            &PublicKey::from(&other).to_bytes(),
            Extensions::none(),
            &content(),
        )
        .unwrap();
        assert_eq!(decrypt(&s.identity, &s.auth_key, &s.enc, &body), Err(IntroduceError::DecryptFailed));
        assert_eq!(decrypt(&s.identity, &s.auth_key, &other, &body), Ok(content()));
    }

    #[test]
    fn small_order_keys_refused() {
        let s = service();
        let zero = [0u8; 32];
        assert_eq!(
            encrypt(&mut StdRng::seed_from_u64(6), &s.identity, &s.auth_key, &zero, Extensions::none(), &content()),
            Err(IntroduceError::NonContributory)
        );
        let mut body = introduce(&s, 7);
        body.encrypted[..32].fill(0);
        assert_eq!(decrypt(&s.identity, &s.auth_key, &s.enc, &body), Err(IntroduceError::NonContributory));
    }

    #[test]
    fn plaintext_layout_and_padding() {
        let c = content();
        let p = c.encode();
        assert_eq!(p.len(), PLAINTEXT_BLOCK);
        assert_eq!(&p[..20], &[0x5c; 20]);
        assert_eq!(p[20], 3, "three link specifiers");
        assert_eq!(IntroduceContent::decode(&p), Ok(c.clone()));
        let mut bad = p.clone();
        *bad.last_mut().unwrap() = 1;
        assert!(IntroduceContent::decode(&bad).is_err(), "non-zero padding");
        // Large extensions: padded to the next block.
        let big = IntroduceContent { ext: Extensions(vec![Extension { ty: 9, data: vec![1; 255] }; 2]), ..c };
        let p = big.encode();
        assert_eq!(p.len(), 2 * PLAINTEXT_BLOCK);
        assert_eq!(IntroduceContent::decode(&p), Ok(big));
    }

    proptest! {
        #[test]
        fn plaintext_decoder_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(c) = IntroduceContent::decode(&buf) {
                prop_assert_eq!(IntroduceContent::decode(&c.encode()).unwrap(), c);
            }
        }

        #[test]
        fn decrypt_never_panics(auth in any::<[u8; 32]>(), enc in proptest::collection::vec(any::<u8>(), 0..600)) {
            let s = service();
            let body = IntroduceBody { auth_key: auth, ext: Extensions::none(), encrypted: enc };
            let _ = decrypt(&s.identity, &auth, &s.enc, &body);
        }
    }
}
