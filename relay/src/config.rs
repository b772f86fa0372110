//! The relay's configuration (`allium relay --config relay.toml`).

use std::path::Path;

use allium_net::config::{load_toml, ConfigError, NetworkConfig, NodeConfig};
use allium_net::keys::RotationPolicy;
use allium_net::limits::LimitsConfig;
use allium_proto::ids::RelayId;
use allium_proto::policy::ExitPolicy;
use serde::Deserialize;

/// A relay's whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub node: NodeConfig,
    pub network: NetworkConfig,
    pub relay: RelaySection,
    #[serde(default)]
    pub exit: ExitSection,
    /// What one peer can make this relay spend (docs/PROTOCOL.md, "Limits").
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// The `[relay]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// The TCP port other nodes connect to (on `node.address`).
    pub or_port: u16,
    /// The most bandwidth this relay offers, in bytes per second. Its descriptor reports what it
    /// has actually carried (the highest 10-second rate of the last 24 hours, at least 20 kB/s),
    /// never more than this.
    #[serde(default = "default_bandwidth")]
    pub bandwidth: u64,
    /// Fingerprints of relays run by the same operator.
    #[serde(default)]
    pub family: Vec<String>,
    /// Seconds an onion key is used before it is replaced (the replaced one is still accepted for
    /// 7 days, or for the lifetime if shorter). Default 28 days; at least 1 day unless
    /// `network.dangerous_testnet` is set.
    #[serde(default)]
    pub onion_key_lifetime_secs: Option<u64>,
    /// Test-only fault hook: flip one byte of every relay cell this relay forwards after the
    /// first N on a circuit. Exists only in builds with the `test-hooks` feature (the
    /// integration tests' build); refused unless `network.dangerous_testnet` is set.
    #[cfg(feature = "test-hooks")]
    #[serde(default)]
    pub dangerous_test_corrupt_after: Option<u64>,
    /// Test-only fault hook (THREATS A32): complete link handshakes but silently drop every
    /// CREATE and every cell on the circuits it would have made (never answer). Same rules as
    /// `dangerous_test_corrupt_after`.
    #[cfg(feature = "test-hooks")]
    #[serde(default)]
    pub dangerous_test_blackhole: bool,
    /// Test-only fault hook (THREATS A13): as an introduction point, forward every INTRODUCE2
    /// twice (a replay). Same rules as `dangerous_test_corrupt_after`.
    #[cfg(feature = "test-hooks")]
    #[serde(default)]
    pub dangerous_test_duplicate_introduce2: bool,
    /// Test-only fault hook (THREATS A5): as an HSDir, answer every descriptor fetch with the
    /// descriptor's signature altered (a hostile HSDir). Same rules as
    /// `dangerous_test_corrupt_after`.
    #[cfg(feature = "test-hooks")]
    #[serde(default)]
    pub dangerous_test_mutate_hs_descriptors: bool,
    /// Test-only fault hook: forward the first N relay cells toward the exit on each circuit,
    /// then silently drop every later relay cell in both directions (a relay that stops
    /// forwarding but keeps the circuit open). Same rules as `dangerous_test_corrupt_after`.
    #[cfg(feature = "test-hooks")]
    #[serde(default)]
    pub dangerous_test_stop_forwarding_after: Option<u64>,
    /// Test-only fault hook (THREATS A17): on each circuit this relay extended (so not as the
    /// last hop), once it has forwarded [`crate::circuit::INJECT_AFTER`] cells toward the client,
    /// it sends the client a message of its own: `"drop"` (DROP) or `"introduce_ack"`
    /// (INTRODUCE_ACK), or (`"relay_early"`, THREATS A16) forwards that cell as RELAY_EARLY.
    /// Same rules as `dangerous_test_corrupt_after`.
    #[cfg(feature = "test-hooks")]
    #[serde(default)]
    pub dangerous_test_inject_from_middle: Option<String>,
}

fn default_bandwidth() -> u64 {
    10_000_000
}

