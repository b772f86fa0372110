//! The relay's configuration (`allium relay --config relay.toml`).

use std::net::SocketAddr;
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
    /// The TCP port the OR listener binds, on `node.address`.
    pub or_port: u16,
    /// The OR address published in the descriptor, when other nodes reach this relay somewhere
    /// else than where it listens (behind NAT or a port forward): authorities test reachability
    /// there and every client and relay connects there, so it must lead to `node.address:or_port`.
    /// Public (unless `network.dangerous_testnet`), port not 0. With it, `node.address` may be a
    /// private address (not loopback nor unspecified). Default: `node.address:or_port`.
    #[serde(default)]
    pub advertise_address: Option<SocketAddr>,
    /// The most bandwidth this relay offers, in bytes per second. Its descriptor reports what it
    /// has actually carried (the highest 10-second rate of the last 24 hours, at least 20 kB/s),
    /// never more than this.
    #[serde(default = "default_bandwidth")]
    pub bandwidth: u64,
    /// The operator's rate limit on everything this relay sends, in bytes per second (a token
    /// bucket over all its links). None: no limit. At least 20,000. The descriptor never
    /// reports more.
    #[serde(default)]
    pub bandwidth_rate: Option<u64>,
    /// Bytes the rate limit lets through at once after an idle time. Default and minimum: one
    /// second's worth of `bandwidth_rate`.
    #[serde(default)]
    pub bandwidth_burst: Option<u64>,
    /// Fingerprints of relays run by the same operator.
    #[serde(default)]
    pub family: Vec<String>,
    /// Seconds an onion key is used before it is replaced (the replaced one is still accepted for
    /// 7 days, or for the lifetime if shorter). Default 28 days; at least 1 day unless
    /// `network.dangerous_testnet` is set.
    #[serde(default)]
    pub onion_key_lifetime_secs: Option<u64>,
    /// Test-only fault hook: flip one byte of every relay cell this relay forwards after the
    /// first N on a circuit. Refused unless `network.dangerous_testnet` is set.
    #[serde(default)]
    pub dangerous_test_corrupt_after: Option<u64>,
    /// Test-only fault hook (THREATS A32): complete link handshakes but silently drop every
    /// CREATE and every cell on the circuits it would have made (never answer). Same rules as
    /// `dangerous_test_corrupt_after`.
    #[serde(default)]
    pub dangerous_test_blackhole: bool,
    /// Test-only fault hook (THREATS A13): as an introduction point, forward every INTRODUCE2
    /// twice (a replay). Same rules as `dangerous_test_corrupt_after`.
    #[serde(default)]
    pub dangerous_test_duplicate_introduce2: bool,
    /// Test-only fault hook (THREATS A5): as an HSDir, answer every descriptor fetch with the
    /// descriptor's signature altered (a hostile HSDir). Same rules as
    /// `dangerous_test_corrupt_after`.
    #[serde(default)]
    pub dangerous_test_mutate_hs_descriptors: bool,
    /// Test-only fault hook: forward the first N relay cells toward the exit on each circuit,
    /// then silently drop every later relay cell in both directions (a relay that stops
    /// forwarding but keeps the circuit open). Same rules as `dangerous_test_corrupt_after`.
    #[serde(default)]
    pub dangerous_test_stop_forwarding_after: Option<u64>,
    /// Test-only fault hook (THREATS A17): on each circuit this relay extended (so not as the
    /// last hop), once it has forwarded [`crate::circuit::INJECT_AFTER`] cells toward the client,
    /// it sends the client a message of its own: `"drop"` (DROP) or `"introduce_ack"`
    /// (INTRODUCE_ACK), or (`"relay_early"`, THREATS A16) forwards that cell as RELAY_EARLY.
    /// Same rules as `dangerous_test_corrupt_after`.
    #[serde(default)]
    pub dangerous_test_inject_from_middle: Option<String>,
    /// Test-only fault hook (a relay that lies about its bandwidth): the descriptor reports
    /// this many bytes per second, whatever the relay carried or its limits. Same rules as
    /// `dangerous_test_corrupt_after`.
    #[serde(default)]
    pub dangerous_test_claim_bandwidth: Option<u64>,
}

/// The lowest `relay.bandwidth_rate` (bytes per second).
pub const MIN_BANDWIDTH_RATE: u64 = 20_000;

