//! The consensus: the relay list a majority of authorities agreed on and signed, how it is
//! computed from votes, and detached signatures.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};

use super::authcert::{AuthorityCert, AuthoritySigner, CertError, AUTHORITY_CERT_KW};
use super::compact::{parse_compact_entries, ConsensusEntry, COMPACT_SPEC};
use super::entry::{line, sorted_unique, ConsensusRelay};
use super::microdesc::Microdesc;
use super::flags::{PositionWeights, RelayFlags};
use super::lines::{self, b64, enc64, fingerprint, uint, Line, Mult, Section};
use super::protocols::Protocols;
use super::srv::{compute_shared_random, read_consensus_lines, write_consensus_lines, SharedRandom};
use super::vote::{read_lifetime, read_meta, write_lifetime, write_meta, Vote};
use super::{DocError, Lifetime, CONSENSUS_SIG_PREFIX, MAX_CONSENSUS_LEN, MAX_SIGNATURES, MAX_SIGNATURE_DOC_LEN, MAX_VOTE_LINES};
use crate::hs::period::{self, PeriodSrv};
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
    (period::KEYWORD, Mult::Any),
    ("authority", Mult::Many),
];
/// Keywords of the footer, which may come in any order (a certificate line before the signature
/// line it goes with, by convention).
const FOOTER_KEYWORDS: &[&str] = &[AUTHORITY_CERT_KW, SIG_KW];

/// One authority's signature on a consensus digest: made by its signing key, and carried with
/// the certificate its identity gave that key. Written as the certificate's `authority-cert`
/// line followed by `directory-signature <identity> <signature>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirSignature {
    pub cert: AuthorityCert,
    pub signature: [u8; 64],
}

impl DirSignature {
    /// Signs `digest` (a consensus digest) with `signer`'s signing key.
    pub fn sign(signer: &AuthoritySigner, digest: &[u8; 32]) -> Self {
        DirSignature { cert: *signer.cert(), signature: signer.sign(&message(digest)) }
    }

    /// The authority that signed (the certificate's identity).
    pub fn identity(&self) -> RelayId {
        self.cert.identity
    }

    /// Whether this is a valid signature by the certified signing key over `digest`. The
    /// certificate itself is not checked here (see [`AuthorityCert::valid_at`]).
    pub fn verify(&self, digest: &[u8; 32]) -> bool {
        self.cert.signing_key_verifies(&message(digest), &self.signature)
    }

    /// Appends the `authority-cert` and `directory-signature` lines.
    fn write_lines(&self, out: &mut String) {
        self.cert.write_line(out);
        SigLine { identity: self.identity(), signature: self.signature }.write(out);
    }
}

/// A `directory-signature` line as read: the authority it names and the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct SigLine {
    identity: RelayId,
    signature: [u8; 64],
}

impl SigLine {
    fn write(&self, out: &mut String) {
        line(out, SIG_KW, &format!("{} {}", self.identity.fingerprint(), enc64(&self.signature)));
    }

    fn parse(l: &Line) -> Result<Self, DocError> {
        let a = l.exactly(2)?;
        Ok(SigLine { identity: fingerprint(l, a[0])?, signature: b64(l, a[1])? })
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
    /// Onion-service ring values (`hs-period-srv`) of this consensus's time period and the
    /// next ([`crate::hs::period`]); at most two, ascending.
    pub period_srvs: Vec<PeriodSrv>,
}

/// A consensus. The signed part is fixed at construction (or as received); signatures sit
/// beside it.
#[derive(Debug, Clone)]
pub struct Consensus {
    lifetime: Lifetime,
    meta: ConsensusMeta,
    weights: PositionWeights,
    authorities: Vec<RelayId>,
    relays: Vec<ConsensusEntry>,
    /// The microdescriptors of `relays`, when this consensus was computed here (an authority
    /// serves them); empty for a parsed one.
    microdescs: Vec<Microdesc>,
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

