//! Authority signing-key certificates: an authority's long-term identity key certifies a
//! medium-term signing key until an expiry time. Votes, consensus signatures and detached
//! signatures are made by the signing key and carry the certificate, so the identity key can be
//! kept offline.
//!
//! One line, the same in documents and in the `authority_signing.cert` file:
//! ```text
//! authority-cert <identity fingerprint> <signing key b64> <published> <expires> <signature b64>
//! ```
//! The signature is the identity's ed25519 signature (checked with `verify_strict`) over
//! `"allium-authority-cert-v1" | 0x00 | identity | signing key | BE64(published) | BE64(expires)`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::entry::line;
use super::lines::{self, b64, enc64, fingerprint, uint, Line};
use super::DocError;
use crate::ids::RelayId;

/// The keyword of a certificate line.
pub const AUTHORITY_CERT_KW: &str = "authority-cert";
/// Domain-separation prefix of the message an identity signs to certify a signing key.
pub const AUTHORITY_CERT_PREFIX: &[u8] = b"allium-authority-cert-v1\0";
/// How far in the future a certificate's `published` may be (clock skew allowance, seconds).
pub const MAX_CERT_SKEW_SECS: u64 = 3600;
/// Longest certificate line accepted as a document of its own (the cert file).
const MAX_CERT_LEN: usize = 512;

/// A signing-key certificate (parsed; nothing about it is trusted before [`AuthorityCert::valid_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthorityCert {
    /// The authority whose identity key made the certificate.
    pub identity: RelayId,
    /// The certified ed25519 signing key.
    pub signing_key: [u8; 32],
    /// When it was made (unix seconds).
    pub published: u64,
    /// The last second it is valid (unix seconds).
    pub expires: u64,
    /// The identity's signature.
    pub signature: [u8; 64],
}

/// Why a certificate is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("signing-key certificate does not verify with the identity key it names")]
    BadSignature,
    #[error("signing-key certificate has published {} not before expires {}", crate::time::Utc(*published), crate::time::Utc(*expires))]
    BadTimes { published: u64, expires: u64 },
    #[error("signing-key certificate is not a valid ed25519 key")]
    BadKey,
    #[error("signing-key certificate not valid yet (published {}, now {})", crate::time::Utc(*published), crate::time::Utc(*now))]
    NotYetValid { published: u64, now: u64 },
    #[error("signing-key certificate expired (expires {}, now {})", crate::time::Utc(*expires), crate::time::Utc(*now))]
    Expired { expires: u64, now: u64 },
    #[error("signing key does not match its certificate")]
    KeyMismatch,
}

impl CertError {
    /// Whether the certificate itself is sound and only the time is wrong.
    pub fn is_time(&self) -> bool {
        matches!(self, CertError::NotYetValid { .. } | CertError::Expired { .. })
    }
}

fn message(identity: &RelayId, signing_key: &[u8; 32], published: u64, expires: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTHORITY_CERT_PREFIX.len() + 80);
    m.extend_from_slice(AUTHORITY_CERT_PREFIX);
    m.extend_from_slice(&identity.0);
    m.extend_from_slice(signing_key);
    m.extend_from_slice(&published.to_be_bytes());
    m.extend_from_slice(&expires.to_be_bytes());
    m
}

impl AuthorityCert {
    /// `identity` certifies `signing_key` from `published` to `expires`.
    pub fn sign(identity: &SigningKey, signing_key: &VerifyingKey, published: u64, expires: u64) -> Self {
        let id = RelayId(identity.verifying_key().to_bytes());
        let key = signing_key.to_bytes();
        AuthorityCert {
            identity: id,
            signing_key: key,
            published,
            expires,
            signature: identity.sign(&message(&id, &key, published, expires)).to_bytes(),
        }
    }

