//! The authority's configuration (`allium authority --config authority.toml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use allium_net::config::{load_toml, ConfigError, NetworkConfig, NodeConfig};
use allium_proto::doc::Protocols;
use allium_proto::ids::RelayId;
use serde::Deserialize;

/// Default voting interval on a real network (seconds).
pub const DEFAULT_INTERVAL_SECS: u64 = 3600;
/// Default voting interval with `network.dangerous_testnet` (seconds).
pub const DEFAULT_TESTNET_INTERVAL_SECS: u64 = 10;
/// Shortest interval allowed on a real network.
pub const MIN_INTERVAL_SECS: u64 = 300;
/// Shortest interval allowed at all (testnet): the schedule works in quarter intervals.
pub const MIN_TESTNET_INTERVAL_SECS: u64 = 2;
/// Longest interval allowed.
pub const MAX_INTERVAL_SECS: u64 = 24 * 3600;

/// An authority's whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    pub node: NodeConfig,
    pub network: NetworkConfig,
    pub authority: AuthoritySection,
    /// What peers can make this authority spend (docs/PROTOCOL.md, "Limits").
    #[serde(default)]
    pub limits: allium_net::limits::LimitsConfig,
}

/// The `[authority]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthoritySection {
    /// The directory HTTP port, on `node.address`. Must match this authority's entry in
    /// `network.authorities`.
    pub dir_port: u16,
    /// Seconds between consensuses. Every authority of a network must use the same value.
    /// Default 3600 (10 with `network.dangerous_testnet`); below 300 only on a test network.
    #[serde(default)]
    pub voting_interval_secs: Option<u64>,
    /// Consensus parameters this authority votes, overriding the defaults (see
    /// `crate::params::PARAMS`; unknown names and values outside the bounds are refused).
    #[serde(default)]
    pub params: BTreeMap<String, i64>,
    /// Fingerprints of relays this authority marks BadExit (never used as exits).
    #[serde(default)]
    pub bad_exits: Vec<String>,
    /// Fingerprints of relays this authority refuses to vote for at all.
    #[serde(default)]
    pub reject: Vec<String>,
    /// Subprotocol versions this authority votes as required (`Name=ranges ...`); default
    /// [`DEFAULT_REQUIRED_PROTOCOLS`].
    #[serde(default)]
    pub required_protocols: Option<String>,
    /// Subprotocol versions this authority votes as recommended; default
    /// [`DEFAULT_RECOMMENDED_PROTOCOLS`].
    #[serde(default)]
    pub recommended_protocols: Option<String>,
    /// Test networks only: seconds added to this authority's clock (negative: behind), to play
    /// an authority whose clock is wrong. Refused unless `network.dangerous_testnet`.
    #[serde(default)]
    pub dangerous_clock_offset_secs: Option<i64>,
    /// Measure relays' bandwidth (`allium_client::bwscan`: each relay in turn, by fetching
    /// through a two-hop circuit with it) and vote measured weights
    /// ([`crate::measured`]). Weights are measured once more than half of the authorities do.
    #[serde(default)]
    pub bandwidth_scan: bool,
}

/// Subprotocol versions required by default: what every node of this version implements.
pub const DEFAULT_REQUIRED_PROTOCOLS: &str = "Link=1 Ntor=1 Relay=1";
/// Subprotocol versions recommended by default.
pub const DEFAULT_RECOMMENDED_PROTOCOLS: &str = "Link=1 Ntor=1 Relay=1";

fn parse_protocols(key: &str, text: &str) -> Result<Protocols, ConfigError> {
    let args: Vec<&str> = if text.is_empty() { vec![] } else { text.split(' ').collect() };
    let p = Protocols::parse_args(&args).map_err(|e| ConfigError::invalid(key, e))?;
    if p.to_string() != text {
        return Err(ConfigError::invalid(key, &format!("write it in normal form: \"{p}\"")));
    }
    Ok(p)
}

fn parse_ids(key: &str, list: &[String]) -> Result<BTreeSet<RelayId>, ConfigError> {
    list.iter()
        .map(|f| f.parse().map_err(|e: allium_proto::ids::BadFingerprint| ConfigError::invalid(key, &e.to_string())))
        .collect()
}

