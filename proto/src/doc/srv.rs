//! Shared random value: a commit-and-reveal protocol among the authorities, so each consensus
//! carries a 32-byte value that no single authority controls (the onion-service hash ring uses
//! it). Sans-IO: the caller supplies the votes, the period and the random reveals.
//!
//! One SRV period is one voting interval; its identifier is the `valid-after` time of the
//! consensus. In its vote for period `t` an authority
//! - **commits** `C = SHA-256("allium-srv-commit-v1" | t | identity | R)` to a fresh random `R`,
//! - **reveals** the `R` it committed to in its vote for the previous period `t − I`,
//! - copies the commits it saw in the votes for `t − I` (`shared-rand-seen-commit`),
//! - states the previous SRV (the current value of its consensus for `t − I`),
//! - states the onion-service ring values (`hs-period-srv`) of its consensus for `t − I`.
//!
//! [`compute_shared_random`] turns the votes for `t` into the consensus's `shared-rand-*`
//! lines; it depends only on the set of votes. The full rules are in `docs/PROTOCOL.md`
//! (Directory → Shared random value).

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest as _, Sha256};

use super::entry::line;
use super::lines::{b64, enc64, fingerprint, uint, Line, Section};
use super::vote::Vote;
use super::{DocError, Lifetime};
use crate::hs::period::{self, PeriodSrv};
use crate::ids::RelayId;

/// Domain-separation prefix of a commitment.
pub const SRV_COMMIT_PREFIX: &[u8] = b"allium-srv-commit-v1";
/// Domain-separation prefix of the shared random value.
pub const SRV_VALUE_PREFIX: &[u8] = b"allium-srv-v1";
/// Most `shared-rand-seen-commit` lines in one vote.
pub const MAX_SEEN_COMMITS: usize = 64;

/// A shared random value and the number of valid reveals it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrvValue {
    pub reveals: u64,
    pub value: [u8; 32],
}

impl fmt::Display for SrvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} reveals)", hex_lower(&self.value), self.reveals)
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The shared random values a consensus carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedRandom {
    /// The value for this consensus's period (`shared-rand-current`); `None` when fewer than a
    /// majority of the configured authorities made a valid reveal.
    pub current: Option<SrvValue>,
    /// The value of the previous period (`shared-rand-previous`), as stated by a majority of
    /// voters; `None` when they did not agree or had none.
    pub previous: Option<SrvValue>,
}

/// What one vote says about shared randomness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VoteSrv {
    /// `shared-rand-commit`: this voter's commitment for this vote's period.
    pub commit: Option<[u8; 32]>,
    /// `shared-rand-reveal`: the value behind this voter's commitment of the previous period.
    pub reveal: Option<[u8; 32]>,
    /// `shared-rand-seen-commit`: the commitments (by voter) this voter held in the votes of
    /// the previous period, its own included.
    pub seen_commits: BTreeMap<RelayId, [u8; 32]>,
    /// `shared-rand-previous`: the current value of the consensus this voter holds for the
    /// previous period.
    pub previous: Option<SrvValue>,
    /// `hs-period-srv`: the onion-service ring values carried by the consensus this voter
    /// holds for the previous period (see [`crate::hs::period`]); at most two, ascending.
    pub period_srvs: Vec<PeriodSrv>,
}

/// The commitment to `reveal` by `authority` in its vote for `period` (a `valid-after` time).
pub fn srv_commit(period: u64, authority: &RelayId, reveal: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SRV_COMMIT_PREFIX);
    h.update(period.to_be_bytes());
    h.update(authority.0);
    h.update(reveal);
    h.finalize().into()
}

/// The shared random value of `period` from the previous value (or 32 zero bytes) and the
/// valid reveals, sorted by authority identity (the map's order).
pub fn srv_value(period: u64, previous: Option<&SrvValue>, reveals: &BTreeMap<RelayId, [u8; 32]>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SRV_VALUE_PREFIX);
    h.update(period.to_be_bytes());
    h.update(previous.map_or([0u8; 32], |p| p.value));
    for (id, r) in reveals {
        h.update(id.0);
        h.update(r);
    }
    h.finalize().into()
}

/// Computes the consensus's shared random values for `lifetime` from `votes` (only those whose
/// lifetime equals `lifetime`), in a network of `n_authorities` configured authorities.
/// "Majority" means more than `n_authorities / 2`. Deterministic and independent of the order
/// of `votes`; several votes by one voter count as one (the bytewise smallest value of each
/// field is used).
///
/// - `previous`: the `shared-rand-previous` value stated by a majority of voters, else none.
/// - A voter's reveal is *valid* when the commitment that a majority of voters list for it in
///   `shared-rand-seen-commit` equals `srv_commit(t − I, voter, reveal)`; other reveals are
///   ignored.
/// - `current`: with valid reveals from a majority, `srv_value(t, previous, valid reveals)` and
///   their count; otherwise none.
pub fn compute_shared_random(votes: &[&Vote], n_authorities: usize, lifetime: Lifetime) -> SharedRandom {
    let majority = |count: usize| count * 2 > n_authorities;
    let t = lifetime.valid_after;
    let prev_period = t.saturating_sub(lifetime.fresh_until - lifetime.valid_after);
    let mut reveal_by: BTreeMap<RelayId, [u8; 32]> = BTreeMap::new();
    let mut previous_by: BTreeMap<RelayId, SrvValue> = BTreeMap::new();
    // subject -> voter -> commitment it saw for subject
    let mut seen_by: BTreeMap<RelayId, BTreeMap<RelayId, [u8; 32]>> = BTreeMap::new();
    for v in votes.iter().filter(|v| v.lifetime == lifetime) {
        if let Some(r) = v.srv.reveal {
            keep_min(&mut reveal_by, v.voter, r);
        }
        if let Some(p) = v.srv.previous {
            keep_min(&mut previous_by, v.voter, p);
        }
        for (subject, c) in &v.srv.seen_commits {
            keep_min(seen_by.entry(*subject).or_default(), v.voter, *c);
        }
    }
    let previous = majority_value(previous_by.values(), &majority);
    let mut valid: BTreeMap<RelayId, [u8; 32]> = BTreeMap::new();
    for (voter, r) in reveal_by {
        let agreed = seen_by.get(&voter).and_then(|m| majority_value(m.values(), &majority));
        if agreed == Some(srv_commit(prev_period, &voter, &r)) {
            valid.insert(voter, r);
        }
    }
    let current = majority(valid.len())
        .then(|| SrvValue { reveals: valid.len() as u64, value: srv_value(t, previous.as_ref(), &valid) });
    SharedRandom { current, previous }
}

