//! Microdescriptors: the part of a relay's descriptor a client needs to build circuits through
//! it (keys, exit policy, family, protocols). Authorities make one from each listed descriptor
//! and name it in the consensus by its digest, so the consensus stays small (about 190 bytes a
//! relay) and a client fetches a microdescriptor again only when it changes (new keys, policy
//! or family), not at every consensus.
//!
//! A microdescriptor is not signed: its SHA-256 (over the exact bytes, from its first line
//! through its last LF) is what the signed consensus lists, so a client checks that instead.

use sha2::{Digest as _, Sha256};

use super::entry::{line, parse_family, parse_policy, ConsensusRelay};
use super::lines::{self, b64, enc64, Mult, Section};
use super::protocols::Protocols;
use super::{DocError, MAX_DESCRIPTOR_LEN, MAX_DESCRIPTOR_LINES};
use crate::ids::RelayId;
use crate::policy::ExitPolicy;

pub(crate) const DOC_TYPE: &str = "allium-microdesc";
/// The first line of every microdescriptor (also what separates them in a list).
pub const MICRODESC_FIRST_LINE: &str = "allium-microdesc 1";
/// Largest microdescriptor accepted (bytes): the descriptor's cap.
pub const MAX_MICRODESC_LEN: usize = MAX_DESCRIPTOR_LEN;

const SPEC: &[(&str, Mult)] = &[
    (DOC_TYPE, Mult::Once),
    ("onion-key", Mult::Once),
    ("link-key", Mult::Once),
    ("link-key-cert", Mult::Once),
    ("policy", Mult::Any),
    ("family", Mult::Once),
    ("protocols", Mult::Once),
];

/// What a client needs of a relay beyond its consensus entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Microdesc {
    /// x25519 key for the circuit handshake (ntor).
    pub onion_key: [u8; 32],
    /// x25519 static key of the Noise link handshake.
    pub link_key: [u8; 32],
    /// The identity's certificate of `link_key` (the identity is in the consensus entry).
    pub link_cert: [u8; 64],
    pub policy: ExitPolicy,
    pub family: Vec<RelayId>,
    pub protocols: Protocols,
}

impl Microdesc {
    /// The microdescriptor of a listed relay (its descriptor part).
    pub fn of_relay(r: &ConsensusRelay) -> Self {
        Microdesc {
            onion_key: r.onion_key,
            link_key: r.link_key,
            link_cert: r.link_cert,
            policy: r.policy.clone(),
            family: r.family.clone(),
            protocols: r.protocols.clone(),
        }
    }

    /// The canonical text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(256);
        line(&mut out, DOC_TYPE, "1");
        line(&mut out, "onion-key", &enc64(&self.onion_key));
        line(&mut out, "link-key", &enc64(&self.link_key));
        line(&mut out, "link-key-cert", &enc64(&self.link_cert));
        for rule in self.policy.to_rules() {
            line(&mut out, "policy", &rule);
        }
        let fam: Vec<String> = self.family.iter().map(|f| f.fingerprint()).collect();
        line(&mut out, "family", &fam.join(" "));
        line(&mut out, "protocols", &self.protocols.to_string());
        out
    }

    /// SHA-256 of the canonical text: what the consensus lists.
    pub fn digest(&self) -> [u8; 32] {
        digest_of(&self.encode())
    }

    /// Parses one microdescriptor (syntax only; the caller matches its digest, [`digest_of`]
    /// the same text, against the consensus).
    pub fn parse(text: &str) -> Result<Self, DocError> {
        let ls = lines::split(text, MAX_MICRODESC_LEN, MAX_DESCRIPTOR_LINES)?;
        lines::check_type_line(&ls, DOC_TYPE)?;
        let keywords: Vec<&str> = SPEC.iter().map(|(k, _)| *k).collect();
        let s = Section::read(&ls, SPEC, &keywords)?;
        let key = |kw: &str| -> Result<[u8; 32], DocError> {
            let l = s.get(kw);
            b64(l, l.one()?)
        };
        let l = s.get("link-key-cert");
        let link_cert = b64(l, l.one()?)?;
        let p = s.get("protocols");
        Ok(Microdesc {
            onion_key: key("onion-key")?,
            link_key: key("link-key")?,
            link_cert,
            policy: parse_policy(s.all("policy"))?,
            family: parse_family(s.get("family"))?,
            protocols: Protocols::parse_args(&p.args()?).map_err(|r| p.bad(r))?,
        })
    }
}

