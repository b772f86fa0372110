//! The consensus: the relay list a majority of authorities agreed on and signed, how it is
//! computed from votes, and detached signatures.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Signer, SigningKey};
use sha2::{Digest as _, Sha256};

use super::entry::{line, parse_entries, sorted_unique, ConsensusRelay, ENTRY_SPEC};
use super::flags::{PositionWeights, RelayFlags};
use super::lines::{self, b64, enc64, fingerprint, uint, Line, Mult, Section};
use super::protocols::Protocols;
use super::srv::{compute_shared_random, read_consensus_lines, write_consensus_lines, SharedRandom};
use super::vote::{read_lifetime, read_meta, write_lifetime, write_meta, Vote};
use super::{DocError, Lifetime, CONSENSUS_SIG_PREFIX, MAX_CONSENSUS_LEN, MAX_SIGNATURES, MAX_SIGNATURE_DOC_LEN, MAX_VOTE_LINES};
use crate::ids::RelayId;

const DOC_TYPE: &str = "allium-consensus";
const SIG_KW: &str = "directory-signature";

const HEADER_SPEC: &[(&str, Mult)] = &[
    (DOC_TYPE, Mult::Once),
    ("valid-after", Mult::Once),
    ("fresh-until", Mult::Once),
    ("valid-until", Mult::Once),
    ("params", Mult::Once),
    ("recommended-protocols", Mult::Once),
    ("required-protocols", Mult::Once),
    ("bandwidth-weights", Mult::Once),
    ("shared-rand-previous", Mult::Any),
    ("shared-rand-current", Mult::Any),
    ("authority", Mult::Many),
];
const FOOTER_SPEC: &[(&str, Mult)] = &[(SIG_KW, Mult::Many)];

/// One authority's signature on a consensus digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirSignature {
    pub identity: RelayId,
    pub signature: [u8; 64],
}

impl DirSignature {
    /// Signs `digest` (a consensus digest) with `key`.
    pub fn sign(key: &SigningKey, digest: &[u8; 32]) -> Self {
        DirSignature {
            identity: RelayId(key.verifying_key().to_bytes()),
            signature: key.sign(&message(digest)).to_bytes(),
        }
    }

    /// Whether this is a valid signature by `identity` over `digest`.
    pub fn verify(&self, digest: &[u8; 32]) -> bool {
        self.identity
            .verifying_key()
            .is_some_and(|k| k.verify_strict(&message(digest), &Signature::from_bytes(&self.signature)).is_ok())
    }

    fn line_args(&self) -> String {
        format!("{} {}", self.identity.fingerprint(), enc64(&self.signature))
    }

    fn parse_line(l: &Line) -> Result<Self, DocError> {
        let a = l.exactly(2)?;
        Ok(DirSignature { identity: fingerprint(l, a[0])?, signature: b64(l, a[1])? })
    }
}

fn message(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = CONSENSUS_SIG_PREFIX.to_vec();
    m.extend_from_slice(digest);
    m
}

/// What a consensus header says besides times and authorities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsensusMeta {
    /// Consensus parameters (`params`): the median of the values voted.
    pub params: BTreeMap<String, i64>,
    /// Subprotocol versions nodes should support.
    pub recommended_protocols: Protocols,
    /// Subprotocol versions nodes must support; relays lacking one are not listed.
    pub required_protocols: Protocols,
    /// Shared random values (`shared-rand-previous`, `shared-rand-current`).
    pub shared_rand: SharedRandom,
}

/// A consensus. The signed part is fixed at construction (or as received); signatures sit
/// beside it.
#[derive(Debug, Clone)]
pub struct Consensus {
    lifetime: Lifetime,
    meta: ConsensusMeta,
    weights: PositionWeights,
    authorities: Vec<RelayId>,
    relays: Vec<ConsensusRelay>,
    signatures: Vec<DirSignature>,
    /// Exactly the bytes the signatures cover.
    signed_text: String,
    /// SHA-256 of `signed_text`.
    digest: [u8; 32],
}

impl PartialEq for Consensus {
    fn eq(&self, o: &Self) -> bool {
        self.signed_text == o.signed_text && self.signatures == o.signatures
    }
}
impl Eq for Consensus {}

impl Consensus {
    /// An unsigned consensus. Authorities and relays are sorted by identity, one per identity.
    /// No parameters or protocol versions; see [`Consensus::with_meta`].
    pub fn new(lifetime: Lifetime, authorities: Vec<RelayId>, relays: Vec<ConsensusRelay>) -> Self {
        Self::with_meta(lifetime, ConsensusMeta::default(), authorities, relays)
    }

