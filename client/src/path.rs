//! Path choice: guard, middle and exit, each chosen by its weight for the position, with the
//! rules that keep one operator from holding two hops of a path:
//!
//! - never the same relay twice;
//! - never two relays in one IPv4 /16 or one IPv6 /32 (always on: the test network gives every
//!   node its own /16 so these rules need no exception);
//! - never two relays of one *mutually* declared family (A lists B and B lists A; a one-sided
//!   claim is ignored, or any relay could push others out of paths by naming them);
//! - the exit allows the requested destination.
//!
//! Exit circuits are guard → middle → exit ([`choose_path`]). Circuits to a chosen relay (onion
//! services: HSDirs, introduction and rendezvous points) are guard → L2 vanguard → middle →
//! that relay ([`choose_path_to`], vanguards in [`crate::vanguards`]).
//!
//! Selection works over a small view of the consensus, [`Candidate`], built in one place:
//! [`candidates`]. Today the consensus carries neither flags nor per-position weights, so every
//! relay is guard-capable and its advertised bandwidth is its weight for every position; when
//! the directory adds flags and weights, only [`candidates_from_relays`] changes.

use std::net::IpAddr;

use allium_directory::netdir::NetDir;
use allium_proto::doc::ConsensusRelay;
use allium_proto::ids::RelayId;
use rand::seq::SliceRandom;
use rand::Rng;

/// Why no path could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("no exit in the consensus allows this destination")]
    NoExit,
    #[error("the consensus lists too few compatible relays for a 3-hop path: the relays of a path must be distinct, in distinct /16 subnets (IPv6: /32) and not of one family, and the consensus has {relays} usable relays in {subnets} /16 subnets")]
    TooFewRelays { relays: usize, subnets: usize },
    #[error("none of the client's usable guards is listed in the consensus")]
    NoGuard,
    #[error("the consensus lists too few compatible relays for a 4-hop path to the chosen relay (guard, vanguard, middle, that relay: four relays in distinct /16 subnets, not of one family); it has {relays} usable relays in {subnets} /16 subnets")]
    TooFewForVanguardPath { relays: usize, subnets: usize },
}

/// What the stream wants from the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitNeed {
    /// An IP literal: the exit's policy must allow exactly this.
    Addr(IpAddr, u16),
    /// A host name: the exit must allow the port for some address.
    Port(u16),
}

impl ExitNeed {
    /// Does this relay's policy allow the destination?
    pub fn allowed_by(&self, r: &ConsensusRelay) -> bool {
        match *self {
            ExitNeed::Addr(ip, port) => r.policy.allows(ip, port),
            ExitNeed::Port(port) => r.policy.allows_port_somewhere(port),
        }
    }
}

/// A position in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    Guard = 0,
    Middle = 1,
    Exit = 2,
}

/// One relay as path selection sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub relay: &'a ConsensusRelay,
    /// May be a guard (sampled into the guard set).
    pub is_guard: bool,
    /// Weight for each [`Position`] (index `Position as usize`); 0 = never in that position.
    pub weights: [u64; 3],
}

impl Candidate<'_> {
    pub fn weight(&self, p: Position) -> u64 {
        self.weights[p as usize]
    }
    pub fn id(&self) -> &RelayId {
        &self.relay.identity
    }
}

/// Keeps sums of weights far from overflow (2^40 bytes/s is far above any real relay).
const MAX_WEIGHT: u64 = 1 << 40;

/// The candidate view of a verified consensus: the one place that decides who may be a guard
/// and what each relay weighs in each position.
pub fn candidates(dir: &NetDir) -> Vec<Candidate<'_>> {
    use allium_proto::doc::{Position as P, RelayFlags};
    dir.usable_relays()
        .map(|r| {
            let w = |p| dir.position_weight(r, p).min(MAX_WEIGHT);
            Candidate { relay: r, is_guard: r.flags.contains(RelayFlags::GUARD), weights: [w(P::Guard), w(P::Middle), w(P::Exit)] }
        })
        .collect()
}

