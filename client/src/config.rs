//! The client's configuration (`allium client --config client.toml`).

use std::net::SocketAddr;
use std::path::Path;

use allium_net::config::{load_toml, ConfigError, NetworkConfig, NodeConfig};
use serde::Deserialize;

/// A client's whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub node: NodeConfig,
    pub network: NetworkConfig,
    pub client: ClientSection,
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
}

fn default_socks() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9050))
}

impl ClientConfig {
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
        let mut net = self.network.clone();
        net.dangerous_testnet = true;
        self.node.validate(&net)
    }
}
