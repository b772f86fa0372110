//! Configuration pieces shared by every role, and loading a TOML file with a one-line error
//! that names the offending key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use allium_proto::ids::RelayId;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A directory authority every node trusts, as listed in each node's config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthorityEntry {
    /// A short name for messages.
    pub name: String,
    /// The authority's ed25519 identity key, as a 64-digit hex fingerprint.
    #[serde(deserialize_with = "de_relay_id")]
    pub identity: RelayId,
    /// Where its directory HTTP port listens.
    pub address: SocketAddr,
}

/// The `[network]` section: which network this node belongs to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Turns on what a loopback test network needs and a real network must refuse: private and
    /// loopback addresses in descriptors and extends, loopback exits, short voting intervals.
    /// Never set this on a real network.
    #[serde(default)]
    pub dangerous_testnet: bool,
    /// Test networks only: every link this node writes holds its outbound data this many
    /// milliseconds before writing it (a timed queue in the link writer), so a loopback network
    /// has the round-trip times of a real one. 0 (the default) writes at once. Refused unless
    /// `dangerous_testnet`; at most [`MAX_LINK_DELAY_MS`].
    #[serde(default)]
    pub dangerous_link_delay_ms: u64,
    /// The directory authorities. A consensus is trusted only when more than half of them signed it.
    pub authorities: Vec<AuthorityEntry>,
}

/// Largest `network.dangerous_link_delay_ms`.
pub const MAX_LINK_DELAY_MS: u64 = 1000;

impl NetworkConfig {
    /// `dangerous_link_delay_ms`: only on a test network, and at most [`MAX_LINK_DELAY_MS`].
    pub fn validate_link_delay(&self) -> Result<(), ConfigError> {
        if self.dangerous_link_delay_ms > 0 && !self.dangerous_testnet {
            return Err(ConfigError::invalid("network.dangerous_link_delay_ms", "needs network.dangerous_testnet = true"));
        }
        if self.dangerous_link_delay_ms > MAX_LINK_DELAY_MS {
            return Err(ConfigError::invalid("network.dangerous_link_delay_ms", "must be at most 1000"));
        }
        Ok(())
    }

    /// How long this node's links hold outbound data (zero unless a test network asks).
    pub fn link_delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(if self.dangerous_testnet { self.dangerous_link_delay_ms } else { 0 })
    }
}

