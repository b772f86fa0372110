//! Onion services a client node hosts: their config (`[[onion_service]]`) and keys.
//!
//! ```toml
//! [[onion_service]]
//! name = "web"
//! ports = ["80 -> 127.0.0.1:8080"]
//! # optional: only these clients (x25519 public keys, 64 hex digits) can read the descriptor's
//! # introduction points
//! authorized_clients = ["<64 hex digits>"]
//! # optional: introductions per second each introduction point forwards, and its burst
//! # (an introduction with a proof of work of effort e counts 1/e)
//! intro_rate_per_sec = 25
//! intro_burst = 200
//! # optional: rendezvous circuits built at once, and introductions waiting for one
//! max_rendezvous_builds = 16
//! intro_queue = 256
//! ```
//!
//! Each service's identity key lives in `<node.data_dir>/onion-services/<name>/identity_ed25519.key`
//! (directories 0700, the key 0600), created on first start and reused after, so the address
//! survives restarts. Hosting (introduction points, descriptors, rendezvous) is
//! [`crate::hs_service`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use allium_net::config::ConfigError;
use allium_net::keys::{ensure_dir, secret, KeyError, IDENTITY_FILE};
use allium_proto::hs::OnionAddress;
use serde::Deserialize;

/// One `[[onion_service]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OnionServiceConfig {
    /// 1–32 characters of `a-z 0-9 _ -`; names the key directory.
    pub name: String,
    /// Port mappings `"VIRTUAL -> HOST:PORT"`: a stream to the service's port VIRTUAL is
    /// connected to HOST:PORT from this node.
    pub ports: Vec<String>,
    /// Clients allowed to read the introduction points: their x25519 public keys, 64 hex
    /// digits each. Empty: anyone who knows the address.
    #[serde(default)]
    pub authorized_clients: Vec<String>,
    /// Introductions per second each introduction point forwards to the service (sent to the
    /// point in ESTABLISH_INTRO; THREATS A29). 1–1,000,000, default 25.
    #[serde(default = "default_intro_rate")]
    pub intro_rate_per_sec: u32,
    /// The burst of that rate: rate–1,000,000, default 200.
    #[serde(default = "default_intro_burst")]
    pub intro_burst: u32,
    /// Rendezvous circuits the service builds at once: 1–1,000, default 16.
    #[serde(default = "default_max_rendezvous_builds")]
    pub max_rendezvous_builds: usize,
    /// Introductions waiting for a rendezvous build, best proof of work first (THREATS A29):
    /// 1–100,000, default 256.
    #[serde(default = "default_intro_queue")]
    pub intro_queue: usize,
}

impl Default for OnionServiceConfig {
    /// No name (set one), no ports, no client authorization, the default introduction rate.
    fn default() -> Self {
        OnionServiceConfig {
            name: String::new(),
            ports: Vec::new(),
            authorized_clients: Vec::new(),
            intro_rate_per_sec: default_intro_rate(),
            intro_burst: default_intro_burst(),
            max_rendezvous_builds: default_max_rendezvous_builds(),
            intro_queue: default_intro_queue(),
        }
    }
}

fn default_max_rendezvous_builds() -> usize {
    16
}

fn default_intro_queue() -> usize {
    256
}

fn default_intro_rate() -> u32 {
    25
}

fn default_intro_burst() -> u32 {
    200
}

/// A parsed port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub virtual_port: u16,
    pub target: SocketAddr,
}

impl PortMapping {
    /// Parses `"80 -> 127.0.0.1:8080"` (spaces around `->` optional).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (v, t) = s.split_once("->").ok_or_else(|| format!("{s:?} is not VIRTUAL -> HOST:PORT"))?;
        let virtual_port: u16 = v.trim().parse().map_err(|_| format!("{s:?}: {:?} is not a port", v.trim()))?;
        let target: SocketAddr = t.trim().parse().map_err(|_| format!("{s:?}: {:?} is not an IP:port address", t.trim()))?;
        if virtual_port == 0 || target.port() == 0 {
            return Err(format!("{s:?}: port 0"));
        }
        Ok(PortMapping { virtual_port, target })
    }
}

impl OnionServiceConfig {
    /// The parsed port mappings.
    pub fn mappings(&self) -> Result<Vec<PortMapping>, String> {
        self.ports.iter().map(|p| PortMapping::parse(p)).collect()
    }

    /// The directory holding this service's keys.
    pub fn key_dir(&self, data_dir: &Path) -> PathBuf {
        data_dir.join("onion-services").join(&self.name)
    }

    /// The parsed authorized client keys (see [`validate`]).
    pub fn authorized_keys(&self) -> Result<Vec<x25519_dalek::PublicKey>, String> {
        self.authorized_clients.iter().map(|k| parse_client_key(k)).collect()
    }