    /// An unsigned consensus with a header. The position weights are computed from the relays
    /// ([`PositionWeights::compute`]).
    pub fn with_meta(lifetime: Lifetime, meta: ConsensusMeta, authorities: Vec<RelayId>, relays: Vec<ConsensusRelay>) -> Self {
        let authorities: Vec<RelayId> = authorities.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let relays: Vec<ConsensusRelay> = sorted_unique(&relays).into_iter().cloned().collect();
        let weights = PositionWeights::compute(relays.iter().map(|r| (r.flags, r.weight)));
        let mut t = String::with_capacity(1024 + 1024 * relays.len());
        line(&mut t, DOC_TYPE, "1");
        write_lifetime(&mut t, &lifetime);
        write_meta(&mut t, &meta.params, &meta.recommended_protocols, &meta.required_protocols);
        line(&mut t, "bandwidth-weights", &weights.to_string());
        write_consensus_lines(&mut t, &meta.shared_rand);
        for a in &authorities {
            line(&mut t, "authority", &a.fingerprint());
        }
        for r in &relays {
            r.encode_into(&mut t);
        }
        let digest = Sha256::digest(t.as_bytes()).into();
        Consensus { lifetime, meta, weights, authorities, relays, signatures: Vec::new(), signed_text: t, digest }
    }

    /// Parameters and protocol versions.
    pub fn meta(&self) -> &ConsensusMeta {
        &self.meta
    }
    /// The consensus parameters as voted (unchecked; nodes read them through bounds).
    pub fn params(&self) -> &BTreeMap<String, i64> {
        &self.meta.params
    }
    /// The shared random values (`shared-rand-current`, `shared-rand-previous`).
    pub fn shared_random(&self) -> SharedRandom {
        self.meta.shared_rand
    }
    /// The position weights (`bandwidth-weights`).
    pub fn position_weights(&self) -> PositionWeights {
        self.weights
    }

    pub fn lifetime(&self) -> Lifetime {
        self.lifetime
    }
    pub fn valid_after(&self) -> u64 {
        self.lifetime.valid_after
    }
    pub fn fresh_until(&self) -> u64 {
        self.lifetime.fresh_until
    }
    pub fn valid_until(&self) -> u64 {
        self.lifetime.valid_until
    }
    /// The authorities whose votes made this consensus, sorted.
    pub fn authorities(&self) -> &[RelayId] {
        &self.authorities
    }
    /// The relays, sorted by identity.
    pub fn relays(&self) -> &[ConsensusRelay] {
        &self.relays
    }
    /// The relay with this identity.
    pub fn relay(&self, id: &RelayId) -> Option<&ConsensusRelay> {
        self.relays.binary_search_by_key(id, |r| r.identity).ok().map(|i| &self.relays[i])
    }
    /// The signatures held. For a verified consensus: the valid ones from configured
    /// authorities, one per authority, sorted.
    pub fn signatures(&self) -> &[DirSignature] {
        &self.signatures
    }
    /// The signed part: every line before the first `directory-signature`.
    pub fn signed_text(&self) -> &str {
        &self.signed_text
    }
    /// SHA-256 of the signed part: what authorities sign.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// This authority's signature on the consensus.
    pub fn sign(&self, key: &SigningKey) -> DirSignature {
        DirSignature::sign(key, &self.digest)
    }

    /// Adds `sig` if it is valid for this consensus and its signer has none here yet. Returns
    /// whether it was added. (Whether the signer is an authority is the caller's business.)
    pub fn add_signature(&mut self, sig: DirSignature) -> bool {
        if self.signatures.iter().any(|s| s.identity == sig.identity) || !sig.verify(&self.digest) {
            return false;
        }
        self.signatures.push(sig);
        self.signatures.sort_by_key(|s| s.identity);
        true
    }