    /// An unsigned consensus with a header, listing each relay by its compact entry and keeping
    /// its microdescriptor beside. The position weights are computed from the relays
    /// ([`PositionWeights::compute`]).
    pub fn with_meta(lifetime: Lifetime, meta: ConsensusMeta, authorities: Vec<RelayId>, relays: Vec<ConsensusRelay>) -> Self {
        let authorities: Vec<RelayId> = authorities.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let (relays, microdescs): (Vec<ConsensusEntry>, Vec<Microdesc>) = sorted_unique(&relays).into_iter().map(ConsensusEntry::of_relay).unzip();
        let weights = PositionWeights::compute(relays.iter().map(|r| (r.flags, r.weight)));
        let mut t = String::with_capacity(1024 + 200 * relays.len());
        line(&mut t, DOC_TYPE, "1");
        write_lifetime(&mut t, &lifetime);
        write_meta(&mut t, &meta.params, &meta.recommended_protocols, &meta.required_protocols);
        line(&mut t, "bandwidth-weights", &weights.to_string());
        write_consensus_lines(&mut t, &meta.shared_rand);
        period::write_lines(&mut t, &meta.period_srvs);
        for a in &authorities {
            line(&mut t, "authority", &a.fingerprint());
        }
        for r in &relays {
            r.encode_into(&mut t);
        }
        let digest = Sha256::digest(t.as_bytes()).into();
        Consensus { lifetime, meta, weights, authorities, relays, microdescs, signatures: Vec::new(), signed_text: t, digest }
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
    /// The relays' entries, sorted by identity.
    pub fn relays(&self) -> &[ConsensusEntry] {
        &self.relays
    }
    /// The entry of the relay with this identity.
    pub fn relay(&self, id: &RelayId) -> Option<&ConsensusEntry> {
        self.relays.binary_search_by_key(id, |r| r.identity).ok().map(|i| &self.relays[i])
    }
    /// The relays' microdescriptors, in the order of [`Self::relays`], when this consensus was
    /// computed here; empty for a parsed one (they are fetched separately).
    pub fn microdescs(&self) -> &[Microdesc] {
        &self.microdescs
    }
    /// The signatures held. For a verified consensus: the valid ones from configured
    /// authorities, one per authority, sorted.
    pub fn signatures(&self) -> &[DirSignature] {
        &self.signatures
    }
    /// The signed part: every line before the footer (the first `authority-cert` or `directory-signature`).
    pub fn signed_text(&self) -> &str {
        &self.signed_text
    }
    /// SHA-256 of the signed part: what authorities sign.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// This authority's signature on the consensus, by its signing key.
    pub fn sign(&self, signer: &AuthoritySigner) -> DirSignature {
        DirSignature::sign(signer, &self.digest)
    }

    /// Adds `sig` if its certificate's signature is sound (times are not checked: that is the
    /// caller's business, as is whether the signer is an authority), the certified key signed
    /// this consensus, and its signer has none here yet. Returns whether it was added.
    pub fn add_signature(&mut self, sig: DirSignature) -> bool {
        if self.signatures.iter().any(|s| s.identity() == sig.identity())
            || sig.cert.verify_signature().is_err()
            || !sig.verify(&self.digest)
        {
            return false;
        }
        self.signatures.push(sig);
        self.signatures.sort_by_key(|s| s.identity());
        true
    }

    /// The full document: the signed part, then for each signature (sorted by identity) its
    /// `authority-cert` line and its `directory-signature` line.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.signed_text.len() + 380 * self.signatures.len());
        out.push_str(&self.signed_text);
        for s in &self.signatures {
            s.write_lines(&mut out);
        }
        out
    }

