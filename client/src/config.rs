//! The client's configuration (`allium client --config client.toml`).

use std::net::SocketAddr;
use std::path::Path;

use allium_net::config::{load_toml, ConfigError, NetworkConfig, NodeConfig};
use allium_proto::ids::RelayId;
use serde::Deserialize;

/// A client's whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub node: NodeConfig,
    pub network: NetworkConfig,
    pub client: ClientSection,
    /// Onion services this node hosts (`[[onion_service]]` tables; see [`crate::onion_service`]).
    #[serde(default, rename = "onion_service")]
    pub onion_services: Vec<crate::onion_service::OnionServiceConfig>,
    /// What applications and peers can make this client spend (docs/PROTOCOL.md, "Limits").
    #[serde(default)]
    pub limits: allium_net::limits::LimitsConfig,
}

/// The `[client]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    /// Where the SOCKS5 proxy listens. Applications connect here (`curl --socks5-hostname`).
    /// Keep it on a loopback address: anyone who can reach it can use your circuits.
    #[serde(default = "default_socks")]
    pub socks_listen: SocketAddr,
    /// Give streams to different destination hosts different circuits (besides the isolation
    /// by SOCKS credentials and by listener, which is always on). Default false.
    #[serde(default)]
    pub isolate_destinations: bool,
    /// Where the optional HTTP CONNECT proxy listens (`curl --proxy http://ADDR -p`); absent:
    /// no HTTP CONNECT listener. Same rules as `socks_listen`: keep it on loopback.
    #[serde(default)]
    pub http_connect_listen: Option<SocketAddr>,
    /// Test networks only (needs `network.dangerous_testnet = true`): the circuit-build
    /// timeout before any is learned, in ms, instead of the generous 60 s. `allium testnet`
    /// sets it when it black-holes relays, so an abandoned build costs seconds.
    #[serde(default)]
    pub dangerous_initial_build_timeout_ms: Option<u64>,
    /// Relays to fetch the first consensus from (directory caches), so that the client never
    /// contacts an authority: later fetches go through its guards. Empty (the default): the
    /// first fetch goes to the authorities directly, and they see this client's address.
    #[serde(default)]
    pub fallback_dirs: Vec<FallbackDir>,
    /// Client authorization keys for onion services (`[[client.onion_auth]]`, see
    /// [`crate::onion_auth`]).
    #[serde(default)]
    pub onion_auth: Vec<crate::onion_auth::OnionAuthConfig>,
}

/// A relay known before any consensus: enough to build a one-hop circuit to it and open a
/// directory stream. Its keys are the ones its descriptor lists (`allium testnet` writes them).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FallbackDir {
    pub nickname: String,
    /// The relay's identity, as a 64-digit hex fingerprint.
    #[serde(deserialize_with = "de_id")]
    pub identity: RelayId,
    /// Its OR port.
    pub address: SocketAddr,
    /// Its link key (x25519), 64 hex digits.
    #[serde(deserialize_with = "de_key")]
    pub link_key: [u8; 32],
    /// Its onion key (x25519), 64 hex digits.
    #[serde(deserialize_with = "de_key")]
    pub onion_key: [u8; 32],
}

fn de_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RelayId, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

fn de_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let s = String::deserialize(d)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(&s, &mut out).map_err(|_| serde::de::Error::custom("expected 64 hex digits"))?;
    Ok(out)
}

fn default_socks() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9050))
}

impl ClientConfig {
    /// The initial circuit-build timeout: [`crate::timeout::INITIAL`] unless a test network
    /// sets `client.dangerous_initial_build_timeout_ms`.
    pub fn initial_build_timeout(&self) -> std::time::Duration {
        match self.client.dangerous_initial_build_timeout_ms {
            Some(ms) if self.network.dangerous_testnet => std::time::Duration::from_millis(ms),
            _ => crate::timeout::INITIAL,
        }
    }

