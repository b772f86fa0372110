//! A vote: one authority's signed list of the relays it accepts for one consensus period.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest as _, Sha256};

use super::authcert::{AuthorityCert, AUTHORITY_CERT_KW};
use super::entry::{line, parse_entries, sorted_unique, ConsensusRelay, ENTRY_SPEC};
use super::flags::{encode_params, parse_params};
use super::lines::{self, b64, enc64, fingerprint, uint, Line, Mult, Section};
use super::protocols::Protocols;
use super::srv::{read_vote_lines, write_vote_lines, VoteSrv};
use super::{DocError, Lifetime, MAX_VOTE_LEN, MAX_VOTE_LINES, VOTE_SIG_PREFIX};
use crate::ids::RelayId;

const DOC_TYPE: &str = "allium-vote";
const SIG_KW: &str = "vote-signature";

/// Keywords of the vote header, in order.
pub(crate) const HEADER_SPEC: &[(&str, Mult)] = &[
    (DOC_TYPE, Mult::Once),
    ("valid-after", Mult::Once),
    ("fresh-until", Mult::Once),
    ("valid-until", Mult::Once),
    ("voter", Mult::Once),
    (AUTHORITY_CERT_KW, Mult::Once),
    ("params", Mult::Once),
    ("recommended-protocols", Mult::Once),
    ("required-protocols", Mult::Once),
    ("shared-rand-commit", Mult::Any),
    ("shared-rand-reveal", Mult::Any),
    ("shared-rand-seen-commit", Mult::Any),
    ("shared-rand-previous", Mult::Any),
    (crate::hs::period::KEYWORD, Mult::Any),
];

/// One authority's vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// The lifetime of the consensus this vote is for.
    pub lifetime: Lifetime,
    /// The voting authority's identity.
    pub voter: RelayId,
    /// The voter's signing-key certificate (`authority-cert`, issued by `voter`); its signing
    /// key signs the vote.
    pub cert: AuthorityCert,
    /// The consensus parameters it votes for (`params` line).
    pub params: BTreeMap<String, i64>,
    /// Subprotocol versions it recommends and requires.
    pub recommended_protocols: Protocols,
    pub required_protocols: Protocols,
    /// The relays it accepts, with the flags and weight it assigns. Encoded sorted by identity,
    /// one entry per identity.
    pub relays: Vec<ConsensusRelay>,
    /// Shared randomness: commitment, reveal, commitments seen, previous value
    /// (`shared-rand-*` lines; see [`super::srv`]).
    pub srv: VoteSrv,
}

impl Vote {
    /// The canonical signed part: every line before `vote-signature`.
    pub fn encode_unsigned(&self) -> String {
        let mut out = String::with_capacity(256 + 1024 * self.relays.len());
        line(&mut out, DOC_TYPE, "1");
        write_lifetime(&mut out, &self.lifetime);
        line(&mut out, "voter", &self.voter.fingerprint());
        self.cert.write_line(&mut out);
        write_meta(&mut out, &self.params, &self.recommended_protocols, &self.required_protocols);
        write_vote_lines(&mut out, &self.srv);
        for r in sorted_unique(&self.relays) {
            r.encode_into(&mut out);
        }
        out
    }

    /// The signed vote. `key` must be the signing key that `cert` certifies.
    pub fn encode_signed(&self, key: &SigningKey) -> String {
        let mut out = self.encode_unsigned();
        let sig = key.sign(&signed_message(&out));
        line(&mut out, SIG_KW, &enc64(&sig.to_bytes()));
        out
    }