    /// Checks the syntax of a consensus. Nothing is trusted until [`UnverifiedConsensus::verify`].
    pub fn parse(text: &str) -> Result<UnverifiedConsensus, DocError> {
        let ls = lines::split(text, MAX_CONSENSUS_LEN, MAX_VOTE_LINES)?;
        lines::check_type_line(&ls, DOC_TYPE)?;
        let keywords: Vec<&str> =
            HEADER_SPEC.iter().chain(COMPACT_SPEC).map(|(k, _)| *k).chain(FOOTER_KEYWORDS.iter().copied()).collect();
        let f = ls.iter().position(|l| FOOTER_KEYWORDS.contains(&l.kw)).unwrap_or(ls.len());
        let (body, footer) = ls.split_at(f);
        let h = body.iter().position(|l| l.kw == "relay").unwrap_or(body.len());
        let s = Section::read(&body[..h], HEADER_SPEC, &keywords)?;
        let lifetime = read_lifetime(&s)?;
        let (params, recommended_protocols, required_protocols) = read_meta(&s)?;
        let bw = s.get("bandwidth-weights");
        let weights = PositionWeights::parse_args(&bw.args()?).map_err(|r| bw.bad(r))?;
        let shared_rand = read_consensus_lines(&s)?;
        let period_srvs = period::read_lines(s.all(period::KEYWORD).iter().copied())?;
        let meta = ConsensusMeta { params, recommended_protocols, required_protocols, shared_rand, period_srvs };
        let mut authorities: Vec<RelayId> = Vec::new();
        for l in s.all("authority") {
            let id = fingerprint(l, l.one()?)?;
            if authorities.last().is_some_and(|p| *p >= id) {
                return Err(DocError::Unsorted { line: l.no });
            }
            authorities.push(id);
        }
        let relays = parse_compact_entries(&body[h..], &keywords)?;
        let (certs, sig_lines) = parse_footer(footer, &keywords)?;
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
                microdescs: Vec::new(),
                signatures: Vec::new(),
                digest: Sha256::digest(signed_text.as_bytes()).into(),
                signed_text: signed_text.to_string(),
            },
            certs,
            sig_lines,
        })
    }
}

/// Reads the footer: `authority-cert` and `directory-signature` lines in any order (at most
/// [`MAX_SIGNATURES`] of each), unknown lines ignored unless critical, other known keywords
/// refused. Identical lines are kept once.
fn parse_footer(footer: &[Line], keywords: &[&str]) -> Result<(Vec<AuthorityCert>, Vec<SigLine>), DocError> {
    let mut certs = BTreeSet::new();
    let mut sigs = BTreeSet::new();
    let (mut n_certs, mut n_sigs) = (0usize, 0usize);
    for l in footer {
        if l.kw == AUTHORITY_CERT_KW {
            n_certs += 1;
            if n_certs > MAX_SIGNATURES {
                return Err(DocError::TooMany { what: "authority certificates", limit: MAX_SIGNATURES });
            }
            certs.insert(CertKey(AuthorityCert::parse_line(l)?));
        } else if l.kw == SIG_KW {
            n_sigs += 1;
            if n_sigs > MAX_SIGNATURES {
                return Err(DocError::TooMany { what: "directory signatures", limit: MAX_SIGNATURES });
            }
            sigs.insert(SigLine::parse(l)?);
        } else if keywords.contains(&l.kw) {
            return Err(DocError::OutOfOrder { line: l.no, keyword: l.kw.to_string() });
        } else if l.kw.starts_with("critical-") {
            return Err(DocError::UnknownCritical { line: l.no, keyword: l.kw.to_string() });
        }
    }
    Ok((certs.into_iter().map(|c| c.0).collect(), sigs.into_iter().collect()))
}

