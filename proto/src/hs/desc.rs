//! The onion-service descriptor: the signed document an HSDir stores and serves.
//!
//! ```text
//! allium-hs-descriptor 1
//! blinded-key <b64, 32 bytes>
//! period <number> <length-secs>
//! revision <uint>
//! lifetime <secs>
//! encrypted <b64 of the encrypted part>
//! signature <b64, 64 bytes>
//! ```
//!
//! It follows the text rules of every directory document (see `docs/PROTOCOL.md`, "Text rules
//! shared by every document" and "Onion services → Descriptor"). It is signed by the period's
//! blinded key over `"allium-hs-descriptor-sig-v1" | 0x00 | SHA-256(signed part)`; the
//! introduction points are inside `encrypted` ([`super::inner`]), which only holders of the
//! unblinded identity (the address) can open.
//!
//! An HSDir checks the signature under the key the document names
//! ([`UnverifiedHsDescriptor::verify_self_signed`]) and files it under that key; a client checks
//! it under the blinded key it computed from the address ([`UnverifiedHsDescriptor::verify`]).

use ed25519_dalek::Signature;
use sha2::{Digest as _, Sha256};

use super::address::is_usable_identity;
use super::blind::{verify_blinded, BlindedKey, TimePeriod};
use crate::doc::lines::{self, b64, b64_var, enc64, uint, Mult, Section};
use crate::doc::DocError;

/// First keyword of the document.
pub const DOC_TYPE: &str = "allium-hs-descriptor";
/// Domain-separation prefix of the descriptor signature.
pub const HS_DESCRIPTOR_SIG_PREFIX: &[u8] = b"allium-hs-descriptor-sig-v1\0";
/// Largest descriptor accepted (bytes).
pub const MAX_HS_DESCRIPTOR_LEN: usize = 32 * 1024;
/// Most lines in a descriptor.
pub const MAX_HS_DESCRIPTOR_LINES: usize = 64;
/// Largest `encrypted` field (decoded bytes).
pub const MAX_ENCRYPTED_LEN: usize = 20 * 1024;
/// Longest `lifetime` (seconds): 12 hours.
pub const MAX_LIFETIME_SECS: u64 = 12 * 3600;

const SPEC: &[(&str, Mult)] = &[
    (DOC_TYPE, Mult::Once),
    ("blinded-key", Mult::Once),
    ("period", Mult::Once),
    ("revision", Mult::Once),
    ("lifetime", Mult::Once),
    ("encrypted", Mult::Once),
    ("signature", Mult::Once),
];

/// Why a descriptor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HsDescError {
    #[error("onion-service descriptor: {0}")]
    Syntax(#[from] DocError),
    #[error("onion-service descriptor is for another blinded key than expected")]
    WrongBlindedKey,
    #[error("onion-service descriptor's blinded key is not a usable ed25519 key")]
    BadBlindedKey,
    #[error("onion-service descriptor signature does not verify with its blinded key")]
    BadSignature,
}

/// A descriptor, as the service states it. A parsed one is only obtained through
/// [`UnverifiedHsDescriptor::verify`] or [`UnverifiedHsDescriptor::verify_self_signed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsDescriptor {
    /// The period's blinded key `A'`, which signs the document.
    pub blinded_key: [u8; 32],
    /// The time period the blinded key is for.
    pub period: TimePeriod,
    /// Strictly increases with every new descriptor of this key and period.
    pub revision: u64,
    /// How long an HSDir keeps the descriptor after storing it (1..=[`MAX_LIFETIME_SECS`]).
    pub lifetime_secs: u64,
    /// The encrypted part (1..=[`MAX_ENCRYPTED_LEN`] bytes), see [`super::inner`].
    pub encrypted: Vec<u8>,
}

fn line(out: &mut String, kw: &str, args: &str) {
    out.push_str(kw);
    out.push(' ');
    out.push_str(args);
    out.push('\n');
}

fn signed_message(signed_part: &[u8]) -> Vec<u8> {
    let mut m = HS_DESCRIPTOR_SIG_PREFIX.to_vec();
    m.extend_from_slice(&Sha256::digest(signed_part));
    m
}

