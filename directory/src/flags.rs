//! The rules by which an authority assigns flags to the relays it votes for: pure functions of
//! what it observed and the thresholds (consensus parameters, see [`crate::params`]).
//!
//! | flag | rule (in this authority's vote) |
//! |---|---|
//! | Running | the relay completed a link handshake in this authority's last reachability test |
//! | Valid | its descriptor verified, it supports the required protocols and it is not on the operator's reject list (a relay that is not Valid is not voted at all) |
//! | Fast | weight ≥ `fast-min-bw` |
//! | Stable | uptime ≥ `stable-min-uptime` |
//! | Guard | Fast and Stable, weight ≥ `guard-min-bw` and uptime ≥ `guard-min-uptime` |
//! | HSDir | uptime ≥ `hsdir-min-uptime` |
//! | Exit | its policy accepts ports 80 and 443 at some public address (on a test network, also at 127.0.0.1) |
//! | BadExit | the operator lists it in `authority.bad_exits` |
//!
//! *Uptime* is the time since the start of the current unbroken run of successful reachability
//! tests by this authority (it restarts at 0 after a failed test or an authority restart).
//! *Weight* is `min(advertised bandwidth, bw-cap)`.

use std::net::{IpAddr, Ipv4Addr};

use allium_proto::doc::RelayFlags;
use allium_proto::policy::ExitPolicy;

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
        }
    }
}

/// What an authority knows about one relay when it votes.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The last reachability test succeeded.
    pub reachable: bool,
    /// Seconds of unbroken reachability (0 if not reachable).
    pub uptime_secs: u64,
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
    let stable = o.reachable && up >= t.stable_min_uptime;
    let guard = fast && stable && weight >= t.guard_min_bw && up >= t.guard_min_uptime;
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
        Observation { reachable, uptime_secs, bandwidth, policy, bad_exit: false }
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
