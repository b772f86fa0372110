//! The rules by which an authority assigns flags to the relays it votes for: pure functions of
//! what it observed and the thresholds (consensus parameters, see [`crate::params`]).
//!
//! | flag | rule (in this authority's vote) |
//! |---|---|
//! | Running | by the relay's reachability history ([`crate::history`]): its last test succeeded, or it was running and has failed fewer than `running-min-failures` tests in a row or for less than `running-min-down-secs` |
//! | Valid | its descriptor verified, it supports the required protocols and it is not on the operator's reject list (a relay that is not Valid is not voted at all) |
//! | Fast | weight ≥ the smaller of `fast-min-bw` and the weight 1/8 of the way up the running relays' weights |
//! | Stable | weighted MTBF ≥ the stable threshold |
//! | HSDir | current run ≥ the HSDir threshold |
//! | Guard | Fast and Stable, weight ≥ the smaller of `guard-min-bw` and the running relays' median weight, time known ≥ the guard threshold, weighted fractional uptime ≥ `guard-min-wfu` ‰ |
//! | Exit | its policy accepts ports 80 and 443 at some public address (on a test network, also at 127.0.0.1) |
//! | BadExit | the operator lists it in `authority.bad_exits` |
//!
//! The stable, HSDir and guard thresholds are relative to the network as well as absolute (as
//! Tor's): the smaller of the parameter (`stable-min-uptime`, `hsdir-min-uptime`,
//! `guard-min-uptime`) and the median of the running relays (MTBF, current run, time known),
//! but never below `flag-uptime-floor`. So a new network has guards once its relays have run
//! for the floor (30 min by default), and one relay cannot lower the bar for itself.
//! *Weight* is `min(advertised bandwidth, bw-cap)`. History survives authority restarts.

use std::net::{IpAddr, Ipv4Addr};

use allium_proto::doc::RelayFlags;
use allium_proto::policy::ExitPolicy;

use crate::history::{median, DownRule};
use crate::params::ConsensusParams;

/// The flag thresholds in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub fast_min_bw: u64,
    pub guard_min_bw: u64,
    pub guard_min_uptime: u64,
    pub stable_min_uptime: u64,
    pub hsdir_min_uptime: u64,
    pub bw_cap: u64,
    /// The weight of a relay a scanning authority has not measured (`bw-unmeasured-cap`).
    pub bw_unmeasured_cap: u64,
    /// No relative uptime threshold goes below this (s).
    pub uptime_floor: u64,
    /// Least weighted fractional uptime for Guard (per mille).
    pub guard_min_wfu: u64,
    /// When Running is lost.
    pub down: DownRule,
}

/// One running relay's figures, for the relative thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub weight: u64,
    pub run_secs: u64,
    pub known_secs: u64,
    pub mtbf_secs: u64,
}

impl Thresholds {
    /// The thresholds from parameter values.
    pub fn from_params(p: &ConsensusParams) -> Self {
        Thresholds {
            fast_min_bw: p.get_u64("fast-min-bw"),
            guard_min_bw: p.get_u64("guard-min-bw"),
            guard_min_uptime: p.get_u64("guard-min-uptime"),
            stable_min_uptime: p.get_u64("stable-min-uptime"),
            hsdir_min_uptime: p.get_u64("hsdir-min-uptime"),
            bw_cap: p.get_u64("bw-cap"),
            bw_unmeasured_cap: p.get_u64("bw-unmeasured-cap"),
            uptime_floor: p.get_u64("flag-uptime-floor"),
            guard_min_wfu: p.get_u64("guard-min-wfu"),
            down: DownRule { min_failures: p.get_u64("running-min-failures") as u32, min_down_secs: p.get_u64("running-min-down-secs") },
        }
    }

    /// These thresholds lowered to what the running relays in `samples` reach (see the module
    /// documentation); unchanged for no samples.
    pub fn relative_to(&self, samples: &[Sample]) -> Thresholds {
        let of = |f: fn(&Sample) -> u64| samples.iter().map(f).collect::<Vec<u64>>();
        let rel = |param: u64, v: Vec<u64>| median(v).map_or(param, |m| param.min(m).max(self.uptime_floor.min(param)));
        let mut weights: Vec<u64> = samples.iter().map(|s| s.weight.min(self.bw_cap)).collect();
        weights.sort_unstable();
        let eighth = weights.get(weights.len() / 8).copied();
        Thresholds {
            fast_min_bw: eighth.map_or(self.fast_min_bw, |w| self.fast_min_bw.min(w)),
            guard_min_bw: median(weights).map_or(self.guard_min_bw, |m| self.guard_min_bw.min(m)),
            stable_min_uptime: rel(self.stable_min_uptime, of(|s| s.mtbf_secs)),
            hsdir_min_uptime: rel(self.hsdir_min_uptime, of(|s| s.run_secs)),
            guard_min_uptime: rel(self.guard_min_uptime, of(|s| s.known_secs)),
            ..*self
        }
    }
}

