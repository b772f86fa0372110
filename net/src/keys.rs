//! A node's long-term keys on disk: created on first start, reused after.
//!
//! Files in the data directory, each mode 0600 and holding 32 raw secret bytes:
//! - `identity_ed25519.key`: the ed25519 identity (signs descriptors, certifies the link key);
//! - `onion_x25519.key`: the x25519 onion key used by the circuit handshake (ntor);
//! - `link_x25519.key`: the x25519 static key of the Noise link handshake.
//!
//! A key file is written to a temporary name and renamed into place, so a crash never leaves a
//! half-written key; a file of the wrong size is an error, never silently replaced.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use allium_proto::ids::RelayId;
use rand::rngs::OsRng;
use rand::RngCore;

/// The keys a node holds.
pub struct NodeKeys {
    pub identity: ed25519_dalek::SigningKey,
    pub onion: x25519_dalek::StaticSecret,
    pub link: x25519_dalek::StaticSecret,
}

impl NodeKeys {
    pub fn relay_id(&self) -> RelayId {
        RelayId(self.identity.verifying_key().to_bytes())
    }
    pub fn onion_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.onion).to_bytes()
    }
    pub fn link_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.link).to_bytes()
    }
}

/// Errors reading or creating key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("key file {path} is corrupt: expected 32 bytes, found {len}")]
    BadLength { path: PathBuf, len: usize },
}

/// Loads the node's keys from `dir`, creating any that are missing.
pub fn load_or_create(dir: &Path) -> Result<NodeKeys, KeyError> {
    ensure_dir(dir)?;
    let identity = ed25519_dalek::SigningKey::from_bytes(&secret(dir, "identity_ed25519.key")?);
    let onion = x25519_dalek::StaticSecret::from(secret(dir, "onion_x25519.key")?);
    let link = x25519_dalek::StaticSecret::from(secret(dir, "link_x25519.key")?);
    Ok(NodeKeys { identity, onion, link })
}

/// Creates `dir` (mode 0700) if it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    let io = |err| KeyError::Io { path: dir.to_path_buf(), err };
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

fn secret(dir: &Path, name: &str) -> Result<[u8; 32], KeyError> {
    let path = dir.join(name);
    let io = |err| KeyError::Io { path: path.clone(), err };
    match fs::read(&path) {
        Ok(bytes) => {
            let len = bytes.len();
            bytes.try_into().map_err(|_| KeyError::BadLength { path: path.clone(), len })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            OsRng.fill_bytes(&mut key);
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(&key).map_err(io)?;
            f.sync_all().map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("allium-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = load_or_create(&dir).unwrap();
        for f in ["identity_ed25519.key", "onion_x25519.key", "link_x25519.key"] {
            let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let b = load_or_create(&dir).unwrap();
        assert_eq!(a.relay_id(), b.relay_id());
        assert_eq!(a.onion_public(), b.onion_public());
        assert_eq!(a.link_public(), b.link_public());
        fs::write(dir.join("onion_x25519.key"), b"short").unwrap();
        assert!(matches!(load_or_create(&dir), Err(KeyError::BadLength { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
