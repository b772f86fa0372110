//! Which shared random value places descriptors on the HSDir ring for a time period.
//!
//! The consensus's `shared-rand-current` changes with every voting interval `I`, but the ring
//! must stay put for a whole time period (length `L`, a multiple of `I`) and must be known
//! before the period starts, since services publish for the next period ahead of time. Rule:
//!
//! - The *ring value* of period `n` is the `shared-rand-current` of the consensus whose
//!   `valid-after` is `(n − 1)·L` (the start of the period before); when that consensus had
//!   none, a value derived from the previous agreed ones ([`chained_srv`]); when no consensus
//!   carries one (`n = 0`, a network started late), the fallback
//!   `SHA-256("allium-hs-srv-fallback-v1" | BE64(n) | BE64(L))`.
//! - Every consensus carries the ring values of its own period `p = ⌊valid-after / L⌋` and of
//!   `p + 1` as header lines `hs-period-srv <n> <L> <b64>`, so a node needs only the consensus it
//!   holds. A node that finds no line for the period it wants uses the fallback.
//! - A node's *current period* is the one holding the `valid-after` of the consensus it uses (not
//!   its clock), so nodes with the same consensus agree.
//!
//! The authority side (voting and carrying the lines) is specified in `docs/PROTOCOL.md` and
//! computed by [`consensus_ring_values`]: votes carry the lines of the consensus their voter
//! holds for the previous interval (`VoteSrv::period_srvs`), and
//! [`crate::doc::compute_consensus`] writes the two lines of every consensus
//! (`ConsensusMeta::period_srvs`).

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::blind::TimePeriod;
use crate::doc::lines::{self, b64, enc64, uint, Line};
use crate::doc::{DocError, MAX_VOTE_LEN, MAX_VOTE_LINES};

/// Keyword of a carried ring value in a consensus (and vote) header.
pub const KEYWORD: &str = "hs-period-srv";
/// Domain-separation prefix of the fallback ring value.
pub const FALLBACK_PREFIX: &[u8] = b"allium-hs-srv-fallback-v1";
/// Domain-separation prefix of the ring value an anchor without a shared random value derives
/// from the previous agreed values.
pub const CHAINED_PREFIX: &[u8] = b"allium-hs-srv-chained-v1";
/// Default time-period length (seconds).
pub const DEFAULT_PERIOD_SECS: u64 = 86_400;
/// Most `hs-period-srv` lines in one header.
pub const MAX_LINES: usize = 2;
/// The consensus parameter that sets the period length.
pub const PERIOD_PARAM: &str = "hs-period-secs";

/// The period length of a consensus with these parameters and this voting interval: the
/// `hs-period-secs` parameter when it is usable with the interval ([`period_length_ok`]), else
/// [`DEFAULT_PERIOD_SECS`].
pub fn length_from_params(params: &BTreeMap<String, i64>, interval_secs: u64) -> u64 {
    match params.get(PERIOD_PARAM) {
        Some(&v) if v > 0 && period_length_ok(v as u64, interval_secs) => v as u64,
        _ => DEFAULT_PERIOD_SECS,
    }
}

/// A period's ring value, as carried by a consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeriodSrv {
    pub number: u64,
    pub length_secs: u64,
    pub value: [u8; 32],
}

impl PeriodSrv {
    pub fn period(&self) -> TimePeriod {
        TimePeriod { number: self.number, length_secs: self.length_secs }
    }

    /// The header line, without its LF.
    pub fn to_line(&self) -> String {
        format!("{KEYWORD} {} {} {}", self.number, self.length_secs, enc64(&self.value))
    }
}

/// True if periods of `period_secs` can be used with voting interval `interval_secs`: both
/// positive and `period_secs` a multiple of `interval_secs` (so every period starts with a
/// consensus).
pub fn period_length_ok(period_secs: u64, interval_secs: u64) -> bool {
    interval_secs > 0 && period_secs >= interval_secs && period_secs.is_multiple_of(interval_secs)
}

/// The current period of a node using the consensus with this `valid-after`.
pub fn current_period(valid_after: u64, period_secs: u64) -> TimePeriod {
    TimePeriod::at(valid_after, period_secs)
}

/// The periods a service publishes descriptors for while it uses the consensus with this
/// `valid-after`: the current one and the next.
pub fn publish_periods(valid_after: u64, period_secs: u64) -> [TimePeriod; 2] {
    let p = current_period(valid_after, period_secs);
    [p, p.next()]
}

/// The `valid-after` of the consensus whose `shared-rand-current` is period `p`'s ring value
/// (`None` for period 0).
pub fn anchor_time(p: TimePeriod) -> Option<u64> {
    p.number.checked_sub(1)?.checked_mul(p.length_secs)
}