/// Candidates from bare relay entries (no consensus flags or position weights): every relay is
/// guard-capable and weighs its advertised bandwidth (at least 1) in every position. For tests
/// and synthetic consensuses.
pub fn candidates_from_relays(relays: &[ConsensusRelay]) -> Vec<Candidate<'_>> {
    relays
        .iter()
        .map(|r| {
            let bw = r.bandwidth.clamp(1, MAX_WEIGHT);
            Candidate { relay: r, is_guard: true, weights: [bw; 3] }
        })
        .collect()
}

/// True if the two addresses are in one IPv4 /16 or one IPv6 /32 (IPv4-mapped IPv6 addresses
/// count as IPv4).
pub fn same_subnet(a: IpAddr, b: IpAddr) -> bool {
    match (a.to_canonical(), b.to_canonical()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..2] == b.octets()[..2],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..2] == b.segments()[..2],
        _ => false,
    }
}

/// True if each relay lists the other in its family.
pub fn mutual_family(a: &ConsensusRelay, b: &ConsensusRelay) -> bool {
    a.family.contains(&b.identity) && b.family.contains(&a.identity)
}

/// May `a` and `b` be in one path?
pub fn compatible(a: &ConsensusRelay, b: &ConsensusRelay) -> bool {
    a.identity != b.identity && !same_subnet(a.address.ip(), b.address.ip()) && !mutual_family(a, b)
}

/// One weighted choice for position `pos` among the candidates that pass `ok` (and weigh more
/// than 0 there).
pub fn pick<'c, 'a, R: Rng + ?Sized>(cands: &'c [Candidate<'a>], pos: Position, rng: &mut R, ok: impl Fn(&Candidate<'a>) -> bool) -> Option<&'c Candidate<'a>> {
    let eligible: Vec<&Candidate<'a>> = cands.iter().filter(|c| c.weight(pos) > 0 && ok(c)).collect();
    eligible.choose_weighted(rng, |c| c.weight(pos)).ok().copied()
}

/// Random exits tried before giving up when the client has no guard list (a random exit may
/// leave no compatible guard and middle in a tiny network).
const FREE_EXIT_TRIES: usize = 8;

/// Chooses guard, middle and exit.
///
/// `guards`: the client's usable guards in order of preference. Empty: the guard is chosen by
/// weight among guard-capable relays (used by tests and by nothing that carries user traffic).
///
/// `avoid_exits`: relays not to use as exit (an exit already failed this stream).
///
/// Order, as in Tor: the exit first (by exit weight, among relays that allow `need`), then the
/// first guard compatible with it (so a guard that is also an exit still carries this client's
/// exit traffic, through another guard), then the middle (by middle weight, compatible with
/// both). An exit compatible with no guard is drawn again a few times; then each guard in turn
/// gets any exit compatible with it (a guard may share a /16 with every exit).
pub fn choose_path<'a, R: Rng + ?Sized>(
    cands: &[Candidate<'a>],
    guards: &[RelayId],
    need: ExitNeed,
    avoid_exits: &[RelayId],
    rng: &mut R,
) -> Result<[&'a ConsensusRelay; 3], PathError> {
    let exit_ok = |c: &Candidate<'_>| need.allowed_by(c.relay) && !avoid_exits.contains(c.id());
    if !cands.iter().any(|c| c.weight(Position::Exit) > 0 && exit_ok(c)) {
        return Err(PathError::NoExit);
    }
    let rest = |g: &'a ConsensusRelay, rng: &mut R| -> Option<[&'a ConsensusRelay; 3]> {
        let exit = pick(cands, Position::Exit, rng, |c| exit_ok(c) && compatible(c.relay, g))?.relay;
        let middle = pick(cands, Position::Middle, rng, |c| compatible(c.relay, g) && compatible(c.relay, exit))?.relay;
        Some([g, middle, exit])
    };
    if !guards.is_empty() {
        let listed: Vec<&Candidate<'a>> = guards.iter().filter_map(|id| cands.iter().find(|c| c.id() == id)).collect();
        for _ in 0..FREE_EXIT_TRIES {
            let exit = pick(cands, Position::Exit, rng, exit_ok).expect("an exit exists").relay;
            let Some(g) = listed.iter().find(|g| compatible(g.relay, exit)) else { continue };
            let Some(middle) = pick(cands, Position::Middle, rng, |c| compatible(c.relay, g.relay) && compatible(c.relay, exit)) else { continue };
            return Ok([g.relay, middle.relay, exit]);
        }
        let mut listed = false;
        for id in guards {
            let Some(g) = cands.iter().find(|c| c.id() == id) else { continue };
            listed = true;
            if let Some(p) = rest(g.relay, rng) {
                return Ok(p);
            }
        }
        return Err(if listed { too_few(cands) } else { PathError::NoGuard });
    }
    for _ in 0..FREE_EXIT_TRIES {
        let exit = pick(cands, Position::Exit, rng, exit_ok).expect("an exit exists").relay;
        let Some(guard) = pick(cands, Position::Guard, rng, |c| c.is_guard && compatible(c.relay, exit)) else { continue };
        let Some(middle) = pick(cands, Position::Middle, rng, |c| compatible(c.relay, guard.relay) && compatible(c.relay, exit)) else { continue };
        return Ok([guard.relay, middle.relay, exit]);
    }
    Err(too_few(cands))
}

