//! HSDir placement: which relays store a descriptor, for one time period.
//!
//! The HSDir-flagged relays of the consensus sit on a ring of 256-bit positions:
//! `SHA-256("allium-hsdir-index-v1" | identity | srv | BE64(n) | BE64(L))`, where `srv` is the
//! period's ring value ([`super::period`]). A descriptor has one position per replica
//! `r = 1..=R`: `SHA-256("allium-hs-index-v1" | blinded key | BE64(r) | BE64(n) | BE64(L))`.
//! For each replica in order, the next `S` relays clockwise from its position (the first with a
//! position ≥ it, wrapping around) that were not chosen for an earlier replica are chosen. The
//! service uploads to every chosen relay and a client fetches from them, so both compute the
//! same set from the same consensus.

use sha2::{Digest as _, Sha256};

use super::blind::TimePeriod;
use crate::ids::RelayId;

/// Domain-separation prefix of a relay's ring position.
pub const HSDIR_INDEX_PREFIX: &[u8] = b"allium-hsdir-index-v1";
/// Domain-separation prefix of a descriptor's ring position.
pub const HS_INDEX_PREFIX: &[u8] = b"allium-hs-index-v1";
/// Replicas per descriptor (`R`).
pub const DEFAULT_REPLICAS: u64 = 2;
/// Relays per replica (`S`).
pub const DEFAULT_SPREAD: usize = 3;

/// A relay's ring position for a period.
pub fn hsdir_index(identity: &RelayId, srv: &[u8; 32], period: TimePeriod) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HSDIR_INDEX_PREFIX);
    h.update(identity.0);
    h.update(srv);
    h.update(period.number.to_be_bytes());
    h.update(period.length_secs.to_be_bytes());
    h.finalize().into()
}

/// A descriptor's ring position for replica `replica` (from 1).
pub fn hs_index(blinded_key: &[u8; 32], replica: u64, period: TimePeriod) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HS_INDEX_PREFIX);
    h.update(blinded_key);
    h.update(replica.to_be_bytes());
    h.update(period.number.to_be_bytes());
    h.update(period.length_secs.to_be_bytes());
    h.finalize().into()
}

/// The ring of one period: the HSDir relays sorted by position.
#[derive(Debug, Clone)]
pub struct HsDirRing {
    period: TimePeriod,
    /// (position, relay), ascending; no relay twice.
    nodes: Vec<([u8; 32], RelayId)>,
}

impl HsDirRing {
    /// The ring of `period` over `hsdirs` (the consensus's relays with the HSDir flag; duplicates
    /// are ignored) with the period's ring value `srv`.
    pub fn new(hsdirs: impl IntoIterator<Item = RelayId>, srv: &[u8; 32], period: TimePeriod) -> Self {
        let mut ids: Vec<RelayId> = hsdirs.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut nodes: Vec<([u8; 32], RelayId)> = ids.into_iter().map(|id| (hsdir_index(&id, srv, period), id)).collect();
        nodes.sort_unstable();
        HsDirRing { period, nodes }
    }

