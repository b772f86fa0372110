//! A relay's compact entry in the consensus: who it is, where, its weight and flags, and the
//! digest of its microdescriptor (which holds the keys, policy and family).
//!
//! ```text
//! relay <nickname> <identity b64> <address> <weight>
//! md <b64 SHA-256 of the microdescriptor>
//! flags <flag names>
//! ```

use std::net::SocketAddr;

use super::entry::{line, parse_address, parse_sorted_blocks, ConsensusRelay};
use super::flags::RelayFlags;
use super::lines::{self, b64, enc64, uint, Line, Mult, Section};
use super::microdesc::Microdesc;
use super::DocError;
use crate::ids::RelayId;

/// Keywords of a consensus entry, in order.
pub(crate) const COMPACT_SPEC: &[(&str, Mult)] = &[("relay", Mult::Once), ("md", Mult::Once), ("flags", Mult::Once)];

/// One relay as the consensus lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusEntry {
    pub nickname: String,
    pub identity: RelayId,
    /// The OR port.
    pub address: SocketAddr,
    /// Consensus weight (low median of the voters' capped bandwidths).
    pub weight: u64,
    pub flags: RelayFlags,
    /// SHA-256 of the relay's microdescriptor ([`Microdesc::digest`]).
    pub microdesc: [u8; 32],
}

impl ConsensusEntry {
    /// The entry of a relay as computed from votes, and its microdescriptor.
    pub fn of_relay(r: &ConsensusRelay) -> (Self, Microdesc) {
        let md = Microdesc::of_relay(r);
        let e = ConsensusEntry { nickname: r.nickname.clone(), identity: r.identity, address: r.address, weight: r.weight, flags: r.flags, microdesc: md.digest() };
        (e, md)
    }

    /// The full relay a client uses: this entry joined with its microdescriptor (whose digest
    /// the caller matched). The descriptor-only fields the consensus does not carry are filled
    /// in: `bandwidth` is the consensus weight, `published` 0, `descriptor_digest` the
    /// microdescriptor's digest.
    pub fn with_microdesc(&self, md: &Microdesc) -> ConsensusRelay {
        ConsensusRelay {
            nickname: self.nickname.clone(),
            identity: self.identity,
            onion_key: md.onion_key,
            link_key: md.link_key,
            link_cert: md.link_cert,
            address: self.address,
            policy: md.policy.clone(),
            family: md.family.clone(),
            bandwidth: self.weight,
            protocols: md.protocols.clone(),
            published: 0,
            descriptor_digest: self.microdesc,
            flags: self.flags,
            weight: self.weight,
        }
    }

    pub(crate) fn encode_into(&self, out: &mut String) {
        line(out, "relay", &format!("{} {} {} {}", self.nickname, enc64(&self.identity.0), self.address, self.weight));
        line(out, "md", &enc64(&self.microdesc));
        line(out, "flags", &self.flags.to_string());
    }

    fn parse(ls: &[Line], doc_keywords: &[&str]) -> Result<Self, DocError> {
        let s = Section::read(ls, COMPACT_SPEC, doc_keywords)?;
        let r = s.get("relay");
        let a = r.exactly(4)?;
        if !lines::nickname_ok(a[0]) {
            return Err(r.bad("bad nickname (1-19 ASCII letters or digits)"));
        }
        let m = s.get("md");
        let fl = s.get("flags");
        Ok(ConsensusEntry {
            nickname: a[0].to_string(),
            identity: RelayId(b64(r, a[1])?),
            address: parse_address(r, a[2])?,
            weight: uint(r, a[3])?,
            flags: RelayFlags::parse_args(&fl.args()?).map_err(|x| fl.bad(x))?,
            microdesc: b64(m, m.one()?)?,
        })
    }
}

/// Parses the entries in `ls` (empty, or starting at a `relay` line), sorted by identity with no
/// duplicate.
pub(crate) fn parse_compact_entries(ls: &[Line], doc_keywords: &[&str]) -> Result<Vec<ConsensusEntry>, DocError> {
    parse_sorted_blocks(ls, doc_keywords, ConsensusEntry::parse, |e| e.identity)
}