fn default_bandwidth() -> u64 {
    10_000_000
}

impl RelaySection {
    /// The most this relay offers: `bandwidth`, and not above `bandwidth_rate`.
    pub fn bandwidth_offered(&self) -> u64 {
        self.bandwidth_rate.map_or(self.bandwidth, |r| r.min(self.bandwidth))
    }

    /// What the descriptor reports, given what the relay observed it can carry (`observed`
    /// reports at most what it is given).
    pub fn reported_bandwidth(&self, observed: impl FnOnce(u64) -> u64) -> u64 {
        if let Some(claim) = self.dangerous_test_claim_bandwidth {
            return claim;
        }
        observed(self.bandwidth_offered())
    }
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
        self.node.validate_with(&self.network, self.relay.advertise_address.is_some())?;
        if self.relay.or_port == 0 {
            return Err(ConfigError::invalid("relay.or_port", "must be a port number 1-65535"));
        }
        self.validate_advertise_address()?;
        self.family_ids()?;
        self.onion_rotation()?;
        self.limits.validate()?;
        if self.relay.bandwidth_rate.is_some_and(|r| r < MIN_BANDWIDTH_RATE) {
            return Err(ConfigError::invalid("relay.bandwidth_rate", "must be at least 20000 (bytes per second)"));
        }
        if self.relay.bandwidth_burst.is_some() && self.relay.bandwidth_rate.is_none() {
            return Err(ConfigError::invalid("relay.bandwidth_burst", "needs relay.bandwidth_rate"));
        }
        let policy = self.exit_policy()?;
        if policy.accepts_private() && !self.network.dangerous_testnet {
            return Err(ConfigError::invalid(
                "exit.policy",
                "could accept private or loopback destinations; add \"reject private:*\" first (allowed only with network.dangerous_testnet = true)",
            ));
        }
        for (key, set) in [
            ("relay.dangerous_test_corrupt_after", self.relay.dangerous_test_corrupt_after.is_some()),
            ("relay.dangerous_test_stop_forwarding_after", self.relay.dangerous_test_stop_forwarding_after.is_some()),
            ("relay.dangerous_test_inject_from_middle", self.relay.dangerous_test_inject_from_middle.is_some()),
            ("relay.dangerous_test_claim_bandwidth", self.relay.dangerous_test_claim_bandwidth.is_some()),
        ] {
            if set && !self.network.dangerous_testnet {
                return Err(ConfigError::invalid(key, "needs network.dangerous_testnet = true"));
            }
        }
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

    /// `relay.advertise_address`: a port, a public address outside a test network (never the
    /// unspecified one); and then `node.address` (which may be private: the host is behind NAT)
    /// must still be one outgoing connections can leave from, so neither loopback nor
    /// unspecified on a real network.
    fn validate_advertise_address(&self) -> Result<(), ConfigError> {
        let Some(adv) = self.relay.advertise_address else { return Ok(()) };
        const KEY: &str = "relay.advertise_address";
        if adv.port() == 0 {
            return Err(ConfigError::invalid(KEY, "must have a port number 1-65535"));
        }
        if adv.ip().is_unspecified() {
            return Err(ConfigError::invalid(KEY, "must be an address other nodes can connect to, not an unspecified one"));
        }
        if !self.network.dangerous_testnet {
            if allium_proto::policy::is_private(adv.ip()) {
                return Err(ConfigError::invalid(KEY, "is a private or loopback address; only allowed with network.dangerous_testnet = true"));
            }
            let own = self.node.address.to_canonical();
            if own.is_loopback() || own.is_unspecified() {
                return Err(ConfigError::invalid("node.address", "must not be a loopback or unspecified address (outgoing connections leave from it), even with relay.advertise_address"));
            }
        }
        Ok(())
    }

    /// Where the OR port listens: `node.address:relay.or_port`.
    pub fn or_listen_address(&self) -> SocketAddr {
        SocketAddr::new(self.node.address, self.relay.or_port)
    }

