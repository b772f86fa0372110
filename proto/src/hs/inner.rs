//! The encrypted part of an onion-service descriptor: the list of introduction points, readable
//! only with the service's unblinded identity key (its address), and optionally only by
//! authorized clients.
//!
//! Layout of the `encrypted` field (all lengths fixed unless stated):
//!
//! ```text
//! salt (16) | auth-type (1)
//! [auth-type 1:  ephemeral x25519 key E (32) | BE16(count) | count × (client-id (8) | cookie ciphertext (32) | tag (16))]
//! ciphertext | tag (16)
//! ```
//!
//! The ciphertext is AES-256-GCM of the plaintext ([`IntroList`]) with key and nonce from
//! HKDF-SHA256 over `identity | blinded key | BE64(n) | BE64(L) | BE64(revision) | salt` (and
//! `| cookie` with client authorization), associated data every byte before the ciphertext.
//! An HSDir holds the blinded key but not the identity, so it cannot derive the key. The exact
//! rules are in `docs/PROTOCOL.md` ("Onion services → Encrypted part").

use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use x25519_dalek::{PublicKey, StaticSecret};

use super::address::is_usable_identity;
use super::blind::TimePeriod;
use super::desc::{HsDescriptor, MAX_ENCRYPTED_LEN};
use crate::crypto::aead::{AesGcmAead, CellAead, MessageAead};
use crate::crypto::TAG_LEN;
use crate::ext::Extensions;
use crate::reader::{DecodeError, Reader};
use crate::relay_msg::ExtendTarget;

/// HKDF salt of the descriptor encryption key.
pub const DESC_ENC_SALT: &[u8] = b"allium-hs-desc-enc-v1";
/// HKDF info of the descriptor encryption key and nonce.
pub const DESC_ENC_INFO: &[u8] = b"allium-hs-desc-enc-v1:key-nonce";
/// HKDF salt of a client-authorization entry.
pub const CLIENT_AUTH_SALT: &[u8] = b"allium-hs-client-auth-v1";
/// HKDF info of a client-authorization entry (client id, cookie key, cookie nonce).
pub const CLIENT_AUTH_INFO: &[u8] = b"allium-hs-client-auth-v1:entry";
/// Plaintext format version.
pub const INTRO_LIST_VERSION: u8 = 1;
/// Most introduction points in one descriptor.
pub const MAX_INTRO_POINTS: usize = 10;
/// Most client-authorization entries (real and padding) in one descriptor.
pub const MAX_AUTH_ENTRIES: usize = 256;
/// Client-authorization entries are padded to a multiple of this with random ones.
pub const AUTH_ENTRY_PAD: usize = 16;
/// The plaintext is padded with zero bytes to a multiple of this.
pub const PLAINTEXT_PAD: usize = 1024;
const SALT_LEN: usize = 16;
const CLIENT_ID_LEN: usize = 8;
const AUTH_ENTRY_LEN: usize = CLIENT_ID_LEN + 32 + TAG_LEN;

/// One introduction point, as a client needs it to reach the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroPoint {
    /// The relay: OR address, identity and link key (what EXTEND needs).
    pub relay: ExtendTarget,
    /// The relay's ntor onion key (x25519).
    pub onion_key: [u8; 32],
    /// The service's ed25519 key for this introduction point only (the relay knows the service by
    /// it; it must be a usable key).
    pub auth_key: [u8; 32],
    /// The service's x25519 key for this introduction point, to which clients encrypt their
    /// INTRODUCE message.
    pub enc_key: [u8; 32],
    /// Extension field (ignored unless critical).
    pub ext: Extensions,
}

/// The plaintext of the encrypted part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntroList {
    /// 1..=[`MAX_INTRO_POINTS`] introduction points.
    pub intro_points: Vec<IntroPoint>,
    pub ext: Extensions,
}