/// Orders certificates (by identity first) so duplicates can be dropped.
#[derive(PartialEq, Eq)]
struct CertKey(AuthorityCert);
impl Ord for CertKey {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        let k = |c: &AuthorityCert| (c.identity, c.signing_key, c.published, c.expires, c.signature);
        k(&self.0).cmp(&k(&o.0))
    }
}
impl PartialOrd for CertKey {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// A consensus whose syntax is valid; signatures, certificates and validity interval not
/// checked yet.
#[derive(Debug, Clone)]
pub struct UnverifiedConsensus {
    /// The document, with no signatures yet.
    c: Consensus,
    /// The footer's certificates and signature lines (duplicates removed).
    certs: Vec<AuthorityCert>,
    sig_lines: Vec<SigLine>,
}

/// Why a well-formed consensus is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsensusError {
    #[error(
        "consensus has valid signatures from {valid} of {configured} configured authorities; {required} required \
         (not counted: {expired_certs} whose signing-key certificate is expired or not yet valid, \
         {invalid_certs} without a valid certificate, {bad_signatures} with a bad signature)"
    )]
    NotEnoughSignatures {
        valid: usize,
        required: usize,
        configured: usize,
        /// Configured authorities whose only sound certificates were outside their validity.
        expired_certs: usize,
        /// Configured authorities with a signature line but no certificate, or only
        /// certificates that do not verify.
        invalid_certs: usize,
        /// Configured authorities with a valid certificate whose key did not make any of their
        /// signature lines.
        bad_signatures: usize,
    },
    #[error("consensus not valid yet (valid-after {}, now {})", crate::time::Utc(*valid_after), crate::time::Utc(*now))]
    NotYetValid { valid_after: u64, now: u64 },
    #[error("consensus expired (valid-until {}, now {})", crate::time::Utc(*valid_until), crate::time::Utc(*now))]
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
    /// (distinct identities) signed. An authority counts when the footer holds a certificate
    /// for its identity that is valid at `now` and whose signing key made a
    /// `directory-signature` line naming that identity. Signatures by other identities are
    /// ignored, several by one authority count once, and one without a valid certificate or
    /// with a bad signature does not count. The result keeps only the counted signatures, each
    /// with the certificate that made it count.
    pub fn verify(self, authorities: &[RelayId], now: u64) -> Result<Consensus, ConsensusError> {
        let l = self.c.lifetime;
        if now < l.valid_after {
            return Err(ConsensusError::NotYetValid { valid_after: l.valid_after, now });
        }
        if now > l.valid_until {
            return Err(ConsensusError::Expired { valid_until: l.valid_until, now });
        }
        self.verify_signatures(authorities, now)
    }

    /// Checks only the signatures, for a caller that applies its own time rule to the
    /// consensus (e.g. accepting a recently expired one when no newer one can be had). The
    /// certificates are still checked in full, with their validity taken at the consensus's
    /// `valid-after` (so a certificate that expired since does not stop a cached consensus from
    /// loading, but one that was not valid when the consensus was made does). Named so it is
    /// not used by accident.
    pub fn dangerously_skip_time_check(self, authorities: &[RelayId]) -> Result<Consensus, ConsensusError> {
        let at = self.c.lifetime.valid_after;
        self.verify_signatures(authorities, at)
    }

    /// The signature counting rule, with certificates checked at `at`.
    fn verify_signatures(self, authorities: &[RelayId], at: u64) -> Result<Consensus, ConsensusError> {
        let configured: BTreeSet<RelayId> = authorities.iter().copied().collect();
        let required = configured.len() / 2 + 1;
        let msg = message(&self.c.digest);
        let mut good: Vec<DirSignature> = Vec::new();
        let (mut expired_certs, mut invalid_certs, mut bad_signatures) = (0, 0, 0);
        for a in &configured {
            let sigs: Vec<&SigLine> = self.sig_lines.iter().filter(|s| s.identity == *a).collect();
            if sigs.is_empty() {
                continue;
            }
            let (mut sound, mut out_of_time) = (false, false);
            let mut found = None;
            for cert in self.certs.iter().filter(|c| c.identity == *a) {
                match cert.verify_signature().and_then(|()| cert.check_time(at)) {
                    Ok(()) => sound = true,
                    Err(e) => {
                        out_of_time |= e.is_time();
                        continue;
                    }
                }
                if let Some(s) = sigs.iter().find(|s| cert.signing_key_verifies(&msg, &s.signature)) {
                    found = Some(DirSignature { cert: *cert, signature: s.signature });
                    break;
                }
            }
            match found {
                Some(d) => good.push(d),
                None if sound => bad_signatures += 1,
                None if out_of_time => expired_certs += 1,
                None => invalid_certs += 1,
            }
        }
        if good.len() < required {
            return Err(ConsensusError::NotEnoughSignatures {
                valid: good.len(),
                required,
                configured: configured.len(),
                expired_certs,
                invalid_certs,
                bad_signatures,
            });
        }
        let mut c = self.c;
        c.signatures = good;
        Ok(c)
    }

    /// The consensus without any check: each signature line paired with the first certificate
    /// for its identity (lines without one are dropped). Only for tools and tests.
    pub fn dangerously_assume_valid(self) -> Consensus {
        let mut c = self.c;
        for s in &self.sig_lines {
            if c.signatures.iter().any(|d| d.identity() == s.identity) {
                continue;
            }
            if let Some(cert) = self.certs.iter().find(|x| x.identity == s.identity) {
                c.signatures.push(DirSignature { cert: *cert, signature: s.signature });
            }
        }
        c
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
/// - `shared-rand-*`: see [`compute_shared_random`];
/// - `hs-period-srv`: the two lines of [`period::consensus_ring_values`], for periods of
///   [`period::DEFAULT_PERIOD_SECS`], from this consensus's `shared-rand-current` and the lines
///   each voter states (all of one voter's votes taken together).
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
    let shared_rand = compute_shared_random(&votes, n_authorities, lifetime);
    // Ring values: the lines each voter states (all of its votes' lines together).
    let mut stated: BTreeMap<RelayId, Vec<PeriodSrv>> = BTreeMap::new();
    for v in &votes {
        stated.entry(v.voter).or_default().extend(v.srv.period_srvs.iter().copied());
    }
    let stated: Vec<Vec<PeriodSrv>> = stated.into_values().collect();
    let current = shared_rand.current.map(|c| c.value);
    let period_secs = period::length_from_params(&params, lifetime.voting_interval());
    let previous = shared_rand.previous.map(|p| p.value);
    let period_srvs = period::consensus_ring_values(lifetime.valid_after, period_secs, current.as_ref(), previous.as_ref(), &stated, n_authorities).to_vec();
    let meta = ConsensusMeta {
        params,
        recommended_protocols: majority_text(&rec_by),
        required_protocols: majority_text(&req_by),
        shared_rand,
        period_srvs,
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
/// authority-cert <the signer's signing-key certificate>
/// directory-signature <fingerprint> <base64 signature>
/// ```
/// Parsing checks syntax only (and that both lines name the same authority);
/// [`DetachedSignature::verify`] checks the certificate and the signature over the claimed
/// digest, and the receiver must compare the digest with its own consensus.
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
    (AUTHORITY_CERT_KW, Mult::Once),
    (SIG_KW, Mult::Once),
];

/// Why a detached signature is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DetachedError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("signature does not verify with the certified signing key")]
    BadSignature,
}