    /// The full document: the signed part, then one `directory-signature` line per signature
    /// (sorted by identity).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.signed_text.len() + 140 * self.signatures.len());
        out.push_str(&self.signed_text);
        for s in &self.signatures {
            line(&mut out, SIG_KW, &s.line_args());
        }
        out
    }

    /// Checks the syntax of a consensus. Nothing is trusted until [`UnverifiedConsensus::verify`].
    pub fn parse(text: &str) -> Result<UnverifiedConsensus, DocError> {
        let ls = lines::split(text, MAX_CONSENSUS_LEN, MAX_VOTE_LINES)?;
        lines::check_type_line(&ls, DOC_TYPE)?;
        let keywords: Vec<&str> =
            HEADER_SPEC.iter().chain(ENTRY_SPEC).chain(FOOTER_SPEC).map(|(k, _)| *k).collect();
        let f = ls.iter().position(|l| l.kw == SIG_KW).unwrap_or(ls.len());
        let (body, footer) = ls.split_at(f);
        let h = body.iter().position(|l| l.kw == "relay").unwrap_or(body.len());
        let s = Section::read(&body[..h], HEADER_SPEC, &keywords)?;
        let lifetime = read_lifetime(&s)?;
        let (params, recommended_protocols, required_protocols) = read_meta(&s)?;
        let bw = s.get("bandwidth-weights");
        let weights = PositionWeights::parse_args(&bw.args()?).map_err(|r| bw.bad(r))?;
        let shared_rand = read_consensus_lines(&s)?;
        let meta = ConsensusMeta { params, recommended_protocols, required_protocols, shared_rand };
        let mut authorities: Vec<RelayId> = Vec::new();
        for l in s.all("authority") {
            let id = fingerprint(l, l.one()?)?;
            if authorities.last().is_some_and(|p| *p >= id) {
                return Err(DocError::Unsorted { line: l.no });
            }
            authorities.push(id);
        }
        let relays = parse_entries(&body[h..], &keywords)?;
        let mut signatures = Vec::new();
        if !footer.is_empty() {
            let fs = Section::read(footer, FOOTER_SPEC, &keywords)?;
            let sig_lines = fs.all(SIG_KW);
            if sig_lines.len() > MAX_SIGNATURES {
                return Err(DocError::TooMany { what: "directory signatures", limit: MAX_SIGNATURES });
            }
            for l in sig_lines {
                signatures.push(DirSignature::parse_line(l)?);
            }
        }
        let signed_text = match footer.first() {
            Some(l) => &text[..l.start],
            None => text,
        };
        Ok(UnverifiedConsensus {
            c: Consensus {
                lifetime,
                meta,
                weights,
                authorities,
                relays,
                signatures,
                digest: Sha256::digest(signed_text.as_bytes()).into(),
                signed_text: signed_text.to_string(),
            },
        })
    }
}

/// A consensus whose syntax is valid; signatures and validity interval not checked yet.
#[derive(Debug, Clone)]
pub struct UnverifiedConsensus {
    c: Consensus,
}

/// Why a well-formed consensus is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsensusError {
    #[error("consensus has valid signatures from {valid} of {configured} configured authorities; {required} required")]
    NotEnoughSignatures { valid: usize, required: usize, configured: usize },
    #[error("consensus not valid yet (valid-after {valid_after}, now {now})")]
    NotYetValid { valid_after: u64, now: u64 },
    #[error("consensus expired (valid-until {valid_until}, now {now})")]
    Expired { valid_until: u64, now: u64 },
}

impl UnverifiedConsensus {
    /// The digest the signatures must cover (SHA-256 of the signed part as received).
    pub fn digest(&self) -> [u8; 32] {
        self.c.digest
    }

    /// The lifetime the document claims (not yet proven).
    pub fn claimed_lifetime(&self) -> Lifetime {
        self.c.lifetime
    }

    /// Checks `valid_after <= now <= valid_until`, then that more than half of `authorities`
    /// (distinct identities) made a valid signature. Signatures by other keys are ignored, a
    /// second signature by the same authority counts once, and a bad one does not count. The
    /// result keeps only the counted signatures.
    pub fn verify(self, authorities: &[RelayId], now: u64) -> Result<Consensus, ConsensusError> {
        let l = self.c.lifetime;
        if now < l.valid_after {
            return Err(ConsensusError::NotYetValid { valid_after: l.valid_after, now });
        }
        if now > l.valid_until {
            return Err(ConsensusError::Expired { valid_until: l.valid_until, now });
        }
        self.verify_signatures(authorities)
    }

    /// Checks only the signatures: for a caller that applies its own time rule (e.g. accepting
    /// a recently expired consensus when no newer one can be had). Named so it is not used by
    /// accident.
    pub fn dangerously_skip_time_check(self, authorities: &[RelayId]) -> Result<Consensus, ConsensusError> {
        self.verify_signatures(authorities)
    }