/// The value held by a majority (the smallest such, if the count allows several).
fn majority_value<'a, T: Ord + Copy + 'a>(vals: impl Iterator<Item = &'a T>, majority: &dyn Fn(usize) -> bool) -> Option<T> {
    let mut counts: BTreeMap<T, usize> = BTreeMap::new();
    for v in vals {
        *counts.entry(*v).or_default() += 1;
    }
    counts.into_iter().find(|(_, c)| majority(*c)).map(|(v, _)| v)
}

fn keep_min<K: Ord, V: Ord + Copy>(m: &mut BTreeMap<K, V>, k: K, v: V) {
    let e = m.entry(k).or_insert(v);
    if v < *e {
        *e = v;
    }
}

// ---- text ----

/// Keywords of a vote's shared-randomness lines, in order (header, after `required-protocols`).
pub(crate) const VOTE_KWS: [&str; 4] =
    ["shared-rand-commit", "shared-rand-reveal", "shared-rand-seen-commit", "shared-rand-previous"];
/// Keywords of a consensus's shared-randomness lines, in order (after `bandwidth-weights`).
pub(crate) const CONSENSUS_KWS: [&str; 2] = ["shared-rand-previous", "shared-rand-current"];

fn value_args(v: &SrvValue) -> String {
    format!("{} {}", v.reveals, enc64(&v.value))
}

fn read_value(l: &Line) -> Result<SrvValue, DocError> {
    let a = l.exactly(2)?;
    Ok(SrvValue { reveals: uint(l, a[0])?, value: b64(l, a[1])? })
}

/// The single line of an optional keyword (`Mult::Any` in the spec, at most one here).
fn at_most_one<'s, 'a>(s: &Section<'s, 'a>, kw: &str) -> Result<Option<&'s Line<'a>>, DocError> {
    match s.all(kw) {
        [] => Ok(None),
        [l] => Ok(Some(*l)),
        [_, l, ..] => Err(DocError::Duplicate { line: l.no, keyword: kw.to_string() }),
    }
}

pub(crate) fn write_vote_lines(out: &mut String, v: &VoteSrv) {
    if let Some(c) = &v.commit {
        line(out, VOTE_KWS[0], &enc64(c));
    }
    if let Some(r) = &v.reveal {
        line(out, VOTE_KWS[1], &enc64(r));
    }
    for (id, c) in v.seen_commits.iter().take(MAX_SEEN_COMMITS) {
        line(out, VOTE_KWS[2], &format!("{} {}", id.fingerprint(), enc64(c)));
    }
    if let Some(p) = &v.previous {
        line(out, VOTE_KWS[3], &value_args(p));
    }
    period::write_lines(out, &v.period_srvs);
}

pub(crate) fn read_vote_lines(s: &Section) -> Result<VoteSrv, DocError> {
    let one32 = |kw: &str| -> Result<Option<[u8; 32]>, DocError> {
        at_most_one(s, kw)?.map(|l| b64(l, l.one()?)).transpose()
    };
    let commit = one32(VOTE_KWS[0])?;
    let reveal = one32(VOTE_KWS[1])?;
    let seen_lines = s.all(VOTE_KWS[2]);
    if seen_lines.len() > MAX_SEEN_COMMITS {
        return Err(DocError::TooMany { what: "shared-rand-seen-commit lines", limit: MAX_SEEN_COMMITS });
    }
    let mut seen_commits = BTreeMap::new();
    let mut last: Option<RelayId> = None;
    for l in seen_lines {
        let a = l.exactly(2)?;
        let id = fingerprint(l, a[0])?;
        if last.is_some_and(|p| p >= id) {
            return Err(DocError::Unsorted { line: l.no });
        }
        last = Some(id);
        seen_commits.insert(id, b64(l, a[1])?);
    }
    let previous = at_most_one(s, VOTE_KWS[3])?.map(read_value).transpose()?;
    let period_srvs = period::read_lines(s.all(period::KEYWORD).iter().copied())?;
    Ok(VoteSrv { commit, reveal, seen_commits, previous, period_srvs })
}

pub(crate) fn write_consensus_lines(out: &mut String, sr: &SharedRandom) {
    if let Some(p) = &sr.previous {
        line(out, CONSENSUS_KWS[0], &value_args(p));
    }
    if let Some(c) = &sr.current {
        line(out, CONSENSUS_KWS[1], &value_args(c));
    }
}

pub(crate) fn read_consensus_lines(s: &Section) -> Result<SharedRandom, DocError> {
    Ok(SharedRandom {
        previous: at_most_one(s, CONSENSUS_KWS[0])?.map(read_value).transpose()?,
        current: at_most_one(s, CONSENSUS_KWS[1])?.map(read_value).transpose()?,
    })
}
