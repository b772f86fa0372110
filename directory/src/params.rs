//! Consensus parameters: the table of known parameters with their defaults and bounds, what an
//! authority votes, and how nodes read them from a consensus.
//!
//! Authorities vote every known parameter (their configured value, else the default for their
//! network kind); the consensus carries, for each parameter listed by more than half of the
//! configured authorities, the low median of the values voted (`allium_proto::doc::compute_consensus`).
//! Nodes read a parameter with [`ConsensusParams::get`]: the consensus value, or the default
//! when absent. A consensus whose value for a known parameter is outside its bounds is refused
//! as a whole ([`ConsensusParams::from_consensus`]), with a message naming the parameter;
//! unknown parameters are ignored. The same table is in docs/PROTOCOL.md ("Consensus
//! parameters").

use std::collections::BTreeMap;

use allium_proto::congestion::{self as cc, CcParams};
use allium_proto::flow;

/// The default Vegas parameters (the `cc-*` parameters' defaults).
const VEGAS: CcParams = cc::VEGAS_DEFAULT;

/// One known parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: &'static str,
    /// Default on a real network (and what nodes use when the consensus does not list it).
    pub default: i64,
    /// What authorities of a test network (`dangerous_testnet`) vote by default.
    pub testnet_default: i64,
    pub min: i64,
    pub max: i64,
    pub doc: &'static str,
}

const DAY: i64 = 86_400;

/// Every known parameter (sorted by name).
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec { name: "bw-cap", default: 10_000_000, testnet_default: 10_000_000, min: 1, max: 1 << 40, doc: "cap on a relay's self-reported bandwidth when it becomes its weight (bytes/s)" },
    ParamSpec { name: "bw-unmeasured-cap", default: 20_000, testnet_default: 20_000, min: 1, max: 1 << 40, doc: "weight a bandwidth-scanning authority votes for a relay it has not measured (bytes/s)" },
    ParamSpec { name: "cc-cwnd-init", default: cc::CWND_INIT as i64, testnet_default: cc::CWND_INIT as i64, min: 2, max: flow::CIRCUIT_WINDOW_RANGE.1 as i64, doc: "congestion window a circuit starts with (cells)" },
    ParamSpec { name: "cc-vegas-alpha", default: VEGAS.alpha as i64, testnet_default: VEGAS.alpha as i64, min: 0, max: flow::CIRCUIT_WINDOW_RANGE.1 as i64, doc: "Vegas: grow the window when fewer cells than this are queued on the path" },
    ParamSpec { name: "cc-vegas-beta", default: VEGAS.beta as i64, testnet_default: VEGAS.beta as i64, min: 0, max: flow::CIRCUIT_WINDOW_RANGE.1 as i64, doc: "Vegas: shrink the window when more cells than this are queued" },
    ParamSpec { name: "cc-vegas-delta", default: VEGAS.delta as i64, testnet_default: VEGAS.delta as i64, min: 0, max: flow::CIRCUIT_WINDOW_RANGE.1 as i64, doc: "Vegas: drop the window to the path's capacity plus this when more cells than this are queued" },
    ParamSpec { name: "cc-vegas-gamma", default: VEGAS.gamma as i64, testnet_default: VEGAS.gamma as i64, min: 0, max: flow::CIRCUIT_WINDOW_RANGE.1 as i64, doc: "Vegas: leave slow start when more cells than this are queued" },
    ParamSpec { name: "circuit-sendme-inc", default: flow::CIRCUIT_SENDME_INC as i64, testnet_default: flow::CIRCUIT_SENDME_INC as i64, min: 1, max: flow::CIRCUIT_WINDOW_RANGE.1 as i64 / 2, doc: "cells per circuit-level SENDME (one round-trip sample each)" },
    ParamSpec { name: "circuit-window", default: flow::CIRCUIT_WINDOW as i64, testnet_default: flow::CIRCUIT_WINDOW as i64, min: flow::CIRCUIT_WINDOW_RANGE.0 as i64, max: flow::CIRCUIT_WINDOW_RANGE.1 as i64, doc: "circuit-level flow-control window (cells)" },
    ParamSpec { name: "fast-min-bw", default: 100_000, testnet_default: 0, min: 0, max: 1 << 40, doc: "least weight for the Fast flag (bytes/s)" },
    ParamSpec { name: "flag-uptime-floor", default: 1800, testnet_default: 0, min: 0, max: 365 * DAY, doc: "no relative uptime threshold (Stable, HSDir, Guard) goes below this (s)" },
    ParamSpec { name: "guard-min-bw", default: 1_000_000, testnet_default: 0, min: 0, max: 1 << 40, doc: "least weight for the Guard flag (bytes/s)" },
    ParamSpec { name: "guard-min-uptime", default: 8 * DAY, testnet_default: 0, min: 0, max: 365 * DAY, doc: "least observed uptime for the Guard flag (s)" },
    ParamSpec { name: "guard-min-wfu", default: 980, testnet_default: 0, min: 0, max: 1000, doc: "least weighted fractional uptime for the Guard flag (per mille)" },
    ParamSpec { name: "hs-period-secs", default: DAY, testnet_default: DAY, min: 60, max: 7 * DAY, doc: "length of an onion-service time period (s); used only when a multiple of the voting interval, else 86400" },
    ParamSpec { name: "hsdir-min-uptime", default: 4 * DAY, testnet_default: 0, min: 0, max: 365 * DAY, doc: "least observed uptime for the HSDir flag (s)" },
    ParamSpec { name: "running-min-down-secs", default: 600, testnet_default: 0, min: 0, max: DAY, doc: "a relay keeps Running until its failed reachability tests span at least this long (s)" },
    ParamSpec { name: "running-min-failures", default: 2, testnet_default: 1, min: 1, max: 100, doc: "a relay keeps Running until it failed at least this many reachability tests in a row" },
    ParamSpec { name: "stable-min-uptime", default: 5 * DAY, testnet_default: 0, min: 0, max: 365 * DAY, doc: "least observed uptime for the Stable flag (s)" },
    ParamSpec { name: "stream-xoff", default: flow::XOFF_CELLS as i64, testnet_default: flow::XOFF_CELLS as i64, min: flow::XOFF_RANGE.0 as i64, max: flow::XOFF_RANGE.1 as i64, doc: "cells of one stream waiting for its application before its receiver sends XOFF" },
];