    pub fn period(&self) -> TimePeriod {
        self.period
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The relays responsible for `blinded_key`: for each replica `1..=replicas`, `spread` relays
    /// not chosen before, clockwise from the replica's position; in the order chosen. With fewer
    /// than `replicas × spread` relays, every relay.
    pub fn responsible(&self, blinded_key: &[u8; 32], replicas: u64, spread: usize) -> Vec<RelayId> {
        let n = self.nodes.len();
        let mut out: Vec<RelayId> = Vec::new();
        if spread == 0 {
            return out;
        }
        // Each replica adds at least one relay until all are taken, so this ends after at most
        // `n` replicas whatever `replicas` is.
        for r in 1..=replicas {
            if out.len() == n {
                break;
            }
            let pos = hs_index(blinded_key, r, self.period);
            let start = self.nodes.partition_point(|(p, _)| *p < pos);
            let mut taken = 0;
            for k in 0..n {
                if taken == spread {
                    break;
                }
                let id = self.nodes[(start + k) % n].1;
                if !out.contains(&id) {
                    out.push(id);
                    taken += 1;
                }
            }
        }
        out
    }

    /// [`Self::responsible`] with the default replicas and spread.
    pub fn responsible_default(&self, blinded_key: &[u8; 32]) -> Vec<RelayId> {
        self.responsible(blinded_key, DEFAULT_REPLICAS, DEFAULT_SPREAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn relays(n: u8) -> Vec<RelayId> {
        (0..n).map(|i| RelayId(Sha256::digest([i]).into())).collect()
    }

    const P: TimePeriod = TimePeriod { number: 20_000, length_secs: 86_400 };

    #[test]
    fn deterministic_and_order_independent() {
        let rs = relays(20);
        let a = HsDirRing::new(rs.clone(), &[1; 32], P).responsible_default(&[7; 32]);
        let mut rev = rs.clone();
        rev.reverse();
        rev.extend_from_slice(&rs[..5]); // duplicates are ignored
        let b = HsDirRing::new(rev, &[1; 32], P).responsible_default(&[7; 32]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 6);
    }

    #[test]
    fn srv_period_and_key_move_the_set() {
        let rs = relays(40);
        let set = |srv: [u8; 32], p: TimePeriod, key: [u8; 32]| {
            let mut v = HsDirRing::new(rs.clone(), &srv, p).responsible_default(&key);
            v.sort();
            v
        };
        let base = set([1; 32], P, [7; 32]);
        assert_ne!(base, set([2; 32], P, [7; 32]), "another SRV");
        assert_ne!(base, set([1; 32], P.next(), [7; 32]), "another period");
        assert_ne!(base, set([1; 32], TimePeriod { number: 20_000, length_secs: 3600 }, [7; 32]), "another length");
        assert_ne!(base, set([1; 32], P, [8; 32]), "another blinded key");
    }

    #[test]
    fn follows_the_ring_clockwise() {
        let rs = relays(10);
        let ring = HsDirRing::new(rs, &[3; 32], P);
        let key = [9u8; 32];
        let got = ring.responsible(&key, 1, 3);
        let pos = hs_index(&key, 1, P);
        let mut sorted = ring.nodes.clone();
        sorted.sort();
        let start = sorted.iter().position(|(p, _)| *p >= pos).unwrap_or(0);
        let want: Vec<RelayId> = (0..3).map(|k| sorted[(start + k) % 10].1).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn few_relays_gives_all_and_none_gives_none() {
        for n in 0..=6u8 {
            let rs = relays(n);
            let mut got = HsDirRing::new(rs.clone(), &[1; 32], P).responsible_default(&[5; 32]);
            got.sort();
            let mut want = rs;
            want.sort();
            assert_eq!(got, want, "{n} relays");
        }
    }

    #[test]
    fn replicas_take_distinct_relays() {
        // With only 4 relays and 2 × 3 wanted, the second replica takes what is left.
        let ring = HsDirRing::new(relays(4), &[1; 32], P);
        let got = ring.responsible(&[5; 32], 2, 3);
        assert_eq!(got.len(), 4);
        assert_eq!(ring.responsible(&[5; 32], 0, 3), vec![]);
        assert_eq!(ring.responsible(&[5; 32], 2, 0), vec![]);
        assert_eq!(ring.responsible(&[5; 32], u64::MAX, 0), vec![]);
        assert_eq!(ring.responsible(&[5; 32], u64::MAX, 1).len(), 4);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn no_duplicates_and_right_size(n in 0u8..60, replicas in 0u64..5, spread in 0usize..6, key in any::<[u8; 32]>(), srv in any::<[u8; 32]>()) {
            let ring = HsDirRing::new(relays(n), &srv, P);
            let got = ring.responsible(&key, replicas, spread);
            let mut dedup = got.clone();
            dedup.sort();
            dedup.dedup();
            prop_assert_eq!(dedup.len(), got.len());
            prop_assert_eq!(got.len(), (replicas as usize * spread).min(n as usize));
        }
    }
}