    fn verify_signatures(self, authorities: &[RelayId]) -> Result<Consensus, ConsensusError> {
        let configured: BTreeSet<RelayId> = authorities.iter().copied().collect();
        let required = configured.len() / 2 + 1;
        let mut c = self.c;
        let mut good: BTreeMap<RelayId, DirSignature> = BTreeMap::new();
        for s in &c.signatures {
            if configured.contains(&s.identity) && !good.contains_key(&s.identity) && s.verify(&c.digest) {
                good.insert(s.identity, *s);
            }
        }
        if good.len() < required {
            return Err(ConsensusError::NotEnoughSignatures { valid: good.len(), required, configured: configured.len() });
        }
        c.signatures = good.into_values().collect();
        Ok(c)
    }

    /// The consensus without any check. Only for tools and tests.
    pub fn dangerously_assume_valid(self) -> Consensus {
        self.c
    }
}

/// Computes the consensus from `votes`, for a network of `n_authorities` configured authorities.
///
/// Deterministic and independent of the order of `votes`. Only votes whose lifetime equals
/// `lifetime` count; several votes by one voter count as one voter (it lists a relay if any of
/// its votes does; its flags for a relay are the union, its weight the greatest, its parameter
/// value the smallest, its protocol lines the bytewise smallest). "Majority" means more than
/// half of `n_authorities` (the configured number, not the number of votes received):
/// - `required-protocols` / `recommended-protocols`: the text voted by a majority, else empty;
/// - `params`: each parameter listed by a majority of voters, with the low median of their
///   values;
/// - a relay is listed when a majority of voters list its identity, and its descriptor
///   supports every required protocol version;
/// - its descriptor part is the version (entry text from `relay` to `descriptor-digest`)
///   listed by the most voters; ties go to the newest `published`, then the greatest descriptor
///   digest, then the greatest canonical text;
/// - it has each flag that a majority of voters give it; its weight is the low median of the
///   weights of the voters listing it;
/// - the `authority` lines list the voters whose votes counted;
/// - `shared-rand-*`: see [`compute_shared_random`].
///
/// The result is unsigned.
pub fn compute_consensus(votes: &[Vote], n_authorities: usize, lifetime: Lifetime) -> Consensus {
    let votes: Vec<&Vote> = votes.iter().filter(|v| v.lifetime == lifetime).collect();
    let voters: BTreeSet<RelayId> = votes.iter().map(|v| v.voter).collect();
    let majority = |count: usize| count * 2 > n_authorities;

    // Header: protocols and parameters, one value per voter.
    let mut rec_by: BTreeMap<RelayId, String> = BTreeMap::new();
    let mut req_by: BTreeMap<RelayId, String> = BTreeMap::new();
    let mut param_by: BTreeMap<&str, BTreeMap<RelayId, i64>> = BTreeMap::new();
    for v in &votes {
        keep_min(&mut rec_by, v.voter, v.recommended_protocols.to_string());
        keep_min(&mut req_by, v.voter, v.required_protocols.to_string());
        for (k, x) in &v.params {
            keep_min(param_by.entry(k.as_str()).or_default(), v.voter, *x);
        }
    }
    let majority_text = |by: &BTreeMap<RelayId, String>| -> Protocols {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for t in by.values() {
            *counts.entry(t.as_str()).or_default() += 1;
        }
        counts
            .into_iter()
            .find(|(_, c)| majority(*c))
            .and_then(|(t, _)| if t.is_empty() { Some(Protocols::new()) } else { Protocols::parse_args(&t.split(' ').collect::<Vec<_>>()).ok() })
            .unwrap_or_default()
    };
    let mut params = BTreeMap::new();
    for (k, by) in param_by {
        if majority(by.len()) {
            params.insert(k.to_string(), low_median(by.into_values().collect()));
        }
    }
    let meta = ConsensusMeta {
        params,
        recommended_protocols: majority_text(&rec_by),
        required_protocols: majority_text(&req_by),
        shared_rand: compute_shared_random(&votes, n_authorities, lifetime),
    };

    // Relays. identity -> version text -> (entry, voters listing it); identity -> voter -> (flags, weight)
    let mut by_id: BTreeMap<RelayId, BTreeMap<String, (&ConsensusRelay, BTreeSet<RelayId>)>> = BTreeMap::new();
    let mut assessed: BTreeMap<RelayId, BTreeMap<RelayId, (RelayFlags, u64)>> = BTreeMap::new();
    for v in &votes {
        for r in &v.relays {
            by_id.entry(r.identity).or_default().entry(r.encoded()).or_insert_with(|| (r, BTreeSet::new())).1.insert(v.voter);
            let a = assessed.entry(r.identity).or_default().entry(v.voter).or_insert((RelayFlags::EMPTY, 0));
            a.0.insert(r.flags);
            a.1 = a.1.max(r.weight);
        }
    }
    let mut relays = Vec::new();
    for (id, versions) in &by_id {
        let listing = &assessed[id];
        if !majority(listing.len()) {
            continue;
        }
        let best = versions.iter().max_by(|(ta, (a, va)), (tb, (b, vb))| {
            va.len()
                .cmp(&vb.len())
                .then(a.published.cmp(&b.published))
                .then(a.descriptor_digest.cmp(&b.descriptor_digest))
                .then(ta.cmp(tb))
        });
        let Some((_, (r, _))) = best else { continue };
        if !r.protocols.missing(&meta.required_protocols).is_empty() {
            continue;
        }
        let mut r = (*r).clone();
        r.flags = RelayFlags::EMPTY;
        for (flag, _) in RelayFlags::NAMES {
            let n = listing.values().filter(|(f, _)| f.contains(flag)).count();
            r.flags = r.flags.with_if(flag, majority(n));
        }
        r.weight = low_median(listing.values().map(|(_, w)| *w).collect());
        relays.push(r);
    }
    Consensus::with_meta(lifetime, meta, voters.into_iter().collect(), relays)
}

