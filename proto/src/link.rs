//! The link handshake's payloads.
//!
//! A link is a TCP connection protected by Noise. The initiator first sends an 8-byte preamble,
//! `"ALLIUM"` then a kind byte and a zero byte:
//! - kind 0, [`NOISE_ANON`] (`Noise_NK`): a client, which presents no identity;
//! - kind 1, [`NOISE_RELAY`] (`Noise_XK`): a relay or authority, which proves its identity in
//!   the third handshake message with an [`InitiatorCert`].
//!
//! The Noise prologue is [`PROLOGUE`] followed by the preamble, so the kind cannot be altered.
//! Every Noise message on the wire is framed as `u16 length (big-endian) | message`.
//! Handshake payloads: message 1 carries a [`Hello`] (link versions the initiator speaks),
//! message 2 a [`Welcome`] (the version chosen), message 3 (relays only) an [`InitiatorCert`].
//! After the handshake, each transport message's plaintext is 1 to [`MAX_CELLS_PER_FRAME`] whole
//! 514-byte cells.

use ed25519_dalek::{Signer, SigningKey};

use crate::cell::CELL_LEN;
use crate::ext::Extensions;
use crate::ids::RelayId;
use crate::reader::{DecodeError, Reader};

pub const NOISE_ANON: &str = "Noise_NK_25519_AESGCM_SHA256";
pub const NOISE_RELAY: &str = "Noise_XK_25519_AESGCM_SHA256";
pub const PROLOGUE: &[u8] = b"allium-link-v1";
pub const MAGIC: &[u8; 6] = b"ALLIUM";
/// Link protocol versions this implementation speaks.
pub const LINK_VERSIONS: &[u16] = &[1];
/// The largest Noise message (and so frame body).
pub const MAX_NOISE_MSG: usize = 65535;
/// The largest Noise message of the link handshake (docs/PROTOCOL.md, "Links"): ours are under
/// 200 bytes; a responder closes a connection that announces a longer one, so a peer that
/// stalls its handshake holds a few KiB, not 64.
pub const MAX_HANDSHAKE_MSG: usize = 2048;
/// Whole cells in one transport message: (65535 − 16-byte tag) / 514.
pub const MAX_CELLS_PER_FRAME: usize = (MAX_NOISE_MSG - 16) / CELL_LEN;
/// What an identity signs, followed by the link key, to certify it.
pub const LINK_CERT_CONTEXT: &[u8] = b"allium-link-key-v1";

/// Who is dialling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Anonymous = 0,
    Relay = 1,
}

/// The preamble for a kind.
pub fn preamble(kind: LinkKind) -> [u8; 8] {
    let mut p = [0u8; 8];
    p[..6].copy_from_slice(MAGIC);
    p[6] = kind as u8;
    p
}

/// Parses a preamble.
pub fn parse_preamble(p: &[u8; 8]) -> Result<LinkKind, DecodeError> {
    if &p[..6] != MAGIC || p[7] != 0 {
        return Err(DecodeError::Invalid("not an Allium link"));
    }
    match p[6] {
        0 => Ok(LinkKind::Anonymous),
        1 => Ok(LinkKind::Relay),
        _ => Err(DecodeError::Invalid("unknown link kind")),
    }
}

/// The Noise prologue for a kind.
pub fn prologue(kind: LinkKind) -> Vec<u8> {
    let mut v = PROLOGUE.to_vec();
    v.extend_from_slice(&preamble(kind));
    v
}

/// Message 1 payload: `u8 n | n × u16 version | extensions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub versions: Vec<u16>,
    pub ext: Extensions,
}

impl Hello {
    pub fn ours() -> Self {
        Hello { versions: LINK_VERSIONS.to_vec(), ext: Extensions::none() }
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.versions.len() as u8];
        for x in &self.versions {
            v.extend_from_slice(&x.to_be_bytes());
        }
        self.ext.encode(&mut v);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let n = r.u8()?;
        let versions = (0..n).map(|_| r.u16()).collect::<Result<Vec<_>, _>>()?;
        let ext = Extensions::decode_checked(&mut r, &[])?;
        r.finish()?;
        Ok(Hello { versions, ext })
    }
}