/// Why the encrypted part could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InnerError {
    #[error("onion service requires client authorization and this client is not authorized")]
    NotAuthorized,
    #[error("descriptor does not decrypt with this address (wrong service, or tampered)")]
    DecryptFailed,
    #[error("malformed encrypted part of the descriptor: {0}")]
    Malformed(&'static str),
    #[error("malformed introduction-point list: {0}")]
    BadPlaintext(DecodeError),
    #[error("cannot encrypt: {0}")]
    Unencodable(&'static str),
}

/// The inputs that bind the encryption key to one descriptor (besides the identity).
#[derive(Debug, Clone, Copy)]
pub struct DescBinding<'a> {
    pub blinded_key: &'a [u8; 32],
    pub period: TimePeriod,
    pub revision: u64,
}

impl<'a> DescBinding<'a> {
    pub fn of(d: &'a HsDescriptor) -> Self {
        DescBinding { blinded_key: &d.blinded_key, period: d.period, revision: d.revision }
    }
}

/// The AES-256-GCM key and nonce of the encrypted part.
pub fn desc_key_nonce(identity: &[u8; 32], b: &DescBinding, salt: &[u8; 16], cookie: Option<&[u8; 32]>) -> ([u8; 32], [u8; 12]) {
    let mut ikm = Vec::with_capacity(32 * 3 + 24 + SALT_LEN);
    ikm.extend_from_slice(identity);
    ikm.extend_from_slice(b.blinded_key);
    ikm.extend_from_slice(&b.period.number.to_be_bytes());
    ikm.extend_from_slice(&b.period.length_secs.to_be_bytes());
    ikm.extend_from_slice(&b.revision.to_be_bytes());
    ikm.extend_from_slice(salt);
    if let Some(c) = cookie {
        ikm.extend_from_slice(c);
    }
    let mut okm = [0u8; 44];
    Hkdf::<Sha256>::new(Some(DESC_ENC_SALT), &ikm).expand(DESC_ENC_INFO, &mut okm).expect("44 bytes is a valid HKDF length");
    crate::crypto::kdf::wipe(&mut ikm);
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    key.copy_from_slice(&okm[..32]);
    nonce.copy_from_slice(&okm[32..]);
    (key, nonce)
}

/// A client-authorization entry's client id, cookie key and cookie nonce, from the DH output.
pub fn client_entry_keys(
    dh: &[u8; 32],
    ephemeral: &[u8; 32],
    client: &[u8; 32],
    identity: &[u8; 32],
    blinded_key: &[u8; 32],
    salt: &[u8; 16],
) -> ([u8; 8], [u8; 32], [u8; 12]) {
    let mut ikm = Vec::with_capacity(32 * 5 + SALT_LEN);
    for part in [&dh[..], ephemeral, client, identity, blinded_key, salt] {
        ikm.extend_from_slice(part);
    }
    let mut okm = [0u8; 52];
    Hkdf::<Sha256>::new(Some(CLIENT_AUTH_SALT), &ikm).expand(CLIENT_AUTH_INFO, &mut okm).expect("52 bytes is a valid HKDF length");
    crate::crypto::kdf::wipe(&mut ikm);
    let (mut id, mut key, mut nonce) = ([0u8; 8], [0u8; 32], [0u8; 12]);
    id.copy_from_slice(&okm[..8]);
    key.copy_from_slice(&okm[8..40]);
    nonce.copy_from_slice(&okm[40..]);
    (id, key, nonce)
}

// ---- plaintext ----

impl IntroList {
    /// The plaintext bytes, zero-padded to a multiple of [`PLAINTEXT_PAD`].
    pub fn encode(&self) -> Result<Vec<u8>, InnerError> {
        if self.intro_points.is_empty() || self.intro_points.len() > MAX_INTRO_POINTS {
            return Err(InnerError::Unencodable("a descriptor lists 1 to 10 introduction points"));
        }
        let mut b = vec![INTRO_LIST_VERSION, self.intro_points.len() as u8];
        for ip in &self.intro_points {
            crate::relay_msg::encode_addr(&mut b, &ip.relay.addr.ip());
            b.extend_from_slice(&ip.relay.addr.port().to_be_bytes());
            for k in [&ip.relay.identity, &ip.relay.link_key, &ip.onion_key, &ip.auth_key, &ip.enc_key] {
                b.extend_from_slice(k);
            }
            ip.ext.encode(&mut b);
        }
        self.ext.encode(&mut b);
        b.resize(b.len().div_ceil(PLAINTEXT_PAD) * PLAINTEXT_PAD, 0);
        Ok(b)
    }