/// What an authority knows about one relay when it votes.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Running, by the relay's history.
    pub reachable: bool,
    /// Seconds of the current run (0 if not running).
    pub uptime_secs: u64,
    /// Seconds since this authority first tested it.
    pub known_secs: u64,
    /// Weighted mean time between failures (s).
    pub mtbf_secs: u64,
    /// Weighted fractional uptime (per mille).
    pub wfu_permille: u64,
    /// Advertised bandwidth (bytes/s).
    pub bandwidth: u64,
    pub policy: &'a ExitPolicy,
    /// Listed in the operator's bad-exit list.
    pub bad_exit: bool,
}

/// The weight an authority gives a relay: its advertised bandwidth capped at `bw-cap`.
pub fn capped_weight(bandwidth: u64, t: &Thresholds) -> u64 {
    bandwidth.min(t.bw_cap)
}

/// Whether the policy earns the Exit flag.
pub fn exit_policy_qualifies(policy: &ExitPolicy, testnet: bool) -> bool {
    [80u16, 443].iter().all(|&p| {
        policy.allows_port_somewhere(p) || (testnet && policy.allows(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
    })
}

/// The flags for one relay this authority votes for (it votes only Valid relays, so Valid is
/// always set; Running is set when the last test succeeded).
pub fn assign_flags(o: &Observation, t: &Thresholds, testnet: bool) -> RelayFlags {
    let weight = capped_weight(o.bandwidth, t);
    let up = if o.reachable { o.uptime_secs } else { 0 };
    let fast = weight >= t.fast_min_bw;
    let stable = o.reachable && o.mtbf_secs >= t.stable_min_uptime;
    let guard = fast && stable && weight >= t.guard_min_bw && o.known_secs >= t.guard_min_uptime && o.wfu_permille >= t.guard_min_wfu;
    RelayFlags::VALID
        .with_if(RelayFlags::RUNNING, o.reachable)
        .with_if(RelayFlags::FAST, fast)
        .with_if(RelayFlags::STABLE, stable)
        .with_if(RelayFlags::GUARD, guard)
        .with_if(RelayFlags::HSDIR, o.reachable && up >= t.hsdir_min_uptime)
        .with_if(RelayFlags::EXIT, exit_policy_qualifies(o.policy, testnet))
        .with_if(RelayFlags::BAD_EXIT, o.bad_exit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::vote_params;
    use std::collections::BTreeMap;

    fn thresholds(testnet: bool) -> Thresholds {
        Thresholds::from_params(&ConsensusParams::from_map(&vote_params(testnet, &BTreeMap::new())).unwrap())
    }

    fn obs(policy: &ExitPolicy, reachable: bool, uptime_secs: u64, bandwidth: u64) -> Observation<'_> {
        // A relay up without a break for all it is known.
        let wfu_permille = if reachable { 1000 } else { 0 };
        Observation { reachable, uptime_secs, known_secs: uptime_secs, mtbf_secs: uptime_secs, wfu_permille, bandwidth, policy, bad_exit: false }
    }

    #[test]
    fn new_relay_gets_guard_and_hsdir_on_a_testnet_but_not_by_default() {
        let p = ExitPolicy::reject_all();
        let o = obs(&p, true, 0, 1_000);
        let f = assign_flags(&o, &thresholds(true), true);
        for want in [RelayFlags::RUNNING, RelayFlags::VALID, RelayFlags::FAST, RelayFlags::STABLE, RelayFlags::GUARD, RelayFlags::HSDIR] {
            assert!(f.contains(want), "{f}");
        }
        assert!(!f.contains(RelayFlags::EXIT));
        let f = assign_flags(&o, &thresholds(false), false);
        assert_eq!(f, RelayFlags::RUNNING | RelayFlags::VALID, "slow and new on a real network");
    }

    #[test]
    fn uptime_and_bandwidth_thresholds_on_a_real_network() {
        let p = ExitPolicy::reject_all();
        let t = thresholds(false);
        let day = 86_400;
        let f = |up, bw| assign_flags(&obs(&p, true, up, bw), &t, false);
        assert!(f(0, 100_000).contains(RelayFlags::FAST));
        assert!(!f(0, 99_999).contains(RelayFlags::FAST));
        assert!(f(5 * day, 1).contains(RelayFlags::STABLE));
        assert!(!f(5 * day - 1, 1).contains(RelayFlags::STABLE));
        assert!(f(4 * day, 1).contains(RelayFlags::HSDIR));
        assert!(!f(4 * day - 1, 1).contains(RelayFlags::HSDIR));
        assert!(f(8 * day, 1_000_000).contains(RelayFlags::GUARD));
        assert!(!f(8 * day - 1, 1_000_000).contains(RelayFlags::GUARD));
        assert!(!f(8 * day, 999_999).contains(RelayFlags::GUARD));
        // Unreachable: nothing that needs uptime, and no Running.
        let down = assign_flags(&obs(&p, false, 30 * day, 1_000_000), &t, false);
        assert!(!down.contains(RelayFlags::RUNNING) && !down.contains(RelayFlags::GUARD) && !down.contains(RelayFlags::HSDIR));
    }

    /// Issue 13: a new network with default parameters has guards, HSDirs and Stable relays
    /// once its relays have run for the floor; one relay alone cannot lower the bar, and a
    /// relay that is often down gets no Guard.
    #[test]
    fn thresholds_follow_the_network_down_to_the_floor() {
        let p = ExitPolicy::reject_all();
        let t = thresholds(false);
        let minute = 60;
        // Twenty relays up for 40 minutes with 30 kB/s: far below every absolute threshold.
        let samples: Vec<Sample> = (0..20).map(|i| Sample { weight: 30_000 + i, run_secs: 40 * minute, known_secs: 40 * minute, mtbf_secs: 40 * minute }).collect();
        let r = t.relative_to(&samples);
        assert_eq!(r.stable_min_uptime, 40 * minute);
        assert_eq!(r.guard_min_bw, 30_009);
        let new = |up: u64, bw: u64| assign_flags(&obs(&p, true, up, bw), &r, false);
        let f = new(40 * minute, 30_010);
        for want in [RelayFlags::FAST, RelayFlags::STABLE, RelayFlags::HSDIR, RelayFlags::GUARD] {
            assert!(f.contains(want), "{f}");
        }
        assert!(!new(39 * minute, 30_010).contains(RelayFlags::GUARD));
        // Ten minutes in: below the 30 min floor, nothing.
        let young: Vec<Sample> = samples.iter().map(|s| Sample { run_secs: 10 * minute, known_secs: 10 * minute, mtbf_secs: 10 * minute, ..*s }).collect();
        let r = t.relative_to(&young);
        assert_eq!(r.guard_min_uptime, 30 * minute);
        assert!(!assign_flags(&obs(&p, true, 10 * minute, 30_010), &r, false).contains(RelayFlags::STABLE));
        // A long-running network keeps the absolute bars.
        let old: Vec<Sample> = samples.iter().map(|_| Sample { run_secs: 90 * 86_400, known_secs: 90 * 86_400, mtbf_secs: 90 * 86_400, weight: 5_000_000 }).collect();
        assert_eq!(t.relative_to(&old), t);
        // Often down: no Guard however long known.
        let mut o = obs(&p, true, 90 * 86_400, 5_000_000);
        o.wfu_permille = 900;
        assert!(!assign_flags(&o, &t, false).contains(RelayFlags::GUARD));
    }

    #[test]
    fn exit_and_bad_exit() {
        let t = thresholds(false);
        let web = ExitPolicy::parse_rules(&["accept *:80", "accept *:443", "reject *:*"]).unwrap();
        let only80 = ExitPolicy::parse_rules(&["accept *:80", "reject *:*"]).unwrap();
        let local = ExitPolicy::parse_rules(&["accept 127.0.0.1:*", "reject *:*"]).unwrap();
        assert!(assign_flags(&obs(&web, true, 0, 1), &t, false).contains(RelayFlags::EXIT));
        assert!(!assign_flags(&obs(&only80, true, 0, 1), &t, false).contains(RelayFlags::EXIT));
        assert!(!assign_flags(&obs(&local, true, 0, 1), &t, false).contains(RelayFlags::EXIT));
        assert!(assign_flags(&obs(&local, true, 0, 1), &t, true).contains(RelayFlags::EXIT), "testnet");
        let mut o = obs(&web, true, 0, 1);
        o.bad_exit = true;
        assert!(assign_flags(&o, &t, false).contains(RelayFlags::BAD_EXIT | RelayFlags::EXIT));
    }

    #[test]
    fn weight_is_capped() {
        let t = thresholds(false);
        assert_eq!(capped_weight(5, &t), 5);
        assert_eq!(capped_weight(u64::MAX, &t), 10_000_000);
    }
}