    /// Reads, parses and validates a client config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: ClientConfig = load_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Semantic checks after parsing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // A client's own address is only a source address for its outgoing sockets, so a
        // private one is normal (behind NAT); only the nickname and authorities are checked.
        self.network.validate_link_delay()?;
        let mut net = self.network.clone();
        net.dangerous_testnet = true;
        self.node.validate(&net)?;
        self.limits.validate()?;
        crate::onion_service::validate(&self.onion_services)?;
        crate::onion_auth::load(&self.client.onion_auth)?;
        if let Some(ms) = self.client.dangerous_initial_build_timeout_ms {
            if !self.network.dangerous_testnet {
                return Err(ConfigError::invalid("client.dangerous_initial_build_timeout_ms", "needs network.dangerous_testnet = true"));
            }
            if ms == 0 || ms > crate::timeout::INITIAL.as_millis() as u64 {
                return Err(ConfigError::invalid("client.dangerous_initial_build_timeout_ms", "must be 1-60000"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(testnet: bool, client_extra: &str) -> ClientConfig {
        let text = format!(
            "[node]\nnickname = \"c\"\ndata_dir = \"/tmp/x\"\naddress = \"127.0.0.1\"\n\n[network]\ndangerous_testnet = {testnet}\n\n\
             [[network.authorities]]\nname = \"a\"\nidentity = \"{}\"\naddress = \"192.0.2.1:9030\"\n\n[client]\n{client_extra}\n",
            "3A6F0C1E5B7D9E2F4A6C8B0D1F3E5A7C9B2D4F6A8C0E1B3D5F7A9C2E4B6D8F01"
        );
        toml::from_str(&text).expect("parses")
    }

    #[test]
    fn fallback_dirs_parse_and_bad_keys_name_the_key() {
        let fp = "3A6F0C1E5B7D9E2F4A6C8B0D1F3E5A7C9B2D4F6A8C0E1B3D5F7A9C2E4B6D8F01";
        let key = "11".repeat(32);
        let entry = |link: &str| {
            format!("[[client.fallback_dirs]]\nnickname = \"r1\"\nidentity = \"{fp}\"\naddress = \"127.3.0.1:5000\"\nlink_key = \"{link}\"\nonion_key = \"{key}\"\n")
        };
        let base = "[node]\nnickname = \"c\"\ndata_dir = \"/tmp/x\"\naddress = \"127.0.0.1\"\n[network]\nauthorities = []\n[client]\n";
        let cfg: ClientConfig = allium_net::config::parse_toml(&format!("{base}{}", entry(&key)), Path::new("c.toml")).unwrap();
        assert_eq!(cfg.client.fallback_dirs[0].link_key, [0x11; 32]);
        let err = allium_net::config::parse_toml::<ClientConfig>(&format!("{base}{}", entry("zz")), Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("client.fallback_dirs[0].link_key"), "{err}");
    }

    #[test]
    fn onion_auth_entries_are_validated_with_the_config() {
        let id = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes();
        let addr = allium_proto::hs::OnionAddress::from_identity(id).unwrap().to_host();
        let ok = parse(false, &format!("[[client.onion_auth]]\naddress = \"{addr}\"\nsecret_key = \"{}\"\n", "22".repeat(32)));
        ok.validate().expect("valid");
        assert_eq!(ok.client.onion_auth.len(), 1);
        let bad = parse(false, &format!("[[client.onion_auth]]\naddress = \"{addr}\"\nsecret_key = \"22\"\n"));
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("client.onion_auth[0].secret_key"), "{err}");
    }

    #[test]
    fn short_initial_build_timeout_only_on_a_test_network() {
        let plain = parse(false, "");
        plain.validate().expect("valid");
        assert_eq!(plain.initial_build_timeout(), crate::timeout::INITIAL);
        let test = parse(true, "dangerous_initial_build_timeout_ms = 3000");
        test.validate().expect("valid on a test network");
        assert_eq!(test.initial_build_timeout(), std::time::Duration::from_millis(3000));
        let err = parse(false, "dangerous_initial_build_timeout_ms = 3000").validate().unwrap_err().to_string();
        assert!(err.contains("client.dangerous_initial_build_timeout_ms"), "{err}");
        assert!(parse(true, "dangerous_initial_build_timeout_ms = 0").validate().is_err());
    }
}
