//! The relay descriptor: a relay's signed statement of its keys, address and policy.

use std::net::SocketAddr;

use ed25519_dalek::{Signature, Signer, SigningKey};
use sha2::{Digest as _, Sha256};

use super::entry::{line, write_keys_to_published, ConsensusRelay, KeysEtc, KeysOwned};
use super::lines::{self, b64, enc64, fingerprint, Mult, Section};
use super::protocols::Protocols;
use super::{DocError, DESCRIPTOR_SIG_PREFIX, MAX_DESCRIPTOR_LEN, MAX_DESCRIPTOR_LINES};
use crate::ids::RelayId;
use crate::policy::ExitPolicy;

const DOC_TYPE: &str = "allium-relay-descriptor";

/// Keywords of a descriptor, in order. `signature` must also be the last line.
const SPEC: &[(&str, Mult)] = &[
    (DOC_TYPE, Mult::Once),
    ("nickname", Mult::Once),
    ("identity", Mult::Once),
    ("onion-key", Mult::Once),
    ("link-key", Mult::Once),
    ("link-key-cert", Mult::Once),
    ("address", Mult::Once),
    ("policy", Mult::Any),
    ("family", Mult::Once),
    ("bandwidth", Mult::Once),
    ("protocols", Mult::Once),
    ("published", Mult::Once),
    ("platform", Mult::Any),
    ("signature", Mult::Once),
];

/// The longest `platform` value (software name and version).
pub const MAX_PLATFORM_LEN: usize = 64;

/// A relay descriptor, as the relay states it. A parsed one is only obtained through
/// [`UnverifiedDescriptor::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayDescriptor {
    /// 1–19 ASCII letters or digits.
    pub nickname: String,
    /// The relay's ed25519 identity key, which signs the descriptor.
    pub identity: RelayId,
    /// x25519 key for the circuit handshake (ntor).
    pub onion_key: [u8; 32],
    /// x25519 static key of the Noise link handshake.
    pub link_key: [u8; 32],
    /// [`certify_link_key`]`(identity, link_key)`.
    pub link_cert: [u8; 64],
    /// The OR port: where other nodes connect.
    pub address: SocketAddr,
    pub policy: ExitPolicy,
    /// Relays run by the same operator.
    pub family: Vec<RelayId>,
    /// Advertised bandwidth, bytes per second.
    pub bandwidth: u64,
    pub protocols: Protocols,
    /// When this descriptor was made (unix seconds).
    pub published: u64,
    /// The software and version the relay runs (`Allium 0.1.0`), for operators' pages only:
    /// nothing decides by it (protocol versions do that). At most [`MAX_PLATFORM_LEN`]
    /// printable ASCII bytes.
    pub platform: Option<String>,
}

impl RelayDescriptor {
    /// The canonical signed part: every line before `signature`.
    pub fn encode_unsigned(&self) -> String {
        let mut out = String::with_capacity(1024);
        line(&mut out, DOC_TYPE, "1");
        line(&mut out, "nickname", &self.nickname);
        line(&mut out, "identity", &self.identity.fingerprint());
        write_keys_to_published(
            &mut out,
            &KeysEtc {
                onion_key: &self.onion_key,
                link_key: &self.link_key,
                link_cert: &self.link_cert,
                address: &self.address,
                policy: &self.policy,
                family: &self.family,
                bandwidth: self.bandwidth,
                protocols: &self.protocols,
                published: self.published,
            },
        );
        if let Some(p) = &self.platform {
            line(&mut out, "platform", p);
        }
        out
    }

    /// The signed document. `key` must be the secret half of `identity`; with any other key the
    /// result fails verification.
    pub fn encode_signed(&self, key: &SigningKey) -> String {
        let mut out = self.encode_unsigned();
        let sig = key.sign(&signed_message(&out));
        line(&mut out, "signature", &enc64(&sig.to_bytes()));
        out
    }

