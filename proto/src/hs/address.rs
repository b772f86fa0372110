//! Onion-service addresses: `<56 base32 characters>.allium`.
//!
//! The 56 characters are RFC 4648 base32 (lowercase, no padding) of 35 bytes:
//! `identity (32) | checksum (2) | version (1)`, where `identity` is the service's ed25519
//! identity key, `version` is [`ADDRESS_VERSION`] and
//! `checksum = SHA-256("allium-onion-checksum-v1" | identity | version)[..2]`.
//!
//! Parsing checks, in this order, each with its own error: the `.allium` suffix, length and
//! alphabet, the version, the checksum, and that the key is a canonical encoding of a point of
//! the prime-order subgroup that is not of small order (so it can sign and be blinded).

use curve25519_dalek::edwards::CompressedEdwardsY;
use sha2::{Digest, Sha256};

/// The address format version this implementation writes and reads.
pub const ADDRESS_VERSION: u8 = 1;
/// The top-level suffix of an onion address.
pub const SUFFIX: &str = ".allium";
/// Base32 characters before the suffix.
pub const ENCODED_LEN: usize = 56;
const CHECKSUM_PREFIX: &[u8] = b"allium-onion-checksum-v1";
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a name is not a usable onion address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("not an onion address (no .allium suffix)")]
    NotOnion,
    #[error("onion address must be 56 base32 characters before .allium")]
    BadEncoding,
    #[error("onion address version {0} is not supported (only version 1)")]
    UnknownVersion(u8),
    #[error("onion address checksum does not match (mistyped address?)")]
    BadChecksum,
    #[error("onion address does not hold a valid ed25519 key")]
    BadKey,
}

/// The last label of a DNS name, ignoring trailing dots (`a.b.` → `b`).
fn last_label(host: &str) -> &str {
    host.trim_end_matches('.').rsplit('.').next().unwrap_or("")
}

/// A parsed onion address: the service's identity key, checked as a usable point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OnionAddress {
    identity: [u8; 32],
}

impl std::fmt::Debug for OnionAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Addresses are secret-ish (knowing one lets you reach the service): never in full.
        f.debug_struct("OnionAddress").finish_non_exhaustive()
    }
}

fn checksum(identity: &[u8; 32], version: u8) -> [u8; 2] {
    let mut h = Sha256::new();
    h.update(CHECKSUM_PREFIX);
    h.update(identity);
    h.update([version]);
    let d = h.finalize();
    [d[0], d[1]]
}

/// True if `key` is a canonical encoding of a point of the prime-order subgroup other than one
/// of small order.
pub fn is_usable_identity(key: &[u8; 32]) -> bool {
    let c = CompressedEdwardsY(*key);
    match c.decompress() {
        // Decompression accepts a few non-canonical encodings: require the round trip.
        Some(p) => p.compress().0 == *key && p.is_torsion_free() && !p.is_small_order(),
        None => false,
    }
}

impl OnionAddress {
    /// The address of a service with this identity key (which must be usable).
    pub fn from_identity(identity: [u8; 32]) -> Result<Self, AddressError> {
        if !is_usable_identity(&identity) {
            return Err(AddressError::BadKey);
        }
        Ok(OnionAddress { identity })
    }

    pub fn identity(&self) -> &[u8; 32] {
        &self.identity
    }

    /// True if the last label of `host` is `allium`, however spelled: any case, with or
    /// without trailing dots (`<addr>.allium.`), with subdomains, or `allium` alone. Such a
    /// name is this client's business: it never reaches an exit.
    pub fn is_onion_host(host: &str) -> bool {
        last_label(host).eq_ignore_ascii_case(&SUFFIX[1..])
    }

    /// True for names no exit may be asked to resolve or connect to: onion names of this
    /// network ([`Self::is_onion_host`]) and Tor's (last label `onion`, any spelling).
    pub fn is_reserved_name(host: &str) -> bool {
        Self::is_onion_host(host) || last_label(host).eq_ignore_ascii_case("onion")
    }