/// The ring value of `p` when its anchor consensus had no shared random value.
pub fn fallback_srv(p: TimePeriod) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(FALLBACK_PREFIX);
    h.update(p.number.to_be_bytes());
    h.update(p.length_secs.to_be_bytes());
    h.finalize().into()
}

/// The ring value of `q` when its anchor consensus has no `shared-rand-current` (e.g. every
/// authority withheld its reveal): derived from the previous agreed values, so it cannot be
/// computed before the anchor: the anchor's `shared-rand-previous` (32 zero bytes if none) and
/// the ring value of the period before `q`.
pub fn chained_srv(q: TimePeriod, shared_rand_previous: Option<&[u8; 32]>, ring_before: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHAINED_PREFIX);
    h.update(shared_rand_previous.copied().unwrap_or([0; 32]));
    h.update(ring_before);
    h.update(q.number.to_be_bytes());
    h.update(q.length_secs.to_be_bytes());
    h.finalize().into()
}

/// The ring value a node uses for `p`, from the lines its consensus carries.
pub fn ring_srv(p: TimePeriod, carried: &[PeriodSrv]) -> [u8; 32] {
    carried.iter().find(|c| c.period() == p).map_or_else(|| fallback_srv(p), |c| c.value)
}

/// Reads the `hs-period-srv` lines from the header of a consensus (or vote) text, which the
/// caller has verified: the lines before the first `relay` or `directory-signature` line. At most
/// [`MAX_LINES`], strictly ascending by (number, length).
pub fn read_carried(text: &str) -> Result<Vec<PeriodSrv>, DocError> {
    if text.len() > MAX_VOTE_LEN {
        return Err(DocError::TooLarge { len: text.len(), limit: MAX_VOTE_LEN });
    }
    // Only the header is read: cut before the first entry or signature line (on a line start).
    let end = ["\nrelay ", "\ndirectory-signature ", "\nvote-signature "]
        .iter()
        .filter_map(|m| text.find(m))
        .min()
        .map_or(text.len(), |i| i + 1);
    let ls = lines::split(&text[..end], MAX_VOTE_LEN, MAX_VOTE_LINES)?;
    let header = ls.iter().take_while(|l| l.kw != "relay" && l.kw != "directory-signature" && l.kw != "vote-signature");
    read_lines(header.filter(|l| l.kw == KEYWORD))
}

/// Parses `hs-period-srv` lines (already known to have that keyword): at most [`MAX_LINES`],
/// strictly ascending by (number, length), length not 0. Used by [`read_carried`] and by the
/// vote and consensus parsers.
pub(crate) fn read_lines<'s, 'a: 's>(ls: impl IntoIterator<Item = &'s Line<'a>>) -> Result<Vec<PeriodSrv>, DocError> {
    let mut out: Vec<PeriodSrv> = Vec::new();
    for l in ls {
        if out.len() == MAX_LINES {
            return Err(DocError::TooMany { what: "hs-period-srv lines", limit: MAX_LINES });
        }
        let a = l.exactly(3)?;
        let v = PeriodSrv { number: uint(l, a[0])?, length_secs: uint(l, a[1])?, value: b64(l, a[2])? };
        if v.length_secs == 0 {
            return Err(l.bad("period length 0"));
        }
        if out.last().is_some_and(|p| (p.number, p.length_secs) >= (v.number, v.length_secs)) {
            return Err(DocError::Unsorted { line: l.no });
        }
        out.push(v);
    }
    Ok(out)
}

/// Writes `hs-period-srv` lines, in the order given.
pub(crate) fn write_lines(out: &mut String, carried: &[PeriodSrv]) {
    for c in carried.iter().take(MAX_LINES) {
        out.push_str(&c.to_line());
        out.push('\n');
    }
}