impl AuthorityConfig {
    /// Reads, parses and validates an authority config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: AuthorityConfig = load_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Semantic checks after parsing (those that do not need the keys).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node.validate(&self.network)?;
        self.limits.validate()?;
        let ids: BTreeSet<RelayId> = self.network.authorities.iter().map(|a| a.identity).collect();
        if ids.len() != self.network.authorities.len() {
            return Err(ConfigError::invalid("network.authorities", "lists the same identity twice"));
        }
        if let Some(i) = self.authority.voting_interval_secs {
            let key = "authority.voting_interval_secs";
            if i > MAX_INTERVAL_SECS {
                return Err(ConfigError::invalid(key, "is longer than 86400 seconds"));
            }
            if i < MIN_TESTNET_INTERVAL_SECS {
                return Err(ConfigError::invalid(key, "is shorter than 2 seconds"));
            }
            if i < MIN_INTERVAL_SECS && !self.network.dangerous_testnet {
                return Err(ConfigError::invalid(
                    key,
                    "is shorter than 300 seconds; only allowed with network.dangerous_testnet = true",
                ));
            }
        }
        if self.authority.dir_port == 0 {
            return Err(ConfigError::invalid("authority.dir_port", "must not be 0"));
        }
        for (k, v) in &self.authority.params {
            if crate::params::spec(k).is_none() {
                return Err(ConfigError::invalid("authority.params", &format!("unknown parameter {k}")));
            }
            crate::params::check(k, *v).map_err(|e| ConfigError::invalid("authority.params", &e.to_string()))?;
        }
        if let Some(&l) = self.authority.params.get(allium_proto::hs::period::PERIOD_PARAM) {
            if !allium_proto::hs::period::period_length_ok(l as u64, self.interval_secs()) {
                return Err(ConfigError::invalid("authority.params", &format!("hs-period-secs={l} is not a multiple of the voting interval")));
            }
        }
        if let Some(o) = self.authority.dangerous_clock_offset_secs {
            let key = "authority.dangerous_clock_offset_secs";
            if !self.network.dangerous_testnet {
                return Err(ConfigError::invalid(key, "needs network.dangerous_testnet = true"));
            }
            let max = crate::clock::MAX_CLOCK_OFFSET_SECS;
            if !(-max..=max).contains(&o) {
                return Err(ConfigError::invalid(key, &format!("must be between -{max} and {max}")));
            }
        }
        self.required_protocols()?;
        self.recommended_protocols()?;
        self.bad_exits()?;
        self.rejected()?;
        Ok(())
    }

    /// The parameters this authority votes.
    pub fn vote_params(&self) -> BTreeMap<String, i64> {
        crate::params::vote_params(self.network.dangerous_testnet, &self.authority.params)
    }

    pub fn required_protocols(&self) -> Result<Protocols, ConfigError> {
        let t = self.authority.required_protocols.as_deref().unwrap_or(DEFAULT_REQUIRED_PROTOCOLS);
        parse_protocols("authority.required_protocols", t)
    }

    pub fn recommended_protocols(&self) -> Result<Protocols, ConfigError> {
        let t = self.authority.recommended_protocols.as_deref().unwrap_or(DEFAULT_RECOMMENDED_PROTOCOLS);
        parse_protocols("authority.recommended_protocols", t)
    }

    pub fn bad_exits(&self) -> Result<BTreeSet<RelayId>, ConfigError> {
        parse_ids("authority.bad_exits", &self.authority.bad_exits)
    }

    pub fn rejected(&self) -> Result<BTreeSet<RelayId>, ConfigError> {
        parse_ids("authority.reject", &self.authority.reject)
    }

    /// Checks that this authority (identity `me`, from its key) is one of the configured
    /// authorities.
    pub fn check_identity(&self, me: &RelayId) -> Result<(), ConfigError> {
        if self.network.authorities.iter().any(|a| a.identity == *me) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                "network.authorities",
                "does not list this authority's own identity (see its identity_ed25519.key)",
            ))
        }
    }

    /// The voting interval in seconds, with the defaults applied.
    pub fn interval_secs(&self) -> u64 {
        self.authority.voting_interval_secs.unwrap_or(if self.network.dangerous_testnet {
            DEFAULT_TESTNET_INTERVAL_SECS
        } else {
            DEFAULT_INTERVAL_SECS
        })
    }

    /// The clock this authority runs on: the system clock, shifted by
    /// `authority.dangerous_clock_offset_secs` on a test network.
    pub fn clock(&self) -> crate::clock::Clock {
        match self.authority.dangerous_clock_offset_secs {
            Some(o) if self.network.dangerous_testnet => crate::clock::Clock::with_offset_secs(o),
            _ => crate::clock::Clock::system(),
        }
    }

    /// The identities of all configured authorities.
    pub fn authority_ids(&self) -> Vec<RelayId> {
        self.network.authorities.iter().map(|a| a.identity).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(testnet: bool, interval: Option<u64>) -> String {
        let fp = "AB".repeat(32);
        let iv = interval.map(|i| format!("voting_interval_secs = {i}\n")).unwrap_or_default();
        format!(
            "[node]\nnickname = \"auth1\"\ndata_dir = \"/tmp/x\"\naddress = \"{}\"\n\
             [network]\ndangerous_testnet = {testnet}\n\
             [[network.authorities]]\nname = \"auth1\"\nidentity = \"{fp}\"\naddress = \"127.0.0.1:7000\"\n\
             [authority]\ndir_port = 7000\n{iv}",
            if testnet { "127.0.0.1" } else { "192.0.2.1" }
        )
    }

    fn parse(text: &str) -> Result<AuthorityConfig, ConfigError> {
        let c: AuthorityConfig = allium_net::config::parse_toml(text, Path::new("a.toml"))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn intervals_and_defaults() {
        assert_eq!(parse(&cfg(false, None)).unwrap().interval_secs(), 3600);
        assert_eq!(parse(&cfg(true, None)).unwrap().interval_secs(), 10);
        assert_eq!(parse(&cfg(true, Some(2))).unwrap().interval_secs(), 2);
        let e = parse(&cfg(false, Some(60))).unwrap_err().to_string();
        assert!(e.contains("authority.voting_interval_secs") && !e.contains('\n'), "{e}");
        assert!(parse(&cfg(true, Some(1))).is_err());
        assert!(parse(&cfg(false, Some(300))).is_ok());
    }

    #[test]
    fn params_lists_and_protocols_checked() {
        let base = cfg(true, None);
        let c = parse(&format!("{base}bad_exits = [\"{}\"]\n[authority.params]\nfast-min-bw = 5\n", "CD".repeat(32))).unwrap();
        assert_eq!(c.vote_params()["fast-min-bw"], 5);
        assert_eq!(c.bad_exits().unwrap().len(), 1);
        let e = parse(&format!("{base}[authority.params]\ncircuit-window = 1\n")).unwrap_err().to_string();
        assert!(e.contains("circuit-window=1 is outside its bounds"), "{e}");
        assert!(parse(&format!("{base}[authority.params]\nno-such = 1\n")).unwrap_err().to_string().contains("unknown parameter"));
        assert_eq!(parse(&format!("{base}[authority.params]\nhs-period-secs = 60\n")).unwrap().vote_params()["hs-period-secs"], 60);
        let e = parse(&format!("{base}[authority.params]\nhs-period-secs = 65\n")).unwrap_err().to_string();
        assert!(e.contains("authority.params") && e.contains("not a multiple of the voting interval"), "{e}");
        assert!(parse(&format!("{base}reject = [\"nope\"]\n")).is_err());
        assert!(parse(&format!("{base}required_protocols = \"Relay=1 Link=1\"\n")).unwrap_err().to_string().contains("normal form"));
        assert_eq!(c.required_protocols().unwrap().to_string(), DEFAULT_REQUIRED_PROTOCOLS);
    }

    #[test]
    fn clock_offset_only_on_a_test_network() {
        let c = parse(&format!("{}dangerous_clock_offset_secs = -600\n", cfg(true, None))).unwrap();
        assert_eq!(c.clock().offset_secs(), -600);
        assert_eq!(parse(&cfg(true, None)).unwrap().clock().offset_secs(), 0);
        let e = parse(&format!("{}dangerous_clock_offset_secs = 600\n", cfg(false, None))).unwrap_err().to_string();
        assert!(e.contains("authority.dangerous_clock_offset_secs") && e.contains("dangerous_testnet") && !e.contains('\n'), "{e}");
        let e = parse(&format!("{}dangerous_clock_offset_secs = -9223372036854775808\n", cfg(true, None))).unwrap_err().to_string();
        assert!(e.contains("authority.dangerous_clock_offset_secs") && e.contains("between"), "{e}");
        assert!(parse(&format!("{}dangerous_clock_offset_secs = \"ten\"\n", cfg(true, None))).is_err());
    }

    #[test]
    fn unknown_key_refused_and_identity_checked() {
        let e = parse(&format!("{}bogus = 1\n", cfg(true, None))).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let c = parse(&cfg(true, None)).unwrap();
        assert!(c.check_identity(&RelayId([0xab; 32])).is_ok());
        assert!(c.check_identity(&RelayId([0xcd; 32])).is_err());
    }
}
