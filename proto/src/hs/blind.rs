//! Blinded keys: for each time period an onion service signs its descriptor with a key derived
//! from its identity and the period, so directories can check descriptors without learning the
//! identity (the address) or linking one service across periods.
//!
//! With `A` the identity key (a point), `a` its secret scalar, `n` the period number and `L` the
//! period length in seconds:
//! - `h = SHA-512("allium-hs-blind-v1" | A | u64be(n) | u64be(L))`, reduced modulo the group
//!   order `l` (a 64-byte wide reduction);
//! - blinded public key `A' = h·A`; blinded secret scalar `a' = h·a mod l`;
//! - the blinded key's nonce prefix is `SHA-512("allium-hs-blind-prefix-v1" | prefix | A')[..32]`
//!   where `prefix` is the identity's (the upper half of SHA-512 of its seed, as RFC 8032).
//!
//! Anyone who knows `A` (the address) computes `A'` for any period; from `A'` alone, `A` cannot be
//! found (`h` depends on `A`). Signatures by `a'` are ordinary ed25519 signatures under `A'`,
//! verified strictly.

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha512};

use super::address::is_usable_identity;

const BLIND_PREFIX: &[u8] = b"allium-hs-blind-v1";
const NONCE_PREFIX: &[u8] = b"allium-hs-blind-prefix-v1";

/// A time period: its number and length (the period runs from `number × length` seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimePeriod {
    pub number: u64,
    pub length_secs: u64,
}

impl TimePeriod {
    /// The period holding unix time `t` for periods of `length_secs` (≥ 1).
    pub fn at(t: u64, length_secs: u64) -> Self {
        let length_secs = length_secs.max(1);
        TimePeriod { number: t / length_secs, length_secs }
    }

    pub fn start(&self) -> u64 {
        self.number.saturating_mul(self.length_secs)
    }

    pub fn end(&self) -> u64 {
        self.start().saturating_add(self.length_secs)
    }

    /// The following period (saturating at the last representable one).
    pub fn next(&self) -> Self {
        TimePeriod { number: self.number.saturating_add(1), length_secs: self.length_secs }
    }
}

fn blinding_factor(identity: &[u8; 32], period: TimePeriod) -> Scalar {
    let mut h = Sha512::new();
    h.update(BLIND_PREFIX);
    h.update(identity);
    h.update(period.number.to_be_bytes());
    h.update(period.length_secs.to_be_bytes());
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// `A'` for the identity `A` and a period; `None` when `A` is not a usable key.
pub fn blind_public(identity: &[u8; 32], period: TimePeriod) -> Option<[u8; 32]> {
    if !is_usable_identity(identity) {
        return None;
    }
    let a = CompressedEdwardsY(*identity).decompress()?;
    Some((blinding_factor(identity, period) * a).compress().0)
}

/// A service's signing key for one period.
pub struct BlindedKey {
    esk: ExpandedSecretKey,
    public: VerifyingKey,
}

impl BlindedKey {
    /// Derives the period's key from the service's identity key.
    pub fn derive(identity: &SigningKey, period: TimePeriod) -> Self {
        let id_pub = identity.verifying_key().to_bytes();
        let base = ExpandedSecretKey::from(&identity.to_bytes());
        let scalar = blinding_factor(&id_pub, period) * base.scalar;
        let public = VerifyingKey::from(&ExpandedSecretKey { scalar, hash_prefix: [0; 32] });
        let mut h = Sha512::new();
        h.update(NONCE_PREFIX);
        h.update(base.hash_prefix);
        h.update(public.to_bytes());
        let mut hash_prefix = [0u8; 32];
        hash_prefix.copy_from_slice(&h.finalize()[..32]);
        BlindedKey { esk: ExpandedSecretKey { scalar, hash_prefix }, public }
    }

    pub fn public(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    pub fn sign(&self, msg: &[u8]) -> Signature {
        raw_sign::<Sha512>(&self.esk, msg, &self.public)
    }
}

/// Checks a signature by a blinded key (strict ed25519 verification).
pub fn verify_blinded(blinded: &[u8; 32], msg: &[u8], sig: &Signature) -> bool {
    VerifyingKey::from_bytes(blinded).is_ok_and(|k| !k.is_weak() && k.verify_strict(msg, sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn secret_and_public_blinding_agree_and_signatures_verify() {
        let id = service(1);
        let p = TimePeriod::at(1_700_000_000, 86_400);
        let k = BlindedKey::derive(&id, p);
        assert_eq!(Some(k.public()), blind_public(&id.verifying_key().to_bytes(), p));
        let sig = k.sign(b"descriptor");
        assert!(verify_blinded(&k.public(), b"descriptor", &sig));
        assert!(!verify_blinded(&k.public(), b"descriptor!", &sig));
        assert!(!verify_blinded(&id.verifying_key().to_bytes(), b"descriptor", &sig), "not valid under the identity");
        // Deterministic, like ed25519.
        assert_eq!(k.sign(b"descriptor"), sig);
    }

    #[test]
    fn blinded_keys_differ_across_periods_services_and_lengths() {
        let a = service(1).verifying_key().to_bytes();
        let b = service(2).verifying_key().to_bytes();
        let p = TimePeriod { number: 10, length_secs: 3600 };
        let keys = [
            blind_public(&a, p).unwrap(),
            blind_public(&a, p.next()).unwrap(),
            blind_public(&b, p).unwrap(),
            blind_public(&a, TimePeriod { number: 10, length_secs: 7200 }).unwrap(),
            a,
        ];
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "{i} vs {j}");
            }
        }
        assert_eq!(blind_public(&[0; 32], p), None);
    }

    #[test]
    fn periods() {
        let p = TimePeriod::at(3601, 3600);
        assert_eq!((p.number, p.start(), p.end()), (1, 3600, 7200));
        assert_eq!(TimePeriod::at(3599, 3600).number, 0);
        assert_eq!(p.next().start(), 7200);
        assert_eq!(TimePeriod::at(5, 0).length_secs, 1, "a zero length is treated as 1 s");
    }
}