/// The `hs-period-srv` lines of the consensus with `valid_after`, computed by the authorities
/// (periods of `period_secs`, `n_authorities` configured):
///
/// - for `p + 1` when this consensus is its anchor (`valid_after = p·L`): this consensus's own
///   `shared-rand-current` (`current`), or without one [`chained_srv`] of its
///   `shared-rand-previous` (`previous`) and the value computed here for `p`;
/// - otherwise, for `p` and `p + 1`: the value that a majority (more than half of the
///   configured authorities) of voters state for that period in their votes (each voter states
///   the lines of the consensus it holds for the previous interval; `voted` holds one list per
///   distinct voter), or the fallback.
///
/// Always two lines, ascending.
pub fn consensus_ring_values(
    valid_after: u64,
    period_secs: u64,
    current: Option<&[u8; 32]>,
    previous: Option<&[u8; 32]>,
    voted: &[Vec<PeriodSrv>],
    n_authorities: usize,
) -> [PeriodSrv; 2] {
    let p = current_period(valid_after, period_secs);
    // The period holding this consensus is never anchored by it (its anchor is a period earlier).
    let voted_or_fallback = |q: TimePeriod| -> [u8; 32] {
        let mut counts: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for v in voted {
            // One value per voter and period: the smallest if a vote states several.
            if let Some(x) = v.iter().filter(|c| c.period() == q).map(|c| c.value).min() {
                *counts.entry(x).or_default() += 1;
            }
        }
        counts.into_iter().find(|(_, c)| c * 2 > n_authorities).map_or_else(|| fallback_srv(q), |(x, _)| x)
    };
    let this = voted_or_fallback(p);
    let q = p.next();
    let next = if anchor_time(q) == Some(valid_after) {
        current.copied().unwrap_or_else(|| chained_srv(q, previous, &this))
    } else {
        voted_or_fallback(q)
    };
    let line = |q: TimePeriod, value| PeriodSrv { number: q.number, length_secs: q.length_secs, value };
    [line(p, this), line(q, next)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: u64 = 86_400;
    const I: u64 = 3600;

    #[test]
    fn period_length_parameter() {
        let with = |v: i64| BTreeMap::from([(PERIOD_PARAM.to_string(), v)]);
        assert_eq!(length_from_params(&BTreeMap::new(), 10), DEFAULT_PERIOD_SECS);
        assert_eq!(length_from_params(&with(60), 10), 60);
        assert_eq!(length_from_params(&with(65), 10), DEFAULT_PERIOD_SECS, "not a multiple of the interval");
        assert_eq!(length_from_params(&with(5), 10), DEFAULT_PERIOD_SECS, "shorter than the interval");
        assert_eq!(length_from_params(&with(0), 10), DEFAULT_PERIOD_SECS);
        assert_eq!(length_from_params(&with(-60), 10), DEFAULT_PERIOD_SECS);
    }

    #[test]
    fn periods_and_lengths() {
        assert!(period_length_ok(86_400, 3600));
        assert!(period_length_ok(3600, 3600));
        assert!(!period_length_ok(5000, 3600));
        assert!(!period_length_ok(1800, 3600));
        assert!(!period_length_ok(10, 0));
        let [a, b] = publish_periods(20_000 * L + 5 * I, L);
        assert_eq!((a.number, b.number), (20_000, 20_001));
        assert_eq!(anchor_time(a), Some(19_999 * L));
        assert_eq!(anchor_time(TimePeriod { number: 0, length_secs: L }), None);
        assert_eq!(anchor_time(TimePeriod { number: u64::MAX, length_secs: L }), None);
        assert_ne!(fallback_srv(a), fallback_srv(b));
    }

    /// Simulates the authorities over two periods: every consensus of a period gives the same
    /// ring value for it, the value for the next period is there from the start of the one
    /// before, and it is the anchor consensus's shared random value.
    #[test]
    fn carried_forward_through_a_period() {
        let srv_of = |t: u64| -> Option<[u8; 32]> { (!t.is_multiple_of(7 * I)).then(|| Sha256::digest(t.to_be_bytes()).into()) };
        let start = 20_000 * L;
        let mut prev: Vec<PeriodSrv> = Vec::new();
        let mut seen: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
        for k in 0..(2 * L / I) {
            let t = start + k * I;
            // Three authorities, all holding the previous consensus.
            let lines = consensus_ring_values(t, L, srv_of(t).as_ref(), None, &[prev.clone(), prev.clone(), prev.clone()], 3);
            for l in &lines {
                if let Some(v) = seen.get(&l.number) {
                    assert_eq!(*v, l.value, "period {} changed at t={t}", l.number);
                }
                seen.insert(l.number, l.value);
            }
            let p = current_period(t, L);
            assert_eq!(ring_srv(p, &lines), lines[0].value);
            prev = lines.to_vec();
        }
        // Period 20_001's value is the SRV of the consensus at 20_000·L (it had one).
        assert_eq!(seen[&20_001], srv_of(start).unwrap());
        // Period 20_000 had no history at the start of the simulation: fallback.
        assert_eq!(seen[&20_000], fallback_srv(TimePeriod { number: 20_000, length_secs: L }));
        // An anchor without SRV derives the next period's value from the previous ones.
        let anchor = 7 * I * L; // a multiple of both 7·I and L
        let q = TimePeriod { number: anchor / L + 1, length_secs: L };
        let lines = consensus_ring_values(anchor, L, None, None, &[], 3);
        assert_eq!(lines[1].value, chained_srv(q, None, &lines[0].value));
    }

    /// THREATS A20: with every authority withholding its reveal (no `shared-rand-current` at
    /// the anchor), the next period's ring value is not the fallback anyone computes in advance:
    /// it depends on the previous agreed values, and changes with either of them.
    #[test]
    fn a20_ring_value_without_reveals_derives_from_previous_agreed_values() {
        let anchor = 20_000 * L;
        let q = TimePeriod { number: 20_001, length_secs: L };
        let this = |v: u8| vec![PeriodSrv { number: 20_000, length_secs: L, value: [v; 32] }];
        let agreed = [this(5), this(5), this(5)];
        let lines = consensus_ring_values(anchor, L, None, Some(&[9; 32]), &agreed, 3);
        assert_eq!(lines[0].value, [5; 32], "the current period's value is the agreed one");
        assert_ne!(lines[1].value, fallback_srv(q), "not computable in advance");
        assert_eq!(lines[1].value, chained_srv(q, Some(&[9; 32]), &[5; 32]));
        let other_ring = consensus_ring_values(anchor, L, None, Some(&[9; 32]), &[this(6), this(6), this(6)], 3);
        let other_previous = consensus_ring_values(anchor, L, None, Some(&[8; 32]), &agreed, 3);
        assert_ne!(lines[1].value, other_ring[1].value, "depends on the previous ring value");
        assert_ne!(lines[1].value, other_previous[1].value, "depends on shared-rand-previous");
        // With a shared random value the anchor uses it, as before.
        assert_eq!(consensus_ring_values(anchor, L, Some(&[1; 32]), Some(&[9; 32]), &agreed, 3)[1].value, [1; 32]);
    }

    #[test]
    fn majority_needed_to_carry() {
        let t = 20_000 * L + I;
        let p = current_period(t, L);
        let v = |x: u8| vec![PeriodSrv { number: p.number, length_secs: L, value: [x; 32] }];
        assert_eq!(consensus_ring_values(t, L, None, None, &[v(1), v(1), v(2)], 3)[0].value, [1; 32]);
        assert_eq!(consensus_ring_values(t, L, None, None, &[v(1), v(2), v(3)], 3)[0].value, fallback_srv(p));
        assert_eq!(consensus_ring_values(t, L, None, None, &[v(1), v(1)], 4)[0].value, fallback_srv(p), "2 of 4 is no majority");
    }

    #[test]
    fn reading_lines() {
        let a = PeriodSrv { number: 5, length_secs: L, value: [1; 32] };
        let b = PeriodSrv { number: 6, length_secs: L, value: [2; 32] };
        let doc = |body: &str| format!("allium-consensus 1\nvalid-after 1\n{body}relay x y\n{}\n", a.to_line().replace("5", "9"));
        let good = doc(&format!("{}\n{}\n", a.to_line(), b.to_line()));
        assert_eq!(read_carried(&good).unwrap(), vec![a, b], "lines after the header are not read");
        assert_eq!(ring_srv(b.period(), &[a, b]), [2; 32]);
        assert_eq!(ring_srv(TimePeriod { number: 6, length_secs: 3600 }, &[a, b]), fallback_srv(TimePeriod { number: 6, length_secs: 3600 }));
        assert!(read_carried(&doc(&format!("{}\n{}\n", b.to_line(), a.to_line()))).is_err(), "unsorted");
        assert!(read_carried(&doc(&format!("{}\n{}\n", a.to_line(), a.to_line()))).is_err(), "duplicate");
        let c = PeriodSrv { number: 7, ..a };
        assert!(read_carried(&doc(&format!("{}\n{}\n{}\n", a.to_line(), b.to_line(), c.to_line()))).is_err(), "three");
        assert!(read_carried(&doc("hs-period-srv 1 0 AAAA\n")).is_err());
        assert!(read_carried(&doc("hs-period-srv 1 2\n")).is_err());
        assert_eq!(read_carried(&doc("")).unwrap(), vec![]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn reader_never_panics(s in "[ -~\n]{0,300}", n in any::<u64>(), l in any::<u64>()) {
            let _ = read_carried(&s);
            let _ = read_carried(&format!("hs-period-srv {n} {l} {s}\n"));
            let _ = consensus_ring_values(n, l.max(1), None, None, &[], 0);
            let _ = consensus_ring_values(u64::MAX, 1, None, None, &[], 0);
            let _ = publish_periods(u64::MAX, 1);
            let _ = anchor_time(TimePeriod { number: n, length_secs: l });
        }
    }
}