/// The `[exit]` section: whether and where this relay lets streams leave the network.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExitSection {
    /// Be an exit at all. Without this the policy is `reject *:*`.
    #[serde(default)]
    pub enabled: bool,
    /// Rules, first match wins (e.g. `"reject private:*"`, `"accept *:443"`). Default when
    /// enabled: `["reject private:*", "accept *:*"]`. A policy that could accept private or
    /// loopback addresses is refused unless `network.dangerous_testnet` is set.
    #[serde(default)]
    pub policy: Option<Vec<String>>,
    /// How host names in BEGIN are resolved: "system" (the OS resolver) or "none" (IP
    /// literals and `localhost` only). Default "system".
    #[serde(default)]
    pub resolver: Resolver,
}

/// The exit's resolver choice.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resolver {
    #[default]
    System,
    None,
}

impl RelayConfig {
    /// Reads, parses and validates a relay config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: RelayConfig = load_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Semantic checks after parsing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node.validate(&self.network)?;
        if self.relay.or_port == 0 {
            return Err(ConfigError::invalid("relay.or_port", "must be a port number 1-65535"));
        }
        self.family_ids()?;
        self.onion_rotation()?;
        self.limits.validate()?;
        let policy = self.exit_policy()?;
        if policy.accepts_private() && !self.network.dangerous_testnet {
            return Err(ConfigError::invalid(
                "exit.policy",
                "could accept private or loopback destinations; add \"reject private:*\" first (allowed only with network.dangerous_testnet = true)",
            ));
        }
        #[cfg(feature = "test-hooks")]
        for (key, set) in [
            ("relay.dangerous_test_corrupt_after", self.relay.dangerous_test_corrupt_after.is_some()),
            ("relay.dangerous_test_stop_forwarding_after", self.relay.dangerous_test_stop_forwarding_after.is_some()),
            ("relay.dangerous_test_inject_from_middle", self.relay.dangerous_test_inject_from_middle.is_some()),
        ] {
            if set && !self.network.dangerous_testnet {
                return Err(ConfigError::invalid(key, "needs network.dangerous_testnet = true"));
            }
        }
        #[cfg(feature = "test-hooks")]
        for (key, set) in [
            ("relay.dangerous_test_blackhole", self.relay.dangerous_test_blackhole),
            ("relay.dangerous_test_duplicate_introduce2", self.relay.dangerous_test_duplicate_introduce2),
            ("relay.dangerous_test_mutate_hs_descriptors", self.relay.dangerous_test_mutate_hs_descriptors),
        ] {
            if set && !self.network.dangerous_testnet {
                return Err(ConfigError::invalid(key, "needs network.dangerous_testnet = true"));
            }
        }
        Ok(())
    }

    /// The effective exit policy.
    pub fn exit_policy(&self) -> Result<ExitPolicy, ConfigError> {
        if !self.exit.enabled {
            return Ok(ExitPolicy::reject_all());
        }
        match &self.exit.policy {
            None => Ok(ExitPolicy::default_exit()),
            Some(rules) => ExitPolicy::parse_rules(rules).map_err(|e| ConfigError::invalid("exit.policy", &e.to_string())),
        }
    }

    /// The onion-key rotation schedule.
    pub fn onion_rotation(&self) -> Result<RotationPolicy, ConfigError> {
        let Some(lifetime) = self.relay.onion_key_lifetime_secs else { return Ok(RotationPolicy::default()) };
        let min = if self.network.dangerous_testnet { 1 } else { RotationPolicy::MIN_LIFETIME };
        if lifetime < min {
            return Err(ConfigError::invalid("relay.onion_key_lifetime_secs", &format!("must be at least {min} seconds")));
        }
        Ok(RotationPolicy::with_lifetime(lifetime))
    }

    /// The declared family as identities.
    pub fn family_ids(&self) -> Result<Vec<RelayId>, ConfigError> {
        self.relay
            .family
            .iter()
            .map(|f| f.parse().map_err(|e: allium_proto::ids::BadFingerprint| ConfigError::invalid("relay.family", &e.to_string())))
            .collect()
    }
}