    /// The line's arguments (everything after the keyword).
    pub(crate) fn line_args(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.identity.fingerprint(),
            enc64(&self.signing_key),
            self.published,
            self.expires,
            enc64(&self.signature)
        )
    }

    /// Appends the certificate line to `out`.
    pub(crate) fn write_line(&self, out: &mut String) {
        line(out, AUTHORITY_CERT_KW, &self.line_args());
    }

    /// The certificate as one line ending with LF (the cert file's content).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_line(&mut out);
        out
    }

    /// Parses a certificate line inside a document (syntax only).
    pub(crate) fn parse_line(l: &Line) -> Result<Self, DocError> {
        let a = l.exactly(5)?;
        Ok(AuthorityCert {
            identity: fingerprint(l, a[0])?,
            signing_key: b64(l, a[1])?,
            published: uint(l, a[2])?,
            expires: uint(l, a[3])?,
            signature: b64(l, a[4])?,
        })
    }

    /// Parses the cert file: exactly one `authority-cert` line ending with LF (syntax only).
    pub fn parse(text: &str) -> Result<Self, DocError> {
        let ls = lines::split(text, MAX_CERT_LEN, 1)?;
        let l = ls.first().ok_or(DocError::Missing { keyword: AUTHORITY_CERT_KW })?;
        if l.kw != AUTHORITY_CERT_KW {
            return Err(DocError::WrongDocumentType { expected: AUTHORITY_CERT_KW });
        }
        Self::parse_line(l)
    }

    /// The certified key, if it is a usable ed25519 key (not small order).
    fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.signing_key).ok().filter(|k| !k.is_weak())
    }

    /// Checks everything but the time: the times are in order, the signing key is a usable
    /// key, and the identity's signature verifies.
    pub fn verify_signature(&self) -> Result<(), CertError> {
        if self.published >= self.expires {
            return Err(CertError::BadTimes { published: self.published, expires: self.expires });
        }
        self.verifying_key().ok_or(CertError::BadKey)?;
        let id = self.identity.verifying_key().ok_or(CertError::BadSignature)?;
        let m = message(&self.identity, &self.signing_key, self.published, self.expires);
        id.verify_strict(&m, &Signature::from_bytes(&self.signature)).map_err(|_| CertError::BadSignature)
    }

    /// Checks the time only: `published ≤ now + MAX_CERT_SKEW_SECS` and `now ≤ expires`.
    pub fn check_time(&self, now: u64) -> Result<(), CertError> {
        if self.published > now.saturating_add(MAX_CERT_SKEW_SECS) {
            return Err(CertError::NotYetValid { published: self.published, now });
        }
        if now > self.expires {
            return Err(CertError::Expired { expires: self.expires, now });
        }
        Ok(())
    }

    /// Whether the certificate is valid at `now`: times in order and around `now`, signing key
    /// usable, identity signature correct. The time is checked first (it is cheap).
    pub fn valid_at(&self, now: u64) -> Result<(), CertError> {
        self.check_time(now)?;
        self.verify_signature()
    }

    /// Whether `sig` is a valid signature by the certified key over `msg` (the certificate
    /// itself is not checked here).
    pub fn signing_key_verifies(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.verifying_key().is_some_and(|k| k.verify_strict(msg, &Signature::from_bytes(sig)).is_ok())
    }
}

/// A signing key with its certificate: what an authority signs votes and consensuses with.
#[derive(Clone)]
pub struct AuthoritySigner {
    key: SigningKey,
    cert: AuthorityCert,
}

impl std::fmt::Debug for AuthoritySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthoritySigner").field("cert", &self.cert).finish_non_exhaustive()
    }
}

impl AuthoritySigner {
    /// Pairs a signing key with its certificate; they must match (the certificate itself is
    /// not checked: see [`AuthorityCert::valid_at`]).
    pub fn new(key: SigningKey, cert: AuthorityCert) -> Result<Self, CertError> {
        if key.verifying_key().to_bytes() != cert.signing_key {
            return Err(CertError::KeyMismatch);
        }
        Ok(AuthoritySigner { key, cert })
    }

    /// `identity` certifies `key` from `published` to `expires`.
    pub fn certify(identity: &SigningKey, key: SigningKey, published: u64, expires: u64) -> Self {
        let cert = AuthorityCert::sign(identity, &key.verifying_key(), published, expires);
        AuthoritySigner { key, cert }
    }

    /// The authority's identity (the certificate's issuer).
    pub fn identity(&self) -> RelayId {
        self.cert.identity
    }
    pub fn cert(&self) -> &AuthorityCert {
        &self.cert
    }
    pub fn key(&self) -> &SigningKey {
        &self.key
    }
    /// Signs `msg` with the signing key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    const P: u64 = 1_700_000_000;
    const E: u64 = P + 90 * 86_400;

    fn cert() -> AuthorityCert {
        AuthorityCert::sign(&key(1), &key(2).verifying_key(), P, E)
    }