    /// Loads the service's identity key, creating it on first start.
    pub fn load_or_create_identity(&self, data_dir: &Path) -> Result<ed25519_dalek::SigningKey, KeyError> {
        ensure_dir(&data_dir.join("onion-services"))?;
        let dir = self.key_dir(data_dir);
        ensure_dir(&dir)?;
        Ok(ed25519_dalek::SigningKey::from_bytes(&secret(&dir, IDENTITY_FILE)?))
    }

    /// Loads the service's identity, creating it on first start; returns its address.
    pub fn load_or_create_address(&self, data_dir: &Path) -> Result<OnionAddress, KeyError> {
        let key = self.load_or_create_identity(data_dir)?;
        // Every ed25519 public key derived from a secret is a usable point.
        Ok(OnionAddress::from_identity(key.verifying_key().to_bytes()).expect("a derived key is a prime-order point"))
    }
}

/// Parses an authorized client's key: 64 hex digits of a 32-byte x25519 public key, not all
/// zero.
pub fn parse_client_key(s: &str) -> Result<x25519_dalek::PublicKey, String> {
    let mut b = [0u8; 32];
    if s.len() != 64 || hex::decode_to_slice(s, &mut b).is_err() {
        return Err(format!("{s:?} is not 64 hex digits (an x25519 public key)"));
    }
    if b == [0; 32] {
        return Err("an all-zero key is not a usable x25519 public key".into());
    }
    Ok(x25519_dalek::PublicKey::from(b))
}