/// The spec of a known parameter.
pub fn spec(name: &str) -> Option<&'static ParamSpec> {
    PARAMS.iter().find(|p| p.name == name)
}

/// A known parameter has a value outside its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consensus parameter {name}={value} is outside its bounds {min}..={max}; refusing it")]
pub struct ParamError {
    pub name: String,
    pub value: i64,
    pub min: i64,
    pub max: i64,
}

/// Checks `value` against the bounds of `name` (unknown names pass).
pub fn check(name: &str, value: i64) -> Result<(), ParamError> {
    match spec(name) {
        Some(s) if value < s.min || value > s.max => {
            Err(ParamError { name: name.to_string(), value, min: s.min, max: s.max })
        }
        _ => Ok(()),
    }
}

/// What an authority votes: every known parameter at its default for the network kind, then
/// `overrides` from the config (checked against the bounds; unknown names are refused by the
/// config loader, see `AuthorityConfig::validate`).
pub fn vote_params(testnet: bool, overrides: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> =
        PARAMS.iter().map(|p| (p.name.to_string(), if testnet { p.testnet_default } else { p.default })).collect();
    for (k, v) in overrides {
        out.insert(k.clone(), *v);
    }
    out
}

/// The parameters of a verified consensus, checked against their bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsensusParams {
    values: BTreeMap<String, i64>,
}

impl ConsensusParams {
    /// Checks every known parameter in `params`; the first out of bounds is the error.
    pub fn from_map(params: &BTreeMap<String, i64>) -> Result<Self, ParamError> {
        for (k, v) in params {
            check(k, *v)?;
        }
        Ok(ConsensusParams { values: params.clone() })
    }