    /// Reads a plaintext: the list, then only zero bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        if r.u8()? != INTRO_LIST_VERSION {
            return Err(DecodeError::Invalid("unknown introduction-point list version"));
        }
        let n = r.u8()? as usize;
        if n == 0 || n > MAX_INTRO_POINTS {
            return Err(DecodeError::Invalid("1 to 10 introduction points"));
        }
        let mut intro_points = Vec::with_capacity(n);
        for _ in 0..n {
            let ip: IpAddr = match r.u8()? {
                4 => IpAddr::from(r.array::<4>()?),
                6 => IpAddr::from(r.array::<16>()?),
                _ => return Err(DecodeError::Invalid("address type")),
            };
            let port = r.u16()?;
            if port == 0 {
                return Err(DecodeError::Invalid("port 0"));
            }
            let identity = r.array()?;
            let link_key = r.array()?;
            let onion_key = r.array()?;
            let auth_key = r.array()?;
            if !is_usable_identity(&auth_key) {
                return Err(DecodeError::Invalid("introduction-point auth key is not a usable ed25519 key"));
            }
            let enc_key = r.array()?;
            let ext = Extensions::decode_checked(&mut r, &[])?;
            intro_points.push(IntroPoint {
                relay: ExtendTarget { addr: SocketAddr::new(ip, port), identity, link_key },
                onion_key,
                auth_key,
                enc_key,
                ext,
            });
        }
        let ext = Extensions::decode_checked(&mut r, &[])?;
        if r.rest().iter().any(|&b| b != 0) {
            return Err(DecodeError::Invalid("padding is not zero"));
        }
        Ok(IntroList { intro_points, ext })
    }
}

// ---- encryption ----