/// Checks every service: names valid and distinct, at least one mapping each, mappings valid,
/// virtual ports distinct within a service. Errors name the key (`onion_service[i].…`).
pub fn validate(services: &[OnionServiceConfig]) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    for (i, s) in services.iter().enumerate() {
        let key = |k: &str| format!("onion_service[{i}].{k}");
        let name_ok = !s.name.is_empty() && s.name.len() <= 32 && s.name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
        if !name_ok {
            return Err(ConfigError::invalid(&key("name"), "must be 1-32 characters of a-z 0-9 _ -"));
        }
        if !names.insert(&s.name) {
            return Err(ConfigError::invalid(&key("name"), "names another service already"));
        }
        if s.ports.is_empty() {
            return Err(ConfigError::invalid(&key("ports"), "lists no port mapping"));
        }
        let maps = s.mappings().map_err(|e| ConfigError::invalid(&key("ports"), &e))?;
        let mut seen = BTreeSet::new();
        if let Some(m) = maps.iter().find(|m| !seen.insert(m.virtual_port)) {
            return Err(ConfigError::invalid(&key("ports"), &format!("maps port {} twice", m.virtual_port)));
        }
        let clients = s.authorized_keys().map_err(|e| ConfigError::invalid(&key("authorized_clients"), &e))?;
        if clients.len() > allium_proto::hs::inner::MAX_AUTH_ENTRIES {
            return Err(ConfigError::invalid(&key("authorized_clients"), &format!("lists more than {} keys", allium_proto::hs::inner::MAX_AUTH_ENTRIES)));
        }
        let mut distinct = BTreeSet::new();
        if clients.iter().any(|c| !distinct.insert(c.to_bytes())) {
            return Err(ConfigError::invalid(&key("authorized_clients"), "lists a key twice"));
        }
        if !(1..=1_000_000).contains(&s.intro_rate_per_sec) {
            return Err(ConfigError::invalid(&key("intro_rate_per_sec"), "must be from 1 to 1000000"));
        }
        if !(s.intro_rate_per_sec..=1_000_000).contains(&s.intro_burst) {
            return Err(ConfigError::invalid(&key("intro_burst"), "must be from intro_rate_per_sec to 1000000"));
        }
        if !(1..=1_000).contains(&s.max_rendezvous_builds) {
            return Err(ConfigError::invalid(&key("max_rendezvous_builds"), "must be from 1 to 1000"));
        }
        if !(1..=100_000).contains(&s.intro_queue) {
            return Err(ConfigError::invalid(&key("intro_queue"), "must be from 1 to 100000"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ports: &[&str]) -> OnionServiceConfig {
        OnionServiceConfig { name: name.into(), ports: ports.iter().map(|p| p.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn intro_rate_bounds_are_checked() {
        let ok = svc("web", &["80 -> 127.0.0.1:8080"]);
        validate(std::slice::from_ref(&ok)).unwrap();
        let low_burst = OnionServiceConfig { intro_rate_per_sec: 50, intro_burst: 10, ..ok.clone() };
        assert!(validate(&[low_burst]).unwrap_err().to_string().contains("intro_burst"));
        let zero = OnionServiceConfig { intro_rate_per_sec: 0, ..ok.clone() };
        assert!(validate(&[zero]).unwrap_err().to_string().contains("intro_rate_per_sec"));
        for (builds, queue, named) in [(0, 256, "max_rendezvous_builds"), (1001, 256, "max_rendezvous_builds"), (16, 0, "intro_queue"), (16, 100_001, "intro_queue")] {
            let bad = OnionServiceConfig { max_rendezvous_builds: builds, intro_queue: queue, ..ok.clone() };
            assert!(validate(&[bad]).unwrap_err().to_string().contains(named), "{builds}, {queue}");
        }
        let parsed: OnionServiceConfig = toml::from_str("name = \"web\"\nports = []\nmax_rendezvous_builds = 4\nintro_queue = 32").unwrap();
        assert_eq!((parsed.max_rendezvous_builds, parsed.intro_queue), (4, 32));
        assert_eq!((ok.max_rendezvous_builds, ok.intro_queue), (16, 256), "the defaults");
    }

    #[test]
    fn authorized_clients_are_validated_and_errors_name_the_key() {
        let good = "11".repeat(32);
        let with = |keys: &[&str]| OnionServiceConfig { authorized_clients: keys.iter().map(|k| k.to_string()).collect(), ..svc("web", &["80 -> 127.0.0.1:8080"]) };
        assert!(validate(&[with(&[])]).is_ok());
        let s = with(&[&good, &"AB".repeat(32)]);
        assert!(validate(std::slice::from_ref(&s)).is_ok(), "hex in either case");
        assert_eq!(s.authorized_keys().unwrap()[0].to_bytes(), [0x11; 32]);
        let zero = "0".repeat(64);
        let short = "11".repeat(31);
        let long = "11".repeat(33);
        let not_hex = "zz".repeat(32);
        for bad in [short.as_str(), long.as_str(), not_hex.as_str(), zero.as_str(), ""] {
            let e = validate(&[svc("ok", &["1 -> 127.0.0.1:1"]), with(&[bad])]).unwrap_err().to_string();
            assert!(e.contains("onion_service[1].authorized_clients"), "{bad:?}: {e}");
        }
        let e = validate(&[with(&[&good, &good.to_uppercase()])]).unwrap_err().to_string();
        assert!(e.contains("onion_service[0].authorized_clients") && e.contains("twice"), "{e}");
        let many: Vec<String> = (0..257u32).map(|i| format!("{:064x}", i + 1)).collect();
        let refs: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
        let e = validate(&[with(&refs)]).unwrap_err().to_string();
        assert!(e.contains("onion_service[0].authorized_clients") && e.contains("256"), "{e}");
        // From TOML, with the key named in the error.
        let toml_text = format!("name = \"web\"\nports = [\"80 -> 127.0.0.1:8080\"]\nauthorized_clients = [\"{good}\"]\n");
        let parsed: OnionServiceConfig = toml::from_str(&toml_text).unwrap();
        assert_eq!(parsed.authorized_clients, vec![good.clone()]);
    }

    #[test]
    fn mappings_parse_and_bad_ones_name_the_key() {
        assert_eq!(PortMapping::parse("80 -> 127.0.0.1:8080").unwrap(), PortMapping { virtual_port: 80, target: "127.0.0.1:8080".parse().unwrap() });
        assert_eq!(PortMapping::parse("22->[::1]:2222").unwrap().target, "[::1]:2222".parse::<SocketAddr>().unwrap());
        for bad in ["80", "x -> 127.0.0.1:1", "80 -> localhost:80", "0 -> 127.0.0.1:1", "80 -> 127.0.0.1:0"] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
        assert!(validate(&[svc("web", &["80 -> 127.0.0.1:8080"]), svc("ssh", &["22 -> 127.0.0.1:22"])]).is_ok());
        let e = validate(&[svc("web", &["80 -> 127.0.0.1:8080"]), svc("web", &["81 -> 127.0.0.1:1"])]).unwrap_err().to_string();
        assert!(e.contains("onion_service[1].name"), "{e}");
        let e = validate(&[svc("Web!", &["80 -> 127.0.0.1:8080"])]).unwrap_err().to_string();
        assert!(e.contains("onion_service[0].name"), "{e}");
        let e = validate(&[svc("web", &["80 -> 127.0.0.1:8080", "80 -> 127.0.0.1:9"])]).unwrap_err().to_string();
        assert!(e.contains("onion_service[0].ports") && e.contains("twice"), "{e}");
        assert!(validate(&[svc("web", &[])]).is_err());
    }

    #[test]
    fn the_address_survives_restarts_and_differs_per_service() {
        let dir = std::env::temp_dir().join(format!("allium-onion-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let web = svc("web", &["80 -> 127.0.0.1:8080"]);
        let a = web.load_or_create_address(&dir).unwrap();
        assert_eq!(web.load_or_create_address(&dir).unwrap(), a, "same key after a restart");
        assert_ne!(svc("ssh", &["22 -> 127.0.0.1:22"]).load_or_create_address(&dir).unwrap(), a);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&web.key_dir(&dir).join(IDENTITY_FILE)), 0o600);
        assert_eq!(mode(&web.key_dir(&dir)), 0o700);
        assert!(OnionAddress::parse(&a.to_host()).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
