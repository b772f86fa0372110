//! A relay as listed in a vote or consensus, and the field encodings it shares with the relay
//! descriptor.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;

use super::descriptor::RelayDescriptor;
use super::flags::RelayFlags;
use super::lines::{self, b64, enc64, fingerprint, uint, Line, Mult, Section};
use super::protocols::Protocols;
use super::{DocError, MAX_FAMILY, MAX_POLICY_RULES};
use crate::ids::RelayId;
use crate::policy::ExitPolicy;

/// One relay in a vote or consensus: what a client needs to build circuits through it.
///
/// Every field up to `descriptor_digest` comes from the relay's signed descriptor (whose
/// SHA-256 is `descriptor_digest`); `flags` and `weight` are the authorities' assessment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusRelay {
    pub nickname: String,
    pub identity: RelayId,
    /// x25519 key for the circuit handshake (ntor).
    pub onion_key: [u8; 32],
    /// x25519 static key of the Noise link handshake.
    pub link_key: [u8; 32],
    /// The identity's signature certifying `link_key` (see [`super::certify_link_key`]).
    pub link_cert: [u8; 64],
    /// The OR port.
    pub address: SocketAddr,
    pub policy: ExitPolicy,
    pub family: Vec<RelayId>,
    /// Advertised bandwidth, bytes per second.
    pub bandwidth: u64,
    pub protocols: Protocols,
    /// When the descriptor was published (unix seconds).
    pub published: u64,
    /// SHA-256 of the descriptor's canonical signed part ([`RelayDescriptor::digest`]).
    pub descriptor_digest: [u8; 32],
    /// Flags assigned by the authorities (in a consensus: by a majority of them).
    pub flags: RelayFlags,
    /// Consensus weight: the advertised bandwidth capped by the authority (in a consensus: the
    /// low median of the listing authorities' weights). Path selection uses this, not
    /// `bandwidth`.
    pub weight: u64,
}

impl ConsensusRelay {
    /// A synthetic entry for tests and benchmarks: relay `i` with keys `[i; 32]`, no valid link
    /// certificate, OR address 192.0.2.i:9001, not an exit, Running and Valid, bandwidth and
    /// weight 1. Override fields with struct-update syntax.
    #[doc(hidden)]
    pub fn synthetic(i: u8) -> Self {
        ConsensusRelay {
            nickname: format!("r{i}"),
            identity: RelayId([i; 32]),
            onion_key: [i; 32],
            link_key: [i; 32],
            link_cert: [0; 64],
            address: std::net::SocketAddr::from(([192, 0, 2, i], 9001)),
            policy: ExitPolicy::reject_all(),
            family: Vec::new(),
            bandwidth: 1,
            protocols: Protocols::new(),
            published: 0,
            descriptor_digest: [0; 32],
            flags: RelayFlags::RUNNING | RelayFlags::VALID,
            weight: 1,
        }
    }

    /// The entry an authority lists for a verified descriptor.
    pub fn from_descriptor(d: &RelayDescriptor) -> Self {
        ConsensusRelay {
            nickname: d.nickname.clone(),
            identity: d.identity,
            onion_key: d.onion_key,
            link_key: d.link_key,
            link_cert: d.link_cert,
            address: d.address,
            policy: d.policy.clone(),
            family: d.family.clone(),
            bandwidth: d.bandwidth,
            protocols: d.protocols.clone(),
            published: d.published,
            descriptor_digest: d.digest(),
            flags: RelayFlags::EMPTY,
            weight: d.bandwidth,
        }
    }

    /// Whether the link certificate verifies (the authority checked it already; a client may
    /// re-check before trusting a link key).
    pub fn link_cert_ok(&self) -> bool {
        super::verify_link_cert(&self.identity, &self.link_key, &self.link_cert)
    }

    /// Appends this entry's lines (canonical form).
    pub(crate) fn encode_into(&self, out: &mut String) {
        self.encode_descriptor_part(out);
        line(out, "flags", &self.flags.to_string());
        line(out, "weight", &self.weight.to_string());
    }

    /// The lines copied from the descriptor (`relay` to `descriptor-digest`).
    fn encode_descriptor_part(&self, out: &mut String) {
        line(out, "relay", &format!("{} {}", self.nickname, self.identity.fingerprint()));
        write_keys_to_published(out, &KeysEtc::of_entry(self));
        line(out, "descriptor-digest", &enc64(&self.descriptor_digest));
    }

