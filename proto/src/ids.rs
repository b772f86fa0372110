//! Relay identities.
//!
//! A node's identity is its ed25519 public key. Its fingerprint is that key in uppercase hex
//! (64 characters): it is what configs list and what operators copy.

use std::fmt;
use std::str::FromStr;

/// An ed25519 identity public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub [u8; 32]);

impl RelayId {
    /// The fingerprint: uppercase hex of the key.
    pub fn fingerprint(&self) -> String {
        hex::encode_upper(self.0)
    }

    /// The ed25519 verifying key, if these bytes are a valid point.
    pub fn verifying_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).ok()
    }

    /// A short form for logs at debug level (first 8 hex digits). Never log full keys at info.
    pub fn short(&self) -> String {
        hex::encode_upper(&self.0[..4])
    }
}

impl fmt::Display for RelayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl fmt::Debug for RelayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayId({}…)", self.short())
    }
}

/// Why a fingerprint did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a fingerprint is 64 hexadecimal digits (an ed25519 public key)")]
pub struct BadFingerprint;

impl FromStr for RelayId {
    type Err = BadFingerprint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(BadFingerprint);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadFingerprint)?;
        Ok(RelayId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips() {
        let id = RelayId([0xab; 32]);
        let fp = id.fingerprint();
        assert_eq!(fp.len(), 64);
        assert_eq!(fp.parse::<RelayId>().unwrap(), id);
        assert_eq!(fp.to_lowercase().parse::<RelayId>().unwrap(), id);
        assert!("AB".parse::<RelayId>().is_err());
        assert!("Z".repeat(64).parse::<RelayId>().is_err());
    }
}