    #[test]
    fn round_trip_and_validity_window() {
        let c = cert();
        let text = c.encode();
        assert!(text.starts_with("authority-cert ") && text.ends_with('\n') && text.matches('\n').count() == 1, "{text}");
        assert_eq!(AuthorityCert::parse(&text).unwrap(), c);
        assert_eq!(c.valid_at(P), Ok(()));
        assert_eq!(c.valid_at(E), Ok(()));
        assert_eq!(c.valid_at(P - MAX_CERT_SKEW_SECS), Ok(()), "clock skew allowance");
        assert_eq!(c.valid_at(P - MAX_CERT_SKEW_SECS - 1), Err(CertError::NotYetValid { published: P, now: P - 3601 }));
        assert_eq!(c.valid_at(E + 1), Err(CertError::Expired { expires: E, now: E + 1 }));
        assert!(c.valid_at(E + 1).unwrap_err().is_time());
    }

    #[test]
    fn a8_cert_by_another_identity_is_rejected() {
        // Claims identity 1, signed by identity 3.
        let mut forged = AuthorityCert::sign(&key(3), &key(2).verifying_key(), P, E);
        forged.identity = cert().identity;
        assert_eq!(forged.valid_at(P), Err(CertError::BadSignature));
        // Any field changed after signing.
        for f in [
            |c: &mut AuthorityCert| c.signing_key = key(4).verifying_key().to_bytes(),
            |c: &mut AuthorityCert| c.published -= 1,
            |c: &mut AuthorityCert| c.expires += 1,
        ] {
            let mut c = cert();
            f(&mut c);
            assert_eq!(c.valid_at(P), Err(CertError::BadSignature));
        }
    }

    #[test]
    fn a8_bad_times_and_keys_are_rejected() {
        let c = AuthorityCert::sign(&key(1), &key(2).verifying_key(), E, E);
        assert_eq!(c.verify_signature(), Err(CertError::BadTimes { published: E, expires: E }));
        // A small-order signing key (the identity point) cannot be certified usefully.
        let mut c = cert();
        c.signing_key = [0; 32];
        c.signing_key[0] = 1;
        assert_eq!(c.verify_signature(), Err(CertError::BadKey));
        assert!(!c.signing_key_verifies(b"x", &[0; 64]));
        // Signer pairing.
        assert_eq!(AuthoritySigner::new(key(5), cert()).unwrap_err(), CertError::KeyMismatch);
        let s = AuthoritySigner::new(key(2), cert()).unwrap();
        assert_eq!(s.identity(), cert().identity);
        assert!(s.cert().signing_key_verifies(b"msg", &s.sign(b"msg")));
        assert!(!s.cert().signing_key_verifies(b"other", &s.sign(b"msg")));
    }

    #[test]
    fn cert_file_syntax() {
        let text = cert().encode();
        assert!(AuthorityCert::parse(text.trim_end()).is_err());
        assert!(AuthorityCert::parse(&format!("{text}{text}")).is_err(), "one line only");
        assert!(AuthorityCert::parse(&text.replacen("authority-cert", "authority-certs", 1)).is_err());
        assert!(AuthorityCert::parse(&text.replacen(&format!(" {P} "), &format!(" 0{P} "), 1)).is_err());
        let extra = format!("{} 1\n", text.trim_end());
        assert!(AuthorityCert::parse(&extra).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A8: any bit flip in an encoded certificate breaks its syntax or its signature.
        #[test]
        fn a8_any_bit_flip_fails(at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let text = cert().encode();
            let mut b = text.into_bytes();
            let i = at.index(b.len());
            b[i] ^= 1 << bit;
            let t = String::from_utf8_lossy(&b);
            let r = AuthorityCert::parse(&t).map_err(|_| ()).and_then(|c| c.valid_at(P).map_err(|_| ()));
            prop_assert!(r.is_err(), "flipped bit {} of byte {} still verifies", bit, i);
        }

        /// Random text never panics the parser.
        #[test]
        fn random_text_never_panics(s in "[ -~\n]{0,300}", tail in "[A-Za-z0-9+/ ]{0,200}") {
            let _ = AuthorityCert::parse(&s).map(|c| c.valid_at(P));
            let _ = AuthorityCert::parse(&format!("authority-cert {tail}\n")).map(|c| c.valid_at(P));
        }
    }
}