    /// The value of a known parameter: the consensus value, or its (real-network) default.
    ///
    /// # Panics
    /// If `name` is not in [`PARAMS`] (a programming error).
    pub fn get(&self, name: &str) -> i64 {
        let s = spec(name).unwrap_or_else(|| panic!("unknown consensus parameter {name}"));
        self.values.get(name).copied().unwrap_or(s.default)
    }

    /// [`get`](Self::get) for a parameter whose bounds are non-negative.
    pub fn get_u64(&self, name: &str) -> u64 {
        self.get(name).max(0) as u64
    }

    /// Every parameter the consensus lists (known or not).
    pub fn listed(&self) -> &BTreeMap<String, i64> {
        &self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_defaults_in_bounds() {
        assert!(PARAMS.windows(2).all(|w| w[0].name < w[1].name));
        for p in PARAMS {
            assert!(allium_proto::doc::param_name_ok(p.name), "{}", p.name);
            assert!(check(p.name, p.default).is_ok() && check(p.name, p.testnet_default).is_ok(), "{}", p.name);
        }
        assert_eq!(allium_proto::flow::CIRCUIT_WINDOW as i64, spec("circuit-window").unwrap().default);
        assert_eq!(allium_proto::flow::XOFF_CELLS as i64, spec("stream-xoff").unwrap().default);
        let cc = allium_proto::congestion::CcParams::default();
        let named = [("cc-cwnd-init", cc.cwnd_init), ("cc-vegas-alpha", cc.alpha), ("cc-vegas-beta", cc.beta), ("cc-vegas-gamma", cc.gamma), ("cc-vegas-delta", cc.delta)];
        for (name, v) in named {
            assert_eq!(v as i64, spec(name).unwrap().default, "{name}");
        }
    }

    #[test]
    fn out_of_bounds_value_is_refused_with_a_clear_message() {
        let mut m = BTreeMap::new();
        m.insert("circuit-window".to_string(), 5);
        m.insert("unknown-thing".to_string(), -7);
        let e = ConsensusParams::from_map(&m).unwrap_err();
        assert_eq!(e.to_string(), "consensus parameter circuit-window=5 is outside its bounds 100..=10000; refusing it");
        m.insert("circuit-window".to_string(), 10_000);
        let p = ConsensusParams::from_map(&m).unwrap();
        assert_eq!(p.get("circuit-window"), 10_000);
        assert_eq!(p.get("stream-xoff"), 500, "absent: default");
        assert_eq!(p.listed()["unknown-thing"], -7, "unknown parameters are kept but not used");
    }

    #[test]
    fn votes_use_network_defaults_and_overrides() {
        let mut o = BTreeMap::new();
        o.insert("fast-min-bw".to_string(), 7);
        let real = vote_params(false, &o);
        assert_eq!(real["guard-min-uptime"], 8 * DAY);
        assert_eq!(real["fast-min-bw"], 7);
        let test = vote_params(true, &BTreeMap::new());
        assert_eq!(test["guard-min-uptime"], 0);
        assert_eq!(test.len(), PARAMS.len());
    }

    /// docs/PROTOCOL.md, "Test networks": a test network's defaults differ from a real
    /// network's in exactly the flag thresholds, which are 0 there (the least allowed, 1, for
    /// `running-min-failures`: one failed test takes a relay out) and not on a real one.
    #[test]
    fn testnet_defaults_differ_only_in_the_flag_thresholds() {
        let differ: Vec<&str> = PARAMS.iter().filter(|p| p.default != p.testnet_default).map(|p| p.name).collect();
        assert_eq!(
            differ,
            ["fast-min-bw", "flag-uptime-floor", "guard-min-bw", "guard-min-uptime", "guard-min-wfu", "hsdir-min-uptime", "running-min-down-secs", "running-min-failures", "stable-min-uptime"]
        );
        for name in differ {
            let p = spec(name).unwrap();
            assert!(p.testnet_default == p.min && p.default > p.min, "{name}");
        }
    }
}