/// Usable relays and the distinct /16 subnets (IPv6: /32) they are in.
fn relays_and_subnets(cands: &[Candidate<'_>]) -> (usize, usize) {
    let mut nets: Vec<IpAddr> = Vec::new();
    for c in cands {
        let ip = c.relay.address.ip();
        if !nets.iter().any(|n| same_subnet(*n, ip)) {
            nets.push(ip);
        }
    }
    (cands.len(), nets.len())
}

/// [`PathError::TooFewRelays`] with the counts that explain it.
fn too_few(cands: &[Candidate<'_>]) -> PathError {
    let (relays, subnets) = relays_and_subnets(cands);
    PathError::TooFewRelays { relays, subnets }
}

/// Chooses the path of a circuit whose last hop is `last` (an HSDir, an introduction or
/// rendezvous point), in the vanguards-lite shape: guard → L2 vanguard → middle → `last`.
///
/// - `guards`: the client's usable guards, in order; the first for which the rest of a path
///   exists is used (one that is `last`, or incompatible with it, is skipped).
/// - `vanguards`: the L2 set ([`crate::vanguards`]); the second hop is one of them (uniformly,
///   the set was drawn by weight), compatible with the guard and `last`; when a member leaves
///   no middle, another is tried.
/// - The middle is chosen by middle weight, compatible with the three others; if no relay that
///   fits has a middle weight (a tiny network whose position weights keep its exits out of the
///   middle, and whose other relays are the guard, the vanguard and `last`), uniformly among
///   those that fit.
///
/// Every two hops are [`compatible`] (distinct, not one /16, not one mutual family).
pub fn choose_path_to<'a, R: Rng + ?Sized>(
    cands: &[Candidate<'a>],
    guards: &[RelayId],
    vanguards: &[RelayId],
    last: &'a ConsensusRelay,
    rng: &mut R,
) -> Result<[&'a ConsensusRelay; 4], PathError> {
    let mut listed = false;
    for id in guards {
        let Some(g) = cands.iter().find(|c| c.id() == id) else { continue };
        listed = true;
        if !compatible(g.relay, last) {
            continue;
        }
        let mut l2s: Vec<&Candidate<'a>> = cands.iter().filter(|c| vanguards.contains(c.id()) && compatible(c.relay, g.relay) && compatible(c.relay, last)).collect();
        l2s.shuffle(rng);
        for l2 in l2s {
            let ok = |c: &Candidate<'_>| compatible(c.relay, g.relay) && compatible(c.relay, l2.relay) && compatible(c.relay, last);
            let m = pick(cands, Position::Middle, rng, ok).or_else(|| cands.iter().filter(|c| ok(c)).collect::<Vec<_>>().choose(rng).copied());
            if let Some(m) = m {
                return Ok([g.relay, l2.relay, m.relay, last]);
            }
        }
    }
    let (relays, subnets) = relays_and_subnets(cands);
    Err(if listed { PathError::TooFewForVanguardPath { relays, subnets } } else { PathError::NoGuard })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use allium_proto::policy::ExitPolicy;
    use proptest::prelude::*;
    use rand::SeedableRng;

    /// A synthetic relay: id byte `i`, OR address `ip`, given bandwidth, exit to `ports`.
    pub(crate) fn relay_at(i: u8, ip: IpAddr, bandwidth: u64, ports: &[u16]) -> ConsensusRelay {
        let policy = if ports.is_empty() {
            ExitPolicy::reject_all()
        } else {
            let mut rules: Vec<String> = ports.iter().map(|p| format!("accept *:{p}")).collect();
            rules.push("reject *:*".into());
            ExitPolicy::parse_rules(&rules).unwrap()
        };
        ConsensusRelay {
            address: std::net::SocketAddr::new(ip, 5000),
            policy,
            bandwidth,
            weight: bandwidth,
            ..ConsensusRelay::synthetic(i)
        }
    }

    fn relay(i: u8, exit: bool) -> ConsensusRelay {
        relay_at(i, format!("127.{i}.0.1").parse().unwrap(), 1000 * i as u64, if exit { &[80] } else { &[] })
    }

    /// Issue 16: relays in one /16 cannot share a path, and the error says so with counts.
    #[test]
    fn too_few_relays_says_how_many_and_in_how_many_subnets() {
        let r: Vec<ConsensusRelay> = (1..=4).map(|i| relay_at(i, format!("10.9.0.{i}").parse().unwrap(), 1000, &[80])).collect();
        let cands = candidates_from_relays(&r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let e = choose_path(&cands, &[], ExitNeed::Port(80), &[], &mut rng).unwrap_err();
        assert_eq!(e, PathError::TooFewRelays { relays: 4, subnets: 1 });
        let text = e.to_string();
        assert!(text.contains("distinct /16 subnets") && text.contains("4 usable relays in 1 /16 subnets"), "{text}");
    }

    fn path_ok(p: &[&ConsensusRelay; 3]) -> bool {
        (0..3).all(|i| (i + 1..3).all(|j| compatible(p[i], p[j])))
    }

    #[test]
    fn three_distinct_relays_and_a_suitable_exit() {
        let relays: Vec<_> = (1..=6).map(|i| relay(i, i > 4)).collect();
        let cands = candidates_from_relays(&relays);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let p = choose_path(&cands, &[], ExitNeed::Port(80), &[], &mut rng).unwrap();
            assert!(path_ok(&p));
            assert!(p[2].policy.allows_port_somewhere(80));
        }
        assert_eq!(choose_path(&cands, &[], ExitNeed::Port(443), &[], &mut rng).unwrap_err(), PathError::NoExit);
        let two = candidates_from_relays(&relays[3..5]);
        assert!(matches!(choose_path(&two, &[], ExitNeed::Port(80), &[], &mut rng).unwrap_err(), PathError::TooFewRelays { .. }));
    }

    fn distinct_and_compatible(p: &[&ConsensusRelay]) -> bool {
        (0..p.len()).all(|i| (i + 1..p.len()).all(|j| compatible(p[i], p[j])))
    }

    #[test]
    fn path_to_a_chosen_last_hop_goes_through_a_vanguard() {
        let relays: Vec<_> = (1..=8).map(|i| relay(i, false)).collect();
        let cands = candidates_from_relays(&relays);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let guards = [relays[0].identity, relays[1].identity];
        let l2: Vec<RelayId> = relays[2..5].iter().map(|r| r.identity).collect();
        let mut second = std::collections::HashSet::new();
        for _ in 0..300 {
            let p = choose_path_to(&cands, &guards, &l2, &relays[7], &mut rng).unwrap();
            assert!(distinct_and_compatible(&p), "{p:?}");
            assert_eq!((p[0].identity, p[3].identity), (relays[0].identity, relays[7].identity));
            assert!(l2.contains(&p[1].identity), "the second hop is from the vanguard set");
            second.insert(p[1].identity);
        }
        assert_eq!(second.len(), 3, "every vanguard is used");
        // The last hop may be any relay, even a guard or a vanguard: the others are used.
        let p = choose_path_to(&cands, &guards, &l2, &relays[0], &mut rng).unwrap();
        assert_eq!(p[0].identity, relays[1].identity);
        assert!(distinct_and_compatible(&p));
        for _ in 0..50 {
            let p = choose_path_to(&cands, &guards, &l2, &relays[2], &mut rng).unwrap();
            assert!(distinct_and_compatible(&p));
            assert!(p[1].identity == relays[3].identity || p[1].identity == relays[4].identity);
        }
        assert_eq!(choose_path_to(&cands, &[RelayId([99; 32])], &l2, &relays[7], &mut rng).unwrap_err(), PathError::NoGuard);
        assert!(matches!(choose_path_to(&cands, &guards, &[], &relays[7], &mut rng).unwrap_err(), PathError::TooFewForVanguardPath { .. }));
    }

    /// The test network's shape after a while: five relays whose consensus weights keep the
    /// two exits out of the middle position. A path to one of the three others, from a guard
    /// and a vanguard that are the other two, still exists: through an exit as the middle.
    #[test]
    fn a_path_exists_when_only_unweighted_relays_are_left_for_the_middle() {
        let five: Vec<_> = (1..=5).map(|i| relay(i, i > 3)).collect();
        let w = [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0]];
        let cands = weighted_cands(&five, &w);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let p = choose_path_to(&cands, &[five[0].identity], &[five[1].identity, five[2].identity], &five[2], &mut rng).expect("a path");
        assert!(distinct_and_compatible(&p), "{p:?}");
        assert_eq!((p[0].identity, p[1].identity, p[3].identity), (five[0].identity, five[1].identity, five[2].identity));
        assert!(p[2].identity == five[3].identity || p[2].identity == five[4].identity, "an exit in the middle");
    }

    #[test]
    fn vanguard_path_conflicts_and_the_smallest_network() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // Five relays (the test network's count), last hop fixed at each in turn, the guard and
        // the whole vanguard set drawn from the same five: a path always exists.
        let five: Vec<_> = (1..=5).map(|i| relay(i, i > 3)).collect();
        let cands = candidates_from_relays(&five);
        let ids: Vec<RelayId> = five.iter().map(|r| r.identity).collect();
        for last in &five {
            for _ in 0..20 {
                let p = choose_path_to(&cands, &ids[..3], &ids[1..5], last, &mut rng).unwrap();
                assert!(distinct_and_compatible(&p), "{p:?}");
                assert_eq!(p[3].identity, last.identity);
            }
        }
        // Four relays: exactly one path (the middle is the vanguard not chosen as second hop).
        let four = candidates_from_relays(&five[..4]);
        let p = choose_path_to(&four, &ids[..1], &ids[1..3], &five[3], &mut rng).unwrap();
        assert!(distinct_and_compatible(&p));
        // Three relays: too few for four distinct hops.
        let three = candidates_from_relays(&five[..3]);
        assert!(matches!(choose_path_to(&three, &ids[..1], &ids[1..3], &five[2], &mut rng).unwrap_err(), PathError::TooFewForVanguardPath { .. }));

        // The first guard shares a /16 with the last hop: the next guard is used.
        let mut r: Vec<_> = (1..=7).map(|i| relay(i, false)).collect();
        r[6] = relay_at(7, "127.1.9.9".parse().unwrap(), 100, &[]);
        let cands = candidates_from_relays(&r);
        let ids: Vec<RelayId> = r.iter().map(|x| x.identity).collect();
        let p = choose_path_to(&cands, &ids[..2], &ids[2..5], &r[6], &mut rng).unwrap();
        assert_eq!(p[0].identity, ids[1]);
        // Every vanguard but one is in the last hop's family: that one is always used.
        for i in 2..4 {
            let (a, b) = (r[i].identity, r[6].identity);
            r[i].family.push(b);
            r[6].family.push(a);
        }
        let cands = candidates_from_relays(&r);
        for _ in 0..30 {
            let p = choose_path_to(&cands, &ids[1..2], &ids[2..5], &r[6], &mut rng).unwrap();
            assert_eq!(p[1].identity, ids[4]);
            assert!(distinct_and_compatible(&p));
        }
        // ... and when it is the guard's family too, there is no path through this guard.
        let (a, b) = (r[4].identity, r[1].identity);
        r[4].family.push(b);
        r[1].family.push(a);
        let cands = candidates_from_relays(&r);
        assert!(matches!(choose_path_to(&cands, &ids[1..2], &ids[2..5], &r[6], &mut rng).unwrap_err(), PathError::TooFewForVanguardPath { .. }));
    }

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_subnet(ip("10.1.2.3"), ip("10.1.200.4")));
        assert!(!same_subnet(ip("10.1.2.3"), ip("10.2.2.3")));
        assert!(same_subnet(ip("2001:db8:1::1"), ip("2001:db8:ffff::2")));
        assert!(!same_subnet(ip("2001:db8::1"), ip("2001:db9::1")));
        assert!(same_subnet(ip("::ffff:10.1.2.3"), ip("10.1.9.9")));
        assert!(!same_subnet(ip("10.1.2.3"), ip("a01:203::")));
    }

    #[test]
    fn guard_list_is_used_in_order_and_skipped_when_no_exit_fits() {
        let relays: Vec<_> = (1..=6).map(|i| relay(i, i == 6)).collect();
        let cands = candidates_from_relays(&relays);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // The only exit is the first guard: the second guard is used.
        let p = choose_path(&cands, &[RelayId([6; 32]), RelayId([2; 32])], ExitNeed::Port(80), &[], &mut rng).unwrap();
        assert_eq!(p[0].identity, RelayId([2; 32]));
        let p = choose_path(&cands, &[RelayId([3; 32]), RelayId([2; 32])], ExitNeed::Port(80), &[], &mut rng).unwrap();
        assert_eq!(p[0].identity, RelayId([3; 32]));
        assert_eq!(choose_path(&cands, &[RelayId([9; 32])], ExitNeed::Port(80), &[], &mut rng).unwrap_err(), PathError::NoGuard);
        assert_eq!(choose_path(&cands, &[], ExitNeed::Port(80), &[RelayId([6; 32])], &mut rng).unwrap_err(), PathError::NoExit);
    }

    /// The exit is drawn before the guard (as in Tor): a first guard that is also an exit still
    /// carries this client's exit traffic (behind the second guard) in its share by weight.
    #[test]
    fn a_first_guard_that_is_an_exit_is_still_drawn_as_exit() {
        // Relays 5 and 6 are exits of equal weight share (1000·5 vs 1000·6); 6 is the first guard.
        let relays: Vec<_> = (1..=6).map(|i| relay(i, i >= 5)).collect();
        let cands = candidates_from_relays(&relays);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let guards = [RelayId([6; 32]), RelayId([2; 32])];
        let mut through_6 = 0;
        for _ in 0..400 {
            let p = choose_path(&cands, &guards, ExitNeed::Port(80), &[], &mut rng).unwrap();
            if p[2].identity == RelayId([6; 32]) {
                through_6 += 1;
                assert_eq!(p[0].identity, RelayId([2; 32]), "the exit is the first guard: the second guard is used");
            } else {
                assert_eq!(p[0].identity, RelayId([6; 32]), "otherwise the first guard is used");
            }
        }
        assert!(through_6 > 100, "the first guard was the exit in {through_6} of 400 paths (by weight: about 218)");
    }

    /// Upper critical values of the chi-square distribution at p = 0.001, by degrees of freedom.
    fn chi2_critical_001(df: usize) -> f64 {
        [0.0, 10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588][df]
    }

    /// Chi-square statistic of `observed` counts against `weights`; prints the table.
    fn chi2(label: &str, observed: &[u64], weights: &[u64]) -> f64 {
        let n: u64 = observed.iter().sum();
        let total: u64 = weights.iter().sum();
        let mut stat = 0.0;
        println!("{label}: n = {n}");
        for (o, w) in observed.iter().zip(weights) {
            let e = n as f64 * *w as f64 / total as f64;
            stat += (*o as f64 - e).powi(2) / e;
            println!("  weight {w:>5}  expected {:>6.3}  observed {:>6.3}", e / n as f64, *o as f64 / n as f64);
        }
        println!("  chi2 = {stat:.2} (df {}, critical at p=0.001: {})", observed.len() - 1, chi2_critical_001(observed.len() - 1));
        stat
    }

    /// Eight relays in eight /16s, all exits for port 80, each position skewed differently.
    fn skewed() -> (Vec<ConsensusRelay>, [[u64; 8]; 3]) {
        let guard = [1, 2, 4, 8, 16, 32, 64, 128];
        let middle = [128, 64, 32, 16, 8, 4, 2, 1];
        let exit = [10, 10, 10, 10, 40, 80, 160, 5];
        let relays = (0..8u8).map(|i| relay_at(i + 1, format!("10.{i}.0.1").parse().unwrap(), 1, &[80])).collect();
        (relays, [guard, middle, exit])
    }

    fn weighted_cands<'a>(relays: &'a [ConsensusRelay], w: &[[u64; 8]; 3]) -> Vec<Candidate<'a>> {
        relays.iter().enumerate().map(|(i, r)| Candidate { relay: r, is_guard: true, weights: [w[0][i], w[1][i], w[2][i]] }).collect()
    }

    const N: usize = 10_000;

    /// 10,000 weighted choices per position at a fixed seed match the weights (chi-square).
    #[test]
    fn chi_square_each_position_matches_its_weights() {
        let (relays, w) = skewed();
        let cands = weighted_cands(&relays, &w);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for (pos, name) in [(Position::Guard, "guard"), (Position::Middle, "middle"), (Position::Exit, "exit")] {
            let mut counts = [0u64; 8];
            for _ in 0..N {
                let c = pick(&cands, pos, &mut rng, |_| true).unwrap();
                counts[(c.relay.identity.0[0] - 1) as usize] += 1;
            }
            let stat = chi2(name, &counts, &w[pos as usize]);
            assert!(stat < chi2_critical_001(7), "{name}: chi2 {stat}");
        }
    }

    /// Whole paths: the exit (chosen first) follows the exit weights; with a fixed guard and a
    /// single possible exit, the middle follows the middle weights of the remaining relays.
    #[test]
    fn chi_square_whole_paths() {
        let (mut relays, w) = skewed();
        let cands = weighted_cands(&relays, &w);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xa11);
        let mut exits = [0u64; 8];
        for _ in 0..N {
            let p = choose_path(&cands, &[], ExitNeed::Port(80), &[], &mut rng).unwrap();
            exits[(p[2].identity.0[0] - 1) as usize] += 1;
        }
        let stat = chi2("exit (whole paths)", &exits, &w[2]);
        assert!(stat < chi2_critical_001(7), "exit: chi2 {stat}");

        // Relay 8 is the only exit for 443; relay 1 is the guard: middles are relays 2..=7.
        relays[7] = relay_at(8, "10.7.0.1".parse().unwrap(), 1, &[443]);
        let cands = weighted_cands(&relays, &w);
        let mut middles = [0u64; 6];
        for _ in 0..N {
            let p = choose_path(&cands, &[RelayId([1; 32])], ExitNeed::Port(443), &[], &mut rng).unwrap();
            assert_eq!((p[0].identity.0[0], p[2].identity.0[0]), (1, 8));
            middles[(p[1].identity.0[0] - 2) as usize] += 1;
        }
        let stat = chi2("middle (guard and exit fixed)", &middles, &w[1][1..7]);
        assert!(stat < chi2_critical_001(5), "middle: chi2 {stat}");
    }

    /// A random consensus: relays in a handful of /16s (so collisions are common), random
    /// one-sided and mutual family claims, some exits.
    fn arb_consensus() -> impl Strategy<Value = Vec<ConsensusRelay>> {
        (3usize..14)
            .prop_flat_map(|n| {
                (
                    proptest::collection::vec((0u8..5, 1u64..1000, any::<bool>()), n),
                    proptest::collection::vec((0..n, 0..n, any::<bool>()), 0..n * 2),
                )
            })
            .prop_map(|(nodes, claims)| {
                let mut relays: Vec<ConsensusRelay> = nodes
                    .iter()
                    .enumerate()
                    .map(|(i, (net, bw, exit))| relay_at(i as u8 + 1, format!("10.{net}.{i}.1").parse().unwrap(), *bw, if *exit { &[80] } else { &[] }))
                    .collect();
                for (a, b, mutual) in claims {
                    let (ida, idb) = (relays[a].identity, relays[b].identity);
                    relays[a].family.push(idb);
                    if mutual {
                        relays[b].family.push(ida);
                    }
                }
                relays
            })
    }

    proptest! {
        /// No path repeats a relay, puts two relays in one /16 or two of one mutual family,
        /// and its exit allows the destination; with or without a guard list.
        #[test]
        fn paths_obey_the_rules(relays in arb_consensus(), seed in any::<u64>(), nguards in 0usize..4) {
            let cands = candidates_from_relays(&relays);
            let guards: Vec<RelayId> = relays.iter().take(nguards).map(|r| r.identity).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for _ in 0..20 {
                if let Ok(p) = choose_path(&cands, &guards, ExitNeed::Port(80), &[], &mut rng) {
                    for i in 0..3 {
                        for j in i + 1..3 {
                            prop_assert_ne!(p[i].identity, p[j].identity);
                            let (a, b) = (p[i].address.ip(), p[j].address.ip());
                            let (IpAddr::V4(a), IpAddr::V4(b)) = (a, b) else { unreachable!() };
                            prop_assert_ne!(a.octets()[..2].to_vec(), b.octets()[..2].to_vec());
                            prop_assert!(!(p[i].family.contains(&p[j].identity) && p[j].family.contains(&p[i].identity)));
                        }
                    }
                    prop_assert!(p[2].policy.allows_port_somewhere(80));
                    if !guards.is_empty() {
                        prop_assert!(guards.contains(&p[0].identity));
                    }
                }
            }
        }

        /// One-sided family claims exclude nothing: three relays in three /16s, one an exit,
        /// with any one-sided claims among them, always make a path.
        #[test]
        fn one_sided_family_claims_do_not_exclude(claims in proptest::collection::vec((0usize..3, 0usize..3), 0..6), seed in any::<u64>()) {
            let mut relays: Vec<ConsensusRelay> = (0..3u8).map(|i| relay_at(i + 1, format!("10.{i}.0.1").parse().unwrap(), 10, if i == 2 { &[80] } else { &[] })).collect();
            for (a, b) in claims {
                // Only a -> b when b does not already claim a: never mutual.
                let (ida, idb) = (relays[a].identity, relays[b].identity);
                if a != b && !relays[b].family.contains(&ida) && !relays[a].family.contains(&idb) {
                    relays[a].family.push(idb);
                }
            }
            let cands = candidates_from_relays(&relays);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            prop_assert!(choose_path(&cands, &[], ExitNeed::Port(80), &[], &mut rng).is_ok());
            // And a mutual pair among them leaves no path at all.
            let (id0, id1) = (relays[0].identity, relays[1].identity);
            relays[0].family.push(id1);
            relays[1].family.push(id0);
            let cands = candidates_from_relays(&relays);
            let too_few = matches!(choose_path(&cands, &[], ExitNeed::Port(80), &[], &mut rng).unwrap_err(), PathError::TooFewRelays { .. });
            prop_assert!(too_few);
        }
    }
}