    /// SHA-256 of the canonical signed part ([`Self::encode_unsigned`]). For a document this
    /// crate produced, that is exactly the text the signature covers; lines a parser ignored
    /// (unknown keywords) are not part of it.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode_unsigned().as_bytes()).into()
    }

    /// The entry an authority lists for this descriptor.
    pub fn to_entry(&self) -> ConsensusRelay {
        ConsensusRelay::from_descriptor(self)
    }

    /// Checks the syntax of a descriptor. Nothing is trusted until [`UnverifiedDescriptor::verify`].
    pub fn parse(text: &str) -> Result<UnverifiedDescriptor, DocError> {
        let ls = lines::split(text, MAX_DESCRIPTOR_LEN, MAX_DESCRIPTOR_LINES)?;
        lines::check_type_line(&ls, DOC_TYPE)?;
        let last = ls.last().expect("split checked the type line exists");
        if last.kw != "signature" {
            return Err(DocError::Missing { keyword: "signature (as the last line)" });
        }
        let keywords: Vec<&str> = SPEC.iter().map(|(k, _)| *k).collect();
        let s = Section::read(&ls, SPEC, &keywords)?;
        let n = s.get("nickname");
        let nickname = n.one()?;
        if !lines::nickname_ok(nickname) {
            return Err(n.bad("bad nickname (1-19 ASCII letters or digits)"));
        }
        let id = s.get("identity");
        let identity = fingerprint(id, id.one()?)?;
        let k = KeysOwned::parse(&s)?;
        let platform = match s.all("platform") {
            [] => None,
            [l] if platform_ok(l.rest) => Some(l.rest.to_string()),
            [l] => return Err(l.bad("bad platform (1-64 printable ASCII bytes)")),
            [_, l, ..] => return Err(l.bad("platform given twice")),
        };
        let sig_line = s.get("signature");
        let signature: [u8; 64] = b64(sig_line, sig_line.one()?)?;
        let signed_part = &text[..sig_line.start];
        Ok(UnverifiedDescriptor {
            desc: RelayDescriptor {
                nickname: nickname.to_string(),
                identity,
                onion_key: k.onion_key,
                link_key: k.link_key,
                link_cert: k.link_cert,
                address: k.address,
                policy: k.policy,
                family: k.family,
                bandwidth: k.bandwidth,
                protocols: k.protocols,
                published: k.published,
                platform,
            },
            signed_hash: Sha256::digest(signed_part.as_bytes()).into(),
            signature,
        })
    }
}

/// Whether a `platform` value is acceptable: 1–64 printable ASCII bytes.
fn platform_ok(p: &str) -> bool {
    !p.is_empty() && p.len() <= MAX_PLATFORM_LEN && p.bytes().all(|b| (0x20..0x7f).contains(&b))
}

pub(super) fn signed_message(signed_part: &str) -> Vec<u8> {
    let mut m = DESCRIPTOR_SIG_PREFIX.to_vec();
    m.extend_from_slice(&Sha256::digest(signed_part.as_bytes()));
    m
}

/// A descriptor whose syntax is valid but whose signatures are not checked yet.
#[derive(Debug, Clone)]
pub struct UnverifiedDescriptor {
    desc: RelayDescriptor,
    /// SHA-256 of the bytes the signature covers, as received.
    signed_hash: [u8; 32],
    signature: [u8; 64],
}

impl UnverifiedDescriptor {
    /// The identity the descriptor claims (not yet proven).
    pub fn claimed_identity(&self) -> RelayId {
        self.desc.identity
    }

    /// Checks the document's signature by the identity it names, and the link-key certificate.
    pub fn verify(self) -> Result<RelayDescriptor, DocError> {
        let key = self.desc.identity.verifying_key().ok_or(DocError::BadSignature)?;
        let mut msg = DESCRIPTOR_SIG_PREFIX.to_vec();
        msg.extend_from_slice(&self.signed_hash);
        key.verify_strict(&msg, &Signature::from_bytes(&self.signature)).map_err(|_| DocError::BadSignature)?;
        if !verify_link_cert(&self.desc.identity, &self.desc.link_key, &self.desc.link_cert) {
            return Err(DocError::BadLinkCert);
        }
        Ok(self.desc)
    }

    /// The descriptor without any signature check. Only for tools and tests.
    pub fn dangerously_assume_valid(self) -> RelayDescriptor {
        self.desc
    }
}

pub use crate::link::{certify_link_key, verify_link_cert};