impl HsDescriptor {
    /// The signed part: every line before `signature`.
    pub fn encode_unsigned(&self) -> String {
        let mut out = String::with_capacity(256 + self.encrypted.len() * 4 / 3);
        line(&mut out, DOC_TYPE, "1");
        line(&mut out, "blinded-key", &enc64(&self.blinded_key));
        line(&mut out, "period", &format!("{} {}", self.period.number, self.period.length_secs));
        line(&mut out, "revision", &self.revision.to_string());
        line(&mut out, "lifetime", &self.lifetime_secs.to_string());
        line(&mut out, "encrypted", &enc64(&self.encrypted));
        out
    }

    /// The signed document. `key` must be the blinded key named in `blinded_key`; with any other
    /// key the result fails verification.
    pub fn encode_signed(&self, key: &BlindedKey) -> String {
        let mut out = self.encode_unsigned();
        let sig = key.sign(&signed_message(out.as_bytes()));
        line(&mut out, "signature", &enc64(&sig.to_bytes()));
        out
    }

    /// Checks the syntax. Nothing is trusted until [`UnverifiedHsDescriptor::verify`].
    pub fn parse(text: &str) -> Result<UnverifiedHsDescriptor, HsDescError> {
        let ls = lines::split(text, MAX_HS_DESCRIPTOR_LEN, MAX_HS_DESCRIPTOR_LINES)?;
        lines::check_type_line(&ls, DOC_TYPE)?;
        let last = ls.last().expect("split checked the type line exists");
        if last.kw != "signature" {
            return Err(DocError::Missing { keyword: "signature (as the last line)" }.into());
        }
        let keywords: Vec<&str> = SPEC.iter().map(|(k, _)| *k).collect();
        let s = Section::read(&ls, SPEC, &keywords)?;
        let l = s.get("blinded-key");
        let blinded_key: [u8; 32] = b64(l, l.one()?)?;
        let l = s.get("period");
        let a = l.exactly(2)?;
        let (number, length_secs) = (uint(l, a[0])?, uint(l, a[1])?);
        if length_secs == 0 || number.checked_add(1).and_then(|n| n.checked_mul(length_secs)).is_none() {
            return Err(l.bad("period length is zero or the period ends after 2^64 s").into());
        }
        let l = s.get("revision");
        let revision = uint(l, l.one()?)?;
        let l = s.get("lifetime");
        let lifetime_secs = uint(l, l.one()?)?;
        if !(1..=MAX_LIFETIME_SECS).contains(&lifetime_secs) {
            return Err(l.bad("lifetime must be 1 to 43200 seconds").into());
        }
        let l = s.get("encrypted");
        let encrypted = b64_var(l, l.one()?, MAX_ENCRYPTED_LEN)?;
        let l = s.get("signature");
        let signature: [u8; 64] = b64(l, l.one()?)?;
        let signed_part = &text.as_bytes()[..l.start];
        Ok(UnverifiedHsDescriptor {
            desc: HsDescriptor {
                blinded_key,
                period: TimePeriod { number, length_secs },
                revision,
                lifetime_secs,
                encrypted,
            },
            signed_hash: Sha256::digest(signed_part).into(),
            signature,
        })
    }

    /// When an HSDir that stored this descriptor at `stored_at` drops it.
    pub fn expires_at(&self, stored_at: u64) -> u64 {
        stored_at.saturating_add(self.lifetime_secs)
    }

    /// True if an HSDir whose network uses periods of `period_len` seconds should accept this
    /// descriptor at time `now`: same period length, and the period is the one holding `now`,
    /// the one before or the one after (services publish for the current and the next period;
    /// one period of slack each way absorbs clock skew around boundaries).
    pub fn period_acceptable(&self, now: u64, period_len: u64) -> bool {
        let cur = TimePeriod::at(now, period_len);
        self.period.length_secs == cur.length_secs
            && self.period.number.saturating_add(1) >= cur.number
            && self.period.number <= cur.number.saturating_add(1)
    }
}

/// The HSDir revision rule: `new` replaces the stored `old` only if it is for the same blinded
/// key and period and has a strictly greater revision (so a replayed or older descriptor never
/// overwrites a newer one, and an identical re-upload is a no-op).
pub fn should_replace(old: &HsDescriptor, new: &HsDescriptor) -> bool {
    old.blinded_key == new.blinded_key && old.period == new.period && new.revision > old.revision
}