fn keep_min<K: Ord, V: Ord>(m: &mut BTreeMap<K, V>, k: K, v: V) {
    match m.entry(k) {
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(v);
        }
        std::collections::btree_map::Entry::Occupied(mut e) => {
            if v < *e.get() {
                e.insert(v);
            }
        }
    }
}

/// The low median: the element at index `(n − 1) / 2` of the sorted values (0 when empty).
pub fn low_median<T: Ord + Copy + Default>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or_default()
}

/// A signature on a consensus sent on its own (from one authority to another), before the
/// consensus is published.
///
/// Text form:
/// ```text
/// allium-consensus-signature 1
/// valid-after <unix seconds>
/// consensus-digest <base64 SHA-256 of the signed part>
/// directory-signature <fingerprint> <base64 signature>
/// ```
/// Parsing checks syntax only; [`DetachedSignature::verify`] checks the signature over the
/// claimed digest, and the receiver must compare the digest with its own consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetachedSignature {
    pub valid_after: u64,
    pub digest: [u8; 32],
    pub signature: DirSignature,
}

const DETACHED_SPEC: &[(&str, Mult)] = &[
    ("allium-consensus-signature", Mult::Once),
    ("valid-after", Mult::Once),
    ("consensus-digest", Mult::Once),
    (SIG_KW, Mult::Once),
];

impl DetachedSignature {
    /// `key`'s signature on `consensus`.
    pub fn new(consensus: &Consensus, key: &SigningKey) -> Self {
        DetachedSignature { valid_after: consensus.valid_after(), digest: consensus.digest(), signature: consensus.sign(key) }
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(256);
        line(&mut out, DETACHED_SPEC[0].0, "1");
        line(&mut out, "valid-after", &self.valid_after.to_string());
        line(&mut out, "consensus-digest", &enc64(&self.digest));
        line(&mut out, SIG_KW, &self.signature.line_args());
        out
    }

    /// Parses the text form (syntax only).
    pub fn parse(text: &str) -> Result<Self, DocError> {
        let ls = lines::split(text, MAX_SIGNATURE_DOC_LEN, 16)?;
        lines::check_type_line(&ls, DETACHED_SPEC[0].0)?;
        let keywords: Vec<&str> = DETACHED_SPEC.iter().map(|(k, _)| *k).collect();
        let s = Section::read(&ls, DETACHED_SPEC, &keywords)?;
        let va = s.get("valid-after");
        let d = s.get("consensus-digest");
        Ok(DetachedSignature {
            valid_after: uint(va, va.one()?)?,
            digest: b64(d, d.one()?)?,
            signature: DirSignature::parse_line(s.get(SIG_KW))?,
        })
    }

    /// Whether the signature is valid over the claimed digest.
    pub fn verify(&self) -> bool {
        self.signature.verify(&self.digest)
    }
}