/// The `[node]` section: who this node is and where it lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A short human-readable name (1–19 ASCII letters and digits).
    pub nickname: String,
    /// Where keys and state live. Created with mode 0700 if missing.
    pub data_dir: PathBuf,
    /// The node's own IP address: listeners bind to it and every outgoing socket is bound to it,
    /// so a peer can tell which node connected.
    pub address: IpAddr,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`); off when absent. Must be
    /// a loopback address: scrape from another host through a tunnel or a reverse proxy. Port
    /// 0 picks a free port (`allium status` shows it).
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The log filter (`info`, `debug`, or directives such as `info,allium_relay=debug`);
    /// `RUST_LOG` wins when set. Changes apply on SIGHUP. Default `info`.
    #[serde(default)]
    pub log_level: Option<String>,
}

impl NodeConfig {
    /// Checks the nickname and, outside a test network, that the address is public.
    pub fn validate(&self, net: &NetworkConfig) -> Result<(), ConfigError> {
        self.validate_with(net, false)
    }

    /// [`NodeConfig::validate`]; with `private_address_ok`, `node.address` may be private on a
    /// real network too (a relay behind NAT that publishes `relay.advertise_address` instead:
    /// the role checks what else its own address must be).
    pub fn validate_with(&self, net: &NetworkConfig, private_address_ok: bool) -> Result<(), ConfigError> {
        let n = &self.nickname;
        if n.is_empty() || n.len() > 19 || !n.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ConfigError::invalid("node.nickname", "must be 1-19 ASCII letters or digits"));
        }
        if !net.dangerous_testnet && !private_address_ok && allium_proto::policy::is_private(self.address) {
            return Err(ConfigError::invalid(
                "node.address",
                "is a private or loopback address; only allowed with network.dangerous_testnet = true",
            ));
        }
        if let Some(m) = self.metrics_listen {
            if !m.ip().is_loopback() {
                return Err(ConfigError::invalid("node.metrics_listen", "must be a loopback address (scrape from elsewhere through a tunnel)"));
            }
        }
        net.validate_link_delay()?;
        if net.authorities.is_empty() {
            return Err(ConfigError::invalid("network.authorities", "lists no authority"));
        }
        Ok(())
    }
}

fn de_relay_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RelayId, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A configuration error: one line, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("config {path}: key '{key}': {msg}")]
    Key { path: PathBuf, key: String, msg: String },
    #[error("config: key '{key}': {msg}")]
    Invalid { key: String, msg: String },
}

impl ConfigError {
    /// A semantic error found after parsing.
    pub fn invalid(key: &str, msg: &str) -> Self {
        ConfigError::Invalid { key: key.to_string(), msg: msg.to_string() }
    }
}

/// Parses TOML text into `T`; the error names the key path (e.g. `exit.policy[2]`).
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        // toml's messages span several lines (a snippet with a caret): keep the first sentence.
        let msg = inner.message().lines().next().unwrap_or("invalid value").to_string();
        let line = inner
            .span()
            .map(|sp| format!(" (line {})", text[..sp.start.min(text.len())].lines().count().max(1)))
            .unwrap_or_default();
        ConfigError::Key { path: path.to_path_buf(), key: if key == "." { "(top level)".into() } else { key }, msg: format!("{msg}{line}") }
    })
}

/// Reads and parses a TOML config file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read { path: path.to_path_buf(), err })?;
    parse_toml(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        node: NodeConfig,
        network: NetworkConfig,
    }

    #[test]
    fn error_names_the_key_on_one_line() {
        let text = "[node]\nnickname = \"a\"\ndata_dir = \"/tmp/x\"\naddress = \"not-an-ip\"\n[network]\nauthorities = []\n";
        let err = parse_toml::<T>(text, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("node.address"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let text = "[node]\nnickname = \"a\"\ndata_dir = \"/tmp/x\"\naddress = \"127.0.0.1\"\nbogus = 1\n[network]\nauthorities = []\n";
        let err = parse_toml::<T>(text, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn link_delay_needs_a_test_network_and_is_bounded() {
        let parse = |testnet: bool, delay: u64| {
            let text = format!("[node]\nnickname = \"a\"\ndata_dir = \"/tmp/x\"\naddress = \"192.0.2.10\"\n[network]\ndangerous_testnet = {testnet}\ndangerous_link_delay_ms = {delay}\n[[network.authorities]]\nname = \"a\"\nidentity = \"{}\"\naddress = \"127.0.0.1:1\"\n", "ab".repeat(32));
            let t: T = parse_toml(&text, Path::new("x.toml")).unwrap();
            t.node.validate(&t.network).map(|_| t.network.link_delay())
        };
        assert_eq!(parse(true, 10).unwrap(), std::time::Duration::from_millis(10));
        assert_eq!(parse(true, 0).unwrap(), std::time::Duration::ZERO);
        let e = parse(false, 10).unwrap_err().to_string();
        assert!(e.contains("dangerous_link_delay_ms") && e.contains("dangerous_testnet"), "{e}");
        assert!(parse(true, 1001).unwrap_err().to_string().contains("at most 1000"));
    }

    #[test]
    fn metrics_listen_must_be_loopback() {
        let check = |addr: &str| {
            let text = format!("[node]\nnickname = \"a\"\ndata_dir = \"/tmp/x\"\naddress = \"192.0.2.10\"\nmetrics_listen = \"{addr}\"\n[network]\n[[network.authorities]]\nname = \"a\"\nidentity = \"{}\"\naddress = \"192.0.2.1:1\"\n", "ab".repeat(32));
            let t: T = parse_toml(&text, Path::new("x.toml")).unwrap();
            t.node.validate(&t.network)
        };
        assert!(check("127.0.0.1:9035").is_ok());
        assert!(check("[::1]:9035").is_ok());
        let e = check("0.0.0.0:9035").unwrap_err().to_string();
        assert!(e.contains("node.metrics_listen") && e.contains("loopback"), "{e}");
        assert!(check("192.0.2.10:9035").is_err());
    }
}