    /// The canonical text of the descriptor part of this entry (what makes a *version*; flags
    /// and weight are voted separately).
    pub(crate) fn encoded(&self) -> String {
        let mut s = String::new();
        self.encode_descriptor_part(&mut s);
        s
    }

    /// Parses one entry: `lines[0]` is its `relay` line.
    pub(crate) fn parse(lines: &[Line], doc_keywords: &[&str]) -> Result<Self, DocError> {
        let s = Section::read(lines, ENTRY_SPEC, doc_keywords)?;
        let r = s.get("relay");
        let a = r.exactly(2)?;
        if !lines::nickname_ok(a[0]) {
            return Err(r.bad("bad nickname (1-19 ASCII letters or digits)"));
        }
        let k = KeysOwned::parse(&s)?;
        let d = s.get("descriptor-digest");
        let fl = s.get("flags");
        let flags = RelayFlags::parse_args(&fl.args()?).map_err(|r| fl.bad(r))?;
        let w = s.get("weight");
        Ok(ConsensusRelay {
            nickname: a[0].to_string(),
            identity: fingerprint(r, a[1])?,
            onion_key: k.onion_key,
            link_key: k.link_key,
            link_cert: k.link_cert,
            address: k.address,
            policy: k.policy,
            family: k.family,
            bandwidth: k.bandwidth,
            protocols: k.protocols,
            published: k.published,
            descriptor_digest: b64(d, d.one()?)?,
            flags,
            weight: uint(w, w.one()?)?,
        })
    }
}

/// Keywords of a relay entry in a vote or consensus, in order.
pub(crate) const ENTRY_SPEC: &[(&str, Mult)] = &[
    ("relay", Mult::Once),
    ("onion-key", Mult::Once),
    ("link-key", Mult::Once),
    ("link-key-cert", Mult::Once),
    ("address", Mult::Once),
    ("policy", Mult::Any),
    ("family", Mult::Once),
    ("bandwidth", Mult::Once),
    ("protocols", Mult::Once),
    ("published", Mult::Once),
    ("descriptor-digest", Mult::Once),
    ("flags", Mult::Once),
    ("weight", Mult::Once),
];

/// Appends `kw args\n` (or `kw\n` when `args` is empty).
pub(crate) fn line(out: &mut String, kw: &str, args: &str) {
    out.push_str(kw);
    if !args.is_empty() {
        out.push(' ');
        out.push_str(args);
    }
    out.push('\n');
}

/// The fields from `onion-key` to `published`, shared by descriptors and entries (borrowed).
pub(crate) struct KeysEtc<'a> {
    pub onion_key: &'a [u8; 32],
    pub link_key: &'a [u8; 32],
    pub link_cert: &'a [u8; 64],
    pub address: &'a SocketAddr,
    pub policy: &'a ExitPolicy,
    pub family: &'a [RelayId],
    pub bandwidth: u64,
    pub protocols: &'a Protocols,
    pub published: u64,
}

impl<'a> KeysEtc<'a> {
    fn of_entry(e: &'a ConsensusRelay) -> Self {
        KeysEtc {
            onion_key: &e.onion_key,
            link_key: &e.link_key,
            link_cert: &e.link_cert,
            address: &e.address,
            policy: &e.policy,
            family: &e.family,
            bandwidth: e.bandwidth,
            protocols: &e.protocols,
            published: e.published,
        }
    }
}

pub(crate) fn write_keys_to_published(out: &mut String, k: &KeysEtc) {
    line(out, "onion-key", &enc64(k.onion_key));
    line(out, "link-key", &enc64(k.link_key));
    line(out, "link-key-cert", &enc64(k.link_cert));
    line(out, "address", &k.address.to_string());
    for rule in k.policy.to_rules() {
        line(out, "policy", &rule);
    }
    let mut fam = String::new();
    for (i, f) in k.family.iter().enumerate() {
        if i > 0 {
            fam.push(' ');
        }
        let _ = write!(fam, "{}", f.fingerprint());
    }
    line(out, "family", &fam);
    line(out, "bandwidth", &k.bandwidth.to_string());
    line(out, "protocols", &k.protocols.to_string());
    line(out, "published", &k.published.to_string());
}

/// The fields from `onion-key` to `published`, parsed.
pub(crate) struct KeysOwned {
    pub onion_key: [u8; 32],
    pub link_key: [u8; 32],
    pub link_cert: [u8; 64],
    pub address: SocketAddr,
    pub policy: ExitPolicy,
    pub family: Vec<RelayId>,
    pub bandwidth: u64,
    pub protocols: Protocols,
    pub published: u64,
}