/// A descriptor whose syntax is valid but whose signature is not checked yet.
#[derive(Debug, Clone)]
pub struct UnverifiedHsDescriptor {
    desc: HsDescriptor,
    signed_hash: [u8; 32],
    signature: [u8; 64],
}

impl UnverifiedHsDescriptor {
    /// The blinded key the document names (not yet proven).
    pub fn claimed_blinded_key(&self) -> &[u8; 32] {
        &self.desc.blinded_key
    }

    /// The period the document names (not yet proven).
    pub fn claimed_period(&self) -> TimePeriod {
        self.desc.period
    }

    /// For clients: the document must name `expected` (computed from the address with
    /// [`super::blind_public`] for the period wanted) and be signed by it.
    pub fn verify(self, expected: &[u8; 32]) -> Result<HsDescriptor, HsDescError> {
        if self.desc.blinded_key != *expected {
            return Err(HsDescError::WrongBlindedKey);
        }
        self.verify_self_signed()
    }

    /// For HSDirs, which know no address: the signature must verify (strictly) under the blinded
    /// key the document names, which must be a usable key (canonical, prime order).
    pub fn verify_self_signed(self) -> Result<HsDescriptor, HsDescError> {
        if !is_usable_identity(&self.desc.blinded_key) {
            return Err(HsDescError::BadBlindedKey);
        }
        let msg = {
            let mut m = HS_DESCRIPTOR_SIG_PREFIX.to_vec();
            m.extend_from_slice(&self.signed_hash);
            m
        };
        if !verify_blinded(&self.desc.blinded_key, &msg, &Signature::from_bytes(&self.signature)) {
            return Err(HsDescError::BadSignature);
        }
        Ok(self.desc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    fn sample(seed: u8, revision: u64) -> (HsDescriptor, BlindedKey) {
        let id = SigningKey::from_bytes(&[seed; 32]);
        let period = TimePeriod { number: 19675, length_secs: 86_400 };
        let key = BlindedKey::derive(&id, period);
        let desc = HsDescriptor {
            blinded_key: key.public(),
            period,
            revision,
            lifetime_secs: 10_800,
            encrypted: (0..300u32).map(|i| (i * 7) as u8).collect(),
        };
        (desc, key)
    }

    #[test]
    fn round_trip_and_layout() {
        let (d, k) = sample(1, 5);
        let text = d.encode_signed(&k);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "allium-hs-descriptor 1");
        assert_eq!(lines[2], "period 19675 86400");
        assert_eq!(lines[3], "revision 5");
        assert_eq!(lines[4], "lifetime 10800");
        assert!(lines[6].starts_with("signature "));
        let u = HsDescriptor::parse(&text).unwrap();
        assert_eq!(u.claimed_blinded_key(), &k.public());
        assert_eq!(u.clone().verify(&k.public()).unwrap(), d);
        assert_eq!(u.verify_self_signed().unwrap(), d);
    }

    #[test]
    fn bad_signature_wrong_key_and_unknown_lines() {
        let (d, k) = sample(1, 5);
        let (_, other) = sample(2, 5);
        let text = d.encode_signed(&k);
        // The wrong blinded key (e.g. a client expecting another service or period).
        assert_eq!(HsDescriptor::parse(&text).unwrap().verify(&other.public()), Err(HsDescError::WrongBlindedKey));
        // Signed by another key than the one named.
        let forged = d.encode_signed(&other);
        assert_eq!(HsDescriptor::parse(&forged).unwrap().verify_self_signed(), Err(HsDescError::BadSignature));
        assert_eq!(HsDescriptor::parse(&forged).unwrap().verify(&k.public()), Err(HsDescError::BadSignature));
        // A changed revision breaks the signature.
        let bumped = text.replace("revision 5\n", "revision 6\n");
        assert_eq!(HsDescriptor::parse(&bumped).unwrap().verify(&k.public()), Err(HsDescError::BadSignature));
        // An unknown line inside the signed part is ignored by the parser but covered by the
        // signature; after it, it makes the signature not last.
        let extra = text.replace("lifetime", "x-note hi\nlifetime");
        assert_eq!(HsDescriptor::parse(&extra).unwrap().verify(&k.public()), Err(HsDescError::BadSignature));
        let mut unsigned_extra = d.encode_unsigned();
        unsigned_extra.push_str("x-note hi\n");
        let sig = k.sign(&signed_message(unsigned_extra.as_bytes()));
        unsigned_extra.push_str(&format!("signature {}\n", enc64(&sig.to_bytes())));
        assert_eq!(HsDescriptor::parse(&unsigned_extra).unwrap().verify(&k.public()).unwrap(), d);
        let critical = text.replace("lifetime", "critical-x 1\nlifetime");
        assert!(matches!(HsDescriptor::parse(&critical), Err(HsDescError::Syntax(DocError::UnknownCritical { .. }))));
        // A small-order blinded key is refused before any signature check.
        let mut weak = d.clone();
        weak.blinded_key = [0; 32];
        weak.blinded_key[0] = 1;
        assert_eq!(HsDescriptor::parse(&weak.encode_signed(&k)).unwrap().verify_self_signed(), Err(HsDescError::BadBlindedKey));
    }

    #[test]
    fn field_limits() {
        let (d, k) = sample(3, 0);
        let text = d.encode_signed(&k);
        for (from, to) in [
            ("lifetime 10800", "lifetime 0"),
            ("lifetime 10800", "lifetime 43201"),
            ("period 19675 86400", "period 19675 0"),
            ("period 19675 86400", "period 18446744073709551615 2"),
            ("period 19675 86400", "period 19675"),
            ("revision 0", "revision 00"),
            ("allium-hs-descriptor 1", "allium-hs-descriptor 2"),
        ] {
            let bad = text.replace(from, to);
            assert!(HsDescriptor::parse(&bad).is_err(), "{to}");
        }
        let mut big = d.clone();
        big.encrypted = vec![1; MAX_ENCRYPTED_LEN];
        assert!(HsDescriptor::parse(&big.encode_signed(&k)).unwrap().verify(&k.public()).is_ok());
        big.encrypted.push(1);
        assert!(HsDescriptor::parse(&big.encode_signed(&k)).is_err());
        let mut empty = d;
        empty.encrypted.clear();
        assert!(HsDescriptor::parse(&empty.encode_signed(&k)).is_err());
        let huge = format!("{text}{}", "x y\n".repeat(9000));
        assert!(matches!(HsDescriptor::parse(&huge), Err(HsDescError::Syntax(DocError::TooLarge { .. }))));
    }

    #[test]
    fn revision_rule_and_acceptance() {
        let (d5, _) = sample(1, 5);
        let (d6, _) = sample(1, 6);
        let (other, _) = sample(2, 9);
        assert!(should_replace(&d5, &d6));
        assert!(!should_replace(&d6, &d5), "older revision");
        assert!(!should_replace(&d5, &d5.clone()), "same revision");
        assert!(!should_replace(&d5, &other), "another key");
        let mut next = d6.clone();
        next.period = next.period.next();
        assert!(!should_replace(&d5, &next), "another period");
        let start = d5.period.start();
        assert!(d5.period_acceptable(start, 86_400));
        assert!(d5.period_acceptable(start - 1, 86_400), "next period, published early");
        assert!(d5.period_acceptable(start + 2 * 86_400 - 1, 86_400), "previous period");
        assert!(!d5.period_acceptable(start + 2 * 86_400, 86_400));
        assert!(!d5.period_acceptable(start - 86_400 - 1, 86_400));
        assert!(!d5.period_acceptable(start, 3600), "other period length");
        assert_eq!(d5.expires_at(100), 100 + 10_800);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn parse_never_panics(s in "[ -~\n]{0,400}", raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = HsDescriptor::parse(&s);
            let _ = HsDescriptor::parse(&String::from_utf8_lossy(&raw));
            let _ = HsDescriptor::parse(&format!("allium-hs-descriptor 1\n{s}"));
        }

        #[test]
        fn mutated_descriptors_never_panic_and_never_verify(pos in any::<prop::sample::Index>(), byte in 0x20u8..0x7f) {
            let (d, k) = sample(4, 7);
            let text = d.encode_signed(&k);
            let mut b = text.clone().into_bytes();
            let i = pos.index(b.len());
            prop_assume!(b[i] != b'\n' && b[i] != byte);
            b[i] = byte;
            let t = String::from_utf8(b).unwrap();
            if let Ok(u) = HsDescriptor::parse(&t) {
                // Some base64 spellings decode to the same bytes only if canonical: any accepted
                // change must leave a document that fails verification.
                prop_assert!(u.verify(&k.public()).is_err(), "{}", t);
            }
        }
    }
}