/// The highest version both sides speak.
pub fn negotiate(theirs: &[u16]) -> Option<u16> {
    LINK_VERSIONS.iter().copied().filter(|v| theirs.contains(v)).max()
}

/// Message 2 payload: `u16 version | extensions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    pub ext: Extensions,
}

impl Welcome {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.version.to_be_bytes().to_vec();
        self.ext.encode(&mut v);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let version = r.u16()?;
        let ext = Extensions::decode_checked(&mut r, &[])?;
        r.finish()?;
        Ok(Welcome { version, ext })
    }
}

/// An identity's certificate for its link key: `identity (32) | ed25519 signature (64)` over
/// `"allium-link-key-v1" | link key`. The same certificate is published in the descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorCert {
    pub identity: RelayId,
    pub sig: [u8; 64],
}

/// Signs a link key with an identity key.
pub fn certify_link_key(identity: &SigningKey, link_key: &[u8; 32]) -> [u8; 64] {
    identity.sign(&cert_message(link_key)).to_bytes()
}

/// Checks a link-key certificate.
pub fn verify_link_cert(identity: &RelayId, link_key: &[u8; 32], sig: &[u8; 64]) -> bool {
    let Some(vk) = identity.verifying_key() else { return false };
    vk.verify_strict(&cert_message(link_key), &ed25519_dalek::Signature::from_bytes(sig)).is_ok()
}

fn cert_message(link_key: &[u8; 32]) -> Vec<u8> {
    let mut m = LINK_CERT_CONTEXT.to_vec();
    m.extend_from_slice(link_key);
    m
}

impl InitiatorCert {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.identity.0.to_vec();
        v.extend_from_slice(&self.sig);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let identity = RelayId(r.array()?);
        let sig = r.array()?;
        r.finish()?;
        Ok(InitiatorCert { identity, sig })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn payload_decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(h) = Hello::decode(&b) { prop_assert_eq!(h.encode(), b.clone()); }
            if let Ok(w) = Welcome::decode(&b) { prop_assert_eq!(w.encode(), b.clone()); }
            let _ = InitiatorCert::decode(&b);
            if b.len() >= 8 { let _ = parse_preamble(b[..8].try_into().unwrap()); }
        }
    }

    #[test]
    fn payloads_round_trip_and_negotiate() {
        let h = Hello { versions: vec![1, 7], ext: Extensions::none() };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert_eq!(negotiate(&h.versions), Some(1));
        assert_eq!(negotiate(&[7, 8]), None);
        let w = Welcome { version: 1, ext: Extensions::none() };
        assert_eq!(Welcome::decode(&w.encode()).unwrap(), w);
        assert!(Hello::decode(&[3, 0, 1]).is_err());
        assert_eq!(parse_preamble(&preamble(LinkKind::Relay)).unwrap(), LinkKind::Relay);
        assert!(parse_preamble(b"GET / HT").is_err());
        assert_eq!(MAX_CELLS_PER_FRAME, 127);
    }

    #[test]
    fn link_cert_binds_identity_and_key() {
        let sk = SigningKey::from_bytes(&[3; 32]);
        let id = RelayId(sk.verifying_key().to_bytes());
        let sig = certify_link_key(&sk, &[9; 32]);
        assert!(verify_link_cert(&id, &[9; 32], &sig));
        assert!(!verify_link_cert(&id, &[8; 32], &sig));
        let other = RelayId(SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes());
        assert!(!verify_link_cert(&other, &[9; 32], &sig));
        let c = InitiatorCert { identity: id, sig };
        assert_eq!(InitiatorCert::decode(&c.encode()).unwrap(), c);
    }
}
