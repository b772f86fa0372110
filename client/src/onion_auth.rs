//! Client authorization, client side: the x25519 secret keys this client holds for onion
//! services that only let listed clients in (`[[client.onion_auth]]`).
//!
//! ```toml
//! [[client.onion_auth]]
//! address = "<56 characters>.allium"
//! secret_key = "<64 hex digits>"          # or: secret_key_file = "path/to/file"
//! ```
//!
//! The service lists the matching public key (`allium keygen --onion-client-auth` prints both).
//! A descriptor for such a service decrypts only with the secret key.

use std::collections::HashMap;
use std::path::PathBuf;

use allium_net::config::ConfigError;
use allium_proto::hs::OnionAddress;
use serde::Deserialize;
use x25519_dalek::{PublicKey, StaticSecret};

/// One `[[client.onion_auth]]` table.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OnionAuthConfig {
    /// The service's `.allium` address.
    pub address: String,
    /// The x25519 secret key, 64 hex digits.
    #[serde(default)]
    pub secret_key: Option<String>,
    /// A file holding the secret key as 64 hex digits (surrounding whitespace ignored).
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
}

/// Never prints the secret key.
impl std::fmt::Debug for OnionAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionAuthConfig").field("secret_key_file", &self.secret_key_file).finish_non_exhaustive()
    }
}

/// The client's secret keys by service identity (the key inside the address).
pub type ClientAuthKeys = HashMap<[u8; 32], StaticSecret>;

fn parse_secret(hex_text: &str) -> Result<StaticSecret, &'static str> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut out).map_err(|_| "must be 64 hex digits (an x25519 secret key)")?;
    Ok(StaticSecret::from(out))
}

/// Checks every entry and loads its key (reading `secret_key_file`): the address is valid and
/// listed once, exactly one of `secret_key` and `secret_key_file` is set, and the key is 64 hex
/// digits. Errors are one line naming the key (`client.onion_auth[i].…`).
pub fn load(entries: &[OnionAuthConfig]) -> Result<ClientAuthKeys, ConfigError> {
    let mut keys = ClientAuthKeys::new();
    for (i, e) in entries.iter().enumerate() {
        let key = |k: &str| format!("client.onion_auth[{i}].{k}");
        let addr = OnionAddress::parse(&e.address).map_err(|err| ConfigError::invalid(&key("address"), &err.to_string()))?;
        let secret = match (&e.secret_key, &e.secret_key_file) {
            (Some(s), None) => parse_secret(s).map_err(|m| ConfigError::invalid(&key("secret_key"), m))?,
            (None, Some(p)) => {
                let text = std::fs::read_to_string(p).map_err(|err| ConfigError::invalid(&key("secret_key_file"), &format!("cannot read {}: {err}", p.display())))?;
                parse_secret(&text).map_err(|m| ConfigError::invalid(&key("secret_key_file"), &format!("{}: {m}", p.display())))?
            }
            (Some(_), Some(_)) => return Err(ConfigError::invalid(&key("secret_key"), "set secret_key or secret_key_file, not both")),
            (None, None) => return Err(ConfigError::invalid(&key("secret_key"), "missing (set secret_key or secret_key_file)")),
        };
        if keys.insert(*addr.identity(), secret).is_some() {
            return Err(ConfigError::invalid(&key("address"), "lists a service already listed"));
        }
    }
    Ok(keys)
}

/// A fresh key pair: `(secret, public)`, each as 64 hex digits. The client keeps the secret;
/// the service lists the public key in `authorized_clients`.
pub fn generate() -> (String, String) {
    let secret = StaticSecret::random_from_rng(rand::rngs::OsRng);
    let public = PublicKey::from(&secret);
    (hex::encode(secret.to_bytes()), hex::encode(public.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(seed: u8) -> String {
        let id = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes();
        OnionAddress::from_identity(id).unwrap().to_host()
    }

    fn entry(address: &str, key: Option<&str>, file: Option<PathBuf>) -> OnionAuthConfig {
        OnionAuthConfig { address: address.into(), secret_key: key.map(String::from), secret_key_file: file }
    }

    fn err(entries: &[OnionAuthConfig]) -> String {
        let e = load(entries).err().expect("an error").to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn keys_load_from_the_config_or_a_file() {
        let (secret, public) = generate();
        assert_eq!((secret.len(), public.len()), (64, 64));
        let keys = load(&[entry(&addr(1), Some(&secret), None)]).unwrap();
        let id = *OnionAddress::parse(&addr(1)).unwrap().identity();
        assert_eq!(hex::encode(PublicKey::from(&keys[&id]).as_bytes()), public, "the public key printed matches the secret");

        let path = std::env::temp_dir().join(format!("allium-onion-auth-{}", std::process::id()));
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        let keys = load(&[entry(&addr(2), None, Some(path.clone()))]).unwrap();
        assert_eq!(keys.len(), 1);
        std::fs::write(&path, "not hex\n").unwrap();
        let e = err(&[entry(&addr(2), None, Some(path.clone()))]);
        assert!(e.contains("client.onion_auth[0].secret_key_file"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = err(&[entry(&addr(2), None, Some(path))]);
        assert!(e.contains("client.onion_auth[0].secret_key_file") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn bad_entries_name_the_key() {
        let k = "11".repeat(32);
        let e = err(&[entry("nope.allium", Some(&k), None)]);
        assert!(e.contains("client.onion_auth[0].address"), "{e}");
        let e = err(&[entry(&addr(1), Some(&k), None), entry(&addr(1), Some(&k), None)]);
        assert!(e.contains("client.onion_auth[1].address") && e.contains("already"), "{e}");
        let e = err(&[entry(&addr(1), Some("abcd"), None)]);
        assert!(e.contains("client.onion_auth[0].secret_key") && e.contains("64 hex"), "{e}");
        let e = err(&[entry(&addr(1), None, None)]);
        assert!(e.contains("client.onion_auth[0].secret_key") && e.contains("missing"), "{e}");
        let e = err(&[entry(&addr(1), Some(&k), Some("/x".into()))]);
        assert!(e.contains("not both"), "{e}");
        assert!(!format!("{:?}", entry(&addr(1), Some(&k), None)).contains(&k), "Debug hides the key");
    }
}