    /// SHA-256 of the canonical signed part.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode_unsigned().as_bytes()).into()
    }

    /// The authority a vote says it is from, read from its header alone (the `voter` line
    /// among the lines before the first relay), without parsing the rest: a receiver refuses a
    /// vote from a stranger before spending work on it. `None` if there is no such line.
    /// Unauthenticated: [`Self::parse`] and verification still decide.
    pub fn claimed_voter(text: &str) -> Option<RelayId> {
        Self::header_value(text, "voter ").and_then(|fp| fp.parse().ok())
    }

    /// The `valid-after` a vote claims, read from its header alone as [`Self::claimed_voter`].
    pub fn claimed_valid_after(text: &str) -> Option<u64> {
        Self::header_value(text, "valid-after ").and_then(|t| t.parse().ok())
    }

    /// The rest of the first header line starting with `prefix`.
    fn header_value<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().take(HEADER_SPEC.len() + 64).take_while(|l| !l.starts_with("relay ")).find_map(|l| l.strip_prefix(prefix))
    }

    /// Checks the syntax of a vote. Nothing is trusted until [`UnverifiedVote::verify`].
    pub fn parse(text: &str) -> Result<UnverifiedVote, DocError> {
        let ls = lines::split(text, MAX_VOTE_LEN, MAX_VOTE_LINES)?;
        lines::check_type_line(&ls, DOC_TYPE)?;
        let last = ls.last().expect("split checked the type line exists");
        if last.kw != SIG_KW {
            return Err(DocError::Missing { keyword: "vote-signature (as the last line)" });
        }
        let body = &ls[..ls.len() - 1];
        let keywords: Vec<&str> =
            HEADER_SPEC.iter().chain(ENTRY_SPEC).map(|(k, _)| *k).chain([SIG_KW]).collect();
        let h = body.iter().position(|l| l.kw == "relay").unwrap_or(body.len());
        let s = Section::read(&body[..h], HEADER_SPEC, &keywords)?;
        let lifetime = read_lifetime(&s)?;
        let v = s.get("voter");
        let voter = fingerprint(v, v.one()?)?;
        let cl = s.get(AUTHORITY_CERT_KW);
        let cert = AuthorityCert::parse_line(cl)?;
        if cert.identity != voter {
            return Err(cl.bad("certificate is for another authority than voter"));
        }
        let (params, recommended_protocols, required_protocols) = read_meta(&s)?;
        let srv = read_vote_lines(&s)?;
        let relays = parse_entries(&body[h..], &keywords)?;
        let signature = b64(last, last.one()?)?;
        let signed_part = &text[..last.start];
        Ok(UnverifiedVote {
            vote: Vote { lifetime, voter, cert, params, recommended_protocols, required_protocols, relays, srv },
            signed_hash: Sha256::digest(signed_part.as_bytes()).into(),
            signature,
        })
    }
}

pub(super) fn signed_message(signed_part: &str) -> Vec<u8> {
    let mut m = VOTE_SIG_PREFIX.to_vec();
    m.extend_from_slice(&Sha256::digest(signed_part.as_bytes()));
    m
}

pub(crate) fn write_lifetime(out: &mut String, l: &Lifetime) {
    line(out, "valid-after", &l.valid_after.to_string());
    line(out, "fresh-until", &l.fresh_until.to_string());
    line(out, "valid-until", &l.valid_until.to_string());
}

/// Writes the `params`, `recommended-protocols` and `required-protocols` lines.
pub(crate) fn write_meta(out: &mut String, params: &BTreeMap<String, i64>, rec: &Protocols, req: &Protocols) {
    line(out, "params", &encode_params(params));
    line(out, "recommended-protocols", &rec.to_string());
    line(out, "required-protocols", &req.to_string());
}

pub(crate) type Meta = (BTreeMap<String, i64>, Protocols, Protocols);

/// Reads the lines [`write_meta`] writes.
pub(crate) fn read_meta(s: &Section) -> Result<Meta, DocError> {
    let l = s.get("params");
    let params = parse_params(&l.args()?).map_err(|r| l.bad(r))?;
    let l = s.get("recommended-protocols");
    let rec = Protocols::parse_args(&l.args()?).map_err(|r| l.bad(r))?;
    let l = s.get("required-protocols");
    let req = Protocols::parse_args(&l.args()?).map_err(|r| l.bad(r))?;
    Ok((params, rec, req))
}

pub(crate) fn read_lifetime(s: &Section) -> Result<Lifetime, DocError> {
    let t = |kw: &str| -> Result<u64, DocError> {
        let l: &Line = s.get(kw);
        uint(l, l.one()?)
    };
    Lifetime::new(t("valid-after")?, t("fresh-until")?, t("valid-until")?).ok_or(DocError::BadLifetime)
}

/// A vote whose syntax is valid but whose signature is not checked yet.
#[derive(Debug, Clone)]
pub struct UnverifiedVote {
    vote: Vote,
    signed_hash: [u8; 32],
    signature: [u8; 64],
}

impl UnverifiedVote {
    /// The voter the vote claims (not yet proven).
    pub fn claimed_voter(&self) -> RelayId {
        self.vote.voter
    }

    /// The lifetime the vote claims (not yet proven).
    pub fn claimed_lifetime(&self) -> Lifetime {
        self.vote.lifetime
    }

    /// Checks the voter's certificate (issued by `voter`, valid at `now`) and the signature by
    /// the signing key it certifies. The caller still checks that the voter is one of its
    /// configured authorities and that the lifetime is the one being voted on.
    pub fn verify(self, now: u64) -> Result<Vote, DocError> {
        self.vote.cert.valid_at(now).map_err(DocError::BadCert)?;
        let mut msg = VOTE_SIG_PREFIX.to_vec();
        msg.extend_from_slice(&self.signed_hash);
        if !self.vote.cert.signing_key_verifies(&msg, &self.signature) {
            return Err(DocError::BadSignature);
        }
        Ok(self.vote)
    }

    /// The vote without the signature check. Only for tools and tests.
    pub fn dangerously_assume_valid(self) -> Vote {
        self.vote
    }
}