impl DetachedSignature {
    /// `signer`'s signature on `consensus`.
    pub fn new(consensus: &Consensus, signer: &AuthoritySigner) -> Self {
        DetachedSignature { valid_after: consensus.valid_after(), digest: consensus.digest(), signature: consensus.sign(signer) }
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(512);
        line(&mut out, DETACHED_SPEC[0].0, "1");
        line(&mut out, "valid-after", &self.valid_after.to_string());
        line(&mut out, "consensus-digest", &enc64(&self.digest));
        self.signature.write_lines(&mut out);
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
        let cert = AuthorityCert::parse_line(s.get(AUTHORITY_CERT_KW))?;
        let sl = s.get(SIG_KW);
        let sig = SigLine::parse(sl)?;
        if sig.identity != cert.identity {
            return Err(sl.bad("names another authority than the authority-cert line"));
        }
        Ok(DetachedSignature {
            valid_after: uint(va, va.one()?)?,
            digest: b64(d, d.one()?)?,
            signature: DirSignature { cert, signature: sig.signature },
        })
    }

    /// Checks that the certificate is valid at `now` and that its signing key signed the
    /// claimed digest.
    pub fn verify(&self, now: u64) -> Result<(), DetachedError> {
        self.signature.cert.valid_at(now)?;
        if !self.signature.verify(&self.digest) {
            return Err(DetachedError::BadSignature);
        }
        Ok(())
    }
}