/// SHA-256 of a microdescriptor's text.
pub fn digest_of(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// One microdescriptor of a list: its exact text, that text's digest, and the parse result.
#[derive(Debug)]
pub struct ListItem<'a> {
    pub text: &'a str,
    pub digest: [u8; 32],
    pub parsed: Result<Microdesc, DocError>,
}

/// Splits a list of microdescriptors (each starting with its [`MICRODESC_FIRST_LINE`]) and
/// parses each. One bad microdescriptor does not spoil the others; text before the first one is
/// returned as an item that failed.
pub fn parse_list(text: &str) -> Vec<ListItem<'_>> {
    let mut starts: Vec<usize> = Vec::new();
    let mut pos = 0;
    for l in text.split_inclusive('\n') {
        if l.strip_suffix('\n') == Some(MICRODESC_FIRST_LINE) {
            starts.push(pos);
        }
        pos += l.len();
    }
    let mut out = Vec::with_capacity(starts.len() + 1);
    let first = starts.first().copied().unwrap_or(text.len());
    if first > 0 {
        let head = &text[..first];
        out.push(ListItem { text: head, digest: digest_of(head), parsed: Err(DocError::WrongDocumentType { expected: DOC_TYPE }) });
    }
    for (i, &s) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let chunk = &text[s..end];
        out.push(ListItem { text: chunk, digest: digest_of(chunk), parsed: Microdesc::parse(chunk) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(i: u8) -> Microdesc {
        let mut r = ConsensusRelay::synthetic(i);
        r.policy = ExitPolicy::parse_rules(&["accept *:80", "reject *:*"]).unwrap();
        r.family = vec![RelayId([i.wrapping_add(1); 32])];
        r.protocols = Protocols::new().with("Link", 1, 1).with("Relay", 1, 2);
        Microdesc::of_relay(&r)
    }

    #[test]
    fn round_trip_digest_and_list() {
        let a = sample(1);
        let text = a.encode();
        assert!(text.starts_with("allium-microdesc 1\nonion-key "));
        assert_eq!(Microdesc::parse(&text).unwrap(), a);
        assert_eq!(digest_of(&text), a.digest());
        let b = sample(2);
        let list = format!("{}{}", a.encode(), b.encode());
        let parsed = parse_list(&list);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].digest, a.digest());
        assert_eq!(parsed[0].text, a.encode());
        assert_eq!(parsed[1].parsed.as_ref().unwrap(), &b);
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn one_bad_entry_spoils_only_itself() {
        let a = sample(1);
        let bad = a.encode().replace("link-key ", "link-key x");
        let list = format!("junk\n{bad}{}", sample(3).encode());
        let parsed = parse_list(&list);
        assert_eq!(parsed.len(), 3);
        assert!(parsed[0].parsed.is_err() && parsed[1].parsed.is_err());
        assert_eq!(parsed[0].text, "junk\n");
        assert_eq!(parsed[2].parsed.as_ref().unwrap(), &sample(3));
    }

    #[test]
    fn critical_unknown_and_out_of_order_lines_are_refused() {
        let text = sample(1).encode();
        assert!(Microdesc::parse(&format!("{text}critical-x 1\n")).is_err());
        assert!(Microdesc::parse(&format!("{text}future-line 1\n")).is_ok(), "unknown lines are ignored");
        let swapped = text.replacen("onion-key", "onion-kex", 1);
        assert!(Microdesc::parse(&swapped).is_err(), "missing onion-key");
        assert!(Microdesc::parse(&text.replace("allium-microdesc 1", "allium-microdesc 2")).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let s = String::from_utf8_lossy(&data);
            let _ = Microdesc::parse(&s);
            let _ = parse_list(&s);
        }

        #[test]
        fn mutations_never_panic_and_change_the_digest(pos in any::<usize>(), byte in 0x20u8..0x7f) {
            let text = sample(4).encode();
            let mut b = text.clone().into_bytes();
            let i = pos % b.len();
            prop_assume!(b[i] != byte && b[i] != b'\n');
            b[i] = byte;
            let m = String::from_utf8(b).unwrap();
            let _ = Microdesc::parse(&m);
            prop_assert_ne!(digest_of(&m), sample(4).digest());
        }
    }
}