    /// The OR address other nodes use, published in the descriptor: `relay.advertise_address`,
    /// else the listening address.
    pub fn advertised_or_address(&self) -> SocketAddr {
        self.relay.advertise_address.unwrap_or_else(|| self.or_listen_address())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay config at `address`, `[relay]` holding `advertise` (a TOML line or nothing).
    fn cfg(testnet: bool, address: &str, advertise: Option<&str>) -> Result<RelayConfig, ConfigError> {
        let adv = advertise.map(|a| format!("advertise_address = \"{a}\"\n")).unwrap_or_default();
        let text = format!(
            "[node]\nnickname = \"r\"\ndata_dir = \"/tmp/x\"\naddress = \"{address}\"\n[network]\ndangerous_testnet = {testnet}\n\
             [[network.authorities]]\nname = \"a\"\nidentity = \"{id}\"\naddress = \"192.0.2.1:9030\"\n[relay]\nor_port = 9001\n{adv}",
            id = "ab".repeat(32),
        );
        let c: RelayConfig = allium_net::config::parse_toml(&text, Path::new("t.toml"))?;
        c.validate()?;
        Ok(c)
    }

    fn err(r: Result<RelayConfig, ConfigError>) -> String {
        r.expect_err("the config should be refused").to_string()
    }

    /// Without `relay.advertise_address` the descriptor names where the OR port listens.
    #[test]
    fn without_advertise_address_the_listening_address_is_published() {
        let c = cfg(false, "192.0.2.10", None).unwrap();
        assert_eq!(c.or_listen_address(), "192.0.2.10:9001".parse().unwrap());
        assert_eq!(c.advertised_or_address(), c.or_listen_address());
    }

    /// A relay behind NAT or a port forward publishes `relay.advertise_address` and listens on
    /// `node.address:or_port`, which may then be private (not loopback) on a real network.
    #[test]
    fn advertise_address_is_published_and_lets_node_address_be_private() {
        let c = cfg(false, "192.0.2.10", Some("198.51.100.7:443")).unwrap();
        assert_eq!(c.or_listen_address(), "192.0.2.10:9001".parse().unwrap());
        assert_eq!(c.advertised_or_address(), "198.51.100.7:443".parse().unwrap());
        let nat = cfg(false, "10.0.0.5", Some("198.51.100.7:9001")).unwrap();
        assert_eq!(nat.or_listen_address(), "10.0.0.5:9001".parse().unwrap());
        assert_eq!(nat.advertised_or_address(), "198.51.100.7:9001".parse().unwrap());
        let v6 = cfg(false, "192.0.2.10", Some("[2001:db8:1::7]:9001")).unwrap();
        assert_eq!(v6.advertised_or_address(), "[2001:db8:1::7]:9001".parse().unwrap());
    }

    #[test]
    fn advertise_address_is_validated() {
        // Port 0, unspecified: never, not even on a test network.
        for testnet in [false, true] {
            let addr = if testnet { "127.0.0.1" } else { "192.0.2.10" };
            let e = err(cfg(testnet, addr, Some("198.51.100.7:0")));
            assert!(e.contains("relay.advertise_address") && e.contains("port") && !e.contains('\n'), "{e}");
            let e = err(cfg(testnet, addr, Some("0.0.0.0:9001")));
            assert!(e.contains("relay.advertise_address") && e.contains("unspecified"), "{e}");
        }
        // Private or loopback: only on a test network.
        for private in ["10.1.2.3:9001", "127.0.0.1:9001", "192.168.1.1:9001", "[fd00::1]:9001", "[::ffff:10.0.0.1]:9001"] {
            let e = err(cfg(false, "192.0.2.10", Some(private)));
            assert!(e.contains("relay.advertise_address") && e.contains("dangerous_testnet"), "{private}: {e}");
            assert!(cfg(true, "127.0.0.1", Some(private)).is_ok(), "{private} on a test network");
        }
        // Behind NAT node.address may be private, but outgoing connections must leave from it.
        for own in ["127.0.0.1", "0.0.0.0", "::", "::1"] {
            let e = err(cfg(false, own, Some("198.51.100.7:9001")));
            assert!(e.contains("node.address") && e.contains("loopback"), "{own}: {e}");
        }
        // Without advertise_address a private node.address is refused as before.
        let e = err(cfg(false, "10.0.0.5", None));
        assert!(e.contains("node.address") && e.contains("dangerous_testnet"), "{e}");
        // Not an address and port: a parse error naming the key.
        let e = err(cfg(false, "192.0.2.10", Some("198.51.100.7")));
        assert!(e.contains("relay.advertise_address"), "{e}");
    }
}