    /// Parses `host` (case-insensitive; subdomains before the 56 characters are ignored, as
    /// `www.<address>.allium` names the same service).
    pub fn parse(host: &str) -> Result<Self, AddressError> {
        if !Self::is_onion_host(host) {
            return Err(AddressError::NotOnion);
        }
        // The last label is `allium` (ASCII, any case), so this cut is on a char boundary.
        let host = host.trim_end_matches('.');
        let label = host[..host.len().saturating_sub(SUFFIX.len())].rsplit('.').next().unwrap_or("");
        let raw = decode_base32(label).ok_or(AddressError::BadEncoding)?;
        let version = raw[34];
        if version != ADDRESS_VERSION {
            return Err(AddressError::UnknownVersion(version));
        }
        let mut identity = [0u8; 32];
        identity.copy_from_slice(&raw[..32]);
        if raw[32..34] != checksum(&identity, version) {
            return Err(AddressError::BadChecksum);
        }
        Self::from_identity(identity)
    }

    /// The address as written: 56 lowercase base32 characters and `.allium`.
    pub fn to_host(&self) -> String {
        let mut raw = [0u8; 35];
        raw[..32].copy_from_slice(&self.identity);
        raw[32..34].copy_from_slice(&checksum(&self.identity, ADDRESS_VERSION));
        raw[34] = ADDRESS_VERSION;
        format!("{}{SUFFIX}", encode_base32(&raw))
    }
}

/// The address form of any 32 bytes under any version, with the checksum that goes with them,
/// valid or not: for tests and tools that must produce the wrong-version and bad-key addresses
/// [`OnionAddress::parse`] refuses.
pub fn encode_unchecked(identity: &[u8; 32], version: u8) -> String {
    let mut raw = [0u8; 35];
    raw[..32].copy_from_slice(identity);
    raw[32..34].copy_from_slice(&checksum(identity, version));
    raw[34] = version;
    format!("{}{SUFFIX}", encode_base32(&raw))
}

fn encode_base32(raw: &[u8; 35]) -> String {
    let mut out = String::with_capacity(ENCODED_LEN);
    for chunk in raw.chunks(5) {
        let mut v = 0u64;
        for b in chunk {
            v = (v << 8) | u64::from(*b);
        }
        for i in (0..8).rev() {
            out.push(ALPHABET[((v >> (i * 5)) & 31) as usize] as char);
        }
    }
    out
}