impl KeysOwned {
    /// Parses these fields from a section whose spec includes them.
    pub(crate) fn parse(s: &Section) -> Result<Self, DocError> {
        let one = |kw: &str| -> Result<(&Line, &str), DocError> {
            let l = s.get(kw);
            Ok((l, l.one()?))
        };
        let (l, v) = one("onion-key")?;
        let onion_key = b64(l, v)?;
        let (l, v) = one("link-key")?;
        let link_key = b64(l, v)?;
        let (l, v) = one("link-key-cert")?;
        let link_cert = b64(l, v)?;
        let (l, v) = one("address")?;
        let address = parse_address(l, v)?;
        let policy = parse_policy(s.all("policy"))?;
        let family = parse_family(s.get("family"))?;
        let (l, v) = one("bandwidth")?;
        let bandwidth = uint(l, v)?;
        let l = s.get("protocols");
        let protocols = Protocols::parse_args(&l.args()?).map_err(|r| l.bad(r))?;
        let (l, v) = one("published")?;
        let published = uint(l, v)?;
        Ok(KeysOwned { onion_key, link_key, link_cert, address, policy, family, bandwidth, protocols, published })
    }
}

pub(crate) fn parse_address(l: &Line, v: &str) -> Result<SocketAddr, DocError> {
    let a: SocketAddr = v.parse().map_err(|_| l.bad("not an ip:port address"))?;
    if a.to_string() != v {
        return Err(l.bad("address not in canonical form"));
    }
    if a.port() == 0 {
        return Err(l.bad("port 0"));
    }
    Ok(a)
}

pub(crate) fn parse_policy(ls: &[&Line]) -> Result<ExitPolicy, DocError> {
    if ls.len() > MAX_POLICY_RULES {
        return Err(DocError::TooMany { what: "policy rules", limit: MAX_POLICY_RULES });
    }
    let rules: Vec<&str> = ls.iter().map(|l| l.rest).collect();
    ExitPolicy::parse_rules(&rules).map_err(|e| DocError::BadPolicy { line: ls.get(e.index).map_or(0, |l| l.no), reason: e.kind.to_string() })
}

pub(crate) fn parse_family(l: &Line) -> Result<Vec<RelayId>, DocError> {
    let args = l.args()?;
    if args.len() > MAX_FAMILY {
        return Err(DocError::TooMany { what: "family members", limit: MAX_FAMILY });
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(args.len());
    for a in &args {
        let id = fingerprint(l, a)?;
        if !seen.insert(id) {
            return Err(l.bad("family member listed twice"));
        }
        out.push(id);
    }
    Ok(out)
}

/// Parses the relay entries in `ls` (each starts at a `relay` line; `ls` is empty or starts with
/// one) and checks they are sorted by identity with no duplicate.
pub(crate) fn parse_entries(ls: &[Line], doc_keywords: &[&str]) -> Result<Vec<ConsensusRelay>, DocError> {
    parse_sorted_blocks(ls, doc_keywords, ConsensusRelay::parse, |r| r.identity)
}

/// Splits `ls` into blocks that each start at a `relay` line, parses each with `parse`, and
/// checks the identities are strictly ascending.
pub(crate) fn parse_sorted_blocks<T>(
    ls: &[Line],
    doc_keywords: &[&str],
    parse: impl Fn(&[Line], &[&str]) -> Result<T, DocError>,
    identity: impl Fn(&T) -> RelayId,
) -> Result<Vec<T>, DocError> {
    let mut out: Vec<T> = Vec::new();
    let mut i = 0;
    while i < ls.len() {
        let mut j = i + 1;
        while j < ls.len() && ls[j].kw != "relay" {
            j += 1;
        }
        let e = parse(&ls[i..j], doc_keywords)?;
        if out.last().is_some_and(|p| identity(p) >= identity(&e)) {
            return Err(DocError::Unsorted { line: ls[i].no });
        }
        out.push(e);
        i = j;
    }
    Ok(out)
}

/// Sorts entries by identity and keeps one per identity (the first after a stable sort).
pub(crate) fn sorted_unique(relays: &[ConsensusRelay]) -> Vec<&ConsensusRelay> {
    let mut v: Vec<&ConsensusRelay> = relays.iter().collect();
    v.sort_by_key(|r| r.identity);
    v.dedup_by_key(|r| r.identity);
    v
}