/// Encrypts `list` for the descriptor described by `b`, of the service whose identity key is
/// `identity`. With a non-empty `clients` (authorized clients' x25519 keys, at most
/// [`MAX_AUTH_ENTRIES`]), only those clients can decrypt. All randomness comes from `rng`.
pub fn encrypt<R: RngCore + CryptoRng>(
    identity: &[u8; 32],
    b: &DescBinding,
    list: &IntroList,
    clients: &[PublicKey],
    rng: &mut R,
) -> Result<Vec<u8>, InnerError> {
    let mut salt = [0u8; SALT_LEN];
    rng.fill_bytes(&mut salt);
    let mut out = salt.to_vec();
    let mut cookie = None;
    if clients.is_empty() {
        out.push(0);
    } else {
        if clients.len() > MAX_AUTH_ENTRIES {
            return Err(InnerError::Unencodable("more than 256 authorized clients"));
        }
        let mut c = [0u8; 32];
        rng.fill_bytes(&mut c);
        let e = StaticSecret::random_from_rng(&mut *rng);
        let e_pub = PublicKey::from(&e);
        let mut entries: Vec<[u8; AUTH_ENTRY_LEN]> = Vec::new();
        for client in clients {
            let dh = e.diffie_hellman(client);
            if !dh.was_contributory() {
                return Err(InnerError::Unencodable("an authorized client key is of small order"));
            }
            let (id, key, nonce) = client_entry_keys(dh.as_bytes(), e_pub.as_bytes(), client.as_bytes(), identity, b.blinded_key, &salt);
            let mut ct = c.to_vec();
            AesGcmAead::new(&key).seal_message(&nonce, b"", &mut ct);
            let mut entry = [0u8; AUTH_ENTRY_LEN];
            entry[..CLIENT_ID_LEN].copy_from_slice(&id);
            entry[CLIENT_ID_LEN..].copy_from_slice(&ct);
            entries.push(entry);
        }
        // Random entries hide the number of clients (up to the padding step).
        let padded = clients.len().div_ceil(AUTH_ENTRY_PAD) * AUTH_ENTRY_PAD;
        while entries.len() < padded {
            let mut entry = [0u8; AUTH_ENTRY_LEN];
            rng.fill_bytes(&mut entry);
            entries.push(entry);
        }
        // Sorted, so the order reveals nothing about the list given.
        entries.sort_unstable();
        out.push(1);
        out.extend_from_slice(e_pub.as_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
        for entry in &entries {
            out.extend_from_slice(entry);
        }
        cookie = Some(c);
    }
    let (key, nonce) = desc_key_nonce(identity, b, &salt, cookie.as_ref());
    let mut body = list.encode()?;
    AesGcmAead::new(&key).seal_message(&nonce, &out.clone(), &mut body);
    out.extend_from_slice(&body);
    if out.len() > MAX_ENCRYPTED_LEN {
        return Err(InnerError::Unencodable("encrypted part larger than 20 KiB"));
    }
    Ok(out)
}

/// Decrypts the encrypted part of a verified descriptor with the service's identity (from the
/// address) and, for a service with client authorization, this client's x25519 secret key.
/// A client without an authorized key gets [`InnerError::NotAuthorized`]. `b` must come from a
/// descriptor verified against `blind_public(identity, period)` ([`super::desc`]).
pub fn decrypt(identity: &[u8; 32], b: &DescBinding, encrypted: &[u8], client: Option<&StaticSecret>) -> Result<IntroList, InnerError> {
    let mut r = Reader::new(encrypted);
    let salt: [u8; SALT_LEN] = r.array().map_err(|_| InnerError::Malformed("truncated"))?;
    let mut cookie = None;
    match r.u8().map_err(|_| InnerError::Malformed("truncated"))? {
        0 => {}
        1 => {
            let e_pub: [u8; 32] = r.array().map_err(|_| InnerError::Malformed("truncated"))?;
            let count = r.u16().map_err(|_| InnerError::Malformed("truncated"))? as usize;
            if count == 0 || count > MAX_AUTH_ENTRIES {
                return Err(InnerError::Malformed("1 to 256 client-authorization entries"));
            }
            let entries = r.take(count * AUTH_ENTRY_LEN).map_err(|_| InnerError::Malformed("truncated"))?;
            let secret = client.ok_or(InnerError::NotAuthorized)?;
            let client_pub = PublicKey::from(secret);
            let dh = secret.diffie_hellman(&PublicKey::from(e_pub));
            if !dh.was_contributory() {
                return Err(InnerError::NotAuthorized);
            }
            let (id, key, nonce) = client_entry_keys(dh.as_bytes(), &e_pub, client_pub.as_bytes(), identity, b.blinded_key, &salt);
            let aead = AesGcmAead::new(&key);
            let found = entries
                .chunks_exact(AUTH_ENTRY_LEN)
                .filter(|e| e[..CLIENT_ID_LEN] == id)
                .find_map(|e| aead.open_message(&nonce, b"", &e[CLIENT_ID_LEN..]));
            let c: [u8; 32] = found.and_then(|v| v.try_into().ok()).ok_or(InnerError::NotAuthorized)?;
            cookie = Some(c);
        }
        _ => return Err(InnerError::Malformed("unknown client-authorization type")),
    }
    let header_len = encrypted.len() - r.remaining();
    let (key, nonce) = desc_key_nonce(identity, b, &salt, cookie.as_ref());
    let plain = AesGcmAead::new(&key)
        .open_message(&nonce, &encrypted[..header_len], r.rest())
        .ok_or(InnerError::DecryptFailed)?;
    IntroList::decode(&plain).map_err(InnerError::BadPlaintext)
}

/// Builds the signed descriptor text a service uploads for one period: derives the blinded key
/// from `identity`, encrypts `list` (for `clients` if any) and signs.
pub fn make_descriptor<R: RngCore + CryptoRng>(
    identity: &ed25519_dalek::SigningKey,
    period: TimePeriod,
    revision: u64,
    lifetime_secs: u64,
    list: &IntroList,
    clients: &[PublicKey],
    rng: &mut R,
) -> Result<String, InnerError> {
    let key = super::blind::BlindedKey::derive(identity, period);
    let blinded = key.public();
    let id_pub = identity.verifying_key().to_bytes();
    let encrypted = encrypt(&id_pub, &DescBinding { blinded_key: &blinded, period, revision }, list, clients, rng)?;
    let d = HsDescriptor { blinded_key: blinded, period, revision, lifetime_secs, encrypted };
    Ok(d.encode_signed(&key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext::Extension;
    use crate::hs::{blind_public, HsDescriptor};
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn intro(i: u8) -> IntroPoint {
        IntroPoint {
            relay: ExtendTarget {
                addr: if i.is_multiple_of(2) { format!("192.0.2.{i}:9001") } else { format!("[2001:db8::{i}]:443") }.parse().unwrap(),
                identity: [i; 32],
                link_key: [i + 1; 32],
            },
            onion_key: [i + 2; 32],
            auth_key: SigningKey::from_bytes(&[i + 3; 32]).verifying_key().to_bytes(),
            enc_key: [i + 4; 32],
            ext: Extensions::none(),
        }
    }

    fn list(n: u8) -> IntroList {
        IntroList { intro_points: (1..=n).map(intro).collect(), ext: Extensions::none() }
    }

    struct Service {
        id: SigningKey,
        period: TimePeriod,
    }

    impl Service {
        fn new(seed: u8) -> Self {
            Service { id: SigningKey::from_bytes(&[seed; 32]), period: TimePeriod { number: 20_000, length_secs: 86_400 } }
        }
        fn identity(&self) -> [u8; 32] {
            self.id.verifying_key().to_bytes()
        }
        fn descriptor(&self, l: &IntroList, clients: &[PublicKey], seed: u64) -> String {
            make_descriptor(&self.id, self.period, 3, 3600, l, clients, &mut StdRng::seed_from_u64(seed)).unwrap()
        }
        /// What a client does: compute the blinded key from the address, verify, decrypt.
        fn fetch(&self, text: &str, identity: &[u8; 32], client: Option<&StaticSecret>) -> Result<IntroList, InnerError> {
            let blinded = blind_public(identity, self.period).unwrap();
            let d = HsDescriptor::parse(text).unwrap().verify(&blinded).map_err(|_| InnerError::DecryptFailed)?;
            decrypt(identity, &DescBinding::of(&d), &d.encrypted, client)
        }
    }

    #[test]
    fn plaintext_round_trip_and_padding() {
        for n in 1..=10 {
            let mut l = list(n);
            l.intro_points[0].ext = Extensions(vec![Extension { ty: 7, data: vec![1, 2] }]);
            let b = l.encode().unwrap();
            assert_eq!(b.len() % PLAINTEXT_PAD, 0);
            assert_eq!(IntroList::decode(&b).unwrap(), l);
        }
        assert!(list(0).encode().is_err());
        assert!(list(11).encode().is_err());
        let mut b = list(2).encode().unwrap();
        *b.last_mut().unwrap() = 1;
        assert!(IntroList::decode(&b).is_err(), "non-zero padding");
        let mut crit = list(1);
        crit.ext = Extensions(vec![Extension { ty: 0x80, data: vec![] }]);
        assert!(IntroList::decode(&crit.encode().unwrap()).is_err(), "unknown critical extension");
        let mut weak = list(1);
        weak.intro_points[0].auth_key = [0; 32];
        assert!(IntroList::decode(&weak.encode().unwrap()).is_err(), "unusable auth key");
    }

    #[test]
    fn round_trip_through_the_descriptor() {
        let s = Service::new(1);
        let l = list(3);
        let text = s.descriptor(&l, &[], 1);
        assert_eq!(s.fetch(&text, &s.identity(), None).unwrap(), l);
        // A client key given to a service without client authorization is simply unused.
        assert_eq!(s.fetch(&text, &s.identity(), Some(&StaticSecret::from([9; 32]))).unwrap(), l);
        // Fresh salt each time: two encryptions of the same list differ.
        assert_ne!(text, s.descriptor(&l, &[], 2));
    }

    /// The HSDir's view: the descriptor text and the blinded key (which it verified the
    /// signature with), never the identity. Nothing it can compute from that opens the list.
    #[test]
    fn hsdir_cannot_decrypt() {
        let s = Service::new(2);
        let l = list(2);
        let text = s.descriptor(&l, &[], 3);
        let d = HsDescriptor::parse(&text).unwrap().verify_self_signed().unwrap();
        let b = DescBinding::of(&d);
        // Its best guesses for the identity: the blinded key itself, zeros, another service.
        for guess in [d.blinded_key, [0; 32], Service::new(3).identity()] {
            assert_eq!(decrypt(&guess, &b, &d.encrypted, None), Err(InnerError::DecryptFailed));
        }
        // And no introduction-point key or address appears in what it stores.
        let ip = &l.intro_points[0];
        for secret in [&ip.relay.identity[..], &ip.onion_key, &ip.auth_key, &ip.enc_key, &s.identity()] {
            assert!(!d.encrypted.windows(secret.len()).any(|w| w == secret));
            assert!(!text.contains(&crate::doc::lines::enc64(secret)));
        }
        assert!(!text.contains("192.0.2"));
        // The service's identity works.
        assert_eq!(decrypt(&s.identity(), &b, &d.encrypted, None).unwrap(), l);
    }

    #[test]
    fn wrong_identity_or_binding_fails() {
        let s = Service::new(4);
        let text = s.descriptor(&list(1), &[], 4);
        let d = HsDescriptor::parse(&text).unwrap().verify_self_signed().unwrap();
        let other = Service::new(5).identity();
        assert_eq!(decrypt(&other, &DescBinding::of(&d), &d.encrypted, None), Err(InnerError::DecryptFailed));
        // The encrypted part moved into a descriptor with another revision or period fails.
        let mut b = DescBinding::of(&d);
        b.revision += 1;
        assert_eq!(decrypt(&s.identity(), &b, &d.encrypted, None), Err(InnerError::DecryptFailed));
        let mut b = DescBinding::of(&d);
        b.period = b.period.next();
        assert_eq!(decrypt(&s.identity(), &b, &d.encrypted, None), Err(InnerError::DecryptFailed));
    }

    #[test]
    fn tampering_any_byte_fails() {
        let s = Service::new(6);
        let alice = StaticSecret::from([0x11; 32]);
        for clients in [vec![], vec![PublicKey::from(&alice)]] {
            let text = s.descriptor(&list(1), &clients, 5);
            let d = HsDescriptor::parse(&text).unwrap().verify_self_signed().unwrap();
            let b = DescBinding::of(&d);
            let me = if clients.is_empty() { None } else { Some(&alice) };
            assert!(decrypt(&s.identity(), &b, &d.encrypted, me).is_ok());
            for i in 0..d.encrypted.len() {
                let mut bad = d.encrypted.clone();
                bad[i] ^= 0x40;
                assert!(decrypt(&s.identity(), &b, &bad, me).is_err(), "byte {i}");
            }
            assert!(decrypt(&s.identity(), &b, &d.encrypted[..d.encrypted.len() - 1], me).is_err());
        }
    }

    #[test]
    fn client_authorization() {
        let s = Service::new(7);
        let alice = StaticSecret::from([0x21; 32]);
        let bob = StaticSecret::from([0x22; 32]);
        let eve = StaticSecret::from([0x23; 32]);
        let clients = [PublicKey::from(&alice), PublicKey::from(&bob)];
        let l = list(2);
        let text = s.descriptor(&l, &clients, 6);
        assert_eq!(s.fetch(&text, &s.identity(), Some(&alice)).unwrap(), l);
        assert_eq!(s.fetch(&text, &s.identity(), Some(&bob)).unwrap(), l);
        assert_eq!(s.fetch(&text, &s.identity(), Some(&eve)), Err(InnerError::NotAuthorized));
        assert_eq!(s.fetch(&text, &s.identity(), None), Err(InnerError::NotAuthorized));
        // Padded to 16 entries, no client key or cookie in clear.
        let d = HsDescriptor::parse(&text).unwrap().verify_self_signed().unwrap();
        assert_eq!(&d.encrypted[SALT_LEN + 1 + 32..SALT_LEN + 1 + 34], &16u16.to_be_bytes());
        for c in &clients {
            assert!(!d.encrypted.windows(32).any(|w| w == c.as_bytes()));
        }
        // An authorized client with the wrong address still fails (the entry is bound to it).
        assert_eq!(
            decrypt(&Service::new(8).identity(), &DescBinding::of(&d), &d.encrypted, Some(&alice)),
            Err(InnerError::NotAuthorized)
        );
        // 17 clients: 32 entries.
        let many: Vec<PublicKey> = (0..17u8).map(|i| PublicKey::from(&StaticSecret::from([i + 40; 32]))).collect();
        let text = s.descriptor(&l, &many, 7);
        let d = HsDescriptor::parse(&text).unwrap().verify_self_signed().unwrap();
        assert_eq!(&d.encrypted[SALT_LEN + 1 + 32..SALT_LEN + 1 + 34], &32u16.to_be_bytes());
        assert_eq!(s.fetch(&text, &s.identity(), Some(&StaticSecret::from([56; 32]))).unwrap(), l);
        // Small-order client keys are refused at encryption.
        let b = DescBinding { blinded_key: &[1; 32], period: s.period, revision: 0 };
        assert!(encrypt(&s.identity(), &b, &l, &[PublicKey::from([0; 32])], &mut StdRng::seed_from_u64(1)).is_err());
        let too_many = vec![PublicKey::from(&alice); MAX_AUTH_ENTRIES + 1];
        assert!(encrypt(&s.identity(), &b, &l, &too_many, &mut StdRng::seed_from_u64(1)).is_err());
    }

    #[test]
    fn largest_descriptor_fits() {
        let s = Service::new(9);
        let clients: Vec<PublicKey> = (0..MAX_AUTH_ENTRIES).map(|i| PublicKey::from(&StaticSecret::from([i as u8 ^ 0x5a; 32]))).collect();
        let mut l = list(10);
        for ip in &mut l.intro_points {
            ip.relay.addr = "[2001:db8::1]:443".parse().unwrap();
        }
        let text = s.descriptor(&l, &clients, 8);
        assert!(text.len() <= super::super::desc::MAX_HS_DESCRIPTOR_LEN);
        assert_eq!(s.fetch(&text, &s.identity(), Some(&StaticSecret::from([0x5a; 32]))).unwrap(), l);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn decoders_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = IntroList::decode(&raw);
            let b = DescBinding { blinded_key: &[3; 32], period: TimePeriod { number: 1, length_secs: 60 }, revision: 0 };
            let _ = decrypt(&[1; 32], &b, &raw, None);
            let _ = decrypt(&[1; 32], &b, &raw, Some(&StaticSecret::from([2; 32])));
        }

        #[test]
        fn mutated_plaintexts_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let mut b = list(3).encode().unwrap();
            let i = pos.index(b.len());
            b[i] = byte;
            let _ = IntroList::decode(&b);
            let _ = IntroList::decode(&b[..cut.index(b.len())]);
        }
    }
}