fn decode_base32(s: &str) -> Option<[u8; 35]> {
    if s.len() != ENCODED_LEN {
        return None;
    }
    let mut out = [0u8; 35];
    for (i, chunk) in s.as_bytes().chunks(8).enumerate() {
        let mut v = 0u64;
        for c in chunk {
            let d = ALPHABET.iter().position(|a| *a == c.to_ascii_lowercase())?;
            v = (v << 5) | d as u64;
        }
        for j in 0..5 {
            out[i * 5 + j] = (v >> (8 * (4 - j))) as u8;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes()
    }

    #[test]
    fn round_trip_and_case() {
        let a = OnionAddress::from_identity(key(1)).unwrap();
        let host = a.to_host();
        assert_eq!(host.len(), ENCODED_LEN + SUFFIX.len());
        assert!(host.ends_with(".allium") && host == host.to_lowercase());
        assert_eq!(OnionAddress::parse(&host).unwrap(), a);
        assert_eq!(OnionAddress::parse(&host.to_uppercase()).unwrap(), a);
        assert_eq!(OnionAddress::parse(&format!("www.{host}")).unwrap(), a);
        // Fully-qualified and mixed-case spellings name the same service (THREATS A21).
        for spelled in [format!("{host}."), format!("{host}.."), format!("WWW.{}.", host.to_uppercase()), format!("a.b.{host}.")] {
            assert!(OnionAddress::is_onion_host(&spelled), "{spelled}");
            assert_eq!(OnionAddress::parse(&spelled).unwrap(), a, "{spelled}");
        }
        assert!(!format!("{a:?}").contains(&host[..10]), "Debug never shows the address");
    }

    #[test]
    fn each_fault_has_its_own_error() {
        let host = OnionAddress::from_identity(key(2)).unwrap().to_host();
        assert_eq!(OnionAddress::parse("example.com"), Err(AddressError::NotOnion));
        assert_eq!(OnionAddress::parse("abc.allium"), Err(AddressError::BadEncoding));
        assert_eq!(OnionAddress::parse(&format!("1{}", &host[1..])), Err(AddressError::BadEncoding), "1 is not base32");
        // One character changed: the checksum (or, in the last characters, the version) fails.
        let c = host.as_bytes()[5];
        let other = if c == b'x' { 'y' } else { 'x' };
        let typo = format!("{}{other}{}", &host[..5], &host[6..]);
        assert_eq!(OnionAddress::parse(&typo), Err(AddressError::BadChecksum));
        // Version 2 with a matching checksum.
        assert_eq!(OnionAddress::parse(&encode_unchecked(&key(2), 2)), Err(AddressError::UnknownVersion(2)));
        assert_eq!(encode_unchecked(&key(2), ADDRESS_VERSION), host);
    }

    /// Keys that are not usable points: not on the curve, small order, or a non-canonical
    /// encoding, each with a correct checksum, fail with BadKey.
    #[test]
    fn non_canonical_and_small_order_keys_are_refused() {
        let with_checksum = |id: [u8; 32]| encode_unchecked(&id, ADDRESS_VERSION);
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1; // y = 1: the neutral element, small order
        let mut non_canonical = [0xffu8; 32];
        non_canonical[31] = 0x7f; // y = 2^255 - 1 ≥ p
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2; // y = 2 has no x on the curve
        for bad in [identity_point, non_canonical, off_curve, [0u8; 32]] {
            assert_eq!(OnionAddress::parse(&with_checksum(bad)), Err(AddressError::BadKey), "{}", hex::encode(bad));
        }
        // A point with a torsion component (a valid key plus a small-order point).
        let p = CompressedEdwardsY(key(3)).decompress().unwrap();
        let t = CompressedEdwardsY(identity_point).decompress().unwrap();
        let eight_torsion = curve25519_dalek::constants::EIGHT_TORSION[1];
        let mixed = (p + eight_torsion + t).compress().0;
        assert_eq!(OnionAddress::parse(&with_checksum(mixed)), Err(AddressError::BadKey));
    }

    /// Every one-character change of one address is refused (deterministic: every position,
    /// every other base32 character).
    #[test]
    fn every_single_character_change_is_caught() {
        let host = OnionAddress::from_identity(key(7)).unwrap().to_host();
        for pos in 0..ENCODED_LEN {
            for &c in ALPHABET.iter().filter(|&&c| c != host.as_bytes()[pos]) {
                let mutated = format!("{}{}{}", &host[..pos], c as char, &host[pos + 1..]);
                assert!(OnionAddress::parse(&mutated).is_err(), "{mutated}");
            }
        }
    }

    /// Every name whose last label is `allium` or `onion` is reserved, however spelled; others
    /// are not.
    #[test]
    fn reserved_names_are_recognised_however_spelled() {
        for name in ["x.allium", "X.ALLIUM", "x.allium.", "x.Allium..", "allium", "ALLIUM.", "a.b.allium", "x.onion", "x.ONION.", "onion", "www.x.onion."] {
            assert!(OnionAddress::is_reserved_name(name), "{name}");
        }
        for name in ["allium.example", "example.com", "xallium", "x.allium.com", "onion.example.", "", "."] {
            assert!(!OnionAddress::is_reserved_name(name), "{name}");
        }
        assert!(!OnionAddress::is_onion_host("x.onion"), "Tor's names are reserved but are not ours");
        assert_eq!(OnionAddress::parse("allium."), Err(AddressError::BadEncoding));
        assert_eq!(OnionAddress::parse("x.onion."), Err(AddressError::NotOnion));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = OnionAddress::parse(&s);
            let _ = OnionAddress::parse(&format!("{s}.allium"));
            let _ = OnionAddress::parse(&format!("{s}\u{e9}llium"));
        }
    }
}
